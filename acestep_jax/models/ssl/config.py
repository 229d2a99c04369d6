"""Configuration of the HuBERT-family encoders (HuBERT, mHuBERT-147, MERT) read from ``config.json``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from acestep_jax.nn import resolve_dtype

MODEL_TYPES = ("hubert", "mert_model")
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu", "swish")
FEATURE_NORMS = ("group", "layer")

# MERT's extensions over HuBERT, with the values of the released checkpoints (the only ones supported)
MERT_RELEASED = {"feature_extractor_cqt": False, "deepnorm": False}


@dataclass(frozen=True)
class HubertConfig:
    """The ``config.json`` keys that shape the encoder (defaults: HuBERT base) plus JAX-side dtypes.

    ``dtype`` is the compute dtype and ``param_dtype`` the storage dtype; normalisation
    statistics and the attention softmax always run in float32.
    """

    model_type: str = "hubert"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    feat_extract_activation: str = "gelu"
    feat_extract_norm: str = "group"
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    feat_proj_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    conv_pos_batch_norm: bool = False
    do_stable_layer_norm: bool = False
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def total_stride(self) -> int:
        """Input samples per output frame (320 for the released models)."""
        return math.prod(self.conv_stride)

    def frames(self, num_samples: int) -> int:
        """Output frames for ``num_samples`` input samples (unpadded strided convolutions)."""
        n = num_samples
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = (n - k) // s + 1
        return max(n, 0)

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not a HuBERT-family encoder {MODEL_TYPES}")
        if not len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel) > 0:
            raise ValueError(
                f"conv_dim, conv_stride and conv_kernel must have the same (non-zero) length, got "
                f"{len(self.conv_dim)}, {len(self.conv_stride)}, {len(self.conv_kernel)}"
            )
        if self.feat_extract_norm not in FEATURE_NORMS:
            raise ValueError(f"feat_extract_norm must be one of {FEATURE_NORMS}, got {self.feat_extract_norm!r}")
        for key in ("hidden_act", "feat_extract_activation"):
            if getattr(self, key) not in ACTIVATIONS:
                raise ValueError(f"{key} {getattr(self, key)!r} is not supported; use one of {ACTIVATIONS}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible into "
                             f"{self.num_conv_pos_embedding_groups} positional-convolution groups")
        resolve_dtype(self.dtype)
        resolve_dtype(self.param_dtype)

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> HubertConfig:
        """From a Hugging Face ``config.json`` (HuBERT or MERT); keys that do not shape the encoder
        (dropouts, masking, CTC) are ignored. MERT's ``feature_extractor_cqt`` and ``deepnorm``
        must be off and ``attention_relax`` non-positive, as in the released checkpoints."""
        d = {**d, **overrides}
        for key, released in MERT_RELEASED.items():
            if bool(d.get(key, released)) != released:
                raise ValueError(f"MERT option {key}={d[key]!r} is not supported (released checkpoints use {released})")
        relax = d.get("attention_relax", -1.0)
        if relax is not None and float(relax) > 0:
            raise ValueError(f"MERT option attention_relax={relax!r} is not supported (released checkpoints use -1)")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        for key in ("conv_dim", "conv_stride", "conv_kernel"):
            if key in kwargs:
                kwargs[key] = tuple(int(v) for v in kwargs[key])
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """The ``config.json`` keys used here plus the JAX options (JSON-serialisable)."""
        return dataclasses.asdict(self)

"""Configuration of the ACE-Step transformer (defaults: the released 3.5B checkpoint)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

REMAT_MODES = ("none", "full", "dots", "outputs")  # see TransformerConfig.remat
CONTEXT_POSITIONS = ("item", "batch")  # see TransformerConfig.context_positions
ATTENTION_IMPLS = ("xla", "cudnn")  # see TransformerConfig.attention_impl


@dataclass(frozen=True)
class LyricEncoderConfig:
    """Conformer lyric encoder sizes (the reference hard-codes these values)."""

    output_size: int = 1024
    attention_heads: int = 16
    linear_units: int = 4096
    num_blocks: int = 6
    static_chunk_size: int = 0  # full-context attention; the transformer always uses 0
    dropout_rate: float = 0.1  # training only: the input embedding and every residual branch
    positional_dropout_rate: float = 0.1  # training only: the relative position encodings

    def __post_init__(self):
        if self.static_chunk_size != 0:
            raise ValueError("only full-context lyric encoding (static_chunk_size=0) is supported")
        for name in ("dropout_rate", "positional_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"lyric encoder {name} must be in [0, 1), got {getattr(self, name)}")


# program choices made per device when a model is loaded (gpu_transformer_settings), never saved
DEVICE_SETTINGS = ("attention_impl", "unroll_blocks", "head_major_attention")


def gpu_transformer_settings(platform: str | None = None, version: str = "", training: bool = False) -> dict:
    """:data:`DEVICE_SETTINGS` for ``platform`` (default: JAX's backend). On NVIDIA GPUs: cuDNN's
    fused cross-attention (no float32 logits in memory), the head-major linear attention (no
    transposes) and, for sampling (not ``training``, which scans its blocks to rematerialise
    them), one module per block (no weight copies in the sampling loop); nothing elsewhere
    (the einsums and the scanned blocks that golden parity is checked on)."""
    if platform is None:
        import jax

        platform, version = jax.default_backend(), jax.devices()[0].client.platform_version
    if platform not in ("gpu", "cuda") or "rocm" in version.lower():
        return {}
    return {"attention_impl": "cudnn", "head_major_attention": True} | ({} if training else {"unroll_blocks": True})


@dataclass(frozen=True)
class TransformerConfig:
    """Constructor arguments of ``ACEStepTransformer2DModel`` plus JAX-side options.

    ``dtype`` is the compute dtype and ``param_dtype`` the storage dtype. ``remat``
    is ``"none"``, ``"full"`` (recompute each block), ``"dots"`` (keep matmul
    outputs without a batch dimension) or ``"outputs"`` (keep each block's
    self-attention, cross-attention and feed-forward outputs).

    ``context_positions`` places the condition tokens ``[speaker; prompt; lyrics]`` for
    the cross-attention's rotary embedding. ``"item"``: each item as the reference places
    it when run alone (speaker 0, prompt tokens 1..Lp, lyrics from Lp + 1), whatever its
    padding and batch. ``"batch"``: lyrics start after the batch's longest prompt, as in
    the reference's batches of several prompts padded to the longest (its trainer at batch
    size > 1); bucket padding still changes nothing, but the batch does.

    ``attention_impl`` computes the cross-attention: ``"xla"`` (default; einsums with
    float32 logits, the form golden parity is checked on) or ``"cudnn"`` (NVIDIA GPUs
    only: ``jax.nn.dot_product_attention(implementation="cudnn")``, fused, no logits in
    memory). Choose it for the devices the program is lowered for (``plan_gpu.py``,
    GPU loading), never from ``jax.devices()`` at trace time.

    ``unroll_blocks`` holds the blocks as one module per block (``nnx.List``) run in order,
    instead of stacked weights run by ``lax.scan`` (the result is the same): on GPUs every
    GEMM then reads its weight in place, also inside the sampling loop, where a weight sliced
    out of its stack is copied at every step. GPU loading chooses it (checkpoints stay
    stacked: :func:`~acestep_jax.models.transformer.model.unstack_blocks` cuts them); it
    compiles a longer program and takes no ``remat``.

    ``head_major_attention`` holds the linear self-attention's q, k, v as ``[B, H, D, S]``,
    written so by per-item GEMMs: its contractions then need no transposes on GPU (GPU
    loading chooses it). The result is the same up to float32 summation order.
    """

    in_channels: int = 8
    num_layers: int = 24
    attention_head_dim: int = 128
    num_attention_heads: int = 20
    mlp_ratio: float = 2.5
    out_channels: int = 8
    max_position: int = 32768
    rope_theta: float = 1_000_000.0
    speaker_embedding_dim: int = 512
    text_embedding_dim: int = 768
    ssl_encoder_depths: tuple[int, ...] = (8, 8)
    ssl_names: tuple[str, ...] = ("mert", "m-hubert")
    ssl_latent_dims: tuple[int, ...] = (1024, 768)
    lyric_encoder_vocab_size: int = 6693
    lyric_hidden_size: int = 1024
    patch_size: tuple[int, int] = (16, 1)
    max_height: int = 16
    max_width: int = 32768
    lyric_encoder: LyricEncoderConfig = field(default_factory=LyricEncoderConfig)
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    context_positions: str = "item"
    attention_impl: str = "xla"
    unroll_blocks: bool = False
    head_major_attention: bool = False

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def ff_hidden(self) -> int:
        return int(self.inner_dim * self.mlp_ratio)

    def __post_init__(self):
        if tuple(self.patch_size) != (16, 1) or self.max_height != 16:
            raise ValueError(f"only patch_size (16, 1) over height 16 is supported, got {self.patch_size}")
        if not (len(self.ssl_encoder_depths) == len(self.ssl_names) == len(self.ssl_latent_dims)):
            raise ValueError("ssl_encoder_depths, ssl_names and ssl_latent_dims must have equal lengths")
        if any(not 0 <= d < self.num_layers for d in self.ssl_encoder_depths):
            raise ValueError(f"ssl_encoder_depths {self.ssl_encoder_depths} outside 0..{self.num_layers - 1}")
        if self.remat not in REMAT_MODES:
            raise ValueError(f"remat must be one of {REMAT_MODES}, got {self.remat!r}")
        if self.context_positions not in CONTEXT_POSITIONS:
            raise ValueError(f"context_positions must be one of {CONTEXT_POSITIONS}, got {self.context_positions!r}")
        if self.unroll_blocks and self.remat != "none":
            raise ValueError(f"unroll_blocks runs without remat, got remat={self.remat!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        if self.lyric_encoder.output_size % self.lyric_encoder.attention_heads:
            raise ValueError("lyric encoder output_size must be divisible by attention_heads")

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> TransformerConfig:
        """Build from the reference ``config.json`` (``_``-prefixed keys are ignored)."""
        d = {k: v for k, v in {**d, **overrides}.items() if not k.startswith("_")}
        d.pop("inner_dim", None)  # derived: heads * head_dim
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown transformer config keys: {unknown}")
        if isinstance(d.get("lyric_encoder"), dict):
            d["lyric_encoder"] = LyricEncoderConfig(**d["lyric_encoder"])
        for k in ("ssl_encoder_depths", "ssl_names", "ssl_latent_dims", "patch_size"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def to_dict(self) -> dict:
        """The reference config keys plus the JAX options (JSON-serialisable), without the
        :data:`DEVICE_SETTINGS` that loading chooses for its device."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in DEVICE_SETTINGS}
        d["inner_dim"] = self.inner_dim
        return d

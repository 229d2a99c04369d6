"""Low-rank adapters (LoRA) for the transformer, in the PEFT / diffusers file format.

Adapter files use the reference's module names:
``transformer_blocks.3.attn.to_q.lora_A.weight`` ``[r, in]`` and ``...lora_B.weight``
``[out, r]`` (an optional leading ``transformer.`` is accepted). The scale is
``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA), read from the file's
``lora_adapter_metadata``, an ``adapter_config.json`` beside it, or given explicitly.

Two uses:

* inference: :func:`merge_lora` adds ``weight * scale * B @ A`` into the kernels
  (:func:`unmerge_lora` subtracts it again, as PEFT does);
* training: :func:`add_lora` attaches trainable ``nnx.LoRAParam`` adapters to the
  targeted layers; :func:`lora_state_dict` / :func:`save_lora` export them.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from acestep_jax.convert.core import CheckpointError, linear_t
from acestep_jax.convert.transformer import STACKED_LINEAR, transformer_rules
from acestep_jax.files import write_atomic, write_json
from acestep_jax.models.transformer import ACEStepTransformer

ADAPTER_FILE = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"


@dataclass(frozen=True)
class LoraConfig:
    """The PEFT ``LoraConfig`` fields that matter here (defaults: the reference's rap LoRA)."""

    r: int = 256
    lora_alpha: float = 32.0
    target_modules: tuple[str, ...] | str = (
        "speaker_embedder", "linear_q", "linear_k", "linear_v", "to_q", "to_k", "to_v", "to_out.0",
    )
    use_rslora: bool = True

    def __post_init__(self):
        if self.r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {self.r}")
        if not isinstance(self.target_modules, str):  # a set in PEFT: keep a canonical order
            object.__setattr__(self, "target_modules", tuple(sorted(self.target_modules)))

    @property
    def scale(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @classmethod
    def from_dict(cls, d: Mapping) -> LoraConfig:
        """From a PEFT ``adapter_config.json``-style dict (other PEFT fields are ignored)."""
        if "r" not in d:
            raise ValueError("LoRA config has no rank 'r'")
        targets = d.get("target_modules", cls.target_modules)
        return cls(
            r=int(d["r"]),
            lora_alpha=float(d.get("lora_alpha", d["r"])),
            target_modules=targets,
            use_rslora=bool(d.get("use_rslora", False)),
        )

    def to_peft_dict(self) -> dict:
        targets = self.target_modules
        return {
            "peft_type": "LORA",
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "target_modules": targets if isinstance(targets, str) else list(targets),
            "use_rslora": self.use_rslora,
            "lora_dropout": 0.0,
            "bias": "none",
            "init_lora_weights": True,
        }


@dataclass(frozen=True)
class LinearSite:
    """Where a reference ``nn.Linear`` lives in the NNX model."""

    path: str  # "/"-joined path of the Dense module
    layer: int | None  # index along the stacked-layer axis, or None


def linear_sites(model: ACEStepTransformer) -> dict[str, LinearSite]:
    """Reference module name → NNX Dense location, for every ``nn.Linear`` of the transformer.

    Derived from the converter's rules, so it cannot drift from the weight mapping.
    """
    sites = {}
    for r in transformer_rules(model.cfg):
        if not r.target.endswith("/kernel"):
            continue
        path = r.target[: -len("/kernel")]
        if r.combine is linear_t:
            sites[r.sources[0].removesuffix(".weight")] = LinearSite(path, None)
        elif r.combine is STACKED_LINEAR:
            for i, key in enumerate(r.sources):
                sites[key.removesuffix(".weight")] = LinearSite(path, i)
    return sites


def _matches(name: str, targets) -> bool:
    if isinstance(targets, str):  # PEFT: a string is a regular expression over the full name
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _module(model, path: str):
    node = model
    for part in path.split("/"):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


# ----------------------------------------------------------------------------- files
def read_lora(path: str | os.PathLike, config: LoraConfig | None = None):
    """Read an adapter file (or a folder holding ``pytorch_lora_weights.safetensors``).

    Returns ``(config, {module_name: (A [r, in], B [out, r])})``.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(path, ADAPTER_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise CheckpointError(f"LoRA file not found: {file}")
    try:
        with safe_open(file, framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a LoRA file"
        raise CheckpointError(f"{file} is not a readable safetensors file: {e}") from None
    if config is None:
        if METADATA_KEY in metadata:
            config = LoraConfig.from_dict(json.loads(metadata[METADATA_KEY]))
        elif os.path.isfile(os.path.join(folder, "adapter_config.json")):
            with open(os.path.join(folder, "adapter_config.json")) as fh:
                config = LoraConfig.from_dict(json.load(fh))
    if all(k.startswith("transformer.") for k in tensors):
        tensors = {k[len("transformer."):]: v for k, v in tensors.items()}
    pairs: dict[str, dict[str, np.ndarray]] = {}
    bad = []
    for key, value in tensors.items():
        m = re.fullmatch(r"(.+)\.lora_(A|B)(?:\.[\w-]+)?\.weight", key)
        if m is None:
            bad.append(key)
            continue
        pairs.setdefault(m.group(1), {})[m.group(2)] = value
    if bad:
        raise CheckpointError(f"{file}: not LoRA tensors (expected '<module>.lora_A/B.weight'): {sorted(bad)[:10]}")
    incomplete = sorted(n for n, ab in pairs.items() if set(ab) != {"A", "B"})
    if incomplete:
        raise CheckpointError(f"{file}: modules with only one of lora_A / lora_B: {incomplete[:10]}")
    ranks = {ab["A"].shape[0] for ab in pairs.values()}
    if len(ranks) != 1:
        raise CheckpointError(f"{file}: adapters of several ranks {sorted(ranks)} are not supported")
    rank = ranks.pop()
    if config is None:  # no alpha anywhere: diffusers then uses alpha = r (scale 1)
        config = LoraConfig(r=rank, lora_alpha=float(rank), target_modules=tuple(sorted(pairs)), use_rslora=False)
    if config.r != rank:
        raise CheckpointError(f"{file}: tensors have rank {rank} but the adapter config says r={config.r}")
    return config, {n: (ab["A"], ab["B"]) for n, ab in pairs.items()}


def _check_pairs(model, pairs) -> dict[str, LinearSite]:
    sites = linear_sites(model)
    unknown = sorted(n for n in pairs if n not in sites)
    if unknown:
        raise CheckpointError(f"LoRA modules not in the transformer (or not linear layers): {unknown[:10]}")
    problems = []
    for name, (a, b) in pairs.items():
        dense = _module(model, sites[name].path)
        fan_in, fan_out = dense.kernel.shape[-2:]
        if a.shape[1] != fan_in or b.shape[0] != fan_out or a.shape[0] != b.shape[1]:
            problems.append(f"{name}: A {list(a.shape)}, B {list(b.shape)} vs layer [{fan_in} -> {fan_out}]")
    if problems:
        raise CheckpointError("LoRA shapes do not fit the transformer:\n  " + "\n  ".join(problems[:20]))
    return sites


def _apply_delta(model, pairs, scale: float, sign: float):
    sites = _check_pairs(model, pairs)
    for name, (a, b) in pairs.items():
        site = sites[name]
        dense = _module(model, site.path)
        kernel = dense.kernel[...]
        delta = sign * scale * (jnp.asarray(a, jnp.float32).T @ jnp.asarray(b, jnp.float32).T)
        if site.layer is None:
            new = kernel.astype(jnp.float32) + delta
        else:
            new = kernel.astype(jnp.float32).at[site.layer].add(delta)
        dense.kernel[...] = new.astype(kernel.dtype)


def merge_lora(model: ACEStepTransformer, path, weight: float = 1.0, config: LoraConfig | None = None):
    """Add an adapter file into the model's kernels with strength ``weight`` (in place).

    Returns the ``(config, pairs)`` read, for :func:`unmerge_lora`.
    """
    config, pairs = read_lora(path, config)
    _apply_delta(model, pairs, config.scale * weight, +1.0)
    return config, pairs


def unmerge_lora(model: ACEStepTransformer, merged, weight: float = 1.0):
    """Subtract an adapter merged by :func:`merge_lora` (equal up to float rounding)."""
    config, pairs = merged
    _apply_delta(model, pairs, config.scale * weight, -1.0)


# ----------------------------------------------------------------------------- training
def _target_groups(model, config: LoraConfig) -> dict[str, list[int | None]]:
    groups: dict[str, list[int | None]] = {}
    for name, site in linear_sites(model).items():
        if _matches(name, config.target_modules):
            groups.setdefault(site.path, []).append(site.layer)
    if not groups:
        raise ValueError(f"LoRA target_modules {config.target_modules} match no linear layer of the transformer")
    for path, layers in groups.items():
        stacked = layers[0] is not None
        depth = _module(model, path).kernel.shape[0] if stacked else 1
        if stacked and sorted(layers) != list(range(depth)):
            raise ValueError(f"LoRA targets only some of the stacked layers of {path}; target all or none")
    return groups


def add_lora(model: ACEStepTransformer, config: LoraConfig, rngs: nnx.Rngs) -> list[str]:
    """Attach trainable adapters (``nnx.LoRAParam``) to the targeted layers, in place.

    ``A`` is initialised like PEFT (Kaiming-uniform), ``B`` with zeros, so the model's
    output is unchanged until training moves ``B``. Returns the adapted module paths.
    """
    paths = sorted(_target_groups(model, config))
    for path in paths:
        dense = _module(model, path)
        *lead, fan_in, fan_out = dense.kernel.shape
        axes = dense.kernel.get_metadata().get("out_sharding") or (None,) * (len(lead) + 2)
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(rngs.params(), (*lead, fan_in, config.r), jnp.float32, -bound, bound)
        b = jnp.zeros((*lead, config.r, fan_out), jnp.float32)
        dense.lora_a = nnx.LoRAParam(a.astype(dense.kernel.dtype), out_sharding=(*axes[:-1], None), eager_sharding=False)
        dense.lora_b = nnx.LoRAParam(b.astype(dense.kernel.dtype), out_sharding=(*axes[:-2], None, axes[-1]), eager_sharding=False)
        dense.lora_scale = config.scale
    return paths


def lora_state_dict(model: ACEStepTransformer) -> dict[str, np.ndarray]:
    """The attached adapters under reference names (``<module>.lora_A.weight`` ``[r, in]``, ...)."""
    out = {}
    for name, site in linear_sites(model).items():
        dense = _module(model, site.path)
        if dense.lora_a is None:
            continue
        a, b = np.asarray(dense.lora_a[...], np.float32), np.asarray(dense.lora_b[...], np.float32)
        if site.layer is not None:
            a, b = a[site.layer], b[site.layer]
        out[f"{name}.lora_A.weight"] = np.ascontiguousarray(a.T)
        out[f"{name}.lora_B.weight"] = np.ascontiguousarray(b.T)
    return out


def save_lora(model: ACEStepTransformer, config: LoraConfig, folder: str | os.PathLike) -> str:
    """Write ``pytorch_lora_weights.safetensors`` (with PEFT metadata) and ``adapter_config.json``.

    The folder loads with diffusers' ``load_lora_adapter`` / PEFT and with :func:`merge_lora`.
    """
    from safetensors.numpy import save_file

    tensors = lora_state_dict(model)
    if not tensors:
        raise ValueError("the model has no LoRA adapters attached")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    peft = config.to_peft_dict()
    metadata = {"format": "pt", METADATA_KEY: json.dumps(peft)}
    write_atomic(os.path.join(folder, ADAPTER_FILE), lambda p: save_file(tensors, p, metadata=metadata))
    write_json(os.path.join(folder, "adapter_config.json"), peft)
    return os.path.join(folder, ADAPTER_FILE)

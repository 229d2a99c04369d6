"""Low-rank adapters (LoRA) for the transformer, in the PEFT / diffusers file format.

Adapter files use the reference's module names:
``transformer_blocks.3.attn.to_q.lora_A.weight`` ``[r, in]``, ``...lora_B.weight``
``[out, r]`` and optionally ``...to_q.alpha`` (an optional leading ``transformer.`` is
accepted). How strongly a file acts is its ``scale_mode`` (see :class:`LoraSpec`):

* ``"reference"`` (default): as the reference pipeline applies LoRAs. It loads the file
  with diffusers' ``load_lora_adapter(file, with_alpha=True, prefix=None)``, which on
  that path reads neither the ``lora_adapter_metadata`` nor ``.alpha`` tensors
  (``with_alpha`` is not a diffusers option), so every module gets ``alpha = r``;
  ``set_weights_and_activate_adapters`` then scales by the LoRA weight. The delta is
  ``weight * B @ A``. Published ACE-Step LoRAs and their suggested weights assume this.
* ``"config"``: PEFT's scaling as trained, ``weight * alpha / r`` (``alpha / sqrt(r)``
  with rsLoRA); ``alpha`` is the module's ``.alpha`` tensor, else the file's metadata
  or an ``adapter_config.json`` beside it, else ``r``.

Adapters trained here are saved with the training scale folded into ``lora_B`` (metadata
and ``.alpha`` say ``alpha = r``), so the reference pipeline, PEFT / diffusers and both
modes here all give the trained effect at weight 1.

Two uses:

* inference: :func:`merge_loras` adds ``scale * B @ A`` of one or more adapters into the
  kernels; :func:`unmerge_lora` puts the original kernels back exactly;
* training: :func:`add_lora` attaches trainable ``nnx.LoRAParam`` adapters to the
  targeted layers; :func:`lora_state_dict` / :func:`save_lora` export them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from acestep_jax.convert.core import CheckpointError, linear_t
from acestep_jax.convert.transformer import STACKED_LINEAR, transformer_rules
from acestep_jax.files import write_atomic, write_json
from acestep_jax.models.transformer import ACEStepTransformer
from acestep_jax.nn import Dense

log = logging.getLogger(__name__)

ADAPTER_FILE = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"
TRAINING_KEY = "acestep_jax_training"  # metadata of adapters saved here: the trained config and folded scale
SCALE_MODES = ("reference", "config")


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
            "rank_pattern": {},  # diffusers requires both when it reads the metadata
            "alpha_pattern": {},
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

    Derived from the converter's rules, so it cannot drift from the weight mapping. A model
    held one module per block (``cfg.unroll_blocks``) has ``blocks/<i>/...`` sites.
    """
    sites = {}
    for r in transformer_rules(model.cfg):
        if not r.target.endswith("/kernel"):
            continue
        path = r.target[: -len("/kernel")]
        if r.combine is linear_t:
            sites[r.sources[0].removesuffix(".weight")] = LinearSite(path, None)
        elif r.combine is STACKED_LINEAR:
            per_block = model.cfg.unroll_blocks and path.startswith("blocks/")
            for i, key in enumerate(r.sources):
                site = LinearSite(f"blocks/{i}/{path.removeprefix('blocks/')}", None) if per_block else LinearSite(path, i)
                sites[key.removesuffix(".weight")] = site
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
@dataclass(frozen=True)
class LoraFile:
    """The contents of one adapter file.

    ``pairs``: ``{module: (A [r, in], B [out, r])}``; ``alphas``: the ``<module>.alpha``
    tensors; ``config``: from the file's metadata or an ``adapter_config.json`` beside it.
    """

    path: str
    rank: int
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]
    alphas: dict[str, float]
    config: LoraConfig | None

    def scales(self, mode: str) -> dict[str, float]:
        """Per-module scale before the LoRA weight under ``mode`` (see the module docstring)."""
        if mode == "reference":
            return dict.fromkeys(self.pairs, 1.0)
        if mode != "config":
            raise ValueError(f"LoRA scale mode must be one of {SCALE_MODES}, got {mode!r}")
        alpha = self.config.lora_alpha if self.config is not None else float(self.rank)
        rslora = self.config is not None and self.config.use_rslora
        denominator = math.sqrt(self.rank) if rslora else self.rank
        return {name: self.alphas.get(name, alpha) / denominator for name in self.pairs}


def resolve_lora(spec: str | os.PathLike) -> str:
    """A LoRA's local path: ``spec`` itself when it exists, else the Hub repo it names (e.g.
    ``ACE-Step/ACE-Step-v1-chinese-rap-LoRA``), downloaded once into the Hugging Face cache."""
    from acestep_jax.convert.hub import looks_like_repo_id, snapshot

    if os.path.exists(spec) or not looks_like_repo_id(os.fspath(spec)):
        return os.fspath(spec)
    return os.fspath(snapshot(os.fspath(spec), ["*.safetensors", "*.json"], "LoRA"))


def lora_exists(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a LoRA: an existing path or a Hub repo id (checked before anything loads)."""
    from acestep_jax.convert.hub import looks_like_repo_id

    return os.path.exists(spec) or looks_like_repo_id(os.fspath(spec))


def read_lora(path: str | os.PathLike) -> LoraFile:
    """Read an adapter file (or a folder holding ``pytorch_lora_weights.safetensors``), local or by Hub id."""
    from safetensors import safe_open

    path = resolve_lora(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(path, ADAPTER_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise CheckpointError(f"LoRA file not found: {file}")
    try:
        with safe_open(file, framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a LoRA file"
        raise CheckpointError(f"{file} is not a readable safetensors file: {e}") from None
    config = None
    if METADATA_KEY in metadata:
        config = LoraConfig.from_dict(json.loads(metadata[METADATA_KEY]))
    elif os.path.isfile(os.path.join(folder, "adapter_config.json")):
        with open(os.path.join(folder, "adapter_config.json")) as fh:
            config = LoraConfig.from_dict(json.load(fh))
    if all(k.startswith("transformer.") for k in tensors):
        tensors = {k[len("transformer."):]: v for k, v in tensors.items()}
    pairs: dict[str, dict[str, np.ndarray]] = {}
    alphas: dict[str, float] = {}
    nonfinite = sorted(k for k, v in tensors.items()
                       if v.dtype.kind not in "iub" and not np.isfinite(v.astype(np.float32)).all())
    if nonfinite:
        raise CheckpointError(f"{file}: tensors hold NaN or Inf values: {nonfinite[:10]}; the adapter is broken "
                              "(retrain it or use another checkpoint of it)")
    bad = []
    for key, value in tensors.items():
        m = re.fullmatch(r"(.+)\.lora_(A|B)(?:\.[\w-]+)?\.weight", key)
        if m is not None:
            pairs.setdefault(m.group(1), {})[m.group(2)] = value
        elif key.endswith(".alpha") and value.size == 1:
            alphas[key.removesuffix(".alpha")] = float(value.reshape(()))
        else:
            bad.append(key)
    if bad:
        raise CheckpointError(f"{file}: not LoRA tensors (expected '<module>.lora_A/B.weight' or "
                              f"'<module>.alpha'): {sorted(bad)[:10]}")
    incomplete = sorted(n for n, ab in pairs.items() if set(ab) != {"A", "B"})
    if incomplete:
        raise CheckpointError(f"{file}: modules with only one of lora_A / lora_B: {incomplete[:10]}")
    stray = sorted(set(alphas) - set(pairs))
    if stray:
        raise CheckpointError(f"{file}: '.alpha' for modules without lora_A / lora_B: {stray[:10]}")
    if not pairs:
        raise CheckpointError(f"{file} holds no LoRA tensors")
    ranks = {ab["A"].shape[0] for ab in pairs.values()}
    if len(ranks) != 1:
        raise CheckpointError(f"{file}: adapters of several ranks {sorted(ranks)} are not supported")
    rank = ranks.pop()
    if config is not None and config.r != rank:
        raise CheckpointError(f"{file}: tensors have rank {rank} but the adapter config says r={config.r}")
    return LoraFile(file, rank, {n: (ab["A"], ab["B"]) for n, ab in pairs.items()}, alphas, config)


# ----------------------------------------------------------------------------- merging
@dataclass(frozen=True)
class LoraSpec:
    """An adapter to merge: its file or folder, strength ``weight`` and ``scale_mode``
    (``"reference"`` or ``"config"``, see the module docstring)."""

    path: str
    weight: float = 1.0
    scale_mode: str = "reference"

    def __post_init__(self):
        object.__setattr__(self, "path", os.fspath(self.path))
        object.__setattr__(self, "weight", float(self.weight))
        if self.scale_mode not in SCALE_MODES:
            raise ValueError(f"LoRA scale mode must be one of {SCALE_MODES}, got {self.scale_mode!r}")
        if not math.isfinite(self.weight):
            raise ValueError(f"LoRA weight must be finite, got {self.weight}")

    def to_record(self) -> dict:
        return {"path": self.path, "weight": self.weight, "scale": self.scale_mode}

    @classmethod
    def from_record(cls, record: Mapping) -> LoraSpec:
        """From :meth:`to_record`'s dict; records without ``scale`` predate scale modes and
        were generated with the config's scaling."""
        return cls(record["path"], record.get("weight", 1.0), record.get("scale", "config"))


@dataclass(frozen=True)
class ModuleDelta:
    """What one adapter added to one module's weight: ``scale * B @ A`` (LoRA weight included)."""

    a: np.ndarray  # [r, in]
    b: np.ndarray  # [out, r]
    scale: float


@dataclass(frozen=True)
class MergedLora:
    """One merged adapter: what was asked for and the deltas added, by reference module name."""

    spec: LoraSpec
    deltas: dict[str, ModuleDelta]


@dataclass(frozen=True)
class LoraMerge:
    """Adapters merged into a model, in order, and the kernels they replaced (host copies,
    by NNX path), which :func:`unmerge_lora` puts back."""

    adapters: tuple[MergedLora, ...]
    originals: dict[str, np.ndarray]

    @property
    def specs(self) -> list[LoraSpec]:
        return [a.spec for a in self.adapters]


def _check_pairs(model, sites: dict[str, LinearSite], lora: LoraFile) -> None:
    unknown = sorted(n for n in lora.pairs if n not in sites)
    if unknown:
        raise CheckpointError(f"{lora.path}: LoRA modules not in the transformer (or not linear layers): "
                              f"{unknown[:10]}")
    problems = []
    for name, (a, b) in sorted(lora.pairs.items()):
        dense = _module(model, sites[name].path)
        fan_in, fan_out = dense.kernel.shape[-2:]
        if a.shape[1] != fan_in or b.shape[0] != fan_out or a.shape[0] != b.shape[1]:
            problems.append(f"{name}: A {list(a.shape)}, B {list(b.shape)} vs layer [{fan_in} -> {fan_out}]")
    if problems:
        raise CheckpointError(f"{lora.path}: LoRA shapes of {len(problems)} module(s) do not fit the transformer "
                              "(an adapter for another model size?); the first:\n  " + "\n  ".join(problems[:5]))


def _log_scale(lora: LoraFile, spec: LoraSpec, scales: dict[str, float]) -> None:
    declared = sorted({round(s, 6) for s in lora.scales("config").values()})
    used = sorted({round(s, 6) for s in scales.values()})
    log.info("merging LoRA %s: weight %g, %s scale %s", spec.path, spec.weight, spec.scale_mode,
             used[0] if len(used) == 1 else used)
    if spec.scale_mode == "reference" and declared != [1.0]:
        log.info("  its alpha / config would scale it by %s (scale mode 'config'); the reference pipeline "
                 "ignores that, as this mode does", declared[0] if len(declared) == 1 else declared)


def merge_loras(model: ACEStepTransformer, specs: Sequence[LoraSpec]) -> LoraMerge:
    """Add adapters into the model's kernels, in order (in place).

    Every file is read and checked before the model changes. Each touched kernel gets
    ``sum(scale * B @ A)`` added in float32 and is cast back once; its original is kept
    (on the host) so :func:`unmerge_lora` restores it exactly.
    """
    sites = linear_sites(model)
    adapters = []
    for spec in specs:
        lora = read_lora(spec.path)
        _check_pairs(model, sites, lora)
        scales = lora.scales(spec.scale_mode)
        _log_scale(lora, spec, scales)
        deltas = {n: ModuleDelta(a, b, spec.weight * scales[n]) for n, (a, b) in lora.pairs.items()}
        adapters.append(MergedLora(spec, deltas))
    by_kernel: dict[str, list[tuple[int | None, ModuleDelta]]] = {}
    for adapter in adapters:
        for name, delta in adapter.deltas.items():
            by_kernel.setdefault(sites[name].path, []).append((sites[name].layer, delta))
    originals = {}
    for path, deltas in by_kernel.items():
        dense = _module(model, path)
        kernel = dense.kernel[...]
        originals[path] = np.asarray(jax.device_get(kernel))
        new = kernel.astype(jnp.float32)
        for layer, d in deltas:
            update = d.scale * jnp.matmul(jnp.asarray(d.a, jnp.float32).T, jnp.asarray(d.b, jnp.float32).T,
                                          precision=jax.lax.Precision.HIGHEST)
            new = new + update if layer is None else new.at[layer].add(update)
        dense.kernel[...] = new.astype(kernel.dtype)
    return LoraMerge(tuple(adapters), originals)


def merge_lora(model: ACEStepTransformer, path, weight: float = 1.0, scale_mode: str = "reference") -> LoraMerge:
    """Merge one adapter file (see :func:`merge_loras`)."""
    return merge_loras(model, [LoraSpec(path, weight, scale_mode)])


def unmerge_lora(model: ACEStepTransformer, merged: LoraMerge) -> None:
    """Put back the kernels a :func:`merge_loras` replaced: the model is exactly as before."""
    for path, original in merged.originals.items():
        dense = _module(model, path)
        dense.kernel[...] = jax.device_put(original, dense.kernel[...].sharding)


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


def freeze_in_compute_dtype(model: ACEStepTransformer) -> int:
    """Store every ``Dense`` kernel and bias (frozen while adapters train) in its layer's compute
    dtype, in place; returns how many arrays changed. Each use casts them to that dtype anyway,
    so the step computes the same numbers, but it no longer converts them (and copies float32
    weights out of the stacked blocks) in the forward, the recomputed forward and the backward."""
    changed = 0
    for _, node in nnx.iter_graph(model):
        if not isinstance(node, Dense):
            continue
        for var in (node.kernel, node.bias):
            if var is not None and var.dtype != node.dtype:
                var.set_value(var[...].astype(node.dtype))
                changed += 1
    return changed


def lora_state_dict(model: ACEStepTransformer) -> dict[str, np.ndarray]:
    """The attached adapters as trained, under reference names (``<module>.lora_A.weight``
    ``[r, in]``, ...; the training scale is not applied)."""
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
    """Write the attached adapters as ``pytorch_lora_weights.safetensors`` and ``adapter_config.json``.

    The training scale ``config.scale`` is folded into ``lora_B``, and the file declares
    ``alpha = r`` (PEFT metadata, ``adapter_config.json`` and a ``<module>.alpha`` tensor
    per module): the reference pipeline (which applies no alpha), diffusers / PEFT (which
    read the metadata) and :func:`merge_loras` in either scale mode then all reproduce the
    training-time model at weight 1. The trained config and the folded scale are kept in the
    metadata under ``acestep_jax_training``.
    """
    from safetensors.numpy import save_file

    trained = lora_state_dict(model)
    if not trained:
        raise ValueError("the model has no LoRA adapters attached")
    tensors = {}
    for key, value in trained.items():
        if key.endswith(".lora_B.weight"):
            value = value * np.float32(config.scale)
            tensors[key.removesuffix(".lora_B.weight") + ".alpha"] = np.asarray(config.r, np.float32)
        tensors[key] = value
    folded = LoraConfig(r=config.r, lora_alpha=float(config.r), target_modules=config.target_modules,
                        use_rslora=False)
    peft = folded.to_peft_dict()
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    metadata = {"format": "pt", METADATA_KEY: json.dumps(peft),
                TRAINING_KEY: json.dumps({**config.to_peft_dict(), "scale_folded_into_lora_B": config.scale})}
    write_atomic(os.path.join(folder, ADAPTER_FILE), lambda p: save_file(tensors, p, metadata=metadata))
    write_json(os.path.join(folder, "adapter_config.json"), peft)
    return os.path.join(folder, ADAPTER_FILE)

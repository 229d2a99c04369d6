"""Training configuration: nested frozen dataclasses read from JSON/YAML plus ``a.b=value`` overrides.

Defaults follow the reference trainer (``trainer.py``): AdamW lr 1e-4, betas (0.8, 0.9),
weight decay 1e-2, 10 linear warm-up steps then linear decay to zero at ``max_steps``,
gradient-norm clipping at 0.5, flow-matching shift 3 with logit-normal(0, 1) timesteps,
REPA weight 1, condition dropout text 0.15 / speaker 0.5 / lyrics 0.15.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from acestep_jax.errors import UsageError


@dataclass(frozen=True)
class ModelSection:
    """Which transformer to train.

    ``transformer`` is a preset name (``tiny``, ``full``), a config dict or a path to a
    JSON config (the reference's ``config.json``); ``checkpoint`` a checkpoint to start from
    (random initialisation when ``None``). ``lora`` (dict or PEFT ``adapter_config.json``
    path) switches to adapter training: only adapters are trained and saved.
    """

    transformer: Any = "full"
    checkpoint: str | None = None
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat: str = "full"
    lora: Any = None


@dataclass(frozen=True)
class DataSection:
    """Record files and batching. ``batch_size`` is global (all hosts) per micro-batch."""

    path: str | None = None
    batch_size: int = 1
    max_frames: int = 2583  # 240 s of 44.1 kHz latents (the reference's longest clip)
    frame_buckets: tuple[int, ...] = ()  # pad frames up to the first bucket ≥ length; () → pad_multiple
    pad_multiple: int = 16
    max_text_tokens: int = 256
    max_lyric_tokens: int = 4096
    seed: int = 0
    num_threads: int = 2
    prefetch: int = 4
    synthetic: int = 0  # without a path: generate this many random examples


@dataclass(frozen=True)
class LossSection:
    """The objective. ``lyric_encoder_dropout``: the lyric encoder trains with its dropout on,
    at the rates of the model config (0.1, as the reference's train mode)."""

    num_train_timesteps: int = 1000
    shift: float = 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    ssl_coeff: float = 1.0
    text_drop: float = 0.15
    speaker_drop: float = 0.5
    lyric_drop: float = 0.15
    lyric_encoder_dropout: bool = True


@dataclass(frozen=True)
class OptimSection:
    learning_rate: float = 1e-4
    b1: float = 0.8
    b2: float = 0.9
    eps: float = 1e-8
    weight_decay: float = 1e-2
    warmup_steps: int = 10
    max_steps: int = 200_000
    clip_norm: float = 0.5  # 0 disables clipping
    grad_accum: int = 1


@dataclass(frozen=True)
class MeshSection:
    """Mesh axis sizes (one may be -1: the remaining devices) and ``rules``: logical-axis
    overrides of :data:`acestep_jax.sharding.DEFAULT_RULES`, e.g. ``{"embed": null,
    "mlp": ["fsdp", "tensor"]}``, used for both parameters and activations."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunSection:
    """Output, logging, checkpoint and evaluation cadence.

    ``steps`` bounds this invocation (``None``: run to ``optim.max_steps``).
    ``eval_fn`` is ``"module:function"`` called as ``fn(trainer, step)`` every ``eval_every`` steps.
    ``profile_dir``: write a profiler trace of ``profile_steps`` steps, starting after the
    first (compiling) step of this invocation.
    """

    output_dir: str = "runs/acestep"
    seed: int = 0
    steps: int | None = None
    save_every: int = 2000
    keep: int = 3
    async_checkpoint: bool = True
    log_every: int = 1
    eval_every: int = 0
    eval_fn: str | None = None
    progress: bool = True
    profile_dir: str | None = None
    profile_steps: int = 3


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    mesh: MeshSection = field(default_factory=MeshSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self):
        if self.data.batch_size < 1 or self.optim.grad_accum < 1:
            raise UsageError("data.batch_size and optim.grad_accum must be ≥ 1")
        if self.optim.max_steps < 1:
            raise UsageError(f"optim.max_steps must be ≥ 1, got {self.optim.max_steps}")

    @classmethod
    def from_dict(cls, d: dict, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        """Build from a nested dict; ``overrides`` are ``section.key=value`` (value parsed as JSON if it can be)."""
        if not isinstance(d, dict):
            raise UsageError(f"config must be a mapping, got {type(d).__name__}")
        d = json.loads(json.dumps(d))  # deep copy
        for item in overrides:
            if "=" not in item:
                raise UsageError(f"--set {item!r} is not section.key=value")
            dotted, raw = item.split("=", 1)
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            *parents, leaf = dotted.strip().split(".")
            node = d
            for p in parents:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise UsageError(f"--set {item!r}: {p} is not a section")
            if not isinstance(node, dict):
                raise UsageError(f"--set {item!r}: {dotted} is not inside a section")
            node[leaf] = value
        return _build(cls, d, "config")

    @classmethod
    def load(cls, path: str | os.PathLike, overrides=()) -> TrainConfig:
        """Read a ``.json`` or ``.yaml``/``.yml`` file, or a packaged config by name (``train_tiny``)."""
        from acestep_jax.presets import packaged_config, training_configs

        path = os.fspath(path)
        if not os.path.isfile(path) and path in training_configs():
            return cls.from_dict(json.loads(packaged_config(f"{path}.json").read_text()), overrides)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"training config not found: {path} (packaged configs: {', '.join(training_configs())})"
            )
        from acestep_jax.files import read_text

        text = read_text(path, "training config")
        if path.endswith((".yaml", ".yml")):
            import yaml

            try:
                d = yaml.safe_load(text) or {}
            except yaml.YAMLError as e:
                raise UsageError(f"training config {path} is not valid YAML: {' '.join(str(e).split())}") from None
        else:
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise UsageError(f"training config {path} is not valid JSON ({e.msg} at line {e.lineno} "
                                 f"column {e.colno})") from None
        return cls.from_dict(d, overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, d, where):
    if not isinstance(d, dict):
        raise UsageError(f"{where} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise UsageError(f"unknown keys in {where}: {unknown}; known: {sorted(names)}")
    return cls(**{k: _check(hints[k], v, f"{where}.{k}") for k, v in d.items()})


def _check(hint, value, where):
    """``value`` as the field type ``hint`` wants it, or a :class:`UsageError` naming ``where``."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is Any:
        return value
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise UsageError(f"{where} must not be null")
    for option in (o for o in options if o is not type(None)):
        origin = typing.get_origin(option) or option
        if origin is tuple and isinstance(value, list | tuple):
            (item,) = {a for a in typing.get_args(option) if a is not Ellipsis} or {Any}
            return tuple(_check(item, v, f"{where}[{i}]") for i, v in enumerate(value))
        if origin is dict and isinstance(value, dict):
            return value
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
        if option is float and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if option is str and isinstance(value, str):
            return value
    want = " or ".join(_TYPE_NAMES.get(typing.get_origin(o) or o, str(o)) for o in options)
    raise UsageError(f"{where} must be {want}, got {value!r}")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
               tuple: "a list", dict: "a mapping", type(None): "null"}

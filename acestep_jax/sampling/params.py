"""Sampling arguments, conditioning inputs and noise sources of :func:`acestep_jax.sampling.generate`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from acestep_jax.codec.codec import LATENT_CHANNELS, LATENT_HEIGHT, seconds_to_frames
from acestep_jax.errors import UsageError
from acestep_jax.sampling.fields import Field
from acestep_jax.sampling.guidance import CFG_TYPES
from acestep_jax.sampling.inputs import pad_frames, shard_batch
from acestep_jax.sampling.schedulers import SCHEDULERS

TASKS = ("text2music", "retake", "repaint", "extend", "edit", "audio2audio")
SOURCE_TASKS = ("repaint", "extend", "edit", "audio2audio")  # tasks that need source audio / latents
REPAINT_TASKS = ("repaint", "extend")
MAX_SECONDS = 240.0  # the reference's longest output (it caps extended outputs there)
MAX_FRAMES = seconds_to_frames(MAX_SECONDS)
MAX_STEPS = 1000  # the training table's length: no schedule has more steps
@dataclass(frozen=True)
class SamplingParams:
    """Arguments of one generation, named as in the reference pipeline.

    Defaults are those of the reference ``__call__``. ``duration`` (seconds) sets the
    length of ``text2music``/``retake`` outputs; tasks with source latents take their
    length from them. ``n_min``/``n_max``/``n_avg`` are the FlowEdit arguments
    (``edit_n_*`` in the reference); ``bucket`` rounds the latent length up to
    :func:`acestep_jax.sampling.bucket_frames` so nearby durations share one compile
    (not for ``edit``); padded frames are masked, so results equal the unpadded run.
    ``batch_invariant`` takes the omega mean shift per item instead of over the whole
    batch (the reference's behaviour), so an item's result does not depend on what it
    is batched with.
    """

    task: str = "text2music"
    duration: float = 60.0
    infer_steps: int = 60
    guidance_scale: float = 15.0
    omega_scale: float = 10.0
    scheduler_type: str = "euler"
    cfg_type: str = "apg"
    guidance_interval: float = 0.5
    guidance_interval_decay: float = 0.0
    min_guidance_scale: float = 3.0
    use_erg_tag: bool = True
    use_erg_lyric: bool = True
    use_erg_diffusion: bool = True
    guidance_scale_text: float = 0.0
    guidance_scale_lyric: float = 0.0
    oss_steps: tuple[int, ...] = ()
    zero_steps: int = 1
    use_zero_init: bool = True
    retake_variance: float = 0.5
    repaint_start: float = 0.0
    repaint_end: float = 0.0
    ref_audio_strength: float = 0.5
    n_min: float = 0.0
    n_max: float = 1.0
    n_avg: int = 1
    bucket: bool = False
    batch_invariant: bool = False

    def __post_init__(self):
        if isinstance(self.oss_steps, list) or self.oss_steps is None:  # from JSON
            object.__setattr__(self, "oss_steps", tuple(self.oss_steps or ()))

    def replace(self, **kw) -> SamplingParams:
        return dataclasses.replace(self, **kw)

    @property
    def do_cfg(self) -> bool:
        """Whether guidance runs at all (the reference disables it at scale 0 or 1)."""
        return self.guidance_scale not in (0.0, 1.0)

    @property
    def double_condition(self) -> bool:
        return (self.guidance_scale_text or 0) > 1.0 and (self.guidance_scale_lyric or 0) > 1.0

    @property
    def guidance_mode(self) -> str:
        """``"none"``, ``"double"`` (separate text and lyric scales) or the ``cfg_type``."""
        if not self.do_cfg:
            return "none"
        return "double" if self.double_condition else self.cfg_type

    def structure(self) -> tuple:
        """What selects the compiled program besides array shapes: the items of one batch
        must agree on it, while the :data:`ITEM_FIELDS` may differ per item."""
        names = ["task", "scheduler_type", "infer_steps", "oss_steps", "zero_steps", "use_zero_init", "bucket",
                 "batch_invariant"]
        if self.task in REPAINT_TASKS:
            names += ["repaint_start", "repaint_end", "retake_variance"]
        elif self.task == "audio2audio":
            names.append("ref_audio_strength")
        elif self.task == "edit":
            names += ["n_min", "n_max", "n_avg"]
        return (("guidance", self.guidance_mode), *((n, getattr(self, n)) for n in names))

    def validate(self, source_frames: int | None = None) -> None:
        """Raise :class:`~acestep_jax.errors.UsageError` naming the first bad argument.

        ``source_frames`` is the length of the source latents (``None`` when absent).
        """
        for f in PARAM_FIELDS:
            f.check(getattr(self, f.name))
        if self.oss_steps and self.scheduler_type == "heun":
            raise UsageError("oss_steps cannot be used with scheduler_type='heun' (as in the reference)")
        if self.task in SOURCE_TASKS and source_frames is None:
            raise UsageError(f"task {self.task!r} needs source latents (Conditioning.src_latents)")
        if source_frames is None and not 0 < self.duration <= MAX_SECONDS:
            raise UsageError(f"duration must be > 0 and <= {MAX_SECONDS:g} seconds, got {self.duration!r}")
        if source_frames is None and seconds_to_frames(self.duration) < 1:
            raise UsageError(f"duration {self.duration!r} s is shorter than one latent frame")
        steps = max(self.oss_steps) if self.oss_steps else self.infer_steps
        if self.task in ("repaint", "extend") and int(steps * (1 - self.retake_variance)) >= steps:
            raise UsageError(
                f"retake_variance={self.retake_variance} leaves no denoising step of {steps} "
                "for repaint/extend (the loop starts at int(steps * (1 - retake_variance)))"
            )
        if self.task in ("repaint", "extend"):
            frames = source_frames
            start, end = seconds_to_frames(self.repaint_start), seconds_to_frames(self.repaint_end)
            if end <= start:
                raise UsageError(
                    f"repaint_end ({self.repaint_end}) must be after repaint_start ({self.repaint_start})"
                )
            if self.task == "repaint" and (start < 0 or end > frames):
                raise UsageError(
                    f"repaint window [{self.repaint_start}, {self.repaint_end}] s is outside the "
                    f"source audio (0 to {frames} frames); use task='extend' to extend it"
                )
            if self.task == "extend":
                if start >= 0 and end <= frames:
                    raise UsageError(
                        "extend needs repaint_start < 0 or repaint_end beyond the source "
                        f"({frames} frames); got [{self.repaint_start}, {self.repaint_end}] s"
                    )
                if start < -frames:
                    raise UsageError(
                        f"repaint_start ({self.repaint_start} s) extends left by more than the "
                        f"source length ({frames} frames)"
                    )
                total = max(-start, 0) + frames
                if end > frames:
                    # the reference measures the right padding from the left-padded length
                    if end <= total:
                        raise UsageError(
                            f"repaint_end ({self.repaint_end} s) must lie beyond the left-extended "
                            f"length ({total} frames) when extending both sides"
                        )
                    total = end
                if total > MAX_FRAMES:
                    raise UsageError(f"extended length {total} frames exceeds the 240 s limit ({MAX_FRAMES})")
        if self.task == "audio2audio" and self.ref_audio_strength == 1.0:
            raise UsageError("ref_audio_strength must be below 1 for audio2audio (1 keeps no denoising step)")
        if self.task == "audio2audio" and int((1 - self.ref_audio_strength) * self.infer_steps) < 1:
            raise UsageError(
                f"ref_audio_strength={self.ref_audio_strength} with infer_steps={self.infer_steps} "
                "leaves no denoising steps"
            )
        if self.task == "edit":
            if self.n_min > self.n_max:
                raise UsageError(f"edit needs n_min <= n_max, got n_min={self.n_min} n_max={self.n_max}")
            if self.oss_steps:
                raise UsageError("oss_steps is not supported by the edit task")




PARAM_FIELDS = (
    Field("task", "str", ", ".join(TASKS), reference="task", choices=TASKS),
    Field("duration", "float", "seconds (text2music/retake; other tasks take the source's length)",
          reference="audio_duration", per_item=True),
    Field("infer_steps", "int", "denoising steps", flag="--steps", reference="infer_step", low=1, high=MAX_STEPS),
    Field("guidance_scale", "float", "classifier-free guidance scale (0 or 1: no guidance)",
          reference="guidance_scale", low=0, high=200, per_item=True),
    Field("omega_scale", "float", "granularity: the scheduler's mean-shift strength", flag="--omega",
          reference="omega_scale", low=-100, high=100, per_item=True),
    Field("scheduler_type", "str", ", ".join(SCHEDULERS), flag="--scheduler", reference="scheduler_type",
          choices=SCHEDULERS),
    Field("cfg_type", "str", ", ".join(CFG_TYPES), reference="cfg_type", choices=CFG_TYPES),
    Field("guidance_interval", "float", "fraction of the steps, centred, that use guidance",
          reference="guidance_interval", low=0, high=1, per_item=True),
    Field("guidance_interval_decay", "float", "guidance decays linearly to min-guidance-scale over the interval "
          "(0: constant)", reference="guidance_interval_decay", low=0, high=1, per_item=True),
    Field("min_guidance_scale", "float", "the guidance scale the decay ends at", reference="min_guidance_scale",
          low=0, high=200, per_item=True),
    Field("use_erg_tag", "bool", "no entropy-rectifying guidance on the prompt", flag="--no-erg-tag",
          reference="use_erg_tag", per_item=True),
    Field("use_erg_lyric", "bool", "no entropy-rectifying guidance on the lyrics", flag="--no-erg-lyric",
          reference="use_erg_lyric", per_item=True),
    Field("use_erg_diffusion", "bool", "no entropy-rectifying guidance in the transformer",
          flag="--no-erg-diffusion", reference="use_erg_diffusion", per_item=True),
    Field("guidance_scale_text", "float", "separate prompt guidance (with guidance-scale-lyric > 1)",
          reference="guidance_scale_text", low=0, high=200, per_item=True),
    Field("guidance_scale_lyric", "float", "separate lyric guidance (with guidance-scale-text > 1)",
          reference="guidance_scale_lyric", low=0, high=200, per_item=True),
    Field("oss_steps", "ints", "custom steps out of 1000, e.g. 16,29,52,96,129,158", reference="oss_steps",
          low=1, high=MAX_STEPS, nullable=True),
    Field("zero_steps", "int", "steps that start from the zero-init prediction", low=0, high=MAX_STEPS),
    Field("use_zero_init", "bool", "no zero-init of the first steps' guidance", flag="--no-zero-init"),
    Field("retake_variance", "float", "how far retake/repaint/extend move from the source noise",
          reference="retake_variance", low=0, high=1, per_item=True),
    Field("repaint_start", "float", "seconds (repaint/extend; < 0 extends to the left)", reference="repaint_start",
          low=-MAX_SECONDS, high=2 * MAX_SECONDS),
    Field("repaint_end", "float", "seconds (repaint/extend; beyond the source extends to the right)",
          reference="repaint_end", low=-MAX_SECONDS, high=2 * MAX_SECONDS),
    Field("ref_audio_strength", "float", "audio2audio: how much of the reference audio is kept",
          reference="ref_audio_strength", low=0, high=1),
    Field("n_min", "float", "edit: first step fraction edited", flag="--edit-n-min", reference="edit_n_min",
          low=0, high=1),
    Field("n_max", "float", "edit: last step fraction edited", flag="--edit-n-max", reference="edit_n_max",
          low=0, high=1),
    Field("n_avg", "int", "edit: predictions averaged per step", flag="--edit-n-avg", reference="edit_n_avg",
          low=1, high=64),
    Field("bucket", "bool", "run at the exact length instead of padding it to a bucket of ~12 s (buckets let "
          "nearby durations share one compiled program)", flag="--no-bucket"),
    Field("batch_invariant", "bool", "take the omega mean shift per item, so each item equals the same request "
          "run alone (default: over the whole batch, as the reference)"),
)
"""Every :class:`SamplingParams` field, in its order: the flags, request keys and checks derive from it."""
ITEM_FIELDS = tuple(f.name for f in PARAM_FIELDS if f.per_item)
"""Fields that may differ between the items of one batch: they are traced per item, so one compiled
program serves any mix of them (see :meth:`SamplingParams.structure` for the rest)."""


@jax.tree_util.register_dataclass
@dataclass
class Conditioning:
    """Model inputs of one batch (numpy or jax arrays, batch first).

    ``text [B, Lt, Dt]`` / ``text_mask [B, Lt]``: prompt encoder states; ``lyric_ids``
    / ``lyric_mask [B, Ll]``; ``speaker [B, 512]`` (zeros when ``None``);
    ``text_null``: the ERG-tag prompt states (UMT5 with scaled queries), used when
    ``use_erg_tag`` and ``use_erg_lyric``; ``src_latents [B, 8, 16, T]``: source latents
    of retake/repaint/extend/edit, reference latents of audio2audio; ``target_*``:
    the edit target prompt and lyrics.
    """

    text: jax.Array
    text_mask: jax.Array
    lyric_ids: jax.Array
    lyric_mask: jax.Array
    speaker: jax.Array | None = None
    text_null: jax.Array | None = None
    src_latents: jax.Array | None = None
    target_text: jax.Array | None = None
    target_text_mask: jax.Array | None = None
    target_lyric_ids: jax.Array | None = None
    target_lyric_mask: jax.Array | None = None
    target_speaker: jax.Array | None = None

    @property
    def batch_size(self) -> int:
        return int(self.text.shape[0])

    def validate(self, params: SamplingParams) -> None:
        b = self.batch_size
        for name in ("text_mask", "lyric_ids", "lyric_mask", "speaker", "text_null", "src_latents"):
            a = getattr(self, name)
            if a is not None and a.shape[0] != b:
                raise ValueError(f"Conditioning.{name} has batch {a.shape[0]}, text has {b}")
        if self.text_mask.shape != self.text.shape[:2]:
            raise ValueError(f"Conditioning.text_mask {self.text_mask.shape} does not match text {self.text.shape}")
        if self.lyric_ids.shape != self.lyric_mask.shape:
            raise ValueError(f"Conditioning.lyric_mask {self.lyric_mask.shape} != lyric_ids {self.lyric_ids.shape}")
        if self.text_null is not None and self.text_null.shape != self.text.shape:
            raise ValueError(f"Conditioning.text_null {self.text_null.shape} != text {self.text.shape}")
        if self.src_latents is not None and (self.src_latents.ndim != 4 or self.src_latents.shape[1:3] != (LATENT_CHANNELS, LATENT_HEIGHT)):
            raise ValueError(f"Conditioning.src_latents must be [B, 8, 16, T], got {self.src_latents.shape}")
        if params.task == "edit":
            for name in ("target_text", "target_text_mask", "target_lyric_ids", "target_lyric_mask"):
                if getattr(self, name) is None:
                    raise ValueError(f"task 'edit' needs Conditioning.{name}")


_NOISE_TAGS = {"initial": 0, "retake": 1, "steps": 2, "edit_forward": 3, "edit_steps": 4}
RETAKE_KEY_TAG = 0x7E7A4E  # default retake keys: each item's key folded with this tag
STEP_NOISES = ("steps", "edit_forward", "edit_steps")  # [S, B, ...] arrays (batch on axis 1)


def retake_keys(keys: jax.Array) -> jax.Array:
    """The default retake keys of per-item ``keys``."""
    return jax.vmap(lambda k: jax.random.fold_in(k, RETAKE_KEY_TAG))(keys)


@jax.tree_util.register_dataclass
@dataclass
class Noise:
    """Where the sampler's random draws come from.

    By default every draw is made per batch item from ``keys [B]`` (typed PRNG keys;
    ``retake_keys`` for the retake noise and the edit draws, as the reference uses its
    retake generators there), so an item's noise does not depend on its batch
    position. Any array given explicitly replaces the corresponding draws:
    ``initial [B, 8, 16, T]``; ``retake [B, 8, 16, T]``; ``steps [S, B, 8, 16, T]``:
    pingpong's per-step noises, indexed by step; ``edit_forward [K, B, 8, 16, T]``:
    FlowEdit's forward noises in call order; ``edit_steps [S, B, 8, 16, T]``: FlowEdit
    pingpong noises, one per step from ``n_min``.
    """

    keys: jax.Array | None = None
    retake_keys: jax.Array | None = None
    initial: jax.Array | None = None
    retake: jax.Array | None = None
    steps: jax.Array | None = None
    edit_forward: jax.Array | None = None
    edit_steps: jax.Array | None = None

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], retake_seeds: Sequence[int] | None = None, **arrays) -> Noise:
        """Per-item keys ``jax.random.key(seed)``; retake keys default to keys folded with a tag."""
        keys = jax.vmap(jax.random.key)(jnp.asarray(np.asarray(seeds, np.uint32)))
        if retake_seeds is None:
            rkeys = retake_keys(keys)
        else:
            if len(retake_seeds) != len(seeds):
                raise ValueError(f"retake_seeds has {len(retake_seeds)} entries, seeds has {len(seeds)}")
            rkeys = jax.vmap(jax.random.key)(jnp.asarray(np.asarray(retake_seeds, np.uint32)))
        return cls(keys=keys, retake_keys=rkeys, **arrays)

    @staticmethod
    def batch_axis(name: str) -> int:
        """The batch axis of field ``name`` (per-step arrays are ``[S, B, ...]``)."""
        return 1 if name in STEP_NOISES else 0

    def check(self, batch: int, frames: int) -> None:
        """Raise ``ValueError`` when a key or noise array does not fit ``batch`` items of ``frames`` frames."""
        item = (batch, LATENT_CHANNELS, LATENT_HEIGHT, frames)
        for f in dataclasses.fields(self):
            a = getattr(self, f.name)
            if a is None:
                continue
            if f.name in ("keys", "retake_keys"):
                if a.shape != (batch,):
                    raise ValueError(f"Noise.{f.name} must hold {batch} keys, got shape {tuple(a.shape)}")
            elif f.name in STEP_NOISES:
                if tuple(a.shape[1:]) != item:
                    raise ValueError(f"Noise.{f.name} must have shape [n, *{item}], got {tuple(a.shape)}")
            elif tuple(a.shape) != item:
                raise ValueError(f"Noise.{f.name} must have shape {item}, got {tuple(a.shape)}")

    def shard(self, mesh) -> Noise:
        """Every array split over ``mesh``'s ``data`` axis along its batch axis."""
        return Noise(**{
            f.name: None if getattr(self, f.name) is None
            else shard_batch(getattr(self, f.name), mesh, self.batch_axis(f.name))
            for f in dataclasses.fields(self)
        })

    def pad_frames(self, total: int) -> Noise:
        """Explicit noise arrays zero-padded to ``total`` frames (bucketed runs)."""
        return jax.tree.map(lambda a: a if a.ndim < 4 else pad_frames(jnp.asarray(a), total), self)


def draw(noise: Noise, kind: str, index, item_shape: tuple[int, int, int]) -> jax.Array:
    """Draw ``kind`` number ``index`` (may be traced) as ``[B, *item_shape]`` float32.

    Key draws are made frame-major (``[T, C, H]``, then transposed) so, with JAX's
    partitionable threefry, the first frames' values do not depend on the total length.
    """
    arr = getattr(noise, kind)
    if arr is not None:
        return (arr if kind in ("initial", "retake") else arr[index]).astype(jnp.float32)
    keys = noise.retake_keys if kind in ("retake", "edit_forward") else noise.keys
    if keys is None:
        raise ValueError(f"Noise has neither keys nor an explicit {kind!r} array")
    c, h, t = item_shape

    def one(key):
        key = jax.random.fold_in(jax.random.fold_in(key, _NOISE_TAGS[kind]), index)
        return jnp.transpose(jax.random.normal(key, (t, c, h), jnp.float32), (1, 2, 0))

    return jax.vmap(one)(keys)

"""Task set-up (text2music, retake, repaint, extend, audio2audio, edit) and :func:`generate`.

:func:`prepare` turns per-item :class:`SamplingParams`, a :class:`Conditioning` and a
:class:`Noise` into the static :class:`LoopConfig` and the typed
:class:`~acestep_jax.sampling.inputs.LoopInputs` of the jitted loop, doing the
reference's host-side bookkeeping (tables, guidance interval, retake mixing, repaint
masks, extend padding, audio2audio noising) with device arrays and no host syncs.
One function per task family builds the inputs; padding and the frame mask are shared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from acestep_jax import distributed
from acestep_jax.codec.codec import LATENT_CHANNELS, LATENT_HEIGHT
from acestep_jax.sampling.guidance import guidance_schedule
from acestep_jax.sampling.inputs import ItemInputs, Latents, LoopInputs, ScheduleInputs, shard_batch
from acestep_jax.sampling.params import (
    ITEM_FIELDS,
    Conditioning,
    Noise,
    SamplingParams,
    draw,
    retake_keys,
    seconds_to_frames,
)
from acestep_jax.sampling.sampler import LoopConfig, run_loop
from acestep_jax.sampling.schedulers import Schedule, omega_rescale, schedule, sigma_bounds
from acestep_jax.sharding import shard_model

BUCKET_MULTIPLE = 128  # latent frames (~11.9 s): durations within one bucket share a compile
# GPU programs pad the frame axis to a multiple of 16 (masked): XLA:GPU's Triton GEMMs find no
# tiling for the [items * frames, width] projections when that row count is not one
GPU_FRAME_MULTIPLE = 16


def frame_multiple(platform: str) -> int:
    """The frame multiple the sampling loop is padded to on ``platform`` (1: unpadded)."""
    return GPU_FRAME_MULTIPLE if platform in ("gpu", "cuda", "rocm") else 1


def bucket_frames(frames: int, multiple: int = BUCKET_MULTIPLE) -> int:
    """Round a latent length up to a multiple of ``multiple`` frames."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return -(-frames // multiple) * multiple


def item_params(params: SamplingParams | Sequence[SamplingParams], batch: int) -> list[SamplingParams]:
    """One :class:`SamplingParams` per item: ``params`` for every item, or a list of ``batch``
    whose items agree on :meth:`SamplingParams.structure` (they may differ in :data:`ITEM_FIELDS`)."""
    if isinstance(params, SamplingParams):
        return [params] * batch
    items = list(params)
    if len(items) != batch:
        raise ValueError(f"got {len(items)} SamplingParams for a batch of {batch}")
    first = items[0].structure()
    for i, p in enumerate(items[1:], 1):
        for (name, a), (_, b) in zip(first, p.structure(), strict=True):
            if a != b:
                raise ValueError(
                    f"batch item {i} has {name}={b!r} but item 0 has {a!r}; the items of one batch may "
                    f"differ only in {', '.join(ITEM_FIELDS)}"
                )
    return items


def item_frames(params: SamplingParams, cond: Conditioning) -> int:
    """Latent frames of one item before extension: the source's, else its ``duration``'s."""
    if cond.src_latents is not None and params.task != "text2music":
        return int(cond.src_latents.shape[-1])
    return seconds_to_frames(params.duration)


# ---------------------------------------------------------------------------- shared pieces
def _loop_config(p: SamplingParams, **kw) -> LoopConfig:
    return LoopConfig(scheduler=p.scheduler_type, guidance=p.guidance_mode, zero_steps=p.zero_steps,
                      use_zero_init=p.use_zero_init, batch_invariant=p.batch_invariant, **kw)


def _item_inputs(items: list[SamplingParams], active: np.ndarray, scale: np.ndarray) -> ItemInputs:
    def per_item(name, dtype=np.float32):
        return jnp.asarray(np.asarray([getattr(p, name) or 0 for p in items], dtype))

    return ItemInputs(
        active=jnp.asarray(active), scale=jnp.asarray(scale, jnp.float32),
        scale_text=per_item("guidance_scale_text"), scale_lyric=per_item("guidance_scale_lyric"),
        omega=omega_rescale(per_item("omega_scale")),
        erg_tag=per_item("use_erg_tag", bool), erg_lyric=per_item("use_erg_lyric", bool),
        erg_diffusion=per_item("use_erg_diffusion", bool),
    )


def _guided_items(items: list[SamplingParams], table: Schedule, requested: int) -> ItemInputs:
    """Each item's guidance interval and scale over the ``table``'s steps.

    ``requested``: the step count the reference computes the interval from (smaller
    than the table for heun, which evaluates the model ``2n - 1`` times).
    """
    sched = [
        guidance_schedule(requested, p.guidance_scale, p.guidance_interval, p.guidance_interval_decay,
                          p.min_guidance_scale, length=table.num_steps)
        for p in items
    ]
    return _item_inputs(items, np.stack([g.active for g in sched]), np.stack([g.scale for g in sched]))


def _schedule(table: Schedule, start: int = 0, **kw) -> ScheduleInputs:
    return ScheduleInputs(jnp.asarray(table.timesteps), jnp.asarray(table.sigmas), jnp.int32(start), **kw)


def _retake_mix(items: list[SamplingParams], x, r):
    """``cos(v) x + sin(v) r`` with each item's ``v = retake_variance * pi / 2``."""
    v = jnp.asarray(np.asarray([p.retake_variance * math.pi / 2 for p in items], np.float32))[:, None, None, None]
    return jnp.cos(v) * x + jnp.sin(v) * r


def _table(p: SamplingParams) -> tuple[Schedule, int]:
    """The table and the guidance interval's step count (the table length for custom steps)."""
    table = schedule(p.scheduler_type, p.infer_steps, oss_steps=p.oss_steps)
    return table, table.num_steps if p.oss_steps else p.infer_steps


# ---------------------------------------------------------------------------- task families
def _prepare_text2music(items, cond: Conditioning, noise: Noise):
    """text2music and retake: fresh noise (retake: mixed with the retake noise) per item.

    Key draws of a bucketed batch are made at the bucket's length (their first frames do
    not depend on it, see :func:`draw`), so nothing here depends on the exact duration."""
    p = items[0]
    frames = [item_frames(q, cond) for q in items]
    drawn = noise.initial is None and noise.retake is None
    shape = (LATENT_CHANNELS, LATENT_HEIGHT, bucket_frames(max(frames)) if p.bucket and drawn else max(frames))
    x = draw(noise, "initial", 0, shape)
    if p.task == "retake":
        x = _retake_mix(items, x, draw(noise, "retake", 0, shape))
    table, requested = _table(p)
    return _loop_config(p), LoopInputs(Latents(x), _guided_items(items, table, requested), _schedule(table)), frames


def _prepare_repaint(items, cond: Conditioning, noise: Noise):
    """repaint and extend: regenerate a window of the source from the step the retake
    variance sets; extend pads the source with the window's frames first."""
    p = items[0]
    b, frames = len(items), int(cond.src_latents.shape[-1])
    shape = (LATENT_CHANNELS, LATENT_HEIGHT, frames)
    x, r = draw(noise, "initial", 0, shape), draw(noise, "retake", 0, shape)
    table, requested = _table(p)
    steps = max(p.oss_steps) if p.oss_steps else p.infer_steps
    start = int(steps * (1 - p.retake_variance))
    src = jnp.asarray(cond.src_latents, jnp.float32)
    s_frame, e_frame = seconds_to_frames(p.repaint_start), seconds_to_frames(p.repaint_end)
    guided = _guided_items(items, table, requested)
    if s_frame >= 0 and e_frame <= frames:
        if e_frame - s_frame == frames:  # the whole source: the reference runs a plain retake
            return _loop_config(p), LoopInputs(Latents(_retake_mix(items, x, r)), guided, _schedule(table)), [frames]
        t = jnp.arange(frames)
        mask = jnp.broadcast_to(((t >= s_frame) & (t < e_frame)).astype(jnp.float32), (b, *shape))
        z0 = jnp.where(mask == 1.0, _retake_mix(items, x, r), x)
        latents = Latents(z0, x0=src, z0=z0, repaint_mask=mask)
        return _loop_config(p, repaint=True), LoopInputs(latents, guided, _schedule(table, start)), [frames]
    left = max(-s_frame, 0)
    right = e_frame - (frames + left) if e_frame > frames else 0
    x0 = jnp.pad(src, ((0, 0), (0, 0), (0, 0), (left, right)))
    out = x0.shape[-1]
    t = jnp.arange(out)
    mask = jnp.broadcast_to(((t < left) | (t >= out - right)).astype(jnp.float32), (b, LATENT_CHANNELS, LATENT_HEIGHT, out))
    z0 = jnp.concatenate([r[..., :left], x, r[..., frames - right:]], axis=-1)
    latents = Latents(z0, x0=x0, z0=z0, repaint_mask=mask)
    return _loop_config(p, repaint=True), LoopInputs(latents, guided, _schedule(table, start)), [out]


def _prepare_audio2audio(items, cond: Conditioning, noise: Noise):
    """audio2audio: the reference latents noised to ``1 - ref_audio_strength`` and a truncated table."""
    p = items[0]
    frames = int(cond.src_latents.shape[-1])
    sigma_max = 1 - p.ref_audio_strength
    requested = int(sigma_max * p.infer_steps)
    table = schedule(p.scheduler_type, requested, sigma_max)
    s = sigma_bounds(sigma_max)[0]
    x = jnp.asarray(cond.src_latents, jnp.float32) * (1 - s) + draw(noise, "initial", 0, (LATENT_CHANNELS, LATENT_HEIGHT, frames)) * s
    return _loop_config(p), LoopInputs(Latents(x), _guided_items(items, table, requested), _schedule(table)), [frames]


def _prepare_edit(items, cond: Conditioning, noise: Noise):
    """FlowEdit on the Euler table: editing steps ``[n_min, n_max)``, guidance at every step."""
    p = items[0]
    table = schedule("euler", p.infer_steps)
    n, b = table.num_steps, len(items)
    lc = LoopConfig(task="edit", scheduler=p.scheduler_type, guidance="apg" if p.do_cfg else "none")
    scale = np.asarray([[q.guidance_scale] * n for q in items], np.float32)
    sched = _schedule(table, int(p.infer_steps * p.n_min), stop=jnp.int32(int(p.infer_steps * p.n_max)),
                      n_avg=jnp.int32(p.n_avg))
    latents = Latents(jnp.asarray(cond.src_latents, jnp.float32))
    return lc, LoopInputs(latents, _item_inputs(items, np.ones((b, n), bool), scale), sched), [latents.x.shape[-1]]


_FAMILIES = {
    "text2music": _prepare_text2music, "retake": _prepare_text2music, "repaint": _prepare_repaint,
    "extend": _prepare_repaint, "audio2audio": _prepare_audio2audio, "edit": _prepare_edit,
}


def prepare(params: SamplingParams | Sequence[SamplingParams], cond: Conditioning, noise: Noise,
            multiple: int = 1):
    """Returns ``(loop_config, inputs, output_frames)``: the static structure, the typed
    loop inputs (padded to the bucket, or else to a multiple of ``multiple`` frames, with a
    per-item frame mask, when ``bucket`` is set, the items' lengths differ or the length is
    not such a multiple) and the longest item's length."""
    items = item_params(params, cond.batch_size)
    lc, inputs, frames = _FAMILIES[items[0].task](items, cond, noise)
    longest = max(frames)
    length = bucket_frames(longest, BUCKET_MULTIPLE if items[0].bucket else multiple)
    if length == longest and min(frames) == longest:
        return lc, inputs, longest
    mask = (np.arange(length)[None, :] < np.asarray(frames)[:, None]).astype(np.float32)
    inputs = inputs.pad(length)
    latents = dataclasses.replace(inputs.latents, x=inputs.latents.x * mask[:, None, None, :])
    items_in = dataclasses.replace(inputs.items, frame_mask=jnp.asarray(mask))
    return lc, LoopInputs(latents, items_in, inputs.schedule), longest


# ---------------------------------------------------------------------------- generate


def random_seeds(n: int) -> list[int]:
    """``n`` fresh random seeds, the same on every process of a multi-host run."""
    seeds = np.random.default_rng().integers(0, 2**31 - 1, n)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        distributed.barrier("random seeds")  # a collective: the hosts may arrive far apart (loading)
        seeds = multihost_utils.broadcast_one_to_all(seeds)
    return [int(s) for s in seeds]


def _as_noise(noise, batch: int) -> Noise:
    if noise is None:
        return Noise.from_seeds(random_seeds(batch))
    if isinstance(noise, Noise):
        return noise
    if isinstance(noise, (list, tuple, np.ndarray)) and not jnp.issubdtype(
        getattr(noise, "dtype", np.int64), jax.dtypes.prng_key
    ):
        return Noise.from_seeds([int(s) for s in noise])
    return Noise(keys=noise, retake_keys=retake_keys(noise))


def generate(
    model,
    params: SamplingParams | Sequence[SamplingParams],
    cond: Conditioning,
    noise: Noise | Sequence[int] | jax.Array | None = None,
    mesh=None,
    progress: bool = False,
    trim: bool = True,
) -> jax.Array:
    """Sample final latents ``[B, 8, 16, T]`` for ``cond``.

    ``params``: one :class:`SamplingParams` for every item, or one per item (they may
    differ in :data:`~acestep_jax.sampling.params.ITEM_FIELDS`; an item shorter than
    the longest is zero past its own length). ``noise``: a :class:`Noise`, per-item
    seeds, a ``[B]`` PRNG key array, or ``None`` (fresh random seeds). ``mesh``: shard
    the batch over the mesh's ``data`` axis (the batch must divide it); the model is
    placed with :func:`acestep_jax.sharding.shard_model`; on a mesh spanning several
    processes (hosts) every process passes the same inputs and receives the whole batch. ``progress``: report each
    step to the bar of :func:`acestep_jax.sampling.progress.step_bar` (compiles a
    separate program). ``trim=False`` returns the loop's padded length (zeros past each
    item's own), so no program depends on the exact duration.
    """
    b = cond.batch_size
    items = item_params(params, b)
    src_frames = None if cond.src_latents is None else int(cond.src_latents.shape[-1])
    for p in dict.fromkeys(items):
        p.validate(src_frames)
    cond.validate(items[0])
    noise = _as_noise(noise, b)
    noise.check(b, max(item_frames(p, cond) for p in items))
    if mesh is not None:
        if b % mesh.shape["data"]:
            raise ValueError(f"batch size {b} is not divisible by the mesh's data axis ({mesh.shape['data']})")
        shard_model(model, mesh)
        cond, noise = shard_batch(cond, mesh), noise.shard(mesh)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
        lc, inputs, frames = prepare(items, cond, noise, frame_multiple(platform))
        if mesh is not None:
            inputs = inputs.shard(mesh)
        if inputs.frame_mask is not None:
            noise = noise.pad_frames(inputs.frame_mask.shape[-1])
        out = run_loop(model, dataclasses.replace(lc, progress=progress), cond, inputs, noise)
        out = out[..., :frames] if trim else out
    if out.is_fully_addressable:
        return out
    from jax.experimental import multihost_utils

    return jnp.asarray(multihost_utils.process_allgather(out, tiled=True))

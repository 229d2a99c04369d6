"""Task set-up (text2music, retake, repaint, extend, audio2audio, edit) and :func:`generate`.

:func:`prepare` turns :class:`SamplingParams` + :class:`Conditioning` + :class:`Noise`
into the static :class:`LoopConfig` and the traced inputs of the jitted loop, doing
the reference's host-side bookkeeping (tables, guidance interval, retake mixing,
repaint masks, extend padding, audio2audio noising) with device arrays and no host
syncs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from acestep_jax.sampling.guidance import guidance_schedule
from acestep_jax.sampling.params import Conditioning, Noise, SamplingParams, draw, seconds_to_frames
from acestep_jax.sampling.sampler import LoopConfig, run_loop
from acestep_jax.sampling.schedulers import omega_rescale, schedule, sigma_bounds

BUCKET_MULTIPLE = 128  # latent frames (~11.9 s): durations within one bucket share a compile


def bucket_frames(frames: int, multiple: int = BUCKET_MULTIPLE) -> int:
    """Round a latent length up to a multiple of ``multiple`` frames."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return -(-frames // multiple) * multiple


def _num_frames(params: SamplingParams, cond: Conditioning) -> int:
    if cond.src_latents is not None and params.task != "text2music":
        return int(cond.src_latents.shape[-1])
    return seconds_to_frames(params.duration)


def _pad_frames(a, total):
    pad = total - a.shape[-1]
    return a if pad == 0 else jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)])


def _retake_mix(params, x, r):
    v = jnp.float32(params.retake_variance * math.pi / 2)
    return jnp.cos(v) * x + jnp.sin(v) * r


def prepare(params: SamplingParams, cond: Conditioning, noise: Noise):
    """Returns ``(loop_config, inputs, output_frames)``; see :mod:`acestep_jax.sampling.sampler`."""
    frames = _num_frames(params, cond)
    b = cond.batch_size
    shape = (8, 16, frames)
    if params.task == "edit":
        table = schedule("euler", params.infer_steps)
        lc = LoopConfig(task="edit", scheduler=params.scheduler_type, guidance="apg" if params.do_cfg else "none")
        inputs = {
            "x_src": jnp.asarray(cond.src_latents, jnp.float32),
            "timesteps": jnp.asarray(table.timesteps),
            "sigmas": jnp.asarray(table.sigmas),
            "scale": jnp.float32(params.guidance_scale),
            "n_min": jnp.int32(int(params.infer_steps * params.n_min)),
            "n_max": jnp.int32(int(params.infer_steps * params.n_max)),
            "n_avg": jnp.int32(params.n_avg),
            "n_avg_f": jnp.float32(params.n_avg),
        }
        return lc, inputs, frames

    steps = max(params.oss_steps) if params.oss_steps else params.infer_steps
    table = schedule(params.scheduler_type, params.infer_steps, oss_steps=params.oss_steps)
    requested = params.infer_steps
    x = draw(noise, "initial", 0, shape)
    repaint, start, extra = False, 0, {}
    out_frames = frames
    if params.task in ("retake", "repaint", "extend"):
        n_min = int(steps * (1 - params.retake_variance))
        r = draw(noise, "retake", 0, shape)
        if params.task == "retake":
            s_frame, e_frame = 0, frames
        else:
            s_frame, e_frame = seconds_to_frames(params.repaint_start), seconds_to_frames(params.repaint_end)
        is_extend = s_frame < 0 or e_frame > frames
        if not is_extend and e_frame - s_frame == frames:
            x = _retake_mix(params, x, r)
        elif not is_extend:
            mask = (jnp.arange(frames) >= s_frame) & (jnp.arange(frames) < e_frame)
            mask = jnp.broadcast_to(mask.astype(jnp.float32), (b,) + shape)
            z0 = jnp.where(mask == 1.0, _retake_mix(params, x, r), x)
            repaint, start = True, n_min
            extra = {"x0": jnp.asarray(cond.src_latents, jnp.float32), "z0": z0, "repaint_mask": mask}
        else:
            gt = jnp.asarray(cond.src_latents, jnp.float32)
            left = max(-s_frame, 0)
            gt = jnp.pad(gt, ((0, 0), (0, 0), (0, 0), (left, 0)))
            right = e_frame - gt.shape[-1] if e_frame > frames else 0
            gt = jnp.pad(gt, ((0, 0), (0, 0), (0, 0), (0, right)))
            out_frames = gt.shape[-1]
            t = jnp.arange(out_frames)
            mask = ((t < left) | (t >= out_frames - right)).astype(jnp.float32)
            mask = jnp.broadcast_to(mask, (b, 8, 16, out_frames))
            z0 = jnp.concatenate([r[..., :left], x, r[..., frames - right:]], axis=-1)
            repaint, start = True, n_min
            extra = {"x0": gt, "z0": z0, "repaint_mask": mask}
            x = z0
    if params.task == "audio2audio":
        sigma_max = 1 - params.ref_audio_strength
        requested = int(sigma_max * params.infer_steps)
        table = schedule(params.scheduler_type, requested, sigma_max)
        s = sigma_bounds(sigma_max)[0]
        x = jnp.asarray(cond.src_latents, jnp.float32) * (1 - s) + x * s

    # the reference's step count for the guidance interval: the table length for custom
    # (oss) steps, else the requested count (smaller than the table for heun)
    n = table.num_steps if params.oss_steps and params.task != "audio2audio" else requested
    gs = guidance_schedule(
        n, params.guidance_scale, params.guidance_interval, params.guidance_interval_decay,
        params.min_guidance_scale, length=table.num_steps,
    )
    if not params.do_cfg:
        mode = "none"
    elif params.double_condition:
        mode = "double"
    else:
        mode = params.cfg_type
    lc = LoopConfig(
        scheduler=params.scheduler_type,
        guidance=mode,
        erg_lyric=params.use_erg_lyric,
        erg_diffusion=params.use_erg_diffusion,
        null_text=params.use_erg_tag and cond.text_null is not None,
        repaint=repaint,
        masked=params.bucket,
        zero_steps=params.zero_steps,
        use_zero_init=params.use_zero_init,
    )
    inputs = dict(
        x=x,
        timesteps=jnp.asarray(table.timesteps),
        sigmas=jnp.asarray(table.sigmas),
        active=jnp.asarray(gs.active),
        scales=jnp.asarray(gs.scale),
        omega=omega_rescale(params.omega_scale),
        scale_text=jnp.float32(params.guidance_scale_text or 0.0),
        scale_lyric=jnp.float32(params.guidance_scale_lyric or 0.0),
        start=jnp.int32(start),
        **extra,
    )
    if params.bucket:
        total = bucket_frames(out_frames)
        for k in ("x", "x0", "z0", "repaint_mask"):
            if k in inputs:
                inputs[k] = _pad_frames(inputs[k], total)
        inputs["frame_mask"] = (jnp.arange(total) < out_frames).astype(jnp.float32)
    return lc, inputs, out_frames


def check_noise(noise: Noise, batch: int, frames: int) -> None:
    """Raise ``ValueError`` when an injected noise array has the wrong shape."""
    item = (batch, 8, 16, frames)
    for name in ("initial", "retake"):
        a = getattr(noise, name)
        if a is not None and tuple(a.shape) != item:
            raise ValueError(f"Noise.{name} must have shape {item}, got {tuple(a.shape)}")
    for name in ("steps", "edit_forward", "edit_steps"):
        a = getattr(noise, name)
        if a is not None and tuple(a.shape[1:]) != item:
            raise ValueError(f"Noise.{name} must have shape [n, *{item}], got {tuple(a.shape)}")
    for name in ("keys", "retake_keys"):
        a = getattr(noise, name)
        if a is not None and a.shape != (batch,):
            raise ValueError(f"Noise.{name} must hold {batch} keys, got shape {tuple(a.shape)}")


def random_seeds(n: int) -> list[int]:
    """``n`` fresh random seeds, the same on every process of a multi-host run."""
    seeds = np.random.default_rng().integers(0, 2**31 - 1, n)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        seeds = multihost_utils.broadcast_one_to_all(seeds)
    return [int(s) for s in seeds]


def _as_noise(noise, batch: int) -> Noise:
    if noise is None:
        return Noise.from_seeds(random_seeds(batch))
    if isinstance(noise, Noise):
        return noise
    if isinstance(noise, (list, tuple, np.ndarray)) and not jnp.issubdtype(getattr(noise, "dtype", np.int64), jax.dtypes.prng_key):
        return Noise.from_seeds([int(s) for s in noise])
    keys = noise
    return Noise(keys=keys, retake_keys=jax.vmap(lambda k: jax.random.fold_in(k, 0x7E7A4E))(keys))


def _pad_step_noise(noise: Noise, inputs: dict) -> Noise:
    """Bucketed runs: pad injected per-step noises to the bucket length."""
    if "frame_mask" not in inputs or noise.steps is None:
        return noise
    return dataclasses.replace(noise, steps=_pad_frames(jnp.asarray(noise.steps), inputs["frame_mask"].shape[0]))


def _shard_batch(tree, mesh, axis: int = 0):
    from acestep_jax.sharding import put_global

    def put(a):
        if a is None:
            return None
        spec = [None] * a.ndim
        spec[axis] = "data"
        return put_global(a, NamedSharding(mesh, P(*spec)))

    return jax.tree.map(put, tree)


def generate(
    model,
    params: SamplingParams,
    cond: Conditioning,
    noise: Noise | Sequence[int] | jax.Array | None = None,
    mesh=None,
    progress: bool = False,
) -> jax.Array:
    """Sample final latents ``[B, 8, 16, T]`` for ``cond`` with ``params``.

    ``noise``: a :class:`Noise`, per-item seeds, a ``[B]`` PRNG key array, or ``None``
    (fresh random seeds). ``mesh``: shard the batch over the mesh's ``data`` axis
    (the batch must divide it); the model is placed with
    :func:`acestep_jax.sharding.shard_model`. On a mesh spanning several processes
    (hosts) every process passes the same inputs and receives the whole batch. ``progress``: report each step to the
    bar of :func:`acestep_jax.sampling.progress.step_bar` (compiles a separate program).
    """
    src_frames = None if cond.src_latents is None else int(cond.src_latents.shape[-1])
    params.validate(src_frames)
    cond.validate(params)
    b = cond.batch_size
    noise = _as_noise(noise, b)
    check_noise(noise, b, _num_frames(params, cond))
    if mesh is None:
        lc, inputs, frames = prepare(params, cond, noise)
        lc = dataclasses.replace(lc, progress=progress)
        noise = _pad_step_noise(noise, inputs)
        return run_loop(model, lc, cond, inputs, noise)[..., :frames]

    from acestep_jax.sharding import shard_model

    data = mesh.shape["data"]
    if b % data:
        raise ValueError(f"batch size {b} is not divisible by the mesh's data axis ({data})")
    shard_model(model, mesh)
    cond = _shard_batch(cond, mesh)
    noise = Noise(
        **{k: _shard_batch(getattr(noise, k), mesh, 1 if k in ("steps", "edit_forward", "edit_steps") else 0)
           for k in Noise.__dataclass_fields__}
    )
    with jax.set_mesh(mesh):
        lc, inputs, frames = prepare(params, cond, noise)
        lc = dataclasses.replace(lc, progress=progress)
        for k in ("x", "x0", "z0", "repaint_mask", "x_src"):
            if k in inputs:
                inputs[k] = _shard_batch(inputs[k], mesh)
        noise = _pad_step_noise(noise, inputs)
        out = run_loop(model, lc, cond, inputs, noise)[..., :frames]
    if out.is_fully_addressable:
        return out
    from jax.experimental import multihost_utils

    return jnp.asarray(multihost_utils.process_allgather(out, tiled=True))

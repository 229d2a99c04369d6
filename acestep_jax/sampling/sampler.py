"""The jitted sampling loops (text2music family and FlowEdit).

Each run is one ``jax.jit`` call: conditions are encoded once, then a
``lax.fori_loop`` runs the steps. Per step, the conditional, unconditional (and, for
double-condition guidance, text-only) predictions are made by ONE transformer decode
over the batch concatenated along its first axis; when no item is inside its
guidance interval a ``lax.cond`` takes the single conditional decode instead. Static
structure (:class:`LoopConfig`, array shapes, which optional inputs are present)
selects the compiled program; everything per item (guidance schedule and scales,
omega, ERG switches, frame masks), the timesteps, the repaint start and the noise are
traced, so changing them never recompiles.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from acestep_jax import distributed
from acestep_jax.models.transformer import Context, layer_scales
from acestep_jax.sampling import guidance as G
from acestep_jax.sampling.inputs import LoopInputs
from acestep_jax.sampling.params import Conditioning, Noise, draw
from acestep_jax.sampling.progress import report
from acestep_jax.sampling.schedulers import (
    HeunState,
    euler_step,
    heun_substep,
    next_t,
    pingpong_step,
    repaint_step,
)

ERG_TAU = 0.01
ERG_LYRIC_LAYERS = (4, 5)  # lyric-encoder blocks whose queries are scaled (ERG lyric)
ERG_DIFFUSION_LAYERS = (15, 16, 17, 18, 19)  # transformer blocks (ERG diffusion)


@dataclass(frozen=True)
class LoopConfig:
    """Static structure of a sampling loop.

    ``guidance``: ``"none"``, ``"apg"``, ``"cfg"``, ``"cfg_star"`` or ``"double"``;
    ``repaint``: the reference's repaint/extend update replaces the scheduler;
    ``batch_invariant``: the omega mean shift is taken per item instead of over the batch.
    """

    task: str = "text2music"  # "text2music" (every non-edit task) or "edit"
    scheduler: str = "euler"
    guidance: str = "apg"
    repaint: bool = False
    zero_steps: int = 1
    use_zero_init: bool = True
    batch_invariant: bool = False
    progress: bool = False  # report each step to acestep_jax.sampling.progress (a host callback)


def _erg_scales(n: int, layers) -> jax.Array:
    return layer_scales(n, [l for l in layers if l < n], ERG_TAU)


def _zeros(a):
    return jnp.zeros_like(a)


def _items(flag, a):
    """Broadcast a per-item ``[B]`` array against ``a [B, ...]``."""
    return flag.reshape(flag.shape + (1,) * (a.ndim - 1))


def _speaker(model, cond: Conditioning, target: bool = False):
    spk = cond.target_speaker if target else cond.speaker
    if spk is None:
        spk = jnp.zeros((cond.batch_size, model.cfg.speaker_embedding_dim), jnp.float32)
    return spk


def _decode(model, x, frame_mask, ctx: Context, t, query_scales=None):
    """One decode of ``x [n, 8, 16, T]``; ``frame_mask [B, T]`` (n a multiple of B) masks padding."""
    n, length = x.shape[0], x.shape[-1]
    if frame_mask is None:
        mask = jnp.ones((n, length), jnp.float32)
    else:
        mask = jnp.tile(frame_mask, (n // frame_mask.shape[0], 1))
    out = model.decode(
        x, mask, ctx.states, ctx.mask, jnp.full((n,), t, jnp.float32), context_positions=ctx.positions,
        query_scales=query_scales, isolate_padding=frame_mask is not None,
    ).astype(jnp.float32)
    return out if frame_mask is None else out * mask[:, None, None, :]


def _pad_context(ctx: Context, length: int) -> Context:
    """``ctx`` with masked rows appended up to ``length`` (the mask as float32)."""
    pad = length - ctx.states.shape[1]
    rows = lambda a: jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2))
    return Context(rows(ctx.states), rows(ctx.mask.astype(jnp.float32)), rows(ctx.positions))


def _join(contexts) -> Context:
    """Contexts of equal length stacked along the batch axis."""
    return Context(*(jnp.concatenate(parts) for parts in zip(*contexts, strict=True)))


# ---------------------------------------------------------------------------- text2music
def _encode_t2m(model, lc: LoopConfig, cond: Conditioning, inputs: LoopInputs):
    """Encoder states of the conditional, unconditional and (double guidance) text-only branches.

    The ERG switches are per item: each item's unconditional (and text-only) states come
    from the ERG encoding (lyric-encoder queries scaled; the ERG-tag prompt when
    ``erg_tag``) or the plain one (zeroed conditions), selected per item.
    """
    items = inputs.items
    spk = _speaker(model, cond)
    text, tmask, lyr, lmask = cond.text, cond.text_mask, cond.lyric_ids, cond.lyric_mask
    enc = model.encode(text, tmask, spk, lyr, lmask)
    if lc.guidance == "none":
        return enc, None, None
    lq = _erg_scales(model.cfg.lyric_encoder.num_blocks, ERG_LYRIC_LAYERS)

    def per_item(erg: Context, plain: Context) -> Context:  # the masks and positions are enc's
        return enc._replace(states=jnp.where(_items(items.erg_lyric, erg.states), erg.states, plain.states))

    null_text = _zeros(text)
    if cond.text_null is not None:
        null_text = jnp.where(_items(items.erg_tag, text), cond.text_null, null_text)
    null = per_item(
        model.encode(null_text, tmask, _zeros(spk), lyr, lmask, lyric_query_scales=lq),
        model.encode(_zeros(text), tmask, _zeros(spk), _zeros(lyr), lmask),
    )
    text_only = None
    if lc.guidance == "double":
        text_only = per_item(
            model.encode(text, tmask, _zeros(spk), lyr, lmask, lyric_query_scales=lq),
            model.encode(text, tmask, _zeros(spk), _zeros(lyr), lmask),
        )
    return enc, null, text_only


def text2music_loop(model, lc: LoopConfig, cond: Conditioning, inputs: LoopInputs, noise: Noise):
    """Run the text2music-family loop (text2music, retake, repaint, extend, audio2audio)
    on the inputs :func:`acestep_jax.sampling.tasks.prepare` builds."""
    enc, null, text_only = _encode_t2m(model, lc, cond, inputs)
    items, sched, lat = inputs.items, inputs.schedule, inputs.latents
    timesteps, sigmas = sched.timesteps, sched.sigmas
    n = timesteps.shape[0]
    fm = items.frame_mask
    x = lat.x.astype(jnp.float32)
    b, shape = x.shape[0], x.shape[1:]

    def plain(x, i, buf):
        return _decode(model, x, fm, enc, timesteps[i]), buf

    # loop-invariant inputs of the batched guided decode: [cond; (text only;) uncond]
    double = lc.guidance == "double"
    k = 3 if double else 2
    g_ctx = g_qs = None
    if lc.guidance != "none":
        g_ctx = _join([enc, text_only, null] if double else [enc, null])
        layers = model.cfg.num_layers
        erg = _erg_scales(layers, ERG_DIFFUSION_LAYERS)  # [layers]
        uncond = jnp.where(items.erg_diffusion[None, :], erg[:, None], 1.0)  # [layers, B]
        g_qs = jnp.concatenate([jnp.ones((layers, (k - 1) * b)), uncond], axis=1)[:, :, None, None]

    def guided(x, i, buf):
        out = _decode(model, jnp.concatenate([x] * k), fm, g_ctx, timesteps[i], g_qs)
        parts = jnp.split(out, k)
        scale = _items(items.scale[:, i], x)
        if double:
            s_text, s_lyric = _items(items.scale_text, x), _items(items.scale_lyric, x)
            v, new_buf = G.double_condition(parts[0], parts[2], parts[1], s_text, s_lyric), buf
        elif lc.guidance == "apg":
            v, new_buf = G.apg(parts[0], parts[1], scale, buf)
        elif lc.guidance == "cfg":
            v, new_buf = G.cfg(parts[0], parts[1], scale), buf
        else:
            v, new_buf = G.cfg_zero_star(parts[0], parts[1], scale, i, lc.zero_steps, lc.use_zero_init), buf
        # items outside their guidance interval take the conditional prediction
        active = _items(items.active[:, i], x)
        v = jnp.where(active, v, parts[0])
        return v, (None if buf is None else jnp.where(active, new_buf, buf))

    def velocity(x, i, buf):
        if lc.guidance == "none":
            return plain(x, i, buf)
        return jax.lax.cond(jnp.any(items.active[:, i]), guided, plain, x, i, buf)

    def body(i, carry):
        x, buf, heun = carry
        v, buf = velocity(x, i, buf)
        if lc.repaint:
            x = repaint_step(x, v, timesteps[i] / 1000, next_t(timesteps, i), lat.x0, lat.z0, lat.repaint_mask)
        elif lc.scheduler == "euler":
            x = euler_step(x, v, sigmas[i], sigmas[i + 1], items.omega, fm, lc.batch_invariant)
        elif lc.scheduler == "heun":
            x, heun = heun_substep(i, x, v, sigmas, items.omega, heun, fm, lc.batch_invariant)
        else:
            x = pingpong_step(x, v, sigmas[i], sigmas[i + 1], draw(noise, "steps", i, shape))
        if fm is not None:
            x = x * fm[:, None, None, :]
        if lc.progress:
            report(i + 1 - start, n - start)
        return x, buf, heun

    start = sched.start
    if lc.repaint:
        # the reference re-noises the source to the start level: zt_edit + zt_src - x0
        t0 = timesteps[start] / 1000
        x = (lat.x0 + ((1 - t0) * lat.x0 + t0 * lat.z0)) - lat.x0
    buf = G.apg_momentum_init(x) if lc.guidance == "apg" else None
    heun = HeunState.zeros(x) if lc.scheduler == "heun" and not lc.repaint else None
    x, _, _ = jax.lax.fori_loop(start, n, body, (x, buf, heun))
    return x


# ---------------------------------------------------------------------------- FlowEdit
def edit_loop(model, lc: LoopConfig, cond: Conditioning, inputs: LoopInputs, noise: Noise):
    """FlowEdit (the reference's ``flowedit_diffusion_process``) on the Euler table.

    ``inputs.latents.x`` holds the source latents; the schedule's ``start``/``stop`` are
    the editing steps (``n_min``/``n_max``) and ``n_avg`` the forward noises averaged per
    step. Guidance is APG (the reference's default) when enabled, at each item's
    ``items.scale``; the source branch keeps a momentum buffer during editing, the
    target branch one of its own afterwards. With pingpong the reference never updates
    the edited latents during the editing phase (only draws noise), so that phase is
    skipped here: the output is identical.
    """
    cfg_on = lc.guidance != "none"
    spk, tspk = _speaker(model, cond), _speaker(model, cond, target=True)
    src = [model.encode(cond.text, cond.text_mask, spk, cond.lyric_ids, cond.lyric_mask)]
    tar = [model.encode(
        cond.target_text, cond.target_text_mask, tspk, cond.target_lyric_ids, cond.target_lyric_mask
    )]
    if cfg_on:
        src.append(model.encode(
            _zeros(cond.text), cond.text_mask, _zeros(spk), _zeros(cond.lyric_ids), _zeros(cond.lyric_mask)
        ))
        tar.append(model.encode(
            _zeros(cond.target_text), cond.target_text_mask, _zeros(tspk),
            _zeros(cond.target_lyric_ids), _zeros(cond.target_lyric_mask),
        ))
    length = max(c.states.shape[1] for c in src + tar)
    src = [_pad_context(c, length) for c in src]
    tar = [_pad_context(c, length) for c in tar]

    sched = inputs.schedule
    timesteps, sigmas = sched.timesteps, sched.sigmas
    n = timesteps.shape[0]
    x_src = inputs.latents.x.astype(jnp.float32)
    shape = x_src.shape[1:]
    scale = _items(inputs.items.scale[:, 0], x_src)
    n_min, n_max, n_avg = sched.start, sched.stop, sched.n_avg

    def times(i):
        t = timesteps[i]
        return t, t / 1000, next_t(timesteps, i)

    # loop-invariant contexts: editing phase [src; (src null;) tar; (tar null)], then target only
    ctx_all, ctx_tar = _join(src + tar), _join(tar)

    def predict(zs, ctx, t):
        """One decode over the latents ``zs`` against the joined contexts ``ctx`` (padding masked)."""
        return jnp.split(_decode(model, jnp.concatenate(zs), inputs.items.frame_mask, ctx, t), len(zs))

    def phase1(i, carry):
        zt_edit, buf = carry
        t, t_i, t_next = times(i)

        def one(a, acc_buf):
            acc, buf = acc_buf
            fwd = draw(noise, "edit_forward", (i - n_min) * n_avg + a, shape)
            zt_src = (1 - t_i) * x_src + t_i * fwd
            zt_tar = zt_edit + zt_src - x_src
            if cfg_on:
                sc, su, tc, tu = predict([zt_src, zt_src, zt_tar, zt_tar], ctx_all, t)
                v_src, buf = G.apg(sc, su, scale, buf)
                v_tar = G.apg(tc, tu, scale)
            else:
                v_src, v_tar = predict([zt_src, zt_tar], ctx_all, t)
            return acc + (1 / n_avg.astype(jnp.float32)) * (v_tar - v_src), buf

        acc, buf = jax.lax.fori_loop(0, n_avg, one, (jnp.zeros_like(x_src), buf))
        if lc.progress:
            report(i + 1 - n_min, n - n_min)
        return zt_edit + (t_next - t_i) * acc, buf

    zt_edit = x_src
    buf = G.apg_momentum_init(x_src) if cfg_on else None
    if lc.scheduler != "pingpong":
        zt_edit, _ = jax.lax.fori_loop(n_min, n_max, phase1, (zt_edit, buf))

    fwd = draw(noise, "edit_forward", (n_max - n_min) * n_avg, shape)
    sigma = sigmas[jnp.minimum(n_max, n - 1)]
    xt_src = sigma * fwd + (1.0 - sigma) * x_src
    xt_tar = zt_edit + xt_src - x_src

    def phase2(i, carry):
        xt, buf = carry
        t, t_i, t_next = times(i)
        if lc.progress:
            report(i + 1 - n_min, n - n_min)
        if cfg_on:
            tc, tu = predict([xt, xt], ctx_tar, t)
            v, buf = G.apg(tc, tu, scale, buf)
        else:
            (v,) = predict([xt], ctx_tar, t)
        if lc.scheduler != "pingpong":
            return xt + (t_next - t_i) * v, buf
        prev = xt - t_i * v
        return (1 - t_next) * prev + t_next * draw(noise, "edit_steps", i - n_min, shape), buf

    xt_tar, _ = jax.lax.fori_loop(n_max, n, phase2, (xt_tar, buf))
    return jnp.where(n_max < n, xt_tar, zt_edit)


# ---------------------------------------------------------------------------- jit
# XLA:CPU has no bfloat16 matrix multiply: it converts bfloat16 weights to float32 inside
# each block, and loop-invariant code motion then hoists those conversions out of the step
# loop, keeping a float32 copy of every weight alive (13 GB beside the 6.4 GB of bfloat16
# weights of the 3.5B transformer). GPUs and TPUs multiply bfloat16 natively.
CPU_LOOP_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}
# XLA:GPU's dot merger joins GEMMs that share an input (a block's q, k and v; every block's
# cross-attention keys) by concatenating their weights, a copy of those weights at every
# step; the GEMMs read them in place without it (benchmarks/plan_gpu.py: 0.71 -> 0.68 s per
# 240 s generation on the H100 target).
GPU_LOOP_COMPILER_OPTIONS = {"xla_gpu_dot_merger_threshold_mb": 0}


def loop_compiler_options(platform: str) -> dict | None:
    """XLA options for the sampling loops compiled for ``platform`` (``"cpu"``, ``"gpu"``/``"cuda"``,
    ``"tpu"``)."""
    if platform == "cpu":
        return CPU_LOOP_COMPILER_OPTIONS
    return GPU_LOOP_COMPILER_OPTIONS if platform in ("gpu", "cuda", "rocm") else None


@functools.lru_cache(maxsize=32)
def _compiled(graphdef, lc: LoopConfig):
    loop = edit_loop if lc.task == "edit" else text2music_loop

    def run(state, cond, inputs, noise):
        return loop(nnx.merge(graphdef, state), lc, cond, inputs, noise)

    jitted = jax.jit(run, compiler_options=loop_compiler_options(jax.default_backend()))
    return distributed.together(jitted, f"{lc.task} loop")


def run_loop(model, lc: LoopConfig, cond: Conditioning, inputs: LoopInputs, noise: Noise) -> jax.Array:
    """Run the jitted loop for ``lc`` (compiled once per structure and shapes)."""
    graphdef, state = nnx.split(model)
    return _compiled(graphdef, lc)(state, cond, inputs, noise)

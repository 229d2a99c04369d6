"""Flow-matching schedulers of ACE-Step v1 (euler, heun, pingpong) as pure functions.

Tables (:func:`schedule`) are computed on the host in numpy with the reference's
float32/float64 arithmetic so timesteps and sigmas match it bit for bit; the step
functions are jit-friendly and take the sigmas as traced scalars.

Heun evaluates the model twice per step. Like the reference, its table repeats every
interior timestep (``2n - 1`` entries) and the sampler makes one model call per
entry, alternating first- and second-order updates (:func:`heun_substep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULERS = ("euler", "heun", "pingpong")
SHIFT = 3.0
NUM_TRAIN_TIMESTEPS = 1000


class Schedule(NamedTuple):
    """``timesteps [n]`` (0..1000) and ``sigmas [n + 1]`` (ending with 0), float32."""

    timesteps: np.ndarray
    sigmas: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def _shift(sigmas, shift: float = SHIFT):
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sigma_bounds(sigma_max: float = 1.0, shift: float = SHIFT, n_train: int = NUM_TRAIN_TIMESTEPS):
    """Shifted ``(sigma_max, sigma_min)`` of the training table (float32, as python floats)."""
    t = np.linspace(1.0, sigma_max * n_train, n_train, dtype=np.float32)[::-1]
    s = _shift(t / np.float32(n_train), shift).astype(np.float32)
    return float(s[0]), float(s[-1])


def _check_name(name: str):
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler_type must be one of {SCHEDULERS}, got {name!r}")


def _finish(name: str, sigmas32: np.ndarray) -> Schedule:
    timesteps = (sigmas32 * np.float32(NUM_TRAIN_TIMESTEPS)).astype(np.float32)
    sigmas = np.concatenate([sigmas32, np.zeros(1, np.float32)])
    if name == "heun":
        timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)])
        sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
    return Schedule(timesteps.astype(np.float32), sigmas.astype(np.float32))


def schedule(
    name: str, steps: int, sigma_max: float = 1.0, oss_steps: Sequence[int] = (), shift: float = SHIFT
) -> Schedule:
    """The reference's inference table for ``steps`` steps.

    ``sigma_max < 1`` builds the scheduler with a truncated training table (audio2audio;
    the caller chooses the step count, the pipeline uses ``int(sigma_max * steps)``).
    ``oss_steps`` (1-based indices into the ``max(oss_steps)``-step table) selects custom
    timesteps; like the reference, the selected sigmas are shifted a second time.
    """
    _check_name(name)
    if oss_steps:
        if name == "heun":
            raise ValueError("oss_steps is not supported with scheduler_type='heun' (as in the reference)")
        base = schedule(name, max(oss_steps), sigma_max, shift=shift).timesteps
        picked = base[np.asarray(oss_steps, np.int64) - 1].astype(np.float32)
        sig = (picked / np.float32(NUM_TRAIN_TIMESTEPS)).astype(np.float32)
        return _finish(name, _shift(sig, np.float32(shift)).astype(np.float32))
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    smax, smin = sigma_bounds(sigma_max, shift)
    t = np.linspace(smax * NUM_TRAIN_TIMESTEPS, smin * NUM_TRAIN_TIMESTEPS, steps)
    sig = _shift(t / NUM_TRAIN_TIMESTEPS, shift).astype(np.float32)
    return _finish(name, sig)


def omega_rescale(omega) -> jax.Array:
    """The reference's logistic map of ``omega_scale`` onto ``[0.9, 1.1]``."""
    omega = jnp.asarray(omega, jnp.float32)
    return 0.9 + 0.2 / (1 + jnp.exp(-0.1 * omega))


def _per_item(a, ndim: int):
    """A scalar stays a scalar; a per-item ``[B]`` array broadcasts against ``[B, ...]``."""
    a = jnp.asarray(a)
    return a if a.ndim == 0 else a.reshape(a.shape + (1,) * (ndim - 1))


def mean_shift(dx: jax.Array, omega, frame_mask=None, per_item: bool = False) -> jax.Array:
    """Scale ``dx [B, C, H, T]`` about its mean by ``omega`` (a scalar or ``[B]``).

    The mean is over the whole tensor, batch included, as in the reference, or over
    each item with ``per_item`` (batch-invariant sampling). ``frame_mask`` (``[T]`` or
    ``[B, T]``) restricts it to valid frames (padded runs).
    """
    axes = tuple(range(1, dx.ndim)) if per_item else None
    if frame_mask is None:
        m = jnp.mean(dx, axis=axes, keepdims=True)
    else:
        fm = jnp.broadcast_to(frame_mask, (dx.shape[0], dx.shape[-1]))[:, None, None, :]
        per_frame = dx.shape[1] * dx.shape[2]
        m = jnp.sum(dx * fm, axis=axes, keepdims=True) / (jnp.sum(fm, axis=axes, keepdims=True) * per_frame)
    return (dx - m) * _per_item(omega, dx.ndim) + m


def euler_step(x, v, sigma, sigma_next, omega, frame_mask=None, per_item: bool = False):
    """``x + mean_shift((sigma_next - sigma) v)``; ``omega`` already rescaled."""
    return x.astype(jnp.float32) + mean_shift((sigma_next - sigma) * v, omega, frame_mask, per_item)


def pingpong_step(x, v, sigma, sigma_next, noise):
    """Denoise to ``x0`` then re-noise to ``sigma_next`` with fresh ``noise``."""
    denoised = x.astype(jnp.float32) - sigma * v
    return (1 - sigma_next) * denoised + sigma_next * noise


class HeunState(NamedTuple):
    """First-stage derivative, step size and sample kept for the second stage."""

    derivative: jax.Array
    dt: jax.Array
    sample: jax.Array

    @classmethod
    def zeros(cls, x):
        return cls(jnp.zeros_like(x, jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros_like(x, jnp.float32))


def heun_substep(k, x, v, sigmas, omega, state: HeunState, frame_mask=None, per_item: bool = False):
    """One model evaluation's worth of Heun: entry ``k`` of the doubled table.

    Even ``k`` is a first-order (Euler) update that stores its derivative; odd ``k``
    averages it with the derivative at the step's end and redoes the step from the
    stored sample. Returns ``(x_next, state)``.
    """
    x = x.astype(jnp.float32)
    first = (k % 2) == 0
    sigmas = jnp.asarray(sigmas)
    # first order: sigma = sigmas[k], next = sigmas[k+1]; second: sigmas[k-1], sigmas[k]
    sig = jnp.where(first, sigmas[k], sigmas[jnp.maximum(k - 1, 0)])
    sig_next = jnp.where(first, sigmas[k + 1], sigmas[k])
    d1 = (x - (x - v * sig)) / sig
    d2 = 0.5 * (state.derivative + (x - (x - v * sig_next)) / sig_next)
    derivative = jnp.where(first, d1, d2)
    dt = jnp.where(first, sig_next - sig, state.dt)
    base = jnp.where(first, x, state.sample)
    out = base + mean_shift(derivative * dt, omega, frame_mask, per_item)
    new_state = HeunState(
        jnp.where(first, d1, state.derivative), dt, jnp.where(first, x, state.sample)
    )
    return out, new_state


def next_t(timesteps: jax.Array, i) -> jax.Array:
    """The flow time (0..1) after step ``i`` of ``timesteps`` (0 after the last step)."""
    n = timesteps.shape[0]
    return jnp.where(i + 1 < n, timesteps[jnp.minimum(i + 1, n - 1)] / NUM_TRAIN_TIMESTEPS, 0.0)


def repaint_step(x, v, t, t_next, x0, z0, mask):
    """The reference's repaint/extend update: an Euler step (flow times ``t`` → ``t_next``)
    on the regenerated frames (``mask == 1``), the source ``x0`` re-noised towards ``z0``
    at ``t_next`` elsewhere."""
    prev = x + (t_next - t) * v
    return jnp.where(mask == 1.0, prev, (1 - t_next) * x0 + t_next * z0)

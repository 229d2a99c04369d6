"""Classifier-free guidance variants of ACE-Step v1 and the per-step guidance schedule.

All functions are pure and jit-friendly; scales may be traced. APG's momentum buffer
is an explicit array carried by the caller (start from :func:`apg_momentum_init`).
Predictions are ``[B, 8, 16, T]``; APG norms and projections run over the last two axes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

CFG_TYPES = ("apg", "cfg", "cfg_star")
APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5


def apg_momentum_init(like: jax.Array) -> jax.Array:
    """An empty APG momentum buffer (zeros shaped like a prediction)."""
    return jnp.zeros_like(like, jnp.float32)


def _project(v0, v1, axes):
    """Split ``v0`` into components parallel and orthogonal to ``v1`` over ``axes``."""
    norm = jnp.sqrt(jnp.sum(v1 * v1, axis=axes, keepdims=True))
    v1 = v1 / jnp.maximum(norm, 1e-12)
    parallel = jnp.sum(v0 * v1, axis=axes, keepdims=True) * v1
    return parallel, v0 - parallel


def apg(
    cond,
    uncond,
    scale,
    momentum_buffer=None,
    *,
    momentum: float = APG_MOMENTUM,
    eta: float = 0.0,
    norm_threshold: float = APG_NORM_THRESHOLD,
    axes=(-1, -2),
):
    """Adaptive projected guidance.

    With ``momentum_buffer`` (an array) the difference is accumulated as
    ``buffer = diff + momentum * buffer`` and ``(guided, new_buffer)`` is returned;
    without it only ``guided`` is returned.
    """
    cond, uncond = cond.astype(jnp.float32), uncond.astype(jnp.float32)
    diff = cond - uncond
    new_buffer = None
    if momentum_buffer is not None:
        diff = diff + momentum * momentum_buffer
        new_buffer = diff
    if norm_threshold > 0:
        norm = jnp.sqrt(jnp.sum(diff * diff, axis=axes, keepdims=True))
        diff = diff * jnp.minimum(1.0, norm_threshold / norm)
    parallel, orthogonal = _project(diff, cond, axes)
    guided = cond + (scale - 1) * (orthogonal + eta * parallel)
    return guided if momentum_buffer is None else (guided, new_buffer)


def cfg(cond, uncond, scale):
    """Plain classifier-free guidance."""
    return uncond + scale * (cond - uncond)


def cfg_zero_star(cond, uncond, scale, step, zero_steps: int = 1, use_zero_init: bool = True):
    """CFG-Zero*: per-item optimised scale of the unconditional branch; zero output
    while ``step <= zero_steps`` (``step`` may be traced)."""
    b = cond.shape[0]
    pos, neg = cond.reshape(b, -1), uncond.reshape(b, -1)
    alpha = jnp.sum(pos * neg, axis=1, keepdims=True) / (jnp.sum(neg * neg, axis=1, keepdims=True) + 1e-8)
    alpha = alpha.reshape((b,) + (1,) * (cond.ndim - 1))
    guided = uncond * alpha + scale * (cond - uncond * alpha)
    if not use_zero_init:
        return guided
    return jnp.where(step <= zero_steps, cond * 0.0, guided)


def double_condition(cond, uncond, text_only, scale_text, scale_lyric):
    """Separate text and lyric scales from three predictions (full, unconditional, text only)."""
    return (1 - scale_text) * uncond + (scale_text - scale_lyric) * text_only + scale_lyric * cond


class GuidanceSchedule(NamedTuple):
    """Per-step ``active [n]`` (bool: guidance applied) and ``scale [n]`` (float32)."""

    active: np.ndarray
    scale: np.ndarray


def guidance_schedule(
    num_steps: int,
    guidance_scale: float,
    guidance_interval: float = 0.5,
    guidance_interval_decay: float = 0.0,
    min_guidance_scale: float = 3.0,
    length: int | None = None,
) -> GuidanceSchedule:
    """The reference's guidance interval: guidance on steps ``[start, end)`` centred in the
    run, covering ``guidance_interval`` of it, its scale decaying linearly towards
    ``min_guidance_scale`` by ``guidance_interval_decay``.

    ``length`` (default ``num_steps``) is the number of loop iterations: the reference
    computes the interval from the requested step count even when Heun runs ``2n - 1``
    model evaluations, so later entries stay unguided.
    """
    start = int(num_steps * ((1 - guidance_interval) / 2))
    end = int(num_steps * (guidance_interval / 2 + 0.5))
    i = np.arange(num_steps if length is None else length)
    active = (i >= start) & (i < end)
    scale = np.full(len(i), guidance_scale, np.float64)
    if guidance_interval_decay > 0:
        span = end - start - 1
        progress = (i - start) / span if span > 0 else np.zeros(len(i))
        scale = guidance_scale - (guidance_scale - min_guidance_scale) * progress * guidance_interval_decay
    return GuidanceSchedule(active, scale.astype(np.float32))

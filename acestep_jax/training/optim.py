"""Optimizer and learning-rate schedule of the reference trainer, in optax."""

from __future__ import annotations

import optax

from acestep_jax.training.config import OptimSection


def lr_schedule(cfg: OptimSection) -> optax.Schedule:
    """Linear warm-up from 0 over ``warmup_steps``, then linear decay to 0 at ``max_steps``
    (the reference's ``LambdaLR``; the rate used at step ``s`` is ``schedule(s)``)."""
    warm = max(0, min(cfg.warmup_steps, cfg.max_steps))
    decay = optax.linear_schedule(cfg.learning_rate, 0.0, max(1, cfg.max_steps - warm))
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warm), decay], [warm])


def make_optimizer(cfg: OptimSection) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW (decoupled weight decay scaled by the learning rate, as torch)."""
    adamw = optax.adamw(
        lr_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    if cfg.clip_norm and cfg.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
    return adamw

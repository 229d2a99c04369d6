"""Analytic FLOP count of one transformer ``decode`` call (for MFU figures)."""

from __future__ import annotations

from acestep_jax.models.transformer.config import TransformerConfig


def decode_flops(cfg: TransformerConfig, batch: int, frames: int, context: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of ``decode`` on ``batch`` items of ``frames`` latent
    frames with a condition sequence of ``context`` tokens. Elementwise work is ignored."""
    d, hd, h = cfg.inner_dim, cfg.attention_head_dim, cfg.ff_hidden
    t, s = frames, context
    self_attn = 4 * t * d * d + 2 * t * d * hd  # q, k, v, out projections; k^T v and q (k^T v)
    cross_attn = 2 * t * d * d + 2 * s * d * d + 2 * t * s * d  # q, out; k, v; logits and weighted sum
    feed_forward = 2 * t * d * h + t * h * d  # value and gate expansions; projection back
    per_block = 2 * (self_attn + cross_attn + feed_forward)
    patch = 2 * t * (cfg.in_channels * cfg.max_height * cfg.in_channels * 256 + cfg.in_channels * 256 * d)
    final = 2 * t * d * cfg.max_height * cfg.out_channels
    timestep = 2 * (256 * d + d * d + 6 * d * d)
    return batch * (cfg.num_layers * per_block + patch + final + timestep)

"""Conformer lyric encoder (ESPnet relative positions, pre-norm, no conv module).

The released model uses 6 blocks of width 1024 with 16 heads and 4096 FF units;
the sizes are configuration. Blocks are stacked and run with ``lax.scan``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from acestep_jax.models.transformer.config import LyricEncoderConfig
from acestep_jax.nn import Dense, LayerNorm, make_param


def relative_positions(length: int, dim: int) -> np.ndarray:
    """ESPnet relative position encodings ``[2*length - 1, dim]`` for offsets ``length-1 .. -(length-1)``."""
    offsets = np.arange(length - 1, -length, -1, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, dim, 2, dtype=np.float32) * np.float32(-(math.log(10000.0) / dim)))
    pe = np.zeros((2 * length - 1, dim), np.float32)
    pe[:, 0::2] = np.sin(offsets * div)
    pe[:, 1::2] = np.cos(offsets * div)
    return pe


class RelPositionAttention(nnx.Module):
    """Multi-head self-attention with Transformer-XL style relative position terms."""

    def __init__(self, dim: int, heads: int, *, dtype, param_dtype, rngs):
        self.heads, self.d_k = heads, dim // heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_q = Dense(dim, dim, axes=("embed", "heads"), **kw)
        self.linear_k = Dense(dim, dim, axes=("embed", "heads"), **kw)
        self.linear_v = Dense(dim, dim, axes=("embed", "heads"), **kw)
        self.linear_out = Dense(dim, dim, axes=("heads", "embed"), **kw)
        self.linear_pos = Dense(dim, dim, use_bias=False, axes=("embed", "heads"), **kw)
        bound = math.sqrt(6.0 / (heads + self.d_k))
        init = lambda key, shape, dt: jax.random.uniform(key, shape, dt, -bound, bound)
        self.pos_bias_u = make_param(rngs, init, (heads, self.d_k), param_dtype, ("heads", None))
        self.pos_bias_v = make_param(rngs, init, (heads, self.d_k), param_dtype, ("heads", None))
        self.dtype = dtype

    def __call__(self, x, key_mask, pos_emb, q_scale=None):
        b, t, _ = x.shape
        heads = lambda y: y.reshape(*y.shape[:-1], self.heads, self.d_k)
        q = self.linear_q(x)
        if q_scale is not None:
            q = q * q_scale.astype(q.dtype)
        q, k, v = heads(q), heads(self.linear_k(x)), heads(self.linear_v(x))
        p = heads(self.linear_pos(pos_emb))  # [2t-1, h, d]
        u = self.pos_bias_u[...].astype(self.dtype)
        w = self.pos_bias_v[...].astype(self.dtype)
        f32 = dict(preferred_element_type=jnp.float32)
        content = jnp.einsum("bihd,bjhd->bhij", q + u, k, **f32)
        position = jnp.einsum("bihd,khd->bhik", q + w, p, **f32)  # [b, h, t, 2t-1]
        # offset i - j sits at column (t - 1) - i + j
        idx = (t - 1) - jnp.arange(t)[:, None] + jnp.arange(t)[None, :]
        position = jnp.take_along_axis(position, jnp.broadcast_to(idx, (b, self.heads, t, t)), axis=-1)
        scores = (content + position) / math.sqrt(self.d_k)
        allowed = key_mask[:, None, None, :]
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        attn = jnp.where(allowed, jax.nn.softmax(scores, axis=-1), 0.0).astype(self.dtype)
        out = jnp.einsum("bhij,bjhd->bihd", attn, v).reshape(b, t, -1)
        return self.linear_out(out)


class ConformerLayer(nnx.Module):
    """Pre-norm block: ``x += attn(LN(x))``; ``x += FF(LN(x))`` with a Swish FF."""

    def __init__(self, cfg: LyricEncoderConfig, *, dtype, param_dtype, rngs):
        d = cfg.output_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self_attn = RelPositionAttention(d, cfg.attention_heads, **kw)
        self.w_1 = Dense(d, cfg.linear_units, axes=("embed", "mlp"), **kw)
        self.w_2 = Dense(cfg.linear_units, d, axes=("mlp", "embed"), **kw)
        self.norm_mha = LayerNorm(d, eps=1e-5, param_dtype=param_dtype, rngs=rngs)
        self.norm_ff = LayerNorm(d, eps=1e-5, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, key_mask, pos_emb, q_scale):
        x = x + self.self_attn(self.norm_mha(x), key_mask, pos_emb, q_scale)
        return x + self.w_2(nnx.silu(self.w_1(self.norm_ff(x))))


class LyricEncoder(nnx.Module):
    """Linear + LayerNorm input layer, scaled by ``sqrt(d)``, then Conformer blocks and a final LayerNorm."""

    def __init__(self, input_size: int, cfg: LyricEncoderConfig, *, dtype, param_dtype, rngs):
        d = cfg.output_size
        self.cfg = cfg
        self.embed = Dense(input_size, d, axes=("embed", "mlp"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embed_norm = LayerNorm(d, eps=1e-5, param_dtype=param_dtype, rngs=rngs)
        self.after_norm = LayerNorm(d, eps=1e-5, param_dtype=param_dtype, rngs=rngs)

        @nnx.split_rngs(splits=cfg.num_blocks)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs):
            return ConformerLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.layers = make_layers(rngs)
        self.dtype = dtype

    def __call__(self, x, mask, query_scales=None):
        """``x [B, T, input_size]``, ``mask [B, T]`` → ``[B, T, output_size]``.

        ``query_scales [num_blocks]`` multiplies each block's query projection (ERG).
        """
        t = x.shape[1]
        x = self.embed_norm(self.embed(x)) * math.sqrt(self.cfg.output_size)
        pos_emb = jnp.asarray(relative_positions(t, self.cfg.output_size), self.dtype)
        key_mask = mask.astype(bool)
        if query_scales is None:
            query_scales = jnp.ones((self.cfg.num_blocks,), jnp.float32)
        graphdef, state = nnx.split(self.layers)

        def body(h, xs):
            layer_state, scale = xs
            return nnx.merge(graphdef, layer_state)(h, key_mask, pos_emb, scale), None

        x, _ = jax.lax.scan(body, x, (state, jnp.asarray(query_scales, jnp.float32)))
        return self.after_norm(x)

"""Conformer lyric encoder (ESPnet relative positions, pre-norm, no conv module).

The released model uses 6 blocks of width 1024 with 16 heads and 4096 FF units;
the sizes are configuration. Blocks are stacked and run with ``lax.scan``.
Self-attention runs over blocks of queries (:data:`QUERY_BLOCK`), so its memory
grows linearly with the lyric length instead of quadratically.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from acestep_jax.models.transformer.config import LyricEncoderConfig
from acestep_jax.nn import Dense, LayerNorm, dropout, make_param, stacked

QUERY_BLOCK = 512  # lyric-encoder queries per attention block (memory ∝ block × length)


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
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
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

    def __call__(self, x, key_mask, pos_emb, q_scale=None, query_block: int = QUERY_BLOCK):
        """``x [B, T, D]``, ``key_mask [B, T]``, ``pos_emb [2T-1, D]`` → ``[B, T, D]``.

        Queries are processed ``query_block`` at a time (``lax.map``), so the score
        tensors are ``[B, H, query_block, T]`` and memory grows linearly with ``T``
        (in training too: gradients recompute each block); every row still sees all
        keys, so the result is the full attention's.
        """
        b, t, _ = x.shape
        heads = lambda y: y.reshape(*y.shape[:-1], self.heads, self.d_k)
        q = self.linear_q(x)
        if q_scale is not None:
            q = q * q_scale.astype(q.dtype)
        q, k, v = heads(q), heads(self.linear_k(x)), heads(self.linear_v(x))
        p = heads(self.linear_pos(pos_emb))  # [2t-1, h, d]; row (t - 1) - (i - j) holds offset i - j
        c = max(1, min(query_block, t))
        n_blocks = -(-t // c)
        pad = n_blocks * c - t  # padded query rows (dropped at the end) read zero position rows
        q_u = jnp.pad(q + self.pos_bias_u[...].astype(self.dtype), ((0, 0), (0, pad), (0, 0), (0, 0)))
        q_v = jnp.pad(q + self.pos_bias_v[...].astype(self.dtype), ((0, 0), (0, pad), (0, 0), (0, 0)))
        p = jnp.pad(p, ((pad, 0), (0, 0), (0, 0)))
        allowed = key_mask.astype(bool)[:, None, None, :]
        f32 = {"preferred_element_type": jnp.float32}

        def block(start):
            qu = jax.lax.dynamic_slice_in_dim(q_u, start, c, axis=1)
            qv = jax.lax.dynamic_slice_in_dim(q_v, start, c, axis=1)
            # position rows this block needs: offsets start + c - 1 - 0 down to start - (t - 1)
            window = jax.lax.dynamic_slice_in_dim(p, t - c - start + pad, t + c - 1, axis=0)
            content = jnp.einsum("bihd,bjhd->bhij", qu, k, **f32)
            position = _skew(jnp.einsum("bihd,khd->bhik", qv, window, **f32), t)
            scores = (content + position) / math.sqrt(self.d_k)
            scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
            attn = jnp.where(allowed, jax.nn.softmax(scores, axis=-1), 0.0).astype(self.dtype)
            return jnp.einsum("bhij,bjhd->bihd", attn, v)

        # rematerialised: backward passes recompute each block's scores instead of keeping them
        out = jax.lax.map(jax.checkpoint(block), jnp.arange(n_blocks) * c)  # [n, b, c, h, d]
        out = jnp.moveaxis(out, 0, 1).reshape(b, n_blocks * c, -1)[:, :t]
        return self.linear_out(out)


def _skew(scores, t: int):
    """``[..., c, t + c - 1]`` → ``[..., c, t]`` with ``out[r, j] = scores[r, j + c - 1 - r]``.

    The relative shift as a reshape (no gather): in the rows flattened with one
    extra zero column, element ``(r, j + c - 1 - r)`` sits at ``r * (t + c - 1) + c - 1 + j``.
    """
    c, w = scores.shape[-2], scores.shape[-1]
    flat = jnp.pad(scores, [(0, 0)] * (scores.ndim - 1) + [(0, 1)]).reshape(*scores.shape[:-2], c * (w + 1))
    return flat[..., c - 1 : c - 1 + c * w].reshape(*scores.shape[:-2], c, w)[..., :t]


class ConformerLayer(nnx.Module):
    """Pre-norm block: ``x += attn(LN(x))``; ``x += FF(LN(x))`` with a Swish FF.

    With ``keys`` (three PRNG keys: training) dropout at ``cfg.dropout_rate`` hits the
    attention branch, the FF's hidden units and the FF branch, as the reference's train mode.
    """

    def __init__(self, cfg: LyricEncoderConfig, *, dtype, param_dtype, rngs):
        d = cfg.output_size
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.self_attn = RelPositionAttention(d, cfg.attention_heads, **kw)
        self.w_1 = Dense(d, cfg.linear_units, axes=("embed", "mlp"), **kw)
        self.w_2 = Dense(cfg.linear_units, d, axes=("mlp", "embed"), **kw)
        self.norm_mha = LayerNorm(d, eps=1e-5, param_dtype=param_dtype, rngs=rngs)
        self.norm_ff = LayerNorm(d, eps=1e-5, param_dtype=param_dtype, rngs=rngs)
        self.rate = cfg.dropout_rate

    def __call__(self, x, key_mask, pos_emb, q_scale, query_block: int = QUERY_BLOCK, keys=None):
        k_attn, k_hidden, k_ff = (None,) * 3 if keys is None else keys
        x = x + dropout(self.self_attn(self.norm_mha(x), key_mask, pos_emb, q_scale, query_block), k_attn, self.rate)
        hidden = dropout(nnx.silu(self.w_1(self.norm_ff(x))), k_hidden, self.rate)
        return x + dropout(self.w_2(hidden), k_ff, self.rate)


class LyricEncoder(nnx.Module):
    """Linear + LayerNorm input layer, scaled by ``sqrt(d)``, then Conformer blocks and a final LayerNorm."""

    def __init__(self, input_size: int, cfg: LyricEncoderConfig, *, dtype, param_dtype, rngs):
        d = cfg.output_size
        self.cfg = cfg
        self.embed = Dense(input_size, d, axes=("embed", "mlp"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embed_norm = LayerNorm(d, eps=1e-5, param_dtype=param_dtype, rngs=rngs)
        self.after_norm = LayerNorm(d, eps=1e-5, param_dtype=param_dtype, rngs=rngs)

        self.layers = stacked(lambda r: ConformerLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r), cfg.num_blocks, rngs)
        self.dtype = dtype

    def __call__(self, x, mask, query_scales=None, query_block: int = QUERY_BLOCK, *, dropout_key=None):
        """``x [B, T, input_size]``, ``mask [B, T]`` → ``[B, T, output_size]``.

        ``query_scales [num_blocks]`` multiplies each block's query projection (ERG).
        ``query_block`` queries attend at a time (memory linear in ``T``; same result).
        ``dropout_key`` applies the reference's training dropout: twice on the input embedding
        (after its LayerNorm and after the ``sqrt(d)`` scale), once on the relative position
        encodings (one mask for the whole batch) and in every block (:class:`ConformerLayer`).
        """
        cfg = self.cfg
        t = x.shape[1]
        keys = [None] * 4 if dropout_key is None else list(jax.random.split(dropout_key, 4))
        x = dropout(self.embed_norm(self.embed(x)), keys[0], cfg.dropout_rate) * math.sqrt(cfg.output_size)
        x = dropout(x, keys[1], cfg.dropout_rate)
        pos_emb = jnp.asarray(relative_positions(t, cfg.output_size), self.dtype)
        pos_emb = dropout(pos_emb, keys[2], cfg.positional_dropout_rate)
        key_mask = mask.astype(bool)
        if query_scales is None:
            query_scales = jnp.ones((cfg.num_blocks,), jnp.float32)
        layer_keys = None if dropout_key is None else jax.random.split(keys[3], (cfg.num_blocks, 3))
        graphdef, state = nnx.split(self.layers)

        def body(h, xs):
            layer_state, scale, k = xs
            return nnx.merge(graphdef, layer_state)(h, key_mask, pos_emb, scale, query_block, k), None

        x, _ = jax.lax.scan(body, x, (state, jnp.asarray(query_scales, jnp.float32), layer_keys))
        return self.after_norm(x)

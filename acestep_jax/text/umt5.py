"""The UMT5 text encoder (``UMT5EncoderModel``) in Flax NNX.

Pre-norm T5 blocks: T5 RMS norm (no mean, no bias, statistics in float32),
self-attention without ``1/sqrt(d)`` scaling and with a relative position bias
table per layer (UMT5, unlike T5, gives every layer its own), then a gated
tanh-GELU feed-forward. The layers are stacked and run with ``lax.scan``.

ERG (entropy-rectifying guidance) scales the query projection's output of chosen
layers by a small temperature; pass ``query_scales`` (see :func:`umt5_erg_scales`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from acestep_jax.nn import Dense, Embed, RMSNorm, make_param, resolve_dtype, stacked
from acestep_jax.sharding import constrain

_ACT = ("batch", "length", "act_embed")


@dataclass(frozen=True)
class UMT5Config:
    """UMT5 encoder sizes (defaults: ``google/umt5-base``) plus JAX-side dtypes."""

    vocab_size: int = 256384
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 12
    num_heads: int = 12
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    def __post_init__(self):
        if self.feed_forward_proj != "gated-gelu":
            raise ValueError(f"only feed_forward_proj='gated-gelu' is supported, got {self.feed_forward_proj!r}")
        if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 4:
            raise ValueError(
                f"relative_attention_num_buckets must be a positive multiple of 4, "
                f"got {self.relative_attention_num_buckets}"
            )
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 4:
            raise ValueError("relative_attention_max_distance must exceed relative_attention_num_buckets // 4")
        resolve_dtype(self.dtype)
        resolve_dtype(self.param_dtype)

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> UMT5Config:
        """Build from a Hugging Face ``config.json`` dict; keys this encoder does not use are ignored."""
        d = {**d, **overrides}
        act = d.get("dense_act_fn", "gelu_new")
        if act != "gelu_new":
            raise ValueError(f"only dense_act_fn='gelu_new' is supported, got {act!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        """The Hugging Face config keys used here plus the JAX options (JSON-serialisable)."""
        d = dataclasses.asdict(self)
        d.update(model_type="umt5", dense_act_fn="gelu_new", is_gated_act=True)
        return d


def umt5_erg_scales(num_layers: int, tau: float = 0.01, layers: Sequence[int] = (8, 9)) -> jax.Array:
    """Per-layer query scales for the ERG "null" prompt: ``tau`` at ``layers``, 1 elsewhere."""
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"ERG layers {bad} outside 0..{num_layers - 1}")
    scales = np.ones((num_layers,), np.float32)
    scales[list(layers)] = tau
    return jnp.asarray(scales)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 bucket of ``key - query`` for every ``[query, key]`` pair (``int32 [L, L]``).

    Half the buckets hold positive offsets; in each half, offsets below a quarter of
    ``num_buckets`` get a bucket each and larger ones share log-spaced buckets up to
    ``max_distance``. Computed in float32 like the reference, at trace time.
    """
    pos = np.arange(length, dtype=np.int64)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    exact = half // 2
    dist = np.abs(rel)
    ratio = np.log(np.maximum(dist, 1).astype(np.float32) / np.float32(exact))
    ratio = ratio / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
    large = np.minimum(exact + ratio.astype(np.int64), half - 1)
    bucket = np.where(rel > 0, half, 0) + np.where(dist < exact, dist, large)
    return bucket.astype(np.int32)


class UMT5Layer(nnx.Module):
    """One encoder block: RMS-normed self-attention with relative bias, then gated-GELU FFN."""

    def __init__(self, cfg: UMT5Config, *, dtype, param_dtype, rngs: nnx.Rngs | None):
        d, inner = cfg.d_model, cfg.inner_dim
        kw = {"use_bias": False, "dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        norm = {"eps": cfg.layer_norm_epsilon, "param_dtype": param_dtype, "rngs": rngs}
        self.attn_norm = RMSNorm(d, **norm)
        self.q = Dense(d, inner, axes=("embed", "heads"), **kw)
        self.k = Dense(d, inner, axes=("embed", "heads"), **kw)
        self.v = Dense(d, inner, axes=("embed", "heads"), **kw)
        self.o = Dense(inner, d, axes=("heads", "embed"), **kw)
        init = lambda key, shape, dt: jax.random.normal(key, shape, dt)
        self.relative_attention_bias = make_param(
            rngs, init, (cfg.relative_attention_num_buckets, cfg.num_heads), param_dtype, (None, None)
        )
        self.ff_norm = RMSNorm(d, **norm)
        self.wi_0 = Dense(d, cfg.d_ff, axes=("embed", "mlp"), **kw)
        self.wi_1 = Dense(d, cfg.d_ff, axes=("embed", "mlp"), **kw)
        self.wo = Dense(cfg.d_ff, d, axes=("mlp", "embed"), **kw)
        self.num_heads, self.d_kv, self.dtype = cfg.num_heads, cfg.d_kv, dtype

    def __call__(self, x, buckets, key_valid, q_scale):
        b, n, _ = x.shape
        h = self.attn_norm(x)
        heads = lambda t: t.reshape(b, n, self.num_heads, self.d_kv)
        q = heads(self.q(h) * q_scale.astype(self.dtype))
        k, v = heads(self.k(h)), heads(self.v(h))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        bias = jnp.take(self.relative_attention_bias[...].astype(jnp.float32), buckets, axis=0)  # [L, L, H]
        scores = scores + bias.transpose(2, 0, 1)[None]
        scores = jnp.where(key_valid[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        attn = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, -1)
        x = x + self.o(attn).astype(x.dtype)

        h = self.ff_norm(x)
        gated = jax.nn.gelu(self.wi_0(h), approximate=True) * self.wi_1(h)
        x = x + self.wo(gated).astype(x.dtype)
        return constrain(x, _ACT)


class UMT5Encoder(nnx.Module):
    """``UMT5EncoderModel``: token ids → last hidden state ``[B, L, d_model]``."""

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs | None):
        self.cfg = cfg
        dtype, param_dtype = resolve_dtype(cfg.dtype), resolve_dtype(cfg.param_dtype)
        self.dtype = dtype
        self.embed_tokens = Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.layers = stacked(lambda r: UMT5Layer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r), cfg.num_layers, rngs)
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask, query_scales=None) -> jax.Array:
        """Encode ``input_ids [B, L]``; positions where ``attention_mask`` is 0 are never attended to.

        ``query_scales [num_layers]`` multiplies each layer's query projection (ERG).
        """
        cfg = self.cfg
        input_ids, attention_mask = jnp.asarray(input_ids), jnp.asarray(attention_mask)
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be [B, L]; got {input_ids.shape} and {attention_mask.shape}"
            )
        if query_scales is None:
            query_scales = jnp.ones((cfg.num_layers,), jnp.float32)
        query_scales = jnp.asarray(query_scales, jnp.float32)
        if query_scales.shape != (cfg.num_layers,):
            raise ValueError(f"query_scales must have shape ({cfg.num_layers},), got {query_scales.shape}")

        x = constrain(self.embed_tokens(input_ids.astype(jnp.int32)), _ACT)
        buckets = jnp.asarray(relative_position_buckets(
            input_ids.shape[1], cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance))
        key_valid = attention_mask != 0
        graphdef, state = nnx.split(self.layers)

        def body(h, xs):
            layer_state, scale = xs
            return nnx.merge(graphdef, layer_state)(h, buckets, key_valid, scale), None

        x, _ = jax.lax.scan(body, x, (state, query_scales))
        return self.final_norm(x)

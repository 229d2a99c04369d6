"""Attention layers of the ACE-Step transformer blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from acestep_jax.models.transformer.embeddings import apply_rope, apply_rope_head_major
from acestep_jax.nn import Dense
from acestep_jax.sharding import constrain


def _proj(din, dout, axes, dtype, param_dtype, rngs):
    return Dense(din, dout, axes=axes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class LinearSelfAttention(nnx.Module):
    """ReLU-kernel linear attention with RoPE (Sana-style).

    ``out_i = sum_j v_j (k_j . q_i) / (sum_j k_j . q_i + eps)`` with ``q, k = relu(.)``
    and padded frames zeroed in q, k and v. The two contractions and the
    normaliser are accumulated in float32.
    """

    eps = 1e-15

    def __init__(self, dim: int, heads: int, head_dim: int, *, dtype, param_dtype, rngs, head_major: bool = False):
        inner = heads * head_dim
        self.heads, self.head_dim, self.head_major = heads, head_dim, head_major
        self.to_q = _proj(dim, inner, ("embed", "heads"), dtype, param_dtype, rngs)
        self.to_k = _proj(dim, inner, ("embed", "heads"), dtype, param_dtype, rngs)
        self.to_v = _proj(dim, inner, ("embed", "heads"), dtype, param_dtype, rngs)
        self.to_out = _proj(inner, dim, ("heads", "embed"), dtype, param_dtype, rngs)
        self.dtype = dtype

    def __call__(self, x, mask, rope, q_scale=None):
        if self.head_major:
            return self._head_major(x, mask, rope, q_scale)
        b, s, _ = x.shape
        split = lambda y: y.reshape(b, s, self.heads, self.head_dim)
        q = self.to_q(x)
        if q_scale is not None:
            q = q * q_scale.astype(q.dtype)
        q, k, v = split(q), split(self.to_k(x)), split(self.to_v(x))
        q = constrain(q, ("batch", "length", "act_heads", None))
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        m = mask.astype(q.dtype)[:, :, None, None]
        q = jax.nn.relu(q * m).astype(jnp.float32)
        k = jax.nn.relu(k * m).astype(jnp.float32)
        v = (v * m).astype(jnp.float32)
        kv = jnp.einsum("bshd,bshe->bhde", k, v)
        k_sum = jnp.sum(k, axis=1)  # [b, h, d]
        num = jnp.einsum("bshd,bhde->bshe", q, kv)
        den = jnp.einsum("bshd,bhd->bsh", q, k_sum)[..., None]
        out = (num / (den + self.eps)).astype(self.dtype).reshape(b, s, -1)
        return self.to_out(out)

    def _head_major(self, x, mask, rope, q_scale):
        """The same attention with q, k, v held ``[B, H, D, S]``: the projections are GEMMs
        batched over items that write this layout, so neither contraction needs a transpose
        on GPU. The ``k . v`` sums take the (compute-dtype) values with float32 accumulation."""
        b, s, _ = x.shape
        split = lambda y: y.reshape(b, self.heads, self.head_dim, s)
        q = self.to_q.to_channels_first(x)
        if q_scale is not None:
            q = q * q_scale.astype(q.dtype)
        q, k, v = split(q), split(self.to_k.to_channels_first(x)), split(self.to_v.to_channels_first(x))
        q = constrain(q, ("batch", "act_heads", None, "length"))
        q, k = apply_rope_head_major(q, *rope), apply_rope_head_major(k, *rope)
        m = mask.astype(q.dtype)[:, None, None, :]
        q, k, v = jax.nn.relu(q * m), jax.nn.relu(k * m), v * m
        contract = lambda a, c, dims: jax.lax.dot_general(  # batched over (item, head)
            a, c, (dims, ((0, 1), (0, 1))), preferred_element_type=jnp.float32)
        kv = contract(k, v, ((3,), (3,)))  # [b, h, d, e]
        num = contract(kv, q.astype(jnp.float32), ((2,), (2,)))  # [b, h, e, s]
        den = jnp.einsum("bhds,bhd->bhs", q.astype(jnp.float32), jnp.sum(k.astype(jnp.float32), axis=3))
        out = (num / (den[:, :, None] + self.eps)).astype(self.dtype).reshape(b, -1, s)
        return self.to_out.from_channels_first(out)


class CrossAttention(nnx.Module):
    """Softmax attention from latent frames to the condition sequence, RoPE on both.

    A query frame whose mask is zero, or that sees no unmasked key, gets a zero
    output (as PyTorch's SDPA does for fully masked rows). The ``add_*`` and
    ``to_add_out`` projections exist in the reference checkpoint but are never
    used by its cross-attention processor; they are kept so checkpoints round-trip.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, *, dtype, param_dtype, rngs, impl: str = "xla"):
        inner = heads * head_dim
        self.heads, self.head_dim, self.impl = heads, head_dim, impl
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            setattr(self, name, _proj(dim, inner, ("embed", "heads"), dtype, param_dtype, rngs))
        self.to_out = _proj(inner, dim, ("heads", "embed"), dtype, param_dtype, rngs)
        self.to_add_out = _proj(inner, dim, ("heads", "embed"), dtype, param_dtype, rngs)
        self.dtype = dtype

    def __call__(self, x, mask, context, context_mask, rope, context_rope, q_scale=None):
        b, s, _ = x.shape
        n = context.shape[1]
        q = self.to_q(x)
        if q_scale is not None:
            q = q * q_scale.astype(q.dtype)
        q = apply_rope(q.reshape(b, s, self.heads, self.head_dim), *rope)
        k = apply_rope(self.to_k(context).reshape(b, n, self.heads, self.head_dim), *context_rope)
        v = self.to_v(context).reshape(b, n, self.heads, self.head_dim)
        allowed = (mask[:, :, None] == 1) & (context_mask[:, None, :] == 1)  # [b, s, n]
        if self.impl == "cudnn":
            # Fused attention (softmax statistics in float32 inside the kernel); rows with
            # no allowed key are zeroed afterwards, as in the einsum form below.
            out = jax.nn.dot_product_attention(
                q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype),
                mask=allowed[:, None], implementation="cudnn",
            )
            out = jnp.where(allowed.any(-1)[:, :, None, None], out, 0).reshape(b, s, -1)
            return self.to_out(out)
        logits = jnp.einsum("bshd,bnhd->bhsn", q, k, preferred_element_type=jnp.float32)
        logits = logits / jnp.sqrt(jnp.float32(self.head_dim))
        logits = jnp.where(allowed[:, None], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        probs = jnp.where(allowed[:, None], probs, 0.0).astype(self.dtype)
        out = jnp.einsum("bhsn,bnhd->bshd", probs, v).reshape(b, s, -1)
        return self.to_out(out)

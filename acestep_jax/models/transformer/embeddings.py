"""Input/output embeddings of the ACE-Step transformer: RoPE tables, timestep
embedding, patch embedding and the final (unpatchify) layer."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from acestep_jax.nn import Dense, GroupNorm, make_param, rms_norm


def rope_tables(length: int, dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """``cos``/``sin`` tables ``[length, dim]``; frequencies repeat as ``[f, f]`` over the two halves.

    Computed in float32 with numpy at trace time (static length).
    """
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = np.float32(1.0) / (np.float32(theta) ** exponent)
    freqs = np.outer(np.arange(length, dtype=np.float32), inv_freq).astype(np.float32)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def rope_at(positions: jax.Array, dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """Per-item ``cos``/``sin`` tables ``[B, S, dim]`` at ``positions [B, S]`` (each in ``0..S-1``),
    gathered from :func:`rope_tables` so that a position has the same values wherever it is."""
    cos, sin = rope_tables(positions.shape[1], dim, theta)
    return jnp.asarray(cos)[positions], jnp.asarray(sin)[positions]


def apply_rope(x: jax.Array, cos, sin) -> jax.Array:
    """Rotate ``x [B, S, H, D]`` by position: adjacent pairs ``(a, b) -> (-b, a)``.

    ``cos``/``sin`` are ``[S, D]`` (shared positions) or ``[B, S, D]`` (per item).
    Pairs are adjacent elements while ``cos``/``sin`` repeat their frequencies over
    the two halves; this pairing is the reference's and is kept for parity.
    """
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    cos, sin = jnp.asarray(cos), jnp.asarray(sin)
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    out = x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin
    return out.astype(x.dtype)


def apply_rope_head_major(x: jax.Array, cos, sin) -> jax.Array:
    """:func:`apply_rope` of ``x [B, H, D, S]`` (head-major) with ``[S, D]`` tables."""
    b, h, d, s = x.shape
    pairs = x.reshape(b, h, d // 2, 2, s)
    rotated = jnp.stack([-pairs[:, :, :, 1], pairs[:, :, :, 0]], axis=3).reshape(x.shape)
    cos, sin = jnp.asarray(cos).T, jnp.asarray(sin).T  # [D, S]
    out = x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin
    return out.astype(x.dtype)


def timestep_features(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal features of ``t [B]`` (0..1000 scale), cosines first: ``[B, dim]``."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half
    args = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nnx.Module):
    """Sinusoidal features → Linear → SiLU → Linear."""

    def __init__(self, dim: int, *, freq_dim: int = 256, dtype, param_dtype, rngs):
        self.freq_dim = freq_dim
        self.linear_1 = Dense(freq_dim, dim, axes=(None, "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_2 = Dense(dim, dim, axes=("mlp", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype

    def __call__(self, t: jax.Array) -> jax.Array:
        h = timestep_features(t, self.freq_dim).astype(self.dtype)
        return self.linear_2(nnx.silu(self.linear_1(h)))


class PatchEmbed(nnx.Module):
    """Latent ``[B, C, 16, T]`` → tokens ``[B, T, D]``.

    The reference's 16×1 strided conv over the full height is a linear map of the
    ``C*16`` values of each frame; then GroupNorm(32) and a 1×1 conv.
    """

    def __init__(self, in_channels: int, height: int, dim: int, *, dtype, param_dtype, rngs):
        mid = in_channels * 256
        self.conv_in = Dense(in_channels * height, mid, axes=(None, "mlp"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = GroupNorm(32, mid, eps=1e-6, param_dtype=param_dtype, rngs=rngs)
        self.conv_out = Dense(mid, dim, axes=("mlp", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, latent: jax.Array, frame_mask: jax.Array | None = None) -> jax.Array:
        """``frame_mask [B, T]`` (optional): take the GroupNorm statistics over valid frames only."""
        b, c, h, t = latent.shape
        x = latent.transpose(0, 3, 1, 2).reshape(b, t, c * h)
        return self.conv_out(self.norm(self.conv_in(x), frame_mask))


class FinalLayer(nnx.Module):
    """RMSNorm → timestep shift/scale → Linear → unpatchify to ``[B, C, 16, T]``."""

    def __init__(self, dim: int, out_channels: int, height: int, *, dtype, param_dtype, rngs):
        init = lambda key, shape, dt: jax.random.normal(key, shape, dt) / dim**0.5
        self.scale_shift_table = make_param(rngs, init, (2, dim), param_dtype, (None, "embed"))
        self.linear = Dense(dim, height * out_channels, axes=("embed", None), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.out_channels = out_channels
        self.height = height
        self.dtype = dtype

    def __call__(self, x: jax.Array, embedded_t: jax.Array, output_length: int) -> jax.Array:
        mod = self.scale_shift_table[...][None].astype(self.dtype) + embedded_t[:, None].astype(self.dtype)
        shift, scale = mod[:, 0:1], mod[:, 1:2]
        x = rms_norm(x, 1e-6).astype(self.dtype) * (1 + scale) + shift
        x = self.linear(x)
        b, t, _ = x.shape
        out = x.reshape(b, t, self.height, self.out_channels).transpose(0, 3, 2, 1)
        if output_length > t:
            out = jnp.pad(out, ((0, 0), (0, 0), (0, 0), (0, output_length - t)))
        return out[..., :output_length]

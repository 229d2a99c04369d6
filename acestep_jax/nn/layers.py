"""Flax NNX layers used across the models.

Every parameter carries logical axis names (``out_sharding`` metadata) that
:mod:`acestep_jax.sharding` maps onto mesh axes. Parameters are stored in
``param_dtype``; computation runs in ``dtype``; normalisation statistics are
always taken in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]


def make_param(rngs: nnx.Rngs | None, init, shape, dtype, axes: Axes) -> nnx.Param:
    """Create a parameter initialised by ``init(key, shape, dtype)`` with logical axes."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match parameter shape {shape}")
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return nnx.Param(init(key, shape, dtype), out_sharding=tuple(axes), eager_sharding=False)


def mask_time(x: jax.Array, lengths: jax.Array | None, axis: int = 1) -> jax.Array:
    """Zero ``x [B, ...]`` at positions ``>= lengths [B]`` along ``axis`` (``lengths=None``: ``x`` as is)."""
    if lengths is None:
        return x
    shape = [1] * x.ndim
    shape[0], shape[axis] = x.shape[0], x.shape[axis]
    keep = jnp.arange(x.shape[axis])[None, :] < jnp.asarray(lengths)[:, None]
    return x * keep.reshape(shape).astype(x.dtype)


def _fan_in_uniform(fan_in: int):
    """PyTorch's default initialiser for linear/conv layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / max(fan_in, 1) ** 0.5
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` with kernel ``[in, out]``.

    A low-rank adapter can be attached (see :mod:`acestep_jax.lora`): then
    ``y += lora_scale * (x @ lora_a) @ lora_b``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        axes: tuple[str | None, str | None] = ("embed", "mlp"),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None,
    ):
        init = _fan_in_uniform(in_features)
        self.kernel = make_param(rngs, init, (in_features, out_features), param_dtype, axes)
        self.bias = (
            make_param(rngs, init, (out_features,), param_dtype, (axes[1],)) if use_bias else None
        )
        self.dtype = dtype
        self.lora_a: nnx.LoRAParam | None = nnx.data(None)
        self.lora_b: nnx.LoRAParam | None = nnx.data(None)
        self.lora_scale = 1.0

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        y = jnp.einsum("...i,io->...o", x, self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora_a is not None:
            low = jnp.einsum("...i,ir->...r", x, self.lora_a[...].astype(self.dtype))
            y = y + self.lora_scale * jnp.einsum("...r,ro->...o", low, self.lora_b[...].astype(self.dtype))
        return y

    def to_channels_first(self, x: jax.Array) -> jax.Array:
        """``x [B, S, in]`` → ``[B, out, S]``: the same map as ``__call__``, computed per item
        (a GEMM batched over ``B``), so that XLA's GPU compiler writes channel-major output
        without a transpose."""
        x = x.astype(self.dtype)
        y = _per_item(self.kernel[...].astype(self.dtype).T, x, x.shape[0], ((2,), (2,)))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)[:, None]
        if self.lora_a is not None:
            low = _per_item(self.lora_a[...].astype(self.dtype).T, x, x.shape[0], ((2,), (2,)))
            y = y + self.lora_scale * _per_item(self.lora_b[...].astype(self.dtype).T, low, x.shape[0], ((2,), (1,)))
        return y

    def from_channels_first(self, x: jax.Array) -> jax.Array:
        """``x [B, in, S]`` → ``[B, S, out]``: ``__call__`` of ``x`` transposed, read channel-major
        by a GEMM batched over ``B`` (no transpose on GPU)."""
        x = x.astype(self.dtype)
        y = _per_item(self.kernel[...].astype(self.dtype), x, x.shape[0], ((1,), (1,)), weight_first=False)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora_a is not None:
            low = _per_item(self.lora_a[...].astype(self.dtype), x, x.shape[0], ((1,), (1,)), weight_first=False)
            y = y + self.lora_scale * _per_item(self.lora_b[...].astype(self.dtype), low, x.shape[0], ((2,), (1,)),
                                                weight_first=False)
        return y


def _per_item(w: jax.Array, x: jax.Array, batch: int, contract, weight_first: bool = True) -> jax.Array:
    """``dot_general`` of ``x [B, ...]`` with the 2-d weight ``w`` broadcast over ``B`` as a batch
    dimension (``contract``: the contracted axes of the first and second operand)."""
    w = jnp.broadcast_to(w[None], (batch, *w.shape))
    lhs, rhs = (w, x) if weight_first else (x, w)
    return jax.lax.dot_general(lhs, rhs, (contract, ((0,), (0,))))


class Conv(nnx.Module):
    """Channels-last N-d convolution ``[B, *spatial, C]`` with PyTorch-style padding.

    The kernel is stored ``[*kernel_size, in // groups, out]``. ``padding`` is an int
    (same on both sides of every spatial axis) or a sequence of ``(low, high)`` pairs.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: int | Sequence[tuple[int, int]] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        axes: tuple[str | None, str | None] = ("conv_in", "conv_out"),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None,
    ):
        ks = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        nd = len(ks)
        if not 1 <= nd <= 3:
            raise ValueError(f"Conv supports 1-3 spatial dims, got kernel_size={kernel_size}")
        if in_features % groups or out_features % groups:
            raise ValueError(f"channels {in_features}->{out_features} not divisible by groups={groups}")
        as_tuple = lambda v: (v,) * nd if isinstance(v, int) else tuple(v)
        self.strides = as_tuple(strides)
        self.dilation = as_tuple(dilation)
        self.padding = (
            tuple((padding, padding) for _ in range(nd))
            if isinstance(padding, int)
            else tuple(tuple(p) for p in padding)
        )
        self.groups = groups
        self.dtype = dtype
        fan_in = (in_features // groups) * math.prod(ks)
        init = _fan_in_uniform(fan_in)
        kshape = (*ks, in_features // groups, out_features)
        self.kernel = make_param(rngs, init, kshape, param_dtype, (None,) * nd + tuple(axes))
        self.bias = make_param(rngs, init, (out_features,), param_dtype, (axes[1],)) if use_bias else None
        nd_spec = "HWD"[:nd]
        self._dn = ("N" + nd_spec + "C", nd_spec + "IO", "N" + nd_spec + "C")

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            window_strides=self.strides,
            padding=self.padding,
            rhs_dilation=self.dilation,
            dimension_numbers=self._dn,
            feature_group_count=self.groups,
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding table ``[vocab, features]``."""

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        axes: tuple[str | None, str | None] = ("vocab", "embed"),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None,
    ):
        init = lambda key, shape, dt: jax.random.normal(key, shape, dt)
        self.embedding = make_param(rngs, init, (num_embeddings, features), param_dtype, axes)
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


def dropout(x: jax.Array, key: jax.Array | None, rate: float) -> jax.Array:
    """Inverted dropout: each element is zeroed with probability ``rate`` and the rest scaled
    by ``1 / (1 - rate)``; the identity without a ``key`` (inference) or at rate 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def rms_norm(x: jax.Array, eps: float) -> jax.Array:
    """Root-mean-square normalisation over the last axis, computed in float32."""
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
    """RMS normalisation over the last axis with an optional learned scale."""

    def __init__(self, features: int, *, eps: float = 1e-6, use_scale: bool = True,
                 axis_name: str | None = "norm", param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        ones = lambda key, shape, dt: jnp.ones(shape, dt)
        self.scale = make_param(rngs, ones, (features,), param_dtype, (axis_name,)) if use_scale else None
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        y = rms_norm(x, self.eps)
        if self.scale is not None:
            y = y * self.scale[...].astype(jnp.float32)
        return y.astype(x.dtype)


class LayerNorm(nnx.Module):
    """Layer normalisation over the last axis (biased variance, as PyTorch)."""

    def __init__(self, features: int, *, eps: float = 1e-5, use_affine: bool = True,
                 axis_name: str | None = "norm", param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        ones = lambda key, shape, dt: jnp.ones(shape, dt)
        zeros = lambda key, shape, dt: jnp.zeros(shape, dt)
        self.scale = make_param(rngs, ones, (features,), param_dtype, (axis_name,)) if use_affine else None
        self.bias = make_param(rngs, zeros, (features,), param_dtype, (axis_name,)) if use_affine else None
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class GroupNorm(nnx.Module):
    """Group normalisation for channels-last inputs ``[B, *spatial, C]``."""

    def __init__(self, num_groups: int, features: int, *, eps: float = 1e-5,
                 axis_name: str | None = "norm", param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        if features % num_groups:
            raise ValueError(f"{features} channels not divisible into {num_groups} groups")
        ones = lambda key, shape, dt: jnp.ones(shape, dt)
        zeros = lambda key, shape, dt: jnp.zeros(shape, dt)
        self.scale = make_param(rngs, ones, (features,), param_dtype, (axis_name,))
        self.bias = make_param(rngs, zeros, (features,), param_dtype, (axis_name,))
        self.num_groups = num_groups
        self.eps = eps

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """``mask [B, *spatial]`` (optional) restricts the statistics to positions where it is 1."""
        shape = x.shape
        g = x.astype(jnp.float32).reshape(shape[0], -1, self.num_groups, shape[-1] // self.num_groups)
        if mask is None:
            mean = jnp.mean(g, axis=(1, 3), keepdims=True)
            var = jnp.mean(jnp.square(g - mean), axis=(1, 3), keepdims=True)
        else:
            m = mask.astype(jnp.float32).reshape(shape[0], -1, 1, 1)
            count = jnp.maximum(jnp.sum(m, axis=1, keepdims=True) * g.shape[-1], 1.0)
            mean = jnp.sum(g * m, axis=(1, 3), keepdims=True) / count
            var = jnp.sum(jnp.square(g - mean) * m, axis=(1, 3), keepdims=True) / count
        y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(shape)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)

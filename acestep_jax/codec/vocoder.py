"""``ADaMoSHiFiGANV1`` vocoder (ConvNeXt backbone + HiFi-GAN head) in Flax NNX.

:meth:`Vocoder.decode` maps log-mels ``[B, n_mels, frames]`` to audio
``[B, 1, frames * hop_length]``; inside, activations are channels-last
``[B, length, C]``. Weight normalisation is folded into plain kernels when a
checkpoint is converted (see :mod:`acestep_jax.convert.vocoder`).

Modules take ``n [B]`` (optional), each item's length at their own resolution: every
convolution sees zeros past it, and the stem repeats the item's last frame (its edge
padding), so a padded item decodes as it would alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from acestep_jax.codec.config import VocoderConfig
from acestep_jax.nn.dtypes import resolve_dtype
from acestep_jax.nn.layers import Conv, Dense, LayerNorm, make_param, mask_time


class ConvNeXtBlock(nnx.Module):
    """Depthwise conv → LayerNorm → MLP (GELU) → layer scale, plus the input."""

    def __init__(self, dim: int, kernel_size: int, *, dtype, param_dtype, rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dwconv = Conv(
            dim,
            dim,
            (kernel_size,),
            padding=(kernel_size - 1) // 2,
            groups=dim,
            axes=(None, "conv_out"),
            **kw,
        )
        self.norm = LayerNorm(dim, eps=1e-6, param_dtype=param_dtype)
        self.pwconv1 = Dense(dim, 4 * dim, axes=("embed", "mlp"), **kw)
        self.pwconv2 = Dense(4 * dim, dim, axes=("mlp", "embed"), **kw)
        fill = lambda key, shape, dt: jnp.full(shape, 1e-6, dt)
        self.gamma = make_param(rngs, fill, (dim,), param_dtype, ("norm",))

    def __call__(self, x, n=None):
        h = self.dwconv(mask_time(x, n))
        h = self.pwconv2(jax.nn.gelu(self.pwconv1(self.norm(h)), approximate=False))
        return x + self.gamma[...].astype(h.dtype) * h


class ConvNeXtEncoder(nnx.Module):
    """Stem (replicate-padded conv + LayerNorm); per stage a LayerNorm + 1×1 conv, then ConvNeXt blocks."""

    def __init__(self, cfg: VocoderConfig, *, dtype, param_dtype, rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        dims = cfg.dims
        layers = [
            nnx.List(
                [
                    Conv(cfg.input_channels, dims[0], (7,), **kw),
                    LayerNorm(dims[0], eps=1e-6, param_dtype=param_dtype),
                ]
            )
        ]
        for i in range(len(dims) - 1):
            layers.append(
                nnx.List(
                    [
                        LayerNorm(dims[i], eps=1e-6, param_dtype=param_dtype),
                        Conv(dims[i], dims[i + 1], (1,), **kw),
                    ]
                )
            )
        self.channel_layers = nnx.List(layers)
        self.stages = nnx.List(
            [
                nnx.List([ConvNeXtBlock(d, cfg.kernel_sizes[0], **kw) for _ in range(n)])
                for d, n in zip(dims, cfg.depths)
            ]
        )
        self.norm = LayerNorm(dims[-1], eps=1e-6, param_dtype=param_dtype)

    def __call__(self, x, n=None):
        if n is not None:  # each item's last frame repeats past its end
            last = jnp.minimum(jnp.arange(x.shape[1])[None, :], jnp.maximum(n, 1)[:, None] - 1)
            x = jnp.take_along_axis(x, last[:, :, None], axis=1)
        x = jnp.pad(x, ((0, 0), (3, 3), (0, 0)), mode="edge")  # the stem conv pads by replication
        for channel_layer, stage in zip(self.channel_layers, self.stages):
            for layer in channel_layer:
                x = layer(x)
            for block in stage:
                x = block(x, n)
        return self.norm(x)


class ConvTranspose1d(nnx.Module):
    """PyTorch ``ConvTranspose1d`` (no output padding) on ``[B, L, C]``; kernel stored ``[k, in, out]``."""

    def __init__(
        self, cin: int, cout: int, kernel_size: int, stride: int, padding: int, *, dtype, param_dtype, rngs
    ):
        bound = 1.0 / (cout * kernel_size) ** 0.5
        init = lambda key, shape, dt: jax.random.uniform(key, shape, dt, -bound, bound)
        self.kernel = make_param(
            rngs, init, (kernel_size, cin, cout), param_dtype, (None, "conv_in", "conv_out")
        )
        self.bias = make_param(rngs, init, (cout,), param_dtype, ("conv_out",))
        self.stride, self.padding, self.dtype = stride, padding, dtype

    def __call__(self, x):
        k = self.kernel.shape[0]
        edge = k - 1 - self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            jnp.flip(self.kernel[...].astype(self.dtype), axis=0),
            window_strides=(1,),
            padding=((edge, edge),),
            lhs_dilation=(self.stride,),
            dimension_numbers=("NHC", "HIO", "NHC"),
        )
        return y + self.bias[...].astype(self.dtype)


def _padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nnx.Module):
    """Three (SiLU → dilated conv → SiLU → conv) residual steps."""

    def __init__(self, channels: int, kernel_size: int, dilations, *, dtype, param_dtype, rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.convs1 = nnx.List(
            [
                Conv(channels, channels, (kernel_size,), dilation=d, padding=_padding(kernel_size, d), **kw)
                for d in dilations
            ]
        )
        self.convs2 = nnx.List(
            [Conv(channels, channels, (kernel_size,), padding=_padding(kernel_size), **kw) for _ in dilations]
        )

    def __call__(self, x, n=None):
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(mask_time(jax.nn.silu(c1(mask_time(jax.nn.silu(x), n))), n))
        return x


class HiFiGANGenerator(nnx.Module):
    """conv_pre → per stage (SiLU, transposed conv, mean of ResBlock1s) → SiLU → conv_post → tanh."""

    def __init__(self, cfg: VocoderConfig, *, dtype, param_dtype, rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        c0 = cfg.upsample_initial_channel
        self.conv_pre = Conv(
            cfg.num_mels, c0, (cfg.pre_conv_kernel_size,), padding=_padding(cfg.pre_conv_kernel_size), **kw
        )
        self.ups = nnx.List(
            [
                ConvTranspose1d(c0 // 2**i, c0 // 2 ** (i + 1), k, u, (k - u) // 2, **kw)
                for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
            ]
        )
        self.resblocks = nnx.List(
            [
                ResBlock1(c0 // 2 ** (i + 1), k, d, **kw)
                for i in range(len(cfg.upsample_rates))
                for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
            ]
        )
        ch = c0 // 2 ** len(cfg.upsample_rates)
        self.conv_post = Conv(
            ch, 1, (cfg.post_conv_kernel_size,), padding=_padding(cfg.post_conv_kernel_size), **kw
        )
        self.num_kernels = len(cfg.resblock_kernel_sizes)

    def __call__(self, x, n=None):
        x = self.conv_pre(mask_time(x, n))
        for i, up in enumerate(self.ups):
            x = up(mask_time(jax.nn.silu(x), n))
            n = None if n is None else n * up.stride
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x, n)
            for block in blocks[1:]:
                xs = xs + block(x, n)
            x = xs / self.num_kernels
        return jnp.tanh(self.conv_post(mask_time(jax.nn.silu(x), n)))


class Vocoder(nnx.Module):
    """``ADaMoSHiFiGANV1``: ``.backbone`` (ConvNeXt) and ``.head`` (HiFi-GAN)."""

    def __init__(self, cfg: VocoderConfig, *, rngs: nnx.Rngs | None):
        kw = {"dtype": resolve_dtype(cfg.dtype), "param_dtype": resolve_dtype(cfg.param_dtype), "rngs": rngs}
        self.config = cfg
        self.backbone = ConvNeXtEncoder(cfg, **kw)
        self.head = HiFiGANGenerator(cfg, **kw)

    def decode_channels_last(self, mel: jax.Array, n=None) -> jax.Array:
        """``mel [B, frames, n_mels]`` → float32 audio ``[B, frames * hop_length]`` whatever the compute
        dtype (``n [B]``: lengths in frames)."""
        return self.head(self.backbone(mel, n), n)[..., 0].astype(jnp.float32)

    def decode(self, mel: jax.Array) -> jax.Array:
        """``mel [B, n_mels, frames]`` → audio ``[B, 1, frames * hop_length]`` (the reference layout)."""
        if mel.ndim != 3 or mel.shape[1] != self.config.input_channels:
            raise ValueError(f"mel must be [B, {self.config.input_channels}, frames], got {mel.shape}")
        return self.decode_channels_last(mel.transpose(0, 2, 1))[:, None, :]

    __call__ = decode

"""Deep-compression autoencoder (diffusers ``AutoencoderDC`` layout) in Flax NNX.

Activations are channels-last ``[B, H, W, C]`` inside the modules; :meth:`DCAE.encode`
and :meth:`DCAE.decode` take and return the reference's ``[B, C, H, W]`` layout
(mels ``[B, 2, 128, frames]``, latents ``[B, 8, 16, frames // 8]``).

Semantics that the checkpoint depends on:

- RMS norms normalise over channels, then apply a weight and a bias.
- Down-sampling shortcuts space-to-depth the input (channel ``c * 4 + 2 * i + j``
  for the offset ``(i, j)`` inside each 2×2 cell) and average consecutive groups of
  channels; up-sampling shortcuts repeat every channel and depth-to-space the result.
- The multiscale linear attention concatenates q, k, v (each ``heads * head_dim``
  channels) with a depthwise + grouped-pointwise projection of them, then splits
  the channels into consecutive groups of ``3 * head_dim``, each giving a query,
  key and value of ``head_dim`` (so the "heads" straddle the q/k/v boundary, as in
  the reference). ReLU feature maps; the normaliser uses a row of ones appended to
  the values and ``eps = 1e-15``. When ``H * W <= head_dim`` the reference switches
  to the quadratic form, reproduced here.

Length-masked decoding: the decoder's modules take ``n [B]``, each item's true length
in frames at the module's own time resolution (``None``: no mask). Every convolution
then sees zeros past an item's end and the attention sums skip those frames, so frames
before the end equal an unpadded decode's (see :mod:`acestep_jax.codec.codec`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from acestep_jax.codec.config import DCAEConfig
from acestep_jax.nn.dtypes import resolve_dtype
from acestep_jax.nn.layers import Conv, Dense, make_param, mask_time

_ACTS = {"silu": jax.nn.silu, "relu": jax.nn.relu, "relu6": jax.nn.relu6}
_ATTN_EPS = 1e-15


class ChannelRMSNorm(nnx.Module):
    """RMS norm over the channel (last) axis with a weight and a bias (diffusers ``RMSNorm(bias=True)``)."""

    def __init__(self, features: int, *, eps: float = 1e-5, param_dtype=jnp.float32):
        ones = lambda key, shape, dt: jnp.ones(shape, dt)
        zeros = lambda key, shape, dt: jnp.zeros(shape, dt)
        self.scale = make_param(None, ones, (features,), param_dtype, ("norm",))
        self.bias = make_param(None, zeros, (features,), param_dtype, ("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def space_to_depth(x: jax.Array, f: int = 2) -> jax.Array:
    """pixel_unshuffle: ``[B, H, W, C]`` → ``[B, H/f, W/f, C*f*f]``, channel ``c*f*f + i*f + j``."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // f, f, w // f, f, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // f, w // f, c * f * f)


def depth_to_space(x: jax.Array, f: int = 2) -> jax.Array:
    """Inverse of :func:`space_to_depth` (pixel_shuffle)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (f * f), f, f)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * f, w * f, c // (f * f))


def group_mean(x: jax.Array, out_channels: int) -> jax.Array:
    """Average consecutive channel groups down to ``out_channels``."""
    return x.reshape(*x.shape[:-1], out_channels, x.shape[-1] // out_channels).mean(-1)


class ResBlock(nnx.Module):
    """conv3×3 → act → conv3×3 (no bias) → channel RMS norm, plus the input."""

    def __init__(self, channels: int, act: str, *, dtype, param_dtype, rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv1 = Conv(channels, channels, (3, 3), padding=1, **kw)
        self.conv2 = Conv(channels, channels, (3, 3), padding=1, use_bias=False, **kw)
        self.norm = ChannelRMSNorm(channels, param_dtype=param_dtype)
        self.act = act

    def __call__(self, x, n=None):
        h = self.conv2(mask_time(_ACTS[self.act](self.conv1(mask_time(x, n, 2))), n, 2))
        return self.norm(h) + x


class MultiscaleProjection(nnx.Module):
    """Depthwise k×k conv then a grouped 1×1 conv (``3 * heads`` groups), both without bias."""

    def __init__(self, channels: int, heads: int, kernel_size: int, *, dtype, param_dtype, rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs, "use_bias": False}
        self.proj_in = Conv(
            channels, channels, (kernel_size, kernel_size), padding=kernel_size // 2, groups=channels, **kw
        )
        self.proj_out = Conv(channels, channels, (1, 1), groups=3 * heads, **kw)

    def __call__(self, x, n=None):
        return self.proj_out(self.proj_in(mask_time(x, n, 2)))


class MultiscaleLinearAttention(nnx.Module):
    """SANA / EfficientViT multiscale ReLU linear attention with a residual connection."""

    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...], *, dtype, param_dtype, rngs):
        heads = channels // head_dim
        inner = heads * head_dim
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.to_q = Dense(channels, inner, use_bias=False, axes=("embed", "heads"), **kw)
        self.to_k = Dense(channels, inner, use_bias=False, axes=("embed", "heads"), **kw)
        self.to_v = Dense(channels, inner, use_bias=False, axes=("embed", "heads"), **kw)
        self.to_qkv_multiscale = nnx.List([MultiscaleProjection(3 * inner, heads, k, **kw) for k in scales])
        self.to_out = Dense(
            inner * (1 + len(scales)), channels, use_bias=False, axes=("heads", "embed"), **kw
        )
        self.norm_out = ChannelRMSNorm(channels, param_dtype=param_dtype)
        self.head_dim = head_dim
        self.dtype = dtype

    def _qkv(self, x, linear: bool, n=None):
        """Queries, keys (ReLU'd; zero past ``n``) and values ``[B, H*W, G, head_dim]``."""
        b, h, w, _ = x.shape
        qkv = jnp.concatenate([self.to_q(x), self.to_k(x), self.to_v(x)], axis=-1)
        qkv = jnp.concatenate([qkv] + [proj(qkv, n) for proj in self.to_qkv_multiscale], axis=-1)
        if linear:
            qkv = qkv.astype(jnp.float32)
        qkv = qkv.reshape(b, h * w, -1, 3, self.head_dim)  # [B, N, G, (q|k|v), d]
        k = jax.nn.relu(qkv[..., 1, :])
        if n is not None:
            k = k * jnp.tile(jnp.arange(w)[None, :] < n[:, None], h)[:, :, None, None].astype(k.dtype)
        return jax.nn.relu(qkv[..., 0, :]), k, qkv[..., 2, :]

    def stats(self, x, mask, n=None):
        """The attention's sequence sums ``(sum k⊗v [B, G, d, d], sum k [B, G, d])`` over frames where
        ``mask [W]`` is set and before ``n`` (so windows can accumulate them exactly)."""
        h = x.shape[1]
        _, k, v = self._qkv(x, True, n)
        k = k * jnp.tile(mask.astype(k.dtype), h)[None, :, None, None]
        hp = jax.lax.Precision.HIGHEST
        return jnp.einsum("bngd,bnge->bgde", k, v, precision=hp), k.sum(axis=1)

    def __call__(self, x, stats=None, n=None):
        """``stats`` (from :meth:`stats`, summed over the whole sequence) replaces this input's own sums."""
        b, h, w, _ = x.shape
        linear = stats is not None or n is not None or h * w > self.head_dim
        q, k, v = self._qkv(x, linear, n)
        hp = jax.lax.Precision.HIGHEST
        if linear:
            if stats is None:
                stats = (jnp.einsum("bngd,bnge->bgde", k, v, precision=hp), k.sum(axis=1))
            kv, ksum = stats
            num = jnp.einsum("bngd,bgde->bnge", q, kv, precision=hp)
            den = jnp.einsum("bngd,bgd->bng", q, ksum, precision=hp)[..., None]
            out = (num / (den + _ATTN_EPS)).astype(self.dtype)
        else:
            scores = jnp.einsum("bmgd,bngd->bgmn", k, q, precision=hp).astype(jnp.float32)
            scores = scores / (scores.sum(axis=2, keepdims=True) + _ATTN_EPS)
            out = jnp.einsum("bmge,bgmn->bnge", v, scores.astype(v.dtype), precision=hp)
        out = out.reshape(b, h, w, -1)
        return self.norm_out(self.to_out(out)) + x


class GLUMBConv(nnx.Module):
    """1×1 conv → SiLU → depthwise 3×3 → gated SiLU → 1×1 → channel RMS norm, plus the input."""

    def __init__(self, channels: int, expand: int = 4, *, dtype, param_dtype, rngs):
        hidden = expand * channels
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv_inverted = Conv(channels, 2 * hidden, (1, 1), axes=("conv_in", "mlp"), **kw)
        self.conv_depth = Conv(
            2 * hidden, 2 * hidden, (3, 3), padding=1, groups=2 * hidden, axes=(None, "mlp"), **kw
        )
        self.conv_point = Conv(hidden, channels, (1, 1), use_bias=False, axes=("mlp", "conv_out"), **kw)
        self.norm = ChannelRMSNorm(channels, param_dtype=param_dtype)

    def __call__(self, x, n=None):
        h = self.conv_depth(mask_time(jax.nn.silu(self.conv_inverted(x)), n, 2))
        value, gate = jnp.split(h, 2, axis=-1)
        return self.norm(self.conv_point(value * jax.nn.silu(gate))) + x


class EfficientViTBlock(nnx.Module):
    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...], *, dtype, param_dtype, rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.attn = MultiscaleLinearAttention(channels, head_dim, scales, **kw)
        self.conv_out = GLUMBConv(channels, **kw)

    def __call__(self, x, stats=None, n=None):
        return self.conv_out(self.attn(x, stats, n), n)


class DownBlock(nnx.Module):
    """Stride-2 conv (or conv + space-to-depth) plus the averaged space-to-depth shortcut."""

    def __init__(self, cin: int, cout: int, pixel_unshuffle: bool, *, dtype, param_dtype, rngs):
        self.pixel_unshuffle = pixel_unshuffle
        conv_out = cout // 4 if pixel_unshuffle else cout
        self.conv = Conv(
            cin,
            conv_out,
            (3, 3),
            strides=1 if pixel_unshuffle else 2,
            padding=1,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.cout = cout

    def __call__(self, x):
        y = self.conv(x)
        if self.pixel_unshuffle:
            y = space_to_depth(y)
        return y + group_mean(space_to_depth(x), self.cout)


class UpBlock(nnx.Module):
    """Nearest ×2 upsample + conv (or conv + depth-to-space) plus the repeated depth-to-space shortcut."""

    def __init__(self, cin: int, cout: int, interpolate: bool, *, dtype, param_dtype, rngs):
        self.interpolate = interpolate
        self.conv = Conv(
            cin,
            cout if interpolate else 4 * cout,
            (3, 3),
            padding=1,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.repeats = 4 * cout // cin

    def __call__(self, x, n=None):
        """``n``: lengths at the input's resolution."""
        xm = mask_time(x, n, 2)
        if self.interpolate:
            y = self.conv(jnp.repeat(jnp.repeat(xm, 2, axis=1), 2, axis=2))
        else:
            y = depth_to_space(self.conv(xm))
        return y + depth_to_space(jnp.repeat(x, self.repeats, axis=-1))


def _block(kind: str, channels: int, cfg: DCAEConfig, act: str, scales, kw):
    if kind == "ResBlock":
        return ResBlock(channels, act, **kw)
    return EfficientViTBlock(channels, cfg.attention_head_dim, tuple(scales), **kw)


class Encoder(nnx.Module):
    """Mels ``[B, H, W, in_channels]`` → latents ``[B, H/8, W/8, latent_channels]`` (channels-last)."""

    def __init__(self, cfg: DCAEConfig, *, rngs: nnx.Rngs | None):
        kw = {"dtype": resolve_dtype(cfg.dtype), "param_dtype": resolve_dtype(cfg.param_dtype), "rngs": rngs}
        chans = cfg.encoder_block_out_channels
        self.conv_in = Conv(cfg.in_channels, chans[0], (3, 3), padding=1, **kw)
        blocks = []
        for i, (c, n) in enumerate(zip(chans, cfg.encoder_layers_per_block)):
            layers = [
                _block(cfg.encoder_block_types[i], c, cfg, "silu", cfg.encoder_qkv_multiscales[i], kw)
                for _ in range(n)
            ]
            if i < len(chans) - 1 and n > 0:
                layers.append(
                    DownBlock(c, chans[i + 1], cfg.downsample_block_type == "pixel_unshuffle", **kw)
                )
            blocks.append(nnx.List(layers))
        self.down_blocks = nnx.List(blocks)
        self.conv_out = Conv(chans[-1], cfg.latent_channels, (3, 3), padding=1, **kw)
        self.out_shortcut = cfg.encoder_out_shortcut
        self.latent_channels = cfg.latent_channels

    def __call__(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            for layer in block:
                x = layer(x)
        y = self.conv_out(x)
        return y + group_mean(x, self.latent_channels) if self.out_shortcut else y


class Decoder(nnx.Module):
    """Latents ``[B, h, w, latent_channels]`` → mels ``[B, 8h, 8w, in_channels]`` (channels-last).

    :meth:`global_stage` runs the input conv and the lowest-resolution level, whose
    attention sums run over the whole sequence (they can be supplied from outside,
    which is what exact windowed decoding uses); :meth:`local_stage` runs the
    up-sampling levels and the output head, all convolutional with a bounded
    receptive field.
    """

    def __init__(self, cfg: DCAEConfig, *, rngs: nnx.Rngs | None):
        kw = {"dtype": resolve_dtype(cfg.dtype), "param_dtype": resolve_dtype(cfg.param_dtype), "rngs": rngs}
        chans = cfg.decoder_block_out_channels
        n_levels = len(chans)
        self.conv_in = Conv(cfg.latent_channels, chans[-1], (3, 3), padding=1, **kw)
        blocks = []
        for i, (c, n) in enumerate(zip(chans, cfg.decoder_layers_per_block)):
            layers = []
            if i < n_levels - 1 and n > 0:
                layers.append(UpBlock(chans[i + 1], c, cfg.upsample_block_type == "interpolate", **kw))
            layers += [
                _block(
                    cfg.decoder_block_types[i],
                    c,
                    cfg,
                    cfg.decoder_acts[i],
                    cfg.decoder_qkv_multiscales[i],
                    kw,
                )
                for _ in range(n)
            ]
            blocks.append(nnx.List(layers))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = ChannelRMSNorm(chans[0], param_dtype=kw["param_dtype"])
        self.conv_out = Conv(chans[0], cfg.in_channels, (3, 3), padding=1, **kw)
        self.in_shortcut = cfg.decoder_in_shortcut
        self.repeats = chans[-1] // cfg.latent_channels
        self.conv_act = cfg.decoder_conv_act_fn

    def in_stage(self, z, n=None):
        """Input conv plus the channel-repeat shortcut."""
        x = self.conv_in(mask_time(z, n, 2))
        if self.in_shortcut:
            x = x + jnp.repeat(z.astype(x.dtype), self.repeats, axis=-1)
        return x

    def global_stage(self, z, stats=None, stats_of: int | None = None, mask=None, n=None):
        """:meth:`in_stage` and the lowest level (``n``: the items' lengths in latent frames).

        ``stats[i]`` replaces the sequence sums of the level's ``i``-th attention block.
        With ``stats_of = i``, the sums of attention block ``i`` over the frames where
        ``mask [W]`` is set are returned instead of the features.
        """
        x = self.in_stage(z, n)
        i = 0
        for layer in self.up_blocks[-1]:
            if isinstance(layer, EfficientViTBlock):
                if i == stats_of:
                    return layer.attn.stats(x, mask, n)
                x = layer(x, None if stats is None else stats[i], n)
                i += 1
            else:
                x = layer(x, n)
        return x

    @property
    def num_global_attention(self) -> int:
        return sum(isinstance(layer, EfficientViTBlock) for layer in self.up_blocks[-1])

    def local_stage(self, x, n=None):
        """The up-sampling levels and the head (``n``: lengths in latent frames)."""
        for i in range(len(self.up_blocks) - 2, -1, -1):
            for layer in self.up_blocks[i]:
                x = layer(x, n)
                if isinstance(layer, UpBlock) and n is not None:
                    n = 2 * n
        return self.conv_out(mask_time(_ACTS[self.conv_act](self.norm_out(x)), n, 2))

    def __call__(self, z, n=None):
        return self.local_stage(self.global_stage(z, n=n), n)


class DCAE(nnx.Module):
    """``AutoencoderDC``: ``.encoder`` and ``.decoder``; public methods use ``[B, C, H, W]``."""

    def __init__(self, cfg: DCAEConfig, *, rngs: nnx.Rngs | None):
        self.config = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)

    def encode(self, mel: jax.Array) -> jax.Array:
        """``mel [B, in_channels, H, W]`` → latent ``[B, latent_channels, H/8, W/8]``."""
        f = self.config.downsample_factor
        if mel.ndim != 4 or mel.shape[2] % f or mel.shape[3] % f:
            raise ValueError(f"mel must be [B, C, H, W] with H and W multiples of {f}, got {mel.shape}")
        return self.encoder(mel.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)

    def decode(self, latent: jax.Array) -> jax.Array:
        """``latent [B, latent_channels, h, w]`` → mel ``[B, in_channels, 8h, 8w]``."""
        if latent.ndim != 4:
            raise ValueError(f"latent must be [B, C, H, W], got {latent.shape}")
        return self.decoder(latent.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)

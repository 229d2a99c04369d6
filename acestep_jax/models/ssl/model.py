"""HuBERT-family speech/music encoders (HuBERT, mHuBERT-147, MERT) in Flax NNX.

Raw audio ``[B, samples]`` → a stack of strided 1-D convolutions (group norm on the
first layer only, or layer norm on every layer) → feature projection (optional layer
norm, then a linear map) → grouped positional convolution (weight norm folded into
the kernel at conversion, or the batch-norm variant) added to its input → transformer
encoder. The encoder is post-LN (HuBERT base: layer norm after the positional
embedding and after each residual) or pre-LN ("stable layer norm": norm before each
sub-block, one final norm). No attention mask: padded samples are processed as
signal, as the reference trainer runs these models. Layers are stacked and run with
``lax.scan``; every hidden state can be returned.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from acestep_jax.models.ssl.config import HubertConfig
from acestep_jax.nn import Conv, Dense, GroupNorm, LayerNorm, make_param, resolve_dtype, stacked
from acestep_jax.sharding import constrain

_ACT = ("batch", "length", "act_embed")

ACTIVATION_FNS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@struct.dataclass
class HubertOutput:
    """Encoder outputs. ``hidden_states`` is ``None`` unless asked for."""

    last_hidden_state: jax.Array  # [B, frames, hidden]
    extract_features: jax.Array  # [B, frames, conv_dim[-1]], the convolution stack's output
    hidden_states: jax.Array | None = None  # [num_layers + 1, B, frames, hidden]: each layer's input, then the output


class FeatureConvLayer(nnx.Module):
    """Strided convolution, optional channel norm (``"group"``: per-channel over time; ``"layer"``), activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, norm: str | None, cfg: HubertConfig,
                 dtype, param_dtype, rngs):
        self.conv = Conv(cin, cout, (kernel,), strides=stride, use_bias=cfg.conv_bias, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
        if norm == "group":
            self.norm = GroupNorm(cout, cout, eps=1e-5, param_dtype=param_dtype, rngs=rngs)
        elif norm == "layer":
            self.norm = LayerNorm(cout, eps=1e-5, param_dtype=param_dtype, rngs=rngs)
        else:
            self.norm = None
        self.act = ACTIVATION_FNS[cfg.feat_extract_activation]

    def __call__(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x)


class FeatureEncoder(nnx.Module):
    """The strided convolution stack: ``[B, samples]`` → ``[B, frames, conv_dim[-1]]``."""

    def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
        layers, cin = [], 1
        for i, (cout, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
            norm = cfg.feat_extract_norm if (cfg.feat_extract_norm == "layer" or i == 0) else None
            layers.append(FeatureConvLayer(cin, cout, k, s, norm=norm, cfg=cfg, dtype=dtype,
                                           param_dtype=param_dtype, rngs=rngs))
            cin = cout
        self.conv_layers = nnx.List(layers)

    def __call__(self, audio):
        x = audio[..., None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nnx.Module):
    """Optional layer norm of the convolution features, then a linear map to the encoder width."""

    def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
        width = cfg.conv_dim[-1]
        self.layer_norm = (LayerNorm(width, eps=cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
                           if cfg.feat_proj_layer_norm else None)
        self.projection = Dense(width, cfg.hidden_size, axes=("conv_out", "embed"), dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.projection(x)


class BatchNorm(nnx.Module):
    """Inference-mode batch norm over the channel axis with stored running statistics."""

    def __init__(self, features: int, *, eps: float = 1e-5, param_dtype, rngs):
        ones = lambda key, shape, dt: jnp.ones(shape, dt)
        zeros = lambda key, shape, dt: jnp.zeros(shape, dt)
        self.scale = make_param(rngs, ones, (features,), param_dtype, ("norm",))
        self.bias = make_param(rngs, zeros, (features,), param_dtype, ("norm",))
        self.mean = nnx.BatchStat(jnp.zeros((features,), param_dtype), out_sharding=("norm",), eager_sharding=False)
        self.var = nnx.BatchStat(jnp.ones((features,), param_dtype), out_sharding=("norm",), eager_sharding=False)
        self.eps = eps

    def __call__(self, x):
        f32 = lambda v: v[...].astype(jnp.float32)
        y = (x.astype(jnp.float32) - f32(self.mean)) * jax.lax.rsqrt(f32(self.var) + self.eps)
        return (y * f32(self.scale) + f32(self.bias)).astype(x.dtype)


class PositionalConv(nnx.Module):
    """Grouped "same" convolution over time (an even kernel drops its last output frame), activation."""

    def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
        k = cfg.num_conv_pos_embeddings
        self.batch_norm = (BatchNorm(cfg.hidden_size, param_dtype=param_dtype, rngs=rngs)
                           if cfg.conv_pos_batch_norm else None)
        self.conv = Conv(cfg.hidden_size, cfg.hidden_size, (k,), padding=k // 2,
                         groups=cfg.num_conv_pos_embedding_groups, axes=(None, "conv_out"), dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
        self.trim = 1 if k % 2 == 0 else 0
        self.act = ACTIVATION_FNS[cfg.feat_extract_activation]

    def __call__(self, x):
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        y = self.conv(x)
        if self.trim:
            y = y[:, : y.shape[1] - self.trim]
        return self.act(y)


class Attention(nnx.Module):
    """Bidirectional multi-head self-attention (scores and softmax in float32)."""

    def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
        d = cfg.hidden_size
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.q_proj = Dense(d, d, axes=("embed", "heads"), **kw)
        self.k_proj = Dense(d, d, axes=("embed", "heads"), **kw)
        self.v_proj = Dense(d, d, axes=("embed", "heads"), **kw)
        self.out_proj = Dense(d, d, axes=("heads", "embed"), **kw)
        self.num_heads, self.head_dim, self.dtype = cfg.num_attention_heads, cfg.head_dim, dtype

    def __call__(self, x):
        b, n, _ = x.shape
        heads = lambda t: t.reshape(b, n, self.num_heads, self.head_dim)
        q = heads(self.q_proj(x) * jnp.asarray(self.head_dim**-0.5, self.dtype))
        k, v = heads(self.k_proj(x)), heads(self.v_proj(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, -1)
        return self.out_proj(out)


class FeedForward(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.intermediate_dense = Dense(cfg.hidden_size, cfg.intermediate_size, axes=("embed", "mlp"), **kw)
        self.output_dense = Dense(cfg.intermediate_size, cfg.hidden_size, axes=("mlp", "embed"), **kw)
        self.act = ACTIVATION_FNS[cfg.hidden_act]

    def __call__(self, x):
        return self.output_dense(self.act(self.intermediate_dense(x)))


class EncoderLayer(nnx.Module):
    """Attention and feed-forward blocks with residuals; post-LN or pre-LN (``do_stable_layer_norm``)."""

    def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        norm = {"eps": cfg.layer_norm_eps, "param_dtype": param_dtype, "rngs": rngs}
        self.attention = Attention(cfg, **kw)
        self.layer_norm = LayerNorm(cfg.hidden_size, **norm)
        self.feed_forward = FeedForward(cfg, **kw)
        self.final_layer_norm = LayerNorm(cfg.hidden_size, **norm)
        self.pre_ln = cfg.do_stable_layer_norm

    def __call__(self, x):
        if self.pre_ln:
            x = x + self.attention(self.layer_norm(x)).astype(x.dtype)
            x = x + self.feed_forward(self.final_layer_norm(x)).astype(x.dtype)
        else:
            x = self.layer_norm(x + self.attention(x).astype(x.dtype))
            x = self.final_layer_norm(x + self.feed_forward(x).astype(x.dtype))
        return constrain(x, _ACT)


class Encoder(nnx.Module):
    """Positional convolution, then the stacked layers (scanned), with the layout's layer norm."""

    def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
        self.pos_conv_embed = PositionalConv(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)

        self.layers = stacked(lambda r: EncoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r), cfg.num_hidden_layers, rngs)
        self.pre_ln = cfg.do_stable_layer_norm

    def __call__(self, x, output_hidden_states: bool):
        x = x + self.pos_conv_embed(x).astype(x.dtype)
        if not self.pre_ln:
            x = self.layer_norm(x)
        x = constrain(x, _ACT)
        graphdef, state = nnx.split(self.layers)

        def body(h, layer_state):
            out = nnx.merge(graphdef, layer_state)(h)
            return out, (h if output_hidden_states else None)

        x, inputs = jax.lax.scan(body, x, state)
        if self.pre_ln:
            x = self.layer_norm(x)
        hidden = jnp.concatenate([inputs, x[None]]) if output_hidden_states else None
        return x, hidden


class HubertModel(nnx.Module):
    """``HubertModel`` / ``MERTModel``: audio ``[B, samples]`` → :class:`HubertOutput`."""

    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs | None):
        self.cfg = cfg
        dtype, param_dtype = resolve_dtype(cfg.dtype), resolve_dtype(cfg.param_dtype)
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.feature_extractor = FeatureEncoder(cfg, **kw)
        self.feature_projection = FeatureProjection(cfg, **kw)
        self.encoder = Encoder(cfg, **kw)

    def __call__(self, input_values, *, output_hidden_states: bool = False) -> HubertOutput:
        input_values = jnp.asarray(input_values)
        if input_values.ndim != 2:
            raise ValueError(f"input_values must be [batch, samples], got shape {input_values.shape}")
        if self.cfg.frames(input_values.shape[1]) < 1:
            raise ValueError(f"{input_values.shape[1]} samples are too few for one frame of this encoder")
        features = self.feature_extractor(input_values)
        hidden = constrain(self.feature_projection(features), _ACT)
        last, hidden_states = self.encoder(hidden, output_hidden_states)
        return HubertOutput(last_hidden_state=last, extract_features=features, hidden_states=hidden_states)

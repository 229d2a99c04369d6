"""The ACE-Step transformer (``ACEStepTransformer2DModel``) in Flax NNX.

``encode`` turns speaker, prompt and lyric conditions into one condition sequence;
``decode`` predicts the flow-matching velocity for latents ``[B, 8, 16, T]`` at a
timestep. The 24 blocks are stacked and run with ``lax.scan`` (one compiled
block), optionally rematerialised, or held one module per block (``unroll_blocks``, GPUs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from acestep_jax.models.transformer.attention import CrossAttention, LinearSelfAttention
from acestep_jax.models.transformer.config import TransformerConfig
from acestep_jax.models.transformer.embeddings import (
    FinalLayer,
    PatchEmbed,
    TimestepEmbedder,
    rope_at,
    rope_tables,
)
from acestep_jax.models.transformer.lyric_encoder import LyricEncoder
from acestep_jax.nn import (
    Dense,
    Embed,
    abstract_model,
    make_param,
    resolve_dtype,
    rms_norm,
    stacked,
)
from acestep_jax.sharding import constrain

_ACT = ("batch", "length", "act_embed")
BLOCK_OUTPUTS = ("self_attention", "cross_attention", "feed_forward")  # checkpoint names in a block
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "outputs": jax.checkpoint_policies.save_only_these_names(*BLOCK_OUTPUTS),
}


class GLUMBConv(nnx.Module):
    """1×1 conv → SiLU → depthwise 3-tap conv → SiLU-gated product → 1×1 conv.

    The reference's single ``2*hidden`` expansion is held as separate value and
    gate halves so that tensor parallelism never splits across the gate boundary.
    """

    def __init__(self, dim: int, hidden: int, *, dtype, param_dtype, rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.in_value = Dense(dim, hidden, axes=("embed", "mlp"), **kw)
        self.in_gate = Dense(dim, hidden, axes=("embed", "mlp"), **kw)
        bound = 1 / 3**0.5
        init = lambda key, shape, dt: jax.random.uniform(key, shape, dt, -bound, bound)
        # the time convolution runs in float32, so its taps and biases (a few kB) are kept in it:
        # converting them at every call is a kernel of its own on some GPUs (A100)
        self.dw_value = make_param(rngs, init, (3, hidden), jnp.float32, (None, "mlp"))
        self.dw_gate = make_param(rngs, init, (3, hidden), jnp.float32, (None, "mlp"))
        self.dw_value_bias = make_param(rngs, init, (hidden,), jnp.float32, ("mlp",))
        self.dw_gate_bias = make_param(rngs, init, (hidden,), jnp.float32, ("mlp",))
        self.out = Dense(hidden, dim, use_bias=False, axes=("mlp", "embed"), **kw)
        self.dtype = dtype

    def _depthwise(self, x, w, b):
        """The 3-tap time convolution of ``silu(x)``. SiLU is applied to each shifted view (it
        is 0 at the zero padding), so XLA fuses it here rather than writing ``silu(x)`` out."""
        w, b = w[...], b[...]
        padded = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))
        taps = (nnx.silu(padded[:, :-2]), nnx.silu(padded[:, 1:-1]), nnx.silu(padded[:, 2:]))
        return (taps[0] * w[0] + taps[1] * w[1] + taps[2] * w[2] + b).astype(self.dtype)

    def __call__(self, x, frame_mask=None):
        """``frame_mask [B, T]`` (optional) zeroes padded frames before the time convolution."""
        value, gate = self.in_value(x), self.in_gate(x)
        if frame_mask is not None:  # silu(y) * m == silu(y * m) for a 0/1 mask
            m = frame_mask[..., None].astype(value.dtype)
            value, gate = value * m, gate * m
        value = self._depthwise(value, self.dw_value, self.dw_value_bias)
        gate = self._depthwise(gate, self.dw_gate, self.dw_gate_bias)
        return self.out(value * nnx.silu(gate))


class TransformerBlock(nnx.Module):
    """Sana block with adaLN-single: linear self-attention, cross-attention, GLUMBConv."""

    def __init__(self, cfg: TransformerConfig, *, dtype, param_dtype, rngs):
        d, h, hd = cfg.inner_dim, cfg.num_attention_heads, cfg.attention_head_dim
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.attn = LinearSelfAttention(d, h, hd, head_major=cfg.head_major_attention, **kw)
        self.cross_attn = CrossAttention(d, h, hd, impl=cfg.attention_impl, **kw)
        self.ff = GLUMBConv(d, cfg.ff_hidden, **kw)
        init = lambda key, shape, dt: jax.random.normal(key, shape, dt) / d**0.5
        self.scale_shift_table = make_param(rngs, init, (6, d), param_dtype, (None, "embed"))
        self.dtype = dtype

    def __call__(self, x, temb, mask, context, context_mask, rope, context_rope, q_scale, isolate=False):
        """Each part runs in a ``jax.named_scope`` (profiles) and names its output with
        ``checkpoint_name`` (:data:`BLOCK_OUTPUTS`, saved by ``remat="outputs"``)."""
        b = x.shape[0]
        mod = self.scale_shift_table[...][None].astype(self.dtype) + temb.reshape(b, 6, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=1)
        with jax.named_scope("self_attention"):
            h = rms_norm(x, 1e-6).astype(self.dtype) * (1 + scale_msa) + shift_msa
            x = x + gate_msa * checkpoint_name(self.attn(h, mask, rope, q_scale), "self_attention")
        with jax.named_scope("cross_attention"):
            attended = self.cross_attn(x, mask, context, context_mask, rope, context_rope, q_scale)
            x = x + checkpoint_name(attended, "cross_attention")
        with jax.named_scope("feed_forward"):
            h = rms_norm(x, 1e-6).astype(self.dtype) * (1 + scale_mlp) + shift_mlp
            x = x + gate_mlp * checkpoint_name(self.ff(h, mask if isolate else None), "feed_forward")
        return constrain(x, _ACT)


def unstack_blocks(model: ACEStepTransformer) -> ACEStepTransformer:
    """``model`` with one module per block (``cfg.unroll_blocks``): each stacked block weight is
    cut into one array per block, and the stacked array is freed as soon as it is cut, so
    ``model`` is consumed. GPU loading uses it: a block weight sliced out of its stack inside
    the sampling loop's ``while`` would be copied at every step."""
    if model.cfg.unroll_blocks:
        return model
    cfg = dataclasses.replace(model.cfg, unroll_blocks=True)
    graphdef, abstract = nnx.split(abstract_model(lambda r: ACEStepTransformer(cfg, rngs=r)))
    stacked = dict(nnx.to_flat_state(nnx.state(model)))
    cut: dict[tuple, list[jax.Array]] = {}
    flat = []
    for path, var in nnx.to_flat_state(abstract):
        if path[0] != "blocks":
            flat.append((path, var.replace(stacked[path][...])))
            continue
        source = ("blocks", *path[2:])
        if source not in cut:
            whole = stacked[source][...]
            cut[source] = jax.block_until_ready([whole[i] for i in range(cfg.num_layers)])
            if isinstance(whole, jax.Array):
                whole.delete()
        flat.append((path, var.replace(cut[source][path[1]])))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def stack_blocks(model: ACEStepTransformer) -> ACEStepTransformer:
    """``model`` with its blocks stacked, the layout checkpoints hold (the inverse of
    :func:`unstack_blocks`; ``model`` is left as it is, so the blocks' weights are held twice
    until it is dropped; LoRA adapters are not carried). Saving and exporting use it."""
    if not model.cfg.unroll_blocks:
        return model
    cfg = dataclasses.replace(model.cfg, unroll_blocks=False)
    graphdef, abstract = nnx.split(abstract_model(lambda r: ACEStepTransformer(cfg, rngs=r)))
    held = dict(nnx.to_flat_state(nnx.state(model)))
    flat = []
    for path, var in nnx.to_flat_state(abstract):
        if path[0] != "blocks":
            flat.append((path, var.replace(held[path][...])))
            continue
        blocks = [held[("blocks", i, *path[1:])][...] for i in range(cfg.num_layers)]
        flat.append((path, var.replace(jnp.stack(blocks))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def layer_scales(num_layers: int, layers: Sequence[int] = (), tau: float = 1.0) -> jax.Array:
    """Per-layer query scales: ``tau`` at ``layers``, 1 elsewhere (ERG)."""
    scales = jnp.ones((num_layers,), jnp.float32)
    if len(layers):
        scales = scales.at[jnp.asarray(list(layers))].set(tau)
    return scales


class Context(NamedTuple):
    """The condition sequence ``[speaker; prompt; lyrics]`` that cross-attention reads:
    ``states [B, N, D]``, ``mask [B, N]`` and rotary ``positions [B, N]`` (int32)."""

    states: jax.Array
    mask: jax.Array
    positions: jax.Array


def context_positions(text_mask: jax.Array, lyric_length: int, layout: str = "item") -> jax.Array:
    """Rotary positions ``[B, 1 + Lt + Ll]`` of ``[speaker; prompt; lyrics]``.

    The speaker is at 0 and prompt row ``i`` at ``1 + i``; lyric row ``j`` is at
    ``1 + Lp + j`` where ``Lp`` is the item's own prompt length (``layout="item"``) or the
    batch's longest (``"batch"``), never the padded width, so bucket padding changes no
    valid token's position. Padded prompt rows are masked; their positions do not matter.
    """
    b, lt = text_mask.shape
    prompt = jnp.sum(text_mask.astype(jnp.int32), axis=1)
    if layout == "batch":
        prompt = jnp.broadcast_to(jnp.max(prompt), (b,))
    speaker = jnp.zeros((b, 1), jnp.int32)
    text = jnp.broadcast_to(1 + jnp.arange(lt, dtype=jnp.int32), (b, lt))
    lyrics = 1 + prompt[:, None] + jnp.arange(lyric_length, dtype=jnp.int32)
    return jnp.concatenate([speaker, text, lyrics], axis=1)


class ACEStepTransformer(nnx.Module):
    """Flow-matching transformer of ACE-Step v1 (see :class:`TransformerConfig`)."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs | None):
        self.cfg = cfg
        dtype, param_dtype = resolve_dtype(cfg.dtype), resolve_dtype(cfg.param_dtype)
        d = cfg.inner_dim
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dtype = dtype

        def block(r):
            return TransformerBlock(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r)

        if cfg.unroll_blocks:  # one module per block (see unstack_blocks)
            self.blocks = nnx.List([block(rngs) for _ in range(cfg.num_layers)])
        else:
            self.blocks = stacked(block, cfg.num_layers, rngs)
        self.timestep_embedder = TimestepEmbedder(d, **kw)
        self.t_block = Dense(d, 6 * d, axes=("embed", "mlp"), **kw)
        self.speaker_embedder = Dense(cfg.speaker_embedding_dim, d, axes=(None, "embed"), **kw)
        self.genre_embedder = Dense(cfg.text_embedding_dim, d, axes=(None, "embed"), **kw)
        self.lyric_embs = Embed(cfg.lyric_encoder_vocab_size, cfg.lyric_hidden_size, **kw)
        self.lyric_encoder = LyricEncoder(cfg.lyric_hidden_size, cfg.lyric_encoder, **kw)
        self.lyric_proj = Dense(cfg.lyric_encoder.output_size, d, axes=(None, "embed"), **kw)
        self.projectors = nnx.List([
            nnx.Sequential(
                Dense(d, 2 * d, axes=("embed", "mlp"), **kw),
                nnx.silu,
                Dense(2 * d, 2 * d, axes=("mlp", None), **kw),
                nnx.silu,
                Dense(2 * d, dim, axes=("mlp", None), **kw),
            )
            for dim in cfg.ssl_latent_dims
        ])
        self.proj_in = PatchEmbed(cfg.in_channels, cfg.max_height, d, **kw)
        self.final_layer = FinalLayer(d, cfg.out_channels, cfg.max_height, **kw)

    # ------------------------------------------------------------------ conditions
    def encode_lyrics(self, lyric_token_idx, lyric_mask, lyric_query_scales=None, dropout_key=None):
        """Lyric ids ``[B, L]`` → projected lyric states ``[B, L, D]`` (``dropout_key``: the
        lyric encoder's training dropout, see :class:`LyricEncoder`)."""
        x = self.lyric_embs(lyric_token_idx)
        return self.lyric_proj(self.lyric_encoder(x, lyric_mask, lyric_query_scales, dropout_key=dropout_key))

    def encode(
        self,
        encoder_text_hidden_states,
        text_attention_mask,
        speaker_embeds,
        lyric_token_idx,
        lyric_mask,
        lyric_query_scales=None,
        *,
        dropout_key=None,
    ) -> Context:
        """Concatenate ``[speaker; prompt; lyrics]`` states, their mask and positions.

        Returns a :class:`Context` of ``1 + Lt + Ll`` rows, positioned by
        ``cfg.context_positions`` (:func:`context_positions`).
        ``lyric_query_scales [num_lyric_blocks]`` scales the lyric encoder's queries (ERG);
        ``dropout_key`` turns on the lyric encoder's training dropout.
        """
        b = encoder_text_hidden_states.shape[0]
        speaker = self.speaker_embedder(speaker_embeds)[:, None]
        text = self.genre_embedder(encoder_text_hidden_states)
        lyrics = self.encode_lyrics(lyric_token_idx, lyric_mask, lyric_query_scales, dropout_key)
        states = jnp.concatenate([speaker, text, lyrics], axis=1)
        mask = jnp.concatenate(
            [
                jnp.ones((b, 1), jnp.float32),
                text_attention_mask.astype(jnp.float32),
                lyric_mask.astype(jnp.float32),
            ],
            axis=1,
        )
        positions = context_positions(text_attention_mask, lyric_mask.shape[1], self.cfg.context_positions)
        return Context(states, mask, positions)

    # ------------------------------------------------------------------ denoiser
    def decode(
        self,
        hidden_states,
        attention_mask,
        encoder_hidden_states,
        encoder_hidden_mask,
        timestep,
        *,
        context_positions: jax.Array | None = None,
        output_length: int | None = None,
        query_scales=None,
        return_repa: bool = False,
        isolate_padding: bool = False,
    ):
        """Velocity for latents ``hidden_states [B, C, 16, T]`` at ``timestep [B]`` (0..1000).

        ``context_positions [B, N]`` are the condition rows' rotary positions
        (:attr:`Context.positions`); without them row ``n`` is at ``n``.
        ``query_scales [num_layers]`` multiplies the self- and cross-attention query
        projections of each block (ERG). With ``return_repa`` also returns the
        projector outputs ``[B, T, ssl_dim]`` at ``ssl_encoder_depths``.

        Frames where ``attention_mask`` is 0 still leak into valid ones in the reference
        (PatchEmbed's GroupNorm statistics, GLUMBConv's time convolution).
        ``isolate_padding`` removes that leak, so padding a batch to a bucketed length
        leaves the valid frames' output unchanged; it is a no-op with an all-ones mask.
        """
        cfg = self.cfg
        if output_length is None:
            output_length = hidden_states.shape[-1]
        embedded_t = self.timestep_embedder(timestep)
        temb = self.t_block(nnx.silu(embedded_t))
        frame_mask = attention_mask if isolate_padding else None
        x = constrain(self.proj_in(hidden_states.astype(self.dtype), frame_mask), _ACT)
        context = encoder_hidden_states.astype(self.dtype)
        context_mask = encoder_hidden_mask.astype(jnp.float32)
        if cfg.attention_impl == "cudnn" and context.shape[1] % 2:
            # cuDNN's attention backward (with a mask) takes even lengths: one more, masked, row
            context, context_mask = jnp.pad(context, ((0, 0), (0, 1), (0, 0))), jnp.pad(context_mask, ((0, 0), (0, 1)))
            if context_positions is not None:
                context_positions = jnp.pad(context_positions, ((0, 0), (0, 1)))
        rope = rope_tables(x.shape[1], cfg.attention_head_dim, cfg.rope_theta)
        if context_positions is None:
            context_rope = rope_tables(context.shape[1], cfg.attention_head_dim, cfg.rope_theta)
        else:
            context_rope = rope_at(context_positions, cfg.attention_head_dim, cfg.rope_theta)
        mask = attention_mask.astype(jnp.float32)
        if query_scales is None:
            query_scales = jnp.ones((cfg.num_layers,), jnp.float32)

        # REPA taps: block order, stable for equal depths (as the reference appends them)
        depths = sorted(cfg.ssl_encoder_depths) if return_repa else []
        query_scales = jnp.asarray(query_scales, jnp.float32)
        args = (temb, mask, context, context_mask, rope, context_rope)
        if cfg.unroll_blocks:
            taps = [x] * len(depths)
            for index, block in enumerate(self.blocks):
                x = block(x, *args, query_scales[index], isolate_padding)
                taps = [x if index == dep else tap for dep, tap in zip(depths, taps)]
        else:
            graphdef, state = nnx.split(self.blocks)

            def body(carry, xs):
                h, taps = carry
                block_state, scale, index = xs
                h = nnx.merge(graphdef, block_state)(h, *args, scale, isolate_padding)
                taps = tuple(jnp.where(index == dep, h, tap) for dep, tap in zip(depths, taps))
                return (h, taps), None

            if cfg.remat != "none":
                body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat])
            taps0 = tuple(jnp.zeros_like(x) for _ in depths)
            (x, taps), _ = jax.lax.scan(body, (x, taps0), (state, query_scales, jnp.arange(cfg.num_layers)))

        out = self.final_layer(x, embedded_t, output_length)
        if not return_repa:
            return out
        return out, [proj(tap) for proj, tap in zip(self.projectors, taps)]

    def __call__(
        self,
        hidden_states,
        attention_mask,
        encoder_text_hidden_states,
        text_attention_mask,
        speaker_embeds,
        lyric_token_idx,
        lyric_mask,
        timestep,
        *,
        return_repa: bool = False,
        isolate_padding: bool = False,
        dropout_key=None,
    ):
        """``encode`` then ``decode`` (the reference's ``forward``); ``dropout_key`` is the
        lyric encoder's training dropout, ``isolate_padding`` as in :meth:`decode`."""
        ctx = self.encode(
            encoder_text_hidden_states, text_attention_mask, speaker_embeds, lyric_token_idx, lyric_mask,
            dropout_key=dropout_key,
        )
        return self.decode(
            hidden_states, attention_mask, ctx.states, ctx.mask, timestep, context_positions=ctx.positions,
            return_repa=return_repa, isolate_padding=isolate_padding,
        )

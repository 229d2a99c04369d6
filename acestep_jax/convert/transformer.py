"""Reference ``ace_step_transformer`` state dict → :class:`ACEStepTransformer` parameters."""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

from acestep_jax.convert.core import (
    Rule,
    Transform,
    convert_into,
    export_tensors,
    identity,
    linear_t,
    open_source,
    rule,
    stack_of,
    stacked_rule,
)
from acestep_jax.models.transformer import (
    ACEStepTransformer,
    TransformerConfig,
    stack_blocks,
    unstack_blocks,
)
from acestep_jax.nn import abstract_model

STACKED_LINEAR = stack_of(linear_t)  # combine of every stacked nn.Linear weight (used by LoRA)

_pointwise = Transform(lambda w: w[:, :, 0].T, lambda k: k.T[:, :, None], name="pointwise")
"""1×1 conv weight ``[out, in, 1]`` ↔ kernel ``[in, out]``."""

_depthwise = Transform(lambda w: w[:, 0, :].T, lambda t: t.T[:, None, :], name="depthwise")
"""Depthwise conv weight ``[C, 1, 3]`` ↔ taps ``[3, C]``."""


def _conv_as_dense(*kernel_tail: int) -> Transform:
    """Conv weight ``[out, *kernel_tail]`` covering its whole input ↔ kernel ``[prod(tail), out]``."""
    return Transform(
        lambda w: w.reshape(w.shape[0], -1).T,
        lambda k: k.T.reshape(k.shape[1], *kernel_tail),
        name="conv_as_dense",
    )


def _half(t: Transform, first: bool) -> Transform:
    """Apply ``t`` to the first or second half (first axis) of a tensor."""

    def take(w):
        h = w.shape[0] // 2
        return t(w[:h] if first else w[h:])

    return Transform(take, t.inverse, name=f"{'first' if first else 'second'}_half({t.__name__})",
                     part=(0 if first else 1, 2))


def _dense(prefix: str, target: str, bias: bool = True) -> list[Rule]:
    rules = [rule(f"{target}/kernel", f"{prefix}.weight", linear_t)]
    if bias:
        rules.append(rule(f"{target}/bias", f"{prefix}.bias"))
    return rules


def _stacked_dense(prefixes, target: str, bias: bool = True) -> list[Rule]:
    rules = [Rule(f"{target}/kernel", tuple(f"{p}.weight" for p in prefixes), STACKED_LINEAR)]
    if bias:
        rules.append(stacked_rule(f"{target}/bias", [f"{p}.bias" for p in prefixes]))
    return rules


def transformer_rules(cfg: TransformerConfig) -> list[Rule]:
    """Every parameter of the model, with the reference keys it comes from."""
    rules: list[Rule] = []
    blocks = [f"transformer_blocks.{i}" for i in range(cfg.num_layers)]
    per = lambda suffix: [f"{b}.{suffix}" for b in blocks]
    rules.append(stacked_rule("blocks/scale_shift_table", per("scale_shift_table")))
    for name in ("to_q", "to_k", "to_v"):
        rules += _stacked_dense([f"{b}.attn.{name}" for b in blocks], f"blocks/attn/{name}")
    rules += _stacked_dense([f"{b}.attn.to_out.0" for b in blocks], "blocks/attn/to_out")
    for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
        rules += _stacked_dense([f"{b}.cross_attn.{name}" for b in blocks], f"blocks/cross_attn/{name}")
    rules += _stacked_dense([f"{b}.cross_attn.to_out.0" for b in blocks], "blocks/cross_attn/to_out")
    for part, first in (("value", True), ("gate", False)):
        rules += [
            stacked_rule(f"blocks/ff/in_{part}/kernel", per("ff.inverted_conv.conv.weight"), _half(_pointwise, first)),
            stacked_rule(f"blocks/ff/in_{part}/bias", per("ff.inverted_conv.conv.bias"), _half(identity, first)),
            stacked_rule(f"blocks/ff/dw_{part}", per("ff.depth_conv.conv.weight"), _half(_depthwise, first)),
            stacked_rule(f"blocks/ff/dw_{part}_bias", per("ff.depth_conv.conv.bias"), _half(identity, first)),
        ]
    rules.append(stacked_rule("blocks/ff/out/kernel", per("ff.point_conv.conv.weight"), _pointwise))

    rules += _dense("timestep_embedder.linear_1", "timestep_embedder/linear_1")
    rules += _dense("timestep_embedder.linear_2", "timestep_embedder/linear_2")
    rules += _dense("t_block.1", "t_block")
    rules += _dense("speaker_embedder", "speaker_embedder")
    rules += _dense("genre_embedder", "genre_embedder")
    rules += _dense("lyric_proj", "lyric_proj")
    rules.append(rule("lyric_embs/embedding", "lyric_embs.weight"))

    enc = "lyric_encoder"
    rules += _dense(f"{enc}.embed.out.0", "lyric_encoder/embed")
    rules += [
        rule("lyric_encoder/embed_norm/scale", f"{enc}.embed.out.1.weight"),
        rule("lyric_encoder/embed_norm/bias", f"{enc}.embed.out.1.bias"),
        rule("lyric_encoder/after_norm/scale", f"{enc}.after_norm.weight"),
        rule("lyric_encoder/after_norm/bias", f"{enc}.after_norm.bias"),
    ]
    layers = [f"{enc}.encoders.{i}" for i in range(cfg.lyric_encoder.num_blocks)]
    for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
        rules += _stacked_dense([f"{l}.self_attn.{name}" for l in layers], f"lyric_encoder/layers/self_attn/{name}")
    rules += _stacked_dense([f"{l}.self_attn.linear_pos" for l in layers], "lyric_encoder/layers/self_attn/linear_pos", bias=False)
    for name in ("pos_bias_u", "pos_bias_v"):
        rules.append(stacked_rule(f"lyric_encoder/layers/self_attn/{name}", [f"{l}.self_attn.{name}" for l in layers]))
    for name in ("w_1", "w_2"):
        rules += _stacked_dense([f"{l}.feed_forward.{name}" for l in layers], f"lyric_encoder/layers/{name}")
    for name in ("norm_mha", "norm_ff"):
        rules.append(stacked_rule(f"lyric_encoder/layers/{name}/scale", [f"{l}.{name}.weight" for l in layers]))
        rules.append(stacked_rule(f"lyric_encoder/layers/{name}/bias", [f"{l}.{name}.bias" for l in layers]))

    for j in range(len(cfg.ssl_latent_dims)):
        for k in (0, 2, 4):
            rules += _dense(f"projectors.{j}.{k}", f"projectors/{j}/layers/{k}")

    rules += [
        rule("proj_in/conv_in/kernel", "proj_in.early_conv_layers.0.weight",
             _conv_as_dense(cfg.in_channels, cfg.max_height, 1)),
        rule("proj_in/conv_in/bias", "proj_in.early_conv_layers.0.bias"),
        rule("proj_in/norm/scale", "proj_in.early_conv_layers.1.weight"),
        rule("proj_in/norm/bias", "proj_in.early_conv_layers.1.bias"),
        rule("proj_in/conv_out/kernel", "proj_in.early_conv_layers.2.weight", _conv_as_dense(cfg.in_channels * 256, 1, 1)),
        rule("proj_in/conv_out/bias", "proj_in.early_conv_layers.2.bias"),
        rule("final_layer/scale_shift_table", "final_layer.scale_shift_table"),
    ]
    rules += _dense("final_layer.linear", "final_layer/linear")
    return rules


def load_transformer(source, cfg: TransformerConfig, *, progress: bool = False):
    """Build an :class:`ACEStepTransformer` from reference weights (a file, folder or source);
    converted stacked, then cut per block if ``cfg.unroll_blocks``."""
    stacked = dataclasses.replace(cfg, unroll_blocks=False)
    abstract = abstract_model(lambda r: ACEStepTransformer(stacked, rngs=r))
    model = convert_into(
        abstract, transformer_rules(stacked), open_source(source), what="ace_step_transformer", progress=progress
    )
    return unstack_blocks(model) if cfg.unroll_blocks else model


def export_transformer(model: ACEStepTransformer) -> dict[str, np.ndarray]:
    """The reference state dict (key → float array) of a model, e.g. after fine-tuning.

    Attached LoRA adapters are not included (see :func:`acestep_jax.lora.save_lora`).
    """
    model = stack_blocks(model)
    state = nnx.state(model, nnx.Not(nnx.LoRAParam))
    arrays = {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}
    return export_tensors(transformer_rules(model.cfg), arrays)

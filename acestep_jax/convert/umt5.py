"""Reference ``umt5-base`` (``UMT5EncoderModel``) state dict → :class:`UMT5Encoder` parameters."""

from __future__ import annotations

from acestep_jax.convert.checkpoint import Component
from acestep_jax.convert.core import (
    Rule,
    convert_into,
    linear_t,
    open_source,
    rule,
    stack_of,
    stacked_rule,
)
from acestep_jax.nn import abstract_model
from acestep_jax.text.umt5 import UMT5Config, UMT5Encoder

_STACKED_LINEAR = stack_of(linear_t)

EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")
"""The tied token embedding: a saved file holds either name or both."""


def umt5_rules(cfg: UMT5Config) -> list[Rule]:
    """Every parameter of the encoder, with the reference keys it comes from."""
    blocks = [f"encoder.block.{i}" for i in range(cfg.num_layers)]
    attn = lambda name: [f"{b}.layer.0.SelfAttention.{name}.weight" for b in blocks]
    ff = lambda name: [f"{b}.layer.1.DenseReluDense.{name}.weight" for b in blocks]
    rules = [
        Rule("embed_tokens/embedding", (EMBEDDING_KEYS,)),
        rule("final_norm/scale", "encoder.final_layer_norm.weight"),
        stacked_rule("layers/attn_norm/scale", [f"{b}.layer.0.layer_norm.weight" for b in blocks]),
        stacked_rule("layers/ff_norm/scale", [f"{b}.layer.1.layer_norm.weight" for b in blocks]),
        stacked_rule("layers/relative_attention_bias", attn("relative_attention_bias")),
    ]
    rules += [Rule(f"layers/{n}/kernel", tuple(attn(n)), _STACKED_LINEAR) for n in ("q", "k", "v", "o")]
    rules += [Rule(f"layers/{n}/kernel", tuple(ff(n)), _STACKED_LINEAR) for n in ("wi_0", "wi_1", "wo")]
    return rules


def load_umt5(source, cfg: UMT5Config, *, progress: bool = False) -> UMT5Encoder:
    """Build a :class:`UMT5Encoder` from reference weights (a safetensors file, folder or source)."""
    abstract = abstract_model(lambda r: UMT5Encoder(cfg, rngs=r))
    return convert_into(abstract, umt5_rules(cfg), open_source(source), what="umt5-base", progress=progress)


UMT5 = Component(
    name="text_encoder",
    hf_folder="umt5-base",
    config_from_dict=UMT5Config.from_dict,
    build=UMT5Encoder,
    rules=umt5_rules,
)

"""The components of an ACE-Step checkpoint and how each converts."""

import dataclasses

from acestep_jax.convert.checkpoint import Component
from acestep_jax.convert.dcae import DCAE
from acestep_jax.convert.ssl import SSL_COMPONENTS
from acestep_jax.convert.transformer import transformer_rules
from acestep_jax.convert.umt5 import UMT5
from acestep_jax.convert.vocoder import VOCODER
from acestep_jax.models.transformer import ACEStepTransformer, TransformerConfig, unstack_blocks

TRANSFORMER = Component(
    name="transformer",
    hf_folder="ace_step_transformer",
    config_from_dict=TransformerConfig.from_dict,
    build=ACEStepTransformer,
    rules=transformer_rules,
    stored=lambda cfg: dataclasses.replace(cfg, unroll_blocks=False),
    held=lambda model, cfg: unstack_blocks(model) if cfg.unroll_blocks else model,
)

TEXT_ENCODER_HF_FOLDER = UMT5.hf_folder

COMPONENTS = {c.name: c for c in (TRANSFORMER, DCAE, VOCODER, UMT5)}
"""The models of the ACE-Step checkpoint; ``SSL_COMPONENTS`` are the REPA feature extractors (separate models)."""

__all__ = ["COMPONENTS", "SSL_COMPONENTS", "TEXT_ENCODER_HF_FOLDER", "TRANSFORMER"]

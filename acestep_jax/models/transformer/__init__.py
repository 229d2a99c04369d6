"""The ACE-Step diffusion transformer and its Conformer lyric encoder."""

from acestep_jax.models.transformer.config import LyricEncoderConfig, TransformerConfig
from acestep_jax.models.transformer.model import (
    ACEStepTransformer,
    Context,
    context_positions,
    layer_scales,
)

__all__ = ["ACEStepTransformer", "Context", "LyricEncoderConfig", "TransformerConfig", "context_positions",
           "layer_scales"]

"""The ACE-Step diffusion transformer and its Conformer lyric encoder."""

from acestep_jax.models.transformer.config import (
    LyricEncoderConfig,
    TransformerConfig,
    gpu_transformer_settings,
)
from acestep_jax.models.transformer.model import (
    ACEStepTransformer,
    Context,
    context_positions,
    layer_scales,
    stack_blocks,
    unstack_blocks,
)

__all__ = ["ACEStepTransformer", "Context", "LyricEncoderConfig", "TransformerConfig", "context_positions",
           "gpu_transformer_settings", "layer_scales", "stack_blocks",
           "unstack_blocks"]

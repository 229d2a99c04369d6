"""The ACE-Step diffusion transformer and its Conformer lyric encoder."""

from acestep_jax.models.transformer.config import LyricEncoderConfig, TransformerConfig
from acestep_jax.models.transformer.model import ACEStepTransformer, layer_scales, repa_loss

__all__ = ["ACEStepTransformer", "LyricEncoderConfig", "TransformerConfig", "layer_scales", "repa_loss"]

"""Shared building blocks: layers with logical axis names and dtype handling, stacked layers and
abstract models."""

from acestep_jax.nn.build import abstract_model, stacked
from acestep_jax.nn.dtypes import resolve_dtype
from acestep_jax.nn.layers import (
    Conv,
    Dense,
    Embed,
    GroupNorm,
    LayerNorm,
    RMSNorm,
    dropout,
    make_param,
    rms_norm,
)

__all__ = [
    "Conv",
    "Dense",
    "Embed",
    "GroupNorm",
    "LayerNorm",
    "RMSNorm",
    "abstract_model",
    "dropout",
    "make_param",
    "resolve_dtype",
    "rms_norm",
    "stacked",
]

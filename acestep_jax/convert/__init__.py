"""Torch-free conversion of the reference checkpoints (safetensors read with numpy)."""

from acestep_jax.convert.core import (
    CheckpointError,
    DictSource,
    ManifestSource,
    Rule,
    SafetensorsSource,
    TensorSource,
    check_rules,
    conv_t,
    convert_into,
    identity,
    linear_t,
    load_flat,
    open_source,
    param_shapes,
    rule,
    stacked_rule,
)

__all__ = [
    "CheckpointError",
    "DictSource",
    "ManifestSource",
    "Rule",
    "SafetensorsSource",
    "TensorSource",
    "check_rules",
    "conv_t",
    "convert_into",
    "identity",
    "linear_t",
    "load_flat",
    "open_source",
    "param_shapes",
    "rule",
    "stacked_rule",
]

"""The shipped model configs load, and the 3.5B one is the released checkpoint's."""

import dataclasses
import json
from pathlib import Path

from acestep_jax.models.transformer import TransformerConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_transformer_configs(manifests_dir, golden):
    released = json.loads((manifests_dir / "ace_step_transformer.json").read_text())["config"]
    full = TransformerConfig.from_dict(json.loads((CONFIGS / "transformer_3.5b.json").read_text()))
    assert dataclasses.replace(full, dtype="float32", param_dtype="float32") == TransformerConfig.from_dict(released)
    tiny = TransformerConfig.from_dict(json.loads((CONFIGS / "transformer_tiny.json").read_text()))
    assert tiny == TransformerConfig.from_dict(golden("transformer").config)

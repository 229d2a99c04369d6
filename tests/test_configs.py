"""The shipped model configs load, and the 3.5B one is the released checkpoint's.

Presets are checked against the released manifests only; tests that need the golden
models' sizes build them from the golden config.json files.
"""

import dataclasses
import json

from acestep_jax.models.transformer import TransformerConfig
from acestep_jax.presets import preset_config


def test_transformer_configs(manifests_dir):
    released = json.loads((manifests_dir / "ace_step_transformer.json").read_text())["config"]
    full = preset_config("full", "transformer")
    assert dataclasses.replace(full, dtype="float32", param_dtype="float32") == TransformerConfig.from_dict(released)


def test_full_preset_is_the_released_checkpoint(manifests_dir):
    from acestep_jax.convert.components import COMPONENTS

    for preset_name, component, manifest in (("dcae", "dcae", "music_dcae_f8c8"), ("vocoder", "vocoder", "music_vocoder"),
                                             ("umt5", "text_encoder", "umt5-base")):
        released = json.loads((manifests_dir / f"{manifest}.json").read_text())["config"]
        assert preset_config("full", preset_name) == COMPONENTS[component].config_from_dict(released), preset_name


def test_tiny_preset_builds():
    from acestep_jax.presets import random_models

    transformer, codec, text_encoder, tokenizer = random_models("tiny", 0)
    ids, mask = tokenizer(["rock"])
    assert text_encoder(ids, mask).shape[-1] == transformer.cfg.text_embedding_dim
    assert codec.vocoder.config.n_mels == 128

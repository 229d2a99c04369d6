"""The shipped model configs load, and the 3.5B one is the released checkpoint's."""

import dataclasses
import json
from pathlib import Path

from acestep_jax.models.transformer import TransformerConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_transformer_configs(manifests_dir, golden):
    released = json.loads((manifests_dir / "ace_step_transformer.json").read_text())["config"]
    full = TransformerConfig.from_dict(json.loads((CONFIGS / "full" / "transformer.json").read_text()))
    assert dataclasses.replace(full, dtype="float32", param_dtype="float32") == TransformerConfig.from_dict(released)
    tiny = TransformerConfig.from_dict(json.loads((CONFIGS / "tiny" / "transformer.json").read_text()))
    # the golden model's sizes, with the real lyric vocabulary so real lyric ids can be fed
    golden_cfg = TransformerConfig.from_dict(golden("transformer").config)
    assert tiny == dataclasses.replace(golden_cfg, lyric_encoder_vocab_size=full.lyric_encoder_vocab_size)


def test_full_preset_is_the_released_checkpoint(manifests_dir):
    from acestep_jax.convert.components import COMPONENTS
    from acestep_jax.presets import preset_config

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

"""Model presets and training configs are package data (found without a source checkout)."""

from importlib import resources

import pytest

from acestep_jax.presets import packaged_config, preset_config, training_configs
from acestep_jax.training.config import TrainConfig


def test_presets_are_read_from_the_package():
    assert packaged_config("tiny/transformer.json").is_file()
    folder = resources.files("acestep_jax").joinpath("configs")
    for preset in ("tiny", "full"):
        for name in ("transformer", "dcae", "vocoder", "umt5"):
            assert folder.joinpath(preset, f"{name}.json").is_file()
            preset_config(preset, name)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge", "transformer")


def test_training_configs_by_name():
    assert {"train_tiny", "train_lora"} <= set(training_configs())
    cfg = TrainConfig.load("train_tiny")
    assert cfg.model.transformer == "tiny"
    with pytest.raises(FileNotFoundError, match="packaged configs: .*train_tiny"):
        TrainConfig.load("train_nothing")

"""DC-AE converter: the full-size manifest maps exactly; bad checkpoints are refused with listed keys."""

import json
import math

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from acestep_jax.codec.config import DCAEConfig, VocoderConfig
from acestep_jax.codec.dcae import DCAE as DCAEModel
from acestep_jax.convert import (
    CheckpointError,
    DictSource,
    ManifestSource,
    check_rules,
    param_shapes,
)
from acestep_jax.convert.core import export_tensors
from acestep_jax.convert.dcae import DCAE, dcae_rules, load_dcae, load_music_codec


def test_full_size_manifest_converts(manifests_dir):
    manifest = json.loads((manifests_dir / "music_dcae_f8c8.json").read_text())
    cfg = DCAEConfig.from_dict(manifest["config"])
    assert cfg == DCAEConfig()  # the defaults are the released model
    shapes = param_shapes(DCAE.abstract(cfg))
    plan = check_rules(dcae_rules(cfg), ManifestSource(manifest), shapes)
    assert set(plan.resolved) == set(shapes)
    assert {k for keys in plan.resolved.values() for k in keys} == set(manifest["tensors"])
    assert sum(math.prod(s) for s in shapes.values()) == manifest["num_params"]


@pytest.fixture(scope="module")
def tiny(golden):
    g = golden("dcae")
    return DCAEConfig.from_dict(g.config), load_file(g.path("weights.safetensors"))


def test_bad_checkpoint_lists_every_problem(tiny):
    cfg, tensors = tiny
    broken = dict(tensors)
    del broken["decoder.norm_out.bias"]
    broken["encoder.conv_in.weight"] = np.zeros((3, 2, 3, 3), np.float32)
    broken["encoder.extra.weight"] = np.zeros(2, np.float32)
    with pytest.raises(CheckpointError) as err:
        load_dcae(DictSource(broken), cfg)
    msg = str(err.value)
    assert "missing tensors (1)" in msg and "decoder.norm_out.bias" in msg
    assert "unexpected tensors (1)" in msg and "encoder.extra.weight" in msg
    assert "mis-shaped tensors (1)" in msg and "encoder.conv_in.weight" in msg


def test_export_round_trips(tiny):
    cfg, tensors = tiny
    model = load_dcae(DictSource(tensors), cfg)
    flat = {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}
    exported = export_tensors(dcae_rules(cfg), flat)
    assert set(exported) == set(tensors)
    for k, v in tensors.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)
    assert isinstance(model, DCAEModel)


def test_music_codec_from_a_reference_folder(golden, tmp_path):
    g = golden("music_dcae")
    for name, key, weights in (
        ("music_dcae_f8c8", "dcae", "dcae.safetensors"),
        ("music_vocoder", "vocoder", "vocoder.safetensors"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"_class_name": "x", **g.config[key]}))
        (tmp_path / name / "diffusion_pytorch_model.safetensors").symlink_to(g.path(weights))
    codec = load_music_codec(tmp_path)
    assert codec.dcae.config == DCAEConfig.from_dict(g.config["dcae"])
    assert codec.vocoder.config == VocoderConfig.from_dict(g.config["vocoder"])
    (tmp_path / "music_vocoder" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="music_vocoder"):
        load_music_codec(tmp_path)

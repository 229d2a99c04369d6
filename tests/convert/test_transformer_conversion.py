"""Transformer converter: the full-size manifest maps exactly; bad checkpoints are refused clearly."""

import dataclasses
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from acestep_jax.convert import (
    CheckpointError,
    DictSource,
    ManifestSource,
    check_rules,
    param_shapes,
)
from acestep_jax.convert.transformer import export_transformer, load_transformer, transformer_rules
from acestep_jax.models.transformer import ACEStepTransformer, TransformerConfig
from acestep_jax.nn import abstract_model


def test_full_size_manifest_converts(manifests_dir):
    manifest = json.loads((manifests_dir / "ace_step_transformer.json").read_text())
    cfg = TransformerConfig.from_dict(manifest["config"])
    abstract = abstract_model(lambda r: ACEStepTransformer(cfg, rngs=r))
    shapes = param_shapes(abstract)
    plan = check_rules(transformer_rules(cfg), ManifestSource(manifest), shapes)
    assert set(plan.resolved) == set(shapes)  # every parameter produced, all shapes equal
    used = {k for keys in plan.resolved.values() for k in keys}
    assert used == set(manifest["tensors"])  # every tensor consumed
    assert sum(math.prod(s) for s in shapes.values()) == manifest["num_params"]


@pytest.fixture(scope="module")
def tiny_weights(golden):
    g = golden("transformer")
    return TransformerConfig.from_dict(g.config), load_file(g.path("weights.safetensors"))


def _error(cfg, tensors):
    with pytest.raises(CheckpointError) as err:
        load_transformer(DictSource(tensors), cfg)
    return str(err.value)


def test_missing_unexpected_and_misshaped_are_listed(tiny_weights):
    cfg, tensors = tiny_weights
    broken = dict(tensors)
    del broken["final_layer.linear.bias"]
    broken["transformer_blocks.3.attn.to_q.weight"] = np.zeros((5, 5), np.float32)
    broken["extra.weight"] = np.zeros(3, np.float32)
    msg = _error(cfg, broken)
    assert "missing tensors (1)" in msg and "final_layer.linear.bias" in msg
    assert "unexpected tensors (1)" in msg and "extra.weight" in msg
    assert "mis-shaped tensors (1)" in msg and "transformer_blocks.3.attn.to_q.weight" in msg


def test_wrong_config_is_refused(tiny_weights):
    cfg, tensors = tiny_weights
    msg = _error(dataclasses.replace(cfg, num_layers=cfg.num_layers - 1), tensors)
    assert "unexpected tensors" in msg and f"transformer_blocks.{cfg.num_layers - 1}." in msg


def test_truncated_and_foreign_files_are_refused(tiny_weights, tmp_path):
    cfg, tensors = tiny_weights
    good = tmp_path / "weights.safetensors"
    save_file(tensors, str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_transformer(truncated, cfg)
    foreign = tmp_path / "model.safetensors"
    foreign.write_bytes(b"PK\x03\x04 this is a zip archive, not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_transformer(foreign, cfg)
    with pytest.raises(CheckpointError, match="not found"):
        load_transformer(tmp_path / "absent.safetensors", cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no .safetensors files"):
        load_transformer(tmp_path / "empty", cfg)


def test_param_dtype_is_applied(tiny_weights):
    cfg, tensors = tiny_weights
    model = load_transformer(DictSource(tensors), dataclasses.replace(cfg, param_dtype="bfloat16"))
    float32 = {"/".join(map(str, p)) for p, v in nnx.to_flat_state(nnx.state(model)) if v.dtype != jnp.bfloat16}
    assert float32 == {f"blocks/ff/{n}" for n in ("dw_value", "dw_gate", "dw_value_bias", "dw_gate_bias")}


def test_export_round_trip_is_bit_exact(tiny_weights):
    cfg, tensors = tiny_weights
    exported = export_transformer(load_transformer(DictSource(tensors), cfg))
    assert set(exported) == set(tensors)
    for key, value in tensors.items():
        assert exported[key].dtype == value.dtype and np.array_equal(exported[key], value), key

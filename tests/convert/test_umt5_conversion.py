"""UMT5 converter: the full-size manifest maps exactly; either embedding name loads; bad files are refused."""

import dataclasses
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from acestep_jax.convert import (
    CheckpointError,
    DictSource,
    ManifestSource,
    check_rules,
    param_shapes,
)
from acestep_jax.convert.umt5 import EMBEDDING_KEYS, UMT5, load_umt5, umt5_rules
from acestep_jax.text import UMT5Config


def test_full_size_manifest_converts(manifests_dir):
    manifest = json.loads((manifests_dir / "umt5-base.json").read_text())
    cfg = UMT5.config_from_dict(manifest["config"])
    shapes = param_shapes(UMT5.abstract(cfg))
    plan = check_rules(UMT5.rules(cfg), ManifestSource(manifest), shapes)
    assert set(plan.resolved) == set(shapes)  # every parameter produced, all shapes equal
    used = {k for keys in plan.resolved.values() for k in keys}
    assert used | {EMBEDDING_KEYS[1]} == set(manifest["tensors"])  # the tied copy is consumed, not read
    embedding = math.prod(manifest["tensors"][EMBEDDING_KEYS[0]]["shape"])
    assert sum(math.prod(s) for s in shapes.values()) + embedding == manifest["num_params"]


@pytest.fixture(scope="module")
def tiny_weights(golden):
    g = golden("umt5")
    return UMT5Config.from_dict(g.config), load_file(g.path("weights.safetensors"))


@pytest.mark.parametrize("keep", EMBEDDING_KEYS)
def test_either_embedding_name_loads(tiny_weights, keep):
    cfg, tensors = tiny_weights
    one = {k: v for k, v in tensors.items() if k not in EMBEDDING_KEYS or k == keep}
    model = load_umt5(DictSource(one), cfg)
    assert np.array_equal(np.asarray(model.embed_tokens.embedding[...]), tensors[keep])


def _error(cfg, tensors):
    with pytest.raises(CheckpointError) as err:
        load_umt5(DictSource(tensors), cfg)
    return str(err.value)


def test_bad_checkpoint_is_refused_listing_keys(tiny_weights):
    cfg, tensors = tiny_weights
    broken = {k: v for k, v in tensors.items() if k not in EMBEDDING_KEYS}
    del broken["encoder.block.4.layer.1.DenseReluDense.wi_1.weight"]
    one_head_too_many = (cfg.relative_attention_num_buckets, cfg.num_heads + 1)
    broken["encoder.block.2.layer.0.SelfAttention.relative_attention_bias.weight"] = np.zeros(
        one_head_too_many, np.float32)
    broken["decoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((48, 48), np.float32)
    msg = _error(cfg, broken)
    assert "missing tensors (2)" in msg
    assert "shared.weight or encoder.embed_tokens.weight" in msg
    assert "encoder.block.4.layer.1.DenseReluDense.wi_1.weight" in msg
    assert "unexpected tensors (1)" in msg and "decoder.block.0.layer.0.SelfAttention.q.weight" in msg
    assert "mis-shaped tensors (1)" in msg and "encoder.block.2.layer.0.SelfAttention.relative_attention_bias" in msg


def test_wrong_config_is_refused(tiny_weights):
    cfg, tensors = tiny_weights
    msg = _error(dataclasses.replace(cfg, num_layers=cfg.num_layers - 1), tensors)
    assert "unexpected tensors" in msg and f"encoder.block.{cfg.num_layers - 1}." in msg
    msg = _error(dataclasses.replace(cfg, d_ff=cfg.d_ff * 2), tensors)
    assert "mis-shaped tensors" in msg and "DenseReluDense.wo.weight" in msg


def test_param_dtype_is_applied(tiny_weights):
    cfg, tensors = tiny_weights
    model = load_umt5(DictSource(tensors), dataclasses.replace(cfg, param_dtype="bfloat16"))
    assert {v.dtype for _, v in nnx.to_flat_state(nnx.state(model))} == {jnp.dtype(jnp.bfloat16)}


def test_rules_cover_the_tiny_model(tiny_weights):
    cfg, tensors = tiny_weights
    shapes = param_shapes(UMT5.abstract(cfg))
    plan = check_rules(umt5_rules(cfg), DictSource(tensors), shapes)
    assert set(plan.resolved) == set(shapes)

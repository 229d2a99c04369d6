"""Vocoder converter: manifest mapping, weight-norm folding (or plain weights), clear refusals."""

import json
import math

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from acestep_jax.codec.config import VocoderConfig
from acestep_jax.convert import (
    CheckpointError,
    DictSource,
    ManifestSource,
    check_rules,
    param_shapes,
)
from acestep_jax.convert.core import export_tensors, fold_weight_norm
from acestep_jax.convert.vocoder import (
    MEL_BUFFERS,
    VOCODER,
    load_vocoder,
    vocoder_rules,
)


def test_full_size_manifest_converts(manifests_dir):
    manifest = json.loads((manifests_dir / "music_vocoder.json").read_text())
    cfg = VocoderConfig.from_dict(manifest["config"])
    assert cfg == VocoderConfig()
    shapes = param_shapes(VOCODER.abstract(cfg))
    plan = check_rules(vocoder_rules(cfg), ManifestSource(manifest), shapes, ignore=VOCODER.ignore)
    assert set(plan.resolved) == set(shapes)
    used = {k for keys in plan.resolved.values() for k in keys}
    assert used | set(MEL_BUFFERS) == set(manifest["tensors"])
    buffers = sum(math.prod(manifest["tensors"][k]["shape"]) for k in MEL_BUFFERS)
    n_g = sum(math.prod(v["shape"]) for k, v in manifest["tensors"].items() if k.endswith("weight_g"))
    assert sum(math.prod(s) for s in shapes.values()) == manifest["num_params"] - buffers - n_g


@pytest.fixture(scope="module")
def tiny(golden):
    g = golden("vocoder")
    return g, VocoderConfig.from_dict(g.config), load_file(g.path("weights.safetensors"))


def test_weight_norm_fold_convention():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(4, 3, 5)).astype(np.float32)
    g = rng.uniform(0.5, 2, size=(4, 1, 1)).astype(np.float32)
    w = fold_weight_norm(g, v)
    np.testing.assert_allclose(
        np.sqrt((w**2).sum(axis=(1, 2))), g[:, 0, 0], rtol=1e-6
    )  # norm per dim-0 slice
    np.testing.assert_allclose(
        w / np.linalg.norm(w, axis=(1, 2), keepdims=True),
        v / np.linalg.norm(v, axis=(1, 2), keepdims=True),
        rtol=1e-5,
    )


def test_plain_weights_give_the_same_model(tiny):
    _, cfg, tensors = tiny
    plain = {}
    for k, v in tensors.items():
        if k.endswith("weight_g"):
            stem = k[: -len("_g")]
            plain[stem] = fold_weight_norm(v, tensors[stem + "_v"])
        elif not k.endswith("weight_v"):
            plain[k] = v
    a = nnx.to_flat_state(nnx.state(load_vocoder(DictSource(tensors), cfg)))
    b = dict(nnx.to_flat_state(nnx.state(load_vocoder(DictSource(plain), cfg))))
    for path, v in a:
        np.testing.assert_allclose(np.asarray(b[path][...]), np.asarray(v[...]), rtol=1e-6, atol=1e-7)


def test_export_refolds_exactly(tiny):
    _, cfg, tensors = tiny
    model = load_vocoder(DictSource(tensors), cfg)
    flat = {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}
    exported = export_tensors(vocoder_rules(cfg), flat)
    assert set(exported) | set(MEL_BUFFERS) == set(tensors)
    again = load_vocoder(DictSource(exported), cfg)
    for p, v in nnx.to_flat_state(nnx.state(again)):
        np.testing.assert_allclose(np.asarray(v[...]), flat["/".join(map(str, p))], rtol=1e-5, atol=1e-7)


def test_bad_checkpoint_lists_every_problem(tiny):
    _, cfg, tensors = tiny
    broken = dict(tensors)
    del broken["head.conv_post.weight_v"]
    broken["head.ups.1.bias"] = np.zeros(3, np.float32)
    broken["head.surprise"] = np.zeros(1, np.float32)
    with pytest.raises(CheckpointError) as err:
        load_vocoder(DictSource(broken), cfg)
    msg = str(err.value)
    assert "missing tensors (1)" in msg and "head.conv_post.weight_v or head.conv_post.weight" in msg
    assert "unexpected tensors (1)" in msg and "head.surprise" in msg
    assert "mis-shaped tensors (1)" in msg and "head.ups.1.bias" in msg

"""HuBERT-family encoders (MERT, mHuBERT) against transformers' ``HubertModel``: every hidden state."""

import dataclasses
import math

import numpy as np
import pytest
from flax import nnx

from acestep_jax.convert.core import convert_into
from acestep_jax.convert.ssl import IGNORED, hubert_rules, open_weights, read_source_config
from acestep_jax.models.ssl import HubertConfig, HubertModel
from acestep_jax.nn import abstract_model
from acestep_jax.presets import released_ssl_config
from tests.helpers import assert_close, golden_root

VARIANTS = ("hubert_group_postln", "hubert_layer_preln", "hubert_layer_preln_bnpos")


def golden_hubert(name: str, **overrides) -> HubertModel:
    """The golden ``ssl/<name>`` model, converted from its safetensors."""
    folder = golden_root() / "ssl" / name
    cfg = read_source_config(folder, **overrides)
    abstract = abstract_model(lambda r: HubertModel(cfg, rngs=r))
    return convert_into(abstract, hubert_rules(cfg), open_weights(folder), ignore=IGNORED)


_all_states = nnx.jit(lambda model, x: model(x, output_hidden_states=True))
_default = nnx.jit(lambda model, x: model(x))


@pytest.mark.parametrize("name", VARIANTS)
def test_every_hidden_state_matches_the_reference(golden, name):
    g = golden(f"ssl/{name}")
    model = golden_hubert(name)
    out = _all_states(model, g.io["input_values"])
    assert_close(out.extract_features, g.io["extract_features"], what=f"{name} extract_features")
    n_states = len([k for k in g.io if k.startswith("hidden_state_")])
    assert out.hidden_states.shape[0] == n_states == model.cfg.num_hidden_layers + 1
    for i in range(n_states):
        assert_close(out.hidden_states[i], g.io[f"hidden_state_{i}"], what=f"{name} hidden_state_{i}")
    assert_close(out.last_hidden_state, g.io["last_hidden_state"], what=f"{name} last_hidden_state")


def test_bfloat16_compute_stays_close(golden):
    x = golden("ssl/hubert_layer_preln").io["input_values"][:, :6400]
    model = golden_hubert("hubert_layer_preln", dtype="bfloat16", param_dtype="bfloat16")
    assert {str(v.dtype) for _, v in nnx.to_flat_state(nnx.state(model))} == {"bfloat16"}
    plain = _default(model, x)
    assert plain.hidden_states is None
    out = np.asarray(plain.last_hidden_state, np.float32)
    ref = np.asarray(_default(golden_hubert("hubert_layer_preln"), x).last_hidden_state)
    assert np.isfinite(out).all()
    assert np.abs(out - ref).mean() < 0.05 * np.abs(ref).mean()


@pytest.mark.parametrize("name, low, high", [("mert", 315e6, 330e6), ("m-hubert", 93e6, 97e6)])
def test_released_sizes_build_abstractly(name, low, high):
    cfg = released_ssl_config(name)
    abstract = abstract_model(lambda r: HubertModel(cfg, rngs=r))
    count = sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(abstract)))
    assert low < count < high, count
    assert cfg.total_stride == 320 and cfg.frames(24000 * 5) == 374


@pytest.mark.parametrize("key, value", [("feature_extractor_cqt", True), ("deepnorm", True),
                                        ("attention_relax", 1.5), ("model_type", "wav2vec2"),
                                        ("feat_extract_norm", "batch"), ("hidden_act", "tanh")])
def test_unsupported_options_are_refused(key, value):
    released = dataclasses.asdict(released_ssl_config("mert"))
    with pytest.raises(ValueError, match=key if key != "model_type" else "wav2vec2"):
        HubertConfig.from_dict({**released, key: value})


def test_too_short_input_is_refused():
    model = golden_hubert("hubert_group_postln")
    with pytest.raises(ValueError, match="too few"):
        model(np.zeros((1, 300), np.float32))
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        model(np.zeros((400,), np.float32))

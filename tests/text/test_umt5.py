"""UMT5 encoder: parity with transformers' UMT5EncoderModel (golden vectors), ERG, padding, dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from acestep_jax.convert.umt5 import load_umt5
from acestep_jax.text import UMT5Config, UMT5Encoder, umt5_erg_scales
from acestep_jax.text.umt5 import relative_position_buckets
from tests.helpers import assert_close, batch_multiple, tile_batch


@pytest.fixture(scope="module")
def tiny(golden):
    g = golden("umt5")
    cfg = UMT5Config.from_dict(g.config)
    return g, cfg, load_umt5(g.path("weights.safetensors"), cfg)


def test_config_defaults_are_umt5_base(manifests_dir):
    import json

    real = json.loads((manifests_dir / "umt5-base.json").read_text())["config"]
    assert UMT5Config.from_dict(real) == UMT5Config()
    assert UMT5Config.from_dict(UMT5Config().to_dict()) == UMT5Config()
    with pytest.raises(ValueError, match="gated-gelu"):
        UMT5Config.from_dict({**real, "feed_forward_proj": "relu"})


def test_matches_reference(tiny):
    g, _, model = tiny
    out = jax.jit(lambda m, i, a: m(i, a))(model, g.io["input_ids"], g.io["attention_mask"])
    assert out.dtype == jnp.float32
    assert_close(out, g.io["last_hidden_state"], what="last_hidden_state")


def test_erg_null_prompt_matches_reference(tiny):
    g, cfg, model = tiny
    erg = g.extra["erg"]
    scales = umt5_erg_scales(cfg.num_layers, tau=erg["tau"], layers=tuple(erg["layers"]))
    assert np.allclose(scales, umt5_erg_scales(cfg.num_layers))  # defaults are the pipeline's
    out = np.asarray(model(g.io["input_ids"], g.io["attention_mask"], query_scales=scales))
    want, plain = g.io["last_hidden_state_erg"], g.io["last_hidden_state"]
    assert_close(out, want, what="last_hidden_state_erg")
    assert np.abs(out - want).max() < np.abs(out - plain).max()
    with pytest.raises(ValueError, match="outside"):
        umt5_erg_scales(cfg.num_layers, layers=(cfg.num_layers,))
    with pytest.raises(ValueError, match="query_scales"):
        model(g.io["input_ids"], g.io["attention_mask"], query_scales=jnp.ones(3))


def test_extra_padding_does_not_change_valid_outputs(tiny):
    g, _, model = tiny
    ids, mask = g.io["input_ids"], g.io["attention_mask"]
    pad = 7
    out = np.asarray(model(np.pad(ids, ((0, 0), (0, pad))), np.pad(mask, ((0, 0), (0, pad)))))
    assert_close(out[:, : ids.shape[1]] * mask[..., None], g.io["last_hidden_state"] * mask[..., None])


def test_relative_position_buckets():
    b = relative_position_buckets(300, 32, 128)
    diag = {d: b[0, d] for d in range(300)} | {-d: b[d, 0] for d in range(300)}
    assert diag[0] == 0 and diag[1] == 17 and diag[-1] == 1 and diag[7] == 23 and diag[-7] == 7
    # log-spaced buckets: 8 * 16 ** (k / 8) starts bucket 8 + k
    assert [diag[d] for d in (8, 15, 16, 31, 32, 64, 127, 128, 299)] == [24, 25, 26, 27, 28, 30, 31, 31, 31]
    assert [diag[-d] for d in (8, 16, 32, 64, 128)] == [8, 10, 12, 14, 15]
    assert np.array_equal(b[5:100, 5:100], b[:95, :95])  # depends on the offset only


def test_bfloat16_params_run(tiny):
    g, cfg, _ = tiny
    bf = load_umt5(g.path("weights.safetensors"), dataclasses.replace(cfg, dtype="bfloat16", param_dtype="bfloat16"))
    dtypes = {v.dtype for _, v in nnx.to_flat_state(nnx.state(bf))}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    out = bf(g.io["input_ids"], g.io["attention_mask"])
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all()
    want = g.io["last_hidden_state"]
    assert np.abs(out - want).mean() < 0.05 * np.abs(want).mean()


def test_random_init_builds_and_runs():
    cfg = UMT5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4)
    model = UMT5Encoder(cfg, rngs=nnx.Rngs(0))
    ids = jnp.array([[3, 4, 5, 1]], jnp.int32)
    out = model(ids, jnp.ones_like(ids))
    assert out.shape == (1, 4, 16) and np.isfinite(np.asarray(out)).all()
    with pytest.raises(ValueError, match="input_ids and attention_mask"):
        model(ids, jnp.ones((1, 3), jnp.int32))


def test_sharded_run_matches_single_device(tiny):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from acestep_jax.sharding import make_mesh, shard_model

    g, cfg, _ = tiny
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = shard_model(load_umt5(g.path("weights.safetensors"), cfg), mesh)
    assert model.layers.q.kernel.sharding.spec == P(None, "fsdp", "tensor")  # [layers, embed, heads]
    batch = NamedSharding(mesh, P("data"))
    n = batch_multiple(len(g.io["input_ids"]), mesh.shape["data"])  # a batch "data" divides
    args = [jax.device_put(tile_batch(g.io[k], n), batch) for k in ("input_ids", "attention_mask")]
    with jax.set_mesh(mesh):
        out = nnx.jit(lambda m, i, a: m(i, a))(model, *args)
    assert len(out.sharding.device_set) > 1
    assert_close(out, tile_batch(g.io["last_hidden_state"], n))

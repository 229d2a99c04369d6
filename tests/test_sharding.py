"""Mesh construction, logical-axis rules, and sharded == single-device forward."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from acestep_jax.convert.transformer import load_transformer
from acestep_jax.models.transformer import TransformerConfig
from acestep_jax.sharding import logical_to_spec, make_mesh, shard_model
from tests.helpers import batch_multiple, tile_batch


def test_make_mesh_sizes_and_errors():
    mesh = make_mesh(data=-1, tensor=2)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    with pytest.raises(ValueError, match="does not divide"):
        make_mesh(data=3)
    with pytest.raises(ValueError, match="at most one"):
        make_mesh(data=-1, fsdp=-1)


def test_logical_rules_map_and_respect_divisibility():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    assert logical_to_spec(("layers", "embed", "heads")) == P(None, "fsdp", "tensor")
    assert logical_to_spec(("batch", "length", None)) == P(("data", "fsdp"), None, None)
    # a mesh axis is used once per spec; an indivisible dimension stays replicated
    assert logical_to_spec(("embed", "embed")) == P("fsdp", None)
    assert logical_to_spec(("embed", "heads"), shape=(6, 3), mesh=mesh) == P("fsdp", None)


def test_sharded_forward_equals_single_device(golden):
    g = golden("transformer")
    cfg = TransformerConfig.from_dict(g.config)
    io = g.io
    mesh = make_mesh(data=2, fsdp=1, tensor=4)
    n = batch_multiple(len(io["hidden_states"]), mesh.shape["data"])  # a batch "data" divides
    names = ("hidden_states", "attention_mask", "text_hidden_states", "text_attention_mask",
             "speaker_embeds", "lyric_token_idx", "lyric_mask", "timestep")
    args = [tile_batch(io[k], n) for k in names]

    def forward(model, *a):
        return model(*a)

    single = nnx.jit(forward)(load_transformer(g.path("weights.safetensors"), cfg), *args)

    assert len(jax.devices()) == 8
    model = shard_model(load_transformer(g.path("weights.safetensors"), cfg), mesh)
    to_q = model.blocks.attn.to_q.kernel
    assert to_q.sharding.spec[-1] == "tensor" and to_q.sharding.spec[0] is None  # [layers, in, out]
    batch = NamedSharding(mesh, P("data"))
    sharded_args = [jax.device_put(a, batch) for a in args]
    with jax.set_mesh(mesh):
        out = nnx.jit(forward)(model, *sharded_args)
    assert len(out.sharding.device_set) > 1
    np.testing.assert_allclose(np.asarray(out), np.asarray(single), rtol=1e-5, atol=1e-5)


def test_rules_context_drives_parameters_and_activations(golden, caplog):
    import logging

    from acestep_jax.sharding import axis_rules, constrain, rules_with

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    rules = rules_with({"heads": None, "act_embed": "tensor"})
    g = golden("transformer")
    with axis_rules(rules):
        assert logical_to_spec(("embed", "heads")) == P("fsdp", None)
        model = shard_model(load_transformer(g.path("weights.safetensors"), TransformerConfig.from_dict(g.config)),
                            mesh)
        with jax.set_mesh(mesh):
            x = jax.jit(lambda a: constrain(a * 2, ("batch", "length", "act_embed")))(np.ones((4, 6, 8)))
    assert model.blocks.attn.to_q.kernel.sharding.spec[-1] is None  # heads replicated by the rules
    assert x.sharding.spec == P(("data", "fsdp"), None, "tensor")
    assert logical_to_spec(("embed", "heads")) == P("fsdp", "tensor")  # defaults outside the context
    with pytest.raises(ValueError, match="unknown logical axis 'embd'"):
        rules_with({"embd": None})
    with pytest.raises(ValueError, match="mesh axes \\['model'\\]"):
        rules_with({"embed": "model"})
    with caplog.at_level(logging.INFO, logger="acestep_jax.sharding"):
        logical_to_spec(("embed", "heads"), shape=(6, 3), mesh=mesh, what="parameter w")
    assert "parameter w (6, 3): dimension 1 (heads, size 3) is not divisible by mesh axes tensor" in caplog.text

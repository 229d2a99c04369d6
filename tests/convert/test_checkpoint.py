"""Component folders: convert → orbax → restore (sharded), in-memory save, and refusal of mismatches."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from acestep_jax.convert import CheckpointError, DictSource, checkpoint
from acestep_jax.convert.checkpoint import load_component, save_component, write_component
from acestep_jax.convert.components import TRANSFORMER
from acestep_jax.convert.transformer import export_transformer
from acestep_jax.models.transformer import TransformerConfig
from acestep_jax.sharding import make_mesh


@pytest.fixture(scope="module")
def converted(golden, tmp_path_factory):
    g = golden("transformer")
    cfg = TransformerConfig.from_dict(g.config)
    tensors = load_file(g.path("weights.safetensors"))
    folder = tmp_path_factory.mktemp("ckpt") / "transformer"
    count = write_component(folder, TRANSFORMER, cfg, DictSource(tensors))
    return folder, cfg, tensors, count, g.io


def _decode(model, io):
    return np.asarray(model.decode(io["hidden_states"], io["attention_mask"], io["encoder_hidden_states"],
                                   io["encoder_hidden_mask"], io["timestep"]))


def test_convert_restore_round_trip(converted):
    folder, cfg, tensors, count, io = converted
    assert count == sum(v.size for v in tensors.values())
    assert json.loads((folder / "config.json").read_text())["num_layers"] == cfg.num_layers
    model = load_component(folder, TRANSFORMER)
    exported = export_transformer(model)
    assert all(np.array_equal(exported[k], tensors[k]) for k in tensors)  # bit-exact
    np.testing.assert_allclose(_decode(model, io), io["decode_out"], rtol=1e-3, atol=1e-3)


def test_many_shards_round_trip(converted, tmp_path, monkeypatch):
    _, cfg, tensors, _, _ = converted
    monkeypatch.setattr(checkpoint, "SHARD_BYTES", 64 * 1024)
    write_component(tmp_path / "sharded", TRANSFORMER, cfg, DictSource(tensors))
    index = json.loads((tmp_path / "sharded" / "params" / "index.json").read_text())["arrays"]
    assert len(set(index.values())) > 5
    model = load_component(tmp_path / "sharded", TRANSFORMER)
    exported = export_transformer(model)
    assert all(np.array_equal(exported[k], tensors[k]) for k in tensors)


def test_restore_into_mesh_with_dtype_override(converted):
    folder, _, _, _, _ = converted
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = load_component(folder, TRANSFORMER, mesh=mesh, param_dtype="bfloat16")
    kernel = model.blocks.cross_attn.to_k.kernel
    assert kernel.dtype == jnp.bfloat16
    assert kernel.sharding.mesh == mesh and kernel.sharding.spec[1:] == ("fsdp", "tensor")
    local = tuple(d // 2 for d in kernel.shape[1:])  # [layers, in, out] over fsdp=2, tensor=2
    assert len(kernel.addressable_shards) == 8
    assert kernel.addressable_shards[0].data.shape[1:] == local


def test_save_component_of_modified_model(converted, tmp_path):
    folder, cfg, _, _, _ = converted
    model = load_component(folder, TRANSFORMER)
    model.final_layer.linear.bias[...] = model.final_layer.linear.bias[...] + 1.0
    save_component(tmp_path / "tuned", model, cfg)
    again = load_component(tmp_path / "tuned", TRANSFORMER)
    np.testing.assert_array_equal(np.asarray(again.final_layer.linear.bias[...]),
                                  np.asarray(model.final_layer.linear.bias[...]))
    with pytest.raises(FileExistsError):
        save_component(tmp_path / "tuned", model, cfg)



def test_a_model_held_per_block_saves_and_exports_stacked(converted, tmp_path):
    """GPU loading holds one module per block (``unroll_blocks``); saving and exporting such a
    model write the stacked layout every checkpoint holds."""
    folder, _, tensors, _, _ = converted
    per_block = load_component(folder, TRANSFORMER, unroll_blocks=True)
    assert isinstance(per_block.blocks, nnx.List)
    exported = export_transformer(per_block)
    assert exported.keys() == tensors.keys() and all(np.array_equal(exported[k], tensors[k]) for k in tensors)
    save_component(tmp_path / "saved", per_block, per_block.cfg)
    again = export_transformer(load_component(tmp_path / "saved", TRANSFORMER))
    assert all(np.array_equal(again[k], tensors[k]) for k in tensors)

def test_mismatched_config_and_broken_folders_are_refused(converted, tmp_path):
    folder, cfg, tensors, _, _ = converted
    smaller = dataclasses.replace(cfg, num_layers=cfg.num_layers - 2)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps(smaller.to_dict()))
    (wrong / "params").symlink_to(folder / "params")
    with pytest.raises(CheckpointError, match="mis-shaped arrays"):
        load_component(wrong, TRANSFORMER)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_component(tmp_path, TRANSFORMER)
    bad = dict(tensors)
    bad.pop("lyric_embs.weight")
    with pytest.raises(CheckpointError, match="lyric_embs.weight"):
        write_component(tmp_path / "never", TRANSFORMER, cfg, DictSource(bad))
    assert not (tmp_path / "never").exists()  # validated before anything is written

"""LoRA: PEFT-format files merge exactly like editing the reference weights; adapters train and export."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from acestep_jax.convert import CheckpointError, DictSource
from acestep_jax.convert.transformer import load_transformer
from acestep_jax.lora import (
    LoraConfig,
    add_lora,
    linear_sites,
    merge_lora,
    read_lora,
    save_lora,
    unmerge_lora,
)
from acestep_jax.models.transformer import TransformerConfig

TARGETS = ("to_q", "to_out.0", "linear_v", "speaker_embedder")


@pytest.fixture(scope="module")
def base(golden):
    g = golden("transformer")
    return TransformerConfig.from_dict(g.config), load_file(g.path("weights.safetensors")), g.io


def _decode(model, io):
    return np.asarray(model.decode(io["hidden_states"], io["attention_mask"], io["encoder_hidden_states"],
                                   io["encoder_hidden_mask"], io["timestep"]))


def _peft_file(path, tensors_by_module, config, prefix=""):
    tensors = {}
    for name, (a, b) in tensors_by_module.items():
        tensors[f"{prefix}{name}.lora_A.weight"] = a
        tensors[f"{prefix}{name}.lora_B.weight"] = b
    save_file(tensors, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config.to_peft_dict())})


def _random_adapters(weights, config, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for key, w in weights.items():
        name = key.removesuffix(".weight")
        if key.endswith(".weight") and w.ndim == 2 and any(name == t or name.endswith("." + t) for t in config.target_modules):
            out[name] = (rng.normal(0, 0.05, (config.r, w.shape[1])).astype(np.float32),
                         rng.normal(0, 0.05, (w.shape[0], config.r)).astype(np.float32))
    return out


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_merge_equals_editing_reference_weights(base, tmp_path, prefix):
    cfg, weights, io = base
    config = LoraConfig(r=4, lora_alpha=8.0, target_modules=TARGETS, use_rslora=True)
    adapters = _random_adapters(weights, config)
    assert any(".cross_attn.to_q" in n for n in adapters) and any("lyric_encoder" in n for n in adapters)
    _peft_file(tmp_path / "pytorch_lora_weights.safetensors", adapters, config, prefix)

    edited = dict(weights)
    for name, (a, b) in adapters.items():
        edited[f"{name}.weight"] = weights[f"{name}.weight"] + 0.7 * config.scale * (b @ a)
    expected = _decode(load_transformer(DictSource(edited), cfg), io)

    model = load_transformer(DictSource(weights), cfg)
    merged = merge_lora(model, tmp_path, weight=0.7)
    np.testing.assert_allclose(_decode(model, io), expected, rtol=1e-5, atol=1e-5)
    unmerge_lora(model, merged, weight=0.7)
    np.testing.assert_allclose(_decode(model, io), io["decode_out"], rtol=1e-3, atol=1e-3)


def test_trained_adapters_export_and_merge_back(base, tmp_path):
    cfg, weights, io = base
    config = LoraConfig(r=4, lora_alpha=4.0, target_modules=TARGETS, use_rslora=False)
    model = load_transformer(DictSource(weights), cfg)
    paths = add_lora(model, config, nnx.Rngs(1))
    assert "blocks/attn/to_q" in paths and "speaker_embedder" in paths
    np.testing.assert_allclose(_decode(model, io), io["decode_out"], rtol=1e-3, atol=1e-3)  # B = 0
    # move the adapters as training would
    lora = nnx.state(model, nnx.LoRAParam)
    keys = iter(jax.random.split(jax.random.key(3), len(jax.tree.leaves(lora))))
    nnx.update(model, jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), lora))
    adapted = _decode(model, io)
    assert np.abs(adapted - io["decode_out"]).max() > 1e-3

    save_lora(model, config, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 4
    read_config, pairs = read_lora(tmp_path)
    assert read_config == config
    fresh = load_transformer(DictSource(weights), cfg)
    merge_lora(fresh, tmp_path)
    np.testing.assert_allclose(_decode(fresh, io), adapted, rtol=1e-4, atol=1e-4)


def test_mismatched_files_are_refused(base, tmp_path):
    cfg, weights, _ = base
    model = load_transformer(DictSource(weights), cfg)
    config = LoraConfig(r=2, lora_alpha=2.0, target_modules=("to_q",), use_rslora=False)
    a, b = np.zeros((2, cfg.inner_dim), np.float32), np.zeros((cfg.inner_dim, 2), np.float32)

    _peft_file(tmp_path / "unknown.safetensors", {"transformer_blocks.0.attn.to_qq": (a, b)}, config)
    with pytest.raises(CheckpointError, match="not in the transformer"):
        merge_lora(model, tmp_path / "unknown.safetensors")

    _peft_file(tmp_path / "shape.safetensors", {"speaker_embedder": (a, b)}, config)
    with pytest.raises(CheckpointError, match="do not fit"):
        merge_lora(model, tmp_path / "shape.safetensors")

    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": a}, str(tmp_path / "half.safetensors"))
    with pytest.raises(CheckpointError, match="only one of"):
        merge_lora(model, tmp_path / "half.safetensors")

    save_file({"transformer_blocks.0.attn.to_q.weight": a}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not LoRA tensors"):
        merge_lora(model, tmp_path / "plain.safetensors")

    _peft_file(tmp_path / "rank.safetensors", {"transformer_blocks.0.attn.to_q": (a, b)}, config)
    with pytest.raises(CheckpointError, match="rank 2 but the adapter config says r=8"):
        read_lora(tmp_path / "rank.safetensors", LoraConfig(r=8))

    with pytest.raises(CheckpointError, match="not found"):
        merge_lora(model, tmp_path / "absent")


def test_add_lora_rejects_targets_matching_nothing(base):
    cfg, weights, _ = base
    model = load_transformer(DictSource(weights), cfg)
    with pytest.raises(ValueError, match="match no linear layer"):
        add_lora(model, LoraConfig(r=2, target_modules=("conv_in",)), nnx.Rngs(0))
    with pytest.raises(ValueError, match="only some of the stacked layers"):
        add_lora(model, LoraConfig(r=2, target_modules=r"transformer_blocks\.0\.attn\.to_q"), nnx.Rngs(0))
    assert len(linear_sites(model)) > 0

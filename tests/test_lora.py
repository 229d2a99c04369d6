"""LoRA: files merge as the reference pipeline applies them; several at once; exact unmerge;
trained adapters export so that every loader reproduces the training-time model."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from acestep_jax.convert import CheckpointError, DictSource
from acestep_jax.convert.transformer import load_transformer
from acestep_jax.lora import (
    TRAINING_KEY,
    LoraConfig,
    LoraSpec,
    add_lora,
    freeze_in_compute_dtype,
    linear_sites,
    lora_state_dict,
    merge_lora,
    merge_loras,
    read_lora,
    save_lora,
    unmerge_lora,
)
from acestep_jax.models.transformer import TransformerConfig
from acestep_jax.nn import Dense
from tests.helpers import assert_close

TARGETS = ("to_q", "to_out.0", "linear_v", "speaker_embedder")


@pytest.fixture(scope="module")
def base(golden):
    g = golden("transformer")  # its prompts are padded to the batch's longest: the "batch" positions
    cfg = TransformerConfig.from_dict(g.config, context_positions="batch")
    return cfg, load_file(g.path("weights.safetensors")), g.io


@nnx.jit
def _jit_decode(model, io):
    return model.decode(io["hidden_states"], io["attention_mask"], io["encoder_hidden_states"],
                        io["encoder_hidden_mask"], io["timestep"])


@nnx.jit
def _jit_forward(model, io):
    return model(io["hidden_states"], io["attention_mask"], io["text_hidden_states"], io["text_attention_mask"],
                 io["speaker_embeds"], io["lyric_token_idx"], io["lyric_mask"], io["timestep"])


def _decode(model, io):
    return np.asarray(_jit_decode(model, io))


def _forward(model, io):
    return np.asarray(_jit_forward(model, io))


def _params(model):
    return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model))}


def _peft_file(path, tensors_by_module, config, prefix="", alphas=None):
    tensors = {}
    for name, (a, b) in tensors_by_module.items():
        tensors[f"{prefix}{name}.lora_A.weight"] = a
        tensors[f"{prefix}{name}.lora_B.weight"] = b
    for name, alpha in (alphas or {}).items():
        tensors[f"{prefix}{name}.alpha"] = np.asarray(alpha, np.float32)
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


def _edited(weights, adapters_and_scales):
    """The reference weights with ``scale * B @ A`` of each adapter added (what a LoRA should equal)."""
    edited = dict(weights)
    for adapters, scale in adapters_and_scales:
        for name, (a, b) in adapters.items():
            edited[f"{name}.weight"] = edited[f"{name}.weight"] + scale * (b @ a)
    return edited


# ----------------------------------------------------------------------------- the reference pipeline
@pytest.fixture(scope="module")
def golden_lora(golden):
    g = golden("lora")
    weights = sorted(float(k.removeprefix("forward_lora_")) for k in g.io if k.startswith("forward_lora_"))
    assert weights, "golden/lora/io.npz has no forward_lora_<weight> outputs"
    return g.path("adapter"), g.io, weights


@pytest.mark.parametrize("unroll", [False, True], ids=["stacked", "per-block"])
def test_golden_adapter_matches_reference_pipeline(base, golden_lora, unroll):
    """Also on a model held one module per block (``unroll_blocks``, as GPUs load it)."""
    cfg, weights, io = base
    adapter, ref, lora_weights = golden_lora
    model = load_transformer(DictSource(weights), dataclasses.replace(cfg, unroll_blocks=unroll))
    original = _params(model)
    assert_close(_forward(model, io), ref["forward_no_lora"], what="no LoRA")
    for w in lora_weights:
        merged = merge_lora(model, adapter, weight=w)
        assert_close(_forward(model, io), ref[f"forward_lora_{w}"], what=f"weight {w}")
        unmerge_lora(model, merged)
        after = _params(model)
        for k, v in original.items():
            np.testing.assert_array_equal(after[k], v, err_msg=k)  # unmerged exactly
        assert_close(_forward(model, io), ref["forward_no_lora"], what=f"unloaded after weight {w}")


def test_golden_adapter_in_two_parts_equals_weight_one(base, golden_lora):
    """Two adapters merge in order and add up: the same file at 0.4 and 0.6 is the reference at 1.0."""
    cfg, weights, io = base
    adapter, ref, _ = golden_lora
    model = load_transformer(DictSource(weights), cfg)
    merged = merge_loras(model, [LoraSpec(adapter, 0.4), LoraSpec(adapter, 0.6)])
    assert [a.spec.weight for a in merged.adapters] == [0.4, 0.6]
    assert_close(_forward(model, io), ref["forward_lora_1.0"], what="0.4 + 0.6")


def test_config_scale_mode_applies_the_files_alpha(base, golden_lora):
    cfg, weights, io = base
    adapter, ref, _ = golden_lora
    lora = read_lora(adapter)
    assert lora.config.use_rslora and lora.scales("reference") == dict.fromkeys(lora.pairs, 1.0)
    peft_scale = lora.config.lora_alpha / math.sqrt(lora.rank)
    assert set(lora.scales("config").values()) == {peft_scale}
    model = load_transformer(DictSource(weights), cfg)
    merge_lora(model, adapter, weight=0.5, scale_mode="config")
    expected = _edited(weights, [({n: ab for n, ab in lora.pairs.items()}, 0.5 * peft_scale)])
    assert_close(_forward(model, io), _forward(load_transformer(DictSource(expected), cfg), io), rtol=1e-5,
                 atol=1e-5, what="config scale")
    assert np.abs(_forward(model, io) - ref["forward_lora_1.0"]).max() > 0.1  # not the reference's result


# ----------------------------------------------------------------------------- files and scales
@pytest.mark.parametrize("prefix", ["", "transformer."])
@pytest.mark.parametrize("mode", ["reference", "config"])
def test_merge_equals_editing_reference_weights(base, tmp_path, prefix, mode):
    cfg, weights, io = base
    config = LoraConfig(r=4, lora_alpha=8.0, target_modules=TARGETS, use_rslora=True)
    adapters = _random_adapters(weights, config)
    assert any(".cross_attn.to_q" in n for n in adapters) and any("lyric_encoder" in n for n in adapters)
    _peft_file(tmp_path / "pytorch_lora_weights.safetensors", adapters, config, prefix)

    scale = 0.7 * (config.scale if mode == "config" else 1.0)
    expected = _decode(load_transformer(DictSource(_edited(weights, [(adapters, scale)])), cfg), io)
    model = load_transformer(DictSource(weights), cfg)
    merge_lora(model, tmp_path, weight=0.7, scale_mode=mode)
    np.testing.assert_allclose(_decode(model, io), expected, rtol=1e-5, atol=1e-5)


def test_alpha_tensors_count_only_in_config_mode(tmp_path):
    config = LoraConfig(r=4, lora_alpha=8.0, target_modules=("to_q",), use_rslora=False)
    a, b = np.ones((4, 6), np.float32), np.ones((5, 4), np.float32)
    pairs = {"transformer_blocks.0.attn.to_q": (a, b), "transformer_blocks.1.attn.to_q": (a, b)}
    _peft_file(tmp_path / "a.safetensors", pairs, config, alphas={"transformer_blocks.0.attn.to_q": 2.0})
    lora = read_lora(tmp_path / "a.safetensors")
    assert lora.alphas == {"transformer_blocks.0.attn.to_q": 2.0}
    assert lora.scales("reference") == dict.fromkeys(pairs, 1.0)
    # the module's .alpha wins over the config's lora_alpha
    assert lora.scales("config") == {"transformer_blocks.0.attn.to_q": 0.5, "transformer_blocks.1.attn.to_q": 2.0}

    save_file({f"{n}.lora_{k}.weight": v for n, (a_, b_) in pairs.items() for k, v in (("A", a_), ("B", b_))},
              str(tmp_path / "bare.safetensors"))  # no metadata, no alpha: alpha = r in both modes
    bare = read_lora(tmp_path / "bare.safetensors")
    assert bare.config is None and bare.scales("config") == bare.scales("reference") == dict.fromkeys(pairs, 1.0)
    with pytest.raises(ValueError, match="scale mode must be one of"):
        LoraSpec(tmp_path, 1.0, "peft")
    with pytest.raises(ValueError, match="weight must be finite"):
        LoraSpec(tmp_path, float("nan"))


def test_records_round_trip_and_old_records_use_config_scaling():
    spec = LoraSpec("x/lora", 0.8, "reference")
    assert LoraSpec.from_record(json.loads(json.dumps(spec.to_record()))) == spec
    assert LoraSpec.from_record({"path": "x/lora", "weight": 0.8}) == LoraSpec("x/lora", 0.8, "config")


# ----------------------------------------------------------------------------- several adapters, exact unmerge
@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_several_adapters_merge_in_order_and_unmerge_exactly(base, tmp_path, param_dtype):
    cfg, weights, io = base
    first = LoraConfig(r=4, lora_alpha=8.0, target_modules=("to_q", "to_k", "linear_q"), use_rslora=True)
    second = LoraConfig(r=2, lora_alpha=2.0, target_modules=("to_q", "speaker_embedder"), use_rslora=False)
    adapters_a, adapters_b = _random_adapters(weights, first, 1), _random_adapters(weights, second, 2)
    _peft_file(tmp_path / "a.safetensors", adapters_a, first)
    _peft_file(tmp_path / "b.safetensors", adapters_b, second)
    specs = [LoraSpec(tmp_path / "a.safetensors", 0.8), LoraSpec(tmp_path / "b.safetensors", 0.5, "config")]

    model = load_transformer(DictSource(weights), dataclasses.replace(cfg, param_dtype=param_dtype))
    original = _params(model)
    merged = merge_loras(model, specs)
    assert merged.specs == specs
    assert set(merged.adapters[1].deltas) == set(adapters_b)
    assert {d.scale for d in merged.adapters[1].deltas.values()} == {0.5 * second.scale}
    if param_dtype == "float32":
        expected = _edited(weights, [(adapters_a, 0.8), (adapters_b, 0.5 * second.scale)])
        np.testing.assert_allclose(_decode(model, io), _decode(load_transformer(DictSource(expected), cfg), io),
                                   rtol=1e-5, atol=1e-5)
    unmerge_lora(model, merged)
    after = _params(model)
    for k, v in original.items():
        assert after[k].dtype == v.dtype
        np.testing.assert_array_equal(after[k], v, err_msg=k)


def test_nothing_merges_when_one_file_is_bad(base, tmp_path):
    cfg, weights, _ = base
    config = LoraConfig(r=2, lora_alpha=2.0, target_modules=("to_q",), use_rslora=False)
    _peft_file(tmp_path / "good.safetensors", _random_adapters(weights, config), config)
    model = load_transformer(DictSource(weights), cfg)
    original = _params(model)
    with pytest.raises(CheckpointError, match="not found"):
        merge_loras(model, [LoraSpec(tmp_path / "good.safetensors"), LoraSpec(tmp_path / "absent")])
    after = _params(model)
    for k, v in original.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)


# ----------------------------------------------------------------------------- trained adapters
def test_trained_adapters_reload_as_the_training_time_model(base, tmp_path):
    """Train-time output == the saved file merged here (both modes) == the file applied the
    reference pipeline's way (weight * B @ A, no alpha)."""
    cfg, weights, io = base
    config = LoraConfig(r=4, lora_alpha=8.0, target_modules=TARGETS, use_rslora=True)  # scale 4
    model = load_transformer(DictSource(weights), cfg)
    paths = add_lora(model, config, nnx.Rngs(1))
    assert "blocks/attn/to_q" in paths and "speaker_embedder" in paths
    np.testing.assert_allclose(_decode(model, io), io["decode_out"], rtol=1e-3, atol=1e-3)  # B = 0
    # move the adapters as training would
    lora = nnx.state(model, nnx.LoRAParam)
    keys = iter(jax.random.split(jax.random.key(3), len(jax.tree.leaves(lora))))
    nnx.update(model, jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), lora))
    trained = _decode(model, io)
    assert np.abs(trained - io["decode_out"]).max() > 1e-2

    file = save_lora(model, config, tmp_path)
    saved = read_lora(tmp_path)
    assert saved.config == LoraConfig(r=4, lora_alpha=4.0, target_modules=TARGETS, use_rslora=False)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["lora_alpha"] == 4.0
    assert saved.alphas == dict.fromkeys(saved.pairs, 4.0)
    with safe_open(file, framework="numpy") as f:
        record = json.loads(f.metadata()[TRAINING_KEY])
    assert record["lora_alpha"] == 8.0 and record["use_rslora"] and record["scale_folded_into_lora_B"] == 4.0
    raw = lora_state_dict(model)
    for name, (a, b) in saved.pairs.items():
        np.testing.assert_array_equal(a, raw[f"{name}.lora_A.weight"])
        np.testing.assert_allclose(b, 4.0 * raw[f"{name}.lora_B.weight"], rtol=1e-7)

    as_reference = _edited(weights, [(saved.pairs, 1.0)])
    assert_close(_decode(load_transformer(DictSource(as_reference), cfg), io), trained, what="reference loading")
    for mode in ("reference", "config"):
        fresh = load_transformer(DictSource(weights), cfg)
        merge_lora(fresh, tmp_path, scale_mode=mode)
        assert_close(_decode(fresh, io), trained, what=f"merged, {mode} scale")


# ----------------------------------------------------------------------------- bad input
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

    _peft_file(tmp_path / "stray.safetensors", {"transformer_blocks.0.attn.to_q": (a, b)}, config,
               alphas={"transformer_blocks.0.attn.to_k": 2.0})
    with pytest.raises(CheckpointError, match="'.alpha' for modules without"):
        read_lora(tmp_path / "stray.safetensors")

    _peft_file(tmp_path / "rank.safetensors", {"transformer_blocks.0.attn.to_q": (a, b)},
               LoraConfig(r=8, target_modules=("to_q",)))
    with pytest.raises(CheckpointError, match="rank 2 but the adapter config says r=8"):
        read_lora(tmp_path / "rank.safetensors")

    with pytest.raises(CheckpointError, match="not found"):
        merge_lora(model, tmp_path / "absent")

    for value in (np.nan, np.inf):
        bad_b = b.copy()
        bad_b[1, 0] = value
        _peft_file(tmp_path / "nan.safetensors", {"transformer_blocks.0.attn.to_q": (a, bad_b)}, config)
        with pytest.raises(CheckpointError, match=r"NaN or Inf values: \['transformer_blocks.0.attn.to_q.lora_B"):
            merge_lora(model, tmp_path / "nan.safetensors")


def test_wrong_shapes_name_the_first_modules(base, tmp_path):
    cfg, weights, _ = base
    model = load_transformer(DictSource(weights), cfg)
    config = LoraConfig(r=2, lora_alpha=2.0, target_modules=("to_q",), use_rslora=False)
    a, b = np.zeros((2, cfg.inner_dim + 1), np.float32), np.zeros((cfg.inner_dim, 2), np.float32)
    modules = {f"transformer_blocks.{i}.attn.to_q": (a, b) for i in range(2)}
    _peft_file(tmp_path / "wide.safetensors", modules, config)
    with pytest.raises(CheckpointError, match=r"(?s)shapes of 2 module\(s\) do not fit .*transformer_blocks.0.attn.to_q: A"):
        merge_lora(model, tmp_path / "wide.safetensors")


def test_add_lora_rejects_targets_matching_nothing(base):
    cfg, weights, _ = base
    model = load_transformer(DictSource(weights), cfg)
    with pytest.raises(ValueError, match="match no linear layer"):
        add_lora(model, LoraConfig(r=2, target_modules=("conv_in",)), nnx.Rngs(0))
    with pytest.raises(ValueError, match="only some of the stacked layers"):
        add_lora(model, LoraConfig(r=2, target_modules=r"transformer_blocks\.0\.attn\.to_q"), nnx.Rngs(0))
    assert len(linear_sites(model)) > 0


def test_frozen_weights_in_the_compute_dtype_change_nothing(base, golden_lora):
    """``freeze_in_compute_dtype`` (the LoRA trainer) stores the frozen Dense weights of a bfloat16
    model in bfloat16: the forward is bit-identical and the adapters stay float32."""
    cfg, weights, io = base
    model = load_transformer(DictSource(weights), dataclasses.replace(cfg, dtype="bfloat16"))
    add_lora(model, LoraConfig(r=4, lora_alpha=4.0, target_modules=("to_q", "to_v"), use_rslora=False), nnx.Rngs(0))
    before = _forward(model, io)
    assert freeze_in_compute_dtype(model) > 0
    dense = [node for _, node in nnx.iter_graph(model) if isinstance(node, Dense)]
    assert dense and all(d.kernel.dtype == jnp.bfloat16 and (d.bias is None or d.bias.dtype == jnp.bfloat16)
                         for d in dense)
    assert all(v.dtype == jnp.float32 for _, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)))
    np.testing.assert_array_equal(_forward(model, io), before)


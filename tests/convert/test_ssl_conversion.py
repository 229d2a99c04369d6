"""Converting the REPA encoders: every naming and file format, the released sizes, refused pickles."""

import math
import os
import shutil

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from acestep_jax.convert import CheckpointError, ManifestSource, check_rules, param_shapes
from acestep_jax.convert import ssl as ssl_convert
from acestep_jax.convert.checkpoint import load_component
from acestep_jax.convert.components import SSL_COMPONENTS
from acestep_jax.convert.hub import DownloadError
from acestep_jax.convert.ssl import IGNORED, MERT, MHUBERT, convert_ssl, hubert_rules, resolve_ssl
from acestep_jax.convert.torch_pickle import TorchBinSource
from acestep_jax.models.ssl import HubertModel
from acestep_jax.nn import abstract_model
from acestep_jax.presets import released_ssl_config
from tests.helpers import golden_root
from tests.models.test_ssl import golden_hubert

POS = "encoder.pos_conv_embed.conv"


def _flat(model):
    return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}


def _model_folder(tmp_path, name: str, tensors: dict | None = None, weights_file: str | None = None):
    """A Hugging Face-style folder with the golden ``ssl/<name>`` config and the given weights."""
    src = golden_root() / "ssl" / name
    folder = tmp_path / f"{name}-hf"
    folder.mkdir()
    shutil.copyfile(src / "config.json", folder / "config.json")
    if tensors is not None:
        save_file(tensors, str(folder / "model.safetensors"))
    else:
        shutil.copyfile(src / weights_file, folder / "pytorch_model.bin")
    return folder


def _golden_tensors(name: str) -> dict:
    return load_file(golden_root() / "ssl" / name / "weights.safetensors")


def test_components_are_registered():
    assert SSL_COMPONENTS == {"mert": MERT, "m-hubert": MHUBERT}
    assert MERT.hf_folder == "m-a-p/MERT-v1-330M" and MHUBERT.hf_folder == "utter-project/mHuBERT-147"


@pytest.mark.parametrize("naming", ["parametrizations", "folded", "hubert_prefix"])
def test_weight_norm_namings_and_prefix_convert_alike(tmp_path, naming):
    name = "hubert_group_postln"
    tensors = _golden_tensors(name)
    g, v = tensors.pop(f"{POS}.weight_g"), tensors.pop(f"{POS}.weight_v")
    if naming == "parametrizations":
        tensors[f"{POS}.parametrizations.weight.original0"] = g
        tensors[f"{POS}.parametrizations.weight.original1"] = v
    else:
        tensors[f"{POS}.weight"] = g * v / np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=(0, 1), keepdims=True))
        tensors[f"{POS}.weight"] = tensors[f"{POS}.weight"].astype(np.float32)
    if naming == "hubert_prefix":
        tensors = {f"hubert.{k}": t for k, t in tensors.items()}
    dst = tmp_path / "converted"
    count = convert_ssl(_model_folder(tmp_path, name, tensors), dst, MHUBERT, progress=False)
    loaded, direct = _flat(load_component(dst, MHUBERT)), _flat(golden_hubert(name))
    assert loaded.keys() == direct.keys() and count == sum(a.size for a in direct.values())
    for k in direct:
        np.testing.assert_allclose(loaded[k], direct[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_pytorch_bin_loads_the_same_weights(tmp_path):
    name = "hubert_layer_preln"
    from_bin = TorchBinSource(golden_root() / "ssl" / name / "pytorch_model.bin")
    expected = _golden_tensors(name)
    assert set(from_bin.keys()) == set(expected)
    for k, t in expected.items():
        assert from_bin.shape(k) == t.shape and from_bin.dtype(k) == t.dtype
        np.testing.assert_array_equal(from_bin.get(k), t, err_msg=k)
    dst = tmp_path / "converted"
    convert_ssl(_model_folder(tmp_path, name, weights_file="pytorch_model.bin"), dst, MERT, progress=False)
    loaded, direct = _flat(load_component(dst, MERT)), _flat(golden_hubert(name))
    for k in direct:
        np.testing.assert_array_equal(loaded[k], direct[k], err_msg=k)


def test_pickled_code_is_refused_and_nothing_runs(tmp_path, monkeypatch, capfd):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    path = golden_root() / "ssl" / "hubert_layer_preln" / "forbidden_object.bin"
    with pytest.raises(CheckpointError, match=r"posix\.system.*not a tensor"):
        TorchBinSource(path)
    folder = _model_folder(tmp_path, "hubert_layer_preln", weights_file="forbidden_object.bin")
    dst = tmp_path / "converted"
    with pytest.raises(CheckpointError, match=r"posix\.system"):
        convert_ssl(folder, dst, MERT, progress=False)
    assert calls == [] and "this-pickle-runs-code" not in capfd.readouterr().out
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_damaged_files_are_refused(tmp_path):
    src = golden_root() / "ssl" / "hubert_layer_preln" / "pytorch_model.bin"
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(src.read_bytes()[:-2000])
    with pytest.raises(CheckpointError, match="truncated|not a zip"):
        TorchBinSource(truncated)
    legacy = tmp_path / "legacy.bin"
    legacy.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(CheckpointError, match="not a zip-format"):
        TorchBinSource(legacy)


def test_missing_tensor_is_refused_before_writing(tmp_path):
    tensors = _golden_tensors("hubert_group_postln")
    del tensors["encoder.layers.1.attention.q_proj.weight"]
    dst = tmp_path / "converted"
    folder = _model_folder(tmp_path, "hubert_group_postln", tensors)
    with pytest.raises(CheckpointError, match=r"(?s)-hf does not match.*missing tensors.*layers\.1\.attention\.q_proj"):
        convert_ssl(folder, dst, MHUBERT, progress=False)
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def _reference_listing(cfg) -> dict[str, tuple[int, ...]]:
    """Every tensor of transformers' ``HubertModel`` state dict for ``cfg`` (weight norm as g / v)."""
    t, cin, h = {}, 1, cfg.hidden_size
    for i, (cout, k) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel)):
        pre = f"feature_extractor.conv_layers.{i}"
        t[f"{pre}.conv.weight"] = (cout, cin, k)
        if cfg.conv_bias:
            t[f"{pre}.conv.bias"] = (cout,)
        if cfg.feat_extract_norm == "layer" or i == 0:
            t[f"{pre}.layer_norm.weight"] = t[f"{pre}.layer_norm.bias"] = (cout,)
        cin = cout
    t["feature_projection.layer_norm.weight"] = t["feature_projection.layer_norm.bias"] = (cin,)
    t["feature_projection.projection.weight"], t["feature_projection.projection.bias"] = (h, cin), (h,)
    k, groups = cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups
    t[f"{POS}.weight_g"], t[f"{POS}.weight_v"], t[f"{POS}.bias"] = (1, 1, k), (h, h // groups, k), (h,)
    t["encoder.layer_norm.weight"] = t["encoder.layer_norm.bias"] = (h,)
    for i in range(cfg.num_hidden_layers):
        pre = f"encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[f"{pre}.attention.{proj}.weight"], t[f"{pre}.attention.{proj}.bias"] = (h, h), (h,)
        ff, inner = f"{pre}.feed_forward", cfg.intermediate_size
        t[f"{ff}.intermediate_dense.weight"], t[f"{ff}.intermediate_dense.bias"] = (inner, h), (inner,)
        t[f"{ff}.output_dense.weight"], t[f"{ff}.output_dense.bias"] = (h, inner), (h,)
        for norm in ("layer_norm", "final_layer_norm"):
            t[f"{pre}.{norm}.weight"] = t[f"{pre}.{norm}.bias"] = (h,)
    t["masked_spec_embed"] = (h,)
    return t


@pytest.mark.parametrize("name", ["mert", "m-hubert"])
def test_released_sizes_map_every_tensor(name):
    cfg = released_ssl_config(name)
    listing = _reference_listing(cfg)
    source = ManifestSource({"tensors": {k: {"shape": s, "dtype": "float32"} for k, s in listing.items()}})
    abstract = abstract_model(lambda r: HubertModel(cfg, rngs=r))
    plan = check_rules(hubert_rules(cfg), source, param_shapes(abstract), ignore=IGNORED)
    converted = sum(math.prod(s.shape) for s in plan.shapes.values())
    folded = ("masked_spec_embed", f"{POS}.weight_g")  # unused; folded into the kernel
    assert converted == sum(math.prod(s) for k, s in listing.items() if k not in folded)


def test_hub_ids_download_once_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ACESTEP_JAX_CACHE", str(tmp_path / "cache"))
    folder = _model_folder(tmp_path, "hubert_layer_preln", weights_file="pytorch_model.bin")
    patterns = []

    def fake_snapshot(repo_id, allow_patterns, **_):
        patterns.append((repo_id, allow_patterns))
        return str(folder)  # no safetensors there: the .bin download follows

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    converted = resolve_ssl("m-a-p/MERT-v1-330M", MERT, progress=False)
    assert [p[0] for p in patterns] == ["m-a-p/MERT-v1-330M"] * 2
    assert "*.safetensors" in patterns[0][1] and "pytorch_model*.bin" in patterns[1][1]
    assert converted.is_relative_to(tmp_path / "cache") and ssl_convert.is_converted(converted)
    stamp = (converted / "params" / "index.json").stat().st_mtime_ns
    assert resolve_ssl("m-a-p/MERT-v1-330M", MERT, progress=False) == converted
    assert (converted / "params" / "index.json").stat().st_mtime_ns == stamp
    model = ssl_convert.load_ssl(converted, MERT, dtype="bfloat16", param_dtype="bfloat16", progress=False)
    assert model.cfg.dtype == "bfloat16" and model.cfg.do_stable_layer_norm

    def offline(*_, **__):
        raise OSError("Network is unreachable\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DownloadError, match=r"could not download the model utter-project/mHuBERT-147 .*"
                       r"\(OSError: Network is unreachable\); pass a local folder instead$"):
        resolve_ssl("utter-project/mHuBERT-147", MHUBERT, progress=False)
    assert resolve_ssl(converted, MERT) == converted
    with pytest.raises(FileNotFoundError, match="not a folder"):
        resolve_ssl(tmp_path / "missing", MERT)
    with pytest.raises(CheckpointError, match="neither a converted"):
        resolve_ssl(tmp_path / "cache", MERT)

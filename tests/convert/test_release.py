"""Converting a reference-layout checkpoint folder, resolving checkpoints for sampling, exporting back."""

import json
import os

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from acestep_jax.cli.convert import main as convert_main
from acestep_jax.convert import CheckpointError, release
from acestep_jax.convert.checkpoint import load_component
from acestep_jax.convert.components import COMPONENTS, TRANSFORMER
from acestep_jax.convert.transformer import load_transformer
from acestep_jax.models.transformer import TransformerConfig
from tests.fake_checkpoint import build_reference_folder


@pytest.fixture(scope="module")
def converted(reference_dir, tmp_path_factory, lyrics_vocab_path):
    dst = tmp_path_factory.mktemp("out") / "converted"
    release.convert_checkpoint(reference_dir, dst, lyrics_vocab=lyrics_vocab_path, progress=False)
    return dst


def _flat(model):
    return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}


def test_converted_folder_is_complete(converted, reference_dir, lyrics_vocab_path):
    manifest = release.read_manifest(converted)
    assert set(manifest["components"]) == set(COMPONENTS)
    assert manifest["num_params"] == sum(c["num_params"] for c in manifest["components"].values())
    for name in COMPONENTS:
        assert (converted / name / "config.json").is_file()
    assert (converted / "tokenizer" / "tokenizer.json").is_file()
    assert (converted / "lyrics_vocab.json").read_bytes() == lyrics_vocab_path.read_bytes()
    assert not [p for p in converted.parent.iterdir() if ".tmp-" in p.name]


def test_loaded_transformer_equals_direct_conversion(converted, reference_dir):
    folder = reference_dir / "ace_step_transformer"
    cfg = TransformerConfig.from_dict(json.loads((folder / "config.json").read_text()))
    direct = _flat(load_transformer(folder, cfg))
    loaded = _flat(load_component(converted / "transformer", TRANSFORMER))
    assert direct.keys() == loaded.keys()
    for k in direct:
        np.testing.assert_array_equal(loaded[k], direct[k], err_msg=k)


def test_bfloat16_conversion(reference_dir, tmp_path, lyrics_vocab_path):
    dst = tmp_path / "bf16"
    release.convert_checkpoint(reference_dir, dst, param_dtype="bfloat16", names=["transformer"],
                               lyrics_vocab=lyrics_vocab_path, progress=False)
    model = load_component(dst / "transformer", TRANSFORMER)
    # the depthwise time convolution's taps and biases stay float32, whatever param_dtype is
    assert {k: str(v.dtype) for k, v in _flat(model).items() if str(v.dtype) != "bfloat16"} == {
        f"blocks/ff/{n}": "float32" for n in ("dw_value", "dw_gate", "dw_value_bias", "dw_gate_bias")}
    assert release.read_manifest(dst)["param_dtype"] == "bfloat16"


def test_truncated_file_is_refused_and_nothing_written(reference_dir, tmp_path, lyrics_vocab_path):
    broken = tmp_path / "broken"
    build_reference_folder(broken)
    f = broken / "ace_step_transformer" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    dst = tmp_path / "out"
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        release.convert_checkpoint(broken, dst, lyrics_vocab=lyrics_vocab_path, progress=False)
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_wrong_weights_are_refused_and_nothing_written(reference_dir, tmp_path, lyrics_vocab_path):
    broken = tmp_path / "broken"
    build_reference_folder(broken)
    cfg_file = broken / "ace_step_transformer" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["num_layers"] += 1
    cfg_file.write_text(json.dumps(cfg))
    dst = tmp_path / "out"
    added = rf"(?s)missing tensors .*transformer_blocks\.{cfg['num_layers'] - 1}\."
    with pytest.raises(CheckpointError, match=added):
        release.convert_checkpoint(broken, dst, lyrics_vocab=lyrics_vocab_path, progress=False)
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_incomplete_folder_and_existing_output(tmp_path, converted, reference_dir):
    (tmp_path / "ace_step_transformer").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        release.convert_checkpoint(tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        release.convert_checkpoint(reference_dir, converted, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        release.convert_checkpoint(tmp_path / "nowhere", tmp_path / "out2", progress=False)


def test_resolve_checkpoint(converted, reference_dir, tmp_path, monkeypatch, lyrics_vocab_path):
    monkeypatch.setenv("ACESTEP_JAX_CACHE", str(tmp_path / "cache"))
    assert release.resolve_checkpoint(converted) == converted
    (reference_dir / "lyrics_vocab.json").write_bytes(lyrics_vocab_path.read_bytes())
    try:
        cached = release.resolve_checkpoint(reference_dir, progress=False)
        assert release.is_converted(cached) and cached.is_relative_to(tmp_path / "cache")
        mtime = (cached / release.MANIFEST).stat().st_mtime_ns
        assert release.resolve_checkpoint(reference_dir, progress=False) == cached  # reused, not redone
        assert (cached / release.MANIFEST).stat().st_mtime_ns == mtime

        calls = []
        monkeypatch.setattr(release, "download", lambda repo_id: calls.append(repo_id) or reference_dir)
        from_hub = release.resolve_checkpoint("ACE-Step/ACE-Step-v1-3.5B", progress=False)
        assert calls == ["ACE-Step/ACE-Step-v1-3.5B"] and release.is_converted(from_hub)
    finally:
        os.remove(reference_dir / "lyrics_vocab.json")
    with pytest.raises(CheckpointError, match="neither a converted"):
        release.resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        release.resolve_checkpoint(tmp_path / "missing" / "dir")


def test_export_round_trip_is_bit_exact(converted, reference_dir, tmp_path):
    assert convert_main(["--to-reference", str(converted), str(tmp_path / "export"), "--quiet"]) == 0
    out = tmp_path / "export" / "ace_step_transformer"
    original = load_file(reference_dir / "ace_step_transformer" / "diffusion_pytorch_model.safetensors")
    exported = load_file(out / "diffusion_pytorch_model.safetensors")
    assert exported.keys() == original.keys()
    for k in original:
        np.testing.assert_array_equal(exported[k], original[k], err_msg=k)
    cfg = json.loads(out.joinpath("config.json").read_text())
    ref_cfg = json.loads((reference_dir / "ace_step_transformer" / "config.json").read_text())
    assert TransformerConfig.from_dict(cfg) == TransformerConfig.from_dict(ref_cfg)
    assert "param_dtype" not in cfg and "remat" not in cfg


def test_cli_convert_reports_errors(tmp_path, capsys):
    assert convert_main([str(tmp_path / "nowhere"), str(tmp_path / "out"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err

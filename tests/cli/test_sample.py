"""``sample.py``: argument errors fail before any model loads; outputs and reloadable parameters."""

import errno
import json

import numpy as np
import pytest
import soundfile as sf

from acestep_jax.cli.sample import main
from acestep_jax.nn import abstract_model


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--duration", "-3"], "--duration: must be in (0, 240] seconds, got -3"),
        (["--scheduler", "ddim"], "argument --scheduler: invalid choice: 'ddim'"),
        (["--cfg-type", "nope"], "argument --cfg-type: invalid choice: 'nope'"),
        (["--steps", "0"], "--steps: must be in [1, 1000], got 0"),
        (["--guidance-scale", "201"], "--guidance-scale: must be in [0, 200], got 201"),
        (["--task", "repaint"], "--src-audio: is required by task 'repaint'"),
        (["--task", "edit", "--src-audio", "/nonexistent.wav", "--edit-target-prompt", "x",
          "--edit-target-lyrics", "y"], "--src-audio: /nonexistent.wav does not exist"),
        (["--batch", "2", "--seeds", "1", "2", "3"], "--seeds needs 1 or --batch (2) values"),
        (["--seeds", "-1"], "--seeds[0]: must be in [0, 4294967295], got -1"),
        (["--oss-steps", "3,x"], "--oss-steps takes integers (space- or comma-separated), got 3,x"),
        (["--out", "song.aiff"], "output format 'aiff'"),
        (["--lora", "a", "--lora", "b", "--lora-weight", "0.5"], "--lora-weight given 1 time(s) for 2 --lora"),
        (["--lora", "a", "--lora", "b", "--lora", "c", "--lora-scale", "config", "--lora-scale", "config"],
         "--lora-scale given 2 times for 3 --lora"),
        (["--lora-weight", "0.5"], "--lora-weight / --lora-scale given without --lora"),
        (["--lora", "/nonexistent/lora"], "--lora /nonexistent/lora does not exist"),
    ],
)
def test_bad_arguments_fail_early(argv, message, capsys):
    try:
        code = main(["--tiny-random", *argv])
    except SystemExit as e:  # argparse's own errors, reported on one line
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_repaint_window_outside_source(tmp_path, capsys):
    src = tmp_path / "src.wav"
    sf.write(src, np.zeros((44100 * 2, 2), np.float32), 44100)
    assert main(["--tiny-random", "--task", "repaint", "--src-audio", str(src),
                 "--repaint-start", "1", "--repaint-end", "9"]) == 2
    assert "outside the source audio" in capsys.readouterr().err


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    """One compilation cache for the generating tests (same shapes: compiled once)."""
    return str(tmp_path_factory.mktemp("xla"))


def test_tiny_random_writes_audio_and_reloadable_params(tmp_path, xla_cache):
    out = tmp_path / "demo.flac"
    argv = ["--tiny-random", "--prompt", "rock, guitar", "--duration", "2", "--steps", "3", "--batch", "2",
            "--seeds", "3", "4", "--out", str(out), "--compile-cache", xla_cache, "--quiet"]
    assert main(argv) == 0
    paths = [tmp_path / f"demo_{i}.flac" for i in range(2)]
    audio = [sf.read(p, dtype="float32")[0] for p in paths]
    assert all(a.shape[1] == 2 and np.isfinite(a).all() for a in audio)
    assert not np.allclose(audio[0], audio[1])  # different seeds
    record = json.loads(paths[1].with_suffix(".json").read_text())
    # the items share the omega mean of their batch: the record reruns the whole batch
    assert record["seeds"] == [3, 4] and record["prompt"] == "rock, guitar" and record["infer_steps"] == 3
    assert not record["batch_invariant"] and record["output"]["index"] == 1
    assert record["output"]["audio_path"] == str(paths[1])

    again = tmp_path / "again.flac"
    assert main(["--params-json", str(paths[1].with_suffix(".json")), "--out", str(again), "--quiet"]) == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "again_1.flac", dtype="float32")[0], audio[1])


def test_output_paths():
    from pathlib import Path

    from acestep_jax.cli.sample import output_paths, parse_args

    assert output_paths(parse_args(["--out", "o/song.flac"]), 1) == [Path("o/song.flac")]
    assert output_paths(parse_args(["--out", "o/song.flac"]), 2) == [Path("o/song_0.flac"), Path("o/song_1.flac")]
    assert output_paths(parse_args(["--out", "o/dir", "--format", "ogg"]), 1) == [Path("o/dir/dir.ogg")]


def _tiny_lora(folder, target: str, seed: int) -> str:
    """A random rank-2 adapter on every ``target`` layer of the --tiny-random transformer."""
    from flax import nnx
    from safetensors.numpy import save_file

    from acestep_jax.lora import ADAPTER_FILE, linear_sites
    from acestep_jax.models.transformer import ACEStepTransformer
    from acestep_jax.presets import preset_config

    abstract = abstract_model(lambda r: ACEStepTransformer(preset_config("tiny", "transformer"), rngs=r))
    shapes = {"/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(abstract))}
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, site in linear_sites(abstract).items():
        if name.endswith("." + target):
            fan_in, fan_out = shapes[f"{site.path}/kernel"][-2:]
            tensors[f"{name}.lora_A.weight"] = rng.normal(0, 0.3, (2, fan_in)).astype(np.float32)
            tensors[f"{name}.lora_B.weight"] = rng.normal(0, 0.3, (fan_out, 2)).astype(np.float32)
    folder.mkdir()
    save_file(tensors, str(folder / ADAPTER_FILE))
    return str(folder)


def test_several_loras_are_recorded_and_reloaded(tmp_path, xla_cache):
    a, b = _tiny_lora(tmp_path / "a", "to_q", 1), _tiny_lora(tmp_path / "b", "to_v", 2)
    # the shapes of test_tiny_random_writes_audio_and_reloadable_params: its compiled programs are reused
    common = ["--tiny-random", "--prompt", "rock, guitar", "--duration", "2", "--steps", "3", "--batch", "2",
              "--seeds", "3", "4", "--quiet", "--compile-cache", xla_cache]
    assert main([*common, "--lora", a, "--lora-weight", "0.8", "--lora", b, "--lora-weight", "0.5",
                 "--lora-scale", "config", "--out", str(tmp_path / "song.wav")]) == 0
    record = json.loads((tmp_path / "song_1.json").read_text())
    assert record["lora"] == [{"path": a, "weight": 0.8, "scale": "config"},
                              {"path": b, "weight": 0.5, "scale": "config"}]
    assert main(["--params-json", str(tmp_path / "song_1.json"), "--out", str(tmp_path / "again.wav"), "--quiet",
                 "--compile-cache", xla_cache]) == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "again_1.wav")[0], sf.read(tmp_path / "song_1.wav")[0])


def test_params_json_lora_forms(tmp_path):
    from acestep_jax.cli.sample import lora_specs, parse_args
    from acestep_jax.lora import LoraSpec

    x, y = str(tmp_path / "x"), str(tmp_path / "y")
    (tmp_path / "x").mkdir(), (tmp_path / "y").mkdir()
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"prompt": "p", "lora": x, "lora_weight": 0.7}))  # a path and its weight
    assert lora_specs(parse_args(["--params-json", str(one)])) == [LoraSpec(x, 0.7)]
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"prompt": "p", "lora": [{"path": x, "weight": 0.8, "scale": "reference"},
                                        {"path": y, "weight": 0.5, "scale": "config"}]}))
    assert lora_specs(parse_args(["--params-json", str(new)])) == [LoraSpec(x, 0.8), LoraSpec(y, 0.5, "config")]
    # a flag on the command line replaces the saved values of that flag
    args = parse_args(["--params-json", str(new), "--lora-weight", "0.1", "--lora-weight", "0.2"])
    assert [s.weight for s in lora_specs(args)] == [0.1, 0.2]
    assert parse_args(["--params-json", str(new), "--lora", "z"]).lora == ["z"]


def test_shard_pads_an_invariant_batch_with_fillers(tmp_path):
    """--batch 3 over 8 devices: fillers pad the batch to 8 and only the 3 requested outputs are written."""
    out = tmp_path / "pad.wav"
    assert main(["--tiny-random", "--duration", "1", "--steps", "2", "--batch", "3", "--shard", "--batch-invariant",
                 "--seeds", "1", "2", "3", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"pad_{i}.{ext}" for i in range(3) for ext in ("json", "wav")]
    record = json.loads((tmp_path / "pad_2.json").read_text())
    assert record["seeds"] == [3] and record["batch_invariant"] and record["output"]["index"] == 2


def test_loras_by_hub_id_download_once(tmp_path, xla_cache, monkeypatch, capsys):
    import huggingface_hub

    folder = _tiny_lora(tmp_path / "hub", "to_q", 3)
    calls = []

    def fake_snapshot(repo_id, allow_patterns, **_):
        calls.append(repo_id)
        return folder

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    common = ["--tiny-random", "--prompt", "rock, guitar", "--duration", "2", "--steps", "3", "--batch", "2",
              "--seeds", "3", "4", "--quiet", "--compile-cache", xla_cache]
    assert main([*common, "--lora", "ACE-Step/ACE-Step-v1-chinese-rap-LoRA", "--out", str(tmp_path / "hub.wav")]) == 0
    assert main([*common, "--lora", folder, "--out", str(tmp_path / "local.wav")]) == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "hub_1.wav")[0], sf.read(tmp_path / "local_1.wav")[0])
    record = json.loads((tmp_path / "hub_1.json").read_text())
    assert record["lora"][0]["path"] == "ACE-Step/ACE-Step-v1-chinese-rap-LoRA"
    assert calls == ["ACE-Step/ACE-Step-v1-chinese-rap-LoRA"]

    def offline(*_, **__):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    capsys.readouterr()
    assert main([*common, "--lora", "owner/missing-lora", "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not download the LoRA owner/missing-lora" in err


class _FullDisk:
    """A file whose writes store a little, then fail as a full disk does (ENOSPC)."""

    def __init__(self, path, mode):
        self._f = open(path, mode)  # noqa: SIM115 - closed by __exit__

    def write(self, data):
        self._f.write(bytes(data)[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, xla_cache, monkeypatch, capsys):
    from acestep_jax.codec import audio_io

    monkeypatch.setattr(audio_io, "open", _FullDisk, raising=False)
    argv = ["--tiny-random", "--duration", "2", "--steps", "3", "--batch", "2", "--out", str(tmp_path / "x.wav"),
            "--compile-cache", xla_cache, "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on device writing ") and err.count("\n") == 1, err
    assert "free some space or write elsewhere" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []

"""``sample.py``: argument errors fail before any model loads; outputs and reloadable parameters."""

import json

import numpy as np
import pytest
import soundfile as sf

from acestep_jax.cli.sample import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--duration", "-3"], "duration must be > 0"),
        (["--scheduler", "ddim"], "scheduler_type must be one of"),
        (["--cfg-type", "nope"], "cfg_type must be one of"),
        (["--steps", "0"], "infer_steps must be a positive integer"),
        (["--task", "repaint"], "--task repaint needs --src-audio"),
        (["--task", "edit", "--src-audio", "/nonexistent.wav"], "does not exist"),
        (["--batch", "2", "--seeds", "1", "2", "3"], "--seeds needs 1 or --batch (2) values"),
        (["--oss-steps", "3,x"], "--oss-steps must be comma-separated integers"),
        (["--out", "song.aiff"], "output format 'aiff'"),
    ],
)
def test_bad_arguments_fail_early(argv, message, capsys):
    assert main(["--tiny-random", *argv]) == 2
    assert message in capsys.readouterr().err


def test_repaint_window_outside_source(tmp_path, capsys):
    src = tmp_path / "src.wav"
    sf.write(src, np.zeros((44100 * 2, 2), np.float32), 44100)
    assert main(["--tiny-random", "--task", "repaint", "--src-audio", str(src),
                 "--repaint-start", "1", "--repaint-end", "9"]) == 2
    assert "outside the source audio" in capsys.readouterr().err


def test_tiny_random_writes_audio_and_reloadable_params(tmp_path):
    out = tmp_path / "demo.flac"
    argv = ["--tiny-random", "--prompt", "rock, guitar", "--duration", "2", "--steps", "3", "--batch", "2",
            "--seeds", "3", "4", "--out", str(out), "--compile-cache", str(tmp_path / "xla"), "--quiet"]
    assert main(argv) == 0
    paths = [tmp_path / f"demo_{i}.flac" for i in range(2)]
    audio = [sf.read(p, dtype="float32")[0] for p in paths]
    assert all(a.shape[1] == 2 and np.isfinite(a).all() for a in audio)
    assert not np.allclose(audio[0], audio[1])  # different seeds
    record = json.loads(paths[1].with_suffix(".json").read_text())
    assert record["seed"] == 4 and record["prompt"] == "rock, guitar" and record["infer_steps"] == 3
    assert record["audio_path"] == str(paths[1])

    again = tmp_path / "again.flac"
    assert main(["--params-json", str(paths[1].with_suffix(".json")), "--out", str(again), "--quiet"]) == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "again_1.flac", dtype="float32")[0], audio[1])


def test_output_paths():
    from pathlib import Path

    from acestep_jax.cli.sample import output_paths, parse_args

    assert output_paths(parse_args(["--out", "o/song.flac"]), 1) == [Path("o/song.flac")]
    assert output_paths(parse_args(["--out", "o/song.flac"]), 2) == [Path("o/song_0.flac"), Path("o/song_1.flac")]
    assert output_paths(parse_args(["--out", "o/dir", "--format", "ogg"]), 1) == [Path("o/dir/dir.ogg")]

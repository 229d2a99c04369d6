"""``train.py`` user errors: one line naming the culprit, exit code 2, no traceback, nothing created."""

import pytest

from acestep_jax.cli.train import main

BASE = ["--config", "train_tiny", "--tiny-random", "--output-dir", "run"]

CASES = [
    (["--set", "optim.learning_rat=1e-4"], "unknown keys in config.optim: ['learning_rat']"),
    (["--set", "optim.learning_rate=abc"], "config.optim.learning_rate must be a finite number, got 'abc'"),
    (["--set", "optim.max_steps=2.5"], "config.optim.max_steps must be an integer, got 2.5"),
    (["--set", "run.progress=3"], "config.run.progress must be true or false, got 3"),
    (["--set", "data.frame_buckets=[1, \"x\"]"], "config.data.frame_buckets[1] must be an integer"),
    (["--set", "optim=3"], "config.optim must be a mapping"),
    (["--set", "nothing"], "--set 'nothing' is not section.key=value"),
    (["--data", "missing_records"], "data.path missing_records does not exist"),
    (["--checkpoint", "./missing_ckpt"], "model.checkpoint ./missing_ckpt is neither a local checkpoint nor a Hub id"),
    (["--lora", "missing_lora.json"], "model.lora missing_lora.json does not exist"),
    (["--set", "model.dtype=\"float64\""], "model.dtype: unknown dtype 'float64'"),
    (["--set", "model.remat=\"some\""], "model.remat must be one of"),
    (["--set", "mesh.rules={\"embd\": null}"], "unknown logical axis 'embd'"),
    (["--set", "mesh.data=3"], "does not divide 8 devices"),
    (["--set", "data.batch_size=3"], "data.batch_size 3 is not divisible by the mesh's data×fsdp = 8"),
    (["--set", "run.eval_fn=\"nocolon\""], "run.eval_fn must be 'module:function'"),
    (["--output-dir", "a_file"], "run.output_dir a_file is a file, not a folder"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_user_errors_are_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    assert main([*BASE, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert message in err, err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("content, message", [
    ("{\"optim\": {", "config.json is not valid JSON (Expecting property name enclosed in double quotes at line 1"),
    ("[1, 2]", "config must be a mapping, got list"),
])
def test_bad_config_files(content, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text(content)
    assert main(["--config", "config.json", "--output-dir", "run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_missing_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--config", "nope.yaml"]) == 2
    assert "training config not found: nope.yaml (packaged configs: train_lora, train_tiny)" in capsys.readouterr().err

"""``train.py`` user errors: one line naming the culprit, exit code 2, no traceback, nothing created."""

import json

import pytest

from acestep_jax.cli.train import build_parser, check_resume, main, resolve_config
from tests.helpers import run_on_small_disk, small_disk

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
    (["--steps", "0"], "run.steps must be at least 1, got 0 (--steps"),
    (["--steps", "-1"], "run.steps must be at least 1, got -1"),
    (["--data", "empty"], "data.path: no .array_record files in empty; give records written by acestep-preprocess"),
    (["--data", "junk"], "data.path junk is not readable training records ("),
    (["--data", "junk/a.array_record"], "data.path junk/a.array_record is not readable training records"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_user_errors_are_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.array_record").write_bytes(b"not records" * 10000)
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


def test_resuming_with_another_config_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = [*BASE, "--set", "data.batch_size=8"]
    saved = resolve_config(build_parser().parse_args(base)).to_dict()
    (tmp_path / "run" / "checkpoints" / "2").mkdir(parents=True)
    (tmp_path / "run" / "train_config.json").write_text(json.dumps(saved, default=str))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main([*base, "optim.learning_rate=1e-5", "loss.shift=2.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert ("the run in run was trained with another config (loss.shift: 3.0 -> 2.0, optim.learning_rate: "
            "0.001 -> 1e-05); resuming needs the same config: use another --output-dir, or --no-resume") in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    (tmp_path / "run" / "train_config.json").write_text("{oops")
    assert main(base) == 2
    assert "run/train_config.json is unreadable" in capsys.readouterr().err
    (tmp_path / "run" / "train_config.json").write_text(json.dumps(saved, default=str))
    for argv in (["optim.max_steps=9", "--steps", "5"], ["optim.learning_rate=1e-5"]):
        args = build_parser().parse_args([*base, *argv])
        check_resume(resolve_config(args), resume="--steps" in argv)  # what may change, or --no-resume


def test_a_full_disk_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    import shutil

    from acestep_jax import files

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    assert main([*BASE, "--set", "data.batch_size=8", "run.progress=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "error: no space left on device for the checkpoint of step 0 in " in err and "free some space" in err
    assert not list((tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.slow
@small_disk
def test_a_disk_that_fills_during_a_checkpoint_is_one_line(tmp_path):
    """The disk fills during orbax's asynchronous checkpoint write (after the free-space check passed):
    one line, exit 2, no writer-thread tracebacks, and no unfinished checkpoint left behind."""
    skip_check = "from acestep_jax.convert import checkpoint\nfrom acestep_jax.training import trainer\n" \
                 "checkpoint.check_free_space = trainer.check_free_space = lambda *a: None"
    run = tmp_path / "disk" / "run"
    argv = ["--config", "train_tiny", "--tiny-random", "--output-dir", str(run), "--steps", "1",
            "--set", "run.progress=false", "data.batch_size=8", "--set", "run.save_every=1"]
    proc, left = run_on_small_disk(tmp_path / "disk", "6m", skip_check, "acestep_jax.cli.train", argv)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = [line for line in proc.stderr.splitlines() if " INFO " not in line]
    assert err == ["error: no space left on device; free some space or write elsewhere (nothing partial was kept)"], \
        proc.stderr[-3000:]
    assert not [p for p in left if "checkpoints/" in p], left


def test_set_may_be_repeated():
    args = build_parser().parse_args([*BASE, "--set", "optim.learning_rate=1e-5", "--set", "run.keep=5", "run.log_every=3"])
    cfg = resolve_config(args)
    assert (cfg.optim.learning_rate, cfg.run.keep, cfg.run.log_every) == (1e-5, 5, 3)

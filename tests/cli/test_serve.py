"""``serve.py``: bad flags fail with one line and exit 2 before any model loads."""

import pytest

from acestep_jax import loading
from acestep_jax.cli.serve import main


@pytest.mark.parametrize("argv, message", [
    (["--batch-sizes", "0,2"], "--batch-sizes must be comma-separated positive integers, got '0,2'"),
    (["--batch-sizes", "2,x"], "--batch-sizes must be comma-separated positive integers, got '2,x'"),
    (["--port", "70000"], "--port must be in 1..65535"),
    (["--max-queue", "0"], "--max-queue must be >= 1"),
    (["--max-outputs", "9", "--max-queue", "4"], "--max-outputs (9) exceeds --max-queue (4)"),
    (["--max-duration", "500"], "max_duration must be in (0, 240]"),
    (["--warmup", '{"prompt": "x", "nope": 1}'], "--warmup: nope: unknown key"),
    (["--warmup", "{"], "--warmup: Expecting property name"),
    (["--transformer", "somewhere"], "--transformer needs --checkpoint"),
])
def test_bad_flags_fail_before_models_load(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("models loaded"))
    assert main(["--tiny-random", "--state-dir", str(tmp_path / "state"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1

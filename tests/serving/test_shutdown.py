"""``serve.py`` killed with SIGTERM mid-queue finishes its running batch and journals the
queued jobs; the restarted server finishes every accepted job (a real process, 127.0.0.1)."""

import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.serving.conftest import DURATIONS, STEPS, WAIT, wait_done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(state, cache, vocab, log):
    port = _free_port()
    cmd = [sys.executable, "-m", "acestep_jax.cli.serve", "--tiny-random", "--lyrics-vocab", str(vocab),
           "--state-dir", str(state), "--port", str(port), "--batch-sizes", "1", "--max-wait-ms", "0",
           "--compile-cache", str(cache), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)


def _stop(proc, timeout=WAIT) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.mark.slow
def test_sigterm_mid_queue_and_restart_finish_every_accepted_job(tmp_path, lyrics_vocab_path):
    state, cache = tmp_path / "state", tmp_path / "xla"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - both processes write it
    proc, url = _start(state, cache, lyrics_vocab_path, log)
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            ids = [c.post("/v1/generate", json={"prompt": "rock", "duration": DURATIONS[i % 2], "infer_steps": STEPS,
                                                "seeds": [i]}).json()["id"] for i in range(4)]
            deadline = time.monotonic() + WAIT
            while c.get(f"/v1/jobs/{ids[0]}").json()["status"] == "queued":
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert _stop(proc) == 0  # after the running batch
    finally:
        _stop(proc)
    states = {p.stem: json.loads(p.read_text())["status"] for p in (state / "jobs").glob("*.json")}
    assert sorted(states) == sorted(ids) and set(states.values()) <= {"done", "queued"}
    assert states[ids[0]] == "done" and states[ids[-1]] == "queued", (states, (tmp_path / "server.log").read_text())

    proc, url = _start(state, cache, lyrics_vocab_path, log)
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            assert [wait_done(c, i)["status"] for i in ids] == ["done"] * 4
            for i in ids:
                assert c.get(f"/v1/jobs/{i}/audio").status_code == 200
    finally:
        assert _stop(proc) == 0
        log.close()

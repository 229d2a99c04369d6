"""The HTTP API over a scripted pipeline: job life cycle, the reference's /generate, validation,
fuzzed bodies, auth, the bounded queue, cancellation, metrics."""

import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.serving.conftest import FakePipe, live_server, wait_done

REQUEST = {"prompt": "rock, guitar", "duration": 0.5, "infer_steps": 2, "seeds": [7]}
REFERENCE_BODY = {  # the reference infer-api.py's /generate body, minus its server-side paths
    "bf16": True, "torch_compile": False, "audio_duration": 0.4, "prompt": "pop", "lyrics": "[verse]\nla la",
    "infer_step": 2, "guidance_scale": 15.0, "scheduler_type": "euler", "cfg_type": "apg", "omega_scale": 10.0,
    "actual_seeds": [42], "guidance_interval": 0.5, "guidance_interval_decay": 0.0, "min_guidance_scale": 3.0,
    "use_erg_tag": True, "use_erg_lyric": True, "use_erg_diffusion": True, "oss_steps": [],
    "guidance_scale_text": 0.0, "guidance_scale_lyric": 0.0,
}


@pytest.fixture
def fake():
    return FakePipe()


@pytest.fixture
def server(fake, tmp_path):
    with live_server(fake, tmp_path / "state", max_wait_s=0.0) as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_job_life_cycle(client):
    r = client.post("/v1/generate", json={**REQUEST, "seeds": [7, 8]})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}" and job["progress"]["outputs"] == 2
    view = wait_done(client, job["id"])
    assert view["status"] == "done" and view["progress"]["outputs_done"] == 2
    assert [o["seed"] for o in view["outputs"]] == [7, 8]
    for i, seed in enumerate((7, 8)):
        audio = client.get(f"/v1/jobs/{job['id']}/audio", params={"index": i})
        assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
        data, rate = sf.read(io.BytesIO(audio.content), dtype="float32")
        assert rate == FakePipe.RATE and data.shape == (500, 2) and np.allclose(data, seed / 1000)
    assert client.get(f"/v1/jobs/{job['id']}/audio", params={"index": 2}).status_code == 404
    assert client.delete(f"/v1/jobs/{job['id']}").json()["status"] == "deleted"
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert client.get("/v1/jobs/nope").status_code == 404


def test_reference_generate_endpoint(client):
    r = client.post("/generate", json=REFERENCE_BODY)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success" and body["actual_seeds"] == [42] and body["audio_duration"] == 0.4
    assert client.get(body["output_path"]).status_code == 200
    for key, value in (("checkpoint_path", "/ckpt"), ("output_path", "/tmp/x.wav"), ("device_id", 0)):
        r = client.post("/generate", json={**REFERENCE_BODY, key: value})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", key], r.text
    r = client.post("/generate", json={**REFERENCE_BODY, "duration": 3})  # the project's name: not this body
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "duration"]


@pytest.mark.parametrize("body, field", [
    ({**REQUEST, "duration": "long"}, "duration"),
    ({**REQUEST, "duration": 1e9}, "duration"),
    ({**REQUEST, "infer_steps": 10**12}, "infer_steps"),
    ({**REQUEST, "infer_steps": 2.5}, "infer_steps"),
    ({**REQUEST, "guidance_scale": True}, "guidance_scale"),
    ({**REQUEST, "seeds": [2**40]}, "seeds[0]"),
    ({**REQUEST, "seeds": list(range(20))}, "seeds"),
    ({**REQUEST, "lyrics": "\u6b4c" * 100_000}, "lyrics"),
    ({**REQUEST, "lyrics": "la " * 300}, "lyrics"),  # within the character limit, over the token limit
    ({**REQUEST, "task": "repaint"}, "src_upload"),
    ({**REQUEST, "task": "repaint", "src_upload": "0" * 32}, "src_upload"),  # no such upload
    ({**REQUEST, "task": "repaint", "src_upload": "../../etc/passwd"}, "src_upload"),
    ({**REQUEST, "src_audio": "/etc/passwd"}, "src_audio"),
    ({**REQUEST, "lora": "/some/lora"}, "lora"),
    ({**REQUEST, "scheduler_type": "ddim"}, "scheduler_type"),
    ({**REQUEST, "unknown": 1}, "unknown"),
    ({"duration": 1.0}, "prompt"),
    ({**REQUEST, "prompt": None}, "prompt"),
    ([REQUEST], "body"),
])
def test_bad_values_are_422_naming_the_field(client, body, field):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", field]


INVALID = {  # wrong types, out of range, huge, non-finite (NaN / Infinity are sent as raw JSON below)
    "duration": [None, "1", True, -1, 0, 1e308, [], {}],
    "infer_steps": [None, 2.5, "3", 0, 10**12, 1e308, True],
    "guidance_scale": [True, "x", -1, 1e308, None, []],
    "omega_scale": [1e308, -1e308, "x", {}],
    "seeds": [-1, [1, "a"], [-1], [2**70], "1,2", {}, [1.5]],
    "oss_steps": ["x", [0], [1, "a"], 5, [10**9]],
    "format": ["", "aiff", 1, None],
    "guidance_interval": [2, -0.5, "a"],
    "retake_variance": [1.5, None],
    "use_erg_tag": [1, "true", None],
    "sample_rate": [0, 44101, "48000", 1e308],
    "batch_size": [0, -1, 10**6, 1.5],
    "lyrics": [None, 1, [], "\u6b4c" * 100_000],
    "prompt": [None, 1, [], {}, "p" * 100_000],
}


def test_fuzzed_bodies_get_4xx_and_the_server_keeps_serving(client):
    rng = np.random.default_rng(0)
    raw = [b"", b"{", b"\xff\xfe", b"null", b"[[[[" * 20000, b'{"prompt": NaN}', b'{"prompt": "x", "duration": NaN}',
           b'{"prompt": "x", "duration": Infinity}', b'{"prompt": "x", "duration": -Infinity}',
           b'{"prompt": "x", "duration": 1e999}', b"x" * (2 << 20)]
    raw += [bytes(rng.integers(0, 256, 200, dtype=np.uint8)) for _ in range(5)]
    bodies = [json.dumps({**REQUEST, k: v}).encode() for k, vs in INVALID.items() for v in vs]
    bodies += [json.dumps({k: v for k, v in REQUEST.items() if k != "prompt"}).encode()]  # a missing field
    for body in raw + bodies:
        for path in ("/v1/generate", "/generate"):
            r = client.post(path, content=body, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (path, body[:80], r.status_code, r.text[:300])
    assert client.get("/healthz").json()["status"] == "ok"
    r = client.post("/v1/generate", json=REQUEST)
    assert r.status_code == 202 and wait_done(client, r.json()["id"])["status"] == "done"


def test_auth(fake, tmp_path):
    with live_server(fake, tmp_path / "state", api_key="s3cret") as s, httpx.Client(base_url=s.url) as c:
        assert c.post("/v1/generate", json=REQUEST).status_code == 401
        r = c.post("/generate", json=REFERENCE_BODY, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/metrics").status_code == 401 and c.get("/v1/jobs/x").status_code == 401
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/generate", json=REQUEST, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 202


def test_full_queue_is_429_with_retry_after(fake, tmp_path):
    fake.gate.clear()
    with live_server(fake, tmp_path / "state", max_queue=2, max_wait_s=0.0) as s, \
            httpx.Client(base_url=s.url) as c:
        first = c.post("/v1/generate", json=REQUEST).json()["id"]
        assert fake.started.wait(10)  # the first job runs (blocked), the queue is empty again
        assert c.post("/v1/generate", json={**REQUEST, "seeds": [1, 2]}).status_code == 202
        r = c.post("/v1/generate", json=REQUEST)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "acestep_rejected_total{reason=\"queue_full\"} 1" in c.get("/metrics").text
        fake.gate.set()
        assert wait_done(c, first)["status"] == "done"


def test_cancel_queued_and_running_jobs(fake, tmp_path):
    fake.gate.clear()
    with live_server(fake, tmp_path / "state", max_wait_s=0.0) as s, httpx.Client(base_url=s.url) as c:
        running = c.post("/v1/generate", json=REQUEST).json()["id"]
        assert fake.started.wait(10)
        queued = c.post("/v1/generate", json=REQUEST).json()["id"]
        assert c.get(f"/v1/jobs/{queued}").json()["queue_position"] == 0
        assert c.delete(f"/v1/jobs/{queued}").json()["status"] == "cancelled"
        assert c.delete(f"/v1/jobs/{running}").json()["status"] == "cancelled"
        fake.gate.set()
        _wait_until(lambda: len(fake.batches) == 1 and s.scheduler.queued_outputs() == 0)
        time.sleep(0.2)  # the cancelled batch's results are dropped, nothing is written
        for job in (running, queued):
            view = c.get(f"/v1/jobs/{job}").json()
            assert view["status"] == "cancelled" and view["outputs"] == []
            assert c.get(f"/v1/jobs/{job}/audio").status_code == 410  # gone: never written
        assert list((tmp_path / "state" / "outputs").iterdir()) == []
        assert c.delete("/v1/jobs/nope").status_code == 404


def test_compatible_requests_share_batches(fake, tmp_path):
    fake.gate.clear()
    with live_server(fake, tmp_path / "state", max_wait_s=0.0) as s, httpx.Client(base_url=s.url) as c:
        c.post("/v1/generate", json={**REQUEST, "seeds": [1]})
        assert fake.started.wait(10)
        # while the first batch runs: 5 outputs of one group (durations share a bucket) and 2 of another
        ids = [c.post("/v1/generate", json={**REQUEST, "duration": d, "guidance_scale": g, "seeds": [s]}).json()["id"]
               for s, d, g in ((2, 0.5, 15), (3, 1.0, 7), (4, 0.7, 3), (5, 0.5, 15), (6, 0.9, 5))]
        ids += [c.post("/v1/generate", json={**REQUEST, "infer_steps": 3, "seeds": [s]}).json()["id"] for s in (7, 8)]
        fake.gate.set()
        views = [wait_done(c, i) for i in ids]
    assert all(v["status"] == "done" for v in views)
    # the oldest group first, at most 4 per batch (sizes 1 and 4: a filler copies the first item)
    assert fake.batches == [[1], [2, 3, 4, 5], [6], [7, 8, 7, 7]]
    metrics = s.scheduler.metrics
    assert metrics.batch_items.value() == 8 and metrics.batch_slots.value() == 10


def test_failed_batch_fails_its_jobs_and_serving_goes_on(fake, client):
    fake.fail_next = True
    failed = client.post("/v1/generate", json=REQUEST).json()["id"]
    view = wait_done(client, failed)
    assert view["status"] == "failed" and "scripted failure" in view["error"]
    r = client.post("/generate", json=REFERENCE_BODY)
    assert r.status_code == 200 and r.json()["status"] == "success"


def test_metrics(client):
    job = client.post("/v1/generate", json={**REQUEST, "duration": 2.0}).json()["id"]
    wait_done(client, job)
    text = client.get("/metrics").text
    for line in ("acestep_queue_depth 0", "acestep_batches_total 1", "acestep_batch_occupancy 1",
                 "acestep_audio_seconds_total 2", 'acestep_jobs_total{status="done"} 1',
                 'acestep_stage_seconds_count{stage="diffusion"} 1', 'acestep_stage_seconds_count{stage="write"} 1',
                 'acestep_stage_seconds_count{stage="queue"} 1', "# TYPE acestep_job_seconds histogram"):
        assert line in text.splitlines(), line


def test_drain_answers_waiting_clients_and_the_journal_resumes(fake, tmp_path):
    """SIGTERM's path in process: the running batch finishes, queued jobs stay journaled and the
    next scheduler on the same folder finishes them (the subprocess test sends a real SIGTERM)."""
    fake.gate.clear()
    state = tmp_path / "state"
    with live_server(fake, state, max_wait_s=0.0) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        running = c.post("/v1/generate", json=REQUEST).json()["id"]
        assert fake.started.wait(10)
        queued = [c.post("/v1/generate", json={**REQUEST, "infer_steps": 3, "seeds": [i]}).json()["id"]
                  for i in (1, 2)]
        sync = {}
        waiter = threading.Thread(target=lambda: sync.update(r=c.post("/generate", json=REFERENCE_BODY)))
        waiter.start()
        _wait_until(lambda: s.scheduler.queued_outputs() == 3)
        s.scheduler.drain()
        waiter.join(30)
        assert sync["r"].status_code == 503 and "journaled" in sync["r"].json()["detail"]
        assert c.post("/v1/generate", json=REQUEST).status_code == 503
        assert c.get("/healthz").status_code == 503
        fake.gate.set()
        assert wait_done(c, running)["status"] == "done"
    states = {p.stem: json.loads(p.read_text())["status"] for p in (state / "jobs").glob("*.json")}
    assert states[running] == "done" and [states[q] for q in queued] == ["queued", "queued"]
    with live_server(fake, state, max_wait_s=0.0) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        assert [wait_done(c, q)["status"] for q in queued] == ["done", "done"]
        assert c.get(f"/v1/jobs/{running}/audio").status_code == 200  # finished before the restart

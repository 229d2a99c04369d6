"""The service under faults: restarts mid-job, journal states that do not validate, lowered
limits, lone surrogates, junk methods, hung-up clients, a full disk, long polls at drain,
temporary files of a killed run, wrong content types, docs behind a key, cancelled audio."""

import errno
import json
import threading
import time

import httpx
import pytest

from acestep_jax.serving import journal
from acestep_jax.serving.journal import JobStore
from acestep_jax.serving.requests import SERVER_LIMITS, Limits
from acestep_jax.serving.scheduler import DONE, QUEUED, Scheduler, SchedulerConfig
from tests.serving.conftest import FakePipe, live_server, wait_done

REQUEST = {"prompt": "rock", "duration": 0.5, "infer_steps": 2}


@pytest.fixture
def fake():
    return FakePipe()


def _scheduler(pipe, root, limits=SERVER_LIMITS, **config):
    return Scheduler(pipe, JobStore(root), SchedulerConfig(**{"batch_sizes": (1,), "max_wait_s": 0.0, **config}),
                     limits)


def _until(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_outputs_are_journaled_as_written_so_a_restart_redoes_only_the_missing(tmp_path):
    from acestep_jax.serving.requests import parse_request

    class HoldSecond(FakePipe):
        """Runs the first batch, then holds the next until ``release``."""

        def __init__(self):
            super().__init__()
            self.release = threading.Event()

        def generate(self, *args, **kwargs):
            if self.batches:
                self.started.set()
                assert self.release.wait(30)
            return super().generate(*args, **kwargs)

    fake = HoldSecond()
    first = _scheduler(fake, tmp_path)
    first.start()
    job = first.submit(parse_request({**REQUEST, "seeds": [1, 2, 3]}, SERVER_LIMITS))
    _until(lambda: fake.started.is_set() and 0 in job.outputs)
    first.drain()  # SIGTERM while the second output is generating
    fake.release.set()
    first.stop(timeout=30)
    state = json.loads((tmp_path / "jobs" / f"{job.id}.json").read_text())
    assert state["status"] == QUEUED and [o["index"] for o in state["outputs"]] == [0, 1]

    again = FakePipe()
    second = _scheduler(again, tmp_path)
    second.start()
    try:
        _until(lambda: second.job(job.id).status == DONE)
    finally:
        second.stop(timeout=30)
    assert again.batches == [[3]]  # only the missing output


def test_bad_states_are_set_aside_and_lower_limits_spare_old_jobs(fake, tmp_path, caplog):
    from acestep_jax.serving.requests import parse_request

    first = _scheduler(fake, tmp_path)
    first.start()
    long = first.submit(parse_request({**REQUEST, "duration": 200.0, "seeds": [5]}, SERVER_LIMITS))
    _until(lambda: long.status == DONE)
    first.stop()
    jobs = tmp_path / "jobs"
    good = json.loads((jobs / f"{long.id}.json").read_text())
    for name, change in (("wrongtype", {"seq": "x"}), ("nostatus", {"status": None}),
                         ("badreq", {"request": {"prompt": 5}}), ("badout", {"outputs": [{"index": 9}]})):
        (jobs / f"{name}.json").write_text(json.dumps({**good, "id": name, **change}))
    second = _scheduler(FakePipe(), tmp_path, limits=Limits(max_duration=60.0, tasks=("text2music",),
                                                             local_paths=False))
    second.start()
    try:
        assert second.job(long.id).status == DONE and second.job(long.id).request.params.duration == 200.0
        assert sorted(p.name for p in jobs.glob("*.invalid")) == [
            "badout.invalid", "badreq.invalid", "nostatus.invalid", "wrongtype.invalid"]
        assert "wrongtype.json is set aside" in caplog.text and "'seq' is 'x'" in caplog.text
        with live_server(FakePipe(), tmp_path) as server, httpx.Client(base_url=server.url) as c:
            assert c.get(f"/v1/jobs/{long.id}").status_code == 200
    finally:
        second.stop()


@pytest.fixture
def client(fake, tmp_path):
    with live_server(fake, tmp_path / "state", max_wait_s=0.0) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        c.server = s
        yield c


def test_lone_surrogates_are_422_and_every_response_is_counted(client):
    for field in ("prompt", "lyrics"):
        body = json.dumps({**REQUEST, field: "a\ud800b"}, ensure_ascii=True)
        r = client.post("/v1/generate", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text
        assert "lone surrogate" in r.json()["detail"][0]["msg"]
    r = client.post("/v1/generate", content='{"\\ud800": 1}', headers={"content-type": "application/json"})
    assert r.status_code == 422
    metrics = client.get("/metrics").text
    assert 'code="422",method="POST",route="/v1/generate"} 3' in metrics


def test_metric_labels_are_bounded(client):
    for i in range(30):
        client.request(f"JUNK{i}", "/v1/generate")
    text = client.get("/metrics").text
    assert "JUNK" not in text and 'method="other"' in text


def test_sync_client_that_hangs_up_cancels_its_job(fake, client):
    fake.gate.clear()
    with pytest.raises(httpx.ReadTimeout):
        client.post("/generate", json={"prompt": "x", "audio_duration": 0.5, "infer_step": 2}, timeout=1.0)
    scheduler = client.server.scheduler
    _until(lambda: scheduler.metrics.disconnects.value() == 1)
    fake.gate.set()
    [job] = [scheduler.job(j) for j in list(scheduler._jobs)]
    _until(lambda: job.status == "cancelled")


def test_full_disk_is_503_named_and_reported(fake, client, monkeypatch):
    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal, "write_atomic", full)
    r = client.post("/v1/generate", json=REQUEST)
    assert r.status_code == 503 and r.headers["retry-after"] and "no space left on device" in r.json()["detail"]
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "storage_error"
    monkeypatch.undo()
    assert client.post("/v1/generate", json=REQUEST).status_code == 202
    assert client.get("/healthz").json()["status"] == "ok"


def test_long_polls_are_released_at_drain(fake, client):
    fake.gate.clear()
    job = client.post("/v1/generate", json=REQUEST).json()
    answers = []
    poll = threading.Thread(target=lambda: answers.append(client.get(f"/v1/jobs/{job['id']}", params={"wait": 60})))
    start = time.monotonic()
    poll.start()
    time.sleep(0.3)
    client.server.scheduler.drain()
    poll.join(10)
    fake.gate.set()
    assert answers and time.monotonic() - start < 10
    assert client.get("/healthz").json()["status"] == "draining"


def test_stale_temporary_files_are_removed_at_start(fake, tmp_path):
    store = JobStore(tmp_path)
    (store.outputs_dir / ".tmp-abc.wav").write_bytes(b"half")
    (store.outputs_dir / "kept_0.wav").write_bytes(b"whole")
    _scheduler(fake, tmp_path).start()
    assert [p.name for p in store.outputs_dir.iterdir()] == ["kept_0.wav"]


def test_bodies_must_be_json(client):
    r = client.post("/v1/generate", content=json.dumps(REQUEST), headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/v1/generate", data={"prompt": "x"})  # a cross-origin form post
    assert r.status_code == 415
    r = client.post("/v1/generate", content=json.dumps(REQUEST),
                    headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 202


def test_docs_are_closed_with_a_key(fake, tmp_path):
    with live_server(fake, tmp_path / "a", api_key="k") as s, httpx.Client(base_url=s.url) as c:
        assert [c.get(p).status_code for p in ("/docs", "/redoc", "/openapi.json")] == [404] * 3
    with live_server(fake, tmp_path / "b") as s, httpx.Client(base_url=s.url) as c:
        assert c.get("/openapi.json").status_code == 200


def test_cancelled_audio_is_gone(fake, client):
    fake.gate.clear()
    job = client.post("/v1/generate", json=REQUEST).json()
    client.delete(f"/v1/jobs/{job['id']}")
    fake.gate.set()
    r = client.get(f"/v1/jobs/{job['id']}/audio")
    assert r.status_code == 410 and "cancelled" in r.json()["detail"]
    assert wait_done(client, job["id"])["status"] == "cancelled"

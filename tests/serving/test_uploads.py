"""Uploads: decoded and checked on arrival, named by a random id, used by source tasks over HTTP,
deleted with their last job or once expired; never a client-chosen path."""

import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from acestep_jax.serving.uploads import UploadError, UploadStore
from tests.serving.conftest import FakePipe, live_server, wait_done


def _wav(seconds=2.0, rate=44100, channels=2) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((int(seconds * rate), channels), np.float32), rate, format="WAV")
    return buf.getvalue()


@pytest.mark.parametrize("data, status, words", [
    (b"not audio at all", 415, "not an audio file"),
    (_wav(channels=3), 422, "3 channels"),
    (_wav(seconds=241, rate=8000, channels=1), 422, "241.0 s long"),
])
def test_bad_uploads_are_refused(tmp_path, data, status, words):
    with pytest.raises(UploadError, match=words) as e:
        UploadStore(tmp_path).add(data)
    assert e.value.status == status and list(tmp_path.iterdir()) == []


def test_uploads_expire_unless_held(tmp_path):
    store = UploadStore(tmp_path, ttl_s=10)
    held, free = store.add(_wav()), store.add(_wav(channels=1))
    assert store.info(free.id).channels == 1 and store.path(held.id).is_file()
    assert store.path("../../etc/passwd") is None and store.path("0" * 32) is None
    assert store.sweep({held.id}, now=free.created_at + 5) == 0
    assert store.sweep({held.id}, now=free.created_at + 11) == 1
    assert store.path(free.id) is None and store.path(held.id) is not None


def test_source_tasks_over_http(tmp_path):
    fake = FakePipe()
    with live_server(fake, tmp_path / "state", max_wait_s=0.0, max_upload_bytes=2_000_000) as s, \
            httpx.Client(base_url=s.url, timeout=60) as c:
        assert c.post("/v1/uploads", content=_wav(seconds=30)).status_code == 413
        r = c.post("/v1/uploads", content=_wav(), headers={"content-type": "audio/wav"})
        assert r.status_code == 201, r.text
        upload = r.json()
        assert upload["seconds"] == 2.0 and upload["channels"] == 2 and len(upload["id"]) == 32
        body = {"prompt": "x", "task": "repaint", "src_upload": upload["id"], "repaint_start": 0.5,
                "repaint_end": 1.5, "infer_steps": 2, "seeds": [3]}
        job = c.post("/v1/generate", json=body).json()
        assert wait_done(c, job["id"])["status"] == "done"
        record = c.get(f"/v1/jobs/{job['id']}/record").json()
        assert record["src_upload"] == upload["id"] and "src_audio" not in record
        outside = {**body, "repaint_end": 9.0}  # the window is checked against the upload's length
        r = c.post("/v1/generate", json=outside)
        assert r.status_code == 422 and "outside the source audio" in r.text
        assert c.delete(f"/v1/jobs/{job['id']}").json()["status"] == "deleted"
        r = c.post("/v1/generate", json=body)  # deleted with its last job
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "src_upload"]

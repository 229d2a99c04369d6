"""One record format: an output's ``.json`` from ``sample.py`` reproduces that output through
``--params-json``, as a job line and as an HTTP request body (tiny random models).

The record is of a coupled batch (the default: items share the omega mean of their batch),
so each route reruns the record's whole batch, at the same size, and output ``index``
must come back equal.
"""

import io
import json

import httpx
import numpy as np
import soundfile as sf

from acestep_jax.cli.sample import main
from tests.serving.conftest import live_server, wait_done


def _same_audio(a, b):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_a_record_reproduces_its_output_everywhere(tmp_path, tiny_pipe, lyrics_vocab_path):
    vocab = ["--lyrics-vocab", str(lyrics_vocab_path)]
    common = ["--duration", "0.5", "--steps", "2", "--quiet", *vocab]
    assert main(["--tiny-random", "--prompt", "rock, guitar", "--lyrics", "[verse]\nla la", "--batch", "2",
                 "--seeds", "3", "4", "--guidance-scale", "7", "--omega", "3", "--out", str(tmp_path / "s.wav"),
                 *common]) == 0
    record_path = tmp_path / "s_1.json"
    record = json.loads(record_path.read_text())
    original, rate = sf.read(tmp_path / "s_1.wav", dtype="float32")
    assert record["seeds"] == [3, 4] and record["output"]["index"] == 1 and rate == record["sample_rate"]

    # --params-json
    assert main(["--params-json", str(record_path), "--out", str(tmp_path / "p.wav"), "--quiet", *vocab]) == 0
    _same_audio(sf.read(tmp_path / "p_1.wav", dtype="float32")[0], original)

    # a job line
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps(record) + "\n")
    assert main(["--tiny-random", "--jobs", str(jobs), "--out-dir", str(tmp_path / "jobs"), "--quiet", *vocab]) == 0
    [job_output] = (tmp_path / "jobs").glob("*_1.wav")
    _same_audio(sf.read(job_output, dtype="float32")[0], original)
    assert json.loads(job_output.with_suffix(".json").read_text())["seeds"] == [3, 4]

    # an HTTP body
    with live_server(tiny_pipe, tmp_path / "state") as server, httpx.Client(base_url=server.url, timeout=60) as c:
        job = c.post("/v1/generate", json=record).json()
        assert wait_done(c, job["id"])["status"] == "done"
        audio = c.get(f"/v1/jobs/{job['id']}/audio", params={"index": 1})
        assert audio.status_code == 200
    _same_audio(sf.read(io.BytesIO(audio.content), dtype="float32")[0], original)

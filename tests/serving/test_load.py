"""Load: 16 concurrent requests of mixed parameters through the live server (tiny random models)
all complete, share batches, and each output equals its request run alone.

The tiny random vocoder is chaotic: most of its samples sit near saturation, and the float
reassociation of another batch size flips about 0.1 % of them. So each output's latents are
compared with the solo run's at 1e-4, and its audio by the share of samples that differ (a
decode at another item's length, or another item's audio, changes most samples).
"""

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from acestep_jax.serving.requests import parse_request
from tests.helpers import assert_close
from tests.serving.conftest import DURATIONS, STEPS, WAIT, live_server, wait_done

PROMPTS = ("rock, guitar", "jazz piano", "lofi beat", "pop, upbeat", "ambient")
LYRICS = ("", "[verse]\nhello world", "[chorus]\nla la la")


def mixed_requests(n: int = 16) -> list[tuple[str, dict]]:
    """``(path, body)``: text2music and retake requests differing in every per-item field; every
    eighth in the reference's format through the synchronous ``/generate``."""
    out = []
    for i in range(n):
        body = {
            "prompt": PROMPTS[i % 5], "lyrics": LYRICS[i % 3], "duration": DURATIONS[i % 2], "infer_steps": STEPS,
            "guidance_scale": (15.0, 7.0, 3.5, 10.0)[i % 4], "omega_scale": (10.0, 3.0, 0.0, -5.0)[i // 4 % 4],
            "guidance_interval": (0.5, 1.0, 0.3)[i % 3], "guidance_interval_decay": (0.0, 0.5)[i // 3 % 2],
            "min_guidance_scale": (3.0, 1.0)[i // 5 % 2], "use_erg_tag": i % 3 != 0, "use_erg_lyric": i % 5 != 0,
            "use_erg_diffusion": i % 2 == 0, "seeds": [1000 + i],
        }
        if i % 6 == 5:
            body.update(task="retake", retake_variance=(0.2, 0.6)[i // 6 % 2], retake_seeds=[2000 + i])
        if i % 8 == 3:
            body = {"audio_duration": body.pop("duration"), "infer_step": body.pop("infer_steps"),
                    "actual_seeds": body.pop("seeds"), **body}
            out.append(("/generate", body))
        else:
            out.append(("/v1/generate", body))
    return out


class RecordingPipe:
    """The pipeline, keeping the latents each seed's item got in the served batches."""

    def __init__(self, pipe):
        self.pipe, self.latents = pipe, {}

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def generate(self, *args, seeds, **kwargs):
        out = self.pipe.generate(*args, seeds=seeds, **kwargs)
        for seed, latents in zip(seeds, out.latents, strict=True):
            self.latents.setdefault(seed, latents)  # a filler repeats its batch's first seed
        return out


@pytest.mark.slow
def test_concurrent_mixed_requests_equal_their_solo_runs(tiny_pipe, tmp_path):
    requests = mixed_requests()
    recording = RecordingPipe(tiny_pipe)
    with live_server(recording, tmp_path / "state", max_wait_s=0.5) as server, \
            httpx.Client(base_url=server.url, timeout=WAIT) as client:

        def send(path_body):
            path, body = path_body
            r = client.post(path, json=body)
            assert r.status_code in (200, 202), r.text
            job = r.json()["job_id" if path == "/generate" else "id"]
            return wait_done(client, job)

        with ThreadPoolExecutor(len(requests)) as pool:
            views = list(pool.map(send, requests))
        assert [v["status"] for v in views] == ["done"] * len(requests)
        served = [sf.read(io.BytesIO(client.get(v["outputs"][0]["url"]).content), dtype="float32")
                  for v in views]
        m = server.scheduler.metrics
        batches, items = m.batches.value(), m.batch_items.value()
    assert items == len(requests) and batches < len(requests) / 2, (batches, items)

    for i, (view, (audio, rate)) in enumerate(zip(views, served, strict=True)):
        request = parse_request(view["request"])
        assert request.seeds == (1000 + i,) and request.params.batch_invariant
        solo = tiny_pipe.generate([request.prompt], [request.lyrics], request.params, seeds=request.seeds,
                                  retake_seeds=request.retake_seeds)
        frames = solo.latents.shape[-1]
        batched = recording.latents[request.seeds[0]]
        assert_close(batched[..., :frames], solo.latents[0], rtol=1e-4, atol=1e-4, what=f"request {i} latents")
        assert not batched[..., frames:].any()
        assert rate == solo.sample_rate and audio.T.shape == solo.item_audio(0).shape
        differ = np.mean(np.abs(audio.T - solo.item_audio(0)) > 1e-3)
        assert differ < 0.01, f"request {i}: {differ:.2%} of the audio samples differ from the solo run"

"""Fixtures of the serving tests: the tiny random pipeline, a scripted fake pipeline and a
live server on 127.0.0.1."""

import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from acestep_jax.pipeline import Generation

STEPS = 2
DURATIONS = (0.3, 0.5)  # one length bucket, two decode lengths
BATCH_SIZES = (1, 4)
WAIT = 300.0  # the longest any test waits for a job (compiling on a busy 2-core machine)


@pytest.fixture(scope="session")
def tiny_pipe(lyrics_vocab_path):
    """Tiny random models; every serving test shares them, so each program compiles once."""
    from acestep_jax.pipeline import ACEStepPipeline

    return ACEStepPipeline.random("tiny", 0, lyrics_vocab=lyrics_vocab_path)


class FakePipe:
    """Stands in for the pipeline where only scheduling is tested: every batch waits for
    ``gate``, is recorded in ``batches`` (its seeds) and yields audio at :attr:`RATE` whose
    samples are ``seed / 1000`` over the item's duration."""

    RATE = 1000

    mesh = None

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[list[int]] = []
        self.started = threading.Event()  # set when a batch starts (then cleared by tests)
        self.fail_next = False

    def set_loras(self, specs):
        assert not specs

    def tokenize_lyrics(self, lyrics, what="lyrics"):
        if any(len(t) > 500 for t in lyrics):
            raise ValueError(f"{what}[0] has too many tokens")

    def generate(self, prompts, lyrics, params, *, seeds, retake_seeds, src_audio, target_prompts, target_lyrics,
                 sample_rate, batch_size):
        assert len(prompts) == len(params) == len(seeds) == batch_size
        self.started.set()
        assert self.gate.wait(WAIT), "the test never opened the gate"
        self.batches.append(list(seeds))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("scripted failure")
        lengths = [max(1, round(p.duration * self.RATE)) for p in params]
        audio = np.zeros((batch_size, 2, max(lengths)), np.float32)
        for i, (s, n) in enumerate(zip(seeds, lengths, strict=True)):
            audio[i, :, :n] = s / 1000
        timings = {"conditioning": 0.001, "diffusion": 0.002, "decode": 0.003}
        return Generation(audio=audio, sample_rate=self.RATE, latents=np.zeros((batch_size, 8, 16, 1)),
                          timings=timings, lengths=lengths)


class LiveServer:
    def __init__(self, url, scheduler, server, thread):
        self.url, self.scheduler, self._server, self._thread = url, scheduler, server, thread

    def stop(self):
        self._server.should_exit = True
        self._thread.join(60)
        assert not self._thread.is_alive(), "the server did not stop"


@contextmanager
def live_server(pipe, state_dir, *, limits=None, api_key=None, **scheduler_kw):
    """A uvicorn server on a free 127.0.0.1 port, in a thread, over a fresh scheduler."""
    import uvicorn

    from acestep_jax.serving.app import AppConfig, create_app
    from acestep_jax.serving.journal import JobStore
    from acestep_jax.serving.requests import SERVER_LIMITS
    from acestep_jax.serving.scheduler import Scheduler, SchedulerConfig

    scheduler = Scheduler(pipe, JobStore(state_dir), SchedulerConfig(**{"batch_sizes": BATCH_SIZES, **scheduler_kw}),
                          limits or SERVER_LIMITS)
    app = create_app(scheduler, AppConfig(api_key=api_key, sync_timeout_s=WAIT))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    live = LiveServer(f"http://127.0.0.1:{port}", scheduler, server, thread)
    try:
        yield live
    finally:
        live.stop()
        sock.close()


def wait_done(client, job_id: str, timeout: float = WAIT) -> dict:
    """Poll a job until it finishes (long polls of at most 30 s)."""
    deadline = time.monotonic() + timeout
    while True:
        view = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        if view["status"] in ("done", "failed", "cancelled"):
            return view
        assert time.monotonic() < deadline, f"job {job_id} still {view['status']} after {timeout} s"

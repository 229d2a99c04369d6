"""Serving throughput: a burst of mixed requests one at a time (batch 1) vs through the batching scheduler.

    python benchmarks/bench_serve.py                  # anywhere: scaled-down models (2 CPUs: ~4 min)
    python benchmarks/bench_serve.py --full           # accelerator: the 3.5B model, random bf16 weights

The same requests (mixed durations within one length bucket, guidance scales and
interval, omega, ERG switches, prompts, lyrics, seeds; every sixth a retake) arrive
together at a :class:`~acestep_jax.serving.scheduler.Scheduler` that writes their files
like the server does. "sequential" compiles only batch size 1, "batched" the sizes given.
Each mode runs the requests once to compile (not timed), then again with new seeds:
requests/s and audio-seconds/s over the burst, and the latency of each request from
arrival to its file written (p50, p95).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import numpy as np

from acestep_jax.loading import ModelOptions, load_pipeline
from acestep_jax.serving.journal import JobStore
from acestep_jax.serving.requests import SERVER_LIMITS, parse_request
from acestep_jax.serving.scheduler import Scheduler, SchedulerConfig
from benchmarks.bench_generate import CPU_TRANSFORMER

PROMPTS = ("funk, bass, 105 bpm", "jazz piano trio", "lofi hip hop beat", "pop, upbeat, female vocal", "ambient pad")
LYRICS = ("", "[verse]\nwalking down the street tonight", "[chorus]\nla la la, sing it loud")


def mixed_requests(n: int, seconds, steps: int, seed0: int, lyrics: bool):
    """``n`` requests differing in every per-item field (``lyrics``: some with lyrics)."""
    out = []
    for i in range(n):
        body = {
            "prompt": PROMPTS[i % 5], "lyrics": LYRICS[i % 3] if lyrics else "", "duration": seconds[i % len(seconds)],
            "infer_steps": steps, "guidance_scale": (15.0, 7.0, 3.5, 10.0)[i % 4],
            "omega_scale": (10.0, 3.0, 0.0, -5.0)[i // 4 % 4], "guidance_interval": (0.5, 1.0, 0.3)[i % 3],
            "use_erg_tag": i % 3 != 0, "use_erg_lyric": i % 5 != 0, "use_erg_diffusion": i % 2 == 0,
            "seeds": [seed0 + i], "retake_seeds": [seed0 + 1000 + i],
        }
        if i % 6 == 5:
            body.update(task="retake", retake_variance=0.4)
        out.append(parse_request(body, SERVER_LIMITS))
    return out


def burst(pipe, requests, sizes, max_wait_s: float) -> dict:
    """Submit every request at once; wait for all; throughput and latencies."""
    with tempfile.TemporaryDirectory() as folder:
        sched = Scheduler(pipe, JobStore(folder), SchedulerConfig(batch_sizes=sizes, max_wait_s=max_wait_s,
                                                                  max_queue=len(requests)))
        sched.start()
        changed = threading.Condition()

        def notify():
            with changed:
                changed.notify_all()

        start = time.time()
        jobs = [sched.submit(r) for r in requests]
        for job in jobs:
            sched.watch(job, notify)
        with changed:
            if not changed.wait_for(lambda: all(j.finished for j in jobs), timeout=3600):
                raise TimeoutError("the burst did not finish within an hour")
        sched.stop()
    if bad := [j for j in jobs if j.status != "done"]:
        raise RuntimeError(f"{len(bad)} jobs failed, e.g. {bad[0].error}")
    span = max(j.finished_at for j in jobs) - start
    latency = np.asarray([j.finished_at - j.accepted_at for j in jobs])
    audio = sum(o.seconds for j in jobs for o in j.outputs.values())
    m = sched.metrics
    return {"span": span, "rps": len(jobs) / span, "audio_rate": audio / span, "p50": np.percentile(latency, 50),
            "p95": np.percentile(latency, 95), "batches": int(m.batches.value()),
            "occupancy": m.batch_items.value() / max(m.batch_slots.value(), 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="the released 3.5B sizes (needs an accelerator)")
    p.add_argument("--tiny", action="store_true", help="the tiny test models (a quick run)")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--seconds", type=float, nargs="+", help="durations, cycled (default: 30 45 60 full, 4 7 10)")
    p.add_argument("--steps", type=int, default=27)
    p.add_argument("--batch-sizes", default="1,2,4,8", help="the batched mode's sizes")
    p.add_argument("--max-wait-ms", type=float, default=50.0)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--lyrics-vocab", help="lyric vocabulary; without it the requests are instrumental")
    args = p.parse_args(argv)
    seconds = args.seconds or ([30.0, 45.0, 60.0] if args.full else [4.0, 7.0, 10.0])
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    device = jax.devices()[0]

    t0 = time.perf_counter()
    overrides = () if args.full or args.tiny else tuple(CPU_TRANSFORMER.items())
    pipe = load_pipeline(ModelOptions(random_preset="full" if args.full else "tiny", dtype=args.dtype,
                                      lyrics_vocab=args.lyrics_vocab, transformer_overrides=overrides,
                                      compile_cache=""), progress=False, lyrics=bool(args.lyrics_vocab))
    build_s = time.perf_counter() - t0
    cfg = pipe.transformer.cfg
    kind = "full 3.5B" if args.full else "tiny" if args.tiny else "scaled-down"
    print(f"# acestep-jax serving benchmark ({kind} models, random weights)")
    print(f"device: {device.device_kind} x{jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}, "
          f"python {platform.python_version()}, host {platform.machine()} {os.cpu_count()} cpus")
    print(f"transformer: {cfg.num_layers} blocks x {cfg.inner_dim} wide, {args.dtype}; models built in {build_s:.1f} s")
    print(f"{args.requests} requests at once: durations {', '.join(f'{s:g}' for s in seconds)} s, {args.steps} steps, "
          f"mixed guidance / omega / ERG / prompts{' / lyrics' if args.lyrics_vocab else ''}, every sixth a retake")
    head = ("mode", "batch sizes", "batches", "occupancy", "burst_s", "requests/s", "audio_s/s", "p50_s", "p95_s",
            "compile pass_s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    results = {}
    for mode, mode_sizes in (("sequential", (1,)), ("batched", sizes)):
        t0 = time.perf_counter()
        lyrics = args.lyrics_vocab is not None
        burst(pipe, mixed_requests(args.requests, seconds, args.steps, 0, lyrics), mode_sizes, args.max_wait_ms / 1000)
        warm_s = time.perf_counter() - t0
        r = results[mode] = burst(pipe, mixed_requests(args.requests, seconds, args.steps, 10_000, lyrics), mode_sizes,
                                  args.max_wait_ms / 1000)
        row = [mode, ",".join(map(str, mode_sizes)), str(r["batches"]), f"{r['occupancy']:.2f}", f"{r['span']:.2f}",
               f"{r['rps']:.3f}", f"{r['audio_rate']:.1f}", f"{r['p50']:.2f}", f"{r['p95']:.2f}", f"{warm_s:.1f}"]
        print("| " + " | ".join(row) + " |", flush=True)
    s, b = results["sequential"], results["batched"]
    print(f"batched / sequential: {b['rps'] / s['rps']:.2f}x requests/s, {b['audio_rate'] / s['audio_rate']:.2f}x "
          f"audio-seconds/s, p50 latency {b['p50'] / s['p50']:.2f}x, p95 {b['p95'] / s['p95']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the sampling loop compile, with XLA's default flags, for every duration on a GPU target?
(issue 25; the GPU compiler of ``jax[cuda12]`` running on this CPU host, as ``plan_gpu.py``).

    JAX_PLATFORMS=cpu python benchmarks/gpu_durations.py h100 a100 --preset tiny
    JAX_PLATFORMS=cpu python benchmarks/gpu_durations.py h100 --preset full --layers 2 --seconds 1 7 13 61 239 240

Each duration (default: every whole second from 1 to 240) and task (text2music, edit) is lowered
as ``generate`` would run it on that GPU (frames padded to ``tasks.GPU_FRAME_MULTIPLE``, the
transformer as GPUs load it: ``gpu_transformer_settings``, the loop's compiler options); durations
that lower to the same program are compiled once. Prints the durations per program and every
failure, and appends one line per compile to ``--results``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax

from acestep_jax.models.transformer import gpu_transformer_settings
from benchmarks import plan_memory
from benchmarks.plan_gpu import GPUS, topology
from benchmarks.plan_memory import lower_sample, sample_mesh


def sweep(gpu: str, preset: str, layers: int | None, tasks: list[str], seconds: list[float], results: Path) -> int:
    """Compile every distinct program; returns the number of failures."""
    devices = list(topology(gpu, 1).devices)
    mesh = sample_mesh(1, 1, devices)
    failures = 0
    for task in tasks:
        programs: dict[str, list[float]] = {}
        lowered = {}
        for s in seconds:
            low = lower_sample(1, mesh, layers=layers, seconds=s, preset=preset, task=task)[0]
            key = hashlib.sha256(low.as_text().encode()).hexdigest()
            programs.setdefault(key, []).append(s)
            lowered.setdefault(key, low)
        print(f"{gpu} {preset} {task}: {len(seconds)} durations, {len(programs)} programs", flush=True)
        for key, secs in programs.items():
            start = time.perf_counter()
            try:
                lowered[key].compile()
                error = None
            except jax.errors.JaxRuntimeError as e:
                error = str(e).splitlines()[0][:300]
                failures += 1
                print(f"  FAILED {secs[0]:g}-{secs[-1]:g} s: {error}", flush=True)
            record = {"gpu": gpu, "preset": preset, "layers": layers, "task": task, "seconds": secs,
                      "settings": plan_memory.TRANSFORMER_SETTINGS,
                      "error": error, "compile_seconds": round(time.perf_counter() - start, 1),
                      "jax": jax.__version__, "date": time.strftime("%Y-%m-%d")}
            with results.open("a") as f:
                f.write(json.dumps(record) + "\n")
        print(f"  {len(programs)} compiles, {failures} failures so far", flush=True)
    return failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gpus", nargs="+", choices=sorted(GPUS))
    p.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    p.add_argument("--layers", type=int, help="blocks of the full model (default: the preset's)")
    p.add_argument("--tasks", nargs="+", choices=["text2music", "edit"], default=["text2music", "edit"])
    p.add_argument("--seconds", nargs="+", type=float, default=[float(s) for s in range(1, 241)])
    p.add_argument("--results", type=Path, default=Path("gpu_durations.jsonl"))
    args = p.parse_args(argv)
    if jax.devices()[0].platform != "cpu":
        p.error("run with JAX_PLATFORMS=cpu: the GPU compiler runs here without a GPU")
    plan_memory.TRANSFORMER_SETTINGS = gpu_transformer_settings("cuda")
    failures = sum(sweep(g, args.preset, args.layers, args.tasks, args.seconds, args.results) for g in args.gpus)
    print("every duration compiled" if not failures else f"{failures} programs failed to compile")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

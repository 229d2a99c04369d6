"""Does the sampling loop compile, with XLA's default flags, for every duration on a GPU target?
(issue 25; the GPU compiler of ``jax[cuda12]`` running on this CPU host, as ``plan_gpu.py``).

    JAX_PLATFORMS=cpu python benchmarks/gpu_durations.py h100 a100 l4 rtx4090 --bucket
    JAX_PLATFORMS=cpu python benchmarks/gpu_durations.py h100 a100 l4 rtx4090
    JAX_PLATFORMS=cpu python benchmarks/gpu_durations.py h100 --preset tiny --layers 2 --seconds 1 7 13 61
    python benchmarks/gpu_durations.py --summary

Each duration (default: every whole second from 1 to 240) and task (text2music, edit) is lowered
as ``generate`` runs it on that GPU: frames padded to ``tasks.GPU_FRAME_MULTIPLE`` (with
``--bucket``: to the length bucket, ``tasks.BUCKET_MULTIPLE``, as the command line and the
service run it), the transformer as GPUs load it (``gpu_transformer_settings``), the loop's compiler options. The
default model has the released widths and one block (``--layers 1``): every GEMM shape of the
loop, whose depth only repeats them. Durations whose lowered programs are equal (the same
padded length) share one compile per GPU; lowering does not depend on the GPU model, so a
program another GPU's records already name is lowered only once more, to compile it (its hash
is checked against theirs). One record per duration is appended to ``--results`` as soon as it
is known, and recorded durations are skipped: a run can be stopped and resumed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax

from acestep_jax.codec.codec import seconds_to_frames
from acestep_jax.models.transformer import gpu_transformer_settings
from acestep_jax.sampling.tasks import BUCKET_MULTIPLE, GPU_FRAME_MULTIPLE, bucket_frames
from benchmarks import plan_memory
from benchmarks.plan_gpu import GPUS, topology
from benchmarks.plan_memory import lower_sample, sample_mesh
from benchmarks.plan_tpu import append

RESULTS = Path(__file__).resolve().parent / "gpu_durations.jsonl"
TASKS = ("text2music", "edit")


def load(path: Path, preset: str, layers: int | None, task: str, bucket: bool) -> list[dict]:
    """The records of ``path`` for this model, task and padding, made with this JAX and the GPU settings."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("program") and (r["preset"], r["layers"], r["task"]) == (preset, layers, task)
            and r["bucket"] == bucket and r["settings"] == plan_memory.TRANSFORMER_SETTINGS and r["jax"] == jax.__version__]


def program_hash(lowered) -> str:
    return hashlib.sha256(lowered.as_text().encode()).hexdigest()[:16]


def sweep(gpu: str, preset: str, layers: int | None, task: str, bucket: bool, seconds: list[float],
          results: Path) -> int:
    """Compile every distinct program of ``task`` on ``gpu``; returns the number of failures."""
    records = load(results, preset, layers, task, bucket)
    done = {r["seconds"] for r in records if r["gpu"] == gpu}
    known = {r["seconds"]: r["program"] for r in records}  # lowered on any GPU
    compiled = {r["program"]: r for r in records if r["gpu"] == gpu and r["compiled"]}
    mesh = sample_mesh(1, 1, list(topology(gpu, 1).devices))
    todo = [s for s in seconds if s not in done]
    print(f"{gpu} {preset} {task}{' bucketed' if bucket else ''}: {len(seconds) - len(todo)} of {len(seconds)} durations recorded", flush=True)
    failures = 0
    for n, s in enumerate(todo, 1):
        key, lowered = known.get(s), None
        if key is None or key not in compiled:
            lowered = lower_sample(1, mesh, layers=layers, seconds=s, preset=preset, task=task, bucket=bucket)[0]
            if key is not None and program_hash(lowered) != key:
                raise RuntimeError(f"{s:g} s lowered to another program on {gpu} than in {results}")
            key = program_hash(lowered)
        frames = bucket_frames(seconds_to_frames(s), BUCKET_MULTIPLE if bucket else GPU_FRAME_MULTIPLE)
        record = {"gpu": gpu, "preset": preset, "layers": layers, "task": task, "bucket": bucket, "seconds": s,
                  "frames": frames, "program": key}
        if key in compiled:
            first = compiled[key]
            record |= {"compiled": False, "same_as": first["seconds"], "error": first["error"], "compile_seconds": 0.0}
        else:
            start = time.perf_counter()
            try:
                lowered.compile()
                error = None
            except jax.errors.JaxRuntimeError as e:
                error = str(e).splitlines()[0][:300]
            record |= {"compiled": True, "error": error, "compile_seconds": round(time.perf_counter() - start, 1)}
            compiled[key] = record
            print(f"  [{n}/{len(todo)}] {s:g} s ({record['frames']} frames): "
                  f"{'FAILED ' + error if error else 'compiled'} in {record['compile_seconds']} s", flush=True)
        failures += record["error"] is not None
        append(results, record | {"settings": plan_memory.TRANSFORMER_SETTINGS, "jax": jax.__version__,
                                  "date": time.strftime("%Y-%m-%d")})
    return failures


def summary(results: Path) -> str:
    """A markdown table of every GPU, model and task in ``results``: durations, programs, failures."""
    rows: dict[tuple, dict] = defaultdict(lambda: {"seconds": set(), "programs": 0, "failed": [], "time": 0.0})
    for line in results.read_text().splitlines():
        r = json.loads(line)
        if not r.get("program"):
            continue
        row = rows[(r["gpu"], r["preset"], r["layers"], r["task"], r["bucket"], r["jax"])]
        row["seconds"].add(r["seconds"])
        row["programs"] += r["compiled"]
        row["time"] += r["compile_seconds"]
        if r["error"]:
            row["failed"].append(r["seconds"])
    out = ["| GPU | model | task | frames padded to | durations | programs compiled | failed | compile time |",
           "|---|---|---|---|---|---|---|---|"]
    for (gpu, preset, layers, task, bucket, _), row in sorted(rows.items()):
        secs = sorted(row["seconds"])
        whole = secs == [float(s) for s in range(int(secs[0]), int(secs[-1]) + 1)]
        span = f"every second {secs[0]:g}-{secs[-1]:g} s" if whole else f"{len(secs)} ({secs[0]:g}-{secs[-1]:g} s)"
        model = f"{preset}, {layers if layers is not None else 'all'} block(s)"
        failed = ", ".join(f"{s:g}" for s in sorted(row["failed"])) or "none"
        padded = f"{BUCKET_MULTIPLE if bucket else GPU_FRAME_MULTIPLE}"
        out.append(f"| {GPUS[gpu].label} | {model} | {task} | {padded} | {span} | {row['programs']} | {failed} | "
                   f"{row['time'] / 60:.0f} min |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gpus", nargs="*", help=f"GPU targets: {', '.join(sorted(GPUS))}")
    p.add_argument("--preset", choices=["tiny", "full"], default="full")
    p.add_argument("--layers", type=int, default=1, help="blocks of the model (default: 1)")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--bucket", action="store_true", help="pad to the length bucket, as the command line does")
    p.add_argument("--seconds", nargs="+", type=float, default=[float(s) for s in range(1, 241)])
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--summary", action="store_true", help="print the table of --results and stop")
    args = p.parse_args(argv)
    if args.summary:
        print(summary(args.results))
        return 0
    if not args.gpus or not set(args.gpus) <= set(GPUS):
        p.error(f"name GPU targets among {', '.join(sorted(GPUS))} (or --summary)")
    if jax.devices()[0].platform != "cpu":
        p.error("run with JAX_PLATFORMS=cpu: the GPU compiler runs here without a GPU")
    plan_memory.TRANSFORMER_SETTINGS = gpu_transformer_settings("cuda")
    failures = sum(sweep(g, args.preset, args.layers, t, args.bucket, args.seconds, args.results)
                   for g in args.gpus for t in args.tasks)
    print("every duration compiled" if not failures else f"{failures} durations failed to compile")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""First request of a new exact duration inside a warmed 128-frame bucket (tiny model, CPU).

    python benchmarks/bench_new_duration.py

Warms the bucket at 5.0 s (batch 1), then times ``generate`` at new durations inside the
same bucket and once more at the last one (everything cached): wall seconds and the
number of XLA programs compiled (``/jax/core/compile/backend_compile_duration`` events).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jax import monitoring

from acestep_jax.pipeline import ACEStepPipeline
from acestep_jax.sampling import SamplingParams

_compiles: list[float] = []
monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: _compiles.append(duration)
    if event == "/jax/core/compile/backend_compile_duration" else None
)


def timed(pipe, seconds: float, steps: int) -> tuple[float, int, float]:
    """Wall seconds, programs compiled and their compile seconds for one generation."""
    _compiles.clear()
    start = time.perf_counter()
    pipe.generate(["funk, bass"], [""], SamplingParams(duration=seconds, infer_steps=steps, bucket=True),
                  seeds=[1], retake_seeds=[2])
    return time.perf_counter() - start, len(_compiles), sum(_compiles)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--durations", type=float, nargs="+", default=[6.3, 8.2, 11.1])
    args = ap.parse_args(argv)
    pipe = ACEStepPipeline.random("tiny", 0)

    def report(label: str, seconds: float) -> None:
        wall, n, compiling = timed(pipe, seconds, args.steps)
        print(f"{label} {seconds} s: {wall:.2f} s, {n} programs ({compiling:.2f} s compiling)", flush=True)

    report("warm", 5.0)
    for d in args.durations:
        report("new", d)
    report("again", args.durations[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())

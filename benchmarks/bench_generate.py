"""End-to-end generation speed: compile time, per-step time, real-time factor, memory, MFU.

    python benchmarks/bench_generate.py                 # anywhere: scaled-down models (2 CPUs: ~1 min)
    python benchmarks/bench_generate.py --full          # accelerator: the 3.5B model, random bf16 weights,
                                                        # 240 s songs at 27 and 60 steps, batch 1 and 8

Timings per configuration: prompt encoding, sampling (first call = compile + run,
then warm runs), codec decode, end-to-end warm time, the real-time factor (audio
seconds generated per second, batch included), peak device memory and model FLOPs
utilisation of the sampling loop (transformer FLOPs from the analytic count
:func:`acestep_jax.models.transformer.flops.decode_flops`, calls per step from the
guidance schedule). Results are compared with the reference's published RTFs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import numpy as np

from acestep_jax.loading import ModelOptions, load_pipeline
from acestep_jax.models.transformer import TransformerConfig
from acestep_jax.models.transformer.config import DEVICE_SETTINGS
from acestep_jax.models.transformer.flops import decode_flops
from acestep_jax.pipeline import ACEStepPipeline
from acestep_jax.profiling import trace
from acestep_jax.sampling import SamplingParams, seconds_to_frames

# dense bf16 peak FLOP/s by device kind (vendor figures, no sparsity)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "RTX 4090": 165e12,
              "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v4": 275e12}
# the reference README: RTF at batch 1 (27 steps, 60 steps)
REFERENCE_RTF = {"A100": (27.27, 12.27), "RTX 4090": (34.48, 15.63)}
CPU_TRANSFORMER = {"num_layers": 6, "num_attention_heads": 4, "attention_head_dim": 64, "ssl_encoder_depths": (2, 4)}


def peak_flops(device) -> float | None:
    kind = device.device_kind
    return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), None)


def peak_memory_gb(device) -> float | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return stats["peak_bytes_in_use"] / 2**30 if stats and "peak_bytes_in_use" in stats else None


def transformer_calls(params: SamplingParams) -> tuple[int, int]:
    """``(guided_steps, plain_steps)``: steps that run cond+uncond(+text-only) vs the conditional call only."""
    from acestep_jax.sampling.guidance import guidance_schedule

    sched = guidance_schedule(params.infer_steps, params.guidance_scale, params.guidance_interval,
                              params.guidance_interval_decay, params.min_guidance_scale)
    guided = int(np.sum(np.asarray(sched.active))) if params.do_cfg else 0
    return guided, params.infer_steps - guided


def bench(pipe: ACEStepPipeline, seconds: float, steps: int, batch: int, repeats: int) -> dict:
    params = SamplingParams(duration=seconds, infer_steps=steps)  # reference defaults: APG, ERG, interval 0.5
    prompts, lyrics = ["pop, upbeat, piano, female vocal"] * batch, [""] * batch
    device = jax.devices()[0]
    t0 = time.perf_counter()
    first = pipe.generate(prompts, lyrics, params, seeds=list(range(batch)))
    first_total = time.perf_counter() - t0
    runs = []
    for r in range(repeats):
        t0 = time.perf_counter()
        out = pipe.generate(prompts, lyrics, params, seeds=list(range(r + 1, r + 1 + batch)))
        runs.append((time.perf_counter() - t0, out.timings))
    total = statistics.median(t for t, _ in runs)
    timing = {k: statistics.median(t[k] for _, t in runs) for k in runs[0][1]}
    audio_seconds = out.audio.shape[-1] / out.sample_rate * batch
    frames = seconds_to_frames(seconds)
    context = 1 + 32 + 64  # speaker + bucketed prompt + bucketed (empty) lyrics
    guided, plain = transformer_calls(params)
    k = 3 if params.double_condition else 2
    flops = (guided * decode_flops(pipe.transformer.cfg, k * batch, frames, context)
             + plain * decode_flops(pipe.transformer.cfg, batch, frames, context))
    peak = peak_flops(device)
    return {
        "seconds": seconds, "steps": steps, "batch": batch,
        "compile_s": max(first.timings["diffusion"] - timing["diffusion"], 0.0),
        "first_call_s": first_total,
        "step_ms": 1e3 * timing["diffusion"] / steps,
        "encode_s": timing["conditioning"], "sampling_s": timing["diffusion"], "decode_s": timing["decode"],
        "total_s": total, "rtf": audio_seconds / total,
        "mem_gb": peak_memory_gb(device),
        "tflop": flops / 1e12,
        "mfu": None if peak is None else flops / timing["diffusion"] / peak,
    }


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="the released 3.5B sizes (needs an accelerator)")
    p.add_argument("--seconds", type=float, nargs="+", help="song lengths (default: 240 full, 10 scaled)")
    p.add_argument("--steps", type=int, nargs="+", default=[27, 60])
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default: 1 8 full, 1 scaled)")
    p.add_argument("--repeats", type=int, help="warm runs per configuration, median reported (default: 3 full, 1 scaled)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--profile", metavar="DIR", help="write a jax.profiler trace of one warm generation "
                   "(the first configuration) to DIR")
    p.add_argument("--settings", choices=("device", "default"), default="device",
                   help="the transformer as this device loads it (gpu_transformer_settings) or its CPU/TPU form")
    args = p.parse_args(argv)
    seconds = args.seconds or ([240.0] if args.full else [10.0])
    batches = args.batch or ([1, 8] if args.full else [1])
    repeats = args.repeats or (3 if args.full else 1)
    device = jax.devices()[0]

    t0 = time.perf_counter()
    overrides = () if args.full else tuple(CPU_TRANSFORMER.items())
    if args.settings == "default":  # replaces the device's settings (loading applies them first)
        fields = {f.name: f.default for f in dataclasses.fields(TransformerConfig)}
        overrides += tuple((k, fields[k]) for k in DEVICE_SETTINGS)
    pipe = load_pipeline(ModelOptions(random_preset="full" if args.full else "tiny", dtype=args.dtype,
                                      transformer_overrides=overrides, compile_cache=""), progress=False, lyrics=False)
    build_s = time.perf_counter() - t0
    cfg = pipe.transformer.cfg
    print(f"# acestep-jax generation benchmark ({'full 3.5B' if args.full else 'scaled-down'} models, random weights)")
    print(f"device: {device.device_kind} x{jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}, "
          f"python {platform.python_version()}, host {platform.machine()} {os.cpu_count()} cpus")
    print(f"transformer: {cfg.num_layers} blocks x {cfg.inner_dim} wide, {args.dtype}; models built in {build_s:.1f} s")
    head = ("seconds", "steps", "batch", "compile_s", "step_ms", "encode_s", "sampling_s", "decode_s",
            "total_s", "RTF", "mem_GB", "TFLOP", "MFU")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for s in seconds:
        for steps in args.steps:
            for b in batches:
                r = bench(pipe, s, steps, b, repeats)
                row = [f"{r['seconds']:g}", str(steps), str(b), f"{r['compile_s']:.2f}", f"{r['step_ms']:.1f}",
                       f"{r['encode_s']:.3f}", f"{r['sampling_s']:.3f}", f"{r['decode_s']:.3f}",
                       f"{r['total_s']:.3f}", f"{r['rtf']:.1f}x", fmt(r["mem_gb"], ".2f"), f"{r['tflop']:.2f}",
                       fmt(None if r["mfu"] is None else 100 * r["mfu"], ".1f") + ("%" if r["mfu"] else "")]
                print("| " + " | ".join(row) + " |", flush=True)
                ref = next((v for k, v in REFERENCE_RTF.items() if k.lower() in device.device_kind.lower()), None)
                if ref and args.full and b == 1 and steps in (27, 60):
                    base = ref[0] if steps == 27 else ref[1]
                    print(f"  vs reference on {device.device_kind}: {r['rtf'] / base:.2f}x its RTF ({base}x)")
    if args.profile:
        params = SamplingParams(duration=seconds[0], infer_steps=args.steps[0])
        with trace(args.profile):
            pipe.generate(["pop, upbeat, piano, female vocal"] * batches[0], [""] * batches[0], params,
                          seeds=list(range(batches[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

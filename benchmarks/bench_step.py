"""One guided transformer step (cond + uncond in one batched ``decode``): speed, MFU, and waste checks.

    python benchmarks/bench_step.py                  # scaled-down model, anywhere
    python benchmarks/bench_step.py --full           # the 3.5B transformer, random bf16 weights

Reports compile time, warm step time, FLOPs (analytic, see
:mod:`acestep_jax.models.transformer.flops`) and MFU, and inspects the compiled
program for what wastes time: recompiles across timesteps, host transfers, and the
number of transposes/copies in the optimised HLO.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
from flax import nnx

from acestep_jax.codec import seconds_to_frames
from acestep_jax.models.transformer.config import REMAT_MODES, gpu_transformer_settings
from acestep_jax.models.transformer.flops import decode_flops
from acestep_jax.presets import preset_config
from acestep_jax.profiling import trace
from acestep_jax.sampling.sampler import loop_compiler_options
from benchmarks.bench_generate import CPU_TRANSFORMER, peak_flops, peak_memory_gb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true")
    p.add_argument("--seconds", type=float, help="song length (default: 240 full, 30 scaled)")
    p.add_argument("--batch", type=int, default=1, help="items (the step runs 2x this: cond + uncond)")
    p.add_argument("--context", type=int, default=1 + 64 + 512, help="condition tokens (speaker+prompt+lyrics)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--remat", default="none", choices=REMAT_MODES)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--profile", metavar="DIR", help="write a jax.profiler trace of 3 warm steps to DIR")
    p.add_argument("--settings", choices=("device", "default"), default="device",
                   help="the transformer as this device loads it (gpu_transformer_settings; on NVIDIA GPUs "
                        "cuDNN attention, head-major linear attention, per-block modules) or its CPU/TPU form")
    args = p.parse_args(argv)
    seconds = args.seconds or (240.0 if args.full else 30.0)
    frames = seconds_to_frames(seconds)
    overrides = {} if args.full else dict(CPU_TRANSFORMER)
    if args.settings == "device":
        overrides.update(gpu_transformer_settings(training=args.remat != "none"))
    cfg = preset_config("tiny" if not args.full else "full", "transformer", dtype=args.dtype,
                        param_dtype=args.dtype, remat=args.remat, **overrides)
    from acestep_jax.models.transformer import ACEStepTransformer

    model = nnx.jit(lambda: ACEStepTransformer(cfg, rngs=nnx.Rngs(0)))()
    b = 2 * args.batch
    key = jax.random.key(0)
    x = jax.random.normal(key, (b, cfg.in_channels, 16, frames), jnp.float32)
    mask = jnp.ones((b, frames), jnp.float32)
    ctx = jax.random.normal(key, (b, args.context, cfg.inner_dim), jnp.dtype(args.dtype))
    ctx_mask = jnp.ones((b, args.context), jnp.float32)

    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, compiler_options=loop_compiler_options(jax.default_backend()))
    def step(state, x, t):
        return nnx.merge(graphdef, state).decode(x, mask, ctx, ctx_mask, jnp.full((b,), t, jnp.float32))

    t0 = time.perf_counter()
    compiled = step.lower(state, x, jnp.float32(500.0)).compile()
    jax.block_until_ready(step(state, x, jnp.float32(500.0)))
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(args.iters):
        t0 = time.perf_counter()
        jax.block_until_ready(step(state, x, jnp.float32(999.0 - i)))
        times.append(time.perf_counter() - t0)
    times.sort()
    step_s = times[len(times) // 2]
    with trace(args.profile):
        for i in range(3 if args.profile else 0):
            jax.block_until_ready(step(state, x, jnp.float32(900.0 - i)))
    flops = decode_flops(cfg, b, frames, args.context)
    device = jax.devices()[0]
    peak = peak_flops(device)
    print(f"device {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}; transformer "
          f"{cfg.num_layers}x{cfg.inner_dim} {args.dtype}, remat {args.remat}, settings {args.settings} "
          f"({ {k: v for k, v in overrides.items() if k not in CPU_TRANSFORMER} }); {seconds:g} s = {frames} frames, "
          f"batch {args.batch} (x2 cond/uncond), context {args.context}")
    print(f"compile+first {compile_s:.2f} s | step {1e3 * step_s:.2f} ms (median of {args.iters}) | "
          f"{flops / 1e12:.3f} TFLOP | {flops / step_s / 1e12:.2f} TFLOP/s | MFU "
          + (f"{100 * flops / step_s / peak:.1f}%" if peak else "n/a (unknown peak)")
          + (f" | peak mem {peak_memory_gb(device):.2f} GB" if peak_memory_gb(device) else ""))
    print(f"compiled variants after {args.iters + 1} timesteps: {step._cache_size()} (1 = no recompiles)")
    hlo = compiled.as_text()
    counts = {op: len(re.findall(rf"\b{op}\(", hlo)) for op in ("transpose", "copy", "send", "recv",
                                                               "outfeed", "custom-call", "while")}
    print("optimised HLO: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + "  (send/recv/outfeed = host transfers, want 0; while = the scanned blocks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

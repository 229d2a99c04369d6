"""REPA feature extraction speed: seconds of audio per second for MERT-v1-330M and mHuBERT-147.

    python benchmarks/bench_ssl.py                          # released sizes, random weights
    python benchmarks/bench_ssl.py --dtype bfloat16 --chunk-batch 32   # accelerator setting

Runs :class:`~acestep_jax.training.ssl_features.SSLFeatureExtractor` (the reference
trainer's chunking: 5 s chunks for MERT, 30 s for mHuBERT) on random 48 kHz stereo audio
that fills ``--calls`` calls of ``--chunk-batch`` chunks, and reports compile + first call,
warm time (median of ``--iters``), and throughput in seconds of audio per second.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import numpy as np
from flax import nnx

from acestep_jax.models.ssl import HubertConfig
from acestep_jax.presets import random_ssl_model, released_ssl_config
from acestep_jax.training.ssl_features import INPUT_RATE, RECIPES, SSLFeatureExtractor


def _config(name: str, args) -> HubertConfig:
    if args.config:
        return HubertConfig.from_dict(json.loads(Path(args.config).read_text()), dtype=args.dtype,
                                      param_dtype=args.dtype)
    return released_ssl_config(name, dtype=args.dtype, param_dtype=args.dtype)


def bench(name: str, args) -> dict:
    cfg = _config(name, args)
    model = random_ssl_model(cfg, seed=0)
    params = sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(model)))
    recipe = RECIPES[name]
    extractor = SSLFeatureExtractor(model, recipe, chunk_batch=args.chunk_batch)
    seconds = extractor.chunk_batch * args.calls * recipe.chunk_seconds
    rng = np.random.default_rng(0)
    song = (0.1 * rng.standard_normal((2, int(seconds * INPUT_RATE)))).astype(np.float32)
    t0 = time.perf_counter()
    first = extractor.songs([song])[0]
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        extractor.songs([song])
        times.append(time.perf_counter() - t0)
    warm = statistics.median(times)
    return {"model": name, "params": params, "dtype": args.dtype, "chunk_batch": extractor.chunk_batch,
            "audio_s": seconds, "frames": len(first), "compile_s": compile_s, "warm_s": warm,
            "audio_per_s": seconds / warm, "programs": extractor.compiled_programs()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["mert", "m-hubert"], choices=sorted(RECIPES))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--chunk-batch", type=int, default=1, help="chunks per compiled call")
    p.add_argument("--calls", type=int, default=1, help="calls per song (song length = calls * batch * chunk)")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--config", help="a HuBERT config.json to use instead of the released sizes (smoke tests)")
    args = p.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind} x{jax.local_device_count()}, jax {jax.__version__}")
    print("| model | params | dtype | chunk_batch | audio_s | compile_s | warm_s | audio s/s | programs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        r = bench(name, args)
        print(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['dtype']} | {r['chunk_batch']} | {r['audio_s']} | "
              f"{r['compile_s']:.2f} | {r['warm_s']:.2f} | {r['audio_per_s']:.2f} | {r['programs']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak host memory and time against lyric length (each length in a fresh process).

    python benchmarks/bench_lyrics_memory.py                  # tiny models, CPU: about 2 min
    python benchmarks/bench_lyrics_memory.py --query-block 100000   # the lyric encoder unblocked

Two tables. *Generation*: ``ACEStepPipeline.random("tiny")`` generating 10 s in 3
steps (as ``sample.py --tiny-random --steps 3``) with English lyrics of each length
in characters; lyrics over the token limit are refused before any model runs, which
the table shows as well. *Lyric encoder*: the tiny Conformer lyric encoder alone
(jitted, float32) on random ids of each length in tokens, past the sampling limit,
to show how its memory grows: linearly with the default query blocks, quadratically
with one block holding every query (``--query-block`` larger than the length).

Peak memory is the child process's peak resident set size (``ru_maxrss``), next to
its resident size just before the measured call (models built, nothing run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VERSE = (
    "[verse]\nI walked along the river where the willows used to grow\n"
    "And every word you whispered there was carried by the flow\n\n"
    "[chorus]\nOh sing it loud, oh sing it clear\nThe night is long but you are here\n\n"
)


def lyrics_of(chars: int) -> str:
    return (VERSE * (chars // len(VERSE) + 1))[:chars]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_generation(chars: int, vocab: str | None) -> dict:
    from acestep_jax.loading import ModelOptions, load_pipeline
    from acestep_jax.sampling import SamplingParams

    pipe = load_pipeline(ModelOptions(tiny_random=True, lyrics_vocab=vocab, compile_cache=""), progress=False)
    lyrics = lyrics_of(chars)
    tokens = len(pipe.lyric_tokenizer.encode(lyrics))
    before = _rss_mb()
    t0 = time.perf_counter()
    try:
        pipe.generate(["pop, piano"], [lyrics], SamplingParams(duration=10, infer_steps=3), seeds=[0])
        outcome = "generated"
    except ValueError:
        outcome = "refused"
    return {"chars": chars, "tokens": tokens, "outcome": outcome, "rss_before_mb": before,
            "peak_mb": _peak_mb(), "seconds": time.perf_counter() - t0}


def measure_encoder(tokens: int, query_block: int | None) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from acestep_jax.models.transformer.config import LyricEncoderConfig
    from acestep_jax.models.transformer.lyric_encoder import QUERY_BLOCK, LyricEncoder

    cfg_path = REPO / "configs" / "tiny" / "transformer.json"
    cfg = json.loads(cfg_path.read_text())
    enc = LyricEncoder(cfg["lyric_hidden_size"], LyricEncoderConfig(**cfg["lyric_encoder"]),
                       dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, tokens, cfg["lyric_hidden_size"]))
    mask = jnp.ones((1, tokens), jnp.int32)
    block = query_block or QUERY_BLOCK
    run = nnx.jit(lambda e, x, m: e(x, m, query_block=block))
    before = _rss_mb()
    t0 = time.perf_counter()
    jax.block_until_ready(run(enc, x, mask))
    return {"tokens": tokens, "query_block": min(block, tokens), "rss_before_mb": before,
            "peak_mb": _peak_mb(), "seconds": time.perf_counter() - t0}


def _child(args: list[str]) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"measurement {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chars", type=int, nargs="*", default=[1000, 3000, 6500, 20000],
                    help="lyric lengths in characters for the generation table")
    ap.add_argument("--tokens", type=int, nargs="*", default=[1024, 4096, 16384],
                    help="lyric lengths in tokens for the lyric-encoder table")
    ap.add_argument("--query-block", type=int, help="lyric-encoder queries per block (default: the model's)")
    ap.add_argument("--lyrics-vocab", help="lyric vocabulary (default: found as the pipeline finds it)")
    ap.add_argument("--one", choices=["generation", "encoder"], help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one == "generation":
        print(json.dumps(measure_generation(args.length, args.lyrics_vocab)))
        return 0
    if args.one == "encoder":
        print(json.dumps(measure_encoder(args.length, args.query_block)))
        return 0

    import jax

    print(f"# {platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__}, Python {platform.python_version()}")
    vocab = ["--lyrics-vocab", args.lyrics_vocab] if args.lyrics_vocab else []
    if args.chars:
        print("\nGeneration (tiny models, 10 s, 3 steps):\n")
        print("| characters | tokens | outcome | RSS before MB | peak RSS MB | seconds |")
        print("|---|---|---|---|---|---|")
        for n in args.chars:
            r = _child(["--one", "generation", "--length", str(n), *vocab])
            print(f"| {r['chars']} | {r['tokens']} | {r['outcome']} | {r['rss_before_mb']:.0f} | "
                  f"{r['peak_mb']:.0f} | {r['seconds']:.2f} |", flush=True)
    if args.tokens:
        block = ["--query-block", str(args.query_block)] if args.query_block else []
        print("\nLyric encoder alone (tiny, float32, compile + run):\n")
        print("| tokens | query block | RSS before MB | peak RSS MB | seconds |")
        print("|---|---|---|---|---|")
        for n in args.tokens:
            r = _child(["--one", "encoder", "--length", str(n), *block])
            print(f"| {r['tokens']} | {r['query_block']} | {r['rss_before_mb']:.0f} | {r['peak_mb']:.0f} | "
                  f"{r['seconds']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Memory of the full-size masked decode on paper: compiled from abstract shapes, nothing allocated.

    python benchmarks/plan_decode.py --seconds 240 --batch 1 8

Prints XLA's memory analysis (arguments, outputs, temporaries) of the length-masked
decode at 48 kHz and the duration's 128-frame bucket: the plain one-program decode
(``codec._decode_plain``) and, with ``--window``, the windowed one (``_decode_windowed``,
the pipeline's choice past ``OVERLAP_DECODE_SECONDS``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp

from acestep_jax.codec import MusicCodec
from acestep_jax.codec.codec import (
    OUTPUT_SAMPLE_RATE,
    _decode_plain,
    _decode_windowed,
    seconds_to_frames,
)
from acestep_jax.nn import abstract_model
from acestep_jax.presets import preset_config
from acestep_jax.sampling.tasks import bucket_frames


def plan(codec, batch: int, frames: int, window: int | None) -> dict:
    latents = jax.ShapeDtypeStruct((batch, 8, 16, frames), jnp.float32)
    n = jax.ShapeDtypeStruct((batch,), jnp.int32)
    if window is None:
        lowered = _decode_plain.lower(codec, latents, n, n, OUTPUT_SAMPLE_RATE)
    else:
        lowered = _decode_windowed.lower(codec, latents, n, n, window, 8 * window, OUTPUT_SAMPLE_RATE)
    m = lowered.compile().memory_analysis()
    gib = 2.0**30
    return {"batch": batch, "frames": frames, "window": window, "arguments_gib": m.argument_size_in_bytes / gib,
            "outputs_gib": m.output_size_in_bytes / gib, "temporaries_gib": m.temp_size_in_bytes / gib}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--preset", default="full", help="model sizes (tiny: a smoke test)")
    ap.add_argument("--window", type=int, default=None, help="latent frames per window (the pipeline: 128)")
    args = ap.parse_args(argv)
    dcae, vocoder = preset_config(args.preset, "dcae"), preset_config(args.preset, "vocoder")
    codec = abstract_model(lambda r: MusicCodec(dcae, vocoder, rngs=r))
    frames = bucket_frames(seconds_to_frames(args.seconds))
    for b in args.batch:
        print(plan(codec, b, frames, args.window), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

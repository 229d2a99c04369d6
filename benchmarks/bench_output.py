"""The output path after sampling: 44.1 → 48 kHz resampling and file writing.

    python benchmarks/bench_output.py                  # 240 s stereo songs, batch 1 (2 CPUs: ~1 min)
    python benchmarks/bench_output.py --batch 4 --seconds 60

Resampling: the previous host path (decoded 44.1 kHz audio copied to the host, then
the same polyphase filter in numpy) against the device path (the jitted
:func:`acestep_jax.codec.resample.resample` on device-resident audio, then the
finished 48 kHz audio copied to the host), after one warm-up call, median of
``--repeats``; with their largest difference. Writing: FLAC files written one after
another against :class:`acestep_jax.outputs.OutputWriter`, whose ``submit`` returns
at once so the next batch can sample while the files are encoded.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import numpy as np

from acestep_jax.codec.audio_io import save_audio
from acestep_jax.codec.codec import OUTPUT_SAMPLE_RATE, SAMPLE_RATE
from acestep_jax.codec.resample import resample, resampled_length, sinc_resample_kernel
from acestep_jax.outputs import OutputWriter


def host_resample(audio: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """The previous host implementation (numpy sliding windows × the same filter bank), for comparison."""
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernel, width = sinc_resample_kernel(orig, new)
    lead, length = audio.shape[:-1], audio.shape[-1]
    x = np.pad(audio.reshape(-1, length), ((0, 0), (width, width + orig)))
    frames = np.lib.stride_tricks.sliding_window_view(x, kernel.shape[1], axis=-1)[:, ::orig]
    out = np.einsum("bfk,pk->bfp", frames, kernel).reshape(x.shape[0], -1)
    return np.ascontiguousarray(out[:, : resampled_length(length, orig_sr, new_sr)]).reshape(*lead, -1)


def _median_time(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (compiles the device path)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--format", default="flac")
    args = ap.parse_args(argv)

    n = int(args.seconds * 44100)
    device = jax.devices()[0]
    rng = np.random.default_rng(0)
    decoded = jax.device_put(rng.uniform(-0.5, 0.5, (args.batch, 2, n)).astype(np.float32), device)
    jax.block_until_ready(decoded)

    host_s, host_out = _median_time(lambda: host_resample(np.asarray(decoded), SAMPLE_RATE, OUTPUT_SAMPLE_RATE), args.repeats)
    dev_s, dev_out = _median_time(lambda: np.asarray(resample(decoded, SAMPLE_RATE, OUTPUT_SAMPLE_RATE)), args.repeats)
    dev_only_s, _ = _median_time(lambda: jax.block_until_ready(resample(decoded, SAMPLE_RATE, OUTPUT_SAMPLE_RATE)), args.repeats)
    print(f"# {device.device_kind} ({platform.machine()}, {os.cpu_count()} CPUs), jax {jax.__version__}")
    print(f"\nResampling {args.batch} x {args.seconds:g} s stereo, 44.1 -> 48 kHz:\n")
    print("| path | seconds | vs host |")
    print("|---|---|---|")
    print(f"| host numpy (copy 44.1 kHz out, resample) | {host_s:.3f} | 1.00x |")
    print(f"| device (resample, copy 48 kHz out) | {dev_s:.3f} | {host_s / dev_s:.2f}x |")
    print(f"| device, resampling alone | {dev_only_s:.3f} | {host_s / dev_only_s:.2f}x |")
    print(f"\nlargest difference device - host: {np.abs(dev_out - host_out).max():.2e}")

    audio = np.asarray(dev_out)
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"song_{i}.{args.format}" for i in range(len(audio))]
        t0 = time.perf_counter()
        for path, item in zip(paths, audio):
            save_audio(path, item, OUTPUT_SAMPLE_RATE)
        blocking = time.perf_counter() - t0
        with OutputWriter() as writer:
            t0 = time.perf_counter()
            for path, item in zip(paths, audio):
                writer.submit(path, item, OUTPUT_SAMPLE_RATE, record={"path": str(path)})
            submitted = time.perf_counter() - t0
            writer.flush()
            flushed = time.perf_counter() - t0
    print(f"\nWriting {len(audio)} {args.format} file(s): one after another {blocking:.3f} s; "
          f"OutputWriter.submit returns after {submitted * 1e3:.1f} ms (all written after {flushed:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

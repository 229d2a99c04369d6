"""Full-size conversion and loading, measured: time and peak host memory (anonymous vs file-backed).

    python benchmarks/bench_convert.py build /scratch/ref          # a 16 GB reference-layout folder, random weights
    python benchmarks/bench_convert.py convert /scratch/ref /scratch/ckpt [--dtype bfloat16]
    python benchmarks/bench_convert.py load /scratch/ckpt          # sample.py --checkpoint (a 2 s, 1-step song)
    python benchmarks/bench_convert.py load /scratch/ckpt --duration 240 --steps 2

``build`` writes the released checkpoint's layout (``ace_step_transformer/``,
``music_dcae_f8c8/``, ``music_vocoder/``, ``umt5-base/``) from the golden manifests
(``../shared/golden/manifests``: every tensor name and shape, the real configs) with
random float32 values, streaming each safetensors file in 64 MB pieces so the builder
itself stays small. ``convert`` and ``load`` run ``convert_weights.py`` /
``sample.py`` as a child process and sample its ``/proc/PID/status`` every 0.1 s:
``RssAnon`` (memory the process allocated), ``RssFile`` (file pages it maps, e.g. a
memory-mapped safetensors file; the kernel can drop them), ``VmHWM`` (peak resident).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.fake_checkpoint (the tokenizer)

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = Path(os.environ.get("ACESTEP_GOLDEN_DIR", REPO.parent / "shared" / "golden")) / "manifests"
VOCAB = REPO.parent / "shared" / "assets" / "lyrics_vocab.json"
FILES = {  # component folder -> (weights file, config class name)
    "ace_step_transformer": ("diffusion_pytorch_model.safetensors", "ACEStepTransformer2DModel"),
    "music_dcae_f8c8": ("diffusion_pytorch_model.safetensors", "AutoencoderDC"),
    "music_vocoder": ("diffusion_pytorch_model.safetensors", "ADaMoSHiFiGANV1"),
    "umt5-base": ("model.safetensors", None),
}
CHUNK = 16 * 2**20  # float32 values per write (64 MB)


# ----------------------------------------------------------------------------- build
def write_random_safetensors(path: Path, tensors: dict, seed: int) -> int:
    """Write ``{name: {"shape", "dtype": "float32"}}`` as a safetensors file of random values, streamed."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, info in tensors.items():
        if info["dtype"] != "float32":
            raise ValueError(f"{name}: only float32 manifests are supported, got {info['dtype']}")
        size = 4 * math.prod(info["shape"])
        header[name] = {"dtype": "F32", "shape": list(info["shape"]), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for info in tensors.values():
            left = math.prod(info["shape"])
            scale = np.float32(1.0 / math.sqrt(max(info["shape"][-1], 1)))
            while left:
                n = min(left, CHUNK)
                f.write(((rng.random(n, dtype=np.float32) - 0.5) * scale).tobytes())
                left -= n
    os.replace(tmp, path)
    return offset


def build(root: Path) -> None:
    t0 = time.perf_counter()
    total = 0
    for seed, (folder, (filename, class_name)) in enumerate(FILES.items()):
        manifest = json.loads((MANIFESTS / f"{folder}.json").read_text())
        out = root / folder
        out.mkdir(parents=True, exist_ok=True)
        config = dict(manifest["config"])
        if class_name:
            config = {"_class_name": class_name, **config}
        (out / "config.json").write_text(json.dumps(config, indent=2))
        total += write_random_safetensors(out / filename, manifest["tensors"], seed)
        print(f"{folder}: {len(manifest['tensors'])} tensors", flush=True)
    from tests.fake_checkpoint import (
        write_tiny_tokenizer,  # a small prompt tokenizer with UMT5's special ids
    )

    write_tiny_tokenizer(root / "umt5-base")
    print(f"built {root}: {total / 1e9:.1f} GB of float32 weights in {time.perf_counter() - t0:.0f} s")


# ----------------------------------------------------------------------------- measure
def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; return its wall time, exit code and peak memory figures (bytes)."""
    peaks: dict[str, int] = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})})

    def sample():
        while proc.poll() is None:
            try:
                for k, v in _status(proc.pid).items():
                    peaks[k] = max(peaks.get(k, 0), v)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                break
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    sampler.join()
    return {"seconds": time.perf_counter() - t0, "returncode": code, **peaks}


def report(what: str, m: dict) -> None:
    gb = {k: f"{m.get(k, 0) / 1e9:.2f}" for k in ("RssAnon", "RssFile", "VmHWM")}
    print(f"\n| what | seconds | peak RssAnon GB | peak RssFile GB | peak resident (VmHWM) GB |\n|---|---|---|---|---|\n"
          f"| {what} | {m['seconds']:.0f} | {gb['RssAnon']} | {gb['RssFile']} | {gb['VmHWM']} |")
    print(f"exit {m['returncode']}; {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")


def load_stages(checkpoint: str) -> int:
    """Load a converted checkpoint's components one by one in this process, printing host memory
    (``RssAnon``) and the bytes of live jax arrays (the CPU "device" memory) after each."""
    import jax

    from acestep_jax.convert.checkpoint import load_component
    from acestep_jax.convert.components import COMPONENTS

    def line(what):
        live = sum(a.nbytes for a in jax.live_arrays())
        st = _status(os.getpid())
        print(f"| {what} | {st['RssAnon'] / 1e9:.2f} | {st['VmHWM'] / 1e9:.2f} | {live / 1e9:.2f} |", flush=True)

    print("| after | RssAnon GB | peak resident GB | live jax arrays GB |\n|---|---|---|---|")
    line("imports")
    models = []
    for name, overrides in (("transformer", {"dtype": "bfloat16"}), ("text_encoder", {"dtype": "float32"}),
                            ("dcae", {}), ("vocoder", {})):
        models.append(load_component(Path(checkpoint) / name, COMPONENTS[name], **overrides))
        line(f"load {name}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write a full-size reference-layout folder with random weights")
    b.add_argument("root", type=Path)
    c = sub.add_parser("convert", help="time and memory of convert_weights.py")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--dtype", default="bfloat16")
    ld = sub.add_parser("load", help="time and memory of sample.py --checkpoint (a short song by default)")
    ld.add_argument("checkpoint")
    ld.add_argument("--duration", type=float, default=2.0, help="seconds of audio")
    ld.add_argument("--steps", type=int, default=1, help="sampling steps")
    ld.add_argument("--stages", action="store_true", help="load component by component in this process")
    args = p.parse_args(argv)
    if args.command == "build":
        build(args.root)
        return 0
    if args.command == "convert":
        cmd = [sys.executable, "convert_weights.py", args.src, args.dst, "--dtype", args.dtype,
               "--lyrics-vocab", str(VOCAB), "--quiet"]
        m = measure(cmd)
        report(f"convert_weights.py (--dtype {args.dtype})", m)
        return m["returncode"]
    if args.stages:
        return load_stages(args.checkpoint)
    out = Path(args.checkpoint).parent / "bench_load.wav"
    cmd = [sys.executable, "sample.py", "--checkpoint", args.checkpoint, "--duration", f"{args.duration:g}",
           "--steps", str(args.steps), "--out", str(out), "--compile-cache", "", "--quiet"]
    m = measure(cmd, env={"JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
    report(f"sample.py --checkpoint ({args.duration:g} s, {args.steps} step{'s' * (args.steps > 1)})", m)
    return m["returncode"]


if __name__ == "__main__":
    sys.exit(main())

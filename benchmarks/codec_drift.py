"""The codec in bfloat16: its drift against float32 on the same weights, beside the reference's.

Drift is the relative L2 error ``|x_bf16 - x_f32| / |x_f32|`` of one decode (latents → 44.1 kHz
audio) and one encode (audio → latents). Cases:

- ``tiny``: the golden tiny codec (``GOLDEN/music_dcae``, the reference's own state dicts)
  on its golden latents and audio;
- ``full``: the released architecture with the weights ``reference_codec_drift.py`` wrote
  (PyTorch's default initialisation) on the inputs it wrote;
- ``full-presets``: the released architecture with :func:`acestep_jax.presets.random_weights`
  (ours only: the reference cannot read these weights).

The reference's numbers come from ``reference_codec_drift.py`` (run it first, under a
PyTorch environment, with the same ``--out-dir``); this prints both side by side.

    python benchmarks/codec_drift.py --out-dir /tmp/codec_drift [--json drift.json]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def drift(codec, latents, audio) -> dict:
    """bfloat16-vs-float32 drift of one decode and one encode of ``codec`` (a float32 codec)."""
    from acestep_jax.codec.codec import codec_in_dtype

    bf16 = codec_in_dtype(codec, "bfloat16")
    return {
        "decode": rel(codec.decode(latents), bf16.decode(latents)),
        "encode": rel(codec.encode(audio, 44100)[0], bf16.encode(audio, 44100)[0]),
    }


def golden_codec(golden: str):
    """The golden tiny codec in float32 and its ``io.npz``."""
    from acestep_jax.codec import DCAEConfig, MusicCodec, VocoderConfig
    from acestep_jax.convert.dcae import load_dcae
    from acestep_jax.convert.vocoder import load_vocoder

    g = os.path.join(golden, "music_dcae")
    with open(os.path.join(g, "config.json")) as f:
        c = json.load(f)
    dcae = load_dcae(os.path.join(g, "dcae.safetensors"), DCAEConfig.from_dict(c["dcae"]))
    vocoder = load_vocoder(os.path.join(g, "vocoder.safetensors"), VocoderConfig.from_dict(c["vocoder"]))
    codec = MusicCodec.from_parts(dcae, vocoder, scale_factor=c["scale_factor"], shift_factor=c["shift_factor"],
                                  min_mel=c["min_mel_value"], max_mel=c["max_mel_value"])
    return codec, np.load(os.path.join(g, "io.npz"))


def full_codec(weights_dir: str | None, seed: int = 0):
    """The released architecture in float32: the reference script's weights, or (``None``) presets' random ones."""

    from acestep_jax.codec import MusicCodec
    from acestep_jax.nn import abstract_model
    from acestep_jax.presets import preset_config, random_weights

    d_cfg, v_cfg = preset_config("full", "dcae"), preset_config("full", "vocoder")
    if weights_dir is None:
        abstract = abstract_model(lambda r: MusicCodec(d_cfg, v_cfg, rngs=r))
        return random_weights(abstract, seed, conv_fan_in=True)
    from acestep_jax.convert.dcae import load_dcae
    from acestep_jax.convert.vocoder import load_vocoder

    return MusicCodec.from_parts(load_dcae(os.path.join(weights_dir, "dcae.safetensors"), d_cfg),
                                 load_vocoder(os.path.join(weights_dir, "vocoder.safetensors"), v_cfg))


def full_inputs(frames: int, seed: int = 0):
    """Latents ``[1, 8, 16, frames]`` and matching audio (as ``reference_codec_drift.py`` draws them)."""
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((1, 8, 16, frames)).astype(np.float32)
    t = np.arange(frames * 4096) / 44100
    audio = 0.3 * np.sin(2 * np.pi * np.array([[220.0], [330.0]]) * t) + 0.05 * rng.standard_normal((2, t.size))
    return latents, audio[None].astype(np.float32)


def table(ours: dict, ref: dict) -> str:
    rows = ["| case | what | ours (JAX) | reference (PyTorch) |", "| --- | --- | --- | --- |"]
    for case in ours:
        for what in ("decode", "encode"):
            r = ref.get(case, {}).get(what)
            rows.append(f"| {case} | {what} | {100 * ours[case][what]:.3f}% | "
                        f"{'—' if r is None else f'{100 * r:.3f}%'} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--golden", default=os.environ.get("ACESTEP_GOLDEN_DIR", os.path.join(ROOT, "..", "shared", "golden")))
    p.add_argument("--out-dir", help="reference_codec_drift.py's --out-dir (its drift.json, full-size weights, inputs)")
    p.add_argument("--frames", type=int, default=16, help="latent frames of the full-size presets case")
    p.add_argument("--cases", default="tiny,full,full-presets")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)

    cases = args.cases.split(",")
    ref = {}
    if args.out_dir and os.path.isfile(os.path.join(args.out_dir, "drift.json")):
        with open(os.path.join(args.out_dir, "drift.json")) as f:
            ref = json.load(f)
    ours = {}
    if "tiny" in cases:
        codec, io = golden_codec(args.golden)
        ours["tiny"] = drift(codec, io["latents_44k"], io["audio_44k"])
        print("tiny", ours["tiny"], flush=True)
    if "full" in cases and "full" in ref:
        inputs = np.load(os.path.join(args.out_dir, "inputs.npz"))
        codec = full_codec(args.out_dir)
        ours["full"] = drift(codec, inputs["latents"], inputs["audio"])
        ref_out = np.load(os.path.join(args.out_dir, "outputs_f32.npz"))  # same weights: float32 agrees
        ours["full"]["f32_vs_reference_decode"] = rel(ref_out["decode_f32"], codec.decode(inputs["latents"])[0])
        ours["full"]["f32_vs_reference_encode"] = rel(ref_out["encode_f32"], codec.encode(inputs["audio"], 44100)[0])
        print("full", ours["full"], flush=True)
    if "full-presets" in cases:
        ours["full-presets"] = drift(full_codec(None), *full_inputs(args.frames))
        print("full-presets", ours["full-presets"], flush=True)
    print(table(ours, ref))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ours": ours, "reference": ref}, f, indent=1)


if __name__ == "__main__":
    main()

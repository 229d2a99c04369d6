"""The reference codec's bfloat16 drift against float32, on the weights ``codec_drift.py`` reads.

Runs under a separate PyTorch environment (torch + diffusers; torchaudio only for the
encode's mel front end), never the project's. It builds diffusers' ``AutoencoderDC`` and
the reference's own ``ADaMoSHiFiGANV1`` (its ``acestep/music_dcae`` source, taken from
the reference repository with ``git show``) and runs ``MusicDCAE``'s encode and decode
arithmetic at 44.1 kHz twice: in float32, and after ``.to(torch.bfloat16)`` of the modules
and the inputs, which is what the reference pipeline does with ``dtype="bfloat16"``.

Cases: ``tiny`` (the golden tiny codec in ``GOLDEN/music_dcae`` and its latents and audio)
and ``full`` (the released architecture, ``acestep_jax/configs/full``, with PyTorch's
default initialisation from seed 0; its weights and inputs are written to ``--out-dir`` so
``codec_drift.py`` loads the very same ones).

    /path/to/torch-venv/bin/python benchmarks/reference_codec_drift.py \\
        --golden ../shared/golden --reference-repo REPO.git --out-dir /tmp/codec_drift
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("acestep/music_dcae/music_vocoder.py", "acestep/music_dcae/music_log_mel.py")
SCALE, SHIFT, MIN_MEL, MAX_MEL = 0.1786, -1.9091, -11.0, 3.0


def import_reference(repo: str):
    """``ADaMoSHiFiGANV1`` from the reference source (librosa is only used by its ``__main__``)."""
    tmp = tempfile.mkdtemp(prefix="ref_codec_")
    for path in SOURCES:
        text = subprocess.run(["git", f"--git-dir={repo}", "show", f"HEAD:{path}"], check=True,
                              capture_output=True, text=True).stdout
        with open(os.path.join(tmp, os.path.basename(path)), "w") as f:
            f.write(text)
    sys.modules.setdefault("librosa", types.ModuleType("librosa"))
    try:
        import torchaudio  # noqa: F401
    except ImportError:  # no torchaudio: decode only (the mel front end needs its MelScale)
        import torch

        class MelScale(torch.nn.Module):
            def __init__(self, *args, **kwargs):
                super().__init__()

            def forward(self, x):
                raise RuntimeError("torchaudio is not installed: no reference encode")

        ta = types.ModuleType("torchaudio")
        ta.transforms = types.ModuleType("torchaudio.transforms")
        ta.transforms.MelScale = MelScale
        sys.modules["torchaudio"], sys.modules["torchaudio.transforms"] = ta, ta.transforms
    sys.path.insert(0, tmp)
    from music_vocoder import ADaMoSHiFiGANV1

    return ADaMoSHiFiGANV1


def decode(dcae, vocoder, latents):
    """``MusicDCAE.decode`` at 44.1 kHz: ``[1, 8, 16, T]`` → float32 ``[2, samples]``."""
    import torch

    with torch.no_grad():
        z = latents / SCALE + SHIFT
        mel = dcae.decoder(z)
        mel = (mel * 0.5 + 0.5) * (MAX_MEL - MIN_MEL) + MIN_MEL
        wav = torch.cat([vocoder.decode(mel[:, c]).squeeze(1) for c in range(2)], dim=0)
    return wav.float().numpy()


def encode(dcae, vocoder, audio):
    """``MusicDCAE.encode`` at 44.1 kHz: ``[1, 2, N]`` → float32 latents ``[1, 8, 16, T]``."""
    import torch

    with torch.no_grad():
        n = audio.shape[-1]
        if n % 4096:
            audio = torch.nn.functional.pad(audio, (0, 4096 - n % 4096))
        mel = torch.stack([vocoder.mel_transform(a) for a in audio])
        mel = ((mel - MIN_MEL) / (MAX_MEL - MIN_MEL) - 0.5) / 0.5
        z = dcae.encoder(mel)
        return ((z - SHIFT) * SCALE).float().numpy()


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def drift(dcae, vocoder, latents, audio, save: str | None = None) -> dict:
    """bfloat16-vs-float32 drift (the bfloat16 run on copies: casting back would round the weights)."""
    import copy

    import torch

    lat, aud = torch.from_numpy(latents), torch.from_numpy(audio)
    out = {"decode_f32": decode(dcae, vocoder, lat)}
    try:
        out["encode_f32"] = encode(dcae, vocoder, aud)
    except RuntimeError as e:
        print(f"encode skipped: {e}")
    if save:  # the float32 outputs, for codec_drift.py's parity check
        np.savez(save, **out)
    dcae, vocoder = copy.deepcopy(dcae).to(torch.bfloat16), copy.deepcopy(vocoder).to(torch.bfloat16)
    result = {"decode": rel(out["decode_f32"], decode(dcae, vocoder, lat.to(torch.bfloat16)))}
    if "encode_f32" in out:
        result["encode"] = rel(out["encode_f32"], encode(dcae, vocoder, aud.to(torch.bfloat16)))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--golden", default=os.environ.get("ACESTEP_GOLDEN_DIR", os.path.join(ROOT, "..", "shared", "golden")))
    p.add_argument("--reference-repo", required=True, help="the reference repository's git directory")
    p.add_argument("--out-dir", required=True, help="where the full-size weights, inputs and drift.json go")
    p.add_argument("--frames", type=int, default=16, help="latent frames of the full-size case")
    p.add_argument("--no-full", action="store_true", help="only the tiny golden codec")
    args = p.parse_args(argv)

    import torch
    from diffusers import AutoencoderDC
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    Vocoder = import_reference(args.reference_repo)
    os.makedirs(args.out_dir, exist_ok=True)
    results = {"torch": torch.__version__}

    g = os.path.join(args.golden, "music_dcae")
    with open(os.path.join(g, "config.json")) as f:
        cfg = json.load(f)
    io = np.load(os.path.join(g, "io.npz"))
    dcae, vocoder = AutoencoderDC(**cfg["dcae"]).eval(), Vocoder(**cfg["vocoder"]).eval()
    for model, name in ((dcae, "dcae"), (vocoder, "vocoder")):
        state = {k: torch.from_numpy(v) for k, v in load_file(os.path.join(g, f"{name}.safetensors")).items()}
        missing = [k for k in model.load_state_dict(state, strict=False).missing_keys if "mel_transform" not in k]
        if missing:
            raise SystemExit(f"{name}: weights missing from the golden file: {missing}")
    # the float32 run must be the golden one (the weights really loaded)
    check = {"f32_vs_golden_decode": rel(io["decoded_44k"], decode(dcae, vocoder, torch.from_numpy(io["latents_44k"]))),
             "f32_vs_golden_encode": rel(io["latents_44k"], encode(dcae, vocoder, torch.from_numpy(io["audio_44k"])))}
    results["tiny"] = {**drift(dcae, vocoder, io["latents_44k"], io["audio_44k"]), **check}
    print("tiny", results["tiny"], flush=True)

    if not args.no_full:
        configs = os.path.join(ROOT, "acestep_jax", "configs", "full")
        with open(os.path.join(configs, "dcae.json")) as f:
            d_cfg = {k: v for k, v in json.load(f).items() if k not in ("dtype", "param_dtype")}
        with open(os.path.join(configs, "vocoder.json")) as f:
            v_cfg = {k: v for k, v in json.load(f).items() if k not in ("dtype", "param_dtype")}
        torch.manual_seed(0)
        dcae, vocoder = AutoencoderDC(**d_cfg).eval(), Vocoder(**v_cfg).eval()
        save_file({k: v.contiguous() for k, v in dcae.state_dict().items()}, os.path.join(args.out_dir, "dcae.safetensors"))
        save_file({k: v.contiguous() for k, v in vocoder.state_dict().items()},
                  os.path.join(args.out_dir, "vocoder.safetensors"))
        rng = np.random.default_rng(0)
        latents = rng.standard_normal((1, 8, 16, args.frames)).astype(np.float32)
        t = np.arange(args.frames * 4096) / 44100
        audio = 0.3 * np.sin(2 * np.pi * np.array([[220.0], [330.0]]) * t) + 0.05 * rng.standard_normal((2, t.size))
        audio = audio[None].astype(np.float32)
        np.savez(os.path.join(args.out_dir, "inputs.npz"), latents=latents, audio=audio)
        with open(os.path.join(args.out_dir, "configs.json"), "w") as f:
            json.dump({"dcae": d_cfg, "vocoder": v_cfg}, f)
        results["full"] = drift(dcae, vocoder, latents, audio, save=os.path.join(args.out_dir, "outputs_f32.npz"))
        results["full_frames"] = args.frames
        print("full", results["full"], flush=True)

    with open(os.path.join(args.out_dir, "drift.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

"""``sample.py``: generate music with ACE-Step v1 in JAX.

    sample.py --tiny-random --duration 10 --out outputs/demo.wav       # no checkpoint needed
    sample.py --checkpoint ACE-Step/ACE-Step-v1-3.5B --prompt "funk, bass" \\
              --lyrics-file song.txt --duration 60 --steps 27 --batch 4 --out outputs/funk.flac
    sample.py --params-json outputs/funk_0.json --seeds 5                # rerun with changes

Each output (``NAME.FORMAT``, or ``NAME_i.FORMAT`` for a batch) gets a ``.json`` beside it holding every
generation parameter; ``--params-json`` reloads such a file (flags given on the
command line win) and reruns the item's whole batch, which reproduces it exactly
(guidance statistics are taken over the batch, as in the reference).

Several hosts: run the same command on each with ``--distributed`` (or with
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set; see
:mod:`acestep_jax.distributed`); the batch is sharded over the devices of all
hosts (``--batch`` a multiple of their number) and host 0 writes every output::

    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
        sample.py --checkpoint ckpt --batch 16 --seeds 1 --out outputs/song.wav      # host 1: PROCESS_ID=1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from acestep_jax.convert.release import HUB_REPO

log = logging.getLogger("acestep_jax.sample")

FORMATS = ("wav", "flac", "ogg", "mp3")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("model")
    src.add_argument("--checkpoint", default=HUB_REPO,
                     help="converted checkpoint folder, reference-layout folder (converted once and cached) or Hub id")
    src.add_argument("--tiny-random", action="store_true", help="tiny random models instead of a checkpoint (demo)")
    src.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="transformer compute dtype")
    src.add_argument("--param-dtype", choices=("bfloat16", "float32"), help="transformer storage dtype")
    src.add_argument("--lyrics-vocab", help="lyric vocabulary (default: in the checkpoint, else downloaded)")
    src.add_argument("--transformer", help="a fine-tuned transformer folder (train.py's RUN/transformer) "
                     "replacing the checkpoint's")
    src.add_argument("--lora", help="LoRA adapter (PEFT/diffusers safetensors file or folder)")
    src.add_argument("--lora-weight", type=float, default=1.0)
    src.add_argument("--shard", action="store_true", help="shard the batch over all devices (data axis)")
    src.add_argument("--distributed", action="store_true",
                     help="join the other hosts' processes (multi-host; implies --shard)")
    src.add_argument("--compile-cache", help="persistent XLA compilation cache folder (default: the cache "
                     "folder's xla/, see ACESTEP_JAX_CACHE; '' disables)")

    text = p.add_argument_group("conditioning")
    text.add_argument("--prompt", default="pop, upbeat, piano, female vocal", help="tags / description")
    text.add_argument("--lyrics", default="", help="lyrics text (structure tags like [verse] allowed)")
    text.add_argument("--lyrics-file", help="read the lyrics from this file")
    text.add_argument("--duration", type=float, default=60.0, help="seconds (text2music/retake)")

    s = p.add_argument_group("sampling")
    s.add_argument("--steps", dest="infer_steps", type=int, default=60)
    s.add_argument("--scheduler", dest="scheduler_type", default="euler", help="euler, heun or pingpong")
    s.add_argument("--cfg-type", dest="cfg_type", default="apg", help="apg, cfg or cfg_star")
    s.add_argument("--guidance-scale", type=float, default=15.0)
    s.add_argument("--guidance-interval", type=float, default=0.5)
    s.add_argument("--guidance-interval-decay", type=float, default=0.0)
    s.add_argument("--min-guidance-scale", type=float, default=3.0)
    s.add_argument("--guidance-scale-text", type=float, default=0.0)
    s.add_argument("--guidance-scale-lyric", type=float, default=0.0)
    s.add_argument("--omega", dest="omega_scale", type=float, default=10.0)
    s.add_argument("--no-erg-tag", dest="use_erg_tag", action="store_false")
    s.add_argument("--no-erg-lyric", dest="use_erg_lyric", action="store_false")
    s.add_argument("--no-erg-diffusion", dest="use_erg_diffusion", action="store_false")
    s.add_argument("--oss-steps", default="", help="comma-separated custom steps, e.g. 16,29,52,96,129,158")
    s.add_argument("--no-bucket", dest="bucket", action="store_false",
                   help="do not round the length up to a bucket (more compiles)")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--seeds", type=int, nargs="+", help="one per item (default: random)")
    s.add_argument("--retake-seeds", type=int, nargs="+")

    t = p.add_argument_group("tasks")
    t.add_argument("--task", default="text2music",
                   help="text2music, retake, repaint, extend, edit or audio2audio")
    t.add_argument("--src-audio", help="source audio (repaint/extend/edit; audio2audio reference)")
    t.add_argument("--retake-variance", type=float, default=0.5)
    t.add_argument("--repaint-start", type=float, default=0.0, help="seconds")
    t.add_argument("--repaint-end", type=float, default=0.0, help="seconds")
    t.add_argument("--ref-audio-strength", type=float, default=0.5)
    t.add_argument("--edit-target-prompt")
    t.add_argument("--edit-target-lyrics")
    t.add_argument("--edit-n-min", dest="n_min", type=float, default=0.0)
    t.add_argument("--edit-n-max", dest="n_max", type=float, default=1.0)
    t.add_argument("--edit-n-avg", dest="n_avg", type=int, default=1)

    o = p.add_argument_group("output")
    o.add_argument("--out", default="outputs/output.wav", help="output path (NAME.FORMAT; batch items get _i)")
    o.add_argument("--format", choices=FORMATS, help="default: from --out's extension")
    o.add_argument("--sample-rate", type=int, default=48000)
    o.add_argument("--params-json", help="reload the parameters of an earlier output's JSON")
    o.add_argument("--quiet", action="store_true")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.params_json:
        saved = json.loads(Path(args.params_json).read_text())
        dests = {a.dest for a in parser._actions}
        defaults = {k: v for k, v in saved.items() if k in dests and v is not None and k not in ("params_json", "lora")}
        if isinstance(saved.get("lora"), dict):
            defaults.update(lora=saved["lora"]["path"], lora_weight=saved["lora"]["weight"])
        if "oss_steps" in defaults and not isinstance(defaults["oss_steps"], str):
            defaults["oss_steps"] = ",".join(map(str, defaults["oss_steps"]))
        if "batch_seeds" in saved:  # rerun the item's whole batch (results depend on the batch)
            defaults.update(seeds=saved["batch_seeds"], retake_seeds=saved["batch_retake_seeds"],
                            batch=saved["batch_size"])
        if "target_prompt" in saved:
            defaults["edit_target_prompt"] = saved["target_prompt"]
        if "target_lyrics" in saved:
            defaults["edit_target_lyrics"] = saved["target_lyrics"]
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    return args


def sampling_params(args):
    from acestep_jax.sampling import SamplingParams

    try:
        oss = tuple(int(x) for x in args.oss_steps.split(",") if x.strip()) if args.oss_steps else ()
    except ValueError:
        raise ValueError(f"--oss-steps must be comma-separated integers, got {args.oss_steps!r}") from None
    fields = SamplingParams.__dataclass_fields__
    values = {k: getattr(args, k) for k in fields if hasattr(args, k) and k != "oss_steps"}
    params = SamplingParams(**values, oss_steps=oss)
    return params


def validate(args, params) -> None:
    """Check everything that can be checked before models load."""
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    for name in ("seeds", "retake_seeds"):
        v = getattr(args, name)
        if v is not None and len(v) not in (1, args.batch):
            raise ValueError(f"--{name.replace('_', '-')} needs 1 or --batch ({args.batch}) values, got {len(v)}")
    needs_src = params.task in ("repaint", "extend", "edit", "audio2audio")
    if needs_src and not args.src_audio:
        raise ValueError(f"--task {params.task} needs --src-audio")
    if args.src_audio and not os.path.isfile(args.src_audio):
        raise FileNotFoundError(f"--src-audio {args.src_audio} does not exist")
    if args.lyrics_file and not os.path.isfile(args.lyrics_file):
        raise FileNotFoundError(f"--lyrics-file {args.lyrics_file} does not exist")
    if params.task == "edit" and (args.edit_target_prompt is None or args.edit_target_lyrics is None):
        raise ValueError("--task edit needs --edit-target-prompt and --edit-target-lyrics")
    if args.transformer and not os.path.isdir(args.transformer):
        raise FileNotFoundError(f"--transformer {args.transformer} is not a folder")
    if args.transformer and args.tiny_random:
        raise ValueError("--transformer needs --checkpoint (the other models come from it), not --tiny-random")
    if args.lora and not os.path.exists(args.lora):
        raise FileNotFoundError(f"--lora {args.lora} does not exist")
    fmt = output_format(args)
    if fmt not in FORMATS:
        raise ValueError(f"output format {fmt!r} is not one of {FORMATS}")
    if args.sample_rate <= 0:
        raise ValueError(f"--sample-rate must be positive, got {args.sample_rate}")
    params.validate(_source_frames(args.src_audio) if needs_src else None)


def _source_frames(path: str) -> int:
    """Latent frames the source audio will encode to, from its header (no decoding)."""
    import soundfile as sf

    from acestep_jax.codec import latent_frames

    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 - unreadable header: report the file
        raise ValueError(f"cannot read audio file {path}: {e}") from None
    return latent_frames(info.frames, info.samplerate)


def output_format(args) -> str:
    return (args.format or Path(args.out).suffix.lstrip(".") or "wav").lower()


def output_paths(args, b: int) -> list[Path]:
    """``--out NAME.FORMAT`` for one item, ``NAME_i.FORMAT`` for a batch."""
    out = Path(args.out)
    fmt = output_format(args)
    stem = out.stem if out.suffix else out.name
    folder = out.parent if out.suffix else out
    if b == 1:
        return [folder / f"{stem}.{fmt}"]
    return [folder / f"{stem}_{i}.{fmt}" for i in range(b)]


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    try:
        args = parse_args(argv)
        params = sampling_params(args)
        validate(args, params)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run(args, params)


def run(args, params) -> int:
    from acestep_jax import distributed

    if distributed.requested(args.distributed):
        distributed.initialize()
    import jax

    from acestep_jax.codec import save_audio
    from acestep_jax.convert.core import CheckpointError
    from acestep_jax.files import write_json
    from acestep_jax.pipeline import ACEStepPipeline
    from acestep_jax.sampling import enable_compilation_cache

    if args.compile_cache != "":
        enable_compilation_cache(args.compile_cache)
    lyrics = Path(args.lyrics_file).read_text(encoding="utf-8") if args.lyrics_file else args.lyrics
    try:
        mesh = None
        if args.shard or jax.process_count() > 1:
            from acestep_jax.sharding import make_mesh

            mesh = make_mesh(data=-1)
        log.info("loading models")
        t0 = time.perf_counter()
        if args.tiny_random:
            pipe = ACEStepPipeline.random("tiny", 0, lyrics_vocab=args.lyrics_vocab, mesh=mesh)
        else:
            pipe = ACEStepPipeline.from_checkpoint(args.checkpoint, dtype=args.dtype, param_dtype=args.param_dtype,
                                                   mesh=mesh, lyrics_vocab=args.lyrics_vocab,
                                                   transformer=args.transformer, progress=not args.quiet)
        if args.lora:
            pipe.set_lora(args.lora, args.lora_weight)
        load_time = time.perf_counter() - t0
        log.info("generating %d x %s (the first run of a shape compiles)", args.batch,
                 f"{params.duration:g} s" if params.task in ("text2music", "retake") else params.task)
        result = pipe.generate(
            [args.prompt], [lyrics], params, seeds=args.seeds or None, retake_seeds=args.retake_seeds,
            src_audio=args.src_audio,
            target_prompts=None if args.edit_target_prompt is None else [args.edit_target_prompt],
            target_lyrics=None if args.edit_target_lyrics is None else [args.edit_target_lyrics],
            sample_rate=args.sample_rate, batch_size=args.batch, progress=not args.quiet,
        )
        paths = output_paths(args, result.audio.shape[0])
        mine = zip(paths, result.audio, result.params, strict=True) if jax.process_index() == 0 else ()
        for path, audio, record in mine:  # every host has the whole batch: host 0 writes it
            save_audio(path, audio, result.sample_rate, output_format(args))
            record = {**record, "format": output_format(args), "src_audio": args.src_audio,
                      "checkpoint": None if args.tiny_random else args.checkpoint, "tiny_random": args.tiny_random,
                      "dtype": args.dtype, "audio_path": str(path),
                      "timings": {"load": load_time, **result.timings}}
            write_json(path.with_suffix(".json"), record)
    except (ValueError, OSError, CheckpointError, ImportError) as e:  # OSError: files, downloads
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = result.audio.shape[-1] / result.sample_rate * result.audio.shape[0]
    gen_time = result.timings["diffusion"] + result.timings["decode"]
    for path in paths if jax.process_index() == 0 else ():
        print(path)
    log.info("%.1f s of audio in %.2f s (diffusion %.2f s, decode %.2f s): %.1fx real time",
             seconds, gen_time, result.timings["diffusion"], result.timings["decode"], seconds / max(gen_time, 1e-9))
    return 0


if __name__ == "__main__":
    sys.exit(main())

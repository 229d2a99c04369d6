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
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from acestep_jax.cli.common import (
    USER_ERRORS,
    HelpFormatter,
    add_common_flags,
    check_output_file,
    read_text,
    report,
    setup_logging,
    user_errors,
)
from acestep_jax.codec.audio_io import FORMATS
from acestep_jax.convert.release import HUB_REPO
from acestep_jax.errors import UsageError
from acestep_jax.lora import SCALE_MODES, LoraSpec

log = logging.getLogger("acestep_jax.sample")

MAX_BATCH = 256
DTYPES = ("bfloat16", "float32")
LORA_FLAGS = ("lora", "lora_weight", "lora_scale")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample.py", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    src = p.add_argument_group("model")
    src.add_argument("--checkpoint", default=HUB_REPO,
                     help="converted checkpoint folder, reference-layout folder (converted once and cached) or Hub id")
    src.add_argument("--tiny-random", action="store_true", help="tiny random models instead of a checkpoint (demo)")
    src.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                     help="transformer compute dtype (default: bfloat16)")
    src.add_argument("--param-dtype", choices=DTYPES, help="transformer storage dtype (default: as converted)")
    src.add_argument("--lyrics-vocab", help="lyric vocabulary (default: in the checkpoint, else downloaded)")
    src.add_argument("--transformer", help="a fine-tuned transformer folder (train.py's RUN/transformer) "
                     "replacing the checkpoint's")
    src.add_argument("--lora", action="append", help="LoRA adapter (PEFT/diffusers safetensors file or folder); "
                     "repeat for several, merged in order")
    src.add_argument("--lora-weight", action="append", type=float,
                     help="strength of each --lora, one per --lora in the same order (default 1.0 each)")
    src.add_argument("--lora-scale", action="append", choices=SCALE_MODES,
                     help="'reference': weight x B@A, as the reference pipeline applies LoRAs (published "
                     "ACE-Step LoRAs); 'config': also the file's alpha / r (alpha / sqrt(r) with rsLoRA), "
                     "PEFT's scaling as trained. One for all --lora or one per --lora (default reference)")
    src.add_argument("--shard", action="store_true",
                     help="shard the batch over all devices (data axis); the batch must divide the device count, "
                     "or with --batch-invariant is padded with filler items")
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
                   help="run at the exact length instead of padding it to a bucket of ~12 s (bucketing, the "
                   "default, lets nearby durations share one compiled program)")
    s.add_argument("--batch-invariant", action="store_true",
                   help="take the omega mean shift per item, so each item equals the same request run alone "
                   "(default: over the whole batch, as the reference)")
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
    o.add_argument("--quiet", action="store_true", help="no progress bars")

    j = p.add_argument_group("job files (many requests, batched; see acestep_jax.serving.jobs_file)")
    j.add_argument("--jobs", metavar="FILE", help="JSONL file, one request per line (the project's or the "
                   "reference's parameter names); only the model flags above apply")
    j.add_argument("--out-dir", metavar="DIR", help="where --jobs writes its outputs (reruns skip finished jobs)")
    j.add_argument("--batch-sizes", default="1,2,4,8", help="batch sizes --jobs compiles (comma-separated)")
    add_common_flags(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.params_json:
        saved = load_record(args.params_json)
        parser.set_defaults(**record_defaults(saved, set(vars(parser.parse_args([])))))
        args = parser.parse_args(argv)
        _saved_loras(args, saved.get("lora"))
    return args


# types of the record keys --params-json reads back besides the SamplingParams fields
_RECORD_TYPES = {"prompt": str, "lyrics": str, "batch_size": int, "batch_seeds": list, "batch_retake_seeds": list,
                 "seed": int, "retake_seed": int, "target_prompt": str, "target_lyrics": str, "sample_rate": int,
                 "format": str, "src_audio": str, "checkpoint": str, "tiny_random": bool, "dtype": str}


def load_record(path: str) -> dict:
    """An output's ``.json`` record, type-checked (a :class:`UsageError` names the file and the key)."""
    from acestep_jax.sampling.params import _FIELD_KINDS

    text = read_text(path, "--params-json")
    try:
        saved = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--params-json {path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(saved, dict):
        raise UsageError(f"--params-json {path} must hold a JSON object (an output's record), got {type(saved).__name__}")
    kinds = {**{k: (list if v is tuple else v) for k, v in _FIELD_KINDS.items()}, **_RECORD_TYPES}
    for key, value in saved.items():
        kind = kinds.get(key)
        if kind is None or value is None:
            continue
        ok = (isinstance(value, bool) if kind is bool
              else isinstance(value, kind) and not isinstance(value, bool) if kind in (int, str, list)
              else isinstance(value, int | float) and not isinstance(value, bool))
        if ok and kind is list:
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok:
            raise UsageError(f"--params-json {path}: {key!r} must be {_KIND_NAMES[kind]}, got {value!r}")
    return saved


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               list: "a list of integers"}


def record_defaults(saved: dict, dests: set[str]) -> dict:
    """Command-line defaults from a (type-checked) record: its parameters, and its batch's
    seeds when the batch is coupled (an item is reproduced by rerunning its whole batch)."""
    from acestep_jax.sampling import SamplingParams

    typed = {**_RECORD_TYPES, **dict.fromkeys(f.name for f in dataclasses.fields(SamplingParams))}
    defaults = {k: v for k, v in saved.items() if k in dests and k in typed and v is not None}
    if "oss_steps" in defaults and not isinstance(defaults["oss_steps"], str):
        defaults["oss_steps"] = ",".join(map(str, defaults["oss_steps"]))
    if saved.get("batch_seeds") is not None:
        defaults.update(seeds=saved["batch_seeds"], retake_seeds=saved.get("batch_retake_seeds"),
                        batch=saved.get("batch_size") or len(saved["batch_seeds"]))
    elif saved.get("seed") is not None:  # batch-invariant records reproduce their item alone
        defaults.update(seeds=[saved["seed"]], batch=1)
        if saved.get("retake_seed") is not None:
            defaults["retake_seeds"] = [saved["retake_seed"]]
    for key, flag in (("target_prompt", "edit_target_prompt"), ("target_lyrics", "edit_target_lyrics")):
        if saved.get(key) is not None:
            defaults[flag] = saved[key]
    return defaults


def _saved_loras(args, saved) -> None:
    """Fill the LoRA flags not given on the command line from a record's ``lora`` entry (a list
    of adapters, or the single dict that older records hold)."""
    items = [saved] if isinstance(saved, dict) else saved or []
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("path"), str)
        and isinstance(i.get("weight", 1.0), int | float) and not isinstance(i.get("weight"), bool) for i in items
    ):
        raise UsageError(f"--params-json: 'lora' must be a list of {{path, weight, scale}} objects, got {saved!r}")
    try:
        specs = [LoraSpec.from_record(item) for item in items]
    except ValueError as e:
        raise UsageError(f"--params-json: 'lora': {e}") from None
    if not specs:
        return
    values = {"lora": [s.path for s in specs], "lora_weight": [s.weight for s in specs],
              "lora_scale": [s.scale_mode for s in specs]}
    for name in LORA_FLAGS:
        if getattr(args, name) is None:
            setattr(args, name, values[name])


def lora_specs(args) -> list[LoraSpec]:
    """The ``--lora``/``--lora-weight``/``--lora-scale`` flags, paired in order."""
    paths, weights, scales = args.lora or [], args.lora_weight or [], args.lora_scale or []
    if (weights or scales) and not paths:
        raise UsageError("--lora-weight / --lora-scale given without --lora")
    if weights and len(weights) != len(paths):
        raise UsageError(f"--lora-weight given {len(weights)} time(s) for {len(paths)} --lora; give one per "
                         "--lora, in the same order, or none (1.0 each)")
    if len(scales) not in (0, 1, len(paths)):
        raise UsageError(f"--lora-scale given {len(scales)} times for {len(paths)} --lora; give one for all "
                         "or one per --lora")
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"--lora {path} does not exist")
    weights = weights or [1.0] * len(paths)
    scales = scales * len(paths) if len(scales) == 1 else scales or ["reference"] * len(paths)
    return [LoraSpec(p, w, s) for p, w, s in zip(paths, weights, scales, strict=True)]


def sampling_params(args):
    from acestep_jax.sampling import SamplingParams

    try:
        oss = tuple(int(x) for x in args.oss_steps.split(",") if x.strip()) if args.oss_steps else ()
    except ValueError:
        raise UsageError(f"--oss-steps must be comma-separated integers, got {args.oss_steps!r}") from None
    names = {f.name for f in dataclasses.fields(SamplingParams)} - {"oss_steps"}
    return SamplingParams(**{k: v for k, v in vars(args).items() if k in names}, oss_steps=oss)


def validate(args, params) -> str:
    """Check everything that can be checked before models load; returns the lyrics text."""
    from acestep_jax.sampling.params import SOURCE_TASKS

    if not 1 <= args.batch <= MAX_BATCH:
        raise UsageError(f"--batch must be in [1, {MAX_BATCH}], got {args.batch}")
    for name in ("seeds", "retake_seeds"):
        v = getattr(args, name)
        if v is not None and len(v) not in (1, args.batch):
            raise UsageError(f"--{name.replace('_', '-')} needs 1 or --batch ({args.batch}) values, got {len(v)}")
        if v is not None and any(not 0 <= s < 2**32 for s in v):
            raise UsageError(f"--{name.replace('_', '-')} must be in [0, 2**32), got {v}")
    needs_src = params.task in SOURCE_TASKS
    if needs_src and not args.src_audio:
        raise UsageError(f"--task {params.task} needs --src-audio")
    if args.src_audio and not os.path.isfile(args.src_audio):
        raise UsageError(f"--src-audio {args.src_audio} does not exist")
    lyrics = read_text(args.lyrics_file, "--lyrics-file") if args.lyrics_file else args.lyrics
    if params.task == "edit" and (args.edit_target_prompt is None or args.edit_target_lyrics is None):
        raise UsageError("--task edit needs --edit-target-prompt and --edit-target-lyrics")
    if args.transformer and not os.path.isdir(args.transformer):
        raise UsageError(f"--transformer {args.transformer} is not a folder")
    if args.transformer and args.tiny_random:
        raise UsageError("--transformer needs --checkpoint (the other models come from it), not --tiny-random")
    if args.lyrics_vocab and not os.path.isfile(args.lyrics_vocab):
        raise UsageError(f"--lyrics-vocab {args.lyrics_vocab} does not exist")
    lora_specs(args)
    for name in ("dtype", "param_dtype"):
        if getattr(args, name) not in (None, *DTYPES):
            raise UsageError(f"--{name.replace('_', '-')} must be one of {DTYPES}, got {getattr(args, name)!r}")
    fmt = output_format(args)
    if fmt not in FORMATS:
        raise UsageError(f"output format {fmt!r} is not one of {FORMATS}")
    if not 8000 <= args.sample_rate <= 192000:
        raise UsageError(f"--sample-rate must be in [8000, 192000] Hz, got {args.sample_rate}")
    for path in output_paths(args, args.batch):
        check_output_file(path, "--out")
    params.validate(_source_frames(args.src_audio) if needs_src else None)
    if args.shard:
        _check_shard(args.batch, params.batch_invariant)
    _check_lyrics(args, {"--lyrics": lyrics, "--edit-target-lyrics": args.edit_target_lyrics or ""})
    return lyrics


def _check_shard(batch: int, invariant: bool) -> None:
    import jax

    devices = jax.device_count()
    if batch % devices and not invariant:
        raise UsageError(
            f"--batch {batch} is not divisible by the {devices} devices of --shard; use a multiple of {devices}, "
            "or add --batch-invariant to pad the batch with filler items"
        )


def _check_lyrics(args, texts: dict[str, str]) -> None:
    """Find the lyric vocabulary and measure every lyrics text against the limit, before any model."""
    texts = {k: v for k, v in texts.items() if v}
    if not texts:
        return
    from acestep_jax.text.lyrics import check_lyrics

    checkpoint_dir = args.checkpoint if not args.tiny_random and os.path.isdir(args.checkpoint) else None
    for what, text in texts.items():
        check_lyrics(text, args.lyrics_vocab, checkpoint_dir=checkpoint_dir, what=what)


def _source_frames(path: str) -> int:
    """Latent frames the source audio will encode to, from its header (no decoding)."""
    import soundfile as sf

    from acestep_jax.codec import latent_frames

    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 - unreadable header: report the file
        raise UsageError(f"cannot read audio file {path}: {e}") from None
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
    args = None
    try:
        args = parse_args(argv)
        setup_logging(args.verbose)
        from acestep_jax import distributed

        if distributed.requested(args.distributed):  # before anything touches a device
            distributed.initialize()
        if args.jobs:
            from acestep_jax.serving.jobs_file import main as run_job_file

            return run_job_file(args)  # checks the whole file before any model loads
        params = sampling_params(args)
        lyrics = validate(args, params)
    except (*USER_ERRORS, ValueError) as e:  # nothing has run yet: every error here is about the input
        return report(e, bool(args and args.debug))
    try:
        return run(args, params, lyrics)
    except user_errors() as e:  # files, downloads, checkpoints met while running
        return report(e, args.debug)


def run(args, params, lyrics: str) -> int:
    import jax

    from acestep_jax.outputs import OutputWriter
    from acestep_jax.pipeline import ACEStepPipeline
    from acestep_jax.sampling import enable_compilation_cache

    if args.compile_cache != "":
        enable_compilation_cache(args.compile_cache)
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
    pipe.set_loras(lora_specs(args))
    load_time = time.perf_counter() - t0
    batch = args.batch
    if mesh is not None and batch % mesh.shape["data"]:  # batch-invariant: fillers, dropped below
        batch = -(-batch // mesh.shape["data"]) * mesh.shape["data"]
        log.info("padding the batch of %d to %d items for %d devices", args.batch, batch, mesh.shape["data"])
    log.info("generating %d x %s (the first run of a shape compiles)", args.batch,
             f"{params.duration:g} s" if params.task in ("text2music", "retake") else params.task)
    seeds = _pad(args.seeds, args.batch, batch)
    result = pipe.generate(
        [args.prompt], [lyrics], params, seeds=seeds, retake_seeds=_pad(args.retake_seeds, args.batch, batch),
        src_audio=args.src_audio,
        target_prompts=None if args.edit_target_prompt is None else [args.edit_target_prompt],
        target_lyrics=None if args.edit_target_lyrics is None else [args.edit_target_lyrics],
        sample_rate=args.sample_rate, batch_size=batch, progress=not args.quiet,
    )
    paths = output_paths(args, args.batch)
    fmt = output_format(args)
    with OutputWriter() as writer:
        for i, path in enumerate(paths if jax.process_index() == 0 else ()):  # every host has the whole batch
            record = {**result.params[i], "format": fmt, "src_audio": args.src_audio,
                      "checkpoint": None if args.tiny_random else args.checkpoint, "tiny_random": args.tiny_random,
                      "dtype": args.dtype, "audio_path": str(path), "timings": {"load": load_time, **result.timings}}
            writer.submit(path, result.item_audio(i), result.sample_rate, format=fmt, record=record)
        writer.flush()
    seconds = sum(result.lengths[: args.batch]) / result.sample_rate
    gen_time = result.timings["diffusion"] + result.timings["decode"]
    for path in paths if jax.process_index() == 0 else ():
        print(path)
    log.info("%.1f s of audio in %.2f s (diffusion %.2f s, decode %.2f s): %.1fx real time",
             seconds, gen_time, result.timings["diffusion"], result.timings["decode"], seconds / max(gen_time, 1e-9))
    return 0


def _pad(seeds, batch: int, padded: int):
    """Per-item seeds of the requested batch, plus filler seeds (0) up to ``padded`` items."""
    if seeds is None or padded == batch:
        return seeds
    return (list(seeds) * batch if len(seeds) == 1 else list(seeds)) + [0] * (padded - batch)


if __name__ == "__main__":
    sys.exit(main())

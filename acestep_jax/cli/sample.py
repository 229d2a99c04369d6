"""``sample.py``: generate music with ACE-Step v1 in JAX.

    sample.py --tiny-random --duration 10 --out outputs/demo.wav       # no checkpoint needed
    sample.py --checkpoint ACE-Step/ACE-Step-v1-3.5B --prompt "funk, bass" \\
              --lyrics-file song.txt --duration 60 --steps 27 --batch 4 --out outputs/funk.flac
    sample.py --params-json outputs/funk_0.json --seeds 5                # rerun with changes

Each output (``NAME.FORMAT``, or ``NAME_i.FORMAT`` for a batch) gets a ``.json`` record beside
it: the request that reproduces it (see :mod:`acestep_jax.serving.requests`) plus an
``output`` entry on how it was made. ``--params-json`` reloads any record — this
command's, a job file's, the service's or the reference's ``input_params`` — and flags
given on the command line win; the same record also runs as a job line or an HTTP body.
Without ``--batch-invariant`` the items of a batch share the guidance statistics (as in
the reference), so each record holds the whole batch's seeds and reruns the batch.

The generation flags are derived from the field tables
(:data:`~acestep_jax.sampling.params.PARAM_FIELDS` and
:data:`~acestep_jax.serving.requests.REQUEST_FIELDS`), so they take the names, bounds and
help of the requests.

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
import sys
import time
from pathlib import Path

import numpy as np

from acestep_jax.cli.common import (
    Parser,
    add_common_flags,
    add_model_flags,
    check_output_file,
    interrupted,
    report,
    run_interruptibly,
    setup_logging,
    start_distributed,
    user_errors,
)
from acestep_jax.codec.audio_io import FORMATS
from acestep_jax.codec.codec import OUTPUT_SAMPLE_RATE
from acestep_jax.errors import UsageError
from acestep_jax.files import read_text
from acestep_jax.lora import SCALE_MODES, LoraSpec, lora_exists
from acestep_jax.sampling.fields import FieldError
from acestep_jax.sampling.params import MAX_STEPS, TASKS, SamplingParams
from acestep_jax.serving.requests import BY_NAME, FIELDS, RECORD_KEY, Limits, Request, parse_request

log = logging.getLogger("acestep_jax.sample")

MAX_BATCH = 256
LORA_FLAGS = ("lora", "lora_weight", "lora_scale")
# the command line's defaults where they are not SamplingParams' (a demo prompt, bucketing on)
CLI_DEFAULTS = {"prompt": "pop, upbeat, piano, female vocal", "lyrics": "", "batch_size": 1,
                "sample_rate": OUTPUT_SAMPLE_RATE, "bucket": True}
CLI_LIMITS = Limits(max_steps=MAX_STEPS, max_outputs=MAX_BATCH, max_prompt_chars=1 << 20,
                    max_lyrics_chars=1 << 20, tasks=TASKS, local_paths=True)
MODEL_RECORD = {"checkpoint": str, "tiny_random": bool, "dtype": str, "transformer": str}  # output.model's keys


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="sample.py", description=__doc__.split("\n\n")[0])
    add_model_flags(p)
    m = p.add_argument_group("LoRA")
    m.add_argument("--lora", action="append", help="LoRA adapter: a PEFT/diffusers safetensors file or folder, or a "
                   "Hub repo id (downloaded once); repeat for several, merged in order")
    m.add_argument("--lora-weight", action="append", type=float,
                   help="strength of each --lora, one per --lora in the same order (default 1.0 each)")
    m.add_argument("--lora-scale", action="append", choices=SCALE_MODES,
                   help="'reference': weight x B@A, as the reference pipeline applies LoRAs (published "
                   "ACE-Step LoRAs); 'config': also the file's alpha / r (alpha / sqrt(r) with rsLoRA), "
                   "PEFT's scaling as trained. One for all --lora or one per --lora (default reference)")
    g = p.add_argument_group("generation (the request's fields)")
    for f in FIELDS:
        if f.option:
            _add_field_flag(g, f)
    g.add_argument("--lyrics-file", help="read the lyrics from this file")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="outputs/output.wav", help="output path (NAME.FORMAT; batch items get _i)")
    o.add_argument("--params-json", help="reload the request of an earlier output's record")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    j = p.add_argument_group("job files (many requests, batched; see acestep_jax.serving.jobs_file)")
    j.add_argument("--jobs", metavar="FILE", help="JSONL file, one request per line (the project's or the "
                   "reference's parameter names); only the model flags above apply")
    j.add_argument("--out-dir", metavar="DIR", help="where --jobs writes its outputs (reruns skip finished jobs)")
    j.add_argument("--batch-sizes", default="1,2,4,8", help="batch sizes --jobs compiles (comma-separated)")
    add_common_flags(p)
    return p


def _add_field_flag(group, f) -> None:
    """The flag of field ``f``: a switch for a bool, a list for ``ints``, else a typed value."""
    default = CLI_DEFAULTS.get(f.name, getattr(SamplingParams, f.name, None))
    if f.kind == "bool":
        group.add_argument(f.option, dest=f.name, action="store_false" if f.option.startswith("--no-") else
                           "store_true", help=f.help)
    elif f.kind == "ints":  # "--seeds 1 2" or "--oss-steps 16,29,52"
        group.add_argument(f.option, dest=f.name, nargs="+", action="extend", metavar="INT", help=f.help)
    else:
        group.add_argument(f.option, dest=f.name, type={"int": int, "float": float, "str": str}[f.kind],
                           choices=f.choices if f.kind == "str" and f.choices else None,
                           default=None if f.name == "format" else default, help=f.help)


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.params_json:
        request, model = load_record(args.params_json)
        parser.set_defaults(**record_defaults(request, model))
        args = parser.parse_args(argv)
        saved = {"lora": [s.path for s in request.lora], "lora_weight": [s.weight for s in request.lora],
                 "lora_scale": [s.scale_mode for s in request.lora]}
        for name in LORA_FLAGS if request.lora else ():  # append flags: a flag given replaces the saved values
            if getattr(args, name) is None:
                setattr(args, name, saved[name])
    return args


def load_record(path: str) -> tuple[Request, dict]:
    """An output's ``.json`` record (or any request) as a checked :class:`Request`, and what it says
    about the models that made it; a :class:`UsageError` names the file and the key."""
    text = read_text(path, "--params-json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--params-json {path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--params-json {path} must hold a JSON object (an output's record), got "
                         f"{type(data).__name__}")
    try:
        request = parse_request(data, CLI_LIMITS, rng=shared_rng())
    except FieldError as e:
        raise UsageError(f"--params-json {path}: {e}") from None
    output = data.get(RECORD_KEY)
    model = output.get("model") if isinstance(output, dict) else None
    model = {k: v for k, v in (model or {}).items() if k in MODEL_RECORD and isinstance(v, MODEL_RECORD[k])}
    return request, model


def record_defaults(request: Request, model: dict) -> dict:
    """Command-line defaults from a request (all its outputs: the batch it was made in) and its models."""
    d = request.to_dict()
    defaults = {f.name: d[f.name] for f in FIELDS if f.option and f.name in d}
    defaults["batch_size"] = request.count
    return {**defaults, **model}


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
        if not lora_exists(path):
            raise UsageError(f"--lora {path} does not exist (nor is it a Hub repo id)")
    weights = weights or [1.0] * len(paths)
    scales = scales * len(paths) if len(scales) == 1 else scales or ["reference"] * len(paths)
    return [LoraSpec(p, w, s) for p, w, s in zip(paths, weights, scales, strict=True)]


def shared_rng() -> np.random.Generator:
    """A generator for the seeds a request leaves out: the same draws on every process of a
    multi-host run (seeded from process 0), so the processes generate one batch."""
    from acestep_jax.sampling.tasks import random_seeds

    return np.random.default_rng(random_seeds(1)[0])


def _ints(values, flag: str) -> list[int]:
    """A list flag's values, each an integer or comma-separated integers."""
    try:
        return [int(v) for value in values for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes integers (space- or comma-separated), got {' '.join(map(str, values))}") from None


def build_request(args) -> Request:
    """The command line as a :class:`Request`, checked as every request is (errors name the flags)."""
    data = {}
    for f in FIELDS:
        value = getattr(args, f.name, None) if f.option else None
        if value is not None:
            data[f.name] = _ints(value, f.option) if f.kind == "ints" else value
    if args.lyrics_file:
        data["lyrics"] = read_text(args.lyrics_file, "--lyrics-file")
    data["format"] = output_format(args)
    for name in ("seeds", "retake_seeds"):  # one value: every item
        if len(data.get(name) or ()) == 1:
            data[name] = data[name] * args.batch_size
    data["lora"] = [s.to_record() for s in lora_specs(args)] or None
    try:
        return parse_request(data, CLI_LIMITS, reference=False, rng=shared_rng())
    except FieldError as e:
        name = e.field.split("[")[0].split(".")[0]
        flag = BY_NAME[name].option if name in BY_NAME and BY_NAME[name].option else name
        raise UsageError(f"{flag}{e.field[len(name):]}: {e.message}") from None


def validate(args) -> Request:
    """Check everything that can be checked before models load; returns the request."""
    from acestep_jax.loading import ModelOptions
    from acestep_jax.serving.requests import with_local_checks

    for name in ("seeds", "retake_seeds"):
        v = getattr(args, name)
        if v is not None and len(_ints(v, BY_NAME[name].option)) not in (1, args.batch_size):
            raise UsageError(f"{BY_NAME[name].option} needs 1 or --batch ({args.batch_size}) values, "
                             f"got {len(_ints(v, BY_NAME[name].option))}")
    if args.task == "edit" and (args.target_prompt is None or args.target_lyrics is None):
        raise UsageError("--task edit needs --edit-target-prompt and --edit-target-lyrics")
    ModelOptions.from_args(args).validate()
    fmt = output_format(args)
    if fmt not in FORMATS:
        raise UsageError(f"output format {fmt!r} is not one of {FORMATS}")
    request = build_request(args)
    for path in output_paths(args, request.count):
        check_output_file(path, "--out")
    try:
        request = with_local_checks(request)
    except FieldError as e:
        flag = {"src_audio": "--src-audio", "lora": "--lora"}.get(e.field)
        raise UsageError(f"{flag}: {e.message}" if flag else str(e)) from None
    if args.shard:
        _check_shard(request.count, request.params.batch_invariant)
    _check_lyrics(args, {"--lyrics": request.lyrics, "--edit-target-lyrics": request.target_lyrics or ""})
    return request


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
    from acestep_jax.loading import ModelOptions

    texts = {k: v for k, v in texts.items() if v}
    if not texts:
        return
    from acestep_jax.text.lyrics import check_lyrics

    checkpoint_dir = ModelOptions.from_args(args).checkpoint_dir
    for what, text in texts.items():
        check_lyrics(text, args.lyrics_vocab, checkpoint_dir=checkpoint_dir, what=what)


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
        args = build_parser().parse_args(argv)
        setup_logging(args.verbose)
        start_distributed(args.distributed)  # before anything touches a device (seeds are drawn in step)
        args = parse_args(argv)
        if args.jobs:
            from acestep_jax.cli.jobs import main as run_job_file

            return run_job_file(args)  # checks the whole file before any model loads
        request = validate(args)
    except (*user_errors(), ValueError) as e:  # nothing has run yet: every error here is about the input
        return report(e, bool(args and args.debug))
    except KeyboardInterrupt:
        return interrupted("before generating; nothing was written")
    try:
        return run(args, request)
    except user_errors() as e:  # files, downloads, checkpoints met while running
        return report(e, args.debug)
    except KeyboardInterrupt:  # loading or writing (generating: run_interruptibly)
        return interrupted("; outputs written so far are complete, none is partial")


def run(args, request: Request) -> int:
    import jax

    from acestep_jax.loading import ModelOptions, load_pipeline
    from acestep_jax.outputs import OutputWriter

    options = ModelOptions.from_args(args)
    t0 = time.perf_counter()
    pipe = load_pipeline(options, progress=not args.quiet, lyrics=False)  # validate() checked the lyrics
    pipe.set_loras(list(request.lora))
    load_time = time.perf_counter() - t0
    count, batch = request.count, request.count
    if pipe.mesh is not None and batch % pipe.mesh.shape["data"]:  # batch-invariant: fillers, dropped below
        batch = -(-batch // pipe.mesh.shape["data"]) * pipe.mesh.shape["data"]
        log.info("padding the batch of %d to %d items for %d devices", count, batch, pipe.mesh.shape["data"])
    params = request.params
    log.info("generating %d x %s (the first run of a shape compiles)", count,
             f"{params.duration:g} s" if params.task in ("text2music", "retake") else params.task)
    fill = [0] * (batch - count)
    edit = params.task == "edit"
    result = run_interruptibly(lambda: pipe.generate(
        [request.prompt], [request.lyrics], params, seeds=[*request.seeds, *fill],
        retake_seeds=[*request.retake_seeds, *fill], src_audio=request.src_audio,
        target_prompts=[request.target_prompt] if edit else None,
        target_lyrics=[request.target_lyrics] if edit else None,
        sample_rate=request.sample_rate, batch_size=batch, progress=not args.quiet,
    ))
    paths = output_paths(args, count)
    with OutputWriter() as writer:
        for i, path in enumerate(paths if jax.process_index() == 0 else ()):  # every host has the whole batch
            output = {"index": i, "audio_path": str(path), "model": options.record(),
                      "timings": {"load": load_time, **result.timings}}
            writer.submit(path, result.item_audio(i), result.sample_rate, format=request.format,
                          record={**request.to_dict(i), RECORD_KEY: output})
        writer.flush()
    seconds = sum(result.lengths[:count]) / result.sample_rate
    gen_time = result.timings["diffusion"] + result.timings["decode"]
    for path in paths if jax.process_index() == 0 else ():
        print(path)
    log.info("%.1f s of audio in %.2f s (diffusion %.2f s, decode %.2f s): %.1fx real time",
             seconds, gen_time, result.timings["diffusion"], result.timings["decode"], seconds / max(gen_time, 1e-9))
    return 0


if __name__ == "__main__":
    sys.exit(main())

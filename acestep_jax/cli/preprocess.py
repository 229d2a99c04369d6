"""``acestep-preprocess``: a folder of songs → training records (see :mod:`acestep_jax.training.preprocess`).

    acestep-preprocess data/ data/records --checkpoint ACE-Step/ACE-Step-v1-3.5B \\
        --mert m-a-p/MERT-v1-330M --mhubert utter-project/mHuBERT-147
    acestep-preprocess data/ /tmp/records --tiny-random
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from acestep_jax.cli.common import (
    USER_ERRORS,
    Parser,
    add_common_flags,
    report,
    setup_logging,
    user_errors,
)
from acestep_jax.errors import UsageError

log = logging.getLogger("acestep_jax.preprocess")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="acestep-preprocess", description="Turn a folder of songs into training records.")
    p.add_argument("input", help="folder of audio files with <name>_prompt.txt / <name>_lyrics.txt, or a Hugging "
                   "Face datasets folder as the reference's convert2hf_dataset.py writes it")
    p.add_argument("output", help="folder for the .array_record files (a rerun resumes it)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="converted checkpoint, reference checkpoint folder or Hub id")
    src.add_argument("--tiny-random", action="store_true", help="random tiny codec / text encoder (smoke tests)")
    p.add_argument("--mert", help="compute the 'mert' REPA targets with this MERT model (Hub id such as "
                   "m-a-p/MERT-v1-330M, model folder or converted folder)")
    p.add_argument("--mhubert", help="compute the 'm-hubert' REPA targets with this mHuBERT model (Hub id such as "
                   "utter-project/mHuBERT-147, model folder or converted folder)")
    p.add_argument("--ssl-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="SSL model dtype (auto: bfloat16 on accelerators, float32 on CPU)")
    p.add_argument("--ssl-chunk-batch", type=int, default=16, help="SSL chunks per compiled call")
    p.add_argument("--songs-per-batch", type=int, default=4, help="songs encoded together")
    p.add_argument("--lyrics-vocab", help="lyric BPE vocabulary (default: found beside the checkpoint or downloaded)")
    p.add_argument("--shard-size", type=int, default=256, help="examples per record file")
    p.add_argument("--repeat", type=int, default=1, help="write each example this many times")
    p.add_argument("--prompt-variants", type=int, default=1,
                   help="prompts kept per song (its tags in other orders, its recaptions); training draws one "
                   "per step, as the reference's recipe does")
    add_common_flags(p)
    return p


def _check_model_spec(flag: str, spec: str, *, is_model_folder) -> str:
    """``spec`` as a pinned setting: an existing folder (absolute) or a Hub id; else :class:`UsageError`."""
    from acestep_jax.convert.hub import looks_like_repo_id

    path = Path(spec)
    if path.exists():
        if not path.is_dir() or not is_model_folder(path):
            raise UsageError(f"{flag} {spec} is not a model folder")
        return str(path.resolve())
    if not looks_like_repo_id(spec):
        raise UsageError(f"{flag} {spec} does not exist (give a folder or a Hub id)")
    return spec


def check_arguments(args):
    """Validate every argument and path before any model loads (:class:`UsageError` names the culprit).

    Returns the songs, the output folder (nothing created) and the SSL model of each name.
    """
    from acestep_jax.convert import release, ssl
    from acestep_jax.training.preprocess import OutputFolder, discover

    for flag in ("shard_size", "repeat", "songs_per_batch", "ssl_chunk_batch", "prompt_variants"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    try:
        items = discover(args.input)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    if args.lyrics_vocab is not None and not Path(args.lyrics_vocab).is_file():
        raise UsageError(f"--lyrics-vocab {args.lyrics_vocab} does not exist")
    checkpoint = "tiny-random"
    if args.checkpoint is not None:
        checkpoint = _check_model_spec("--checkpoint", args.checkpoint,
                                       is_model_folder=lambda p: release.is_converted(p) or release.is_reference_layout(p))
    ssl_models = {}
    for flag, name in (("--mert", "mert"), ("--mhubert", "m-hubert")):
        spec = getattr(args, flag[2:])
        if spec is not None:
            ssl_models[name] = _check_model_spec(
                flag, spec, is_model_folder=lambda p: ssl.is_converted(p) or (p / "config.json").is_file())
    settings = {"checkpoint": checkpoint, "ssl_models": ssl_models, "repeat": args.repeat,
                "prompt_variants": args.prompt_variants}
    out = OutputFolder.open(args.output, settings)
    return items, out, ssl_models


def _ssl_dtype(choice: str) -> str:
    if choice != "auto":
        return choice
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, fmt="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        items, out, ssl_models = check_arguments(args)
    except (*USER_ERRORS, ValueError) as e:  # nothing has been created yet
        return report(e, args.debug)
    todo = [item for item in items if item.key not in out.done]
    if not todo:
        log.info("nothing to do: all %d songs are already in %s", len(items), args.output)
        return 0

    from acestep_jax.training.preprocess import Preprocessor, preprocess_folder
    from acestep_jax.training.ssl_features import load_extractor

    dtype = _ssl_dtype(args.ssl_dtype)
    try:
        ssl = {name: load_extractor(spec, name, dtype=dtype, chunk_batch=args.ssl_chunk_batch)
               for name, spec in ssl_models.items()}
        pre = (Preprocessor.tiny_random(lyrics_vocab=args.lyrics_vocab, ssl=ssl) if args.tiny_random
               else Preprocessor.from_checkpoint(args.checkpoint, args.lyrics_vocab, ssl=ssl))
        summary = preprocess_folder(args.input, args.output, pre, shard_size=args.shard_size, repeat=args.repeat,
                                    songs_per_batch=args.songs_per_batch, prompt_variants=args.prompt_variants,
                                    settings=out.settings, items=items)
    except (*user_errors(), ValueError) as e:  # bad checkpoints, downloads, no usable song
        return report(e, args.debug)
    except KeyboardInterrupt:
        print(f"interrupted; the finished songs are in {args.output} (rerun to go on)", file=sys.stderr)
        return 130
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

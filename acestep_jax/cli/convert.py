"""``convert_weights.py``: the reference checkpoint → a converted acestep-jax checkpoint, and back.

    convert_weights.py SRC DST [--dtype bfloat16]           # SRC: folder or Hub id
    convert_weights.py --to-reference CKPT OUT [--lora F]   # fine-tuned transformer → PyTorch layout
    convert_weights.py --ssl mert m-a-p/MERT-v1-330M OUT    # a REPA feature extractor (mert, m-hubert)

Every argument and input file is checked before anything heavy runs; a problem is one
``error: ...`` line naming the argument or file, exit status 2 (``--debug``: the traceback too).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from acestep_jax.cli.common import (
    Parser,
    add_common_flags,
    report,
    setup_logging,
    user_errors,
)

SSL_NAMES = ("mert", "m-hubert")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="convert_weights.py",
        description="Convert the ACE-Step v1 checkpoint (Hugging Face layout or Hub id) into sharded "
        "orbax checkpoints for acestep-jax, or export a (fine-tuned) JAX transformer back to the "
        "reference's safetensors layout.",
    )
    p.add_argument("src", help="reference checkpoint folder or Hub repo id (e.g. ACE-Step/ACE-Step-v1-3.5B); "
                   "with --to-reference: a converted checkpoint or a transformer component folder")
    p.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="parameter storage dtype")
    p.add_argument("--components", nargs="+", action="extend", help="convert only these components (default: all)")
    p.add_argument("--lyrics-vocab", help="lyric vocabulary to bundle (default: found or downloaded)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--to-reference", action="store_true",
                   help="export SRC's transformer to DST/ace_step_transformer/ (reference key names)")
    p.add_argument("--lora", help="with --to-reference: a LoRA file to copy beside the export (PEFT layout)")
    p.add_argument("--ssl", choices=SSL_NAMES, help="SRC is this REPA feature extractor (a HuBERT-family model "
                   "folder or Hub id: m-a-p/MERT-v1-330M, utter-project/mHuBERT-147), not the ACE-Step checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_common_flags(p)
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or an argument error already reported
        return int(e.code or 0)
    setup_logging(args.verbose)
    try:
        return _ssl(args) if args.ssl else _export(args) if args.to_reference else _convert(args)
    except (*user_errors(), ValueError) as e:  # DownloadError is a ValueError
        return report(e, args.debug)


def _ssl(args) -> int:
    from acestep_jax.convert.ssl import SSL_COMPONENTS, convert_ssl

    for flag in ("components", "lyrics_vocab", "lora", "to_reference"):
        if getattr(args, flag):
            raise ValueError(f"--{flag.replace('_', '-')} does not go with --ssl")
    count = convert_ssl(args.src, args.dst, SSL_COMPONENTS[args.ssl], param_dtype=args.dtype,
                        progress=not args.quiet, overwrite=args.overwrite)
    print(f"converted {args.src} → {args.dst} ({args.dtype}, {count:,} parameters)")
    return 0


def _convert(args) -> int:
    from acestep_jax.convert.release import convert_checkpoint, counts_summary

    if args.lora:
        raise ValueError("--lora goes with --to-reference")
    manifest = convert_checkpoint(args.src, args.dst, param_dtype=args.dtype, names=args.components,
                                  lyrics_vocab=args.lyrics_vocab, progress=not args.quiet,
                                  overwrite=args.overwrite)
    print(f"converted {args.src} → {args.dst} ({args.dtype})\n{counts_summary(manifest)}")
    return 0


def _export(args) -> int:
    from acestep_jax.convert.checkpoint import PARAMS_DIR, load_component
    from acestep_jax.convert.components import TRANSFORMER
    from acestep_jax.convert.release import (
        check_export_destination,
        export_transformer_folder,
        is_converted,
    )

    for flag in ("components", "lyrics_vocab"):
        if getattr(args, flag):
            raise ValueError(f"--{flag.replace('_', '-')} does not go with --to-reference")
    src = Path(args.src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder (a converted checkpoint or a transformer component)")
    folder = src / TRANSFORMER.name if is_converted(src) else src
    if not (folder / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{src} is neither a converted checkpoint nor a transformer component folder "
                                f"(no {folder / PARAMS_DIR})")
    check_export_destination(Path(args.dst) / TRANSFORMER.hf_folder, args.overwrite)
    lora_files = []
    if args.lora:
        from acestep_jax.lora import ADAPTER_FILE, read_lora

        read_lora(args.lora)  # refuse a file that is not a LoRA adapter, before the model loads
        lora = Path(args.lora)
        lora_file = lora / ADAPTER_FILE if lora.is_dir() else lora
        lora_files = [f for f in (lora_file, lora_file.with_name("adapter_config.json")) if f.is_file()]
    model = load_component(folder, TRANSFORMER, param_dtype="float32")
    out = export_transformer_folder(model, args.dst, overwrite=args.overwrite)
    print(f"exported {folder} → {out}")
    if lora_files:
        lora_out = Path(args.dst) / "lora"
        lora_out.mkdir(exist_ok=True)
        for f in lora_files:
            shutil.copyfile(f, lora_out / f.name)
        print(f"copied LoRA adapter → {lora_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``convert_weights.py``: the reference checkpoint → a converted acestep-jax checkpoint, and back.

    convert_weights.py SRC DST [--dtype bfloat16]           # SRC: folder or Hub id
    convert_weights.py --to-reference CKPT OUT [--lora F]   # fine-tuned transformer → PyTorch layout
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert_weights.py",
        description="Convert the ACE-Step v1 checkpoint (Hugging Face layout or Hub id) into sharded "
        "orbax checkpoints for acestep-jax, or export a (fine-tuned) JAX transformer back to the "
        "reference's safetensors layout.",
    )
    p.add_argument("src", help="reference checkpoint folder or Hub repo id (e.g. ACE-Step/ACE-Step-v1-3.5B); "
                   "with --to-reference: a converted checkpoint or a transformer component folder")
    p.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="parameter storage dtype")
    p.add_argument("--components", nargs="+", help="convert only these components (default: all)")
    p.add_argument("--lyrics-vocab", help="lyric vocabulary to bundle (default: found or downloaded)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--to-reference", action="store_true",
                   help="export SRC's transformer to DST/ace_step_transformer/ (reference key names)")
    p.add_argument("--lora", help="with --to-reference: a LoRA file to copy beside the export (PEFT layout)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    from acestep_jax.convert.core import CheckpointError

    try:
        if args.to_reference:
            return _export(args)
        from acestep_jax.convert.release import convert_checkpoint, counts_summary

        manifest = convert_checkpoint(args.src, args.dst, param_dtype=args.dtype, names=args.components,
                                      lyrics_vocab=args.lyrics_vocab, progress=not args.quiet,
                                      overwrite=args.overwrite)
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"converted {args.src} → {args.dst} ({args.dtype})\n{counts_summary(manifest)}")
    return 0


def _export(args) -> int:
    from acestep_jax.convert.checkpoint import load_component
    from acestep_jax.convert.components import TRANSFORMER
    from acestep_jax.convert.release import export_transformer_folder, is_converted

    src = Path(args.src)
    folder = src / TRANSFORMER.name if is_converted(src) else src
    model = load_component(folder, TRANSFORMER, param_dtype="float32")
    out = export_transformer_folder(model, args.dst, overwrite=args.overwrite)
    print(f"exported {folder} → {out}")
    if args.lora:
        from acestep_jax.lora import ADAPTER_FILE, read_lora

        read_lora(args.lora)  # refuse a file that is not a LoRA adapter
        lora = Path(args.lora)
        lora_file = lora / ADAPTER_FILE if lora.is_dir() else lora
        lora_out = Path(args.dst) / "lora"
        lora_out.mkdir(exist_ok=True)
        for f in (lora_file, lora_file.with_name("adapter_config.json")):
            if f.is_file():
                shutil.copyfile(f, lora_out / f.name)
        print(f"copied LoRA adapter → {lora_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

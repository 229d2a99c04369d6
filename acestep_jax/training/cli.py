"""``train.py``: train the ACE-Step transformer (full or LoRA) from a JSON/YAML config.

    train.py --config configs/train_lora.json --set data.path=data/records run.output_dir=runs/rap
    train.py --config configs/train_tiny.json --tiny-random          # random tiny model, synthetic data
    train.py --config configs/train_lora.json --steps 100            # resumes from run.output_dir

A run resumes from the latest checkpoint in ``<run.output_dir>/checkpoints`` unless
``--no-resume``. Multi-host: run the same command on every host with ``--distributed``
(or ``JAX_COORDINATOR_ADDRESS`` set); see :mod:`acestep_jax.distributed` for the variables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from acestep_jax.files import write_json
from acestep_jax.presets import CONFIG_DIR

TINY_TRANSFORMER = str(CONFIG_DIR / "tiny" / "transformer.json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="training config (.json, .yaml)")
    p.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                   help="override config values (JSON-parsed), e.g. optim.learning_rate=1e-5 mesh.fsdp=8")
    p.add_argument("--output-dir", help="shortcut for run.output_dir")
    p.add_argument("--data", help="shortcut for data.path (record file or folder)")
    p.add_argument("--checkpoint", help="shortcut for model.checkpoint (converted or reference checkpoint)")
    p.add_argument("--lora", help="shortcut for model.lora (PEFT adapter_config.json-style file)")
    p.add_argument("--steps", type=int, help="train this many steps in this invocation")
    p.add_argument("--tiny-random", action="store_true",
                   help="tiny randomly initialised transformer (configs/tiny), on synthetic data unless --data is given")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in the output folder")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
    p.add_argument("--log-level", default="INFO")
    return p


def resolve_config(args):
    from acestep_jax.training.config import TrainConfig

    overrides = list(args.set)
    for flag, key in ((args.output_dir, "run.output_dir"), (args.data, "data.path"),
                      (args.checkpoint, "model.checkpoint"), (args.lora, "model.lora"), (args.steps, "run.steps")):
        if flag is not None:
            overrides.append(f"{key}={json.dumps(flag)}")
    if args.tiny_random:
        tiny = ["model.transformer=" + json.dumps(TINY_TRANSFORMER), "model.checkpoint=null"]
        cfg = TrainConfig.load(args.config, overrides)
        if cfg.data.path is None and cfg.data.synthetic == 0:  # no data given: synthetic examples
            tiny.append("data.synthetic=32")
        overrides = tiny + overrides
    return TrainConfig.load(args.config, overrides)


def _maybe_initialize_distributed(flag: bool) -> None:
    from acestep_jax import distributed

    if distributed.requested(flag):
        distributed.initialize()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    logging.getLogger("jax").setLevel(logging.WARNING)
    log = logging.getLogger("acestep_jax.training")
    _maybe_initialize_distributed(args.distributed)
    import jax

    from acestep_jax.training.trainer import Trainer

    cfg = resolve_config(args)
    out = cfg.run.output_dir
    writer = None
    if jax.process_index() == 0:
        write_json(os.path.join(out, "train_config.json"), cfg.to_dict(), default=str)
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(os.path.join(out, "tensorboard"))
    log.info("devices: %d (%d hosts); mesh data=%s fsdp=%s tensor=%s", jax.device_count(), jax.process_count(),
             cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    trainer = Trainer(cfg, writer=writer)
    try:
        if not args.no_resume:
            trainer.restore()
        start = trainer.step
        history = trainer.fit()
        if history:
            log.info("steps %d..%d done; last loss %.5f", start + 1, trainer.step, history[-1]["loss"])
        else:
            log.info("nothing to do: already at step %d (optim.max_steps %d)", trainer.step, cfg.optim.max_steps)
        if trainer.lora is not None:
            log.info("LoRA adapters: %s", trainer.save_lora(os.path.join(out, "lora", "final")))
        else:
            log.info("fine-tuned transformer: %s", trainer.export_transformer(os.path.join(out, "transformer")))
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

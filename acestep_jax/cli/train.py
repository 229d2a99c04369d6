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

from acestep_jax.cli.common import (
    USER_ERRORS,
    Parser,
    add_common_flags,
    check_output_file,
    report,
    setup_logging,
    start_distributed,
    user_errors,
)
from acestep_jax.errors import UsageError
from acestep_jax.files import full_disk, read_text, write_json

CONFIG_FILE = "train_config.json"  # the run's config, in its output folder
# what may change when a run resumes: how long and how this invocation runs, the devices' layout
RESUME_FREE = ("run.steps", "run.progress", "run.profile_", "run.log_every", "run.eval_", "run.save_every",
               "run.keep", "run.async_checkpoint", "optim.max_steps", "data.num_threads", "data.prefetch", "mesh.")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True,
                   help="training config (.json, .yaml) or a packaged one by name (train_tiny, train_lora)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="SECTION.KEY=VALUE",
                   help="override config values (JSON-parsed), e.g. optim.learning_rate=1e-5 mesh.fsdp=8")
    p.add_argument("--output-dir", help="shortcut for run.output_dir")
    p.add_argument("--data", help="shortcut for data.path (record file or folder)")
    p.add_argument("--checkpoint", help="shortcut for model.checkpoint (converted or reference checkpoint)")
    p.add_argument("--lora", help="shortcut for model.lora (PEFT adapter_config.json-style file)")
    p.add_argument("--steps", type=int, help="train this many steps in this invocation")
    p.add_argument("--profile", metavar="DIR", help="write a jax.profiler trace of a few steps to DIR "
                   "(shortcut for run.profile_dir)")
    p.add_argument("--tiny-random", action="store_true",
                   help="tiny randomly initialised transformer (preset 'tiny'), on synthetic data unless --data is given")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in the output folder")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
    p.add_argument("--log-level", default="INFO")
    add_common_flags(p)
    return p


def resolve_config(args):
    from acestep_jax.training.config import TrainConfig

    overrides = list(args.set)
    for flag, key in ((args.output_dir, "run.output_dir"), (args.data, "data.path"),
                      (args.checkpoint, "model.checkpoint"), (args.lora, "model.lora"), (args.steps, "run.steps"),
                      (args.profile, "run.profile_dir")):
        if flag is not None:
            overrides.append(f"{key}={json.dumps(flag)}")
    if args.tiny_random:
        tiny = ['model.transformer="tiny"', "model.checkpoint=null"]
        cfg = TrainConfig.load(args.config, overrides)
        if cfg.data.path is None and cfg.data.synthetic == 0:  # no data given: synthetic examples
            tiny.append("data.synthetic=32")
        overrides = tiny + overrides
    return TrainConfig.load(args.config, overrides)


def check_config(cfg) -> None:
    """Everything a run needs that can be checked before a model loads or a file is written."""
    from acestep_jax.convert.hub import looks_like_repo_id
    from acestep_jax.models.transformer.config import REMAT_MODES
    from acestep_jax.nn.dtypes import resolve_dtype
    from acestep_jax.presets import PRESETS
    from acestep_jax.sharding import make_mesh, rules_with
    from acestep_jax.training.trainer import _check_batch

    m, d, r = cfg.model, cfg.data, cfg.run
    if d.path is not None and not os.path.exists(d.path):
        raise UsageError(f"data.path {d.path} does not exist (--data)")
    if d.path is not None:
        _check_records(d.path)
    if d.path is None and d.synthetic == 0:
        raise UsageError("no training data: set data.path (--data) to preprocessed records, or data.synthetic")
    if m.checkpoint is not None and not os.path.exists(m.checkpoint) and not looks_like_repo_id(m.checkpoint):
        raise UsageError(f"model.checkpoint {m.checkpoint} is neither a local checkpoint nor a Hub id (--checkpoint)")
    if isinstance(m.lora, str) and not os.path.isfile(m.lora):
        raise UsageError(f"model.lora {m.lora} does not exist (--lora)")
    if isinstance(m.transformer, str) and m.transformer not in PRESETS and not os.path.exists(m.transformer):
        raise UsageError(f"model.transformer {m.transformer} is neither a preset {PRESETS} nor a config file")
    for name in ("dtype", "param_dtype"):
        try:
            resolve_dtype(getattr(m, name))
        except (ValueError, TypeError):
            raise UsageError(f"model.{name}: unknown dtype {getattr(m, name)!r} (float32 or bfloat16)") from None
    if m.remat not in REMAT_MODES:
        raise UsageError(f"model.remat must be one of {REMAT_MODES}, got {m.remat!r}")
    if r.eval_fn is not None and ":" not in r.eval_fn:
        raise UsageError(f"run.eval_fn must be 'module:function', got {r.eval_fn!r}")
    if r.steps is not None and r.steps < 1:
        raise UsageError(f"run.steps must be at least 1, got {r.steps} (--steps: how many steps to train now)")
    if os.path.isfile(r.output_dir):
        raise UsageError(f"run.output_dir {r.output_dir} is a file, not a folder (--output-dir)")
    check_output_file(os.path.join(r.output_dir, CONFIG_FILE), "run.output_dir")
    rules_with(cfg.mesh.rules)
    _check_batch(cfg, make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))


def _check_records(path: str) -> None:
    """``data.path`` holds readable training records (the first example decodes and validates)."""
    from acestep_jax.training.records import RecordSource, validate_example

    try:
        source = RecordSource(path)
        if len(source) == 0:
            raise ValueError("it holds no examples")
        validate_example(source[0], "its first example")
    except FileNotFoundError as e:
        raise UsageError(f"data.path: {e}; give records written by acestep-preprocess (--data)") from None
    except Exception as e:  # noqa: BLE001 - whatever the reader says, these are no records of ours
        raise UsageError(f"data.path {path} is not readable training records ({e}); give records written by "
                         "acestep-preprocess (--data)") from None


def check_resume(cfg, resume: bool) -> None:
    """Refuse to resume a run whose saved config differs from ``cfg`` in anything but the keys that may
    change between invocations (:data:`RESUME_FREE`); the saved config is left as it is."""
    out = cfg.run.output_dir
    checkpoints = os.path.join(out, "checkpoints")
    saved_path = os.path.join(out, CONFIG_FILE)
    if not resume or not os.path.isfile(saved_path) or not os.path.isdir(checkpoints) or not any(
            name.isdigit() for name in os.listdir(checkpoints)):
        return
    fix = f"use another --output-dir, or --no-resume to start over in {out}"
    try:
        saved = _flat(json.loads(read_text(saved_path, "the run's config")))
    except ValueError as e:
        raise UsageError(f"cannot resume the run in {out}: {saved_path} is unreadable ({e}); {fix}") from None
    new = _flat(json.loads(json.dumps(cfg.to_dict(), default=str)))
    differ = [k for k in sorted(saved.keys() | new.keys())
              if saved.get(k) != new.get(k) and not k.startswith(RESUME_FREE)]
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise UsageError(f"the run in {out} was trained with another config ({shown}{more}); resuming needs the "
                         f"same config: {fix}")


def _flat(d, prefix: str = "") -> dict:
    """A nested config as ``{"section.key": value}``."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    return {k: v for key, value in d.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, fmt="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(args.log_level.upper())
    log = logging.getLogger("acestep_jax.training")
    try:
        start_distributed(args.distributed)
        cfg = resolve_config(args)
        check_config(cfg)
        check_resume(cfg, not args.no_resume)
    except (*USER_ERRORS, ValueError) as e:  # nothing has been created yet
        return report(e, args.debug)
    try:
        return _train(args, cfg, log)
    except user_errors() as e:
        return report(e, args.debug)
    except Exception as e:
        if full_disk(e):  # orbax's and tensorstore's words for ENOSPC
            return report(e, args.debug)
        raise


def _train(args, cfg, log) -> int:
    import jax

    from acestep_jax.training.trainer import Trainer

    out = cfg.run.output_dir
    writer = None
    if jax.process_index() == 0:
        write_json(os.path.join(out, CONFIG_FILE), cfg.to_dict(), default=str)
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(os.path.join(out, "tensorboard"))
    log.info("devices: %d (%d hosts); mesh data=%s fsdp=%s tensor=%s", jax.device_count(), jax.process_count(),
             cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    trainer = Trainer(cfg, writer=writer)
    try:
        if not args.no_resume:
            trainer.restore()
        trainer.check_space()  # now, not after the first save_every steps
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

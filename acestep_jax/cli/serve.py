"""``serve.py`` / ``acestep-serve``: the generation server (FastAPI + uvicorn).

    serve.py --tiny-random --lyrics-vocab vocab.json                 # demo, no checkpoint
    serve.py --checkpoint checkpoints/acestep-v1 --api-key "$KEY" --state-dir /srv/acestep \\
             --batch-sizes 1,2,4,8 --max-duration 240 --max-steps 100 --warmup '{"prompt": "x", "duration": 60}'

The models load once and stay resident; compiled programs persist in the XLA cache.
Requests queue and run in batches (see :mod:`acestep_jax.serving`). SIGTERM / Ctrl-C:
stop accepting, finish the running batch, keep the queued jobs in the journal under
``--state-dir``, which the next start resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from acestep_jax.cli.common import (
    Parser,
    add_common_flags,
    add_model_flags,
    report,
    setup_logging,
    start_distributed,
    user_errors,
)
from acestep_jax.errors import UsageError
from acestep_jax.serving.batching import BATCH_SIZES

log = logging.getLogger("acestep_jax.serve")

API_KEY_ENV = "ACESTEP_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="serve.py", description=__doc__.split("\n\n")[0])
    add_model_flags(p)
    h = p.add_argument_group("HTTP")
    h.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    h.add_argument("--port", type=int, default=8000)
    h.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; unset: no auth)")
    h.add_argument("--max-body-kb", type=int, default=1024, help="largest request body")
    h.add_argument("--sync-timeout", type=float, default=600.0, help="seconds POST /generate waits for its audio")
    h.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    q = p.add_argument_group("queue and batching")
    q.add_argument("--state-dir", default="acestep-serve", help="journal of jobs and their outputs")
    q.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="compiled batch sizes")
    q.add_argument("--max-wait-ms", type=float, default=50.0,
                   help="how long a queued request waits for compatible ones to batch with")
    q.add_argument("--max-queue", type=int, default=64, help="outputs waiting before requests get 429")
    q.add_argument("--keep-jobs", type=int, default=1000, help="finished jobs kept (older ones are deleted)")
    q.add_argument("--max-upload-mb", type=float, default=64.0, help="largest source-audio upload")
    q.add_argument("--upload-ttl-hours", type=float, default=24.0,
                   help="uploads no job holds are deleted after this")
    q.add_argument("--lora", action="append", default=[], metavar="PATH_OR_HUB_ID",
                   help="a LoRA requests may name (repeat for several; the page lists them)")
    q.add_argument("--warmup", metavar="JSON", help="a request whose programs compile at every batch size "
                   "before serving")
    lim = p.add_argument_group("limits per request")
    lim.add_argument("--max-duration", type=float, default=240.0, help="seconds")
    lim.add_argument("--max-steps", type=int, default=200)
    lim.add_argument("--max-outputs", type=int, default=8, help="seeds (outputs) per request")
    lim.add_argument("--max-lyrics-chars", type=int, default=8000,
                     help="refused before tokenizing (the 4096-token limit is about 6,800 characters of English)")
    add_common_flags(p)
    return p


def _config(args):
    """Everything the flags say, checked before any model loads."""
    import dataclasses

    from acestep_jax.cli.jobs import batch_sizes
    from acestep_jax.loading import ModelOptions
    from acestep_jax.serving.app import AppConfig
    from acestep_jax.serving.requests import SERVER_LIMITS, parse_request
    from acestep_jax.serving.scheduler import SchedulerConfig

    options = ModelOptions.from_args(args)
    options.validate()
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    sizes = batch_sizes(args.batch_sizes)
    for name in ("max_queue", "keep_jobs", "max_body_kb"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_wait_ms < 0 or args.sync_timeout <= 0:
        raise UsageError("--max-wait-ms must be >= 0 and --sync-timeout > 0")
    from acestep_jax.lora import lora_exists

    for lora in args.lora:
        if not lora_exists(lora):
            raise UsageError(f"--lora {lora} does not exist (nor is it a Hub repo id)")
    if args.max_upload_mb <= 0 or args.upload_ttl_hours <= 0:
        raise UsageError("--max-upload-mb and --upload-ttl-hours must be > 0")
    try:
        limits = dataclasses.replace(SERVER_LIMITS, max_duration=args.max_duration, max_steps=args.max_steps,
                                     max_outputs=args.max_outputs, max_lyrics_chars=args.max_lyrics_chars,
                                     loras=tuple(args.lora))
    except ValueError as e:
        raise UsageError(f"limits: {e}") from None
    if args.max_outputs > args.max_queue:
        raise UsageError(f"--max-outputs ({args.max_outputs}) exceeds --max-queue ({args.max_queue})")
    warmup = None
    if args.warmup:
        try:
            warmup = parse_request(json.loads(args.warmup), limits)
        except ValueError as e:
            raise UsageError(f"--warmup: {e}") from None
    scheduler = SchedulerConfig(batch_sizes=sizes, max_wait_s=args.max_wait_ms / 1000, max_queue=args.max_queue,
                                keep_jobs=args.keep_jobs, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                                upload_ttl_s=args.upload_ttl_hours * 3600)
    app = AppConfig(api_key=args.api_key or None, max_body_bytes=args.max_body_kb * 1024,
                    sync_timeout_s=args.sync_timeout)
    return options, limits, scheduler, app, warmup


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, fmt="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(args.log_level.upper())
    try:
        options, limits, scheduler_config, app_config, warmup = _config(args)
        start_distributed(args.distributed)
        from acestep_jax.serving.journal import JobStore

        store = JobStore(args.state_dir)
    except (*user_errors(), ValueError) as e:
        return report(e, args.debug)

    import uvicorn

    from acestep_jax.loading import load_pipeline
    from acestep_jax.serving.app import create_app
    from acestep_jax.serving.scheduler import Scheduler

    try:
        pipe = load_pipeline(options)
        from acestep_jax.lora import read_lora

        for lora in limits.loras:  # downloaded and checked now, not at a request
            read_lora(lora)
        scheduler = Scheduler(pipe, store, scheduler_config, limits, model_info=options.record())
    except (*user_errors(), ValueError) as e:  # ValueError: sizes that do not fit the mesh
        return report(e, args.debug)
    if warmup is not None:
        scheduler.warmup(warmup)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # stop accepting first, so waiting clients hear it
            scheduler.drain()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(create_app(scheduler, app_config), host=args.host, port=args.port,
                            log_level=args.log_level, timeout_graceful_shutdown=max(30, int(args.sync_timeout)))
    if not args.api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without --api-key: anyone who can reach it may generate", args.host)
    # uvicorn re-raises the stopping signal under the previous handlers once it has stopped cleanly
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``sample.py --jobs FILE --out-dir DIR``: check a job file, load the models, run its jobs
(see :mod:`acestep_jax.serving.jobs_file`)."""

from __future__ import annotations

import logging

from acestep_jax.cli.common import report, run_interruptibly, user_errors
from acestep_jax.errors import UsageError
from acestep_jax.files import remove_temporaries

log = logging.getLogger("acestep_jax.jobs")


def batch_sizes(text: str) -> tuple[int, ...]:
    """``--batch-sizes``: comma-separated positive integers."""
    from acestep_jax.serving.batching import check_batch_sizes

    try:
        return check_batch_sizes(int(s) for s in text.split(",") if s.strip())
    except ValueError as e:
        raise UsageError(f"--batch-sizes must be comma-separated positive integers, got {text!r} ({e})") from None


def main(args) -> int:
    """Exit status 2 when nothing can run (bad arguments, no valid line, models that do not load),
    1 when some lines or jobs failed, 0 otherwise."""
    from acestep_jax.loading import ModelOptions, load_pipeline
    from acestep_jax.serving.batching import check_batch_sizes
    from acestep_jax.serving.jobs_file import Summary, read_jobs, run_jobs

    try:
        if not args.out_dir:
            raise UsageError("--jobs needs --out-dir")
        if args.lora:
            raise UsageError("--lora does not apply to --jobs: give each line its LoRAs (lora / lora_name_or_path)")
        sizes = batch_sizes(args.batch_sizes)
        options = ModelOptions.from_args(args)
        options.validate()
        job_file = read_jobs(args.jobs)
    except (*user_errors(), ValueError) as e:
        return report(e, args.debug)
    removed = remove_temporaries(args.out_dir)
    if removed:
        log.info("removed %d partial file(s) an interrupted run left in %s", len(removed), args.out_dir)
    for line, message in job_file.errors:
        report(f"{args.jobs} line {line}: {message}")
    if not job_file.jobs:
        return report(f"{args.jobs} holds no valid job")
    if all(job.finished(args.out_dir) for job in job_file.jobs):
        summary = Summary(skipped=len(job_file.jobs))
    else:
        try:
            pipe = load_pipeline(options, progress=not args.quiet)
            check_batch_sizes(sizes, 1 if pipe.mesh is None else pipe.mesh.shape["data"])
        except (*user_errors(), ValueError) as e:
            return report(e, args.debug)
        summary = run_interruptibly(lambda: run_jobs(pipe, job_file.jobs, args.out_dir, sizes,
                                                     progress=not args.quiet, model_info=options.record()))
    print(summary)
    return 1 if job_file.errors or summary.failed else 0

"""Job files: ``sample.py --jobs jobs.jsonl --out-dir outputs/``.

One request per line: a JSON object in the project's or the reference's format (see
:mod:`acestep_jax.serving.requests`; here requests may name local files: ``src_audio`` /
``src_audio_path`` / ``ref_audio_input`` and LoRAs, so every task is taken). Blank lines
are skipped. Every line is checked before any model loads; a bad line is reported with its
number and the others still run.

A job writes ``OUT/NAME.FORMAT`` (``OUT/NAME_i.FORMAT`` for several outputs), each with a
``.json`` record: the request that reproduces that output (one seed) plus an ``output``
entry saying how it was made. ``NAME`` is the line's ``name``, else a slug of the prompt and
a hash of the line, so it is stable across reruns: a rerun skips the jobs whose records all
exist and hold the line's request (an edited line runs again). Relative paths in a line are
taken against the job file's folder. Jobs are grouped into batches as :mod:`acestep_jax.serving.batching` describes, and
files are written on background threads while the next batch samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from acestep_jax.serving.batching import BATCH_SIZES, Item, plan, run_batch
from acestep_jax.serving.requests import (
    RECORD_KEY,
    Request,
    RequestError,
    parse_request,
    with_local_checks,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """The request on line ``line`` (1-based), writing outputs named after ``name``."""

    line: int
    name: str
    request: Request
    drawn: frozenset[str] = frozenset()  # request keys the line leaves to chance (seeds it does not give)

    def paths(self, out_dir: str | Path) -> list[Path]:
        fmt, n = self.request.format, self.request.count
        if n == 1:
            return [Path(out_dir) / f"{self.name}.{fmt}"]
        return [Path(out_dir) / f"{self.name}_{i}.{fmt}" for i in range(n)]

    def finished(self, out_dir: str | Path) -> bool:
        """Whether every output's record exists (a record is written after its audio) and holds
        this line's request (a line edited since is not finished)."""
        return self.changed(out_dir) == []

    def changed(self, out_dir: str | Path) -> list[str] | None:
        """``None`` when an output's record is missing, else the request keys in which the records
        differ from this line (``[]``: finished); an unreadable record counts as changed."""
        keys: set[str] = set()
        for i, path in enumerate(self.paths(out_dir)):
            path = path.with_suffix(".json")
            if not path.is_file():
                return None
            try:
                saved = parse_request(json.loads(path.read_text(encoding="utf-8"))).to_dict()
            except (OSError, ValueError, RecursionError):
                return ["output record"]
            wanted = self.request.to_dict(i)
            keys.update(k for k in saved.keys() | wanted.keys()
                        if k not in self.drawn and saved.get(k) != wanted.get(k))
        return sorted(keys)


@dataclass
class JobFile:
    path: str
    jobs: list[Job] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, message)


def _default_name(text: str, prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:32].rstrip("-") or "job"
    return f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def read_jobs(path: str | Path) -> JobFile:
    """Parse and check every line of ``path`` (FileNotFoundError / OSError when unreadable)."""
    result = JobFile(str(path))
    folder = Path(path).parent  # relative paths in lines are taken against the job file's folder
    seen: Counter[str] = Counter()
    owners: dict[str, int] = {}  # output file stem -> line
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except (ValueError, RecursionError) as e:
                result.errors.append((number, f"not valid JSON: {str(e)[:200]}"))
                continue
            try:
                request = with_local_checks(parse_request(data), folder)
                probe = parse_request(data, rng=np.random.default_rng(0)).to_dict()
            except RequestError as e:
                result.errors.append((number, str(e)))
                continue
            drawn = frozenset(k for k, v in request.to_dict().items() if probe.get(k) != v
                              and k not in ("src_audio", "lora"))
            if request.name is None:
                canonical = json.dumps(data, sort_keys=True, ensure_ascii=False)
                seen[canonical] += 1
                name = _default_name(canonical, request.prompt)
                name = name if seen[canonical] == 1 else f"{name}-{seen[canonical]}"
            else:
                name = request.name
            job = Job(number, name, request, drawn)
            clash = next((owners[p.stem] for p in job.paths(".") if p.stem in owners), None)
            if clash is not None:
                result.errors.append((number, f"name: {name!r} writes the same files as line {clash}"))
                continue
            owners.update({p.stem: number for p in job.paths(".")})
            result.jobs.append(job)
    return result


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0  # finished by an earlier run
    failed: list[int] = field(default_factory=list)  # lines

    def __str__(self) -> str:
        text = f"{self.done} job(s) done, {self.skipped} skipped (finished earlier), {len(self.failed)} failed"
        return text + (f" (lines {', '.join(map(str, sorted(self.failed)))})" if self.failed else "")


def run_jobs(pipe, jobs: list[Job], out_dir: str | Path, sizes=BATCH_SIZES, *, progress: bool = True,
             model_info: dict | None = None) -> Summary:
    """Run the unfinished ``jobs`` in batches, writing into ``out_dir``."""
    from tqdm.auto import tqdm

    from acestep_jax.outputs import OutputWriter

    summary = Summary()
    todo = []
    for job in jobs:
        changed = job.changed(out_dir)
        if changed == []:
            summary.skipped += 1
            continue
        if changed:
            log.warning("line %d: the outputs %s were made by another request (%s differ): making them again",
                        job.line, job.name, ", ".join(changed))
        todo.append(job)
    by_name = {job.name: job for job in todo}
    for job in list(todo):  # the lyric token limit needs the tokenizer, loaded with the models
        for what, text in (("lyrics", job.request.lyrics), ("target_lyrics", job.request.target_lyrics)):
            try:
                if text:
                    pipe.tokenize_lyrics([text], what)
            except ValueError as e:
                log.error("line %d: %s: %s", job.line, job.request.spelled(what), e)
                summary.failed.append(job.line)
                todo.remove(job)
                break
    left = {job.name: job.request.count for job in todo}
    lock = threading.Lock()
    bar = tqdm(total=len(todo), unit="job", desc="jobs", disable=not progress)

    def written(job: Job, future) -> None:
        with lock:
            if future.exception() is not None or job.line in summary.failed:
                return
            left[job.name] -= 1
            if left[job.name] == 0:
                summary.done += 1
                bar.update()

    items = [Item(job.name, i, job.request) for job in todo for i in range(job.request.count)]
    try:
        with OutputWriter() as writer:
            for batch in plan(items, sizes):
                jobs_in = list(dict.fromkeys(by_name[it.job] for it in batch))
                try:
                    result = run_batch(pipe, batch, sizes)
                except Exception as e:  # noqa: BLE001 - report the batch's lines, go on with the others
                    lines = ", ".join(str(j.line) for j in jobs_in)
                    log.error("batch of line(s) %s failed: %s: %s", lines, type(e).__name__, e)
                    with lock:
                        summary.failed.extend(j.line for j in jobs_in if j.line not in summary.failed)
                    continue
                for r in result.results:
                    job = by_name[r.item.job]
                    path = job.paths(out_dir)[r.item.index]
                    record = {**r.record, RECORD_KEY: {**r.record[RECORD_KEY], "line": job.line,
                                                       "audio_path": str(path), "model": model_info or {}}}
                    future = writer.submit(path, r.audio, r.sample_rate, format=job.request.format, record=record)
                    future.add_done_callback(lambda f, job=job: written(job, f))
    finally:
        bar.close()
    return summary

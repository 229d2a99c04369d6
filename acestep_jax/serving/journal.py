"""The server's durable job journal: one JSON state file per job, written atomically.

A job's state is written when it is accepted (``queued``, with its fully resolved
request: seeds and durations drawn) and when it finishes (``done``, ``failed`` or
``cancelled``, with its output files). Each write goes to a temporary file that is
flushed to disk and renamed, so a state file is always whole. At start the server
reads every state: jobs still ``queued`` (including the batch that was running when
the server stopped) are queued again in acceptance order; finished ones stay
queryable. So an accepted job is never lost, whether the server stops on SIGTERM or dies.

Layout under the state folder: ``jobs/<id>.json`` and ``outputs/<id>_<index>.<format>``
(plus the output's ``.json`` record).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from acestep_jax.files import write_atomic

log = logging.getLogger(__name__)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JobStore:
    """Job states and outputs under ``root`` (created if missing)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        self.outputs_dir = self.root / "outputs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.outputs_dir.mkdir(parents=True, exist_ok=True)

    def state_path(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.json"

    def output_path(self, job_id: str, index: int, fmt: str) -> Path:
        return self.outputs_dir / f"{job_id}_{index}.{fmt}"

    def save(self, state: dict) -> None:
        """Write ``state`` (a job's, with an ``id``) durably: flushed to disk, then renamed."""

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(state, f, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())

        write_atomic(self.state_path(state["id"]), write, suffix=".json")
        _fsync_dir(self.jobs_dir)

    def load(self) -> list[dict]:
        """Every stored state, in acceptance order. An unreadable state file is renamed to
        ``*.corrupt`` and reported (it cannot come from an interrupted write)."""
        states = []
        for path in sorted(self.jobs_dir.glob("*.json")):
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(state, dict) or state.get("id") != path.stem:
                    raise ValueError("not a job state")
            except (OSError, ValueError) as e:
                log.error("journal: cannot read %s (%s); moved aside as .corrupt", path, e)
                path.rename(path.with_suffix(".corrupt"))
                continue
            states.append(state)
        stale = [*self.jobs_dir.glob(".tmp-*"), *self.outputs_dir.glob(".tmp-*")]
        for tmp in stale:  # left by a write killed before its rename
            tmp.unlink(missing_ok=True)
        if stale:
            log.info("journal: removed %d unfinished temporary files of an earlier run", len(stale))
        return sorted(states, key=lambda s: (s["seq"] if isinstance(s.get("seq"), int) else 0, s["id"]))

    def set_aside(self, job_id: str, why: str) -> None:
        """Rename a job's state file to ``*.invalid`` (kept for inspection) and log ``why``."""
        path = self.state_path(job_id)
        log.error("journal: %s is set aside as %s: %s", path, path.with_suffix(".invalid").name, why)
        path.rename(path.with_suffix(".invalid"))

    def delete(self, job_id: str) -> None:
        """Forget a job's state."""
        self.state_path(job_id).unlink(missing_ok=True)

    @staticmethod
    def delete_files(files) -> None:
        for f in files:
            Path(f).unlink(missing_ok=True)

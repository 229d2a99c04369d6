"""The server's job queue and batching loop.

Accepted jobs wait in a bounded queue, counted in outputs (a request with several seeds
is several outputs). One worker thread takes the oldest waiting output, gathers the
waiting outputs that share its :func:`~acestep_jax.serving.batching.group_key` — waiting
at most ``max_wait_s`` after the oldest one arrived for more to come — up to the largest
batch size, runs them as one batch and hands the audio to an
:class:`~acestep_jax.outputs.OutputWriter`, so the next batch samples while the files of
the last one are written. A job is ``done`` once all its outputs are written; its state
and outputs live in a :class:`~acestep_jax.serving.journal.JobStore`, so queued jobs
survive a restart and finished ones stay queryable until ``keep_jobs`` newer ones
push them out. Each output is journaled as it is written, so a restart queues only the
missing ones. The operator's limits apply to new requests only: the journal's requests
are read back with the widest limits, and a state that does not validate is set aside
(named in the log) rather than stopping the server. A journal that cannot be written (a
full disk) refuses new jobs with :class:`JournalError` and shows in :attr:`Scheduler.storage_error`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from acestep_jax.files import full_disk
from acestep_jax.outputs import OutputWriter
from acestep_jax.sampling.params import MAX_SECONDS, MAX_STEPS
from acestep_jax.serving.batching import (
    BATCH_SIZES,
    Item,
    ItemResult,
    check_batch_sizes,
    run_batch,
)
from acestep_jax.serving.journal import JobStore
from acestep_jax.serving.metrics import ServiceMetrics
from acestep_jax.serving.requests import (
    RECORD_KEY,
    SERVER_LIMITS,
    Limits,
    Request,
    RequestError,
    check_params,
    parse_request,
    source_length,
)
from acestep_jax.serving.uploads import UploadStore

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


class QueueFull(Exception):
    """The queue holds ``max_queue`` outputs; ``retry_after`` seconds is a fair wait."""

    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class Draining(Exception):
    """The server is shutting down and accepts no new jobs."""


class JournalError(Exception):
    """A job could not be journaled (the state folder cannot be written); nothing was accepted."""


# what journaled requests are read back with: the limits an operator sets apply to new requests only
JOURNAL_LIMITS = Limits(max_duration=MAX_SECONDS, max_steps=MAX_STEPS, max_outputs=1 << 16,
                        max_prompt_chars=1 << 30, max_lyrics_chars=1 << 30, tasks=SERVER_LIMITS.tasks,
                        local_paths=False)
STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)


def describe_write_error(error: BaseException, folder) -> str:
    """``error`` of a failed write in ``folder``, naming a full disk when that is the cause."""
    if full_disk(error):
        return f"no space left on device in {folder} ({error})"
    return f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class SchedulerConfig:
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    max_wait_s: float = 0.05  # how long the oldest waiting output waits for compatible ones
    max_queue: int = 64  # outputs waiting; beyond it requests are refused (429)
    keep_jobs: int = 1000  # finished jobs kept with their files; older ones are deleted
    writer_workers: int = 2
    max_upload_bytes: int = 64 << 20
    upload_ttl_s: float = 24 * 3600  # uploads no job holds are deleted after this


@dataclass(frozen=True)
class Output:
    index: int
    audio: str  # file path
    record: str  # its JSON record
    seconds: float


@dataclass(eq=False)
class Job:
    """One accepted request and where it stands."""

    id: str
    request: Request
    seq: int
    accepted_at: float
    status: str = QUEUED
    stage: str | None = None  # of a running job: "generating", "writing" or "queued" (outputs left)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    outputs: dict[int, Output] = field(default_factory=dict)
    listeners: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def state(self) -> dict:
        """What the journal stores (``running`` is stored as ``queued``: it reruns after a restart)."""
        return {
            "id": self.id, "seq": self.seq, "status": QUEUED if self.status == RUNNING else self.status,
            "accepted_at": self.accepted_at, "started_at": self.started_at, "finished_at": self.finished_at,
            "error": self.error, "request": self.request.to_dict(),
            "outputs": [vars(o) for o in sorted(self.outputs.values(), key=lambda o: o.index)],
        }

    @classmethod
    def from_state(cls, state: dict) -> Job:
        """The job of a journaled ``state``; ``ValueError`` naming the first field that does not validate."""
        def need(key, kinds, optional=False):
            value = state.get(key)
            if (value is None and not optional) or (value is not None and not isinstance(value, kinds)) \
                    or isinstance(value, bool):
                raise ValueError(f"{key!r} is {value!r}")
            return value

        status = need("status", str)
        if status not in STATUSES:
            raise ValueError(f"'status' is {status!r}")
        job = cls(id=need("id", str), request=None, seq=need("seq", int), accepted_at=float(need("accepted_at", (int, float))),
                  status=status)
        job.started_at = need("started_at", (int, float), optional=True)
        job.finished_at = need("finished_at", (int, float), optional=True)
        job.error = need("error", str, optional=True)
        try:
            job.request = parse_request(need("request", dict), JOURNAL_LIMITS, reference=False)
            outputs = [Output(**o) for o in need("outputs", list)]
        except (RequestError, TypeError) as e:
            raise ValueError(str(e)) from None
        if any(not 0 <= o.index < job.request.count for o in outputs):
            raise ValueError("an output index is outside the request's outputs")
        job.outputs = {o.index: o for o in outputs}
        return job


@dataclass(frozen=True)
class _Waiting:
    item: Item
    key: tuple
    since: float  # time.monotonic() of acceptance


class Scheduler:
    """Queue, batching worker and job table of a generation server (see the module docstring)."""

    def __init__(
        self,
        pipe,
        store: JobStore,
        config: SchedulerConfig = SchedulerConfig(),
        limits: Limits = SERVER_LIMITS,
        metrics: ServiceMetrics | None = None,
        model_info: dict | None = None,
    ):
        data = pipe.mesh.shape["data"] if getattr(pipe, "mesh", None) is not None else 1
        self.pipe, self.store, self.limits = pipe, store, limits
        self.config = SchedulerConfig(**{**vars(config), "batch_sizes": check_batch_sizes(config.batch_sizes, data)})
        self.metrics = metrics or ServiceMetrics()
        self.model_info = model_info or {}
        self._cond = threading.Condition()
        self._queue: list[_Waiting] = []
        self._jobs: dict[str, Job] = {}
        self._finished: deque[str] = deque()
        self._seq = 0
        self._draining = False
        self._thread: threading.Thread | None = None
        self._writer = OutputWriter(workers=config.writer_workers)
        self._writer_failed = False
        self._batch_seconds: float | None = None  # moving average
        self._lyrics_lock = threading.Lock()
        self.storage_error: str | None = None  # why the journal cannot be written, while it cannot
        self.uploads = UploadStore(store.root / "uploads", config.max_upload_bytes, config.upload_ttl_s)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Load the journal (queued jobs queue again, in acceptance order) and start the worker."""
        if self._thread is not None:
            return
        with self._cond:
            for state in self.store.load():
                try:
                    job = Job.from_state(state)
                except ValueError as e:
                    self.store.set_aside(state["id"], f"it does not validate: {e}")
                    continue
                self._jobs[job.id] = job
                self._seq = max(self._seq, job.seq + 1)
                if job.status in (QUEUED, RUNNING) and job.request.src_upload:
                    try:
                        job.request = self.attach(job.request)
                    except RequestError as e:
                        self._finish(job, FAILED, f"cannot resume: {e}")
                        continue
                if job.status in (QUEUED, RUNNING):
                    job.status = QUEUED
                    self._enqueue(job, time.monotonic())
                else:
                    self._finished.append(job.id)
            resumed = len(self._queue)
            self._update_depth()
        if resumed:
            log.info("resuming %d queued outputs from the journal in %s", resumed, self.store.root)
        self._thread = threading.Thread(target=self._loop, name="acestep-scheduler", daemon=True)
        self._thread.start()

    def warmup(self, request: Request) -> None:
        """Compile the programs of ``request``'s group at every batch size (outputs dropped)."""
        for size in self.config.batch_sizes:
            start = time.perf_counter()
            run_batch(self.pipe, [Item("warmup", 0, request)] * size, self.config.batch_sizes)
            log.info("warm-up: batch of %d ready in %.1f s", size, time.perf_counter() - start)

    def drain(self) -> None:
        """Stop taking jobs and starting batches; the running batch finishes, queued jobs stay journaled."""
        with self._cond:
            if self._draining:
                return
            self._draining = True
            self._cond.notify_all()
            for job in self._jobs.values():
                self._notify(job)
        log.info("draining: %d outputs stay queued in the journal", len(self._queue))

    def stop(self, timeout: float | None = None) -> None:
        """:meth:`drain`, wait for the running batch and for its files to be written."""
        self.drain()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the running batch did not finish within %s s", timeout)
        try:
            self._writer.close()
        except Exception as e:  # noqa: BLE001 - already reported on its job
            log.error("writing outputs failed: %s", e)

    @property
    def draining(self) -> bool:
        return self._draining

    # ------------------------------------------------------------------ jobs
    def check(self, request: Request) -> None:
        """Checks that need the models: the lyrics' token count (RequestError naming the field)."""
        with self._lyrics_lock:
            for name, text in (("lyrics", request.lyrics), ("target_lyrics", request.target_lyrics)):
                if text:
                    try:
                        self.pipe.tokenize_lyrics([text], name)
                    except ValueError as e:
                        raise RequestError(request.spelled(name), str(e)) from None

    def attach(self, request: Request) -> Request:
        """``request`` with its upload (``src_upload``) found and its windows checked against the
        upload's length; a :class:`RequestError` when the upload is gone."""
        if request.src_upload is None:
            return request
        path = self.uploads.path(request.src_upload)
        if path is None:
            raise RequestError("src_upload", f"no upload {request.src_upload} (uploads expire after "
                               f"{self.config.upload_ttl_s:g} s unless a job holds them)")
        request = dataclasses.replace(request, upload_path=str(path))
        check_params(request, source_length(str(path))[0])
        return request

    def add_upload(self, data: bytes):
        """Store an uploaded audio file (:class:`~acestep_jax.serving.uploads.UploadError` when refused)."""
        with self._cond:
            held = {j.request.src_upload for j in self._jobs.values() if j.request and j.request.src_upload}
        self.uploads.sweep(held)
        return self.uploads.add(data)

    def submit(self, request: Request) -> Job:
        """Accept ``request``: journaled before this returns. Raises :class:`QueueFull` or :class:`Draining`."""
        with self._cond:
            if self._draining:
                self.metrics.rejected.inc(reason="draining")
                raise Draining("the server is shutting down")
            if len(self._queue) + request.count > self.config.max_queue:
                self.metrics.rejected.inc(reason="queue_full")
                raise QueueFull(self.retry_after())
            job = Job(id=uuid.uuid4().hex, request=request, seq=self._seq, accepted_at=time.time())
            self._seq += 1
            if not self._save(job):
                self.metrics.rejected.inc(reason="storage")
                raise JournalError(f"the job cannot be journaled: {self.storage_error}; nothing was accepted")
            self._jobs[job.id] = job
            self._enqueue(job, time.monotonic())
            self.metrics.jobs.inc(status="accepted")
            self._update_depth()
            self._cond.notify_all()
        return job

    def job(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """Outputs waiting ahead of ``job``'s first waiting output (``None`` when none waits)."""
        with self._cond:
            for i, w in enumerate(self._queue):
                if w.item.job == job.id:
                    return i
        return None

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job (``"cancelled"``: a running batch finishes, its results
        are dropped) or delete a finished one with its files (``"deleted"``); ``None``: unknown."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.finished:
                self._forget(job)
                return "deleted"
            self._finish(job, CANCELLED)
            return CANCELLED

    def watch(self, job: Job, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from any thread, keep it short) at each change of ``job``; returns
        the function that stops it."""
        with self._cond:
            job.listeners.append(callback)

        def stop():
            with self._cond:
                if callback in job.listeners:
                    job.listeners.remove(callback)

        return stop

    def queued_outputs(self) -> int:
        with self._cond:
            return len(self._queue)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about one batch."""
        return max(1, math.ceil(self._batch_seconds or 5.0))

    # ------------------------------------------------------------------ internals (lock held)
    def _enqueue(self, job: Job, since: float) -> None:
        items = [Item(job.id, i, job.request) for i in range(job.request.count)]
        if job.request.params.batch_invariant:  # a coupled request reruns whole
            items = [it for it in items if it.index not in job.outputs]
        self._queue.extend(_Waiting(it, it.key, since) for it in items)

    def _update_depth(self) -> None:
        self.metrics.queue_depth.set(len(self._queue))

    def _notify(self, job: Job) -> None:
        for callback in list(job.listeners):
            try:
                callback()
            except Exception:
                log.exception("job listener failed")

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        job.status, job.error, job.stage, job.finished_at = status, error, None, time.time()
        self._queue = [w for w in self._queue if w.item.job != job.id]
        self._update_depth()
        if status != DONE:
            self._delete_outputs(job)
        self._save(job)
        self.metrics.jobs.inc(status=status)
        self.metrics.job_seconds.observe(job.finished_at - job.accepted_at)
        self._finished.append(job.id)
        while len(self._finished) > self.config.keep_jobs:
            old = self._jobs.get(self._finished.popleft())
            if old is not None:
                self._forget(old)
        self._notify(job)

    def _save(self, job: Job) -> bool:
        """Journal ``job``'s state; on failure log it, keep the reason in :attr:`storage_error`, return False."""
        try:
            self.store.save(job.state())
        except OSError as e:
            reason = describe_write_error(e, self.store.jobs_dir)
            if self.storage_error is None:
                log.error("journal: cannot write the state of job %s: %s", job.id, reason)
            self.storage_error = reason
            return False
        if self.storage_error is not None:
            log.info("journal: writable again")
            self.storage_error = None
        return True

    def _forget(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        if job.id in self._finished:
            self._finished.remove(job.id)
        self._delete_outputs(job)
        self.store.delete(job.id)
        upload = job.request.src_upload if job.request else None
        if upload and not any(j.request and j.request.src_upload == upload for j in self._jobs.values()):
            self.uploads.delete(upload)  # deleted with the last job that used it

    def _delete_outputs(self, job: Job) -> None:
        files = [p for o in job.outputs.values() for p in (o.audio, o.record)]
        job.outputs = {}
        self.store.delete_files(files)

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except Exception:
                log.exception("batch failed")

    def _next_batch(self) -> list[_Waiting] | None:
        largest = self.config.batch_sizes[-1]
        with self._cond:
            while True:
                if self._draining:
                    return None
                if not self._queue:
                    self._cond.wait()
                    continue
                first = self._queue[0]
                alone = not first.item.request.params.batch_invariant  # all its items, queued together
                same = [w for w in self._queue if w.key == first.key][: None if alone else largest]
                wait = first.since + self.config.max_wait_s - time.monotonic()
                if not alone and len(same) < largest and wait > 0:
                    self._cond.wait(wait)
                    continue
                taken = {id(w) for w in same}
                self._queue = [w for w in self._queue if id(w) not in taken]
                self._update_depth()
                now = time.time()
                for w in same:
                    job = self._jobs[w.item.job]
                    self.metrics.stage_seconds.observe(now - job.accepted_at, stage="queue")
                    if job.status == QUEUED:
                        job.status, job.started_at = RUNNING, now
                    job.stage = "generating"
                    self._notify(job)
                return same

    def _run(self, batch: list[_Waiting]) -> None:
        items = [w.item for w in batch]
        try:
            result = run_batch(self.pipe, items, self.config.batch_sizes)
        except Exception as e:
            log.exception("batch of %d failed", len(items))
            with self._cond:
                for job_id in dict.fromkeys(it.job for it in items):
                    job = self._jobs.get(job_id)
                    if job is not None and not job.finished:
                        self._finish(job, FAILED, f"generation failed: {type(e).__name__}: {e}")
            return
        t = result.timings
        log.info("batch of %d (size %d) in %.2f s: conditioning %.2f, diffusion %.2f, decode %.2f", len(items),
                 result.size, t["batch"], t["conditioning"], t["diffusion"], t["decode"])
        m = self.metrics
        m.batches.inc()
        m.batch_items.inc(len(items))
        m.batch_slots.inc(result.size)
        m.occupancy.set(len(items) / result.size)
        for stage in ("conditioning", "diffusion", "decode"):
            m.stage_seconds.observe(result.timings[stage], stage=stage)
        seconds = result.timings["batch"]
        self._batch_seconds = seconds if self._batch_seconds is None else 0.8 * self._batch_seconds + 0.2 * seconds
        for r in result.results:
            self._write(r)

    def _write(self, r: ItemResult) -> None:
        with self._cond:
            job = self._jobs.get(r.item.job)
            if job is None or job.status != RUNNING:
                return  # cancelled meanwhile
            job.stage = "writing"
            self._notify(job)
        fmt = job.request.format
        path = self.store.output_path(job.id, r.item.index, fmt)
        record = {**r.record, RECORD_KEY: {**r.record[RECORD_KEY], "job": job.id, "audio_path": path.name,
                                           "model": self.model_info}}
        if self._writer_failed:  # a failed writer refuses more work: start a fresh one
            old, self._writer, self._writer_failed = self._writer, OutputWriter(self.config.writer_workers), False
            try:
                old.close()
            except Exception as e:  # noqa: BLE001 - its job was failed when the write failed
                log.debug("closing the failed writer: %s", e)
        start = time.perf_counter()
        future = self._writer.submit(path, r.audio, r.sample_rate, format=fmt, record=record)
        future.add_done_callback(lambda f: self._written(job, r, path, f, start))

    def _written(self, job: Job, r: ItemResult, path, future, start: float) -> None:
        error = future.exception()
        record_path = str(path.with_suffix(".json"))
        with self._cond:
            if error is not None:
                self._writer_failed = True
                reason = describe_write_error(error, self.store.outputs_dir)
                log.error("job %s: writing output %d failed: %s", job.id, r.item.index, reason)
                if not job.finished:
                    self._finish(job, FAILED, f"writing the output failed: {reason}")
                return
            if job.status != RUNNING:  # cancelled while writing
                self.store.delete_files([str(path), record_path])
                return
            self.metrics.stage_seconds.observe(time.perf_counter() - start, stage="write")
            self.metrics.audio_seconds.inc(r.seconds)
            job.outputs[r.item.index] = Output(r.item.index, str(path), record_path, r.seconds)
            if len(job.outputs) == job.request.count:
                self._finish(job, DONE)
            else:  # journaled as written: a restart queues only the outputs still missing
                self._save(job)
                job.stage = "queued"
                self._notify(job)

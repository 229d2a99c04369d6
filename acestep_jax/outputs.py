"""Writing finished outputs (an audio file and its JSON record) on background threads.

Encoding a long FLAC/MP3 takes about as long as sampling a short batch, so a batch
loop hands its outputs to an :class:`OutputWriter` and goes on sampling::

    with OutputWriter() as writer:
        for batch in batches:
            out = pipe.generate(...)        # samples while the previous batch's files are written
            for path, audio, record in zip(paths, out.audio, out.params):
                writer.submit(path, audio, out.sample_rate, record=record)
    # leaving the block waits for every file and re-raises the first write error
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Self

from acestep_jax.codec.audio_io import as_channels, resolve_format, save_audio
from acestep_jax.files import write_json

log = logging.getLogger(__name__)


class OutputWriter:
    """Encodes and writes audio files plus their JSON records on ``workers`` threads.

    At most ``max_pending`` outputs wait or are being written at once; :meth:`submit`
    blocks beyond that, which bounds the audio held in memory. Every file is written
    to a temporary path and renamed, and a record only after its audio, so a failed or
    interrupted write leaves nothing half-written and no record without its audio.
    A failed write makes the writer fail: the next :meth:`submit`, :meth:`flush` or
    :meth:`close` raises the first error (with a note naming the file).
    """

    def __init__(self, workers: int = 2, max_pending: int = 8):
        if workers < 1 or max_pending < 1:
            raise ValueError(f"workers and max_pending must be >= 1, got {workers} and {max_pending}")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="acestep-writer")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self._pending: set[Future] = set()
        self._error: BaseException | None = None
        self._closed = False

    def submit(
        self,
        path: str | os.PathLike,
        audio,
        sample_rate: int,
        *,
        format: str | None = None,
        record: dict | None = None,
        record_path: str | os.PathLike | None = None,
    ) -> Future:
        """Queue ``audio [channels, N]`` for ``path`` (``format`` as :func:`save_audio`) and, when
        given, ``record`` for ``record_path`` (default: ``path`` with a ``.json`` suffix).

        The format and the audio's shape are checked here (ValueError); the array is kept,
        not copied, until written, so it must not change meanwhile. Returns a future of
        the audio path.
        """
        if self._closed:
            raise RuntimeError("OutputWriter is closed")
        self._raise_error()
        fmt = resolve_format(path, format)
        audio = as_channels(audio)
        if record is not None and record_path is None:
            record_path = Path(path).with_suffix(".json")
        self._slots.acquire()
        try:
            future = self._pool.submit(self._write, os.fspath(path), audio, int(sample_rate), fmt, record,
                                       record_path)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def flush(self) -> None:
        """Wait for every output submitted so far; raise the first write error, if any."""
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                break
            for future in pending:
                future.exception()  # waits; errors are kept by _done
        self._raise_error()

    def close(self) -> None:
        """:meth:`flush`, then stop the threads (also when the flush raises)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # an exception is already on its way: finish the writes, report (not raise) theirs
            self.close()
        except Exception as err:  # noqa: BLE001
            if err is not exc:  # the write error itself is already on its way
                log.error("writing outputs failed too: %s", err)

    def _write(self, path, audio, sample_rate, fmt, record, record_path) -> str:
        try:
            save_audio(path, audio, sample_rate, fmt)
            if record is not None:
                write_json(record_path, record)
        except BaseException as err:
            err.add_note(f"while writing {path}" + ("" if record is None else f" and {record_path}"))
            raise
        return path

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)
            if self._error is None and not future.cancelled() and future.exception() is not None:
                self._error = future.exception()
        self._slots.release()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

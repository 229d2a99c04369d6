"""Profiler traces of a few steps (``train.py --profile DIR``, the benchmarks' ``--profile DIR``).

Traces are ``jax.profiler`` captures (open them with TensorBoard's profile plugin or
Perfetto). Transformer blocks run under ``jax.named_scope`` (``self_attention``,
``cross_attention``, ``feed_forward``), so the trace reads like the model.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import jax

log = logging.getLogger(__name__)


@contextlib.contextmanager
def trace(folder: str | os.PathLike | None) -> Iterator[None]:
    """Capture a profiler trace of the block into ``folder`` (no-op when ``None``)."""
    if folder is None:
        yield
        return
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    jax.profiler.start_trace(folder)
    try:
        yield
    finally:
        jax.effects_barrier()
        jax.profiler.stop_trace()
        log.info("profiler trace written to %s", folder)


class StepTrace:
    """Trace steps ``[start, start + count)`` of a loop: call :meth:`step` before each step
    (with its index) and :meth:`close` at the end. Skipping the first steps keeps
    compilation out of the trace."""

    def __init__(self, folder: str | os.PathLike | None, start: int, count: int = 3):
        self.folder, self.start, self.stop = folder, start, start + count
        self._ctx = None

    def step(self, index: int) -> None:
        if self.folder is None:
            return
        if index == self.start and self._ctx is None:
            self._ctx = trace(self.folder)
            self._ctx.__enter__()
        elif index == self.stop:
            self.close()

    def close(self) -> None:
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)

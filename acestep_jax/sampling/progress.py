"""Per-step progress of the jitted sampling loop.

A loop compiled with ``LoopConfig(progress=True)`` reports each finished step through
a host callback to the bar opened by :func:`step_bar` (if any). Loops compiled without
it (the default, and what benchmarks time) carry no callback at all.
"""

from __future__ import annotations

from contextlib import contextmanager

import jax

_bars: list = []


@contextmanager
def step_bar(desc: str = "sampling", disable: bool = False):
    """Show a tqdm bar of sampling steps while the block runs."""
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="step", disable=disable, dynamic_ncols=True)
    _bars.append(bar)
    try:
        yield bar
    finally:
        _bars.remove(bar)
        bar.close()


def _advance(done, total) -> None:
    if _bars:
        bar = _bars[-1]
        bar.total = int(total)
        bar.update(max(0, int(done) - bar.n))  # idempotent: devices may each report a step


def report(done, total) -> None:
    """Inside a loop body: ``done`` of ``total`` steps are finished (traced scalars)."""
    jax.debug.callback(_advance, done, total)

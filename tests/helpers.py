"""Shared test helpers: golden-vector access and tolerance checks."""

import contextlib
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def golden_root() -> Path:
    root = Path(os.environ.get("ACESTEP_GOLDEN_DIR", REPO.parent / "shared" / "golden"))
    if not (root / "README.md").is_file():
        raise RuntimeError(
            f"golden vectors not found at {root}; set ACESTEP_GOLDEN_DIR to the folder "
            "holding the reference's golden files (parity tests cannot run without them)"
        )
    return root


class Golden:
    """One golden folder: ``io`` arrays, ``config``/``extra`` JSON, file paths."""

    def __init__(self, name: str):
        self.dir = golden_root() / name
        io = self.dir / "io.npz"
        self.io = dict(np.load(io)) if io.is_file() else {}
        self.config = self._json("config.json")
        self.extra = self._json("extra.json")

    def _json(self, name):
        p = self.dir / name
        return json.loads(p.read_text()) if p.is_file() else {}

    def path(self, name: str) -> Path:
        return self.dir / name


def golden_keys(name: str) -> list[str]:
    """The array names in ``<name>/io.npz``, read from the archive listing (no array is loaded).

    For parametrizing at collection time: a missing file is an error, never zero cases.
    """
    path = golden_root() / name / "io.npz"
    if not path.is_file():
        raise RuntimeError(f"golden arrays not found at {path}")
    with zipfile.ZipFile(path) as z:
        return [n.removesuffix(".npy") for n in z.namelist()]


def golden_matches(name: str, pattern: str) -> list[tuple[str, ...]]:
    """The groups of every ``<name>/io.npz`` key that fully matches ``pattern``, in file order.

    Raises when none matches, so a golden set without the cases fails instead of collecting nothing.
    """
    found = [m.groups() for k in golden_keys(name) if (m := re.fullmatch(pattern, k))]
    if not found:
        raise RuntimeError(f"no key of {golden_root() / name / 'io.npz'} matches {pattern!r}")
    return found


def require_cases(cases: list, what: str) -> list:
    """``cases`` unless empty (an empty golden case list is an error, not a skipped test)."""
    if not cases:
        raise RuntimeError(f"the golden {what} list is missing or empty")
    return cases


def tile_batch(a, batch: int):
    """``a`` with its items repeated cyclically (or cut) to ``batch`` items along axis 0."""
    a = np.asarray(a)
    return np.concatenate([a] * math.ceil(batch / a.shape[0]))[:batch]


def batch_multiple(batch: int, k: int) -> int:
    """The smallest multiple of ``k`` at least ``batch`` (a batch that a mesh axis of k divides)."""
    return k * math.ceil(batch / k)


def padded_items(io: dict, prefix: str, batch: int, extra: int = 0):
    """``(padded [batch, longest + extra, D], lengths)`` from the per-item golden arrays
    ``<prefix>_0 .. <prefix>_<batch-1>`` (sequences of different lengths), zeros after each."""
    items = [io[f"{prefix}_{i}"] for i in range(batch)]
    if f"{prefix}_{batch}" in io:
        raise AssertionError(f"golden has more {prefix}_* items than the batch of {batch}")
    lengths = np.array([len(f) for f in items], np.int32)
    padded = np.zeros((batch, lengths.max() + extra, items[0].shape[1]), np.float32)
    for i, f in enumerate(items):
        padded[i, : len(f)] = f
    return padded, lengths


def assert_close(actual, expected, rtol=1e-4, atol=1e-4, what=""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected)
    bad = err > atol + rtol * np.abs(expected)
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {bad.size} values differ; max abs err {err.max():.3g}"
    )


def _small_disk_available() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], check=False, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


small_disk = pytest.mark.skipif(not _small_disk_available(),
                                reason="needs user namespaces (unshare -rm) to mount a small tmpfs")


def run_on_small_disk(disk: Path, size: str, prelude: str, module: str, argv: list[str], timeout: int = 600):
    """Run ``python -m module argv`` (after the Python ``prelude``) with a ``size`` tmpfs mounted on ``disk``
    in a private mount namespace; returns the finished process and what was left on the disk (paths)."""
    disk.mkdir(parents=True)
    listing = disk.parent / f"{disk.name}.left"
    code = f"{prelude}\nimport sys\nfrom {module} import main\nsys.exit(main(sys.argv[1:]))"
    shell = 'mount -t tmpfs -o size="$0" tmpfs "$1" && "${@:2}"; rc=$?; (cd "$1" && find . -mindepth 1) > "$1.left"; exit $rc'
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", shell, size, str(disk), sys.executable, "-c", code, *argv],
                          check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return proc, sorted(listing.read_text().split())


@contextlib.contextmanager
def compile_events():
    """The functions traced and programs compiled (event names) while the block runs.

    Traces count too: a program found in the persistent compilation cache is traced
    but not compiled."""
    from jax import monitoring

    seen = []
    events = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")

    def listen(event, duration, **kwargs):
        if event in events:
            seen.append(event)

    monitoring.register_event_duration_secs_listener(listen)
    try:
        yield seen
    finally:
        monitoring.unregister_event_duration_listener(listen)

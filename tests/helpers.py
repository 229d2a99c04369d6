"""Shared test helpers: golden-vector access and tolerance checks."""

import json
import os
from pathlib import Path

import numpy as np

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


def assert_close(actual, expected, rtol=1e-4, atol=1e-4, what=""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected)
    bad = err > atol + rtol * np.abs(expected)
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {bad.size} values differ; max abs err {err.max():.3g}"
    )

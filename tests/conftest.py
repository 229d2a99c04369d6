"""Test setup: 8 fake CPU devices and the golden vectors from the PyTorch reference."""

import os

# must happen before jax initialises its backends
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

from pathlib import Path

import pytest

from tests.helpers import Golden, golden_root


@pytest.fixture(scope="session")
def golden():
    """``golden("transformer")`` → :class:`Golden`."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Golden(name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def manifests_dir() -> Path:
    return golden_root() / "manifests"


@pytest.fixture(scope="session")
def lyrics_vocab_path() -> Path:
    p = golden_root().parent / "assets" / "lyrics_vocab.json"
    if not p.is_file():
        raise RuntimeError(f"lyric vocabulary not found at {p}")
    return p


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory) -> Path:
    """A tiny checkpoint in the released reference layout (tests read it, never change it for good)."""
    from tests.fake_checkpoint import build_reference_folder

    return build_reference_folder(tmp_path_factory.mktemp("hf") / "ACE-Step-v1-3.5B")

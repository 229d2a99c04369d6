"""Test setup: 8 fake CPU devices and the golden vectors from the PyTorch reference.

Tiny models spend most of their test time compiling, so the tests (and the command lines
they launch, which inherit this environment) compile with LLVM optimisation off, and the
command lines share one persistent compilation cache for the run, cold at its start like a
fresh CI machine's and removed at its end (the users' ``~/.cache/acestep_jax`` is never
touched). The test processes themselves keep jax's default (no persistent cache), so one
test's programs never come from another's; a command line run in-process turns it on, so it
is turned off again after each test.
"""

import os
import shutil
import tempfile

# must happen before jax initialises its backends
os.environ.setdefault("JAX_PLATFORMS", "cpu")
for flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
    if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
# the first process to load this file (pytest, or xdist's controller) owns the run's cache
RUN_CACHE = os.path.join(tempfile.gettempdir(), f"acestep-jax-tests-{os.getpid()}")
os.environ.setdefault("ACESTEP_JAX_CACHE", RUN_CACHE)

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


CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                 "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(autouse=True)
def _no_persistent_cache_after_the_test():
    """A command line run in-process turns jax's persistent cache on for the whole process; put it
    back off afterwards (jax keeps an initialised cache until ``reset_cache``)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    before = {k: getattr(jax.config, k) for k in CACHE_OPTIONS}
    yield
    if {k: getattr(jax.config, k) for k in CACHE_OPTIONS} != before:
        for k, v in before.items():
            jax.config.update(k, v)
        compilation_cache.reset_cache()


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs_after_the_module():
    """Drop jax's compiled programs after each test module. XLA:CPU maps a few memory regions for
    every program it keeps, and a worker that kept all of its ~300 tests' programs reached Linux's
    limit of 65530 mappings (``vm.max_map_count``): LLVM's next mapping failed and the worker aborted."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


def pytest_collection_modifyitems(items):
    """Long (``slow``) tests first: xdist's workers then end together on short ones."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_sessionfinish(session, exitstatus):
    if os.environ["ACESTEP_JAX_CACHE"] == RUN_CACHE:
        shutil.rmtree(RUN_CACHE, ignore_errors=True)

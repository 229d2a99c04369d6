"""Persistent XLA compilation cache, so repeated runs skip recompiling the sampling loop."""

from __future__ import annotations

import os
from pathlib import Path

import jax

from acestep_jax.files import cache_root


def enable_compilation_cache(
    path: str | os.PathLike | None = None, min_compile_time_s: float = 1.0, min_entry_size_bytes: int = 0
) -> Path:
    """Store compiled programs under ``path`` (default ``$ACESTEP_JAX_CACHE`` or
    ``~/.cache/acestep_jax``, then ``xla/``); only programs taking at least ``min_compile_time_s``
    to compile are cached. Returns the cache folder."""
    if path is None:
        path = cache_root() / "xla"
    path = Path(path).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
    return path

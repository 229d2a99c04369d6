"""The Hugging Face Hub side of conversion: repo ids, downloads, and the cache of conversions.

A model given as a folder in the reference's layout or as a Hub id is converted once into
``$ACESTEP_JAX_CACHE/converted/NAME-KEY`` and reused; ``KEY`` hashes the source's path and a
stamp of its files (names, sizes, times) or its repo id, so an edited source converts again.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from acestep_jax.files import cache_root

log = logging.getLogger(__name__)

HUB_REPO = "ACE-Step/ACE-Step-v1-3.5B"  # the released checkpoint
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class DownloadError(ValueError):
    """A file could not be downloaded (offline, blocked, unknown repo)."""


def looks_like_repo_id(spec: str) -> bool:
    """``owner/name`` with Hub-legal characters (and not an existing path)."""
    return _REPO_ID.fullmatch(str(spec)) is not None and not Path(spec).exists()


def local_folder(spec: str | Path, what: str, download: Callable[[str], Path]) -> Path:
    """``spec`` as a local path: itself when it exists, else ``download`` of the Hub id it names."""
    path = Path(spec)
    if path.exists():
        return path
    if not looks_like_repo_id(str(spec)):
        raise FileNotFoundError(f"{what} {spec} does not exist")
    return download(str(spec))


def reason(error: BaseException) -> str:
    """An error's type and first line, for a one-line message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def snapshot(repo_id: str, patterns: list[str], what: str, *, revision: str | None = None,
             cache_dir: str | None = None) -> Path:
    """The files of ``repo_id`` matching ``patterns``, downloaded into (or reused from) the Hugging Face
    cache; a :class:`DownloadError` naming ``what`` when they cannot be fetched."""
    from huggingface_hub import snapshot_download

    log.info("downloading %s from the Hugging Face Hub", repo_id)
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - network, authorisation, unknown repo: all mean "not available"
        raise DownloadError(f"could not download the {what} {repo_id} from the Hugging Face Hub ({reason(e)}); "
                            "pass a local folder instead") from None


def files_stamp(files: Iterable[Path], root: Path) -> str:
    """Names (relative to ``root``), sizes and modification times of ``files``."""
    entries = []
    for f in sorted(files):
        st = f.stat()
        entries.append(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(entries)


def cached_conversion(name: str, source: Path, stamp: str, is_converted: Callable[[Path], bool],
                      convert: Callable[[Path], object]) -> Path:
    """The cached conversion of ``source`` (``stamp``: what identifies its contents): reused when
    ``is_converted``, else made by ``convert(folder)``."""
    key = hashlib.sha256(f"{source.resolve()}|{stamp}".encode()).hexdigest()[:16]
    cached = cache_root() / "converted" / f"{name}-{key}"
    if is_converted(cached):
        log.info("using the cached conversion %s", cached)
        return cached
    log.info("converting %s into %s (once; later runs reuse it)", source, cached)
    convert(cached)
    return cached

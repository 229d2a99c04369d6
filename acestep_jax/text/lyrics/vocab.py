"""Locating the lyric BPE vocabulary (explicit path, converted checkpoint, or pinned download)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

VOCAB_FILENAME = "lyrics_vocab.json"
VOCAB_COMMIT = "54da683d36177c904a1210358888d2278cb81e78"
VOCAB_URL = (
    "https://raw.githubusercontent.com/ace-step/ACE-Step/"
    f"{VOCAB_COMMIT}/acestep/models/lyrics_utils/vocab.json"
)
VOCAB_SHA256 = "c2a66ea48c478c0bb9acb5497144b926acdeaa37128faa799508d40f2b9cc558"


def default_cache_dir() -> Path:
    from acestep_jax.files import cache_root

    return cache_root()


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path) -> None:
    """Write the body of ``url`` to ``dest``."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        while block := response.read(1 << 20):
            f.write(block)


def download_vocab(cache_dir: str | os.PathLike | None = None) -> Path:
    """Download the pinned vocabulary into ``cache_dir``, verify its sha256, and return its path."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / VOCAB_FILENAME
    fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=VOCAB_FILENAME, suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            _download(VOCAB_URL, tmp)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConnectionError(
                f"the lyric vocabulary is needed for lyrics and could not be downloaded from {VOCAB_URL} "
                f"({reason}); pass a local copy with --lyrics-vocab (ACE-Step's vocab.json), or use a "
                "converted checkpoint, which bundles it"
            ) from None
        digest = sha256_of(tmp)
        if digest != VOCAB_SHA256:
            raise ValueError(
                f"lyric vocabulary downloaded from {VOCAB_URL} has sha256 {digest}, "
                f"expected {VOCAB_SHA256}; not saved"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def find_lyrics_vocab(
    path: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Path of the lyric vocabulary.

    Looks, in order, at ``path`` (must exist), ``<checkpoint_dir>/lyrics_vocab.json``,
    and the cache (``~/.cache/acestep_jax/lyrics_vocab.json`` unless ``cache_dir``,
    used only when its sha256 matches the pinned one); otherwise downloads the pinned
    file when ``download`` is true (a sha256 mismatch raises ValueError).
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: lyric vocabulary {str(path)!r} does not exist")
        return path
    if checkpoint_dir is not None:
        candidate = Path(checkpoint_dir) / VOCAB_FILENAME
        if candidate.is_file():
            return candidate
    cached = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / VOCAB_FILENAME
    if cached.is_file() and sha256_of(cached) == VOCAB_SHA256:
        return cached
    if not download:
        looked = [str(cached)]
        if checkpoint_dir is not None:
            looked.insert(0, str(Path(checkpoint_dir) / VOCAB_FILENAME))
        raise FileNotFoundError(
            f"lyric vocabulary not found (looked at {', '.join(looked)}) and download=False; "
            "pass path= or checkpoint_dir=, or allow the download"
        )
    return download_vocab(cache_dir)

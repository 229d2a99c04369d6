"""Small file helpers: the cache folder and atomic writes (temporary file, then rename)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from acestep_jax.errors import UsageError


def cache_root() -> Path:
    """``$ACESTEP_JAX_CACHE`` or ``~/.cache/acestep_jax`` (converted checkpoints, lyric vocabulary, XLA cache)."""
    return Path(os.environ.get("ACESTEP_JAX_CACHE") or Path.home() / ".cache" / "acestep_jax").expanduser()


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (safe beside writer threads)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        with _UMASK_LOCK:  # elsewhere: set and restore, one thread at a time
            mask = os.umask(0)
            os.umask(mask)
        return mask


def make_folder_beside(path: str | os.PathLike, prefix: str) -> Path:
    """A new empty folder beside ``path`` named ``prefix`` + random characters, with the usual
    permissions (``0o777`` less the umask; :func:`tempfile.mkdtemp` alone gives ``0o700``)."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


FULL_DISK_MARKS = ("No space left on device", "os_error_code='28'")  # what libraries' errors say of ENOSPC


def full_disk(error: BaseException) -> bool:
    """Whether ``error`` (an OSError, or a library's error about one, as orbax/tensorstore raise) is a full disk."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return any(mark in str(error) for mark in FULL_DISK_MARKS)


def check_free_space(path: str | os.PathLike, needed: int, what: str) -> None:
    """Raise :class:`UsageError` when the file system of ``path`` (which may not exist yet) has
    less than ``needed`` bytes free: a full disk is found before writing, not halfway."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UsageError(f"no space left on device for {what} in {path}: it needs about {_size(needed)}, "
                         f"{_size(free)} are free; free some space or write elsewhere")


def wait_until_settled(folder: str | os.PathLike, quiet: float = 0.5, limit: float = 10.0) -> None:
    """Wait (at most ``limit`` seconds) until nothing in ``folder`` has changed for ``quiet`` seconds.

    After a failed orbax save, tensorstore's writer threads can still create files for a moment;
    removing the folder before they stop would leave their files behind.
    """

    def snapshot():
        try:
            return {(p, p.stat().st_size) for p in Path(folder).rglob("*")}
        except OSError:  # a file vanished while listing
            return None

    deadline, last, since = time.monotonic() + limit, snapshot(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.05)
        now = snapshot()
        if now != last:
            last, since = now, time.monotonic()


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


TEMP_PREFIX = ".tmp-"  # the temporary files of write_atomic


def remove_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files a killed writer left in ``folder`` (none: nothing); returns their names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(TEMP_PREFIX + "*"):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    Readers never see a partial file; on failure nothing is left behind. The file
    gets the usual permissions (``0o666`` less the umask).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, data, **kwargs) -> None:
    """Write ``data`` as indented UTF-8 JSON, atomically."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False, **kwargs)

    write_atomic(path, write, suffix=".json")


def read_text(path: str | os.PathLike, what: str) -> str:
    """A UTF-8 text file's contents; a missing or undecodable file is a :class:`UsageError` naming ``what``."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a folder, not a file") from None
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{what} {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None

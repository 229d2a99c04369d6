"""What the command lines share: one-line user errors, quiet library logs, help text, path checks,
the model flags.

The rule for every command line: validate everything (arguments, files, paths, output
locations, limits) before loading models; a user error is one ``error: ...`` line naming
the argument or file and what to do, with exit code 2 (:func:`report`, the one place that
prints it; argument errors too, see :class:`Parser`); ``--debug`` adds the traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from acestep_jax.errors import UsageError
from acestep_jax.files import FULL_DISK_MARKS, full_disk

# errors that user input or the user's environment cause (files, downloads, checkpoints, extras)
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, OSError, ImportError)
T = TypeVar("T")
LIBRARY_LOGGERS = ("absl", "jax", "orbax", "tensorstore", "urllib3", "huggingface_hub", "grain")


def user_errors() -> tuple[type[BaseException], ...]:
    """:data:`USER_ERRORS` plus the converter's ``CheckpointError`` and failed Hub downloads."""
    from acestep_jax.convert.core import CheckpointError
    from acestep_jax.convert.hub import DownloadError

    return (*USER_ERRORS, CheckpointError, DownloadError)


def report(error: BaseException | str, debug: bool = False) -> int:
    """Print ``error`` as one ``error: ...`` line (``debug``: the traceback first); returns exit code 2."""
    if debug and isinstance(error, BaseException):
        traceback.print_exception(error)
    print(f"error: {one_line(error)}", file=sys.stderr)
    return 2


def one_line(error: BaseException | str, limit: int = 600) -> str:
    """A message on one line: a listing's lines joined, a long one cut (``--debug`` has it all)."""
    lines = [re.sub(r"^\s*(- )?", "", line) for line in describe(error).strip().splitlines() if line.strip()]
    text = "".join(("" if i == 0 else " " if lines[i - 1].endswith(":") else "; ") + line
                   for i, line in enumerate(lines)) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + " ... (--debug shows everything)"


INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT)


def interrupted(what: str) -> int:
    """Report a Ctrl-C as one line; returns :data:`INTERRUPTED`."""
    print(f"interrupted (Ctrl-C) {what}", file=sys.stderr)
    return INTERRUPTED


def run_interruptibly(fn: Callable[[], T]) -> T:
    """``fn()`` on a worker thread while the main thread waits in short slices, so a Ctrl-C is
    seen at once rather than when a compiled loop returns. On Ctrl-C the one line is printed and
    the process ends with :data:`INTERRUPTED` there and then: a running XLA computation cannot be
    stopped, only abandoned with the process (writes are atomic, so no partial output stays)."""
    result: dict = {}

    def work():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            result["error"] = e

    worker = threading.Thread(target=work, name="acestep-work", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        interrupted("while generating; nothing more was written")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    if "error" in result:
        raise result["error"]
    return result["value"]


FAILED_WRITER_MARKS = (*FULL_DISK_MARKS, "Event loop is closed")  # what writer threads say once a write failed


def _quiet_full_disk(record: logging.LogRecord) -> bool:
    """A logging filter: drops library records about a full disk (and the writer threads it stops)."""
    if record.name.startswith("acestep_jax"):
        return True
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    return not any(mark in text for mark in FAILED_WRITER_MARKS)


def _quiet_unraisable(default: Callable) -> Callable:
    """A ``sys.unraisablehook`` that drops the errors of tensorstore's writer callbacks after a failed
    orbax write (a full disk; "Event loop is closed" once orbax closed its loop) and hands on the rest."""

    def hook(args) -> None:
        if not (isinstance(args.exc_value, Exception) and any(m in str(args.exc_value) for m in FAILED_WRITER_MARKS)):
            default(args)

    hook.quiet_unraisable = True
    return hook


def describe(error: BaseException | str) -> str:
    """The message of ``error``; a full disk says so, with the file being written (its note) and the fix."""
    if isinstance(error, BaseException) and full_disk(error):
        notes = [n.removeprefix("while ") for n in getattr(error, "__notes__", ())]
        filename = getattr(error, "filename", None)
        where = f" {notes[0]}" if notes else f" writing {filename}" if filename else ""
        return f"no space left on device{where}; free some space or write elsewhere (nothing partial was kept)"
    return str(error)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one :func:`report` line (exit code 2), not the usage block."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        report(f"{message} (see {self.prog} --help)")
        self.exit(2)


def setup_logging(verbose: bool = False, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """INFO logs of the project; libraries (orbax, absl, jax, ...) only warn unless ``verbose``, and say
    nothing of a full disk (their writer threads' tracebacks): the command's one error line does."""
    logging.basicConfig(level=logging.INFO, format=fmt)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_full_disk)
    if not getattr(sys.unraisablehook, "quiet_unraisable", False):
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="also show the libraries' INFO logs")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`~acestep_jax.loading.ModelOptions` (and ``--distributed``)."""
    from acestep_jax.convert.hub import HUB_REPO
    from acestep_jax.loading import CODEC_DTYPES, DTYPES

    g = parser.add_argument_group("model")
    g.add_argument("--checkpoint", default=HUB_REPO,
                   help="converted checkpoint folder, reference-layout folder (converted once and cached) or Hub id")
    g.add_argument("--tiny-random", action="store_true", help="tiny random models instead of a checkpoint (demo)")
    g.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="transformer compute dtype")
    g.add_argument("--param-dtype", choices=DTYPES, help="transformer storage dtype (default: as converted)")
    g.add_argument("--codec-dtype", choices=CODEC_DTYPES, default="auto",
                   help="the audio codec's (DC-AE and vocoder) dtype; auto: bfloat16 on GPU, float32 elsewhere")
    g.add_argument("--lyrics-vocab", help="lyric vocabulary (default: in the checkpoint, else downloaded)")
    g.add_argument("--transformer", help="a fine-tuned transformer folder (train.py's RUN/transformer) "
                   "replacing the checkpoint's")
    g.add_argument("--shard", action="store_true",
                   help="shard each batch over all devices (data axis); several processes always do")
    g.add_argument("--distributed", action="store_true",
                   help="join the other hosts' processes (multi-host; see acestep_jax.distributed)")
    g.add_argument("--compile-cache", help="persistent XLA compilation cache folder (default: the cache "
                   "folder's xla/, see ACESTEP_JAX_CACHE; '' disables)")


def start_distributed(flag: bool) -> None:
    """Join the other processes when asked (``--distributed`` or the ``JAX_*`` variables), before any device use."""
    from acestep_jax import distributed

    if distributed.requested(flag):
        distributed.initialize()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it informs: not for flags, unset options, or help that names one."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if "default" in text or default is None or isinstance(default, bool) or default in ("", [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def check_output_file(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`UsageError` unless a file can be created at ``path`` (its folder may not exist yet)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is an existing folder; give a file name inside it, e.g. {path / 'song.wav'}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{what} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: the folder {ancestor} is not writable")

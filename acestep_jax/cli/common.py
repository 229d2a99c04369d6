"""What the command lines share: one-line user errors, quiet library logs, help text, path checks.

The rule for every command line: validate everything (arguments, files, paths, output
locations, limits) before loading models; a user error is one ``error: ...`` line naming
the argument or file and what to do, with exit code 2; ``--debug`` adds the traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from acestep_jax.errors import UsageError

# errors that user input or the user's environment cause (files, downloads, checkpoints, extras)
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, OSError, ImportError)
LIBRARY_LOGGERS = ("absl", "jax", "orbax", "tensorstore", "urllib3", "huggingface_hub", "grain")


def user_errors() -> tuple[type[BaseException], ...]:
    """:data:`USER_ERRORS` plus the converter's :class:`~acestep_jax.convert.core.CheckpointError`."""
    from acestep_jax.convert.core import CheckpointError

    return (*USER_ERRORS, CheckpointError)


def report(error: BaseException, debug: bool = False) -> int:
    """Print ``error`` as one ``error: ...`` line (``debug``: the traceback first); returns exit code 2."""
    if debug:
        traceback.print_exception(error)
    lines = str(error).strip().splitlines() or [type(error).__name__]
    more = f" (+{len(lines) - 1} more lines with --debug)" if len(lines) > 1 and not debug else ""
    print(f"error: {lines[0]}{more}", file=sys.stderr)
    return 2


def setup_logging(verbose: bool = False, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """INFO logs of the project; libraries (orbax, absl, jax, ...) only warn unless ``verbose``."""
    logging.basicConfig(level=logging.INFO, format=fmt)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="also show the libraries' INFO logs")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it informs: not for flags, unset options, or help that names one."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if "default" in text or default is None or isinstance(default, bool) or default in ("", [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


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

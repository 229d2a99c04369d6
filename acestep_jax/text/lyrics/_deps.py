"""Import helper for the optional language packages of the lyric tokenizer."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = 'pip install "acestep-jax[lyrics]"'
# Import names of the packages in the ``lyrics`` extra.
LYRICS_MODULES = (
    "py3langid", "pypinyin", "num2words", "hangul_romanize", "cutlet", "fugashi", "unidic_lite",
)


class MissingLyricsExtra(ImportError):
    """A package of the ``lyrics`` extra is not installed (never swallowed by fallbacks)."""


def require(module: str) -> ModuleType:
    """Import ``module``; if it is missing, raise an ImportError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingLyricsExtra(
            f"the lyric tokenizer needs the optional package providing {module!r} "
            f"({err}); install the lyrics extra: {INSTALL_HINT}"
        ) from err


def require_all() -> None:
    """Raise :class:`MissingLyricsExtra` unless every package of the ``lyrics`` extra imports."""
    for module in LYRICS_MODULES:
        require(module)

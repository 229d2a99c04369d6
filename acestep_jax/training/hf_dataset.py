"""The reference trainer's input: a Hugging Face ``datasets`` folder as its ``convert2hf_dataset.py``
writes it (``save_to_disk``), read as the songs :mod:`acestep_jax.training.preprocess` encodes.

Each row has ``keys``, ``filename`` (the audio), ``tags`` (a list), ``norm_lyrics``,
``recaption`` (a dict of alternative prompts) and ``speaker_emb_path`` (the reference reads
zeros for it: speakers are not used). The converter repeats every song ``repeat_count``
times; here the repeats collapse into one song whose ``weight`` is that count (training
draws it that much more often). ``filename`` is resolved as the reference resolves it,
against the working folder, and else against the dataset folder's parent (where the
converter usually ran).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from acestep_jax.errors import UsageError

log = logging.getLogger(__name__)

DATASET_FILES = ("dataset_info.json", "state.json")  # what save_to_disk writes beside the arrow files
COLUMNS = ("keys", "filename", "tags")


@dataclass(frozen=True)
class DatasetSong:
    """One song of a ``datasets`` folder; ``weight``: how many rows repeat it."""

    key: str
    audio: Path
    tags: tuple[str, ...]
    recaptions: tuple[str, ...]
    lyrics: str
    weight: int


def is_dataset(folder: str | Path) -> bool:
    """Whether ``folder`` is a ``datasets`` folder (``Dataset.save_to_disk``)."""
    return all((Path(folder) / f).is_file() for f in DATASET_FILES)


def _audio(filename: str, folder: Path) -> Path | None:
    for path in (Path(filename), folder.parent / filename):
        if path.is_file():
            return path
    return None


def read_dataset(folder: str | Path) -> list[DatasetSong]:
    """The songs of a ``datasets`` folder, one per distinct ``keys`` in first-appearance order, each with
    its repeat count as ``weight``; rows whose audio is missing are logged and skipped."""
    try:
        from datasets import load_from_disk
    except ImportError:
        raise UsageError(f"{folder} is a Hugging Face datasets folder: reading it needs `pip install datasets`") from None
    folder = Path(folder)
    ds = load_from_disk(str(folder))
    if missing := [c for c in COLUMNS if c not in ds.column_names]:
        raise UsageError(f"{folder}: a datasets folder without the columns {missing} (convert2hf_dataset.py "
                         "writes keys, filename, tags, norm_lyrics, recaption)")
    songs: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for row in ds:
        key = str(row["keys"])
        counts[key] = counts.get(key, 0) + 1
        songs.setdefault(key, row)
    items = []
    for key, row in songs.items():
        audio = _audio(row["filename"], folder)
        if audio is None:
            log.warning("skipping %s: audio %s not found (neither in the working folder nor beside %s)",
                        key, row["filename"], folder)
            continue
        recaption = row.get("recaption") or {}
        items.append(DatasetSong(key, audio, tuple(str(t) for t in row["tags"] or ()),
                                 tuple(v for v in recaption.values() if isinstance(v, str) and v),
                                 str(row.get("norm_lyrics") or "").strip(), counts[key]))
    if not items:
        raise FileNotFoundError(f"no song of the datasets folder {folder} has its audio file")
    return items

"""Turn a folder of songs into training records (the library behind ``acestep-preprocess``).

Input layout (the reference's LoRA data folder)::

    data/song.mp3            audio (mp3, wav, flac, ogg)
    data/song_prompt.txt     comma-separated tags (required)
    data/song_lyrics.txt     lyrics (optional; none → the reference's "no lyrics" id [0])
    data/song_<ssl>.npy      optional precomputed SSL features [frames, dim] for REPA,
                             <ssl> one of the transformer's ssl_names (mert, m-hubert)

As the reference's dataset: audio is resampled to 48 kHz, clipped to [-1, 1], padded to
at least 3 s, skipped when more than 95 % of it is exact silence and cut to 240 s; the
latents are the codec's encoding of that 48 kHz audio; the speaker embedding is zero.
The prompt's tags (``", "``-separated) are encoded in file order and, with
``prompt_variants`` > 1, in other orders and as each recaption too: the reference's recipe
shuffles the tags and picks the tags or a recaption each time it draws a song, so the
records keep several prompt variants with the chance of each, and training draws one per
step. The input may also be a Hugging Face ``datasets`` folder as the reference's
``convert2hf_dataset.py`` writes it (see :mod:`acestep_jax.training.hf_dataset`). With ``--mert`` / ``--mhubert`` the REPA targets are
computed here from the same audio, as the reference trainer does (see
:mod:`acestep_jax.training.ssl_features`); otherwise ``song_<ssl>.npy`` files are read.

Records go to ``<output>/part-NNNNN.array_record``; ``<output>/preprocess.json`` lists
the songs of every finished file, so a rerun resumes where a run stopped (an interrupted
run still writes the songs it finished). A song that cannot be decoded is reported by
name and skipped (and retried by the next run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from acestep_jax.errors import UsageError
from acestep_jax.files import write_json
from acestep_jax.models.transformer import TransformerConfig
from acestep_jax.text.lyrics.tokenizer import MAX_TOKENS as MAX_LYRIC_TOKENS
from acestep_jax.training.records import (
    PROMPT_PREFIX,
    PROMPT_WEIGHTS,
    SSL_PREFIX,
    WEIGHT,
    write_records,
)
from acestep_jax.training.ssl_features import INPUT_RATE, RECIPES

log = logging.getLogger("acestep_jax.training.preprocess")

AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg")
MAX_SECONDS = 240.0
MIN_SECONDS = 3.0
MAX_PROMPT_CHARS = 256
SILENCE_RATIO = 0.95
SPEAKER_DIM = TransformerConfig.speaker_embedding_dim  # the records' zero speaker embedding
SSL_NAMES = tuple(RECIPES)  # the REPA targets (the transformer's ssl_names)
MANIFEST = "preprocess.json"
MANIFEST_FORMAT = "acestep-jax-records"
# the reference drops lyrics that are really a generated prompt ("write a ... song that genre is ...")
_PROMPT_AS_LYRICS = re.compile(r"write a .* song that genre is")


class SongError(Exception):
    """A song that cannot be read (audio, text or feature file): reported and skipped."""


@dataclass(frozen=True)
class Item:
    """One song: its audio and where its texts come from — files (a song folder) or the row of a
    ``datasets`` folder (``tags``, ``recaptions``, ``lyrics``; ``weight``: its repeats there)."""

    key: str
    audio: Path
    prompt_file: Path | None
    lyrics_file: Path | None
    ssl: dict[str, Path]  # precomputed feature files by SSL name
    tags: tuple[str, ...] | None = None
    recaptions: tuple[str, ...] = ()
    lyrics: str | None = None
    weight: int = 1


@dataclass
class Song:
    """One decoded song: 48 kHz audio ``[2, N]`` (prepared), its prompt variants and their chances."""

    key: str
    audio: np.ndarray
    prompts: list[str]
    lyrics: str
    ssl: dict[str, np.ndarray]
    prompt_weights: list[float] = field(default_factory=lambda: [1.0])
    weight: int = 1

    @property
    def prompt(self) -> str:
        return self.prompts[0]


def prompt_variants(tags: Sequence[str], recaptions: Sequence[str], count: int, seed: int):
    """Up to ``count`` prompts and the chance of each, as the reference's recipe draws them: the
    tags joined (file order first, then shuffled orders) or one of the recaptions, each with
    equal chance, cut to :data:`MAX_PROMPT_CHARS`."""
    tags = [t for t in tags if t] or ["music"]
    captions = list(dict.fromkeys(r[:MAX_PROMPT_CHARS] for r in recaptions if r))[: max(count - 1, 0)]
    orders = [", ".join(tags)[:MAX_PROMPT_CHARS]]
    rng = np.random.default_rng(seed)
    for _ in range(20 * count):
        if len(orders) >= count - len(captions) or len(orders) == math.factorial(min(len(tags), 8)):
            break
        order = ", ".join(rng.permutation(tags))[:MAX_PROMPT_CHARS]
        if order not in orders:
            orders.append(order)
    share = 1.0 / (len(captions) + 1)  # the tags are one choice among the recaptions
    return orders + captions, [share / len(orders)] * len(orders) + [share] * len(captions)


def discover(folder: str | os.PathLike, ssl_names: Sequence[str] = SSL_NAMES) -> list[Item]:
    """Songs of ``folder`` that have a ``_prompt.txt`` (sorted by name; others are logged and skipped);
    two audio files of one name (``song.mp3``, ``song.wav``) are a :class:`UsageError`. A
    ``datasets`` folder gives its songs (see :func:`acestep_jax.training.hf_dataset.read_dataset`)."""
    from acestep_jax.training.hf_dataset import is_dataset, read_dataset

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder not found: {folder}")
    if is_dataset(folder):
        return [Item(song.key, song.audio, None, None, _npy_files(song.audio, ssl_names), song.tags,
                     song.recaptions, song.lyrics, song.weight) for song in read_dataset(folder)]
    audios = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
    by_stem: dict[str, list[str]] = {}
    for audio in audios:
        by_stem.setdefault(audio.stem, []).append(audio.name)
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:
        more = f" (and {len(clashes) - 1} more such names)" if len(clashes) > 1 else ""
        raise UsageError(f"{folder}: {' and '.join(clashes[0])} would share one _prompt.txt and one record{more}; "
                         "keep one of them or rename the others")
    items = []
    for audio in audios:
        prompt_file = audio.with_name(audio.stem + "_prompt.txt")
        if not prompt_file.is_file():
            log.warning("skipping %s: no %s", audio.name, prompt_file.name)
            continue
        lyrics_file = audio.with_name(audio.stem + "_lyrics.txt")
        items.append(Item(audio.stem, audio, prompt_file, lyrics_file if lyrics_file.is_file() else None,
                          _npy_files(audio, ssl_names)))
    if not items:
        raise FileNotFoundError(f"no audio with a matching _prompt.txt in {folder}")
    return items


def _npy_files(audio: Path, ssl_names: Sequence[str]) -> dict[str, Path]:
    """The precomputed feature files beside ``audio`` (``<stem>_<ssl name>.npy``) that exist."""
    files = {n: audio.with_name(f"{audio.stem}_{n}.npy") for n in ssl_names}
    return {n: p for n, p in files.items() if p.is_file()}


def prepare_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray | None:
    """Clip, pad to 3 s, ``None`` when (almost) all silence, else cut to 240 s (the reference's order)."""
    audio = np.clip(np.asarray(audio, np.float32)[:2], -1.0, 1.0)
    short = int(MIN_SECONDS * sample_rate) - audio.shape[-1]
    if short > 0:
        audio = np.pad(audio, ((0, 0), (0, short)))
    if np.mean(np.all(audio == 0, axis=0)) > SILENCE_RATIO:
        return None
    return audio[:, : int(MAX_SECONDS * sample_rate)]


def load_song(item: Item, npy_names: Sequence[str] = SSL_NAMES, prompt_variants_count: int = 1) -> Song | None:
    """Decode ``item`` (``None`` for silent audio); :class:`SongError` when a file cannot be read.

    Only the ``npy_names`` feature files are read (features computed here replace them);
    ``prompt_variants_count``: how many prompt variants to keep (see :func:`prompt_variants`).
    """
    from acestep_jax.codec import load_audio
    from acestep_jax.codec.resample import resample

    try:
        audio, sr = load_audio(item.audio)
    except (ValueError, OSError) as e:
        raise SongError(f"cannot decode: {e}") from None
    try:
        tags = item.tags
        if tags is None:
            tags = tuple(item.prompt_file.read_text(encoding="utf-8").strip().split(", "))
        lyrics = item.lyrics if item.lyrics is not None else (
            item.lyrics_file.read_text(encoding="utf-8").strip() if item.lyrics_file else "")
        ssl = {n: np.load(p, allow_pickle=False) for n, p in item.ssl.items() if n in npy_names}
    except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError
        raise SongError(f"cannot read the files of {item.key}: {e}") from None
    audio = prepare_audio(resample(audio, sr, INPUT_RATE), INPUT_RATE)
    if audio is None:
        return None
    seed = int(hashlib.sha1(item.key.encode()).hexdigest()[:8], 16)  # the same variants on every run
    prompts, chances = prompt_variants(tags, item.recaptions, prompt_variants_count, seed)
    return Song(item.key, audio, prompts, lyrics, ssl, chances, item.weight)


class Preprocessor:
    """Encodes songs with the codec, the UMT5 prompt encoder, the lyric tokenizer and the SSL extractors."""

    def __init__(self, codec, text_encoder, prompt_tokenizer, lyric_tokenizer, ssl: Mapping | None = None):
        self.codec, self.text_encoder = codec, text_encoder
        self.prompt_tokenizer, self.lyric_tokenizer = prompt_tokenizer, lyric_tokenizer
        self.ssl = dict(ssl or {})  # name → SSLFeatureExtractor

    @classmethod
    def from_checkpoint(cls, spec: str, lyrics_vocab: str | None = None, ssl: Mapping | None = None) -> Preprocessor:
        """From a converted checkpoint, a reference checkpoint folder or a Hub id."""
        from acestep_jax.convert.release import resolve_checkpoint
        from acestep_jax.pipeline import load_conditioning_models

        return cls(*load_conditioning_models(resolve_checkpoint(spec), lyrics_vocab=lyrics_vocab), ssl=ssl)

    @classmethod
    def tiny_random(cls, seed: int = 0, lyrics_vocab: str | None = None, ssl: Mapping | None = None) -> Preprocessor:
        """Random tiny codec and text encoder (``configs/tiny``) for smoke tests."""
        from acestep_jax.pipeline import LazyLyricTokenizer
        from acestep_jax.presets import random_models

        _, codec, text_encoder, prompt_tokenizer = random_models("tiny", seed)
        return cls(codec, text_encoder, prompt_tokenizer, LazyLyricTokenizer(lyrics_vocab), ssl=ssl)

    def lyric_ids(self, lyrics: str) -> np.ndarray:
        if not lyrics.strip() or _PROMPT_AS_LYRICS.search(lyrics):
            return np.zeros((1,), np.int32)
        return np.asarray(self.lyric_tokenizer.encode(lyrics)[:MAX_LYRIC_TOKENS], np.int32)

    def text_states(self, prompt: str) -> np.ndarray:
        import jax.numpy as jnp

        ids, mask = self.prompt_tokenizer([prompt[:MAX_PROMPT_CHARS]])
        states = self.text_encoder(jnp.asarray(ids), jnp.asarray(mask))
        return np.asarray(states[0, : int(mask.sum())], np.float32)

    def latents(self, audio: np.ndarray) -> np.ndarray:
        latents, lengths = self.codec.encode(audio[None], INPUT_RATE)
        return np.asarray(latents[0, ..., : int(lengths[0])], np.float32)

    def examples(self, songs: Sequence[Song]) -> Iterator[dict]:
        """One record per song; the SSL features of all ``songs`` are computed together first."""
        computed = {name: ex.songs([s.audio for s in songs]) for name, ex in self.ssl.items()}
        for i, song in enumerate(songs):
            ex = {
                "latents": self.latents(song.audio),
                "text_states": self.text_states(song.prompt or "music"),
                "lyric_ids": self.lyric_ids(song.lyrics),
                "speaker": np.zeros((SPEAKER_DIM,), np.float32),
                "key": song.key, "prompt": song.prompt, "lyrics": song.lyrics,
                WEIGHT: np.asarray(song.weight, np.int32),
            }
            if len(song.prompts) > 1:
                for j, prompt in enumerate(song.prompts[1:], 1):
                    ex[f"{PROMPT_PREFIX}{j}"] = self.text_states(prompt)
                ex[PROMPT_WEIGHTS] = np.asarray(song.prompt_weights, np.float32)
            features = {**song.ssl, **{name: feats[i] for name, feats in computed.items()}}
            for name, feats in features.items():
                ex[SSL_PREFIX + name] = np.asarray(feats, np.float32)
            yield ex


# ----------------------------------------------------------------------------- resumable output
@dataclass
class OutputFolder:
    """The records folder and its manifest: which songs each finished record file holds."""

    path: Path
    settings: dict
    parts: dict[str, list[str]] = field(default_factory=dict)
    silent: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | os.PathLike, settings: dict) -> OutputFolder:
        """Read an existing manifest (refusing one made with other settings); creates nothing."""
        path = Path(path)
        out = cls(path, dict(settings))
        if path.exists() and not path.is_dir():
            raise ValueError(f"output {path} exists and is not a folder")
        manifest = path / MANIFEST
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text())
                if data.get("format") != MANIFEST_FORMAT:
                    raise ValueError(f"format {data.get('format')!r}")
                out.parts, out.silent = dict(data["parts"]), list(data["silent"])
                saved = data["settings"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"output {path}: unreadable {MANIFEST} ({e})") from None
            changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            if changed:
                diff = ", ".join(f"{k} {saved.get(k)!r} → {settings.get(k)!r}" for k in changed)
                raise ValueError(f"output {path} holds records made with other settings ({diff}); "
                                 "use another output folder")
        elif path.is_dir() and any(path.glob("*.array_record")):
            raise ValueError(f"output {path} holds records without a {MANIFEST} (not made by this tool); "
                             "use another output folder")
        return out

    @property
    def done(self) -> set[str]:
        return {k for keys in self.parts.values() for k in keys} | set(self.silent)

    def remove_strays(self) -> None:
        """Delete record files and temporaries that no manifest entry accounts for (a killed run's)."""
        if not self.path.is_dir():
            return
        for f in self.path.iterdir():
            stray = f.suffix == ".array_record" and f.name not in self.parts
            if stray or f.name.startswith(".tmp-"):
                log.warning("removing %s (not listed in %s)", f, MANIFEST)
                f.unlink()

    def write_part(self, examples: list[dict]) -> Path:
        """Write one record file atomically, then record its songs in the manifest."""
        used = [int(n[5:10]) for n in self.parts if re.fullmatch(r"part-\d{5}\.array_record", n)]
        name = f"part-{max(used, default=-1) + 1:05d}.array_record"
        write_records(self.path / name, examples)
        self.parts[name] = sorted({ex["key"] for ex in examples})
        self.save()
        return self.path / name

    def save(self) -> None:
        if self.path.is_dir():
            write_json(self.path / MANIFEST, {"format": MANIFEST_FORMAT, "version": 1, "settings": self.settings,
                                              "parts": self.parts, "silent": self.silent})


@dataclass
class Summary:
    """What a run did."""

    output: Path
    written: list[str] = field(default_factory=list)  # songs written by this run
    examples: int = 0
    files: list[Path] = field(default_factory=list)
    already_done: int = 0
    silent: list[str] = field(default_factory=list)  # audio file names
    failed: dict[str, str] = field(default_factory=dict)  # audio file name → reason

    def __str__(self) -> str:
        head = f"wrote {len(self.written)} songs ({self.examples} examples) into {len(self.files)} record files"
        parts = [f"{head} in {self.output}"]
        if self.already_done:
            parts.append(f"{self.already_done} songs were already done")
        if self.silent:
            parts.append(f"skipped {len(self.silent)} silent: {', '.join(self.silent)}")
        if self.failed:
            parts.append(f"skipped {len(self.failed)} unreadable: {', '.join(self.failed)}")
        return "; ".join(parts)


def preprocess_folder(folder, output, pre: Preprocessor, *, shard_size: int = 256, repeat: int = 1,
                      songs_per_batch: int = 4, prompt_variants: int = 1, settings: dict | None = None,
                      items: Sequence[Item] | None = None) -> Summary:
    """Encode every song of ``folder`` not yet in ``output`` into ``output/part-NNNNN.array_record``.

    ``repeat`` writes each example that many times (the reference's ``repeat_count`` for tiny
    LoRA datasets). ``songs_per_batch`` songs are decoded and encoded together (their SSL
    chunks share calls). ``prompt_variants``: prompts kept per song (see :func:`prompt_variants`). ``settings`` (what the records depend on) are pinned in the manifest;
    ``items`` are the songs (default: :func:`discover`). Raises ``ValueError`` when no record
    exists after the run.
    """
    from tqdm import tqdm

    items = discover(folder) if items is None else list(items)
    out = OutputFolder.open(output, settings or {})
    out.remove_strays()
    done = out.done
    todo = [item for item in items if item.key not in done]
    summary = Summary(Path(output), already_done=len(items) - len(todo))
    pending: list[dict] = []

    def flush():
        nonlocal pending
        examples, pending = pending, []
        summary.files.append(out.write_part(examples))

    bar = tqdm(total=len(items), initial=summary.already_done, desc="preprocess", unit="song",
               disable=not log.isEnabledFor(logging.INFO))
    npy_names = [n for n in SSL_NAMES if n not in pre.ssl]
    try:
        for start in range(0, len(todo), songs_per_batch):
            songs = _decode(todo[start : start + songs_per_batch], npy_names, summary, out, bar, prompt_variants)
            for ex in pre.examples(songs):
                pending.extend([ex] * repeat)
                summary.written.append(ex["key"])
                summary.examples += repeat
                bar.update(1)
                if len(pending) >= shard_size:
                    flush()
    finally:
        bar.close()
        if pending:  # keep the songs finished before an interruption
            flush()
        out.save()
    if not out.parts:
        raise ValueError(f"no records written: every song in {folder} was silent or unreadable")
    return summary


def _decode(items: Sequence[Item], npy_names, summary: Summary, out: OutputFolder, bar,
            prompt_variants: int = 1) -> list[Song]:
    """The readable, non-silent songs of ``items``; the others are reported, counted and skipped."""
    songs = []
    for item in items:
        try:
            song = load_song(item, npy_names, prompt_variants)
        except SongError as e:
            log.warning("skipping %s: %s", item.audio.name, e)
            summary.failed[item.audio.name] = str(e)
            bar.update(1)
            continue
        if song is None:
            log.warning("skipping %s: silent", item.audio.name)
            summary.silent.append(item.audio.name)
            out.silent.append(item.key)
            bar.update(1)
            continue
        songs.append(song)
    return songs

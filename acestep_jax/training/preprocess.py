"""Turn a folder of songs into training records (``python -m acestep_jax.training.preprocess``).

Input layout (the reference's LoRA data folder)::

    data/song.mp3            audio (mp3, wav, flac, ogg)
    data/song_prompt.txt     comma-separated tags (required)
    data/song_lyrics.txt     lyrics (optional; none → the reference's "no lyrics" id [0])
    data/song_<ssl>.npy      optional precomputed SSL features [frames, dim] for REPA,
                             <ssl> one of the transformer's ssl_names (mert, m-hubert)

As the reference's dataset: audio is resampled to 48 kHz, clipped to [-1, 1], padded to
at least 3 s, skipped when more than 95 % of it is exact silence and cut to 240 s; the
latents are the codec's encoding of that 48 kHz audio; the speaker embedding is zero.
The prompt is encoded once with its tags in file order (the reference reshuffles tags
each time an example is drawn). With ``--mert`` / ``--mhubert`` the REPA targets are
computed here from the same audio, as the reference trainer does (see
:mod:`acestep_jax.training.ssl_features`); otherwise ``song_<ssl>.npy`` files are read.

Records go to ``<output>/part-NNNNN.array_record``; ``<output>/preprocess.json`` lists
the songs of every finished file, so a rerun resumes where a run stopped (an interrupted
run still writes the songs it finished). A song that cannot be decoded is reported by
name and skipped (and retried by the next run).

    python -m acestep_jax.training.preprocess data/ data/records --checkpoint ACE-Step/ACE-Step-v1-3.5B \\
        --mert m-a-p/MERT-v1-330M --mhubert utter-project/mHuBERT-147
    python -m acestep_jax.training.preprocess data/ /tmp/records --tiny-random
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from acestep_jax.files import write_json
from acestep_jax.models.transformer import TransformerConfig
from acestep_jax.text.lyrics.tokenizer import MAX_TOKENS as MAX_LYRIC_TOKENS
from acestep_jax.training.records import SSL_PREFIX, write_records
from acestep_jax.training.ssl_features import INPUT_RATE, RECIPES

log = logging.getLogger("acestep_jax.training.preprocess")

AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg")
SAMPLE_RATE = INPUT_RATE  # the reference dataset's rate: the codec and the SSL extractors read this audio
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
    """The files of one song."""

    key: str
    audio: Path
    prompt_file: Path
    lyrics_file: Path | None
    ssl: dict[str, Path]  # precomputed feature files by SSL name


@dataclass
class Song:
    """One decoded song: 48 kHz audio ``[2, N]`` (prepared) and its texts."""

    key: str
    audio: np.ndarray
    prompt: str
    lyrics: str
    ssl: dict[str, np.ndarray]


def discover(folder: str | os.PathLike, ssl_names: Sequence[str] = SSL_NAMES) -> list[Item]:
    """Songs of ``folder`` that have a ``_prompt.txt`` (sorted by name; others are logged and skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder not found: {folder}")
    items = []
    for audio in sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS):
        prompt_file = audio.with_name(audio.stem + "_prompt.txt")
        if not prompt_file.is_file():
            log.warning("skipping %s: no %s", audio.name, prompt_file.name)
            continue
        lyrics_file = audio.with_name(audio.stem + "_lyrics.txt")
        ssl = {n: audio.with_name(f"{audio.stem}_{n}.npy") for n in ssl_names}
        items.append(Item(audio.stem, audio, prompt_file, lyrics_file if lyrics_file.is_file() else None,
                          {n: p for n, p in ssl.items() if p.is_file()}))
    if not items:
        raise FileNotFoundError(f"no audio with a matching _prompt.txt in {folder}")
    return items


def prepare_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray | None:
    """Clip, pad to 3 s, ``None`` when (almost) all silence, else cut to 240 s (the reference's order)."""
    audio = np.clip(np.asarray(audio, np.float32)[:2], -1.0, 1.0)
    short = int(MIN_SECONDS * sample_rate) - audio.shape[-1]
    if short > 0:
        audio = np.pad(audio, ((0, 0), (0, short)))
    if np.mean(np.all(audio == 0, axis=0)) > SILENCE_RATIO:
        return None
    return audio[:, : int(MAX_SECONDS * sample_rate)]


def load_song(item: Item, npy_names: Sequence[str] = SSL_NAMES) -> Song | None:
    """Decode ``item`` (``None`` for silent audio); :class:`SongError` when a file cannot be read.

    Only the ``npy_names`` feature files are read (features computed here replace them).
    """
    from acestep_jax.codec import load_audio
    from acestep_jax.codec.resample import resample

    try:
        audio, sr = load_audio(item.audio)
    except (ValueError, OSError) as e:
        raise SongError(f"cannot decode: {e}") from None
    try:
        prompt = item.prompt_file.read_text(encoding="utf-8").strip()
        lyrics = item.lyrics_file.read_text(encoding="utf-8").strip() if item.lyrics_file else ""
        ssl = {n: np.load(p, allow_pickle=False) for n, p in item.ssl.items() if n in npy_names}
    except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError
        raise SongError(f"cannot read the files of {item.key}: {e}") from None
    audio = prepare_audio(resample(audio, sr, SAMPLE_RATE), SAMPLE_RATE)
    return None if audio is None else Song(item.key, audio, prompt, lyrics, ssl)


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
        latents, lengths = self.codec.encode(audio[None], SAMPLE_RATE)
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
            }
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
                      songs_per_batch: int = 4, settings: dict | None = None,
                      items: Sequence[Item] | None = None) -> Summary:
    """Encode every song of ``folder`` not yet in ``output`` into ``output/part-NNNNN.array_record``.

    ``repeat`` writes each example that many times (the reference's ``repeat_count`` for tiny
    LoRA datasets). ``songs_per_batch`` songs are decoded and encoded together (their SSL
    chunks share calls). ``settings`` (what the records depend on) are pinned in the manifest;
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
            songs = _decode(todo[start : start + songs_per_batch], npy_names, summary, out, bar)
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


def _decode(items: Sequence[Item], npy_names, summary: Summary, out: OutputFolder, bar) -> list[Song]:
    """The readable, non-silent songs of ``items``; the others are reported, counted and skipped."""
    songs = []
    for item in items:
        try:
            song = load_song(item, npy_names)
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


# ----------------------------------------------------------------------------- command line
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m acestep_jax.training.preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="folder of audio files with <name>_prompt.txt / <name>_lyrics.txt")
    p.add_argument("output", help="folder for the .array_record files (a rerun resumes it)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="converted checkpoint, reference checkpoint folder or Hub id")
    src.add_argument("--tiny-random", action="store_true", help="random tiny codec / text encoder (smoke tests)")
    p.add_argument("--mert", help="compute the 'mert' REPA targets with this MERT model (Hub id such as "
                   "m-a-p/MERT-v1-330M, model folder or converted folder)")
    p.add_argument("--mhubert", help="compute the 'm-hubert' REPA targets with this mHuBERT model (Hub id such as "
                   "utter-project/mHuBERT-147, model folder or converted folder)")
    p.add_argument("--ssl-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="SSL model dtype (auto: bfloat16 on accelerators, float32 on CPU)")
    p.add_argument("--ssl-chunk-batch", type=int, default=16, help="SSL chunks per compiled call")
    p.add_argument("--songs-per-batch", type=int, default=4, help="songs encoded together")
    p.add_argument("--lyrics-vocab", help="lyric BPE vocabulary (default: found beside the checkpoint or downloaded)")
    p.add_argument("--shard-size", type=int, default=256, help="examples per record file")
    p.add_argument("--repeat", type=int, default=1, help="write each example this many times")
    p.add_argument("--verbose", action="store_true", help="library logging (jax, orbax, absl) at INFO too")
    return p


def _check_model_spec(flag: str, spec: str, *, is_model_folder) -> str:
    """``spec`` as a pinned setting: an existing folder (absolute) or a Hub id; else ``ValueError``."""
    from acestep_jax.convert.release import looks_like_repo_id

    path = Path(spec)
    if path.exists():
        if not path.is_dir() or not is_model_folder(path):
            raise ValueError(f"{flag} {spec} is not a model folder")
        return str(path.resolve())
    if not looks_like_repo_id(spec):
        raise ValueError(f"{flag} {spec} does not exist (give a folder or a Hub id)")
    return spec


def check_arguments(args) -> tuple[list[Item], OutputFolder, dict[str, str]]:
    """Validate every argument and path before any model loads; ``ValueError`` names the culprit.

    Returns the songs, the output folder (nothing created) and the SSL model of each name.
    """
    from acestep_jax.convert import release, ssl

    for flag in ("shard_size", "repeat", "songs_per_batch", "ssl_chunk_batch"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    try:
        items = discover(args.input)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    if args.lyrics_vocab is not None and not Path(args.lyrics_vocab).is_file():
        raise ValueError(f"--lyrics-vocab {args.lyrics_vocab} does not exist")
    checkpoint = "tiny-random"
    if args.checkpoint is not None:
        checkpoint = _check_model_spec("--checkpoint", args.checkpoint,
                                       is_model_folder=lambda p: release.is_converted(p) or release.is_reference_layout(p))
    ssl_models = {}
    for flag, name in (("--mert", "mert"), ("--mhubert", "m-hubert")):
        spec = getattr(args, flag[2:])
        if spec is not None:
            ssl_models[name] = _check_model_spec(
                flag, spec, is_model_folder=lambda p: ssl.is_converted(p) or (p / "config.json").is_file())
    settings = {"checkpoint": checkpoint, "ssl_models": ssl_models, "repeat": args.repeat}
    out = OutputFolder.open(args.output, settings)
    return items, out, ssl_models


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("acestep_jax").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        for name in ("absl", "jax", "orbax", "orbax.checkpoint"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _ssl_dtype(choice: str) -> str:
    if choice != "auto":
        return choice
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        items, out, ssl_models = check_arguments(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    todo = [item for item in items if item.key not in out.done]
    if not todo:
        log.info("nothing to do: all %d songs are already in %s", len(items), args.output)
        return 0

    from acestep_jax.convert.core import CheckpointError
    from acestep_jax.training.ssl_features import load_extractor

    dtype = _ssl_dtype(args.ssl_dtype)
    try:
        ssl = {name: load_extractor(spec, name, dtype=dtype, chunk_batch=args.ssl_chunk_batch)
               for name, spec in ssl_models.items()}
        pre = (Preprocessor.tiny_random(lyrics_vocab=args.lyrics_vocab, ssl=ssl) if args.tiny_random
               else Preprocessor.from_checkpoint(args.checkpoint, args.lyrics_vocab, ssl=ssl))
        summary = preprocess_folder(args.input, args.output, pre, shard_size=args.shard_size, repeat=args.repeat,
                                    songs_per_batch=args.songs_per_batch, settings=out.settings, items=items)
    except (CheckpointError, OSError, ValueError) as e:  # bad checkpoints, downloads, no usable song
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; the finished songs are in {args.output} (rerun to go on)", file=sys.stderr)
        return 130
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

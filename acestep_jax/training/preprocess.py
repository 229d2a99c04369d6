"""Turn a folder of songs into training records (``python -m acestep_jax.training.preprocess``).

Input layout (the reference's LoRA data folder)::

    data/song.mp3            audio (mp3, wav, flac, ogg)
    data/song_prompt.txt     comma-separated tags (required)
    data/song_lyrics.txt     lyrics (optional; none → the reference's "no lyrics" id [0])
    data/song_<ssl>.npy      optional precomputed SSL features [frames, dim] for REPA,
                             <ssl> one of the transformer's ssl_names (mert, m-hubert)

As the reference's dataset: audio is clipped to [-1, 1], cut to 240 s, padded to at least
3 s, and skipped when more than 95 % of it is exact silence; the speaker embedding is zero.
The prompt is encoded once with its tags in file order (the reference reshuffles tags each
time an example is drawn). Records go to ``<output>/part-NNNNN.array_record``.

    python -m acestep_jax.training.preprocess data/ data/records --checkpoint ACE-Step/ACE-Step-v1-3.5B
    python -m acestep_jax.training.preprocess data/ /tmp/records --tiny-random
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acestep_jax.text.lyrics.tokenizer import MAX_TOKENS as MAX_LYRIC_TOKENS
from acestep_jax.training.records import SSL_PREFIX, write_records

log = logging.getLogger("acestep_jax.training.preprocess")

AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg")
MAX_SECONDS = 240.0
MIN_SECONDS = 3.0
MAX_PROMPT_CHARS = 256
SILENCE_RATIO = 0.95
SPEAKER_DIM = 512
# the reference drops lyrics that are really a generated prompt ("write a ... song that genre is ...")
_PROMPT_AS_LYRICS = re.compile(r"write a .* song that genre is")


@dataclass(frozen=True)
class Item:
    key: str
    audio: Path
    prompt: str
    lyrics: str
    ssl: dict[str, Path]


def discover(folder: str | os.PathLike, ssl_names=("mert", "m-hubert")) -> list[Item]:
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
        lyrics = lyrics_file.read_text(encoding="utf-8").strip() if lyrics_file.is_file() else ""
        ssl = {n: audio.with_name(f"{audio.stem}_{n}.npy") for n in ssl_names}
        items.append(Item(audio.stem, audio, prompt_file.read_text(encoding="utf-8").strip(), lyrics,
                          {n: p for n, p in ssl.items() if p.is_file()}))
    if not items:
        raise FileNotFoundError(f"no audio with a matching _prompt.txt in {folder}")
    return items


def prepare_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray | None:
    """Clip, cut to 240 s, pad to 3 s; ``None`` when the clip is (almost) all silence."""
    audio = np.clip(np.asarray(audio, np.float32)[:2], -1.0, 1.0)
    audio = audio[:, : int(MAX_SECONDS * sample_rate)]
    short = int(MIN_SECONDS * sample_rate) - audio.shape[-1]
    if short > 0:
        audio = np.pad(audio, ((0, 0), (0, short)))
    if np.mean(np.all(audio == 0, axis=0)) > SILENCE_RATIO:
        return None
    return audio


class Preprocessor:
    """Encodes songs with the codec, the UMT5 prompt encoder and the lyric tokenizer."""

    def __init__(self, codec, text_encoder, prompt_tokenizer, lyric_tokenizer):
        self.codec, self.text_encoder = codec, text_encoder
        self.prompt_tokenizer, self.lyric_tokenizer = prompt_tokenizer, lyric_tokenizer

    @classmethod
    def from_checkpoint(cls, spec: str, lyrics_vocab: str | None = None) -> Preprocessor:
        """From a converted checkpoint, a reference checkpoint folder or a Hub id."""
        from acestep_jax.convert.release import resolve_checkpoint
        from acestep_jax.pipeline import load_conditioning_models

        return cls(*load_conditioning_models(resolve_checkpoint(spec), lyrics_vocab=lyrics_vocab))

    @classmethod
    def tiny_random(cls, seed: int = 0, lyrics_vocab: str | None = None) -> Preprocessor:
        """Random tiny codec and text encoder (``configs/tiny``) for smoke tests."""
        from acestep_jax.pipeline import LazyLyricTokenizer
        from acestep_jax.presets import random_models

        _, codec, text_encoder, prompt_tokenizer = random_models("tiny", seed)
        return cls(codec, text_encoder, prompt_tokenizer, LazyLyricTokenizer(lyrics_vocab))

    def lyric_ids(self, lyrics: str) -> np.ndarray:
        if not lyrics.strip() or _PROMPT_AS_LYRICS.search(lyrics):
            return np.zeros((1,), np.int32)
        return np.asarray(self.lyric_tokenizer.encode(lyrics)[:MAX_LYRIC_TOKENS], np.int32)

    def text_states(self, prompt: str) -> np.ndarray:
        import jax.numpy as jnp

        ids, mask = self.prompt_tokenizer([prompt[:MAX_PROMPT_CHARS]])
        states = self.text_encoder(jnp.asarray(ids), jnp.asarray(mask))
        return np.asarray(states[0, : int(mask.sum())], np.float32)

    def latents(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        latents, lengths = self.codec.encode(audio[None], sample_rate)
        return np.asarray(latents[0, ..., : int(lengths[0])], np.float32)

    def example(self, key: str, audio: np.ndarray, sample_rate: int, prompt: str, lyrics: str,
                ssl: dict[str, np.ndarray] | None = None) -> dict | None:
        """One record (``None`` for silent audio)."""
        audio = prepare_audio(audio, sample_rate)
        if audio is None:
            return None
        ex = {
            "latents": self.latents(audio, sample_rate),
            "text_states": self.text_states(prompt or "music"),
            "lyric_ids": self.lyric_ids(lyrics),
            "speaker": np.zeros((SPEAKER_DIM,), np.float32),
            "key": key, "prompt": prompt, "lyrics": lyrics,
        }
        for name, feats in (ssl or {}).items():
            ex[SSL_PREFIX + name] = np.asarray(feats, np.float32)
        return ex


def _examples(items: list[Item], pre: Preprocessor) -> Iterator[dict]:
    from acestep_jax.codec import load_audio

    for item in items:
        audio, sr = load_audio(item.audio)
        ssl = {n: np.load(p) for n, p in item.ssl.items()}
        ex = pre.example(item.key, audio, sr, item.prompt, item.lyrics, ssl)
        if ex is None:
            log.warning("skipping %s: silent", item.audio.name)
            continue
        yield ex


def preprocess_folder(folder, output, pre: Preprocessor, *, shard_size: int = 256, repeat: int = 1) -> list[str]:
    """Encode every song of ``folder`` into ``output/part-NNNNN.array_record`` files; returns their paths.

    ``repeat`` writes each example that many times (the reference's ``repeat_count`` for tiny
    LoRA datasets).
    """
    items = discover(folder)
    os.makedirs(output, exist_ok=True)
    paths, pending, part = [], [], 0

    def flush():
        nonlocal part, pending
        path = os.path.join(output, f"part-{part:05d}.array_record")
        write_records(path, pending)
        paths.append(path)
        part, pending = part + 1, []

    from tqdm import tqdm

    for ex in tqdm(_examples(items, pre), total=len(items), desc="preprocess", disable=not log.isEnabledFor(20)):
        pending.extend([ex] * repeat)
        if len(pending) >= shard_size:
            flush()
    if pending:
        flush()
    if not paths:
        raise ValueError(f"every song in {folder} was skipped (silent)")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m acestep_jax.training.preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="folder of audio files with <name>_prompt.txt / <name>_lyrics.txt")
    p.add_argument("output", help="folder for the .array_record files")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="converted checkpoint, reference checkpoint folder or Hub id")
    src.add_argument("--tiny-random", action="store_true", help="random tiny codec / text encoder (smoke tests)")
    p.add_argument("--lyrics-vocab", help="lyric BPE vocabulary (default: found beside the checkpoint or downloaded)")
    p.add_argument("--shard-size", type=int, default=256, help="examples per record file")
    p.add_argument("--repeat", type=int, default=1, help="write each example this many times")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    if args.tiny_random:
        pre = Preprocessor.tiny_random(lyrics_vocab=args.lyrics_vocab)
    else:
        pre = Preprocessor.from_checkpoint(args.checkpoint, args.lyrics_vocab)
    paths = preprocess_folder(args.input, args.output, pre, shard_size=args.shard_size, repeat=args.repeat)
    log.info("wrote %d record files to %s", len(paths), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lyrics → token ids exactly as the reference sampling pipeline builds them."""

from __future__ import annotations

import logging
import os
import re

import numpy as np
from tokenizers import Tokenizer

from acestep_jax.errors import UsageError

from ._deps import MissingLyricsExtra, require_all
from .language import detect_language
from .normalize import normalize_line

logger = logging.getLogger(__name__)

START_ID = 261
LINE_END_ID = 2
# Lyrics that tokenize to nothing are fed to the model as this single, masked-out id.
EMPTY_IDS = (0,)
# Longest lyrics accepted, in tokens: the reference trained on at most this many (its data
# loader cuts longer ones), so training preprocessing cuts to it and sampling refuses more
# (:func:`check_length`). English lyrics take about 0.6 tokens per character (4096 tokens ≈
# 6,800 characters), Chinese about 1.5 (≈ 2,800 characters); a 4-minute song's lyrics are
# typically well under half of that.
MAX_TOKENS = 4096

_STRUCTURE_RE = re.compile(r"\[.*?\]")


class LyricTokenizer:
    """Multilingual lyric tokenizer with the reference's exact ids.

    ``encode`` splits the lyrics at ``"\\n"`` and emits the start id 261, then per line:
    a blank line gives the line-end id 2 alone; any other (stripped) line gives the BPE
    ids of ``"[<lang>]" + normalised text`` (spaces as ``[SPACE]``) followed by 2. The
    language is detected per line (see :func:`.language.detect_language`); lines that
    start with a ``[...]`` structure tag such as ``[verse]`` are tokenized as English.
    A line whose normalisation fails is dropped, as in the reference. Empty lyrics give
    ``[]`` (the pipeline then feeds ``[0]`` with mask ``[0]``, see :meth:`model_inputs`);
    long lyrics are never truncated here (sampling refuses more than :data:`MAX_TOKENS`).
    """

    def __init__(self, vocab_path: str | os.PathLike):
        if not os.path.isfile(vocab_path):
            raise FileNotFoundError(
                f"vocab_path: lyric vocabulary {str(vocab_path)!r} does not exist"
            )
        require_all()
        self.bpe = read_vocab(vocab_path)

    def encode_line(self, line: str, lang: str) -> list[int]:
        """BPE ids (language tag first) of one lyric line already assigned language ``lang``."""
        text = normalize_line(line, lang)
        tag = "zh-cn" if lang == "zh" else lang
        return self.bpe.encode(f"[{tag}]{text}".replace(" ", "[SPACE]")).ids

    def encode(self, lyrics: str, limit: int | None = None) -> list[int]:
        """Token ids of ``lyrics`` (see the class docstring); ``""`` gives ``[]``. ``limit``: stop at
        the first line that takes the count past it (enough to refuse over-long lyrics cheaply)."""
        if len(lyrics) == 0:
            return []
        ids = [START_ID]
        for line in lyrics.split("\n"):
            if limit is not None and len(ids) > limit:
                break
            line = line.strip()
            if not line:
                ids.append(LINE_END_ID)
                continue
            lang = "en" if _STRUCTURE_RE.match(line) else detect_language(line)
            try:
                ids += self.encode_line(line, lang) + [LINE_END_ID]
            except MissingLyricsExtra:
                raise
            except Exception as err:  # noqa: BLE001 - the reference skips a line it cannot tokenize
                logger.warning("skipping lyric line %r (language %s): %s", line, lang, err)
        return ids

    def model_inputs(
        self, lyrics: str, max_length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask) as int32 arrays the transformer takes: ``[0]``/``[0]`` for empty lyrics,
        else the ids with an all-ones mask, cut to ``max_length`` when given."""
        ids = self.encode(lyrics)
        if max_length is not None:
            if max_length < 1:
                raise ValueError(f"max_length must be >= 1, got {max_length}")
            ids = ids[:max_length]
        if not ids:
            return np.asarray(EMPTY_IDS, np.int32), np.zeros(len(EMPTY_IDS), np.int32)
        return np.asarray(ids, np.int32), np.ones(len(ids), np.int32)


def check_length(num_tokens: int, what: str = "lyrics", characters: int | None = None, *,
                 counted_to_limit: bool = False) -> None:
    """Raise :class:`~acestep_jax.errors.UsageError` naming ``what`` when ``num_tokens`` exceeds
    :data:`MAX_TOKENS` (``counted_to_limit``: counting stopped there, see ``encode(limit=)``)."""
    from acestep_jax.errors import UsageError

    if num_tokens > MAX_TOKENS:
        chars = "" if characters is None else f" ({characters} characters)"
        size = f"more than {MAX_TOKENS}" if counted_to_limit else str(num_tokens)
        raise UsageError(
            f"{what} are {size} tokens long{chars}; the limit is {MAX_TOKENS} tokens, the longest "
            "lyrics the model was trained on (about 6,800 characters of English, 2,800 of Chinese)"
        )


def read_vocab(path: str | os.PathLike) -> Tokenizer:
    """The BPE vocabulary file ``path``; one that does not parse is a :class:`UsageError` naming it."""
    try:
        return Tokenizer.from_file(os.fspath(path))
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception
        raise UsageError(f"lyric vocabulary {path} is not a tokenizer vocabulary ({e}); give the checkpoint's "
                         "vocab.json (--lyrics-vocab)") from None


def check_lyrics(
    lyrics: str,
    vocab: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    what: str = "lyrics",
) -> int:
    """Tokenize ``lyrics`` and :func:`check_length` them; returns the token count.

    Only the vocabulary is loaded (found as :func:`.vocab.find_lyrics_vocab` does), so a
    command line can refuse over-long lyrics before any model loads.
    """
    from .vocab import find_lyrics_vocab

    if not lyrics:
        return 0
    n = len(LyricTokenizer(find_lyrics_vocab(vocab, checkpoint_dir=checkpoint_dir)).encode(lyrics, MAX_TOKENS))
    check_length(n, what, len(lyrics), counted_to_limit=True)
    return n

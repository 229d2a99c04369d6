"""Multilingual lyric tokenizer giving the reference pipeline's exact token ids.

The language packages it needs (py3langid, pypinyin, num2words, hangul-romanize, cutlet
with a MeCab dictionary) are the optional extra ``acestep-jax[lyrics]``.
"""

from .language import LANGUAGE_TAG_IDS, detect_language
from .tokenizer import LINE_END_ID, MAX_TOKENS, START_ID, LyricTokenizer, check_length, check_lyrics
from .vocab import find_lyrics_vocab

__all__ = [
    "LANGUAGE_TAG_IDS",
    "LINE_END_ID",
    "MAX_TOKENS",
    "START_ID",
    "LyricTokenizer",
    "check_length",
    "check_lyrics",
    "detect_language",
    "find_lyrics_vocab",
]

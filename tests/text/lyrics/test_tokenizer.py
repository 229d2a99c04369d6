"""Lyric tokenizer: exact reference token ids, empty and long lyrics, missing-extra message."""

import json
import re

import numpy as np
import pytest

from acestep_jax.text.lyrics import LyricTokenizer, _deps, detect_language, language, normalize
from acestep_jax.text.lyrics._deps import INSTALL_HINT, MissingLyricsExtra, require
from acestep_jax.text.lyrics.tokenizer import MAX_TOKENS, check_length, check_lyrics
from tests.helpers import golden_root, require_cases

# Further lines with the ids the reference pipeline gives them (Chinese dates, money, phone
# numbers, markup, currencies, ordinals, abbreviations, punctuation-only lines, CRLF).
REFERENCE_CASES = [
    (
        "我有3个苹果，花了100元，电话13812345678",
        [261, 5023, 4893, 38, 4632, 150, 4574, 4585, 29, 52, 4497, 20, 4656, 7, 4862, 4679,
         4620, 15, 4658, 2124, 14, 4596, 7, 1447, 4604, 4654, 4586, 150, 4574, 4686, 4586, 4725,
         150, 4574, 4728, 2497, 4498, 4903, 4703, 4686, 2],
    ),
    (
        "2024年5月3日 50% 1/2",
        [261, 5023, 4725, 25, 52, 4497, 4725, 4728, 27, 1164, 4596, 2497, 4498, 4794, 150, 4574,
         4760, 2, 15, 4658, 132, 4574, 4637, 2497, 4498, 4598, 2, 4725, 132, 4574, 4947, 2],
    ),
    (
        "<number>2024</number>年的<date>2024/8/24 10:30</date>",
        [261, 5023, 7, 890, 1142, 44, 7, 4725, 25, 52, 4497, 4725, 4728, 7, 7, 890, 1142, 44, 7,
         27, 1164, 4596, 17, 4650, 7, 17, 186, 7, 4686, 132, 4574, 4637, 25, 1164, 4561, 30,
         1164, 4574, 25, 52, 4497, 4725, 4598, 4728, 7, 4725, 4598, 4728, 2, 4598, 7, 150, 4574,
         4598, 7, 7, 17, 186, 7, 2],
    ),
    (
        "Call <telephone>+8613812345678</telephone> now",
        [261, 5023, 183, 84, 2, 7, 3331, 860, 28, 111, 7, 4686, 4903, 4586, 150, 4574, 4686,
         4586, 4725, 150, 4574, 4728, 2497, 4498, 4903, 4703, 4686, 7, 7, 3331, 860, 28, 111, 7,
         2, 145, 2],
    ),
    (
        "That's $1,234.56 and 20€, the 3rd time",
        [261, 259, 73, 4, 32, 2, 28, 111, 2, 40, 206, 53, 7, 2, 232, 28, 2, 2870, 481, 49, 2,
         53, 2, 40, 98, 210, 8, 182, 121, 2, 134, 84, 59, 32, 7, 2, 19, 140, 210, 8, 32, 1776,
         2, 1217, 192, 2, 53, 2, 232, 50, 210, 2, 806, 28, 7, 2, 42, 2, 40, 98, 17, 2, 78, 80,
         2],
    ),
    (
        "Il y avait 50 soldats, 1er test, 12,5 %",
        [261, 262, 151, 2, 38, 2, 756, 14, 60, 2, 1460, 1583, 533, 2, 123, 79, 14, 192, 7, 2,
         644, 18, 2363, 31, 2, 136, 63, 7, 2, 134, 1971, 18, 2, 35, 98, 828, 64, 2, 1460, 30, 2,
         770, 2, 1217, 33, 2],
    ),
    (
        "Dr. Smith & Mr. Jones @ 10°",
        [261, 284, 17, 1024, 1176, 2, 3139, 22, 40, 2, 38, 2, 26, 31, 9, 2, 1108, 1032, 2, 59,
         31, 493, 14, 2, 321, 39, 2, 198, 14, 1140, 2],
    ),
    (
        "3번째 사랑 50%",
        [261, 6152, 66, 2, 67, 47, 8, 6126, 2, 150, 731, 2, 439, 5938, 2, 124, 439, 18, 533, 34,
         2],
    ),
    (
        "Там было 50 солдат, г-н Иванов",
        [261, 267, 3450, 3386, 2, 3682, 2, 3758, 3439, 3504, 3438, 3392, 2, 3444, 3385, 3434,
         3392, 7, 2, 3417, 3391, 3493, 3487, 2, 3382, 3421, 3615, 2],
    ),
    (
        "「東京」へ行こう！Let's go",
        [261, 5412, 307, 51, 3059, 28, 307, 2, 18, 2, 22, 3085, 3, 1046, 4, 32, 2, 119, 2],
    ),
    (
        "iPhone 15 Pro Max和三款Apple Watch",
        [261, 284, 22, 860, 28, 111, 2, 767, 3263, 2, 187, 2, 485, 37, 1, 1, 1, 155, 178, 18, 2,
         2785, 71, 2],
    ),
    (
        "!!!",
        [261, 5023, 7, 7, 7, 2],
    ),
    (
        "<ja>佐々木</ja>さん、こんにちは",
        [261, 5412, 1, 399, 1, 2, 150, 2300, 22, 1, 10, 399, 1, 1260, 7, 2, 475, 27, 91, 21,
         2175, 14, 2],
    ),
    (
        "Ça va? \"Oui\" — très bien",
        [261, 262, 869, 2, 917, 13, 2, 1109, 2, 3997, 2, 995, 2, 2366, 27, 2],
    ),
    (
        "Bu 1. test, İstanbul",
        [261, 295, 1195, 2, 1954, 41, 779, 2, 136, 63, 7, 2, 345, 43, 2046, 2],
    ),
    (
        "12,5 másodperc alatt, Ez az 1. teszt",
        [261, 5753, 78, 517, 5435, 453, 33, 5413, 2, 18, 915, 2339, 2, 5572, 2, 78, 517, 17, 2,
         3067, 32, 207, 124, 31, 16, 2, 5737, 7, 2, 933, 2, 1349, 2, 249, 5672, 2, 136, 5446,
         2],
    ),
    (
        "[verse] 你好 world\n\n\n  [chorus]  \r\nनमस्ते",
        [261, 259, 6683, 2, 1, 1, 2, 179, 79, 2, 2, 2, 259, 6684, 2, 6680, 6196, 6202, 6274,
         6283, 2],
    ),
]


@pytest.fixture(scope="module")
def tok(lyrics_vocab_path):
    return LyricTokenizer(lyrics_vocab_path)


def _golden_cases():
    path = golden_root() / "lyrics" / "cases.json"
    if not path.is_file():
        raise RuntimeError(f"golden lyric cases not found at {path}")
    return require_cases(json.loads(path.read_text(encoding="utf-8")), f"lyric cases ({path})")


@pytest.mark.parametrize("case", [pytest.param(c, id=f"case{i}")
                                  for i, c in enumerate(_golden_cases())])
def test_golden_cases(tok, case):
    assert tok.encode(case["lyrics"]) == case["token_ids"], case["lyrics"]


@pytest.mark.parametrize("lyrics,expected", REFERENCE_CASES)
def test_reference_cases(tok, lyrics, expected):
    assert tok.encode(lyrics) == expected


def test_empty_lyrics(tok):
    assert tok.encode("") == []
    ids, mask = tok.model_inputs("")
    np.testing.assert_array_equal(ids, [0])
    np.testing.assert_array_equal(mask, [0])
    assert ids.dtype == np.int32 and mask.dtype == np.int32


def test_blank_lines_only(tok):
    # non-empty lyrics always start with 261; each blank line is a lone line end
    assert tok.encode(" ") == [261, 2]
    assert tok.encode("\n\n") == [261, 2, 2, 2]


def test_structure_tag_lines_are_english(tok):
    line = "[verse] 你好世界"
    assert tok.encode(line) == [261] + tok.encode_line(line, "en") + [2]
    assert tok.encode("[outro]") == [261, 259, 6686, 2]


def test_long_lyrics_are_not_truncated(tok):
    lyrics = "\n".join(["[verse]"] * 1500)
    ids = tok.encode(lyrics)
    assert len(ids) == 1 + 3 * 1500 > MAX_TOKENS
    assert ids == [261] + [259, 6683, 2] * 1500
    full, mask = tok.model_inputs(lyrics)
    assert full.shape == mask.shape == (len(ids),) and mask.all()
    cut, cut_mask = tok.model_inputs(lyrics, max_length=MAX_TOKENS)
    assert cut.shape == cut_mask.shape == (MAX_TOKENS,)
    np.testing.assert_array_equal(cut, ids[:MAX_TOKENS])
    with pytest.raises(ValueError, match="max_length"):
        tok.model_inputs(lyrics, max_length=0)


@pytest.mark.parametrize(
    "line,lang",
    [("你好世界", "zh"), ("Привет, мир", "ru"), ("안녕하세요 여러분", "ko"), ("東京タワーの下で", "ja"),
     ("Hello world", "en"), ("Guten Morgen, schöne Welt", "de"), ("...", "zh"), ("ສະບາຍດີ", "en")],
)
def test_detect_language(line, lang):
    assert detect_language(line) == lang


def test_missing_vocab_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab_path"):
        LyricTokenizer(tmp_path / "nope.json")


def test_missing_extra_message():
    with pytest.raises(ImportError, match=re.escape(INSTALL_HINT)):
        require("acestep_jax_no_such_language_package")


def test_missing_extra_is_never_swallowed(monkeypatch, lyrics_vocab_path):
    def missing(*args, **kwargs):
        raise MissingLyricsExtra("missing")

    monkeypatch.setattr(_deps, "LYRICS_MODULES", ("acestep_jax_no_such_language_package",))
    with pytest.raises(MissingLyricsExtra, match=re.escape(INSTALL_HINT)):
        LyricTokenizer(lyrics_vocab_path)
    monkeypatch.setattr(language, "_identifier", missing)
    with pytest.raises(MissingLyricsExtra):
        detect_language("hello")
    monkeypatch.setattr(normalize, "require", missing)
    with pytest.raises(MissingLyricsExtra):
        normalize.normalize_line("route 66", "en")


def test_length_limit(lyrics_vocab_path):
    check_length(MAX_TOKENS)
    with pytest.raises(ValueError, match=r"--lyrics are 4097 tokens long \(9000 characters\); the limit is 4096"):
        check_length(MAX_TOKENS + 1, "--lyrics", 9000)
    assert check_lyrics("") == 0
    assert check_lyrics("[verse]\nla la", lyrics_vocab_path) > 0
    with pytest.raises(ValueError, match="are more than 4096 tokens long"):  # counting stops at the limit
        check_lyrics("\n".join(["[verse]"] * 1500), lyrics_vocab_path)
    tok = LyricTokenizer(lyrics_vocab_path)
    long = "\n".join(["[verse]"] * 1500)
    assert len(tok.encode(long)) == 4501 and 4096 < len(tok.encode(long, MAX_TOKENS)) <= 4096 + 3

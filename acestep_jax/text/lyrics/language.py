"""Per-line language detection, matching the reference pipeline's choice of language.

The reference runs a LangSegment-style segmenter (py3langid scores plus script and
punctuation heuristics) over each lyric line, tallies characters per language (a
Chinese character counts twice) and takes the language with the largest tally,
preferring the runner-up when the winner is English. Unsupported results fall back
to English. Every quirk of that segmenter that changes the tally is kept, because the
tally picks the BPE language tag and the text normaliser, and so the token ids.

The segmenter works on placeholder strings: runs of one script (Korean, Thai, Cyrillic,
Latin), digit groups, quotes and ``<tag>..</tag>`` markup are cut out of the line and
replaced by ``⑥<tag><index>⑥`` keys, and the remaining text between keys is split at
punctuation and scored by py3langid.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from functools import lru_cache

from ._deps import MissingLyricsExtra, require
from .markup import READERS

# Language code → id of its BPE language tag (the languages the model was trained on).
LANGUAGE_TAG_IDS = {
    "en": 259, "de": 260, "fr": 262, "es": 284, "it": 285, "pt": 286, "pl": 294,
    "tr": 295, "ru": 267, "cs": 293, "nl": 297, "ar": 5022, "zh": 5023, "ja": 5412,
    "hu": 5753, "ko": 6152, "hi": 6680,
}

# Languages the pipeline keeps while segmenting (the 97 py3langid languages, in this order).
KEPT_LANGUAGES = (  # noqa: SIM905
    "af am an ar as az be bg bn br bs ca cs cy da de dz el en eo es et eu fa fi fo fr ga gl gu "
    "he hi hr ht hu hy id is it ja jv ka kk km kn ko ku ky la lb lo lt lv mg mk ml mn mr ms mt "
    "nb ne nl nn no oc or pa pl ps pt qu ro ru rw se si sk sl sq sr sv sw ta te th tl tr ug uk "
    "ur vi vo wa xh zh zu"
).split()
_KEPT_JOINED = "-".join(KEPT_LANGUAGES)

# Confidence below which a short Han-only run is given to whichever of ja/zh comes first above.
_HAN_PRIORITY_THRESHOLD = 0.89

_KEY_RE = re.compile(r"(⑥\$*\d+[\d]{6,}⑥)")
_NUMBER_KEY_RE = re.compile(r"(⑥\d{6,}⑥)")
_PUNCT_RUN_RE = re.compile(r"([^\w\s]+)")
_SENTENCE_RE = re.compile(r"(.*?[。.?？!！]+[\n]{,1})")
_KANA_RE = re.compile(r"[\u3040-\u309F\u30A0-\u30FF]+")

# Extra Latin letters (French and Vietnamese) that count as part of a Latin-script run.
_LATIN_EXTRA = (
    "àáâãäåæçèéêëìíîïðñòóôõöùúûüýþÿ"
    "đơưăáàảãạắằẳẵặấầẩẫậéèẻẽẹếềểễệíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựôâêơưỷỹ"
)


def _script_run(chars: str) -> re.Pattern:
    """Runs of ``chars`` letters with optional opening quotes and trailing non-word characters."""
    return re.compile(rf'(([【《（(“‘"\']*[{chars}]+[\W\s]*)+)')


@lru_cache(maxsize=1)
def _identifier():
    langid = require("py3langid.langid")
    return langid.LanguageIdentifier.from_pickled_model(langid.MODEL_FILE, norm_probs=True)


def _classify(text: str) -> tuple[str, float]:
    language, score = _identifier().classify(text)
    return language, round(float(score), 3)


def _squeeze(text: str) -> str:
    """Non-word runs become one space and repeated characters collapse, as fed to py3langid."""
    text = re.sub(r"(.*?)([^\w]+)", r"\1 ", text)
    return re.sub(r"(.)\1+", r"\1", text).strip()


def _strip_for_number_check(text: str) -> tuple[str, bool]:
    """(text without punctuation or newlines, whether that holds nothing but digits)."""
    if text == "\n":
        return text, False
    bare = re.sub(r"([^\w\s]+)", "", re.sub(r"\n+", "", text)).strip()
    return bare, len(re.sub(r"(\d+)", "", bare)) == 0


def _has_han(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in text)


class _Segmentation:
    """State of one segmentation pass over a single line."""

    def __init__(self):
        self.words: list[dict] = []
        self.waiting: list[dict] = []
        self.counts: defaultdict | None = None
        self.keys: dict[str, tuple] = {}
        self.at_end = False
        self.handlers = [
            ("$1", re.compile(r"(<([a-zA-Z|-]*)>(.*?)<\/*[a-zA-Z|-]*>)"), self._markup),
            ("$6", _script_run("\uac00-\ud7a3"), self._fixed("ko")),
            ("$8", _script_run("\u0e00-\u0e7f"), self._fixed("th")),
            ("$7", _script_run("А-Яа-яЁё"), self._fixed("ru")),
            ("00", re.compile(r"(\W*\d+\W+\d*\W*\d*)"), self._number),
            ("$5", _script_run("a-zA-Z" + _LATIN_EXTRA), self._latin),
            ("$3", re.compile(r'(["\'])(.*?)(\1)'), self._quoted),
            ("$4", re.compile(r"([\n]*[【《（(“‘])([^【《（(“‘’”)）》】]{3,})([’”)）》】][\W\s]*[\n]{,1})"),
             self._quoted),
        ]

    # -- tallying and storing ------------------------------------------------------------
    def _tally(self, language: str, text: str) -> None:
        if self.counts is None:
            self.counts = defaultdict(int)
        if "|" not in language:
            self.counts[language] += len(text) * 2 if language == "zh" else len(text)

    def _store(self, language: str, text: str, markup=None) -> dict:
        bare, is_number = _strip_for_number_check(text)
        last = self.words[-1] if self.words else None
        if markup is None and last is not None and last["markup"] is None:
            if len(bare) == 0 or is_number:
                language = last["lang"]
            _, last_is_number = _strip_for_number_check(last["text"])
            if last["lang"] == language:
                self._tally(last["lang"], text)
                last["text"] = last["text"] + text
                return last
            if last_is_number:
                text = last["text"] + text
                self.words.pop()
        # (a bare number with no usable predecessor keeps its language: the first kept
        # language, "af", is not one of the preferred ones)
        entry = {"lang": language, "text": text, "markup": markup}
        if "?" in language or language in KEPT_LANGUAGES or language in KEPT_LANGUAGES[0]:
            self.words.append(entry)
            self._tally(entry["lang"], entry["text"])
        return entry

    def _add(self, language, text: str, markup=None) -> None:
        if text != "\n" and (text is None or len(text.strip()) == 0):
            return
        language = (language or "").lower()
        if language == "en":
            text = re.sub(r"(?<!\b)([A-Z])", r" \1", text).strip("-") + " "
        had_waiting = len(self.waiting) > 0
        previous = self.waiting.pop() if had_waiting else None
        if previous is None:
            previous = self.words[-1] if self.words else None
        if previous and "|" in previous["lang"]:
            if language in previous["lang"]:
                previous["lang"] = language = language.split("|")[0]
            else:
                previous["lang"] = previous["lang"].split("|")[0]
            if had_waiting:
                previous = self._store(previous["lang"], previous["text"], previous["markup"])
        previous_lang = previous["lang"] if previous else None
        if ("|" in language and previous_lang and previous_lang not in language
                and "…" not in language):
            language = language.split("|")[0]
        if "|" in language:
            self.waiting.append({"lang": language, "text": text, "markup": markup})
        else:
            self._store(language, text, markup)

    # -- handlers for cut-out pieces -------------------------------------------------------
    def _fixed(self, language: str):
        def handle(match):
            self._add(language, match[0])
        return handle

    def _markup(self, match) -> None:
        tag, content = match[1], match[2]
        if tag in _KEPT_JOINED:
            self._add(tag, content, True)
            return
        language = tag
        if tag in READERS:
            language, content = "zh", READERS[tag](content)
        self._add(language, content, tag)

    def _number(self, match) -> None:
        language = self.words[0]["lang"] if self.words else "zh"
        self._add(language, match)

    def _latin(self, match) -> None:
        for piece in _SENTENCE_RE.split(match[0]):
            if len(piece.strip()) == 0:
                continue
            squeezed = _squeeze(piece)
            language, score = _classify(squeezed)
            if language not in _KEPT_JOINED:
                language, score = self._majority(squeezed)
            if language is None or score <= 0.0:
                continue
            if language in _KEPT_JOINED:
                pass
            elif score >= 0.95:
                continue
            else:
                language = "en"
            self._add(language, piece)

    @staticmethod
    def _majority(text: str):
        """Most frequent py3langid language over the camel-case-split words longer than 3."""
        if text is None or text.strip() == "":
            return None, 0.0
        words = re.sub(r"(?<!^)(?=[A-Z])", " ", text).split(" ")
        found = [_classify(w)[0] for w in words if len(w.strip()) > 3]
        if not found:
            return None, 0.0
        return Counter(found).most_common(1)[0][0], 1.0

    def _quoted(self, match) -> None:
        text = "".join(match)
        if _KEY_RE.findall(text):
            self._walk(text, root=False)
        elif len(_squeeze(match[1])) <= 5:
            self._score_plain(text)
        else:
            self._add(_classify(_squeeze(match[1]))[0], text)

    # -- plain text between keys ------------------------------------------------------------
    def _restore_number(self, found: re.Match) -> str:
        key = found.group(0)
        if key in self.keys:
            return self.keys[key][1][1]
        return key

    def _score_plain(self, segment: str) -> None:
        pieces = _PUNCT_RUN_RE.split(segment)
        last = len(pieces) - 1
        for index, text in enumerate(pieces):
            if len(text) == 0:
                continue
            at_end = index >= last
            following = pieces[index + 1] if not at_end else ""
            following_punct = len(_PUNCT_RUN_RE.sub("", re.sub(r"\n+", "", following)).strip()) == 0
            text_punct = len(_PUNCT_RUN_RE.sub("", re.sub(r"\n+", "", text)).strip()) == 0
            if not at_end and (text_punct or following_punct):
                pieces[index + 1] = text + following
                continue
            squeezed = _squeeze(re.sub(r"\d+", "", _NUMBER_KEY_RE.sub("", text)))
            if not at_end and len(squeezed) <= 2:
                pieces[index + 1] = text + following
                continue
            language, score = _classify(squeezed)
            previous_lang = self.words[-1]["lang"] if self.words else None
            han_only = all("\u4e00" <= c <= "\u9fff" for c in re.sub(r"\s", "", squeezed))
            if language != "zh" and han_only:
                language, score = "zh", 1
            if len(squeezed) <= 5 and _has_han(squeezed):
                language = self._short_han(language, score, squeezed, text, at_end, previous_lang)
            text, _ = _NUMBER_KEY_RE.subn(self._restore_number, text)
            self._add(language, text)

    def _short_han(self, language, score, squeezed, text, at_end, previous_lang) -> str:
        """Resolve a short run holding Han characters between Chinese and Japanese."""
        if score < _HAN_PRIORITY_THRESHOLD:
            ja, zh = _KEPT_JOINED.find("ja"), _KEPT_JOINED.find("zh")
            if ja != -1 and ja < zh:
                language = "ja"
            elif zh != -1 and zh < ja:
                language = "zh"
        if _KANA_RE.findall(squeezed):
            return "ja"
        if len(squeezed) > 2 and score > 0.90:
            return language
        if at_end and self.at_end:
            return "zh" if len(squeezed) <= 1 else language
        zh_first = language == "zh" or (len(squeezed) <= 2 and previous_lang == "zh")
        unknown = "zh|ja" if zh_first else "ja|zh"
        compact = re.sub(r"\s+", "", text)
        last_char = compact[-1] if compact else None
        related = (previous_lang in unknown or unknown in previous_lang) if previous_lang else False
        if last_char in "。.":  # (a TypeError for an all-blank piece, as in the reference)
            return previous_lang if related and len(self.words) > 0 else language
        return f"{unknown}|…"

    # -- driving ------------------------------------------------------------------------------
    def _cut(self, tag: str, pattern: re.Pattern, handler, text: str) -> str:
        found = pattern.findall(text)
        if len(found) == 1 and "".join(found[0]) == text:
            return text
        for i, match in enumerate(found):
            key = f"⑥{tag}{i:06d}⑥"
            text = pattern.sub(key, text, count=1)
            self.keys[key] = (handler, (tag, match))
        return text

    def _walk(self, text: str, root: bool) -> None:
        parts = _KEY_RE.split(text)
        for index, part in enumerate(parts):
            if root:
                self.at_end = index >= len(parts) - 1
            if _KEY_RE.match(part):
                handler, (_, match) = self.keys[part]
                handler(match)
            else:
                self._score_plain(part)

    def run(self, line: str) -> list[tuple[str, int]]:
        """Segment ``line``; the character tallies per language, largest first."""
        for text in re.findall(r".*\n*", _KEY_RE.sub("", line)):
            if len(text.strip()) == 0:
                continue
            self.at_end = False
            self.keys = {}
            for tag, pattern, handler in self.handlers:
                text = self._cut(tag, pattern, handler, text)
            self._walk(text, root=True)
        if self.counts is None:  # nothing kept: the reference reports Chinese
            return [("zh", 0)]
        if len(self.counts) == 0:
            raise ValueError("no language tallied")
        return sorted(self.counts.items(), key=lambda kv: kv[1], reverse=True)


def detect_language(line: str) -> str:
    """The language code the reference pipeline tokenizes a (stripped, non-empty) lyric line with.

    Always one of ``LANGUAGE_TAG_IDS``; lines the segmenter cannot handle are English.
    """
    try:
        counts = _Segmentation().run(line)
        language = counts[0][0]
        if len(counts) > 1 and language == "en":
            language = counts[1][0]
    except MissingLyricsExtra:
        raise
    except Exception:  # noqa: BLE001 - the reference falls back to English on any failure
        language = "en"
    if language not in LANGUAGE_TAG_IDS:
        language = "en"
    return language

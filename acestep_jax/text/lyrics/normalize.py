"""Per-language text normalisation applied to a lyric line before BPE.

Latin, Cyrillic, Arabic, Chinese and Korean text is lower-cased and has numbers, a few
abbreviations and symbols spelled out in the line's language (num2words; Chinese uses
:mod:`.zh_numbers`), then Chinese becomes tone-numbered pinyin and Korean is romanised.
Japanese is romanised with cutlet, Hindi only lower-cased. A failing number, abbreviation
or symbol step leaves the text of that step unchanged, as in the reference.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ._deps import MissingLyricsExtra, require
from .zh_numbers import normalize_chinese


def _word_table(pairs: str) -> list[tuple[str, str]]:
    """``"a=b;c=d"`` → [("a", "b"), ("c", "d")]."""
    return [tuple(p.split("=")) for p in pairs.split(";") if p]


# Abbreviations (followed by a dot; Russian ones as whole words) and their spoken form.
_ABBREVIATIONS = {
    "en": "mrs=misess;mr=mister;dr=doctor;st=saint;co=company;jr=junior;maj=major;gen=general;"
          "drs=doctors;rev=reverend;lt=lieutenant;hon=honorable;sgt=sergeant;capt=captain;"
          "esq=esquire;ltd=limited;col=colonel;ft=fort",
    "es": "sra=señora;sr=señor;dr=doctor;dra=doctora;st=santo;co=compañía;jr=junior;ltd=limitada",
    "fr": "mme=madame;mr=monsieur;dr=docteur;st=saint;co=compagnie;jr=junior;ltd=limitée",
    "de": "fr=frau;dr=doktor;st=sankt;co=firma;jr=junior",
    "pt": "sra=senhora;sr=senhor;dr=doutor;dra=doutora;st=santo;co=companhia;jr=júnior;"
          "ltd=limitada",
    "it": "sig=signore;dr=dottore;st=santo;co=compagnia;jr=junior;ltd=limitata",
    "pl": "p=pani;m=pan;dr=doktor;sw=święty;jr=junior",
    "ar": "",
    "zh": "",
    "cs": "dr=doktor;ing=inženýr;p=pan",
    "ru": "г-жа=госпожа;г-н=господин;д-р=доктор",
    "nl": "dhr=de heer;mevr=mevrouw;dr=dokter;jhr=jonkheer",
    "tr": "b=bay;byk=büyük;dr=doktor",
    "hu": "dr=doktor;b=bácsi;nőv=nővér",
    "ko": "",
}
_ABBREVIATION_RES = {
    lang: [
        (re.compile((r"\b%s\b" if lang == "ru" else r"\b%s\.") % short, re.IGNORECASE), long)
        for short, long in _word_table(pairs)
    ]
    for lang, pairs in _ABBREVIATIONS.items()
}

# Spoken words for & @ % # $ £ ° (in this order).
_SYMBOL_WORDS = {
    "en": "and|at|percent|hash|dollar|pound|degree",
    "es": "y|arroba|por ciento|numeral|dolar|libra|grados",
    "fr": "et|arobase|pour cent|dièse|dollar|livre|degrés",
    "de": "und|at|prozent|raute|dollar|pfund|grad",
    "pt": "e|arroba|por cento|cardinal|dólar|libra|graus",
    "it": "e|chiocciola|per cento|cancelletto|dollaro|sterlina|gradi",
    "pl": "i|małpa|procent|krzyżyk|dolar|funt|stopnie",
    "ar": "و|على|في المئة|رقم|دولار|جنيه|درجة",
    "zh": "和|在|百分之|号|美元|英镑|度",
    "cs": "a|na|procento|křížek|dolar|libra|stupně",
    "ru": "и|собака|процентов|номер|доллар|фунт|градус",
    "nl": "en|bij|procent|hekje|dollar|pond|graden",
    "tr": "ve|at|yüzde|diyez|dolar|sterlin|derece",
    "hu": "és|kukac|százalék|kettőskereszt|dollár|font|fok",
    "ko": "그리고|에|퍼센트|번호|달러|파운드|도",
}
_SYMBOLS = "&@%#$£°"

_ORDINAL_RES = {
    "en": r"([0-9]+)(st|nd|rd|th)",
    "es": r"([0-9]+)(º|ª|er|o|a|os|as)",
    "fr": r"([0-9]+)(º|ª|er|re|e|ème)",
    "de": r"([0-9]+)(st|nd|rd|th|º|ª|\.(?=\s|$))",
    "pt": r"([0-9]+)(º|ª|o|a|os|as)",
    "it": r"([0-9]+)(º|°|ª|o|a|i|e)",
    "pl": r"([0-9]+)(º|ª|st|nd|rd|th)",
    "ar": r"([0-9]+)(ون|ين|ث|ر|ى)",
    "cs": r"([0-9]+)\.(?=\s|$)",
    "ru": r"([0-9]+)(-й|-я|-е|-ое|-ье|-го)",
    "nl": r"([0-9]+)(de|ste|e)",
    "tr": r"([0-9]+)(\.|inci|nci|uncu|üncü|\.)",
    "hu": r"([0-9]+)(\.|adik|edik|odik|edik|ödik|ödike|ik)",
    "ko": r"([0-9]+)(번째|번|차|째)",
}
_NUMBER_RE = re.compile(r"[0-9]+")
_CURRENCY_RES = (  # applied in this order
    ("GBP", re.compile(r"((£[0-9\.\,]*[0-9]+)|([0-9\.\,]*[0-9]+£))")),
    ("USD", re.compile(r"((\$[0-9\.\,]*[0-9]+)|([0-9\.\,]*[0-9]+\$))")),
    ("EUR", re.compile(r"(([0-9\.\,]*[0-9]+€)|((€[0-9\.\,]*[0-9]+)))")),
)
# Separator before the cents part of an amount, dropped for whole amounts.
_CENTS_JOINER = {"es": " con ", "fr": " et ", "de": " und ", "pt": " e ", "it": " e "}
_THOUSANDS_COMMA_RE = re.compile(r"\b\d{1,3}(,\d{3})*(\.\d+)?\b")
_THOUSANDS_DOT_RE = re.compile(r"\b\d{1,3}(.\d{3})*(\,\d+)?\b")  # (any separator, as the reference)
_DECIMAL_RE = re.compile(r"([0-9]+[.,][0-9]+)")

# Languages normalised by `_clean` (the others: ja romanised, hi lower-cased).
CLEANED_LANGUAGES = frozenset(_SYMBOL_WORDS)


def _num2words(*args, lang: str, **kwargs) -> str:
    return require("num2words").num2words(*args, lang="cz" if lang == "cs" else lang, **kwargs)


def _spell_currency(text: str, lang: str, currency: str) -> str:
    amount = float(re.sub(r"[^\d.]", "", text.replace(",", ".")))
    words = _num2words(amount, to="currency", currency=currency, lang=lang)
    if amount.is_integer():
        cut = words.rfind(_CENTS_JOINER.get(lang, ", "))
        if cut != -1:
            words = words[:cut]
    return words


def _spell_numbers(text: str, lang: str) -> str:
    if lang == "zh":
        return normalize_chinese(text)
    if lang in ("en", "ru"):
        text = _THOUSANDS_COMMA_RE.sub(lambda m: m.group(0).replace(",", ""), text)
    else:
        text = _THOUSANDS_DOT_RE.sub(lambda m: m.group(0).replace(".", ""), text)
    try:
        for currency, pattern in _CURRENCY_RES:
            text = pattern.sub(lambda m, c=currency: _spell_currency(m.group(0), lang, c), text)
    except MissingLyricsExtra:
        raise
    except Exception:  # noqa: BLE001, S110 - keeps the currencies spelled before the failure
        pass
    if lang != "tr":
        text = _DECIMAL_RE.sub(
            lambda m: _num2words(float(m.group(1).replace(",", ".")), lang=lang), text
        )
    text = re.sub(
        _ORDINAL_RES[lang], lambda m: _num2words(int(m.group(1)), ordinal=True, lang=lang), text
    )
    return _NUMBER_RE.sub(lambda m: _num2words(int(m.group(0)), lang=lang), text)


def _expand_abbreviations(text: str, lang: str) -> str:
    for pattern, long in _ABBREVIATION_RES[lang]:
        text = pattern.sub(long, text)
    return text


def _expand_symbols(text: str, lang: str) -> str:
    for symbol, word in zip(_SYMBOLS, _SYMBOL_WORDS[lang].split("|")):
        text = text.replace(symbol, f" {word} ").replace("  ", " ")
    return text.strip()


def _clean(text: str, lang: str) -> str:
    text = text.replace('"', "")
    if lang == "tr":
        text = text.replace("İ", "i").replace("Ö", "ö").replace("Ü", "ü")
    text = text.lower()
    for step in (_spell_numbers, _expand_abbreviations, _expand_symbols):
        try:
            text = step(text, lang)
        except MissingLyricsExtra:
            raise
        except Exception:  # noqa: BLE001, S110 - the reference skips a failing step
            pass
    return re.sub(r"\s+", " ", text)


def _pinyin(text: str) -> str:
    pypinyin = require("pypinyin")
    syllables = pypinyin.pinyin(
        text, style=pypinyin.Style.TONE3, heteronym=False, neutral_tone_with_five=True
    )
    return "".join(s[0] for s in syllables)


@lru_cache(maxsize=1)
def _hangul():
    require("hangul_romanize")
    from hangul_romanize import Transliter
    from hangul_romanize.rule import academic

    return Transliter(academic)


@lru_cache(maxsize=1)
def _cutlet():
    return require("cutlet").Cutlet()


def normalize_line(text: str, lang: str) -> str:
    """``text`` as the reference hands it to BPE for language ``lang`` (before ``[SPACE]``)."""
    if lang in CLEANED_LANGUAGES:
        text = _clean(text, lang)
        if lang == "zh":
            text = _pinyin(text)
        elif lang == "ko":
            text = _hangul().translit(text)
        return text
    if lang == "ja":
        return _cutlet().romaji(text).lower()
    if lang == "hi":
        return re.sub(r"\s+", " ", text.lower())
    raise ValueError(f"lyrics language {lang!r} is not supported")

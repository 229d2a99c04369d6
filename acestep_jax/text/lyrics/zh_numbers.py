"""Chinese text normalisation before pinyin: numbers, dates, money, phone numbers in words.

Re-expresses the behaviour of the reference's Chinese normaliser with its default options:
non-standard words (dates, amounts, phone numbers, fractions, percentages, counted
quantities, long digit strings, plain numbers) are spelled out in simplified Chinese
numerals, then every punctuation mark becomes an ASCII comma. Each rewrite replaces the
first occurrence of the matched text, as the reference does.
"""

from __future__ import annotations

import re
import string

_DIGITS = "零一二三四五六七八九"
_LIANG = "两"
_POINT = "点"
# (character, power of ten): 十 百 千 万, then the "mid" system's 亿 = 10^8, 兆 = 10^12, ...
_UNITS = tuple(zip("十百千万", (1, 2, 3, 4))) + tuple(
    (c, (i + 2) * 4) for i, c in enumerate("亿兆京垓秭穰沟涧正载")
)

_CURRENCY_UNITS = "((亿|千万|百万|万|千|百)|(亿|千万|百万|万|千|百|)元|(亿|千万|百万|万|千|百|)块|角|毛|分)"
_QUANTIFIERS = (
    "(匹|张|座|回|场|尾|条|个|首|阙|阵|网|炮|顶|丘|棵|只|支|袭|辆|挑|担|颗|壳|窠|曲|墙|群|腔|"
    "砣|座|客|贯|扎|捆|刀|令|打|手|罗|坡|山|岭|江|溪|钟|队|单|双|对|出|口|头|脚|板|跳|枝|件|贴|"
    "针|线|管|名|位|身|堂|课|本|页|家|户|层|丝|毫|厘|分|钱|两|斤|担|铢|石|钧|锱|忽|(千|毫|微)克|"
    "毫|厘|分|寸|尺|丈|里|寻|常|铺|程|(千|分|厘|毫|微)米|撮|勺|合|升|斗|石|盘|碗|碟|叠|桶|笼|盆|"
    "盒|杯|钟|斛|锅|簋|篮|盘|桶|罐|瓶|壶|卮|盏|箩|箱|煲|啖|袋|钵|年|月|日|季|刻|时|周|天|秒|分|旬|"
    "纪|岁|世|更|夜|春|夏|秋|冬|代|伏|辈|丸|泡|粒|颗|幢|堆|条|根|支|道|面|片|张|颗|块)"
)
_PUNCTUATION = (
    "！？｡。"
    "＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏·〈〉-"
    + string.punctuation
)
_TO_COMMA = str.maketrans(_PUNCTUATION, "," * len(_PUNCTUATION))

_DATE_RE = re.compile(r"\D+((([089]\d|(19|20)\d{2})年)?(\d{1,2}月(\d{1,2}[日号])?)?)")
_MONEY_RE = re.compile(
    r"\D+((\d+(\.\d+)?)[多余几]?" + _CURRENCY_UNITS + r"(\d" + _CURRENCY_UNITS + r"?)?)"
)
_MOBILE_RE = re.compile(r"\D((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D")
_LANDLINE_RE = re.compile(r"\D((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D")
_FRACTION_RE = re.compile(r"(\d+/\d+)")
_PERCENT_RE = re.compile(r"(\d+(\.\d+)?%)")
_COUNTED_RE = re.compile(r"(\d+(\.\d+)?)[多余几]?" + _QUANTIFIERS)
_DIGIT_STRING_RE = re.compile(r"(\d{4,32})")
_NUMBER_RE = re.compile(r"(\d+(\.\d+)?)")
_LATIN_TWO_RE = re.compile(r"(([a-zA-Z]+)二([a-zA-Z]+))")


def _grouped(digits: str) -> list:
    """Symbols (digit ints and unit tuples) reading an integer string with units."""
    stripped = digits.lstrip("0")
    if not stripped:
        return []
    if len(stripped) == 1:
        lead = [0] if len(digits) != len(stripped) else []
        return lead + [int(stripped)]
    unit = next(u for u in reversed(_UNITS) if u[1] < len(stripped))
    return _grouped(digits[: -unit[1]]) + [unit] + _grouped(stripped[-unit[1]:])


def spell_number(number: str, *, with_units: bool = True, liang: bool = True) -> str:
    """A decimal string in Chinese numerals (``with_units=False`` reads digit by digit)."""
    parts = number.split(".")
    if len(parts) > 2:
        raise ValueError(f"number {number!r} has more than one decimal point")
    whole, frac = parts[0], parts[1] if len(parts) == 2 else ""
    if with_units and len(whole) > 1:
        symbols = _grouped(whole)
    else:
        symbols = [int(c) for c in whole]
    if frac:
        symbols = symbols + [_POINT] + [int(c) for c in frac]
    chars = []
    for i, s in enumerate(symbols):
        if isinstance(s, tuple):
            chars.append(s[0])
        elif isinstance(s, str):
            chars.append(s)
        else:
            after = symbols[i + 1] if i + 1 < len(symbols) else None
            before = symbols[i - 1] if i > 0 else None
            use_liang = (
                liang and s == 2 and isinstance(after, tuple) and after[1] != 1
                and (before is None or (isinstance(before, tuple) and before[1] != 1))
            )
            chars.append(_LIANG if use_liang else _DIGITS[s])
    text = "".join(chars)
    if text.startswith(_POINT):
        return _DIGITS[0] + text
    if len(text) >= 2 and text[1] == "十" and text[0] == "一":
        text = text[1:]
    return text


def _digits(number: str) -> str:
    return spell_number(number, with_units=False, liang=False)


def _date(date: str) -> str:
    head, sep, rest = date.strip().partition("年")
    year = _digits(head) + "年" if sep else ""
    rest = rest if sep else date
    if not rest:
        return year
    month, sep, day = rest.strip().partition("月")
    if not sep:
        return year + (spell_number(date[:-1]) + date[-1] if date else "")
    month = spell_number(month) + "月"
    if day:
        day = spell_number(day[:-1]) + day[-1]
    return year + month + day


def _money(money: str) -> str:
    for found in _NUMBER_RE.findall(money):
        money = money.replace(found[0], spell_number(found[0]))
    return money


def _phone(number: str, landline: bool) -> str:
    parts = number.split("-") if landline else number.strip("+").split()
    return "".join(_digits(p) for p in parts)


def normalize_chinese(text: str) -> str:
    """Spell out numbers in Chinese and turn every punctuation mark into ``,``."""
    text = "^" + text + "$"
    for found in _DATE_RE.findall(text):
        text = text.replace(found[0], _date(found[0]), 1)
    for found in _MONEY_RE.findall(text):
        text = text.replace(found[0], _money(found[0]), 1)
    for found in _MOBILE_RE.findall(text):
        text = text.replace(found[0], _phone(found[0], landline=False), 1)
    for found in _LANDLINE_RE.findall(text):
        text = text.replace(found[0], _phone(found[0], landline=True), 1)
    for found in _FRACTION_RE.findall(text):
        numerator, denominator = found.split("/")
        text = text.replace(found, spell_number(denominator) + "分之" + spell_number(numerator), 1)
    text = text.replace("％", "%")
    for found in _PERCENT_RE.findall(text):
        text = text.replace(found[0], "百分之" + spell_number(found[0].strip().strip("%")), 1)
    for found in _COUNTED_RE.findall(text):
        text = text.replace(found[0], spell_number(found[0]), 1)
    for found in _DIGIT_STRING_RE.findall(text):
        text = text.replace(found, _digits(found), 1)
    for found in _NUMBER_RE.findall(text):
        text = text.replace(found[0], spell_number(found[0]), 1)
    for found in _LATIN_TWO_RE.findall(text):
        text = text.replace(found[0], found[1] + "2" + found[2], 1)
    return text.lstrip("^").rstrip("$").translate(_TO_COMMA)

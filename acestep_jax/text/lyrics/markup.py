"""Chinese readings of ``<number>``, ``<telephone>``, ``<currency>`` and ``<date>`` markup.

The reference's language segmenter replaces such tagged text by its Chinese reading and
counts it as Chinese; only the length of the reading matters for language detection.
Non-ASCII digits raise KeyError, as in the reference (the line then counts as English).
"""

from __future__ import annotations

import re

_DIGITS = dict(zip("0123456789", "零一二三四五六七八九"))
_UNITS = ((8, "亿"), (4, "万"), (3, "千"), (2, "百"), (1, "十"))  # largest first
_DIGIT_RUN = re.compile(r"(\d+)")


def _grouped(digits: str) -> list[str]:
    stripped = digits.lstrip("0")
    if not stripped:
        return []
    if len(stripped) == 1:
        return ([_DIGITS["0"]] if len(stripped) < len(digits) else []) + [_DIGITS[stripped]]
    power, unit = next(u for u in _UNITS if u[0] < len(stripped))
    return _grouped(digits[:-power]) + [unit] + _grouped(digits[-power:])


def _cardinal(digits: str) -> str:
    if not digits:
        return ""
    digits = digits.lstrip("0")
    if not digits:
        return _DIGITS["0"]
    symbols = _grouped(digits)
    if len(symbols) >= 2 and symbols[0] == "一" and symbols[1] == "十":
        symbols = symbols[1:]
    return "".join(symbols)


def _amount(value: str) -> str:
    parts = value.split(".")
    if len(parts) > 2:
        raise ValueError(f"number {value!r} has more than one decimal point")
    result = _cardinal(parts[0])
    decimals = parts[1].rstrip("0") if len(parts) == 2 else ""
    if decimals:
        result = (result or "零") + "点" + "".join(_DIGITS[d] for d in decimals)
    return result


def _map_digit_runs(text: str, convert) -> str:
    pieces = _DIGIT_RUN.split(text)
    return "".join(convert(p) if _DIGIT_RUN.match(p) else p for p in pieces).replace(".", "点")


def read_number(text: str) -> str:
    """Digit by digit."""
    return _map_digit_runs(text, lambda run: "".join(_DIGITS.get(d, "") for d in run))


def read_telephone(text: str) -> str:
    return read_number(text.replace("+86", "")).replace("一", "幺")


def read_currency(text: str) -> str:
    """Each digit run as a cardinal number."""
    return _map_digit_runs(text, _amount)


def _nonzero(value: str, suffix: str, convert) -> str:
    value = convert(value)
    return f"{value}{suffix}" if value is not None and value != "" and value != "0" else ""


def read_date(text: str) -> str:
    """``2024/8/24``, ``2024-08``, ``08-24``, ``24``, optionally with a ``hh:mm[:ss]`` time."""
    if text is None or text.strip() == "":
        return ""
    text = re.sub(r"日", "", re.sub(r"[\/\._|年|月]", "-", text))
    fields = text.split(" ")
    if len(fields) == 1 and ":" in fields[0]:
        time, fields = fields[0], []
    else:
        time = fields[1] if len(fields) >= 2 else ""
    date = ""
    if fields:
        year = month = day = ""
        parts = fields[0].split("-")
        if len(parts) == 3:
            year, month, day = parts
        elif len(parts) == 2:
            if len(parts[0]) == 4:
                year, month = parts
            else:
                month, day = parts
        elif len(parts[0]) > 0:
            if len(parts[0]) == 4:
                year = parts[0]
            else:
                day = parts[0]
        date = (_nonzero(year, "年", read_number) + _nonzero(month, "月", read_currency)
                + _nonzero(day, "日", read_currency))
        date = re.sub(r"([年|月|日])+", r"\1", date)
    clock = re.sub(r"[\/\.\-：_]", ":", time).split(":")
    hours = minutes = seconds = ""
    if len(clock) == 3:
        hours, minutes, seconds = clock
    elif len(clock) == 2:
        hours, minutes = clock
    elif len(clock[0]) > 0:
        hours = f"{clock[0]}点"
    if len(clock) > 1:
        hours = _nonzero(hours, "点", read_currency)
        minutes = _nonzero(minutes, "分", read_currency)
        seconds = _nonzero(seconds, "秒", read_currency)
    return date + re.sub(r"([点|分|秒])+", r"\1", hours + minutes + seconds)


READERS = {
    "telephone": read_telephone,
    "number": read_number,
    "currency": read_currency,
    "date": read_date,
}

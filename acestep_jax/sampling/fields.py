"""Descriptions of generation fields: one :class:`Field` says everything about one value.

A field's name, its command-line flag, its name in the reference's records, its JSON
type, bounds, choices and help. :data:`acestep_jax.sampling.params.PARAM_FIELDS` describes
every :class:`~acestep_jax.sampling.SamplingParams` field; the request format of
:mod:`acestep_jax.serving.requests` adds the fields of a request (prompt, seeds, output
format, ...). ``sample.py``'s flags, request parsing and ``SamplingParams.validate`` are
all derived from these tables, and :meth:`Field.check` is the one type and bounds check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from acestep_jax.errors import UsageError

KINDS = ("bool", "int", "float", "str", "ints")  # "ints": a list of integers
_WANT = {"bool": "true or false", "int": "an integer", "float": "a finite number", "str": "a string",
         "ints": "a list of integers"}
MAX_LIST = 1000  # the longest "ints" value


class FieldError(UsageError):
    """A bad value; ``field`` names it as the input spelled it, ``message`` says what is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def json_type(v) -> str:
    """How an error names the JSON type of ``v``."""
    if v is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            tuple: "an array", dict: "an object"}.get(type(v), type(v).__name__)


@dataclass(frozen=True)
class Field:
    """One generation value.

    ``flag``: the command-line flag (``None``: ``--`` + the name with dashes; ``""``: no
    flag; for a bool, the flag that flips its default). ``reference``: the reference's name
    (``None``: the project's only). ``low``/``high``: inclusive bounds of numbers (and of
    each entry of an ``ints``). ``per_item``: may differ between the items of one batch.
    ``nullable``: JSON ``null`` means "not given".
    """

    name: str
    kind: str
    help: str = ""
    flag: str | None = None
    reference: str | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    per_item: bool = False
    nullable: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Field {self.name}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def option(self) -> str:
        """The command-line flag (``""`` when the field has none)."""
        return ("--" + self.name.replace("_", "-")) if self.flag is None else self.flag

    def check(self, value, key: str | None = None):
        """``value`` checked and normalised (ints for integral floats, tuples for lists);
        :class:`FieldError` naming ``key`` (default: the name) when it does not fit."""
        key = key or self.name
        if value is None:
            if self.nullable:
                return None
            raise FieldError(key, "must not be null")
        if self.kind == "bool":
            if not isinstance(value, bool | np.bool_):
                raise FieldError(key, f"must be true or false, got {_show(value)}")
            return bool(value)
        if self.kind == "str":
            if not isinstance(value, str):
                raise FieldError(key, f"must be a string, got {_show(value)}")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:  # a lone surrogate (JSON "\ud800"): not text
                raise FieldError(key, f"is not valid Unicode text (a lone surrogate at character {e.start})") from None
            if self.choices and value not in self.choices:
                raise FieldError(key, f"must be one of {', '.join(self.choices)}; got {value[:40]!r}")
            return value
        if self.kind == "ints":
            if not isinstance(value, list | tuple):
                raise FieldError(key, f"must be a list of integers, got {_show(value)}")
            if len(value) > MAX_LIST:
                raise FieldError(key, f"has {len(value)} entries; at most {MAX_LIST}")
            return tuple(self._number(f"{key}[{i}]", v, True) for i, v in enumerate(value))
        return self._number(key, value, self.kind == "int")

    def _number(self, key: str, v, integer: bool):
        if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.number):
            raise FieldError(key, f"must be {'an integer' if integer else 'a finite number'}, got {_show(v)}")
        if not math.isfinite(v):
            raise FieldError(key, f"must be a finite number, got {v}")
        if integer:
            if not float(v).is_integer():
                raise FieldError(key, f"must be an integer, got {v}")
            v = int(v)
        else:
            v = float(v)
        if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
            raise FieldError(key, f"must be in [{self._bound(self.low, '-inf')}, {self._bound(self.high, 'inf')}], "
                             f"got {v if abs(v) < 1e30 else 'a huge number'}")
        if self.choices and v not in self.choices:
            raise FieldError(key, f"must be one of {', '.join(map(str, self.choices))}; got {v}")
        return v

    def _bound(self, x, none: str) -> str:
        return none if x is None else str(int(x)) if self.kind in ("int", "ints") else f"{x:g}"


def _show(v) -> str:
    text = json_type(v)
    return f"{text} ({v!r})" if isinstance(v, str | int | float) and len(repr(v)) <= 40 else text

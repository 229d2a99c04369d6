"""The field tables: one description per value, from which flags, request parsing and validation derive."""

import dataclasses
import math

import numpy as np
import pytest

from acestep_jax.cli.sample import CLI_DEFAULTS, build_parser
from acestep_jax.sampling import SamplingParams
from acestep_jax.sampling.fields import Field, FieldError
from acestep_jax.sampling.params import ITEM_FIELDS, PARAM_FIELDS
from acestep_jax.serving.requests import FIELDS, SERVER_LIMITS, parse_request


def test_param_fields_describe_every_sampling_param_in_order():
    assert [f.name for f in PARAM_FIELDS] == [f.name for f in dataclasses.fields(SamplingParams)]
    assert ITEM_FIELDS == tuple(f.name for f in PARAM_FIELDS if f.per_item)
    for f in PARAM_FIELDS:  # each default passes its own field's check
        assert f.check(getattr(SamplingParams(), f.name)) == getattr(SamplingParams(), f.name) or f.kind == "ints"


@pytest.mark.parametrize("field, value, message", [
    (Field("x", "int", low=1, high=3), 4, "x: must be in [1, 3], got 4"),
    (Field("x", "int"), 1.5, "x: must be an integer, got 1.5"),
    (Field("x", "int"), True, "x: must be an integer, got a boolean (True)"),
    (Field("x", "float"), math.inf, "x: must be a finite number, got inf"),
    (Field("x", "float"), "1", "x: must be a finite number, got a string ('1')"),
    (Field("x", "bool"), 1, "x: must be true or false, got an integer (1)"),
    (Field("x", "str", choices=("a", "b")), "c", "x: must be one of a, b; got 'c'"),
    (Field("x", "ints", low=0), [1, -1], "x[1]: must be in [0, inf], got -1"),
    (Field("x", "ints"), 3, "x: must be a list of integers, got an integer (3)"),
    (Field("x", "str"), None, "x: must not be null"),
])
def test_check_names_the_field_and_the_fault(field, value, message):
    with pytest.raises(FieldError) as e:
        field.check(value)
    assert str(e.value) == message and e.value.field == message.split(":")[0]


def test_check_normalises():
    assert Field("x", "int").check(3.0) == 3 and isinstance(Field("x", "int").check(np.int64(3)), int)
    assert Field("x", "float").check(2) == 2.0 and isinstance(Field("x", "float").check(2), float)
    assert Field("x", "ints").check([1, 2.0]) == (1, 2)
    assert Field("x", "str", nullable=True).check(None) is None


def test_one_set_of_bounds_everywhere():
    """The library, the command line and the service refuse a value with the same bound."""
    for name, bad in (("guidance_scale", 201.0), ("n_avg", 65), ("omega_scale", -101.0), ("infer_steps", 0)):
        with pytest.raises(FieldError, match=f"^{name}: must be in"):
            SamplingParams(**{name: bad}).validate()
        with pytest.raises(FieldError, match=f"^{name}: must be in"):
            parse_request({"prompt": "x", name: bad}, SERVER_LIMITS)


def test_sample_flags_come_from_the_tables(capsys):
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    for f in FIELDS:
        if not f.option:
            continue
        action = actions[f.name]
        assert f.option in action.option_strings and action.help == f.help
        if f.kind not in ("bool", "ints") and f.name != "format":
            assert action.default == CLI_DEFAULTS.get(f.name, getattr(SamplingParams, f.name, None)), f.name
    defaults = parser.parse_args([])
    assert defaults.use_erg_tag and defaults.bucket and not defaults.batch_invariant and defaults.use_zero_init

"""cwp_export.options.parse_fraction: the ``--protect`` value (a percentage or a fraction)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cwp_export.errors import InputError
from cwp_export.options import parse_fraction


@pytest.mark.parametrize("text,expected", [
    ("1%", 0.01), ("0.5%", 0.005), ("0.01", 0.01), ("0", 0.0), ("0%", 0.0), ("100%", 1.0),
    ("1", 1.0), (" 2% ", 0.02), ("1e-3", 0.001), ("-0%", 0.0), (0, 0.0), (0.25, 0.25),
])
def test_accepted(text, expected: float) -> None:
    assert parse_fraction(text) == pytest.approx(expected, rel=1e-15, abs=0)


@pytest.mark.parametrize("text,match", [
    ("-1%", "outside 0%..100%"), ("101%", "outside 0%..100%"), ("1.5", "outside 0%..100%"),
    ("-0.01", "outside 0%..100%"), ("nan", "outside 0%..100%"), ("nan%", "outside 0%..100%"),
    ("inf", "outside 0%..100%"), ("junk", "not a number"), ("", "not a number"),
    ("%", "not a number"), ("1%%", "not a number"), ("1 %x", "not a number"),
    ("one percent", "not a number"),
])
def test_refused(text: str, match: str) -> None:
    with pytest.raises(InputError, match=match) as e:
        parse_fraction(text)
    assert "--protect" in str(e.value)


def test_option_name_is_used_in_the_message() -> None:
    with pytest.raises(InputError, match="^--share 'x' is not a number"):
        parse_fraction("x", option="--share")


@given(st.floats(min_value=0, max_value=100))
def test_percent_is_divided_by_100(p: float) -> None:
    assert parse_fraction(f"{p}%") == p / 100


@given(st.floats(min_value=0, max_value=1))
def test_fraction_is_taken_as_is(f: float) -> None:
    assert parse_fraction(f"{f}") == f
    assert parse_fraction(f) == f


@given(st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
def test_anything_gives_a_fraction_in_0_1_or_an_input_error(value) -> None:
    try:
        f = parse_fraction(value)
    except InputError:
        return
    assert not math.isnan(f) and 0.0 <= f <= 1.0

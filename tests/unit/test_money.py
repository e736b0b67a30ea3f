"""Decimal input rules: what is refused, and how values render."""

from __future__ import annotations

from decimal import Context, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import money
from ledger.money import DecimalRangeError, parse_decimal


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "decimal string"),
        (True, "decimal string"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        (Decimal("1E+309"), "digits before the point"),
        ("1" * 60, "digits before the point"),
        ("0." + "1" * 40, "decimal places"),
        (" 1", "not a decimal string"),
        ("1,000", "not a decimal string"),
        ("", "not a decimal string"),
        ({"value": 1}, "decimal string"),
    ],
)
def test_refused_decimals_say_why(value: object, message: str) -> None:
    with pytest.raises(DecimalRangeError, match=message):
        parse_decimal(value)


def test_trailing_zeros_beyond_the_scale_are_not_extra_places() -> None:
    assert parse_decimal("1.50000000000000000000") == Decimal("1.5")


def test_integers_and_exact_decimals_are_accepted() -> None:
    assert parse_decimal(12) == Decimal(12)
    assert parse_decimal(Decimal("0.000000000001")) == Decimal("1E-12")


@pytest.mark.parametrize(
    ("value", "places", "text"),
    [
        (Decimal("245.000"), 2, "245.00"),
        (Decimal("1E+3"), 0, "1000"),
        (Decimal("-0"), 2, "0.00"),
        (Decimal("0.000000000123"), 2, "0.000000000123"),
        (Decimal("99385.000000000000"), 0, "99385"),
    ],
)
def test_text_is_plain_and_the_same_for_equal_values(
    value: Decimal, places: int, text: str
) -> None:
    assert money.text(value, places) == text


@given(
    st.decimals(
        min_value=Decimal("-1e18"),
        max_value=Decimal("1e18"),
        places=12,
        allow_nan=False,
        allow_infinity=False,
    ),
    st.integers(min_value=0, max_value=6),
)
def test_text_is_exact_plain_and_minimal(value: Decimal, places: int) -> None:
    shown = money.text(value, places)
    whole, _, fraction = shown.partition(".")

    assert Decimal(shown) == value
    assert "E" not in shown and "e" not in shown and not shown.startswith("+")
    assert len(fraction) >= places
    assert len(fraction) == places or not fraction.endswith("0")
    assert shown != "-0" and not (whole == "-0" and Decimal(shown) == 0)
    assert money.text(value.normalize(Context(prec=80)), places) == shown


def test_cost_rounds_half_even_at_twelve_places() -> None:
    assert money.cost(Decimal("0.0000000000005")) == Decimal(0)
    assert money.cost(Decimal("0.0000000000015")) == Decimal("0.000000000002")

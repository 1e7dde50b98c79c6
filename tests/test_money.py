"""Exact money: conversion between amounts and integer units."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomlimit._money import MAX_UNITS, from_units, to_units
from atomlimit.errors import InvalidInput


@given(units=st.integers(min_value=0, max_value=MAX_UNITS), exponent=st.integers(0, 18))
def test_units_round_trip_exactly(units: int, exponent: int) -> None:
    assert to_units(from_units(units, exponent), exponent, "cost") == units


@given(units=st.integers(min_value=0, max_value=MAX_UNITS), places=st.integers(0, 6))
def test_shown_amounts_keep_their_value(units: int, places: int) -> None:
    shown = from_units(units, 6, places)
    assert shown == Decimal(units) / Decimal(10**6)
    assert -int(shown.as_tuple().exponent) >= places


def test_amounts_are_shown_with_the_limit_s_decimals() -> None:
    assert str(from_units(370_000, 6, 2)) == "0.37"
    assert str(from_units(0, 6, 2)) == "0.00"
    assert str(from_units(371_000, 6, 2)) == "0.371"
    assert str(from_units(100_000_000, 6, 0)) == "100"


def test_largest_exact_amount_is_above_nine_billion() -> None:
    assert from_units(MAX_UNITS, 6) > Decimal("9000000000.00")
    # Lua's doubles hold every integer up to the bound...
    assert float(MAX_UNITS) == MAX_UNITS
    # ...and just past the bound they stop being exact.
    assert float(MAX_UNITS + 2) != MAX_UNITS + 2


@pytest.mark.parametrize("amount", [Decimal("1e-7"), Decimal("0.1234567"), Decimal("123.0000001")])
def test_amount_finer_than_the_unit_is_refused_not_rounded(amount: Decimal) -> None:
    with pytest.raises(InvalidInput, match="finer than the unit"):
        to_units(amount, 6, "cost")


def test_equal_amounts_in_any_notation_are_the_same_units() -> None:
    forms = [Decimal("0.37"), Decimal("0.370000"), Decimal("3.7E-1"), Decimal("37e-2")]
    assert {to_units(form, 6, "cost") for form in forms} == {370_000}

"""Exact money: conversion between amounts and integer units."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import NoReturn

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import free_port

from atomlimit import Hit, Limiter, SpendCap
from atomlimit._codecs import Codec, codec_for
from atomlimit._money import MAX_DIGITS, MAX_UNITS, from_units, to_units
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


class Tripwire(Decimal):
    """A Decimal whose arithmetic and formatting fail the test.

    ``Decimal("1E+999999999").as_integer_ratio()`` never returns, so no test
    of how long a refusal takes could be trusted on a busy machine. Instead
    these amounts prove the refusal never gets that far: it may look at the
    sign, the adjusted exponent and the digits, all O(1) or O(digits) in C,
    and nothing else.
    """

    def _tripped(self, *args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("an amount was used in arithmetic or formatted before its range")

    as_integer_ratio = scaleb = quantize = normalize = _tripped
    to_integral = to_integral_value = to_integral_exact = fma = _tripped
    __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __floordiv__ = __mod__ = _tripped
    __divmod__ = __add__ = __radd__ = __sub__ = __rsub__ = __pow__ = _tripped
    __int__ = __float__ = __round__ = __str__ = __repr__ = __format__ = _tripped


class TripwireInt(int):
    """An int whose arithmetic and formatting fail the test."""

    def _tripped(self, *args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("an amount was used in arithmetic or formatted before its range")

    __mul__ = __rmul__ = __pow__ = __add__ = __radd__ = __floordiv__ = __divmod__ = _tripped
    __str__ = __repr__ = __format__ = _tripped


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1E+999999999", "exact range"),
        ("1E+10000000", "exact range"),
        ("123456789E+999999990", "exact range"),
        ("1E+16", "exact range"),
        ("1E-999999999", "finer than the unit"),
        ("1E-10000000", "finer than the unit"),
        ("-1E+999999999", "negative"),
        ("-1E-999999999", "negative"),
        ("0." + "1" * 100, "digits"),
        ("9" * 100, "exact range"),
        ("sNaN", "finite"),
        ("-sNaN", "finite"),
        ("NaN", "finite"),
        ("-Infinity", "finite"),
    ],
)
def test_amounts_out_of_range_are_refused_before_any_arithmetic(text: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        to_units(Tripwire(text), 6, "cost")


@pytest.mark.parametrize(
    ("amount", "says"),
    [(10**5000, "exact range"), (-(10**5000), "negative"), (2**65, "exact range")],
    ids=["10**5000", "-10**5000", "2**65"],
)
def test_huge_ints_are_refused_before_any_arithmetic_and_shown_by_size(
    amount: int, says: str
) -> None:
    with pytest.raises(InvalidInput, match=says):
        to_units(TripwireInt(amount), 6, "cost")
    # str() of an int past 4,300 digits raises ValueError, so the message
    # must describe it by its size.
    with pytest.raises(InvalidInput, match=says) as caught:
        to_units(amount, 6, "cost")

    assert f"an int of {amount.bit_length()} bits" in str(caught.value)


def test_amounts_in_range_convert_without_decimal_arithmetic() -> None:
    # Integer arithmetic on the digits is exact whatever the Decimal context.
    assert to_units(Tripwire("0.37"), 6, "cost") == 370_000
    assert to_units(Tripwire("3.7E-1"), 6, "cost") == 370_000
    assert to_units(Tripwire("1E+9"), 6, "cost") == 10**15
    assert to_units(Tripwire("9007199254.740991"), 6, "cost") == MAX_UNITS
    assert to_units(Tripwire("1." + "0" * 39), 6, "cost") == 10**6


@pytest.mark.parametrize("text", ["0", "-0", "0E+999999999", "-0E-999999999", "0.000000000"])
def test_every_zero_is_zero_units(text: str) -> None:
    assert to_units(Tripwire(text), 6, "cost") == 0


def test_an_amount_written_with_more_than_max_digits_is_refused() -> None:
    written_out = Decimal("1." + "0" * (MAX_DIGITS - 1))

    assert to_units(written_out, 6, "cost") == 10**6
    with pytest.raises(InvalidInput, match=f"41 digits; at most {MAX_DIGITS}"):
        to_units(Decimal("1." + "0" * MAX_DIGITS), 6, "cost")


@given(
    sign=st.integers(0, 1),
    digits=st.lists(st.integers(0, 9), min_size=1, max_size=MAX_DIGITS + 4),
    power=st.integers(-60, 60),
    exponent=st.integers(0, 18),
)
def test_a_decimal_converts_exactly_or_is_refused(
    sign: int, digits: list[int], power: int, exponent: int
) -> None:
    amount = Decimal((sign, tuple(digits), power))
    exact = Fraction(amount) * 10**exponent
    fits = (
        exact.denominator == 1
        and 0 <= exact <= MAX_UNITS
        and (exact == 0 or len(amount.as_tuple().digits) <= MAX_DIGITS)
    )

    if fits:
        assert to_units(amount, exponent, "cost") == exact
    else:
        with pytest.raises(InvalidInput, match=r"^cost"):
            to_units(amount, exponent, "cost")


def test_a_spend_cap_limit_out_of_range_is_refused_before_any_arithmetic() -> None:
    for limit in ("1E+999999999", "1E-999999999", "1E+10000000"):
        with pytest.raises(InvalidInput, match=r"^SpendCap\.limit is (above|finer)"):
            SpendCap(name="c", limit=Tripwire(limit), currency="AUD", window="day")


def test_every_call_refuses_a_cost_out_of_range_before_any_arithmetic() -> None:
    # Nothing listens on the port: had anything been sent, this would be a
    # BackendError, not InvalidInput.
    client = redis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    limiter = Limiter(client)
    cap = SpendCap(name="c", limit=Decimal("100.00"), currency="AUD", window="day")
    huge = Tripwire("1E+999999999")
    calls: list[Callable[[], object]] = [
        lambda: limiter.hit(cap, "s", huge),
        lambda: limiter.peek(cap, "s", huge),
        lambda: limiter.refund(cap, "s", huge),
        lambda: limiter.reserve(cap, "s", huge),
        lambda: limiter.acquire([Hit(cap, "s", huge)]),
    ]
    with client:
        for call in calls:
            with pytest.raises(InvalidInput, match="exact range"):
                call()


@given(
    limit=st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("9000000000"), places=6)
    | st.sampled_from(
        [Decimal("1E+2"), Decimal("100.00"), Decimal("5"), Decimal("0.50"), Decimal("5.00000000")]
    ),
    used_share=st.fractions(min_value=0, max_value=Fraction(11, 10)),
    grant=st.integers(min_value=0, max_value=10**9),
)
def test_a_fitted_spend_reports_the_digits_of_every_other_decision(
    limit: Decimal, used_share: Fraction, grant: int
) -> None:
    # The fast path for a spend hit that fitted (a subtraction, and kept
    # grants) must show the very digits the general path shows.
    codec = codec_for(SpendCap(name="cap", limit=limit, currency="AUD", window="day"))
    used = int(codec.limit * used_share)
    fast = codec.fitted(used, grant, 0)
    general = Codec.fitted(codec, used, grant, 0)
    shown = [str(getattr(fast, field)) for field in ("used", "remaining", "granted", "held")]
    assert shown == [str(getattr(general, f)) for f in ("used", "remaining", "granted", "held")]

"""Exact money: amounts travel and are stored as integer minor units.

A float cannot hold 0.1, so floats are refused outright rather than rounded.
Every conversion here is integer or exact-Decimal arithmetic, and every
amount stays below 2**53 units so that Lua, whose numbers are doubles, still
adds and compares it exactly.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TypeVar

from atomlimit._errors import InvalidInput
from atomlimit._inputs import show

Amount = TypeVar("Amount", int, Decimal)
"""What a limit counts in: whole units (``int``), or money (``Decimal``)."""

MAX_UNITS = 2**53 - 1
"""Largest amount, in units, that Lua's double-precision numbers hold exactly.

With sums kept below this bound, ``used + cost <= limit`` can never round the
wrong way: any true sum above the limit rounds to a value still above it.
"""
MAX_DIGITS = 40
"""Most digits an amount's coefficient may have, trailing zeros included.

An amount in range has at most 16 digits above the unit and 18 below it;
the rest is room for zeros written out, as in ``Decimal("1.50000")``.
"""

_TOP = len(str(MAX_UNITS))
"""Digits of MAX_UNITS: an amount whose leading digit is worth 10**_TOP units
or more is above the range, whatever its other digits."""
_SMALL_BITS = 64


def to_units(amount: object, exponent: int, field: str) -> int:
    """Convert ``amount`` to integer units of ``10**-exponent``, or refuse it.

    Accepts ``Decimal`` and ``int``. Refuses floats, strings, NaN, infinities,
    negative amounts, amounts finer than one unit and amounts above the exact
    range, naming ``field`` in the message.

    Every refusal is decided by magnitude (an int's bit length, a Decimal's
    adjusted exponent and digit count) before any arithmetic, and the
    arithmetic that follows is on integers of at most 40 digits: no amount,
    however written, costs more than a few microseconds. ``Decimal("1E+999999999")``
    would otherwise take ``as_integer_ratio`` forever.
    """
    if isinstance(amount, Decimal):
        units = _decimal_units(amount, exponent, field)
    elif isinstance(amount, int) and not isinstance(amount, bool):
        units = _int_units(amount, exponent, field)
    else:
        hint = (
            "; floats cannot hold money exactly, use Decimal('0.37')"
            if isinstance(amount, float)
            else ""
        )
        raise InvalidInput(
            f"{field} must be a Decimal or an int from 0 to {_most(exponent)}, "
            f"not {type(amount).__name__}{hint}"
        )
    if units > MAX_UNITS:
        raise _above(amount, exponent, field)
    return units


def _int_units(amount: int, exponent: int, field: str) -> int:
    if amount < 0:
        raise _negative(amount, exponent, field)
    if amount.bit_length() > _SMALL_BITS:
        raise _above(amount, exponent, field)
    return amount * int(10**exponent)  # int() because typeshed types int ** int as Any


def _decimal_units(amount: Decimal, exponent: int, field: str) -> int:
    if not amount.is_finite():
        raise InvalidInput(
            f"{field} must be a finite amount from 0 to {_most(exponent)}, got {show(amount)}"
        )
    if amount.is_zero():
        return 0  # -0 and 0E+999999999 included: zero is zero
    if amount.is_signed():
        raise _negative(amount, exponent, field)
    # The leading digit is worth 10**top units; adjusted() is O(1).
    top = amount.adjusted() + exponent
    if top >= _TOP:
        raise _above(amount, exponent, field)
    if top < 0:
        raise _finer(amount, exponent, field)
    _, digits, power = amount.as_tuple()
    if len(digits) > MAX_DIGITS:
        raise InvalidInput(
            f"{field} is written with {len(digits)} digits; at most {MAX_DIGITS}, "
            f"for an amount from 0 to {_most(exponent)}"
        )
    coefficient = int("".join(map(str, digits)))
    # |shift| < MAX_DIGITS, since the leading digit sits at 10**top units.
    shift = int(power) + exponent
    if shift >= 0:
        return coefficient * int(10**shift)
    units, rest = divmod(coefficient, int(10**-shift))
    if rest:
        raise _finer(amount, exponent, field)
    return units


def _most(exponent: int) -> Decimal:
    return from_units(MAX_UNITS, exponent)


def _above(amount: object, exponent: int, field: str) -> InvalidInput:
    return InvalidInput(
        f"{field} is above the exact range, 0 to {_most(exponent)}, got {show(amount)}"
    )


def _negative(amount: object, exponent: int, field: str) -> InvalidInput:
    return InvalidInput(
        f"{field} must not be negative: it takes 0 to {_most(exponent)}, got {show(amount)}"
    )


def _finer(amount: object, exponent: int, field: str) -> InvalidInput:
    unit = "1" if exponent == 0 else f"1E-{exponent}"
    return InvalidInput(
        f"{field} is finer than the unit {unit}, got {show(amount)}; "
        "round it yourself so no money is lost silently"
    )


def from_units(units: int, exponent: int, places: int = 0) -> Decimal:
    """The exact Decimal amount of ``units`` minor units.

    Trailing zeros are dropped down to ``places`` decimals, so a cap written
    ``Decimal("100.00")`` reports ``Decimal("0.37")``, not ``0.370000``.
    """
    while exponent > places and units % 10 == 0:
        units //= 10
        exponent -= 1
    # At most 16 digits, well inside the default 28-digit context: exact.
    return Decimal(units).scaleb(-exponent)

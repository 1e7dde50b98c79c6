"""Exact money: amounts travel and are stored as integer minor units.

A float cannot hold 0.1, so floats are refused outright rather than rounded.
Every conversion here is integer or exact-Decimal arithmetic, and every
amount stays below 2**53 units so that Lua, whose numbers are doubles, still
adds and compares it exactly.
"""

from __future__ import annotations

from decimal import Decimal

from atomlimit.errors import InvalidInput

MAX_UNITS = 2**53 - 1
"""Largest amount, in units, that Lua's double-precision numbers hold exactly.

With sums kept below this bound, ``used + cost <= limit`` can never round the
wrong way: any true sum above the limit rounds to a value still above it.
"""


def to_units(amount: object, exponent: int, field: str) -> int:
    """Convert ``amount`` to integer units of ``10**-exponent``, or refuse it.

    Accepts ``Decimal`` and ``int``. Refuses floats, strings, NaN, infinities,
    negative amounts, amounts finer than one unit and amounts above the exact
    range, naming ``field`` in the message.
    """
    scale = int(10**exponent)  # int() because typeshed types int ** int as Any
    if isinstance(amount, int) and not isinstance(amount, bool):
        units = amount * scale
    elif isinstance(amount, Decimal):
        if not amount.is_finite():
            raise InvalidInput(f"{field} must be a finite amount, got {amount}")
        numerator, denominator = amount.as_integer_ratio()
        units, remainder = divmod(numerator * scale, denominator)
        if remainder:
            raise InvalidInput(
                f"{field}={amount} is finer than the unit 1E-{exponent}; "
                "round it yourself so no money is lost silently"
            )
    else:
        hint = (
            "; floats cannot hold money exactly, use Decimal('0.37')"
            if isinstance(amount, float)
            else ""
        )
        raise InvalidInput(
            f"{field} must be a Decimal or an int, not {type(amount).__name__}{hint}"
        )
    if units < 0:
        raise InvalidInput(f"{field} must not be negative, got {amount}")
    if units > MAX_UNITS:
        raise InvalidInput(
            f"{field}={amount} is above the exact range of {from_units(MAX_UNITS, exponent)}"
        )
    return units


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

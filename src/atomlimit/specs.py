"""Limit specs: frozen pydantic models, validated once when built.

After construction the hot path trusts a spec: everything derived from it
(key tail, units, time zone, window cache) is computed once and cached on the
instance.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, ClassVar, Generic, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from atomlimit import _keys
from atomlimit._money import MAX_UNITS, from_units, to_units
from atomlimit._windows import CALENDAR_UNITS, Window, WindowPlan, from_us
from atomlimit.decision import Amount, Decision
from atomlimit.errors import InvalidInput

_US = timedelta(microseconds=1)
_CURRENCY = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,15}")


class Spec(BaseModel, Generic[Amount]):
    """Fields and behaviour shared by every limit spec.

    Generic in the amount type its decisions carry: ``int`` or ``Decimal``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    _kind: ClassVar[str]

    name: Annotated[str, Field(min_length=1, max_length=256)]
    """Names the limit in keys; two specs with one name share state."""
    window: Window
    """A calendar unit in ``tz``, or a fixed ``timedelta`` aligned to the epoch."""
    tz: str = "UTC"
    """IANA time zone that calendar windows follow."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise InvalidInput(_describe(type(self).__name__, err)) from err

    @field_validator("name", mode="before")
    @classmethod
    def _name_is_text(cls, value: object) -> object:
        if not isinstance(value, str):
            raise ValueError(f"must be a str, got {type(value).__name__}")
        return value

    @field_validator("window", mode="plain")
    @classmethod
    def _known_window(cls, value: object) -> Window:
        if isinstance(value, timedelta):
            if value < timedelta(milliseconds=1) or value % _US:
                raise ValueError(f"a timedelta window must be at least 1 ms, got {value}")
            return value
        if isinstance(value, str) and value in CALENDAR_UNITS:
            return value
        units = ", ".join(CALENDAR_UNITS)
        raise ValueError(f"must be one of {units} or a datetime.timedelta, got {value!r}")

    @field_validator("tz", mode="plain")
    @classmethod
    def _known_zone(cls, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be an IANA time zone name, got {value!r}")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown IANA time zone {value!r}") from err
        return value

    @model_validator(mode="after")
    def _zone_fits_window(self) -> Self:
        if isinstance(self.window, timedelta) and self.tz != "UTC":
            raise ValueError(
                "tz: a timedelta window is aligned to the Unix epoch and takes no "
                f"time zone, got {self.tz!r}"
            )
        return self

    @cached_property
    def _plan(self) -> WindowPlan:
        return WindowPlan(self.window, ZoneInfo(self.tz))

    @cached_property
    def _tail(self) -> str:
        return f":{self._kind}:{_keys.encode(self.name)}"

    @cached_property
    def _limit_units(self) -> int:
        raise NotImplementedError

    def _cost_units(self, cost: object) -> int:
        raise NotImplementedError

    def _decision(
        self, allowed: bool, used: int, cost: int, end: int, now: int
    ) -> Decision[Amount]:
        raise NotImplementedError


class RateLimit(Spec[int]):
    """At most ``limit`` units of cost per window, per subject.

    >>> RateLimit(name="enrichment", limit=1000, window="day", tz="Australia/Sydney")
    RateLimit(name='enrichment', window='day', tz='Australia/Sydney', limit=1000)
    """

    _kind: ClassVar[str] = "rl"

    limit: Annotated[StrictInt, Field(gt=0, le=MAX_UNITS)]
    """Most cost admitted per window."""

    @cached_property
    def _limit_units(self) -> int:
        return self.limit

    def _cost_units(self, cost: object) -> int:
        if type(cost) is not int:
            raise InvalidInput(f"cost must be an int for a RateLimit, got {type(cost).__name__}")
        if not 0 <= cost <= MAX_UNITS:
            raise InvalidInput(f"cost must be between 0 and {MAX_UNITS}, got {cost}")
        return cost

    def _decision(self, allowed: bool, used: int, cost: int, end: int, now: int) -> Decision[int]:
        limit = self.limit
        retry = None if allowed or cost > limit else timedelta(microseconds=end - now)
        return Decision(allowed, limit, used, max(limit - used, 0), from_us(end), retry)


class SpendCap(Spec[Decimal]):
    """At most ``limit`` of a currency spent per window, per subject, exactly.

    Amounts are ``Decimal`` (or ``int``) and are stored as integer multiples
    of ``unit``; an amount finer than the unit is refused, never rounded.

    >>> SpendCap(name="ai", limit=Decimal("100.00"), currency="AUD", window="day").limit
    Decimal('100.00')
    """

    _kind: ClassVar[str] = "sc"

    limit: Decimal
    """Most spend admitted per window."""
    currency: str
    """Currency code or unit name, e.g. ``"AUD"``; part of the key."""
    unit: Decimal = Decimal("0.000001")
    """Smallest amount tracked: a power of ten, from 1 down to 1E-18."""

    @field_validator("limit", mode="plain")
    @classmethod
    def _exact_limit(cls, value: object) -> Decimal:
        if isinstance(value, str):
            try:
                value = Decimal(value)
            except ArithmeticError as err:
                raise ValueError(f"not a decimal number: {value!r}") from err
        if type(value) is int:
            value = Decimal(value)
        if not isinstance(value, Decimal):
            raise ValueError(
                f"must be a Decimal, int or decimal string, not {type(value).__name__}"
            )
        if not value.is_finite() or value <= 0:
            raise ValueError(f"must be a finite amount above 0, got {value}")
        return value

    @field_validator("currency", mode="plain")
    @classmethod
    def _plain_currency(cls, value: object) -> str:
        if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
            raise ValueError(
                f"must be 1-16 letters, digits, _ or -, starting with a letter, got {value!r}"
            )
        return value

    @field_validator("unit", mode="plain")
    @classmethod
    def _power_of_ten(cls, value: object) -> Decimal:
        if isinstance(value, Decimal) and value.is_finite() and value > 0:
            digits = value.normalize().as_tuple()
            if digits.digits == (1,) and -18 <= int(digits.exponent) <= 0:
                return value
        raise ValueError(f"must be a Decimal power of ten from 1 to 1E-18, got {value!r}")

    @model_validator(mode="after")
    def _limit_in_units(self) -> Self:
        try:
            to_units(self.limit, self._exponent, "limit")
        except InvalidInput as err:
            raise ValueError(str(err)) from None
        return self

    @cached_property
    def _exponent(self) -> int:
        return -int(self.unit.normalize().as_tuple().exponent)

    @cached_property
    def _places(self) -> int:
        # Report amounts with at least as many decimals as the limit was written with.
        return min(max(0, -int(self.limit.as_tuple().exponent)), self._exponent)

    @cached_property
    def _tail(self) -> str:
        # Currency and unit are in the key: reading units stored at another
        # scale, or in another currency, would be silently wrong.
        return f":{self._kind}:{_keys.encode(self.name)}:{self.currency}:{self._exponent}"

    @cached_property
    def _limit_units(self) -> int:
        return to_units(self.limit, self._exponent, "limit")

    def _cost_units(self, cost: object) -> int:
        return to_units(cost, self._exponent, "cost")

    def _decision(
        self, allowed: bool, used: int, cost: int, end: int, now: int
    ) -> Decision[Decimal]:
        limit, exponent, places = self._limit_units, self._exponent, self._places
        retry = None if allowed or cost > limit else timedelta(microseconds=end - now)
        return Decision(
            allowed,
            self.limit,
            from_units(used, exponent, places),
            from_units(max(limit - used, 0), exponent, places),
            from_us(end),
            retry,
        )


def _describe(model: str, err: ValidationError) -> str:
    """One line per problem, each naming the field: ``RateLimit.limit: ...``."""
    lines = []
    for problem in err.errors(include_url=False):
        message = problem["msg"].removeprefix("Value error, ")
        if "got" not in message:
            message = f"{message}, got {problem.get('input')!r}"
        # Whole-model checks name their field at the head of the message.
        field = ".".join(str(part) for part in problem["loc"])
        lines.append(f"{model}.{field}: {message}" if field else f"{model}.{message}")
    return "; ".join(lines)

"""Limit specs: frozen pydantic models, validated once when built.

A spec is plain configuration. After construction the hot path trusts it:
how it travels to the server (key tail, units, window plan, encoded
arguments) is worked out once, on first use, by its kind's codec
(`atomlimit._codecs.codec_of`), which keeps it with the instance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Generic, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from atomlimit._errors import InvalidInput
from atomlimit._inputs import MAX_LEASE, MAX_WINDOW, find_zone, show
from atomlimit._money import MAX_DIGITS, MAX_UNITS, Amount, to_units
from atomlimit._rates import parse_rate
from atomlimit._windows import CALENDAR_UNITS, UNIT_LENGTHS, Window

_MS = timedelta(milliseconds=1)
MAX_AMOUNT_TEXT = 64
"""Longest decimal string read as an amount; parsing is checked by length first."""
_MAX_PROBLEMS = 5
"""Problems named in one InvalidInput; a model with thousands of bad fields
would otherwise make a message of any length."""
_MAX_FIELD = 40
_CURRENCY = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,15}")
MAX_WAIT_REPLICAS = 32
"""Most replicas a charge can wait for."""
MAX_WAIT = timedelta(seconds=60)
"""Longest a charge waits for its replicas."""
MAX_NAME = 256
"""Longest limit name, in characters."""
Algorithm = Literal["fixed_window", "gcra", "sliding_log", "sliding_counter"]
_PARSE_OPTIONS = frozenset({"algorithm", "burst", "max_log", "shadow"})
FailurePolicy = Literal["raise", "allow", "deny", "allow_unmetered_spend", "local", "local_spend"]
"""What a limit decides when the server cannot be asked; see docs/failure-policy.md."""
MAX_SHARE_TERMS = 1_000_000
"""Largest numerator and denominator of a ``local_share``: 1/1,000,000 is
the smallest share, and the arithmetic on it stays on small integers."""
_SHARE_TEXT = re.compile(r"(\d{1,7})/(\d{1,7})|[01]?\.\d{1,6}|1")


class Spec(BaseModel, Generic[Amount]):
    """Fields and behaviour shared by every limit spec.

    Generic in the amount type its decisions carry: ``int`` or ``Decimal``.
    """

    # Fraction (local_share) has a schema of its own only from pydantic 2.10;
    # its validator below does all the checking on every version.
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
    """Names the limit in keys; two specs with one name and kind share state."""
    on_backend_error: FailurePolicy = "raise"
    """What a call decides when the server fails or cannot be reached:
    ``"raise"`` (the default) raises [`BackendError`][atomlimit.errors.BackendError];
    ``"deny"`` and ``"allow"`` return a degraded Decision
    (``degraded=True``, ``cause`` set) that denies or admits. A SpendCap
    does not take ``"allow"``: admitting spend nobody records is spelled
    ``"allow_unmetered_spend"``. ``"local"`` (``"local_spend"`` for a
    SpendCap) decides in this process, against ``local_share`` of the
    limit; see docs/failure-policy.md."""
    local_share: Fraction | None = None
    """With ``on_backend_error="local"``: the share of the limit this process
    may admit while the server cannot be asked, ``0 < share <= 1``, e.g.
    ``Fraction(1, 8)`` for 8 processes. A ``Fraction``, a ``Decimal``, the
    int ``1``, or text such as ``"1/8"`` or ``"0.125"``; never a float.
    Terms are at most 1,000,000."""

    _ALLOWING: ClassVar[str] = "allow"
    """How this kind of limit spells admitting without the server."""
    _LOCAL: ClassVar[str] = "local"
    """How this kind of limit spells deciding in-process without the server."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise InvalidInput(_describe(type(self).__name__, err)) from err

    @field_serializer("local_share")
    def _share_text(self, share: Fraction | None) -> str | None:
        # As text, "1/8", the way a policy file writes it, on every pydantic.
        return None if share is None else str(share)

    @field_validator("name", mode="before")
    @classmethod
    def _name_is_text(cls, value: object) -> object:
        if not isinstance(value, str):
            raise ValueError(f"must be a str, got {type(value).__name__}")
        return value

    @field_validator("on_backend_error", mode="plain")
    @classmethod
    def _known_policy(cls, value: object) -> str:
        allowing, local = cls._ALLOWING, cls._LOCAL
        if type(value) is str and value in ("raise", "deny", allowing, local):
            return value
        if type(value) is str and value == "allow":
            raise ValueError(
                "a SpendCap that allows while the server is down lets every spend "
                "through, unrecorded and uncapped, for as long as the outage lasts; "
                "if that is what you want, say so with "
                "on_backend_error='allow_unmetered_spend', or use 'deny' or 'raise'"
            )
        if type(value) is str and value == "local":
            raise ValueError(
                "a SpendCap decided in-process while the server is down spends up to "
                "local_share of the cap in every process, recorded nowhere the fleet "
                "can see; if that is what you want, say so with "
                "on_backend_error='local_spend' and a local_share, or use 'deny' or 'raise'"
            )
        raise ValueError(f"must be 'raise', 'deny', {allowing!r} or {local!r}, got {show(value)}")

    @field_validator("local_share", mode="plain")
    @classmethod
    def _bounded_share(cls, value: object) -> Fraction | None:
        if value is None:
            return None
        share = _share(value)
        if share is None or not 0 < share <= 1:
            raise ValueError(
                "must be a Fraction, a Decimal, the int 1 or text like '1/8' or '0.125', "
                f"above 0 and at most 1, with terms up to {MAX_SHARE_TERMS:,}, "
                f"got {show(value)}"
            )
        return share

    @model_validator(mode="after")
    def _share_fits_policy(self) -> Self:
        local = self.on_backend_error == self._LOCAL
        if local and self.local_share is None:
            raise ValueError(
                f"local_share: on_backend_error={self._LOCAL!r} needs the share of the "
                "limit this process may admit while the server is down, e.g. "
                "local_share=Fraction(1, 8) when 8 processes share the limit"
            )
        if not local and self.local_share is not None:
            raise ValueError(
                f"local_share: only on_backend_error={self._LOCAL!r} uses a local_share, "
                f"got on_backend_error={self.on_backend_error!r}"
            )
        share = self.local_share
        if share is not None:
            for field, whole in self._local_wholes():
                if local_part(whole, share) < 1:
                    raise ValueError(
                        f"local_share: {share} of {field} {whole} leaves this "
                        "process less than 1 unit, so every local decision would deny; "
                        "use on_backend_error='deny', or a larger share"
                    )
        return self

    def _local_wholes(self) -> list[tuple[str, int]]:
        """The amounts, in units, that a local share is taken of."""
        return []


class _Windowed(Spec[Amount], Generic[Amount]):
    """A spec whose usage is counted per window."""

    window: Window
    """A calendar unit in ``tz``, or a fixed ``timedelta`` aligned to the epoch."""
    tz: str = "UTC"
    """IANA time zone that calendar windows follow."""

    @field_validator("window", mode="plain")
    @classmethod
    def _known_window(cls, value: object) -> Window:
        if isinstance(value, timedelta):
            # Whole milliseconds, the unit the server keeps expiries in, like
            # every other duration here; at most a leap year, so every planned
            # boundary stays far below 2**53 µs.
            if not _MS <= value <= MAX_WINDOW or value % _MS:
                raise ValueError(
                    "a timedelta window must be whole milliseconds, at least 1 ms and at "
                    f"most {MAX_WINDOW.days} days, got {show(value)}"
                )
            return value
        if isinstance(value, str) and value in CALENDAR_UNITS:
            return value
        units = ", ".join(CALENDAR_UNITS)
        raise ValueError(f"must be one of {units} or a datetime.timedelta, got {show(value)}")

    @field_validator("tz", mode="plain")
    @classmethod
    def _known_zone(cls, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be an IANA time zone name, got {show(value)}")
        if find_zone(value) is None:
            raise ValueError(f"unknown IANA time zone {show(value)}")
        return value

    @model_validator(mode="after")
    def _zone_fits_window(self) -> Self:
        if isinstance(self.window, timedelta) and self.tz != "UTC":
            raise ValueError(
                "tz: a timedelta window is aligned to the Unix epoch and takes no "
                f"time zone, got {self.tz!r}"
            )
        return self


class RateLimit(_Windowed[int]):
    """At most ``limit`` units of cost per window, per subject.

    ``algorithm`` chooses how the window is kept:

    - ``"fixed_window"`` (default): calendar-aligned windows in ``tz``.
    - ``"gcra"``: a smooth rate of ``limit`` per ``window`` with bursts of up
      to ``burst`` (default ``limit``); O(1) memory.
    - ``"sliding_log"``: exact over any ``window``-long span; O(limit) memory,
      so limits above ``max_log`` are refused.
    - ``"sliding_counter"``: approximate over any ``window``-long span; O(1).

    The last three need a fixed length: a ``timedelta``, or ``"second"`` to
    ``"week"`` taken as that many seconds.

    >>> RateLimit(name="enrichment", limit=1000, window="day", tz="Australia/Sydney").limit
    1000
    """

    limit: Annotated[StrictInt, Field(gt=0, le=MAX_UNITS)]
    """Most cost admitted per window (for gcra: the sustained rate per window)."""
    algorithm: Algorithm = "fixed_window"
    """How the window is kept; see the class docstring."""
    burst: Annotated[StrictInt, Field(gt=0, le=MAX_UNITS)] | None = None
    """gcra only: the most cost admitted at once from idle. Defaults to ``limit``."""
    max_log: Annotated[StrictInt, Field(gt=0)] = 10_000
    """sliding_log only: the largest ``limit`` accepted."""
    shadow: StrictBool = False
    """Count and report, but always allow: try a new limit on live traffic."""

    @classmethod
    def parse(cls, rate: str, *, name: str | None = None, **options: Any) -> RateLimit:
        """A RateLimit from a rate string: ``"100/minute"``, ``"5/30s"``,
        ``"10 per 2 hours"``, ``"1000/day@Australia/Sydney"``.

        ``name`` defaults to the rate in its shortest spelling, so two
        strings that say the same rate share state. ``options`` are the other
        fields (``algorithm``, ``burst``, ``max_log``, ``shadow``). A bad
        string raises InvalidInput naming the position of the error; the
        grammar is in docs/decorators.md.

        >>> RateLimit.parse("5/30s").window
        datetime.timedelta(seconds=30)
        """
        unknown = sorted(set(options) - _PARSE_OPTIONS)
        if unknown:
            allowed = ", ".join(sorted(_PARSE_OPTIONS))
            raise InvalidInput(
                f"RateLimit.parse takes {allowed} besides the rate, got {show(unknown[0])}"
            )
        parsed = parse_rate(rate)
        return cls(
            name=parsed.text if name is None else name,
            limit=parsed.limit,
            window=parsed.window,
            tz=parsed.tz,
            **options,
        )

    def _local_wholes(self) -> list[tuple[str, int]]:
        wholes = [("limit", self.limit)]
        if self.burst is not None:
            wholes.append(("burst", self.burst))
        return wholes

    @model_validator(mode="after")
    def _algorithm_fits(self) -> Self:
        if self.max_log > MAX_UNITS:
            raise ValueError(
                f"max_log: must be an int between 1 and {MAX_UNITS}, got {show(self.max_log)}"
            )
        if self.algorithm == "fixed_window":
            if self.burst is not None:
                raise ValueError("burst: only the gcra algorithm takes a burst")
            return self
        if self.window == "month":
            raise ValueError(f"window: {self.algorithm} needs a fixed length, not a month")
        if self.tz != "UTC":
            raise ValueError(
                f"tz: {self.algorithm} slides over a fixed length and takes no time zone"
            )
        if self.burst is not None and self.algorithm != "gcra":
            raise ValueError("burst: only the gcra algorithm takes a burst")
        if self.algorithm == "sliding_log" and self.shadow:
            raise ValueError(
                "shadow: a shadow sliding_log would record every request over the limit, "
                "without bound; try the limit in shadow mode as sliding_counter or gcra"
            )
        if self.algorithm == "gcra" and _length(self.window) < timedelta(microseconds=self.limit):
            raise ValueError(
                f"limit: gcra spaces requests at least 1 us apart, and {self.limit} per "
                f"{self.window} is faster; count in a coarser unit of cost, or use another "
                "algorithm"
            )
        if self.algorithm == "sliding_log" and self.limit > self.max_log:
            raise ValueError(
                f"limit: a sliding_log keeps one entry per unit, and {self.limit} is above "
                f"max_log={self.max_log}; large sorted sets stall the server for everyone. "
                "Use sliding_counter or gcra, or raise max_log knowingly"
            )
        return self


class SpendCap(_Windowed[Decimal]):
    """At most ``limit`` of a currency spent per window, per subject, exactly.

    Amounts are ``Decimal`` (or ``int``) and are stored as integer multiples
    of ``unit``; an amount finer than the unit is refused, never rounded.
    Reservations hold part of the cap until they are settled or released.

    >>> SpendCap(name="ai", limit=Decimal("100.00"), currency="AUD", window="day").limit
    Decimal('100.00')
    """

    limit: Decimal
    """Most spend admitted per window."""
    currency: str
    """Currency code or unit name, e.g. ``"AUD"``; part of the key."""
    unit: Decimal = Decimal("0.000001")
    """Smallest amount tracked: a power of ten, from 1 down to 1E-18."""
    shadow: StrictBool = False
    """Count and report, but always allow: try a new cap on live traffic."""
    wait_replicas: Annotated[StrictInt, Field(ge=0, le=MAX_WAIT_REPLICAS)] = 0
    """Replicas that must have a charge before it returns (Redis ``WAIT``); 0
    returns as soon as the primary has it. See docs/failure-modes.md."""
    wait_timeout: timedelta = timedelta(seconds=1)
    """How long a charge waits for ``wait_replicas``; past it, the charge
    raises ``BackendError(applied="unknown")`` with an id to replay it."""

    @field_validator("wait_timeout", mode="plain")
    @classmethod
    def _bounded_wait(cls, value: object) -> timedelta:
        # Never 0: WAIT with no timeout blocks for as long as a replica is down.
        if not isinstance(value, timedelta) or not _MS <= value <= MAX_WAIT or value % _MS:
            raise ValueError(
                "must be a timedelta of whole milliseconds, at least 1 ms and at most "
                f"{MAX_WAIT.seconds} s, got {show(value)}"
            )
        return value

    _ALLOWING: ClassVar[str] = "allow_unmetered_spend"
    _LOCAL: ClassVar[str] = "local_spend"

    def _local_wholes(self) -> list[tuple[str, int]]:
        try:
            return [("limit", to_units(self.limit, -self.unit.adjusted(), "limit"))]
        except InvalidInput:
            return []  # _limit_in_units names the problem

    @field_validator("limit", mode="plain")
    @classmethod
    def _exact_limit(cls, value: object) -> Decimal:
        # Only the type and sign are checked here: the range, which depends
        # on the unit, is checked by magnitude in _limit_in_units.
        if isinstance(value, str):
            if len(value) > MAX_AMOUNT_TEXT:
                raise ValueError(
                    f"a decimal string must be at most {MAX_AMOUNT_TEXT} characters, "
                    f"got {show(value)}"
                )
            try:
                value = Decimal(value)
            except ArithmeticError as err:
                raise ValueError(f"not a decimal number: {show(value)}") from err
        if type(value) is int:
            # Converting a huge int to Decimal is slow; none above 2**53 fits.
            if value.bit_length() > MAX_UNITS.bit_length():
                raise ValueError(
                    f"is above the exact range of {MAX_UNITS} units, got {show(value)}"
                )
            value = Decimal(value)
        if not isinstance(value, Decimal):
            raise ValueError(
                f"must be a Decimal, int or decimal string, not {type(value).__name__}"
            )
        if not value.is_finite() or value.is_signed() or value.is_zero():
            raise ValueError(f"must be a finite amount above 0, got {show(value)}")
        return value

    @field_validator("currency", mode="plain")
    @classmethod
    def _plain_currency(cls, value: object) -> str:
        if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
            raise ValueError(
                f"must be 1-16 letters, digits, _ or -, starting with a letter, got {show(value)}"
            )
        return value

    @field_validator("unit", mode="plain")
    @classmethod
    def _power_of_ten(cls, value: object) -> Decimal:
        # By exponent and digits, never normalize(): that rounds to the
        # context and overflows on Decimal("1E+999999999").
        if (
            isinstance(value, Decimal)
            and value.is_finite()
            and not value.is_signed()
            and not value.is_zero()
            and -18 <= value.adjusted() <= 0
        ):
            digits = value.as_tuple().digits
            if len(digits) <= MAX_DIGITS and digits[0] == 1 and not any(digits[1:]):
                return value
        raise ValueError(f"must be a Decimal power of ten from 1 to 1E-18, got {show(value)}")

    @model_validator(mode="after")
    def _limit_in_units(self) -> Self:
        try:
            to_units(self.limit, -self.unit.adjusted(), "limit")
        except InvalidInput as err:
            raise ValueError(str(err)) from None
        return self


class Concurrency(Spec[int]):
    """At most ``limit`` leases held at once, per subject: an in-flight cap.

    A lease lasts ``lease`` unless renewed; a holder that dies frees its slot
    when its lease runs out.

    >>> Concurrency(name="openai", limit=10, lease=timedelta(seconds=60)).limit
    10
    """

    limit: Annotated[StrictInt, Field(gt=0, le=MAX_UNITS)]
    """Most leases held at once."""
    lease: timedelta = timedelta(seconds=60)
    """How long a lease lasts unless renewed or released."""

    def _local_wholes(self) -> list[tuple[str, int]]:
        return [("limit", self.limit)]

    @field_validator("lease", mode="plain")
    @classmethod
    def _positive_lease(cls, value: object) -> timedelta:
        # At most a leap year, so a lease's expiry stays far below 2**53 µs.
        if not isinstance(value, timedelta) or not _MS <= value <= MAX_LEASE:
            raise ValueError(
                f"must be a timedelta of at least 1 ms and at most {MAX_LEASE.days} days, "
                f"got {show(value)}"
            )
        return value


@dataclass(frozen=True, slots=True)
class Hit(Generic[Amount]):
    """One limit to charge in [`acquire`][atomlimit.Limiter.acquire].

    ``hold`` makes the hit a reservation of ``cost`` as an estimate, held for that long and
    settled or released later through ``Acquired.reservations``: on a
    [`SpendCap`][atomlimit.SpendCap] it is held beside the spend; on a
    [`RateLimit`][atomlimit.RateLimit] (fixed window, GCRA or sliding counter; a sliding log
    refuses) it is charged into the count at once, like a hit, until settled to the actual.
    See docs/reservations.md. A [`Concurrency`][atomlimit.Concurrency] hit takes a lease of
    the spec's length.
    """

    limit: Spec[Amount]
    subject: str
    cost: Amount | int = 1
    hold: timedelta | None = None


def local_part(whole: int, share: Fraction) -> int:
    """``floor(whole * share)``: what one process may use of ``whole`` units."""
    return whole * share.numerator // share.denominator


def _share(value: object) -> Fraction | None:
    """A share as a Fraction with bounded terms, or None; checked by size first."""
    if type(value) is int:
        return Fraction(1) if value == 1 else None
    if type(value) is Fraction:
        top, bottom = value.numerator, value.denominator
    elif type(value) is Decimal:
        # By digits and exponent before any arithmetic: Decimal("1E+999999")
        # would otherwise make an integer of a million digits.
        if not value.is_finite() or len(value.as_tuple().digits) > 7:
            return None
        if value.adjusted() > 0 or int(value.as_tuple().exponent) < -6:
            return None
        fraction = Fraction(value)
        top, bottom = fraction.numerator, fraction.denominator
    elif type(value) is str:
        match = _SHARE_TEXT.fullmatch(value)
        if match is None:
            return None
        if match.group(1) is not None:
            top, bottom = int(match.group(1)), int(match.group(2))
            if bottom == 0:
                return None
        else:
            fraction = Fraction(value)
            top, bottom = fraction.numerator, fraction.denominator
    else:
        return None
    if not (0 <= top <= MAX_SHARE_TERMS and 0 < bottom <= MAX_SHARE_TERMS):
        return None
    return Fraction(top, bottom)


def _length(window: Window) -> timedelta:
    return window if isinstance(window, timedelta) else UNIT_LENGTHS.get(window, timedelta.max)


def _describe(model: str, err: ValidationError) -> str:
    """One line per problem, each naming the field: ``RateLimit.limit: ...``."""
    lines = []
    problems = err.errors(include_url=False)
    for problem in problems[:_MAX_PROBLEMS]:
        message = problem["msg"].removeprefix("Value error, ")
        field = ".".join(_field_name(part) for part in problem["loc"])
        # A whole-model check's input is every field: its message says enough.
        if field and "got" not in message:
            message = f"{message}, got {show(problem.get('input'))}"
        # Whole-model checks name their field at the head of the message.
        lines.append(f"{model}.{field}: {message}" if field else f"{model}.{message}")
    if len(problems) > _MAX_PROBLEMS:
        lines.append(f"and {len(problems) - _MAX_PROBLEMS} more")
    return "; ".join(lines)


def _field_name(part: object) -> str:
    # An unknown keyword is named as given, and it may be any length.
    text = str(part)
    return text if len(text) <= _MAX_FIELD else show(text)

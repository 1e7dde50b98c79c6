"""How the ``RateLimit-Policy`` and ``RateLimit`` fields are built from decisions.

The public entry is [`atomlimit.headers.rate_limit_headers`][atomlimit.headers.rate_limit_headers],
and [`atomlimit.Decision.headers`][atomlimit.Decision.headers] comes here directly: a Decision is
read only through `Decided`, so this module sits below
`atomlimit.decision`. Pure: the only clock read is ``now``'s default.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from atomlimit._errors import InvalidInput
from atomlimit._windows import UNIT_LENGTHS, to_us, window_at
from atomlimit.specs import Concurrency, RateLimit, Spec, SpendCap

POLICY = "RateLimit-Policy"
RATE_LIMIT = "RateLimit"
RETRY_AFTER = "Retry-After"

MAX_INTEGER = 999_999_999_999_999
"""The largest structured-field Integer (15 digits). A limit can reach 2**53 - 1,
which has 16, so larger quotas and remainders are reported as this: a lower
figure than the truth, which the draft allows a server to advertise."""

_SECOND_US = 1_000_000
_PRINTABLE = frozenset(chr(code) for code in range(0x20, 0x7F)) - {"%"}


class Decided(Protocol):
    """What the fields read of a [`Decision`][atomlimit.Decision]."""

    @property
    def allowed(self) -> bool: ...
    @property
    def remaining(self) -> Any: ...
    @property
    def limit(self) -> Any: ...
    @property
    def limit_source(self) -> str: ...
    @property
    def spec(self) -> Spec[Any] | None: ...
    @property
    def reset_at(self) -> datetime: ...
    @property
    def retry_after(self) -> timedelta | None: ...


def checked_fields(decisions: Sequence[Decided], now: datetime | None) -> dict[str, str]:
    """The fields for ``decisions``, after checking that each has a spec and
    that ``now`` (default: the local clock) is an aware datetime."""
    for decision in decisions:
        if decision.spec is None:
            raise InvalidInput(
                "rate_limit_headers needs decisions from a limiter: this one has no spec to "
                "describe its policy"
            )
    now_us = int(time.time() * _SECOND_US) if now is None else _now_us(now)
    return header_fields(decisions, now_us)


def header_fields(decisions: Iterable[Decided], now_us: int) -> dict[str, str]:
    """The fields for decisions a limiter made, unchecked (the middleware's own call).

    Every decision must carry its spec; ``now_us`` is epoch microseconds.
    """
    policies = []
    limits = []
    retry: int | None = None
    for decision in decisions:
        spec: Any = decision.spec
        # An override's quota is the subject's own: never kept for the spec.
        own = decision.limit_source == "override"
        kept = None if own else _POLICIES.get(id(spec))
        if kept is not None and kept[0] is spec:
            policy = kept[1]
        else:
            policy = _string(spec.name) + _policy_params(spec, decision)
            if not own and _fixed_policy(spec):
                if len(_POLICIES) >= _POLICIES_KEPT:
                    _POLICIES.clear()
                _POLICIES[id(spec)] = (spec, policy)
        policies.append(policy)
        limits.append(_string(spec.name) + _limit_params(spec, decision, now_us))
        if not decision.allowed and decision.retry_after is not None:
            seconds = retry_after_seconds(decision.retry_after)
            retry = seconds if retry is None else max(retry, seconds)
    fields = {POLICY: ", ".join(policies), RATE_LIMIT: ", ".join(limits)}
    if retry is not None:
        fields[RETRY_AFTER] = str(retry)
    return fields


# A spec's policy item is the same for every decision unless its window is
# a calendar window whose length varies (months, days across DST), so the
# rest are made once: a middleware sends one on every response. Keyed by
# identity, since hashing a spec costs more than the item; the entry keeps
# its spec alive, so the id cannot pass to another while it is kept.
_POLICIES: dict[int, tuple[Spec[Any], str]] = {}
_POLICIES_KEPT = 256


def _fixed_policy(spec: Any) -> bool:
    """Whether the spec's window has one length for every decision."""
    if isinstance(spec, Concurrency) or isinstance(spec.window, timedelta):
        return True
    fixed = isinstance(spec, SpendCap) or spec.algorithm == "fixed_window"
    return bool(spec.window != "month" and (spec.tz == "UTC" or not fixed))


def retry_after_seconds(wait: timedelta) -> int:
    """``wait`` in whole seconds, rounded up: a client that waits that long is
    never early. At least 1, since a denial always has something to wait for."""
    return max(1, _ceil_seconds(wait // timedelta(microseconds=1)))


def _now_us(now: object) -> int:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise InvalidInput(f"now must be an aware datetime, got {type(now).__name__}")
    return to_us(now)


def _policy_params(spec: Spec[Any], decision: Decided) -> str:
    # The quota is the limit in force: a subject's override when one applied.
    limit = decision.limit if decision.limit_source == "override" else _spec_limit(spec)
    if isinstance(spec, SpendCap):
        scale = _quota_scale(limit, spec.unit)
        quota = _integer(_count(limit, scale))
        return (
            f";q={quota};qu={_string(_unit_name(scale, spec.currency))};w={_window(spec, decision)}"
        )
    if isinstance(spec, Concurrency):
        # In flight at once: no window, and a unit the draft registers.
        return f';q={_integer(limit)};qu="concurrent-requests"'
    assert isinstance(spec, RateLimit)
    # A RateLimit counts requests (the draft's default unit) unless the
    # caller charges another cost, which the limit cannot know.
    return f";q={_integer(limit)};w={_window(spec, decision)}"


def _spec_limit(spec: Spec[Any]) -> Any:
    assert isinstance(spec, RateLimit | SpendCap | Concurrency)
    return spec.limit


def _limit_params(spec: Spec[Any], decision: Decided, now_us: int) -> str:
    if isinstance(spec, SpendCap):
        limit = decision.limit if decision.limit_source == "override" else spec.limit
        left = _integer(_count(decision.remaining, _quota_scale(limit, spec.unit)))
    else:
        left = _integer(decision.remaining)
    retry = decision.retry_after
    if not decision.allowed and retry is not None:
        # Denied: nothing more passes until the retry, so that is the
        # effective window; Retry-After, the longest of these, then never
        # points before the end of one, as the draft's section 6 asks.
        return f";r={left};t={retry_after_seconds(retry)}"
    if isinstance(spec, Concurrency):
        # A slot frees when some lease ends, not at a time the limit knows
        # while it is granting.
        return f";r={left}"
    until = to_us(decision.reset_at) - now_us
    return f";r={left};t={max(0, _ceil_seconds(until))}"


def _window(spec: RateLimit | SpendCap, decision: Decided) -> int:
    """The window's length in whole seconds, rounded up, at least 1.

    A calendar window in a fixed window counts the window this decision fell
    in: a Sydney day that springs forward is 82800, a February 2419200. The
    sliding algorithms take a unit as its fixed length.
    """
    window = spec.window
    if isinstance(window, timedelta):
        return max(1, _ceil_seconds(window // timedelta(microseconds=1)))
    if _fixed_policy(spec):
        return int(UNIT_LENGTHS[window].total_seconds())
    end = to_us(decision.reset_at)
    start, end = window_at(window, ZoneInfo(spec.tz), end - 1)
    return _ceil_seconds(end - start)


def _quota_scale(limit: Decimal, unit: Decimal) -> int:
    """The decimal places of the coarsest unit in which ``limit`` is whole.

    From 0 (whole currency units) down to the cap's own unit, so a cap of
    ``100.00`` is advertised as ``q=100``, one of ``0.37`` as 37 of
    ``0.01``. Read from the digits, never by dividing.
    """
    _, digits, exponent = limit.as_tuple()
    assert isinstance(exponent, int)  # the spec holds finite amounts only
    places = max(0, -exponent)
    kept = len(digits)
    while places > 0 and kept > 1 and digits[kept - 1] == 0:
        places -= 1
        kept -= 1
    return min(places, -unit.adjusted())


def _count(amount: Decimal, places: int) -> int:
    """``amount`` counted in units of ``10**-places``, rounded down.

    Rounding down reports a little less left than there is, never more.
    """
    return int(amount.scaleb(places).to_integral_value(rounding=ROUND_FLOOR))


def _unit_name(places: int, currency: str) -> str:
    if places == 0:
        return currency
    return f"{Decimal(1).scaleb(-places):f} {currency}"


def _integer(value: int) -> int:
    return min(value, MAX_INTEGER)


def _ceil_seconds(us: int) -> int:
    return -(-us // _SECOND_US)


def _string(text: str) -> str:
    """``text`` as a structured-field String.

    A String holds printable ASCII only, so any other character (and ``%``,
    to keep the mapping one-to-one) is written as its UTF-8 bytes in
    ``%XX`` form; ``"`` and ``\\`` are escaped as the RFC requires.
    """
    if all(char in _PRINTABLE for char in text):
        plain = text
    else:
        plain = "".join(
            char
            if char in _PRINTABLE
            else "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
            for char in text
        )
    return '"' + plain.replace("\\", "\\\\").replace('"', '\\"') + '"'

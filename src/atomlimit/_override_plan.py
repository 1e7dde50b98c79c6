"""Per-subject overrides: validating one, and planning its calls (pure).

An override replaces a limit's ``limit`` (and a gcra's ``burst``) for one
subject, in a hash kept in the subject's own slot (``lua/lib/override.lua``),
which every decision script reads in the same call. This module checks the
caller's values and plans ``lua/override.lua``; the shells only send.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from atomlimit import _keys
from atomlimit._codecs import Codec, Gcra, codec_of, length_us
from atomlimit._errors import InvalidInput
from atomlimit._inputs import MAX_TTL, check_int, show
from atomlimit._money import MAX_UNITS, to_units
from atomlimit._runner_steps import Call
from atomlimit._scripts import script
from atomlimit._windows import from_us, to_us
from atomlimit.specs import RateLimit, Spec, SpendCap

_US = timedelta(microseconds=1)
MAX_LISTED = 10_000
"""Most overrides one ``list`` call returns."""


@dataclass(frozen=True, slots=True)
class Override:
    """A subject's override of a limit, as stored on the server."""

    limit: int | Decimal
    """The limit in force for the subject: an int, or a Decimal for a SpendCap."""
    burst: int | None
    """A gcra limit's burst; None for other algorithms."""
    expires: datetime | None
    """When it lapses (aware, UTC); None: never."""


def _units(spec: Spec[Any], value: object, what: str) -> int:
    if isinstance(spec, SpendCap):
        if not isinstance(value, Decimal):
            raise InvalidInput(f"{what}: a SpendCap's override is a Decimal, got {show(value)}")
        units = to_units(value, -spec.unit.adjusted(), what)
        if units <= 0:
            raise InvalidInput(f"{what} must be above zero, got {value}")
        return units
    return check_int(value, what, 1, MAX_UNITS)


def _expires_us(expires: object, now_us: int) -> str:
    if expires is None:
        return ""
    if isinstance(expires, timedelta):
        if not timedelta(0) < expires <= MAX_TTL:
            raise InvalidInput(f"expires must be above zero and at most {MAX_TTL.days} days")
        return str(now_us + expires // _US)
    if isinstance(expires, datetime):
        if expires.tzinfo is None:
            raise InvalidInput("expires must be an aware datetime")
        at = to_us(expires)
        if not now_us < at <= now_us + MAX_TTL // _US:
            raise InvalidInput(
                f"expires must be in the future and within {MAX_TTL.days} days, got {expires}"
            )
        return str(at)
    raise InvalidInput(f"expires must be a datetime or a timedelta, got {show(expires)}")


def plan_set(
    spec: Spec[Any],
    base: str,
    limit: object,
    burst: object,
    expires: object,
    t: int,
    client_now: int | str,
) -> Call:
    """Plan storing an override of ``spec`` under the base key ``base``."""
    codec: Codec[Any] = codec_of(spec)
    units = _units(spec, limit, "limit")
    burst_units: int | None = None
    if burst is not None:
        if not isinstance(codec, Gcra):
            raise InvalidInput("burst: only a gcra RateLimit takes a burst")
        burst_units = check_int(burst, "burst", 1, MAX_UNITS)
    if isinstance(spec, RateLimit) and spec.algorithm == "sliding_log" and units > spec.max_log:
        raise InvalidInput(f"limit: a sliding_log keeps one entry per unit; at most {spec.max_log}")
    if isinstance(codec, Gcra):
        length = length_us(spec)
        if length // units < 1:
            raise InvalidInput("limit: gcra spaces requests at least 1 us apart")
    args = (client_now, "set", *codec.override_args(units, burst_units), _expires_us(expires, t))
    keys = (_keys.override_key(base), *codec.marked_keys(base, t))
    return Call(script("override"), keys, args, _done, True)


def plan_get(spec: Spec[Any], base: str, client_now: int | str) -> Call:
    """Plan reading the override in force, read as an `Override` or None."""
    codec = codec_of(spec)
    args = (client_now, "get", "", "", "", "")

    def read(reply: Sequence[Any]) -> Override | None:
        if not reply:
            return None
        limit, burst, _, expires = ((v.decode() if isinstance(v, bytes) else str(v)) for v in reply)
        return Override(
            codec.amount(int(limit)),
            int(burst) if burst and isinstance(codec, Gcra) else None,
            from_us(int(expires)) if expires else None,
        )

    return Call(script("override"), (_keys.override_key(base),), args, read)


def plan_delete(spec: Spec[Any], base: str, t: int, client_now: int | str) -> Call:
    """Plan deleting the override: read as whether one was in force."""
    codec = codec_of(spec)
    keys = (_keys.override_key(base), *codec.marked_keys(base, t))
    return Call(script("override"), keys, (client_now, "del", "", "", "", ""), _deleted, True)


def check_count(count: object) -> int:
    """A listing's bound, checked."""
    return check_int(count, "count", 1, MAX_LISTED)


def subject_of(key: str) -> str:
    """The subject's encoded part of an override's key."""
    start = key.index(_keys.SUBJECT_TAG) + len(_keys.SUBJECT_TAG)
    return key[start : key.index("}", start)]


def _done(reply: object) -> None:
    return None


def _deleted(reply: object) -> bool:
    return reply == 1

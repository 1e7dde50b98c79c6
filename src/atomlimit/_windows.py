"""Window arithmetic: which window an instant falls in.

Lua inside Redis has no calendar, so the client works out window boundaries
with `zoneinfo` and the script picks the one that contains the server's
clock. Everything here is pure: instants are integer microseconds since the
Unix epoch, so the values cross to Lua exactly.

A calendar window starts whenever the wall clock in its time zone shows a
boundary time (a new second, minute, hour, day, ISO week or month), or jumps
over one in a DST gap. That one rule gives a Sydney day of 23 hours when
clocks spring forward and 25 hours when they fall back, and it keeps the
repeated hour of a fall-back as two real hours rather than one long one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, TypeAlias
from zoneinfo import ZoneInfo

CalendarUnit: TypeAlias = Literal["second", "minute", "hour", "day", "week", "month"]
Window: TypeAlias = CalendarUnit | timedelta
CALENDAR_UNITS: tuple[CalendarUnit, ...] = ("second", "minute", "hour", "day", "week", "month")

Bounds: TypeAlias = tuple[int, int, int, int]
"""Start of the previous window, start and end of the current one, end of the next."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
UNIT_LENGTHS = {
    # The length of each unit but the month; also the fixed length that the
    # sliding algorithms take a unit to mean.
    "second": timedelta(seconds=1),
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (honours ``fold``)."""
    return (moment - _EPOCH) // _US


def from_us(us: int) -> datetime:
    """The aware UTC datetime of an epoch-microsecond instant, exactly."""
    return _EPOCH + timedelta(microseconds=us)


def window_at(window: Window, tz: ZoneInfo, t_us: int) -> tuple[int, int]:
    """Return ``(start, end)`` in epoch microseconds of the window holding ``t_us``."""
    if isinstance(window, timedelta):
        length = window // _US
        start = t_us - t_us % length
        return start, start + length
    wall = from_us(t_us).astimezone(tz).replace(tzinfo=None)
    floor = _floor_wall(wall, window)
    candidates: list[int] = []
    for step in (-1, 0, 1, 2):
        candidates.extend(_instants_showing(_step_wall(floor, window, step), tz))
    start = max(c for c in candidates if c <= t_us)
    end = min(c for c in candidates if c > t_us)
    return start, end


def bounds_around(window: Window, tz: ZoneInfo, t_us: int) -> Bounds:
    """The previous, current and next windows around ``t_us``, as four instants.

    Sending three windows lets the script absorb a client clock that is a
    little off, or a request that crosses a boundary in flight.
    """
    start, end = window_at(window, tz, t_us)
    previous, _ = window_at(window, tz, start - 1)
    _, following = window_at(window, tz, end)
    return previous, start, end, following


def _floor_wall(wall: datetime, unit: CalendarUnit) -> datetime:
    if unit == "second":
        return wall.replace(microsecond=0)
    if unit == "minute":
        return wall.replace(second=0, microsecond=0)
    if unit == "hour":
        return wall.replace(minute=0, second=0, microsecond=0)
    day = wall.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _step_wall(wall: datetime, unit: CalendarUnit, steps: int) -> datetime:
    if unit != "month":
        return wall + steps * UNIT_LENGTHS[unit]
    months = wall.year * 12 + wall.month - 1 + steps
    return wall.replace(year=months // 12, month=months % 12 + 1)


def _instants_showing(wall: datetime, tz: ZoneInfo) -> list[int]:
    """Instants at which the wall clock in ``tz`` shows ``wall``.

    Usually one; two inside a fall-back fold; and for a wall time skipped by a
    spring-forward gap, the instant the gap ends, which is when the clock
    jumps over it.
    """
    first = to_us(wall.replace(tzinfo=tz, fold=0))
    second = to_us(wall.replace(tzinfo=tz, fold=1))
    if first == second:
        return [first]
    if first < second:
        return [first, second]
    # In a gap, fold=0 reads the wall time with the offset from before the
    # transition and lands after it, fold=1 with the offset from after and
    # lands before it, so the transition lies in (second, first].
    return [_transition_between(second, first, tz)]


def _transition_between(before_us: int, after_us: int, tz: ZoneInfo) -> int:
    """The first whole second in ``(before_us, after_us]`` with the later offset."""
    target = from_us(after_us).astimezone(tz).utcoffset()
    low, high = before_us // 1_000_000, -(-after_us // 1_000_000)
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == target:
            high = middle
        else:
            low = middle
    return high * 1_000_000


class WindowPlan:
    """Planned boundaries for one window kind, reused until the clock leaves them.

    Recomputing zoneinfo boundaries costs tens of microseconds; a window lasts
    at least a millisecond, so nearly every call reuses the last plan. The
    plan is one tuple, swapped whole, so threads never see half of one.
    """

    __slots__ = ("_plan", "_tz", "_window")

    def __init__(self, window: Window, tz: ZoneInfo) -> None:
        self._window = window
        self._tz = tz
        self._plan: tuple[int, int, Bounds] = (0, 0, (0, 0, 0, 0))

    def bounds(self, t_us: int) -> Bounds:
        """The boundaries to send for a call made at ``t_us``."""
        start, end, bounds = self._plan
        if start <= t_us < end:
            return bounds
        bounds = bounds_around(self._window, self._tz, t_us)
        self._plan = (bounds[1], bounds[2], bounds)
        return bounds

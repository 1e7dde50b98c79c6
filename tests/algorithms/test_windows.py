"""Calendar and fixed windows, computed without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomlimit._windows import (
    CALENDAR_UNITS,
    WindowPlan,
    bounds_around,
    from_us,
    to_us,
    window_at,
)

SYDNEY = ZoneInfo("Australia/Sydney")
HOUR_US = 3_600_000_000
# Zones with DST, half-hour DST (Lord Howe), DST at midnight (Santiago,
# Havana), odd offsets (Chatham, Kathmandu), a skipped day (Apia) and none.
ZONES = [
    "UTC",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "America/New_York",
    "America/Santiago",
    "America/Havana",
    "Pacific/Chatham",
    "Asia/Kathmandu",
    "Pacific/Apia",
    "Europe/London",
]

instants = st.integers(
    min_value=to_us(datetime(1995, 1, 1, tzinfo=UTC)),
    max_value=to_us(datetime(2045, 1, 1, tzinfo=UTC)),
)


def sydney(*args: int, fold: int = 0) -> int:
    return to_us(datetime(*args, tzinfo=SYDNEY, fold=fold))  # type: ignore[misc]


def test_day_window_follows_sydney_dst() -> None:
    spring = window_at("day", SYDNEY, sydney(2025, 10, 5, 12))
    autumn = window_at("day", SYDNEY, sydney(2026, 4, 5, 12))
    ordinary = window_at("day", SYDNEY, sydney(2026, 1, 15, 12))

    assert spring[1] - spring[0] == 23 * HOUR_US
    assert autumn[1] - autumn[0] == 25 * HOUR_US
    assert ordinary[1] - ordinary[0] == 24 * HOUR_US
    assert from_us(spring[0]).astimezone(SYDNEY).replace(tzinfo=None) == datetime(2025, 10, 5)
    assert from_us(autumn[1]).astimezone(SYDNEY).replace(tzinfo=None) == datetime(2026, 4, 6)


def test_repeated_hour_of_a_fall_back_is_two_real_hours() -> None:
    first = window_at("hour", SYDNEY, sydney(2026, 4, 5, 2, 30, fold=0))
    second = window_at("hour", SYDNEY, sydney(2026, 4, 5, 2, 30, fold=1))

    assert first[1] == second[0]
    assert first[1] - first[0] == HOUR_US
    assert second[1] - second[0] == HOUR_US


def test_hour_skipped_by_spring_forward_starts_at_the_jump() -> None:
    before = window_at("hour", SYDNEY, sydney(2025, 10, 5, 1, 30))
    after = window_at("hour", SYDNEY, sydney(2025, 10, 5, 3, 30))

    assert before[1] == after[0] == sydney(2025, 10, 5, 3)
    assert before[1] - before[0] == HOUR_US


def test_week_starts_on_monday_and_month_on_the_first() -> None:
    moment = to_us(datetime(2026, 11, 25, 10, tzinfo=UTC))  # a Wednesday

    week = window_at("week", ZoneInfo("UTC"), moment)
    month = window_at("month", SYDNEY, moment)

    assert from_us(week[0]) == datetime(2026, 11, 23, tzinfo=UTC)
    assert from_us(week[1]) == datetime(2026, 11, 30, tzinfo=UTC)
    assert from_us(month[0]).astimezone(SYDNEY).replace(tzinfo=None) == datetime(2026, 11, 1)
    assert from_us(month[1]).astimezone(SYDNEY).replace(tzinfo=None) == datetime(2026, 12, 1)


def test_fixed_window_is_aligned_to_the_epoch() -> None:
    length = timedelta(seconds=90)
    start, end = window_at(length, ZoneInfo("UTC"), 1_000_000_123_456)

    assert start % 90_000_000 == 0
    assert end - start == 90_000_000
    assert start <= 1_000_000_123_456 < end


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    unit=st.sampled_from(CALENDAR_UNITS),
    moment=instants,
)
def test_windows_tile_time_without_gaps_or_overlaps(zone: str, unit: str, moment: int) -> None:
    tz = ZoneInfo(zone)
    start, end = window_at(unit, tz, moment)  # type: ignore[arg-type]

    assert start <= moment < end
    assert window_at(unit, tz, start) == (start, end)  # type: ignore[arg-type]
    assert window_at(unit, tz, end - 1) == (start, end)  # type: ignore[arg-type]
    assert window_at(unit, tz, end)[0] == end  # type: ignore[arg-type]
    assert window_at(unit, tz, start - 1)[1] == start  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(zone=st.sampled_from(ZONES), moment=instants)
def test_day_starts_when_the_wall_clock_shows_midnight(zone: str, moment: int) -> None:
    tz = ZoneInfo(zone)
    start, end = window_at("day", tz, moment)
    first = from_us(start).astimezone(tz)
    last = from_us(end - 1).astimezone(tz)

    assert first.date() == last.date()
    # Midnight itself, unless a DST gap swallowed it (then the first instant after).
    assert first.time() == datetime.min.time() or from_us(start - 1).astimezone(tz).date() < (
        first.date()
    )
    assert timedelta(hours=20) <= timedelta(microseconds=end - start) <= timedelta(hours=26)


@settings(max_examples=200, deadline=None)
@given(zone=st.sampled_from(ZONES), unit=st.sampled_from(CALENDAR_UNITS), moment=instants)
def test_planned_bounds_are_three_consecutive_windows(zone: str, unit: str, moment: int) -> None:
    tz = ZoneInfo(zone)
    b1, b2, b3, b4 = bounds_around(unit, tz, moment)  # type: ignore[arg-type]

    assert (b2, b3) == window_at(unit, tz, moment)  # type: ignore[arg-type]
    assert window_at(unit, tz, b1) == (b1, b2)  # type: ignore[arg-type]
    assert window_at(unit, tz, b3) == (b3, b4)  # type: ignore[arg-type]


def test_plan_is_reused_inside_a_window_and_renewed_after() -> None:
    plan = WindowPlan("minute", ZoneInfo("UTC"))
    moment = to_us(datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC))

    first = plan.bounds(moment)
    same = plan.bounds(moment + 20_000_000)
    later = plan.bounds(moment + 40_000_000)

    assert same is first
    assert later[1] == first[2]


@pytest.mark.parametrize("unit", CALENDAR_UNITS)
def test_every_unit_round_trips_through_microseconds(unit: str) -> None:
    moment = datetime(2026, 3, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    start, end = window_at(unit, ZoneInfo("UTC"), to_us(moment))  # type: ignore[arg-type]
    assert from_us(start) <= moment < from_us(end)

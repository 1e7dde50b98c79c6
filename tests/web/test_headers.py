"""RateLimit-Policy and RateLimit fields, parsed back with a structured-field parser.

Every emitted field goes through http-sfv's List parser, which refuses
anything RFC 9651 does not allow, so a malformed field fails the test that
made it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import http_sfv
import pytest
from conftest import Target
from hypothesis import given, settings
from hypothesis import strategies as st

from atomlimit import Concurrency, Decision, Hit, InvalidInput, Limiter, RateLimit, SpendCap
from atomlimit.decision import decided
from atomlimit.headers import MAX_INTEGER, rate_limit_headers

NOW = datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PER_MINUTE = RateLimit(name="api", limit=100, window="minute")


def us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def decision(
    spec: Any,
    *,
    allowed: bool = True,
    used: Any = 1,
    remaining: Any = 99,
    reset: datetime = datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
    retry: timedelta | None = None,
) -> Decision[Any]:
    retry_us = None if retry is None else retry // timedelta(microseconds=1)
    limit = spec.limit
    return decided(allowed, limit, used, remaining, us(reset), retry_us, 0, 0 * limit, False, spec)


def parsed(field: str) -> list[tuple[str, dict[str, Any]]]:
    """The field's Items as (value, parameters); raises if it is not a valid List."""
    members = http_sfv.List()
    members.parse(field.encode("ascii"))
    return [(member.value, dict(member.params)) for member in members]


def test_a_rate_limit_advertises_its_quota_window_and_what_is_left() -> None:
    fields = decision(PER_MINUTE).headers(now=NOW)

    assert parsed(fields["RateLimit-Policy"]) == [("api", {"q": 100, "w": 60})]
    assert parsed(fields["RateLimit"]) == [("api", {"r": 99, "t": 55})]
    assert "Retry-After" not in fields


def test_the_fields_are_exactly_the_drafts_text() -> None:
    fields = decision(PER_MINUTE).headers(now=NOW)

    assert fields == {"RateLimit-Policy": '"api";q=100;w=60', "RateLimit": '"api";r=99;t=55'}


def test_t_rounds_the_seconds_until_reset_up() -> None:
    reset = NOW + timedelta(seconds=2, microseconds=1)

    fields = decision(PER_MINUTE, reset=reset).headers(now=NOW)

    assert parsed(fields["RateLimit"])[0][1]["t"] == 3


def test_a_denial_waits_retry_after_rounded_up_and_t_matches_it() -> None:
    denied = decision(
        PER_MINUTE, allowed=False, used=100, remaining=0, retry=timedelta(seconds=4.2)
    )

    fields = denied.headers(now=NOW)

    assert fields["Retry-After"] == "5"
    assert parsed(fields["RateLimit"]) == [("api", {"r": 0, "t": 5})]


def test_a_cost_that_can_never_fit_gets_no_retry_after() -> None:
    never = decision(PER_MINUTE, allowed=False, used=0, remaining=100, retry=None)

    fields = never.headers(now=NOW)

    assert "Retry-After" not in fields
    assert parsed(fields["RateLimit"]) == [("api", {"r": 100, "t": 55})]


def test_a_spend_cap_advertises_its_currency_not_requests() -> None:
    cap = SpendCap(name="ai", limit=Decimal("100.00"), currency="AUD", window="day")

    fields = decision(cap, used=Decimal("99.63"), remaining=Decimal("0.37"), reset=NOW).headers(
        now=NOW
    )

    assert parsed(fields["RateLimit-Policy"]) == [("ai", {"q": 100, "qu": "AUD", "w": 86400})]
    # 0.37 AUD left is less than one whole AUD: reported as 0, never rounded up.
    assert parsed(fields["RateLimit"]) == [("ai", {"r": 0, "t": 0})]


def test_a_spend_cap_with_cents_counts_in_cents() -> None:
    cap = SpendCap(name="ai", limit=Decimal("2.55"), currency="AUD", window="day")

    fields = decision(cap, used=Decimal("0.755"), remaining=Decimal("1.745")).headers(now=NOW)

    assert parsed(fields["RateLimit-Policy"])[0][1] == {"q": 255, "qu": "0.01 AUD", "w": 86400}
    assert parsed(fields["RateLimit"])[0][1]["r"] == 174


def test_a_concurrency_limit_counts_concurrent_requests_without_a_window() -> None:
    in_flight = Concurrency(name="openai", limit=10)

    fields = decision(in_flight, used=3, remaining=7).headers(now=NOW)

    assert parsed(fields["RateLimit-Policy"]) == [
        ("openai", {"q": 10, "qu": "concurrent-requests"})
    ]
    assert parsed(fields["RateLimit"]) == [("openai", {"r": 7})]


def test_a_full_concurrency_limit_says_when_a_slot_frees() -> None:
    in_flight = Concurrency(name="openai", limit=2)
    full = decision(in_flight, allowed=False, used=2, remaining=0, retry=timedelta(seconds=30))

    fields = full.headers(now=NOW)

    assert parsed(fields["RateLimit"]) == [("openai", {"r": 0, "t": 30})]
    assert fields["Retry-After"] == "30"


def test_a_sydney_day_that_springs_forward_is_23_hours() -> None:
    daily = RateLimit(name="daily", limit=1000, window="day", tz="Australia/Sydney")
    # 2025-10-05 in Sydney ends at 2025-10-05T13:00Z (AEDT, +11).
    end = datetime(2025, 10, 5, 13, tzinfo=UTC)

    fields = decision(daily, reset=end).headers(now=end - timedelta(hours=1))

    assert parsed(fields["RateLimit-Policy"])[0][1]["w"] == 23 * 3600


def test_one_calendar_limit_reports_each_day_at_its_own_length() -> None:
    # Policies are made once per spec where the window has one length; a
    # zone's day has not, so each decision of the same spec is measured.
    daily = RateLimit(name="daily", limit=1000, window="day", tz="Australia/Sydney")
    short_end = datetime(2025, 10, 5, 13, tzinfo=UTC)
    long_end = datetime(2026, 4, 5, 14, tzinfo=UTC)
    lengths = [
        parsed(decision(daily, reset=end).headers(now=end - timedelta(hours=1))["RateLimit-Policy"])
        for end in (short_end, short_end + timedelta(days=1), long_end)
    ]

    assert [policy[0][1]["w"] for policy in lengths] == [23 * 3600, 24 * 3600, 25 * 3600]


@pytest.mark.parametrize(
    ("month_end", "days"),
    [
        (datetime(2026, 2, 1, tzinfo=UTC), 31),
        (datetime(2026, 3, 1, tzinfo=UTC), 28),
        (datetime(2024, 3, 1, tzinfo=UTC), 29),
        (datetime(2026, 5, 1, tzinfo=UTC), 30),
    ],
)
def test_a_month_reports_the_length_of_the_month_it_counts_in(
    month_end: datetime, days: int
) -> None:
    monthly = RateLimit(name="monthly", limit=10_000, window="month")

    fields = decision(monthly, reset=month_end).headers(now=month_end - timedelta(days=1))

    assert parsed(fields["RateLimit-Policy"])[0][1]["w"] == days * 86400


def test_a_sliding_window_reports_the_fixed_length_of_its_unit() -> None:
    hourly = RateLimit(name="hourly", limit=50, window="hour", algorithm="sliding_counter")

    fields = decision(hourly).headers(now=NOW)

    assert parsed(fields["RateLimit-Policy"])[0][1]["w"] == 3600


def test_a_sub_second_window_rounds_up_to_one_second() -> None:
    burst = RateLimit(name="burst", limit=5, window=timedelta(milliseconds=250))

    fields = decision(burst, reset=NOW + timedelta(milliseconds=100)).headers(now=NOW)

    assert parsed(fields["RateLimit-Policy"])[0][1]["w"] == 1
    assert parsed(fields["RateLimit"])[0][1]["t"] == 1


def test_quotas_beyond_fifteen_digits_are_reported_as_the_largest_integer() -> None:
    huge = RateLimit(name="huge", limit=2**53 - 1, window="day")

    fields = decision(huge, used=0, remaining=2**53 - 1).headers(now=NOW)

    assert parsed(fields["RateLimit-Policy"])[0][1]["q"] == MAX_INTEGER
    assert parsed(fields["RateLimit"])[0][1]["r"] == MAX_INTEGER


def test_several_limits_give_one_item_each_in_order_and_the_longest_retry() -> None:
    daily = RateLimit(name="daily", limit=1000, window="day")
    decisions = [
        decision(PER_MINUTE, allowed=False, used=100, remaining=0, retry=timedelta(seconds=55)),
        decision(daily, used=10, remaining=990, reset=datetime(2026, 1, 2, tzinfo=UTC)),
    ]

    fields = rate_limit_headers(decisions, now=NOW)

    assert [name for name, _ in parsed(fields["RateLimit-Policy"])] == ["api", "daily"]
    assert parsed(fields["RateLimit"]) == [
        ("api", {"r": 0, "t": 55}),
        ("daily", {"r": 990, "t": 86395}),
    ]
    assert fields["Retry-After"] == "55"


def test_a_name_outside_printable_ascii_is_percent_encoded() -> None:
    named = RateLimit(name='übung "1" 50%\\', limit=5, window="minute")

    fields = decision(named).headers(now=NOW)

    ((name, _),) = parsed(fields["RateLimit-Policy"])
    assert name == '%C3%BCbung "1" 50%25\\'


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(min_size=1, max_size=256),
    limit=st.integers(1, 2**53 - 1),
    used=st.integers(0, 2**53 - 1),
    retry_us=st.one_of(st.none(), st.integers(1, 10**12)),
    reset_in_us=st.integers(-(10**9), 10**13),
)
def test_every_field_is_a_well_formed_structured_list(
    name: str, limit: int, used: int, retry_us: int | None, reset_in_us: int
) -> None:
    spec = RateLimit(name=name, limit=limit, window="day")
    remaining = max(0, limit - used)
    made = decided(
        retry_us is None, limit, used, remaining, us(NOW) + reset_in_us, retry_us, 0, 0, False, spec
    )

    fields = made.headers(now=NOW)

    for field in (fields["RateLimit-Policy"], fields["RateLimit"]):
        ((_, params),) = parsed(field)
        assert all(0 <= value <= MAX_INTEGER for value in params.values() if isinstance(value, int))


@settings(max_examples=100, deadline=None)
@given(
    places=st.integers(0, 6),
    units=st.integers(1, 10**9),
    left=st.integers(0, 10**9),
)
def test_spend_cap_fields_parse_and_never_report_more_than_is_left(
    places: int, units: int, left: int
) -> None:
    limit = Decimal(units).scaleb(-places)
    remaining = min(limit, Decimal(left).scaleb(-places))
    cap = SpendCap(name="cap", limit=limit, currency="USD", window="hour")

    fields = decision(cap, used=limit - remaining, remaining=remaining).headers(now=NOW)

    ((_, policy),) = parsed(fields["RateLimit-Policy"])
    ((_, current),) = parsed(fields["RateLimit"])
    unit = Decimal(1) if policy["qu"] == "USD" else Decimal(policy["qu"].split()[0])
    assert policy["q"] * unit == limit
    assert current["r"] * unit <= remaining < (current["r"] + 1) * unit


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "not decisions",
        [],
        ["a string"],
        [object()],
        [decided(True, 1, 0, 1, 0, None, 0, 0, False, PER_MINUTE)] * 65,
    ],
)
def test_anything_but_a_list_of_decisions_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidInput):
        rate_limit_headers(bad)


def test_a_decision_is_not_mistaken_for_a_list_of_them() -> None:
    with pytest.raises(InvalidInput, match="list or tuple"):
        rate_limit_headers(decision(PER_MINUTE))  # type: ignore[arg-type]


def test_a_decision_without_a_spec_is_refused() -> None:
    bare = Decision(True, 5, 1, 4, NOW, None, 1, 0)

    with pytest.raises(InvalidInput, match="no spec"):
        bare.headers()


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(InvalidInput, match="aware"):
        decision(PER_MINUTE).headers(now=datetime(2026, 1, 1))


def test_a_real_acquire_gives_fields_that_parse(target: Target) -> None:
    daily = RateLimit(name="daily", limit=3, window="day")
    cap = SpendCap(name="ai", limit=Decimal("1.55"), currency="AUD", window="day")
    with target.sync_client() as client:
        limiter = Limiter(client)
        result = limiter.acquire(
            [Hit(PER_MINUTE, "s"), Hit(daily, "s"), Hit(cap, "s", Decimal("0.25"))]
        )

    fields = rate_limit_headers(result.decisions)

    policies, limits = parsed(fields["RateLimit-Policy"]), parsed(fields["RateLimit"])
    assert [name for name, _ in policies] == ["api", "daily", "ai"]
    assert policies[2][1] == {"q": 155, "qu": "0.01 AUD", "w": 86400}
    assert [params["r"] for _, params in limits] == [99, 2, 130]
    assert 0 < limits[0][1]["t"] <= 60
    assert 0 < limits[1][1]["t"] <= 86400

"""hit / peek / reset on every server kind and on the cluster, sync and async."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from conftest import Target

from atomlimit import AsyncLimiter, Decision, Limiter, RateLimit, RequestIdReused, SpendCap

DAILY = RateLimit(name="enrichment", limit=3, window="day", tz="Australia/Sydney")
CAP = SpendCap(
    name="ai", limit=Decimal("100.00"), currency="AUD", window="day", tz="Australia/Sydney"
)


def test_hit_admits_up_to_the_limit_then_denies(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        decisions = [limiter.hit(DAILY, "client-42") for _ in range(5)]

    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.used for d in decisions] == [1, 2, 3, 3, 3]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0, 0]
    assert all(d.limit == 3 for d in decisions)
    assert decisions[0].retry_after is None
    assert decisions[3].retry_after is not None
    assert timedelta(0) < decisions[3].retry_after <= timedelta(hours=25)


async def test_async_hit_admits_up_to_the_limit_then_denies(target: Target) -> None:
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)
        decisions = [await limiter.hit(DAILY, "client-42") for _ in range(5)]

    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.used for d in decisions] == [1, 2, 3, 3, 3]


def test_denied_hit_charges_nothing(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        limiter.hit(DAILY, "s", cost=2)
        denied = limiter.hit(DAILY, "s", cost=2)
        after = limiter.peek(DAILY, "s", cost=1)

    assert not denied.allowed
    assert denied.used == 2
    assert after.used == 2
    assert after.allowed


def test_peek_charges_nothing_and_answers_for_the_cost(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        limiter.hit(DAILY, "s", cost=2)
        fits = limiter.peek(DAILY, "s", cost=1)
        too_much = limiter.peek(DAILY, "s", cost=2)
        still = limiter.peek(DAILY, "s")

    assert fits.allowed
    assert fits.used == 2
    assert not too_much.allowed
    assert too_much.retry_after is not None
    assert still.used == 2


def test_reset_forgets_usage_of_one_subject_only(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        for subject in ("a", "b"):
            limiter.hit(DAILY, subject, cost=3)
        limiter.reset(DAILY, "a")
        a, b = limiter.peek(DAILY, "a"), limiter.peek(DAILY, "b")

    assert a.used == 0
    assert a.allowed
    assert b.used == 3
    assert not b.allowed


async def test_async_peek_and_reset(target: Target) -> None:
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)
        await limiter.hit(DAILY, "a", cost=3)
        before = await limiter.peek(DAILY, "a")
        await limiter.reset(DAILY, "a")
        after = await limiter.peek(DAILY, "a")

    assert not before.allowed
    assert before.used == 3
    assert after.allowed
    assert after.used == 0


def test_reset_at_is_the_end_of_the_sydney_day(target: Target) -> None:
    with target.sync_client() as client:
        decision = Limiter(client).hit(DAILY, "s")

    local_end = decision.reset_at.astimezone(ZoneInfo(DAILY.tz))
    assert decision.reset_at.tzinfo is UTC
    assert (local_end.hour, local_end.minute, local_end.second) == (0, 0, 0)
    assert timedelta(0) < decision.reset_at - datetime.now(UTC) <= timedelta(hours=25)


def test_spend_cap_amounts_are_exact_decimals(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        first = limiter.hit(CAP, "client-42", cost=Decimal("0.37"))
        second = limiter.hit(CAP, "client-42", cost=Decimal("99.63"))
        over = limiter.hit(CAP, "client-42", cost=Decimal("0.000001"))

    assert first.used == Decimal("0.37")
    assert first.remaining == Decimal("99.63")
    assert second.allowed
    assert second.used == Decimal("100.00")
    assert second.remaining == 0
    assert not over.allowed
    assert over.used == Decimal("100.00")
    assert all(isinstance(d.used, Decimal) for d in (first, second, over))


def test_ten_thousand_cent_spends_fill_a_100_cap_exactly(target: Target) -> None:
    cap = SpendCap(name="cents", limit=Decimal("100.00"), currency="AUD", window="day")
    with target.sync_client() as client:
        limiter = Limiter(client)
        admitted = sum(limiter.hit(cap, "c", cost=Decimal("0.01")).allowed for _ in range(10_001))
        final = limiter.peek(cap, "c", cost=0)

    assert admitted == 10_000
    assert final.used == Decimal("100.00")
    # The same sum in floats drifts: the naive pattern would not land on 100.
    assert sum(0.01 for _ in range(10_000)) != 100.0


def test_totals_stay_exact_up_to_nine_billion(target: Target) -> None:
    cap = SpendCap(name="big", limit=Decimal("9000000000.00"), currency="AUD", window="day")
    with target.sync_client() as client:
        limiter = Limiter(client)
        limiter.hit(cap, "b", cost=Decimal("8999999999.99"))
        last_cent = limiter.hit(cap, "b", cost=Decimal("0.01"))
        nothing_more = limiter.hit(cap, "b", cost=Decimal("0.000001"))

    assert last_cent.allowed
    assert last_cent.used == Decimal("9000000000.00")
    assert not nothing_more.allowed
    assert nothing_more.used == Decimal("9000000000.00")


def test_cost_above_the_limit_is_denied_with_no_retry_after(target: Target) -> None:
    with target.sync_client() as client:
        decision = Limiter(client).hit(CAP, "s", cost=Decimal("100.01"))

    assert not decision.allowed
    assert decision.retry_after is None
    assert decision.used == 0


def test_request_id_replay_returns_the_original_decision(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        first = limiter.hit(CAP, "s", cost=Decimal("2.50"), request_id="req-9f1")
        limiter.hit(CAP, "s", cost=Decimal("1.00"))
        replay = limiter.hit(CAP, "s", cost=Decimal("2.50"), request_id="req-9f1")
        total = limiter.peek(CAP, "s", cost=0)

    assert replay == first
    assert total.used == Decimal("3.50")


def test_request_id_reused_with_another_cost_is_refused_and_charges_nothing(
    target: Target,
) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        limiter.hit(CAP, "s", cost=Decimal("2.50"), request_id="req-1")
        with pytest.raises(RequestIdReused):
            limiter.hit(CAP, "s", cost=Decimal("3.00"), request_id="req-1")
        total = limiter.peek(CAP, "s", cost=0)

    assert total.used == Decimal("2.50")


def test_denied_request_id_is_evaluated_again_when_resent(target: Target) -> None:
    # Only charges are remembered: a denial charged nothing, so a re-send
    # after the window has room again may pass, and is charged once.
    spec = RateLimit(name="one", limit=1, window="day")
    with target.sync_client() as client:
        limiter = Limiter(client)
        limiter.hit(spec, "s", request_id="first")
        denied = limiter.hit(spec, "s", request_id="second")
        limiter.reset(spec, "s")
        resent = limiter.hit(spec, "s", request_id="second")
        again = limiter.hit(spec, "s", request_id="second")

    assert not denied.allowed
    assert resent.allowed
    assert resent.used == 1
    assert again == resent


def test_every_key_written_has_a_ttl_reaching_past_its_window(target: Target) -> None:
    minute = RateLimit(name="m", limit=5, window="minute")
    with target.sync_client() as client:
        limiter = Limiter(client)
        decisions = [limiter.hit(spec, "s") for spec in (minute, DAILY)]
        limiter.hit(CAP, "s", cost=Decimal(1), request_id="r1")
        keys = _all_keys(client)
        ttls = {key: client.pttl(key) for key in keys}

    # Two counters, a cap, and the record of the one call with a request id:
    # hits without one leave nothing but their window's state.
    assert len(keys) == 4, keys
    assert sum(":r:" in key for key in keys) == 1
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    for decision, name in zip(decisions, (":fw:m:", ":fw:enrichment:"), strict=True):
        (counter,) = [key for key in keys if name in key]
        window_left_ms = (decision.reset_at - datetime.now(UTC)) / timedelta(milliseconds=1)
        assert ttls[counter] >= window_left_ms - 1_000


def test_keys_carry_the_versioned_prefix_and_one_tag_per_subject(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client, prefix="myapp")
        for spec in (DAILY, CAP):
            limiter.hit(spec, "client-42")
        keys = _all_keys(client)

    assert keys
    assert all(key.startswith("myapp:v1:{s:client-42}:") for key in keys)


def test_client_time_source_decides_windows_by_the_given_clock(target: Target) -> None:
    now = [datetime(2026, 4, 4, 23, 59, 59, tzinfo=UTC).timestamp()]
    daily = RateLimit(name="d", limit=1, window="day")
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=lambda: now[0])
        first = limiter.hit(daily, "s")
        denied = limiter.hit(daily, "s")
        now[0] += 2  # past midnight UTC by the controlled clock
        next_day = limiter.hit(daily, "s")

    assert first.allowed
    assert not denied.allowed
    assert next_day.allowed
    assert first.reset_at == datetime(2026, 4, 5, tzinfo=UTC)
    assert next_day.reset_at == datetime(2026, 4, 6, tzinfo=UTC)


def test_server_clock_decides_even_when_the_worker_clock_is_off(target: Target) -> None:
    minute = RateLimit(name="m", limit=100, window="minute")
    with target.sync_client() as client:
        server_now = _server_time(client)
        # A worker ten minutes behind, and one ten minutes ahead.
        behind = Limiter(client, clock=lambda: time.time() - 600)
        ahead = Limiter(client, clock=lambda: time.time() + 600)
        decisions = [behind.hit(minute, "s"), ahead.hit(minute, "s"), behind.hit(minute, "s")]

    for decision in decisions:
        # The window is the server's current minute, not the worker's.
        assert timedelta(0) < decision.reset_at - server_now <= timedelta(seconds=61)
    assert [d.used for d in decisions] == [1, 2, 3]


def test_hit_returns_a_decision_typed_by_its_spec(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        rate: Decision[int] = limiter.hit(DAILY, "s")
        money: Decision[Decimal] = limiter.hit(CAP, "s", cost=Decimal("1"))

    assert isinstance(rate.used, int)
    assert isinstance(money.used, Decimal)
    assert bool(rate) is True


@pytest.mark.parametrize("window", ["second", timedelta(milliseconds=250)])
def test_short_windows_roll_over_on_the_server_clock(target: Target, window: object) -> None:
    spec = RateLimit(name="short", limit=1, window=window)  # type: ignore[arg-type]
    with target.sync_client() as client:
        limiter = Limiter(client)
        first = limiter.hit(spec, "s")
        time.sleep(max((first.reset_at - datetime.now(UTC)).total_seconds(), 0) + 0.05)
        after = limiter.hit(spec, "s")

    assert first.allowed
    assert after.allowed
    assert after.reset_at > first.reset_at
    assert after.used == 1


def _all_keys(client: object) -> list[str]:
    # SCAN, unlike KEYS, walks every primary of a cluster.
    raw = client.scan_iter("*")  # type: ignore[attr-defined]
    return sorted(key.decode() if isinstance(key, bytes) else key for key in raw)


def _server_time(client: object) -> datetime:
    seconds, micros = client.time()  # type: ignore[attr-defined]
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros)

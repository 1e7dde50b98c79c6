"""Spend reservations on real servers: hold an estimate, then settle or release it.

Most tests use ``time_source="client"`` with a clock the test moves, so holds
expire and windows end on command; they run on Redis, Valkey and the cluster.
The race test and its naive twin run one harness twice: atomlimit must pass
the check the read-then-write reservation fails.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
import redis.asyncio
from conftest import Target
from helpers import START, Clock, evalsha_runs
from proxy import StallingProxy
from redis.crc import key_slot
from servers import Server

from atomlimit import (
    AsyncLimiter,
    AsyncReservation,
    BackendError,
    Concurrency,
    InvalidInput,
    Limiter,
    LimitExceeded,
    RateLimit,
    Reservation,
    SpendCap,
)
from atomlimit._keys import subject_tag

"""Five seconds into a UTC minute: the cap's window ends 55 s later."""
WINDOW_LEFT = 55.0
CAP = SpendCap(name="ai", limit=Decimal("10.00"), currency="AUD", window="minute")
DAY_CAP = SpendCap(name="ai-day", limit=Decimal("10.00"), currency="AUD", window="day")
"""For tests on the server's clock, where a minute could end mid-test."""
BASE = "atomlimit:v1:{s:s}:sc:ai:AUD:6"
HOLDS, AMOUNTS = BASE + ":holds", BASE + ":held"
WINDOW = BASE + f":{int(START - 5) * 1000}"
"""The cap's spend in the minute that the controlled clock starts in."""
STALL = 0.6
SOCKET_TIMEOUT = 0.2


def _limiter(client: Any, clock: Clock) -> Limiter:
    return Limiter(client, time_source="client", clock=clock)


def _async_limiter(client: Any, clock: Clock) -> AsyncLimiter:
    return AsyncLimiter(client, time_source="client", clock=clock)


def _d(text: str) -> Decimal:
    return Decimal(text)


# -- admission counts what is held -------------------------------------------


def test_held_estimate_counts_against_the_cap_from_the_moment_it_is_reserved(
    target: Target,
) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        limiter.hit(CAP, "s", _d("3.00"))
        held = limiter.reserve(CAP, "s", _d("5.00"))
        hit_over = limiter.hit(CAP, "s", _d("2.01"))
        reserve_over = limiter.reserve(CAP, "s", _d("2.01"))
        hit_exact = limiter.hit(CAP, "s", _d("2.00"))
        nothing_left = limiter.reserve(CAP, "s", _d("0.000001"))
        peeked = limiter.peek(CAP, "s", cost=0)

    assert held.allowed
    assert (held.decision.used, held.decision.held) == (_d("3.00"), _d("5.00"))
    assert held.decision.remaining == _d("2.00")
    assert held.decision.granted == _d("5.00")
    # used + held + cost <= limit, for hits and for reservations alike.
    assert not hit_over.allowed
    assert (hit_over.used, hit_over.held) == (_d("3.00"), _d("5.00"))
    assert not reserve_over.allowed
    assert reserve_over.decision.held == _d("5.00")  # a denial holds nothing
    assert reserve_over.decision.granted == 0
    assert hit_exact.allowed
    assert (hit_exact.used, hit_exact.held, hit_exact.remaining) == (_d("5.00"), _d("5.00"), 0)
    assert not nothing_left.allowed
    assert (peeked.used, peeked.held, peeked.remaining) == (_d("5.00"), _d("5.00"), 0)


async def test_async_held_estimate_counts_against_the_cap(target: Target) -> None:
    async with target.async_client() as client:
        limiter = _async_limiter(client, Clock())
        first = await limiter.reserve(CAP, "s", _d("6.00"))
        second = await limiter.reserve(CAP, "s", _d("4.01"))
        third = await limiter.reserve(CAP, "s", _d("4.00"))
        peeked = await limiter.peek(CAP, "s", cost=0)

    assert isinstance(first, AsyncReservation)
    assert first.allowed
    assert not second.allowed
    assert third.allowed
    assert first.id != third.id
    assert third.decision.held == _d("10.00")
    assert third.decision.remaining == 0
    assert (peeked.used, peeked.held) == (0, _d("10.00"))


# -- settle and release --------------------------------------------------------


def test_settle_charges_the_actual_cost_and_drops_the_hold_in_one_step(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        reservation = limiter.reserve(CAP, "s", _d("5.00"))
        settled = reservation.settle(_d("3.20"))
        peeked = limiter.peek(CAP, "s", cost=0)

    assert settled.status == "settled"
    assert settled.charged == _d("3.20")
    # One reply, one state: the charge and the dropped hold together.
    assert (settled.decision.used, settled.decision.held) == (_d("3.20"), 0)
    assert settled.decision.remaining == _d("6.80")
    assert settled.decision.allowed
    assert (peeked.used, peeked.held) == (_d("3.20"), 0)


def test_release_drops_the_hold_and_charges_nothing(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        limiter.hit(CAP, "s", _d("1.00"))
        reservation = limiter.reserve(CAP, "s", _d("9.00"))
        released = reservation.release()
        room = limiter.hit(CAP, "s", _d("9.00"))

    assert released.status == "released"
    assert released.charged == 0
    assert (released.decision.used, released.decision.held) == (_d("1.00"), 0)
    assert room.allowed


@pytest.mark.parametrize(
    ("steps", "status", "total"),
    [
        (("settle",), "settled", "2.50"),
        (("settle", "settle"), "already_settled", "2.50"),
        (("release", "settle"), "settled_after_release", "2.50"),
        (("expire", "settle"), "settled_after_expiry", "2.50"),
        (("release",), "released", "0"),
        (("settle", "release"), "already_settled", "2.50"),
        (("release", "release"), "already_released", "0"),
        (("expire", "release"), "expired", "0"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, tuple) else None,
)
def test_settlement_status_and_charge_follow_the_documented_table(
    target: Target, steps: tuple[str, ...], status: str, total: str
) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        reservation = limiter.reserve(CAP, "s", _d("4.00"), ttl=timedelta(seconds=10))
        outcomes = []
        for step in steps:
            if step == "expire":
                clock.advance(10)
            elif step == "settle":
                outcomes.append(reservation.settle(_d("2.50")))
            else:
                outcomes.append(reservation.release())
        peeked = limiter.peek(CAP, "s", cost=0)

    last = outcomes[-1]
    charges = status in ("settled", "settled_after_release", "settled_after_expiry")
    assert last.status == status
    assert last.charged == (_d("2.50") if charges else 0)
    # Every settle is recorded once: the money was spent.
    assert peeked.used == _d(total)
    assert last.decision.used == _d(total)
    assert peeked.held == 0
    assert last.decision.held == 0


def test_settle_after_release_is_reported_and_still_records_the_cost(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        reservation = limiter.reserve(CAP, "s", _d("4.00"))
        reservation.release()
        late = reservation.settle(_d("1.25"))
        again = reservation.settle(_d("1.25"))
        peeked = limiter.peek(CAP, "s", cost=0)

    assert (late.status, late.charged) == ("settled_after_release", _d("1.25"))
    assert (again.status, again.charged) == ("already_settled", 0)
    assert peeked.used == _d("1.25")


def test_settle_after_expiry_is_reported_and_still_records_the_cost(target: Target) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        reservation = limiter.reserve(CAP, "s", _d("4.00"), ttl=timedelta(seconds=30))
        clock.advance(31)
        late = reservation.settle(_d("6.00"))
        peeked = limiter.peek(CAP, "s", cost=0)

    assert (late.status, late.charged) == ("settled_after_expiry", _d("6.00"))
    assert (late.decision.used, late.decision.held) == (_d("6.00"), 0)
    assert (peeked.used, peeked.held) == (_d("6.00"), 0)


def test_settle_after_an_expired_hold_was_released_still_reports_the_expiry(
    target: Target,
) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        reservation = limiter.reserve(CAP, "s", _d("4.00"), ttl=timedelta(seconds=30))
        clock.advance(31)
        released = reservation.release()
        late = reservation.settle(_d("2.00"))

    assert released.status == "expired"
    assert (late.status, late.charged) == ("settled_after_expiry", _d("2.00"))


def test_settling_a_denied_reservation_is_refused_and_sends_nothing(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        limiter.hit(CAP, "s", cost=_d("9.00"))
        denied = limiter.reserve(CAP, "s", _d("4.00"), request_id="req-1")
        with pytest.raises(InvalidInput, match="denied"):
            denied.settle(_d("1.00"))
        limiter.hit(CAP, "s", cost=0)
        limiter.refund(CAP, "s", _d("9.00"))
        later = limiter.reserve(CAP, "s", _d("4.00"), request_id="req-1")
        released = later.release()
        peeked = limiter.peek(CAP, "s", cost=0)

    assert not denied.allowed
    assert later.allowed
    assert released.status == "released"
    assert (peeked.used, peeked.held) == (0, 0)


async def test_async_settle_and_release_are_idempotent(target: Target) -> None:
    async with target.async_client() as client:
        limiter = _async_limiter(client, Clock())
        kept = await limiter.reserve(CAP, "s", _d("3.00"))
        dropped = await limiter.reserve(CAP, "s", _d("3.00"))
        outcomes = [
            await kept.settle(_d("2.00")),
            await kept.settle(_d("2.00")),
            await kept.release(),
            await dropped.release(),
            await dropped.release(),
        ]
        peeked = await limiter.peek(CAP, "s", cost=0)

    assert [o.status for o in outcomes] == [
        "settled",
        "already_settled",
        "already_settled",
        "released",
        "already_released",
    ]
    assert [o.charged for o in outcomes] == [_d("2.00"), 0, 0, 0, 0]
    assert (peeked.used, peeked.held) == (_d("2.00"), 0)


@pytest.mark.parametrize("finish", ["settle", "release"])
def test_zero_estimate_reservation_can_be_settled_or_released(target: Target, finish: str) -> None:
    # A zero estimate is a valid amount (only negatives are refused), and
    # reserving it is allowed; finishing it must work like any other hold.
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        reservation = limiter.reserve(CAP, "s", _d("0"))
        try:
            outcome: Any = (
                reservation.settle(_d("1.25")) if finish == "settle" else reservation.release()
            )
        except BackendError as err:
            outcome = err
        peeked = limiter.peek(CAP, "s", cost=0)

    assert reservation.allowed
    assert not isinstance(outcome, BackendError), outcome
    assert outcome.status == ("settled" if finish == "settle" else "released")
    assert peeked.used == (_d("1.25") if finish == "settle" else 0)


def test_actual_above_the_estimate_is_recorded_and_denies_until_the_window_resets(
    target: Target,
) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        reservation = limiter.reserve(CAP, "s", _d("8.00"))
        settled = reservation.settle(_d("12.34"))
        hit = limiter.hit(CAP, "s", _d("0.000001"))
        reserve = limiter.reserve(CAP, "s", _d("0.01"))
        clock.advance(WINDOW_LEFT - 0.5)
        still = limiter.hit(CAP, "s", _d("0.01"))
        clock.advance(0.5)
        next_window = limiter.hit(CAP, "s", _d("0.01"))

    assert (settled.status, settled.charged) == ("settled", _d("12.34"))
    assert settled.decision.used == _d("12.34")  # past the limit, truthfully
    assert settled.decision.remaining == 0
    assert not hit.allowed
    assert hit.used == _d("12.34")
    assert hit.retry_after == timedelta(seconds=WINDOW_LEFT)
    assert not reserve.allowed
    assert reserve.decision.retry_after == timedelta(seconds=WINDOW_LEFT)
    assert not still.allowed
    assert next_window.allowed
    assert next_window.used == _d("0.01")


# -- expiry -------------------------------------------------------------------


def test_dead_workers_hold_expires_after_its_ttl_and_the_budget_comes_back(
    target: Target,
) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        # A worker holds 8.00 and dies: it never settles or releases.
        limiter.reserve(CAP, "s", _d("8.00"), ttl=timedelta(seconds=10))
        clock.advance(9.5)
        before = limiter.hit(CAP, "s", _d("3.00"))
        clock.advance(0.5)
        after = limiter.hit(CAP, "s", _d("3.00"))
        sets_left = client.exists(HOLDS, AMOUNTS)
        window = client.get(WINDOW)

    assert not before.allowed
    assert before.held == _d("8.00")
    assert before.retry_after == timedelta(seconds=0.5)
    assert after.allowed
    assert (after.used, after.held) == (_d("3.00"), 0)
    # Pruned by the hit itself: no cleanup job ran.
    assert sets_left == 0
    assert window == b"3000000"  # committed units, and no summary of holds left


def test_expired_hold_gives_its_budget_back_even_after_its_sets_time_out(
    target: Target,
) -> None:
    # The hold sets get a TTL of (last hold's end + 5 s); the window's spend,
    # which repeats the total held, lives until its window ends. If no script
    # touches the cap in those 5 s, the server deletes the sets and the total
    # is never pruned: the dead worker's budget never comes back.
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        limiter.reserve(CAP, "s", _d("8.00"), ttl=timedelta(seconds=1))
        sets_ttl = client.pttl(HOLDS)
        cap_ttl = client.pttl(WINDOW)
        clock.advance(2)
        # The server drops the sets 5 s after the hold ended; rather than
        # sleep 5 s, bring that expiry forward.
        client.pexpire(HOLDS, 1)
        client.pexpire(AMOUNTS, 1)
        _wait_until_gone(client, HOLDS, AMOUNTS)
        peeked = limiter.peek(CAP, "s", cost=0)
        hit = limiter.hit(CAP, "s", _d("5.00"))

    assert 0 < sets_ttl <= 6_000 < cap_ttl  # the sets do time out first
    assert peeked.held == 0
    assert peeked.remaining == _d("10.00")
    assert hit.allowed


def _wait_until_gone(client: Any, *keys: str) -> None:
    deadline = time.monotonic() + 0.5
    while any(client.exists(key) for key in keys) and time.monotonic() < deadline:
        time.sleep(0.01)


async def test_eight_thousand_holds_expiring_together_are_all_pruned(server: Server) -> None:
    # A fleet that dies together leaves many holds expiring at once. Every
    # script prunes them first; the cap must keep working afterwards.
    cap = SpendCap(name="fleet", limit=Decimal(1000), currency="AUD", window="day")
    clock = Clock()
    async with server.async_client(max_connections=40) as client:
        limiter = _async_limiter(client, clock)
        gate = asyncio.Semaphore(40)

        async def hold() -> bool:
            async with gate:
                reserved = await limiter.reserve(cap, "s", _d("0.01"), ttl=timedelta(minutes=1))
                return reserved.allowed

        granted = await asyncio.gather(*(hold() for _ in range(8_000)))
        clock.advance(61)
        try:
            after: Any = await limiter.peek(cap, "s", cost=0)
        except BackendError as err:
            after = err

    assert all(granted)
    assert not isinstance(after, BackendError), after
    assert after.held == 0
    assert after.remaining == Decimal(1000)


# -- windows ------------------------------------------------------------------


def test_hold_across_a_window_boundary_counts_in_the_next_window_and_settles_there(
    target: Target,
) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        limiter.hit(CAP, "s", _d("3.00"))
        clock.advance(WINDOW_LEFT - 5)  # 00:00:55
        reservation = limiter.reserve(CAP, "s", _d("6.00"), ttl=timedelta(minutes=5))
        clock.advance(10)  # 00:01:05, the next window
        peeked = limiter.peek(CAP, "s", cost=0)
        over = limiter.hit(CAP, "s", _d("4.01"))
        fits = limiter.hit(CAP, "s", _d("4.00"))
        settled = reservation.settle(_d("2.50"))
        clock.advance(60)  # 00:02:05, the window after
        later = limiter.peek(CAP, "s", cost=0)

    assert (peeked.used, peeked.held) == (0, _d("6.00"))
    assert not over.allowed
    assert fits.allowed
    # Charged to the window current at settle time, beside its 4.00.
    assert settled.status == "settled"
    assert (settled.decision.used, settled.decision.held) == (_d("6.50"), 0)
    assert settled.decision.reset_at == datetime(2026, 1, 1, 0, 2, tzinfo=UTC)
    assert (later.used, later.held) == (0, 0)


# -- retry_after of a denial -------------------------------------------------------


@dataclass(frozen=True)
class RetryCase:
    committed: str
    holds: tuple[tuple[str, float], ...]
    """(amount, ttl in seconds) of each open hold."""
    ask: str
    fits_after: float | None
    """Seconds from now until ``ask`` fits; None for never."""


RETRY_CASES = {
    "a hold expires": RetryCase("0", (("6", 30),), "5", 30),
    "the second hold expires": RetryCase("3", (("4", 20), ("2", 40)), "6", 40),
    "the first hold is enough": RetryCase("3", (("4", 20), ("2", 40)), "4", 20),
    "the window ends before the hold": RetryCase("8", (("1", 600),), "3", WINDOW_LEFT),
    "the window end alone is not enough": RetryCase("2", (("5", 100), ("2", 200)), "6", 100),
    "the window ends after every hold": RetryCase("8", (("1", 10),), "2.5", WINDOW_LEFT),
    "the estimate is above the limit": RetryCase("0", (), "10.01", None),
}


@pytest.mark.parametrize("how", ["reserve", "hit"])
@pytest.mark.parametrize("case", list(RETRY_CASES.values()), ids=list(RETRY_CASES))
def test_denied_retry_after_is_the_earliest_moment_the_cost_fits(
    target: Target, case: RetryCase, how: str
) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        if case.committed != "0":
            limiter.hit(CAP, "s", _d(case.committed))
        for amount, ttl in case.holds:
            assert limiter.reserve(CAP, "s", _d(amount), ttl=timedelta(seconds=ttl)).allowed
        if how == "reserve":
            denied = limiter.reserve(CAP, "s", _d(case.ask)).decision
        else:
            denied = limiter.hit(CAP, "s", _d(case.ask))
        if case.fits_after is None:
            just_before = just_after = None
        else:
            clock.advance(case.fits_after - 0.25)
            just_before = limiter.peek(CAP, "s", _d(case.ask))
            clock.advance(0.25)
            just_after = limiter.reserve(CAP, "s", _d(case.ask)).decision

    assert not denied.allowed
    assert denied.granted == 0
    if case.fits_after is None:
        assert denied.retry_after is None
        return
    assert denied.retry_after == timedelta(seconds=case.fits_after)
    assert just_before is not None
    assert just_after is not None
    assert not just_before.allowed
    assert just_after.allowed


# -- the context manager ----------------------------------------------------------


def test_reservation_block_settles_the_amount_given_to_settle_with(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        with limiter.reservation(CAP, "s", _d("5.00")) as reservation:
            inside = limiter.peek(CAP, "s", cost=0)
            reservation.settle_with(_d("4.20"))
        again = reservation.settle(_d("4.20"))
        peeked = limiter.peek(CAP, "s", cost=0)

    assert isinstance(reservation, Reservation)
    assert (inside.used, inside.held) == (0, _d("5.00"))
    assert again.status == "already_settled"  # the block's end settled it
    assert (peeked.used, peeked.held) == (_d("4.20"), 0)


def test_reservation_block_that_raises_releases_and_re_raises(target: Target) -> None:
    handles: list[Reservation] = []

    def failing_call(limiter: Limiter) -> None:
        with limiter.reservation(CAP, "s", _d("5.00")) as reservation:
            handles.append(reservation)
            reservation.settle_with(_d("4.20"))  # the block raises after this
            raise RuntimeError("the model call failed")

    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        with pytest.raises(RuntimeError, match="the model call failed"):
            failing_call(limiter)
        again = handles[0].release()
        peeked = limiter.peek(CAP, "s", cost=0)

    assert again.status == "already_released"
    assert (peeked.used, peeked.held) == (0, 0)


def test_reservation_block_left_without_settle_with_releases(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        with limiter.reservation(CAP, "s", _d("5.00")) as reservation:
            pass
        again = reservation.release()
        peeked = limiter.peek(CAP, "s", cost=0)

    assert again.status == "already_released"
    assert (peeked.used, peeked.held) == (0, 0)


def test_full_cap_raises_limit_exceeded_when_entering_the_block(target: Target) -> None:
    entered = []

    def enter(limiter: Limiter) -> None:
        with limiter.reservation(CAP, "s", _d("3.00"), ttl=timedelta(seconds=20)):
            entered.append(True)

    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        limiter.reserve(CAP, "s", _d("8.00"), ttl=timedelta(seconds=20))
        with pytest.raises(LimitExceeded) as caught:
            enter(limiter)
        peeked = limiter.peek(CAP, "s", cost=0)

    assert entered == []
    assert not caught.value.decision.allowed
    assert caught.value.decision.retry_after == timedelta(seconds=20)
    assert peeked.held == _d("8.00")


def test_denied_block_without_raising_yields_allowed_false_and_its_exit_does_nothing(
    target: Target,
) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        limiter.hit(CAP, "s", _d("9.00"))
        with limiter.reservation(CAP, "s", _d("3.00"), raise_on_deny=False) as reservation:
            allowed = reservation.allowed
            reservation.settle_with(_d("3.00"))  # ignored: nothing was held
        keys = sorted(_all_keys(client))
        peeked = limiter.peek(CAP, "s", cost=0)

    assert not allowed
    assert (peeked.used, peeked.held) == (_d("9.00"), 0)
    assert not any(":o:" in key for key in keys)  # no outcome was ever written


async def test_async_reservation_block_settles_or_releases_at_its_end(target: Target) -> None:
    async with target.async_client() as client:
        limiter = _async_limiter(client, Clock())
        async with limiter.reservation(CAP, "s", _d("5.00")) as settled:
            settled.settle_with(_d("1.10"))
        async with limiter.reservation(CAP, "s", _d("5.00")) as unsettled:
            pass
        failed: list[AsyncReservation] = []
        with pytest.raises(RuntimeError, match="boom"):
            await _async_failing_block(limiter, failed)
        outcomes = [await r.release() for r in (settled, unsettled, failed[0])]
        peeked = await limiter.peek(CAP, "s", cost=0)

    assert isinstance(settled, AsyncReservation)
    assert [o.status for o in outcomes] == [
        "already_settled",
        "already_released",
        "already_released",
    ]
    assert (peeked.used, peeked.held) == (_d("1.10"), 0)


async def _async_failing_block(limiter: AsyncLimiter, seen: list[AsyncReservation]) -> None:
    async with limiter.reservation(CAP, "s", _d("5.00")) as reservation:
        seen.append(reservation)
        reservation.settle_with(_d("2.00"))
        raise RuntimeError("boom")


async def test_async_full_cap_raises_or_yields_a_denied_reservation(target: Target) -> None:
    async with target.async_client() as client:
        limiter = _async_limiter(client, Clock())
        await limiter.hit(CAP, "s", _d("9.50"))
        with pytest.raises(LimitExceeded) as caught:
            await _async_enter(limiter)
        async with limiter.reservation(CAP, "s", _d("1.00"), raise_on_deny=False) as denied:
            denied.settle_with(_d("1.00"))
        peeked = await limiter.peek(CAP, "s", cost=0)

    assert caught.value.decision.retry_after == timedelta(seconds=WINDOW_LEFT)
    assert not denied.allowed
    assert (peeked.used, peeked.held) == (_d("9.50"), 0)


async def _async_enter(limiter: AsyncLimiter) -> None:
    async with limiter.reservation(CAP, "s", _d("1.00")):
        raise AssertionError("a denied reservation must not enter its block")


def test_settle_with_refuses_a_bad_amount_at_once(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        with limiter.reservation(CAP, "s", _d("1.00")) as reservation:
            with pytest.raises(InvalidInput, match="cost"):
                reservation.settle_with(0.5)  # type: ignore[arg-type]
            with pytest.raises(InvalidInput, match="negative"):
                reservation.settle_with(_d("-1"))
        log = RateLimit(name="r", limit=5, window="day", algorithm="sliding_log")
        with pytest.raises(InvalidInput, match="sliding_log"):
            limiter.reserve(log, "s", 1)
        with pytest.raises(InvalidInput, match="lease"):
            limiter.reserve(Concurrency(name="c", limit=5), "s", 1)  # type: ignore[arg-type]
        peeked = limiter.peek(CAP, "s", cost=0)

    assert (peeked.used, peeked.held) == (0, 0)  # left unsettled: released


# -- request ids --------------------------------------------------------------------


def test_resent_reserve_with_a_request_id_returns_the_same_reservation_and_holds_once(
    target: Target,
) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        first = limiter.reserve(CAP, "s", _d("4.00"), request_id="call-7")
        resent = limiter.reserve(CAP, "s", _d("4.00"), request_id="call-7")
        held = limiter.peek(CAP, "s", cost=0)
        settled = resent.settle(_d("3.00"))
        settled_again = first.settle(_d("3.00"))
        peeked = limiter.peek(CAP, "s", cost=0)

    assert first.id == resent.id == "call-7"
    assert resent.decision == first.decision
    assert held.held == _d("4.00")
    assert settled.status == "settled"
    assert settled_again.status == "already_settled"
    assert (peeked.used, peeked.held) == (_d("3.00"), 0)


def test_releasing_a_denied_reservation_does_not_block_a_later_one_under_its_id(
    target: Target,
) -> None:
    # request-ids.md: a denied request wrote nothing, so re-sending its id is
    # evaluated afresh. A caller that releases in `finally:` also releases
    # denied reservations; that must not stop the id's later hold from being
    # released (leases.md: a denied lease's release() does nothing).
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        limiter.hit(CAP, "s", _d("9.00"))
        denied = limiter.reserve(CAP, "s", _d("3.00"), request_id="job-7")
        denied.release()
        limiter.refund(CAP, "s", _d("9.00"))
        granted = limiter.reserve(CAP, "s", _d("3.00"), request_id="job-7")
        released = granted.release()
        peeked = limiter.peek(CAP, "s", cost=0)

    assert not denied.allowed
    assert granted.allowed
    assert released.status == "released"
    assert peeked.held == 0


async def test_async_resent_reserve_holds_once(target: Target) -> None:
    async with target.async_client() as client:
        limiter = _async_limiter(client, Clock())
        # One call first: redis-py's async cluster client can fail tasks that
        # race to open its first connections ('NoneType' ... 'writelines').
        await limiter.peek(CAP, "s", cost=0)
        both = await asyncio.gather(
            *(limiter.reserve(CAP, "s", _d("4.00"), request_id="r-1") for _ in range(10))
        )
        peeked = await limiter.peek(CAP, "s", cost=0)

    assert {r.id for r in both} == {"r-1"}
    assert all(r.allowed for r in both)
    assert peeked.held == _d("4.00")


# -- transport retries ---------------------------------------------------------------


def _through(proxy: StallingProxy) -> redis.Redis:
    # redis-py's default Retry: it re-sends a command after a timeout.
    return proxy.client(socket_timeout=SOCKET_TIMEOUT)


def _warmed_up(client: redis.Redis) -> Limiter:
    # Connect and load the charge and settle scripts with no stall.
    limiter = Limiter(client)
    warm = limiter.reserve(DAY_CAP, "warm-up", _d("1.00"))
    warm.settle(_d("1.00"))
    limiter.reserve(DAY_CAP, "warm-up", _d("1.00")).release()
    return limiter


def test_stalled_settle_retried_by_redis_py_charges_once(
    server: Server, stalling_proxy: StallingProxy
) -> None:
    with _through(stalling_proxy) as client, server.client() as direct:
        limiter = _warmed_up(client)
        reservation = limiter.reserve(DAY_CAP, "s", _d("2.00"))
        before = evalsha_runs(direct)
        stalling_proxy.stall_next_replies(1, STALL)
        reservation.settle(_d("1.50"))
        runs = evalsha_runs(direct) - before
        peeked = Limiter(direct).peek(DAY_CAP, "s", cost=0)

    assert runs >= 2  # the settle ran, and ran again for redis-py's re-send
    assert (peeked.used, peeked.held) == (_d("1.50"), 0)


async def test_async_stalled_settle_retried_by_redis_py_charges_once(
    server: Server, stalling_proxy: StallingProxy
) -> None:
    client = stalling_proxy.async_client(socket_timeout=SOCKET_TIMEOUT)
    async with client:
        limiter = AsyncLimiter(client)
        warm = await limiter.reserve(DAY_CAP, "warm-up", _d("1.00"))
        await warm.settle(_d("1.00"))
        reservation = await limiter.reserve(DAY_CAP, "s", _d("2.00"))
        accepted = stalling_proxy.connections_accepted
        stalling_proxy.stall_next_replies(1, STALL)
        await reservation.settle(_d("1.50"))
    with server.client() as direct:
        peeked = Limiter(direct).peek(DAY_CAP, "s", cost=0)

    assert stalling_proxy.connections_accepted > accepted  # redis-py re-sent it
    assert (peeked.used, peeked.held) == (_d("1.50"), 0)


def test_stalled_release_retried_by_redis_py_charges_nothing(
    server: Server, stalling_proxy: StallingProxy
) -> None:
    with _through(stalling_proxy) as client, server.client() as direct:
        limiter = _warmed_up(client)
        reservation = limiter.reserve(DAY_CAP, "s", _d("2.00"))
        before = evalsha_runs(direct)
        stalling_proxy.stall_next_replies(1, STALL)
        reservation.release()
        runs = evalsha_runs(direct) - before
        peeked = Limiter(direct).peek(DAY_CAP, "s", cost=0)

    assert runs >= 2
    assert (peeked.used, peeked.held) == (0, 0)


@pytest.mark.parametrize(
    ("call", "expected"),
    [("settle", ("settled", Decimal("1.50"))), ("release", ("released", 0))],
)
def test_stalled_settle_or_release_reports_what_it_did(
    server: Server, stalling_proxy: StallingProxy, call: str, expected: tuple[str, Decimal]
) -> None:
    # The caller sent one settle. redis-py re-sent it after the timeout; the
    # re-send must read as a replay of that settle (request-ids.md), not as a
    # second settle that "charged 0": callers sum `charged` for billing.
    with _through(stalling_proxy) as client:
        limiter = _warmed_up(client)
        reservation = limiter.reserve(DAY_CAP, "s", _d("2.00"))
        stalling_proxy.stall_next_replies(1, STALL)
        settle = call == "settle"
        outcome = reservation.settle(_d("1.50")) if settle else reservation.release()

    assert (outcome.status, outcome.charged) == expected


def test_the_same_stall_makes_a_naive_settle_charge_twice(
    server: Server, stalling_proxy: StallingProxy
) -> None:
    # The harness can fail: a settle written as plain commands, re-sent by
    # the same retry policy after the same stall, charges twice.
    with _through(stalling_proxy) as client, server.client() as direct:
        client.set("naive:held", 200)
        stalling_proxy.stall_next_replies(1, STALL)
        client.incrby("naive:used", 150)
        client.decrby("naive:held", 200)
        used = int(direct.get("naive:used") or 0)

    assert used == 300


# -- a race: many tasks reserve and settle at once ---------------------------------

RACE_TASKS = 250
RACE_ROUNDS = 3
RACE_TRIES = 4
"""Attempts per round: a denied task waits 1 ms and tries again."""
RACE_LIMIT = 5_000  # cents
RACE_CAP = SpendCap(
    name="race", limit=Decimal("50.00"), currency="AUD", window="day", unit=Decimal("0.01")
)


@dataclass
class Tally:
    admitted: int = 0
    denied: int = 0
    settled: int = 0
    """Sum of the settled amounts, in cents."""
    peak: int = 0
    """Highest committed + held seen by any task after any step, in cents."""


Reserve = Callable[[int], Awaitable[Any]]
Settle = Callable[[Any, int, int], Awaitable[None]]
Sample = Callable[[], Awaitable[tuple[int, int]]]


async def _reserve_and_settle_race(reserve: Reserve, settle: Settle, sample: Sample) -> Tally:
    """Each task, RACE_ROUNDS times: reserve, work a few ms, settle at most the estimate."""
    rng = random.Random(20260101)
    plans = [
        [(rng.randint(10, 100), rng.random(), rng.random()) for _ in range(RACE_ROUNDS)]
        for _ in range(RACE_TASKS)
    ]
    tally = Tally()
    gate = asyncio.Event()

    async def look() -> None:
        used, held = await sample()
        tally.peak = max(tally.peak, used + held)

    async def worker(plan: list[tuple[int, float, float]]) -> None:
        await gate.wait()
        for estimate, share, pause in plan:
            for _ in range(RACE_TRIES):
                handle = await reserve(estimate)
                await look()
                if handle is not None:
                    break
                tally.denied += 1
                await asyncio.sleep(0.001)
            else:
                continue
            tally.admitted += 1
            await asyncio.sleep(pause * 0.003)
            actual = int(estimate * share)  # never above the estimate
            await settle(handle, estimate, actual)
            tally.settled += actual
            await look()

    tasks = [asyncio.create_task(worker(plan)) for plan in plans]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    return tally


def _cents(amount: Decimal) -> int:
    return int(amount * 100)


async def test_concurrent_reservations_never_hold_or_spend_past_the_cap(server: Server) -> None:
    # A clock that stands still: no hold lapses and no window ends mid-race.
    frozen = Clock()
    async with AsyncLimiter.from_url(server.url, time_source="client", clock=frozen) as limiter:

        async def reserve(estimate: int) -> AsyncReservation | None:
            held = await limiter.reserve(RACE_CAP, "subject", Decimal(estimate) / 100)
            return held if held.allowed else None

        async def settle(handle: AsyncReservation, estimate: int, actual: int) -> None:
            outcome = await handle.settle(Decimal(actual) / 100)
            assert outcome.status == "settled"

        async def sample() -> tuple[int, int]:
            peeked = await limiter.peek(RACE_CAP, "subject", cost=0)
            return _cents(peeked.used), _cents(peeked.held)

        tally = await _reserve_and_settle_race(reserve, settle, sample)
        final = await limiter.peek(RACE_CAP, "subject", cost=0)

    assert tally.peak <= RACE_LIMIT
    assert tally.denied > 0  # the cap was contended
    assert tally.admitted >= 50  # the first fifty always fit: no estimate is above 1.00
    assert _cents(final.used) == tally.settled
    assert final.held == 0


async def test_naive_read_then_write_reservation_overshoots_under_the_same_race(
    server: Server,
) -> None:
    client = redis.asyncio.Redis(
        host="127.0.0.1", port=server.port, max_connections=RACE_TASKS, decode_responses=True
    )

    async def reserve(estimate: int) -> int | None:
        used, held = await client.mget("naive:used", "naive:held")
        if int(used or 0) + int(held or 0) + estimate > RACE_LIMIT:
            return None
        await client.incrby("naive:held", estimate)
        return estimate

    async def settle(handle: int, estimate: int, actual: int) -> None:
        await client.incrby("naive:used", actual)
        await client.decrby("naive:held", estimate)

    async def sample() -> tuple[int, int]:
        used, held = await client.mget("naive:used", "naive:held")
        return int(used or 0), int(held or 0)

    async with client:
        tally = await _reserve_and_settle_race(reserve, settle, sample)

    assert tally.peak > RACE_LIMIT


# -- keys ---------------------------------------------------------------------------


def test_every_key_written_carries_its_subjects_tag_and_a_ttl(target: Target) -> None:
    clock = Clock()
    subjects = ("client-42", "a:b{c}")
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        for subject in subjects:
            limiter.hit(CAP, subject, _d("1.00"), request_id="hit-1")
            settled = limiter.reserve(CAP, subject, _d("2.00"), request_id="res-1")
            settled.settle(_d("2.50"))
            limiter.reserve(CAP, subject, _d("1.00")).release()
            limiter.reserve(CAP, subject, _d("1.00"), ttl=timedelta(seconds=5))  # left to expire
            limiter.reserve(CAP, subject, _d("20.00"), request_id="denied-1")
            with limiter.reservation(CAP, subject, _d("1.00")) as reservation:
                reservation.settle_with(_d("0.50"))
            limiter.reserve(CAP, subject, _d("1.00"))  # left open
            clock.advance(6)
            limiter.reserve(CAP, subject, _d("1.00"), ttl=timedelta(seconds=5)).release()
        keys = _all_keys(client)
        ttls = {key: client.pttl(key) for key in keys}

    assert len(keys) >= 2 * 6  # cap, holds, amounts, records, outcomes, per subject
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    for subject in subjects:
        tag = subject_tag(subject)
        mine = [key for key in keys if key.startswith(f"atomlimit:v1:{tag}:")]
        assert {key_slot(key.encode()) for key in mine} == {key_slot(tag.encode())}
        assert any(key.endswith(":holds") for key in mine)
        assert any(":o:" in key for key in mine)
    assert len([k for s in subjects for k in keys if subject_tag(s) in k]) == len(keys)


def _all_keys(client: Any) -> list[str]:
    # SCAN, unlike KEYS, walks every primary of a cluster.
    return sorted(k.decode() if isinstance(k, bytes) else k for k in client.scan_iter("*"))

"""Reservations on rate limits (tokens) on real servers: hold an estimate, settle the actual.

Most tests use ``time_source="client"`` with a clock the test moves (five
seconds into a UTC minute), so holds expire and windows end on command; they
run on Redis, Valkey and the cluster. The race test and its naive twin run
one harness twice: reserve-then-settle must pass the check that
hit-the-estimate-then-refund fails.
"""

from __future__ import annotations

import asyncio
import random
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from conftest import Target
from helpers import Clock
from servers import Server

from atomlimit import (
    AsyncLimiter,
    AsyncReservation,
    Hit,
    InvalidInput,
    Limiter,
    RateLimit,
    SpendCap,
)

TPM = RateLimit(name="tpm", limit=1_000, window="minute")
"""Tokens a minute, in a fixed window."""
RPM = RateLimit(name="rpm", limit=3, window="minute")
"""Requests a minute."""
WINDOW_LEFT = 55.0
"""The controlled clock starts 5 s into a minute."""
HOLD = timedelta(minutes=2)
ALGORITHMS = ("fixed_window", "gcra", "sliding_counter")


def _tpm(algorithm: str) -> RateLimit:
    return RateLimit(name=f"tpm-{algorithm}", limit=1_000, window="minute", algorithm=algorithm)


def _limiter(client: Any, clock: Clock) -> Limiter:
    return Limiter(client, time_source="client", clock=clock)


def _async_limiter(client: Any, clock: Clock) -> AsyncLimiter:
    return AsyncLimiter(client, time_source="client", clock=clock)


# -- settle: the actual, in full ---------------------------------------------------


def test_a_settle_above_the_estimate_charges_past_the_limit_and_hits_wait_for_room(
    target: Target,
) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        held = limiter.reserve(TPM, "org", 600)
        while_held = limiter.hit(TPM, "org", 500)
        settled = held.settle(1_300)
        after = limiter.hit(TPM, "org", 1)
        clock.advance(WINDOW_LEFT)
        next_window = limiter.hit(TPM, "org", 1)

    assert held.allowed
    assert held.decision.used == 600
    assert not while_held.allowed
    assert settled.status == "settled"
    assert settled.charged == 1_300
    assert type(settled.charged) is int
    assert (settled.decision.used, settled.decision.remaining) == (1_300, 0)
    assert not after.allowed
    assert after.retry_after == timedelta(seconds=WINDOW_LEFT)
    assert next_window.allowed
    assert next_window.used == 1


async def test_async_a_settle_above_the_estimate_charges_past_the_limit(target: Target) -> None:
    clock = Clock()
    async with target.async_client() as client:
        limiter = _async_limiter(client, clock)
        held = await limiter.reserve(TPM, "org", 600)
        settled = await held.settle(1_300)
        after = await limiter.hit(TPM, "org", 1)
        clock.advance(WINDOW_LEFT)
        next_window = await limiter.hit(TPM, "org", 1)

    assert isinstance(held, AsyncReservation)
    assert held.allowed
    assert (settled.status, settled.charged, settled.decision.used) == ("settled", 1_300, 1_300)
    assert not after.allowed
    assert next_window.allowed
    assert next_window.used == 1


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_settle_below_the_estimate_gives_the_rest_back(target: Target, algorithm: str) -> None:
    spec = _tpm(algorithm)
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        held = limiter.reserve(spec, "org", 800)
        settled = held.settle(300)
        fits = limiter.hit(spec, "org", 700)
        over = limiter.hit(spec, "org", 1)

    assert (settled.status, settled.charged, settled.decision.used) == ("settled", 300, 300)
    assert fits.allowed
    assert fits.used == 1_000
    assert not over.allowed


# -- release ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_release_gives_the_estimate_back_and_charges_nothing(
    target: Target, algorithm: str
) -> None:
    spec = _tpm(algorithm)
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        limiter.hit(spec, "org", 100)
        held = limiter.reserve(spec, "org", 900)
        full = limiter.peek(spec, "org", 1)
        released = held.release()
        again = held.release()

    assert held.decision.used == 1_000
    assert not full.allowed
    assert (released.status, released.charged, released.decision.used) == ("released", 0, 100)
    assert (again.status, again.charged, again.decision.used) == ("already_released", 0, 100)


async def test_async_release_gives_the_estimate_back(target: Target) -> None:
    async with target.async_client() as client:
        limiter = _async_limiter(client, Clock())
        held = await limiter.reserve(TPM, "org", 900)
        released = await held.release()
        peeked = await limiter.peek(TPM, "org", 1_000)

    assert (released.status, released.charged) == ("released", 0)
    assert peeked.allowed
    assert peeked.used == 0


# -- expiry and windows ----------------------------------------------------------------


def test_a_lapsed_hold_counts_for_hits_until_a_reservation_call_gives_it_back(
    target: Target,
) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        lapsing = limiter.reserve(TPM, "org", 800, ttl=timedelta(seconds=10))
        clock.advance(11)
        hit = limiter.hit(TPM, "org", 300)  # plain hits prune nothing: conservative
        reserved = limiter.reserve(TPM, "org", 300)  # prunes, then fits
        settled = lapsing.settle(200)

    assert lapsing.allowed
    assert not hit.allowed
    assert hit.used == 800
    assert reserved.allowed
    assert reserved.decision.used == 300
    assert settled.status == "settled_after_expiry"
    assert (settled.charged, settled.decision.used) == (200, 500)


def test_a_hold_open_when_its_window_closes_stops_counting_and_settles_in_the_new_one(
    target: Target,
) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        held = limiter.reserve(TPM, "org", 800)
        clock.advance(WINDOW_LEFT)
        peeked = limiter.peek(TPM, "org", 0)
        settled = held.settle(300)

    assert peeked.used == 0
    assert (settled.status, settled.charged, settled.decision.used) == ("settled", 300, 300)


def test_a_sliding_counter_hold_from_a_closed_window_keeps_sliding_out(target: Target) -> None:
    # Released in the next window before any write rolled the counter on:
    # the closed window owes nothing back, as when a hit had rolled it.
    clock = Clock()
    spec = _tpm("sliding_counter")
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        held = limiter.reserve(spec, "org", 600)
        clock.advance(60)  # 5 s into the next minute: 55/60 of 600 still counts
        released = held.release()

    assert released.status == "released"
    assert released.decision.used == 550


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_reset_forgets_holds_so_a_later_release_gives_back_nothing(
    target: Target, algorithm: str
) -> None:
    spec = _tpm(algorithm)
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        held = limiter.reserve(spec, "org", 1_000)
        limiter.reset(spec, "org")
        after_reset = limiter.hit(spec, "org", 1_000)
        released = held.release()
        over = limiter.hit(spec, "org", 1)

    assert after_reset.allowed
    assert released.status == "expired"  # the reset took the hold with it
    assert released.decision.used == 1_000
    assert not over.allowed


# -- acquire: tokens held beside a request slot ---------------------------------------


def _acquire_hits(estimate: int) -> list[Hit[Any]]:
    return [Hit(TPM, "org-1", estimate, hold=HOLD), Hit(RPM, "user-7")]


def test_acquire_holds_tokens_and_takes_a_request_across_two_subjects(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        first = limiter.acquire(_acquire_hits(400))
        limiter.hit(RPM, "user-7", 2)
        denied = limiter.acquire(_acquire_hits(100))
        tokens = limiter.peek(TPM, "org-1", 0)
        settled = first.reservations[0].settle(250)

    assert first.allowed
    assert len(first.reservations) == 1
    assert [d.used for d in first.decisions] == [400, 1]
    assert not denied.allowed
    assert denied.reservations == ()
    assert denied.denied_by == _acquire_hits(100)[1]
    assert tokens.used == 400  # the denied acquire held nothing
    assert (settled.status, settled.decision.used) == ("settled", 250)


def test_undo_acquire_takes_back_the_hold_and_the_request(target: Target) -> None:
    hits = _acquire_hits(400)
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        acquired = limiter.acquire(hits, request_id="job-1")
        undone = limiter.undo_acquire(hits, request_id="job-1")
        again = limiter.undo_acquire(hits, request_id="job-1")
        tokens = limiter.peek(TPM, "org-1", 0)
        requests = limiter.peek(RPM, "user-7", 0)

    assert acquired.allowed
    assert (undone, again) == (True, False)
    assert (tokens.used, requests.used) == (0, 0)


async def test_async_acquire_holds_tokens_and_undo_takes_them_back(target: Target) -> None:
    hits = _acquire_hits(400)
    async with target.async_client() as client:
        limiter = _async_limiter(client, Clock())
        acquired = await limiter.acquire(hits, request_id="job-1")
        held = await limiter.peek(TPM, "org-1", 0)
        undone = await limiter.undo_acquire(hits, request_id="job-1")
        after = await limiter.peek(TPM, "org-1", 0)

    assert acquired.allowed
    assert isinstance(acquired.reservations[0], AsyncReservation)
    assert (held.used, undone, after.used) == (400, True, 0)


# -- request ids: a replay charges once ---------------------------------------------------


def test_a_replayed_reserve_and_settle_charge_once(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        held = limiter.reserve(TPM, "org", 400, request_id="call-1")
        replayed = limiter.reserve(TPM, "org", 400, request_id="call-1")
        settled = held.settle(500)
        twice = held.settle(500)
        by_replay = replayed.settle(500)
        after = limiter.peek(TPM, "org", 0)

    assert replayed.id == held.id == "call-1"
    assert replayed.decision == held.decision
    assert held.decision.used == 400
    assert (settled.status, settled.charged) == ("settled", 500)
    assert (twice.status, twice.charged) == ("already_settled", 0)
    assert (by_replay.status, by_replay.charged) == ("already_settled", 0)
    assert after.used == 500


# -- inputs ------------------------------------------------------------------------------

SPEND = SpendCap(name="ai", limit=Decimal("10.00"), currency="AUD", window="day")


def test_reserve_cap_keyword_is_deprecated_and_still_reserves(server: Server) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        with pytest.warns(DeprecationWarning, match="now named limit"):
            held = limiter.reserve(cap=SPEND, subject="s", estimate=Decimal("2.00"))
        with (
            pytest.warns(DeprecationWarning, match="now named limit"),
            limiter.reservation(cap=SPEND, subject="s", estimate=Decimal("1.00")) as block,
        ):
            block.settle_with(Decimal("0.50"))

    assert held.allowed
    assert held.decision.held == Decimal("2.00")


async def test_async_reserve_cap_keyword_is_deprecated_and_still_reserves(server: Server) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        with pytest.warns(DeprecationWarning, match="now named limit"):
            held = await limiter.reserve(cap=SPEND, subject="s", estimate=Decimal("2.00"))

    assert held.allowed


def test_reserve_with_both_limit_and_cap_is_invalid_input_and_sends_nothing(
    server: Server,
) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # refused before any deprecation warning
            with pytest.raises(InvalidInput, match="cap is its old name"):
                limiter.reserve(SPEND, "s", Decimal(1), cap=SPEND)
        assert client.dbsize() == 0


def test_a_sliding_log_refuses_a_reservation_saying_why(server: Server) -> None:
    log = RateLimit(name="log", limit=10, window="minute", algorithm="sliding_log")
    with server.client() as client:
        limiter = Limiter(client)
        with pytest.raises(InvalidInput, match=r"sliding_log.*one entry per unit"):
            limiter.reserve(log, "s", 1)
        with pytest.raises(InvalidInput, match="sliding_log"):
            limiter.acquire([Hit(log, "s", 1, hold=HOLD)])
        assert client.dbsize() == 0


# -- a race: many tasks reserve tokens and settle at once ----------------------------------

RACE_TASKS = 200
RACE_ROUNDS = 3
RACE_TRIES = 4
"""Attempts per round: a denied task waits 1 ms and tries again."""
RACE_LIMIT = 5_000
RACE_TPM = RateLimit(name="race", limit=RACE_LIMIT, window="day")


@dataclass
class Tally:
    admitted: int = 0
    denied: int = 0
    committed: int = 0
    """Tokens of admitted work now: estimates still in flight plus actuals spent."""
    peak: int = 0
    """The most ``committed`` ever was."""
    spent: int = 0
    """Sum of every admitted call's actual tokens."""

    def commit(self, tokens: int) -> None:
        self.committed += tokens
        self.peak = max(self.peak, self.committed)


Admit = Callable[[int], Awaitable[Any]]
Finish = Callable[[Any, int, int], Awaitable[None]]


async def _tokens_race(admit: Admit, finish: Finish) -> Tally:
    """Each task, RACE_ROUNDS times: admit an estimate, work a few ms, spend at most it."""
    rng = random.Random(20260101)
    plans = [
        [(rng.randint(10, 100), rng.uniform(0.5, 1), rng.random()) for _ in range(RACE_ROUNDS)]
        for _ in range(RACE_TASKS)
    ]
    tally = Tally()
    gate = asyncio.Event()

    async def worker(plan: list[tuple[int, float, float]]) -> None:
        await gate.wait()
        for estimate, share, pause in plan:
            for _ in range(RACE_TRIES):
                handle = await admit(estimate)
                if handle is not None:
                    break
                tally.denied += 1
                await asyncio.sleep(0.001)
            else:
                continue
            tally.admitted += 1
            tally.commit(estimate)
            await asyncio.sleep(pause * 0.003)
            actual = int(estimate * share)  # never above the estimate
            # The work is done: its tokens are spent whatever the limiter says next.
            tally.commit(actual - estimate)
            tally.spent += actual
            await finish(handle, estimate, actual)

    tasks = [asyncio.create_task(worker(plan)) for plan in plans]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    return tally


async def test_concurrent_token_reservations_never_admit_past_the_limit(server: Server) -> None:
    # A clock that stands still: no hold lapses and no window ends mid-race.
    async with AsyncLimiter.from_url(server.url, time_source="client", clock=Clock()) as limiter:

        async def admit(estimate: int) -> AsyncReservation | None:
            held = await limiter.reserve(RACE_TPM, "org", estimate)
            return held if held.allowed else None

        async def finish(handle: AsyncReservation, estimate: int, actual: int) -> None:
            outcome = await handle.settle(actual)
            assert outcome.status == "settled"

        tally = await _tokens_race(admit, finish)
        final = await limiter.peek(RACE_TPM, "org", 0)

    assert tally.peak <= RACE_LIMIT
    assert tally.denied > 0  # the limit was contended
    assert tally.admitted >= 50  # the first fifty always fit: no estimate is above 100
    assert final.used == tally.spent  # every token spent is counted, once


async def test_naive_hit_the_estimate_then_refund_admits_past_the_limit_in_the_same_race(
    server: Server,
) -> None:
    # The same atomic hits and refunds, but a settle in two steps: between
    # giving the estimate back and charging the actual, others are admitted
    # into room the finished work has already spent.
    async with AsyncLimiter.from_url(server.url, time_source="client", clock=Clock()) as limiter:

        async def admit(estimate: int) -> int | None:
            decision = await limiter.hit(RACE_TPM, "naive", estimate)
            return estimate if decision.allowed else None

        async def finish(handle: int, estimate: int, actual: int) -> None:
            await limiter.refund(RACE_TPM, "naive", estimate)
            await asyncio.sleep(0)
            await limiter.hit(RACE_TPM, "naive", actual)  # may be denied: spent anyway

        tally = await _tokens_race(admit, finish)

    assert tally.peak > RACE_LIMIT

"""wait(): the pure sleeping policy, and waiters on a real server that never overshoot.

The race is run twice with one harness: atomlimit's wait, and a naive waiter
that peeks, sleeps and then hits. The naive one must fail the assertion the
real one passes, which shows the harness races.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import Target
from helpers import evalsha_runs
from hypothesis import given
from hypothesis import strategies as st
from servers import Server

from atomlimit import AsyncLimiter, Decision, InvalidInput, Limiter, LimitExceeded, RateLimit
from atomlimit._waiting import JITTER, MAX_JITTER, MIN_SLEEP, deadline_after, pause

RESET = datetime(2026, 1, 1, tzinfo=UTC)


def denied(retry: timedelta | None) -> Decision[int]:
    return Decision(False, 5, 5, 0, RESET, retry, 0, 0)


def draw(value: float) -> Any:
    return lambda: value


# --------------------------------------------------------------------------
# The policy, with plain values
# --------------------------------------------------------------------------


def test_a_denial_sleeps_retry_after_when_the_draw_is_zero() -> None:
    assert pause(denied(timedelta(milliseconds=100)), None, 50.0, draw(0.0)) == pytest.approx(0.1)


def test_jitter_adds_at_most_a_tenth_of_the_wait() -> None:
    sleep = pause(denied(timedelta(milliseconds=100)), None, 50.0, draw(0.999999))

    assert sleep == pytest.approx(0.1 + 0.1 * JITTER * 0.999999)


def test_jitter_is_bounded_on_long_waits() -> None:
    sleep = pause(denied(timedelta(days=30)), None, 0.0, draw(0.999999))

    assert sleep is not None
    assert (
        timedelta(days=30).total_seconds() < sleep < timedelta(days=30).total_seconds() + MAX_JITTER
    )


def test_a_wait_shorter_than_a_millisecond_still_sleeps_one() -> None:
    assert pause(denied(timedelta(microseconds=1)), None, 0.0, draw(0.0)) == MIN_SLEEP


def test_a_cost_that_can_never_fit_gives_up_at_once() -> None:
    assert pause(denied(None), None, 0.0, draw(0.5)) is None


def test_a_try_that_would_land_after_the_deadline_gives_up_now() -> None:
    assert pause(denied(timedelta(seconds=2)), 101.0, 100.0, draw(0.0)) is None


def test_jitter_past_the_deadline_is_cut_so_the_last_try_lands_on_it() -> None:
    assert pause(denied(timedelta(seconds=1)), 101.05, 100.0, draw(0.99)) == pytest.approx(1.05)


@given(
    retry_us=st.one_of(st.none(), st.integers(1, 10**12)),
    now=st.floats(0, 1e6),
    budget=st.one_of(st.none(), st.floats(0, 86_400)),
    drawn=st.floats(0, 1, exclude_max=True),
)
def test_a_pause_is_never_early_never_past_the_deadline_and_never_a_spin(
    retry_us: int | None, now: float, budget: float | None, drawn: float
) -> None:
    retry = None if retry_us is None else timedelta(microseconds=retry_us)
    deadline = None if budget is None else now + budget

    sleep = pause(denied(retry), deadline, now, draw(drawn))

    if sleep is None:
        assert retry is None or (deadline is not None and now + retry.total_seconds() > deadline)
        return
    assert retry is not None
    assert sleep >= retry.total_seconds()
    assert sleep >= MIN_SLEEP or (deadline is not None and sleep == deadline - now)
    assert sleep <= max(MIN_SLEEP, retry.total_seconds() * (1 + JITTER))
    if deadline is not None:
        assert now + sleep <= deadline + 1e-9


@pytest.mark.parametrize(
    ("timeout", "deadline"),
    [(None, None), (0, 10.0), (2.5, 12.5), (timedelta(seconds=3), 13.0), (86_400, 86_410.0)],
)
def test_a_timeout_becomes_a_deadline(timeout: Any, deadline: float | None) -> None:
    assert deadline_after(timeout, 10.0) == deadline


@pytest.mark.parametrize(
    "bad",
    [
        -1,
        -0.001,
        86_401,
        float("nan"),
        float("inf"),
        True,
        "5",
        pytest.param(10**5000, id="huge-int"),
        pytest.param(-(10**5000), id="huge-negative-int"),
        timedelta(days=2),
        timedelta(seconds=-1),
        timedelta.max,
    ],
)
def test_a_timeout_out_of_bounds_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidInput, match="timeout must be"):
        deadline_after(bad, 0.0)


# --------------------------------------------------------------------------
# On a real server
# --------------------------------------------------------------------------

BURST = RateLimit(name="burst", limit=1, window=timedelta(milliseconds=200))


def test_wait_returns_the_allowing_decision_of_a_later_window(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        first = limiter.hit(BURST, "s")
        later = limiter.wait(BURST, "s", timeout=5)

    assert first.allowed
    assert later.allowed
    assert later.reset_at > first.reset_at


async def test_async_wait_returns_the_allowing_decision_of_a_later_window(
    target: Target,
) -> None:
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)
        first = await limiter.hit(BURST, "s")
        later = await limiter.wait(BURST, "s", timeout=timedelta(seconds=5))

    assert later.allowed
    assert later.reset_at > first.reset_at


def test_a_cost_that_can_never_fit_raises_after_one_try(server: Server) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        before = evalsha_runs(client)
        with pytest.raises(LimitExceeded, match="can never fit") as raised:
            limiter.wait(BURST, "s", cost=2)
        runs = evalsha_runs(client) - before

    assert runs == 1
    assert raised.value.subject == "s"
    assert raised.value.limit == BURST


async def test_a_deadline_before_the_next_window_raises_at_once(server: Server) -> None:
    daily = RateLimit(name="daily", limit=1, window="day")
    with server.client() as sync:
        before = evalsha_runs(sync)
    async with server.async_client() as client:
        limiter = AsyncLimiter(client)
        await limiter.hit(daily, "s")
        with pytest.raises(LimitExceeded, match="daily") as raised:
            await limiter.wait(daily, "s", timeout=1)
    with server.client() as sync:
        runs = evalsha_runs(sync) - before

    assert runs == 2  # the first hit, and one try
    assert raised.value.decision.retry_after is not None


def test_bad_input_to_wait_sends_nothing(server: Server) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        before = evalsha_runs(client)
        with pytest.raises(InvalidInput):
            limiter.wait(BURST, "s", timeout=-1)
        with pytest.raises(InvalidInput):
            limiter.wait(BURST, "s", cost=1.5)  # type: ignore[arg-type]
        runs = evalsha_runs(client) - before

    assert runs == 0


WINDOW = RateLimit(name="race", limit=20, window=timedelta(milliseconds=250))
WAITERS = 200


async def _admitted_per_window(server: Server, waiter: Any) -> tuple[Counter[datetime], int]:
    """When each waiter was admitted (by its window's end), and the scripts run meanwhile."""
    with server.client() as client:
        before = evalsha_runs(client)
    async with AsyncLimiter.from_url(server.url) as limiter:
        windows = await asyncio.gather(*(waiter(limiter) for _ in range(WAITERS)))
    with server.client() as client:
        return Counter(windows), evalsha_runs(client) - before


async def test_two_hundred_waiters_admit_exactly_the_limit_per_window(server: Server) -> None:
    async def waiter(limiter: AsyncLimiter) -> datetime:
        decision = await limiter.wait(WINDOW, "subject", timeout=30)
        return decision.reset_at

    per_window, tries = await _admitted_per_window(server, waiter)

    # No window admits more than the limit, and the waiters fill windows to
    # it exactly. Which windows those are is the clock's: on a loaded run
    # the first 200 tries can straddle a 250 ms window's end, leaving the
    # first window only part full (5 of 20, once).
    assert max(per_window.values()) == WINDOW.limit
    assert sum(per_window.values()) == WAITERS
    # No spinning: about one try per waiter per window waited through.
    windows = len(per_window)
    assert tries <= WAITERS * (windows + 2)


async def test_a_naive_peek_sleep_hit_waiter_overshoots_under_the_same_race(
    server: Server,
) -> None:
    async def waiter(limiter: AsyncLimiter) -> datetime:
        while True:
            seen = await limiter.peek(WINDOW, "subject")
            if seen.allowed:
                await asyncio.sleep(0)  # goes ahead on what it saw
                await limiter.hit(WINDOW, "subject")
                return seen.reset_at
            assert seen.retry_after is not None
            await asyncio.sleep(seen.retry_after.total_seconds())

    per_window, _ = await _admitted_per_window(server, waiter)

    assert max(per_window.values()) > WINDOW.limit


def test_waiting_threads_admit_at_most_the_limit_per_window(server: Server) -> None:
    spec = RateLimit(name="threads", limit=5, window=timedelta(milliseconds=250))
    admitted: list[datetime] = []
    lock = threading.Lock()
    with Limiter.from_url(server.url) as limiter:

        def waiter() -> None:
            decision = limiter.wait(spec, "subject", timeout=30)
            with lock:
                admitted.append(decision.reset_at)

        threads = [threading.Thread(target=waiter) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    per_window = Counter(admitted)
    assert len(admitted) == 20
    assert max(per_window.values()) == spec.limit

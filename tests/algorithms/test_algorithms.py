"""GCRA, sliding log and sliding counter; partial grants, refunds and shadow mode.

Each test states one promise of docs/algorithms.md, docs/partial-grants.md,
docs/refunds.md or docs/shadow-mode.md and checks it on real servers. Most
run with ``time_source="client"`` and a clock the test controls to the
microsecond, so edges (``retry_after``, ``now - window``) are checked exactly
and no test waits on the real clock.
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
import redis.asyncio
from conftest import Target
from helpers import SECOND, T0, MicroClock
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot
from servers import Server

from atomlimit import (
    AsyncLimiter,
    Concurrency,
    Hit,
    InvalidInput,
    Limiter,
    RateLimit,
    RequestIdReused,
    Spec,
    SpendCap,
)
from atomlimit.cli.demo import _race

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)

_runs = itertools.count()


def at(us: int) -> datetime:
    return EPOCH + us * US


def controlled(client: Any, clock: MicroClock, **options: Any) -> Limiter:
    return Limiter(client, time_source="client", clock=clock, **options)


def most_in_one_span(admitted: list[tuple[int, Any]], length: int) -> Any:
    """The most units admitted at instants no more than ``length - 1`` µs apart.

    That is any span of one window: a sliding window at ``now`` holds what
    was admitted strictly after ``now - length``.
    """
    return max(
        (sum(u for t, u in admitted if first <= t < first + length) for first, _ in admitted),
        default=0,
    )


# -- GCRA ----------------------------------------------------------------------

T = 100_000
"""The emission interval of the specs below: one second / 10."""
GCRA = RateLimit(name="api", limit=10, window=timedelta(seconds=1), algorithm="gcra")
GCRA_BURST4 = RateLimit(
    name="api4", limit=10, window=timedelta(seconds=1), algorithm="gcra", burst=4
)


def test_gcra_passes_exactly_the_burst_from_idle_then_denies(target: Target) -> None:
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        decisions = [limiter.hit(GCRA_BURST4, "s") for _ in range(5)]
        default_burst = [limiter.hit(GCRA, "s") for _ in range(11)]

    assert [d.allowed for d in decisions] == [True, True, True, True, False]
    assert {d.limit for d in decisions} == {4}
    assert [d.used for d in decisions] == [1, 2, 3, 4, 4]
    assert [d.remaining for d in decisions] == [3, 2, 1, 0, 0]
    assert [d.granted for d in decisions] == [1, 1, 1, 1, 0]
    assert [d.allowed for d in default_burst] == [True] * 10 + [False]
    assert {d.limit for d in default_burst} == {10}


def test_gcra_retry_after_is_the_first_instant_that_passes(target: Target) -> None:
    clock = MicroClock()
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        limiter.hit(GCRA_BURST4, "s", cost=4)
        denied = limiter.hit(GCRA_BURST4, "s", cost=3)
        assert denied.retry_after is not None
        clock.us = T0 + denied.retry_after // US - 1
        one_early = limiter.hit(GCRA_BURST4, "s", cost=3)
        clock.us += 1
        on_time = limiter.hit(GCRA_BURST4, "s", cost=3)

    assert not denied.allowed
    assert denied.retry_after == 3 * T * US
    assert not one_early.allowed
    assert one_early.retry_after == US
    assert on_time.allowed
    assert on_time.used == 4


def test_gcra_cost_above_the_burst_is_denied_with_no_retry_after(target: Target) -> None:
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        too_big = limiter.hit(GCRA_BURST4, "s", cost=5)
        whole_burst = limiter.hit(GCRA_BURST4, "s", cost=4)

    assert not too_big.allowed
    assert too_big.retry_after is None
    assert too_big.used == 0
    assert too_big.remaining == 4
    assert whole_burst.allowed


def test_gcra_refills_one_unit_per_emission_interval(target: Target) -> None:
    clock = MicroClock()
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        limiter.hit(GCRA_BURST4, "s", cost=4)
        clock.us += 2 * T
        after_two = [limiter.hit(GCRA_BURST4, "s").allowed for _ in range(3)]
        clock.us += T - 1
        just_short = limiter.hit(GCRA_BURST4, "s")
        clock.us += 1
        refilled = limiter.hit(GCRA_BURST4, "s")

    assert after_two == [True, True, False]
    assert not just_short.allowed
    assert refilled.allowed


def test_gcra_reset_at_is_when_the_bucket_is_full_again(target: Target) -> None:
    clock = MicroClock()
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        charged = limiter.hit(GCRA_BURST4, "s", cost=3)
        clock.us = T0 + 3 * T // 2
        halfway = limiter.peek(GCRA_BURST4, "s", cost=0)
        clock.us = T0 + 3 * T - 1
        nearly = limiter.peek(GCRA_BURST4, "s", cost=0)
        clock.us = T0 + 3 * T
        full = limiter.peek(GCRA_BURST4, "s", cost=0)

    assert charged.reset_at == at(T0 + 3 * T)
    # remaining is what could pass now; used is the burst less that.
    assert (halfway.remaining, halfway.used) == (2, 2)
    assert (nearly.remaining, nearly.used) == (3, 1)
    assert (full.remaining, full.used) == (4, 0)
    assert full.reset_at == at(T0 + 3 * T)


def test_gcra_with_a_fractional_interval_passes_the_whole_burst_from_idle(
    server: Server,
) -> None:
    # T = 1 s / 3 = 333,333.33 µs: three units fit in the burst at once.
    thirds = RateLimit(name="thirds", limit=3, window="second", algorithm="gcra")
    with server.client() as client:
        limiter = controlled(client, MicroClock())
        decisions = [limiter.hit(thirds, "s") for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.used for d in decisions] == [1, 2, 3, 3]


def test_gcra_full_bucket_with_a_fractional_interval_still_allows_a_zero_cost_check(
    server: Server,
) -> None:
    # partial-grants.md: allowed is True when cost was 0; used never passes
    # the limit outside shadow mode.
    spec = RateLimit(name="two", limit=3, window="second", algorithm="gcra", burst=2)
    with server.client() as client:
        limiter = controlled(client, MicroClock())
        full = limiter.hit(spec, "s", cost=2)
        check = limiter.peek(spec, "s", cost=0)
        nothing = limiter.hit(spec, "s", cost=0, partial=True)

    assert full.allowed
    assert full.used == 2
    assert check.allowed
    assert check.used == 2
    assert nothing.allowed


def test_gcra_faster_than_one_request_a_microsecond_is_refused() -> None:
    # 10,000 per millisecond would be T = 0.1 µs, finer than the server's
    # clock can space requests: the spec is refused rather than kept loosely.
    with pytest.raises(InvalidInput, match="at least 1 us apart"):
        RateLimit(
            name="dense", limit=10_000, window=timedelta(milliseconds=1), algorithm="gcra", burst=3
        )
    one_a_microsecond = RateLimit(
        name="dense", limit=1_000, window=timedelta(milliseconds=1), algorithm="gcra", burst=3
    )
    assert one_a_microsecond.limit == 1_000


def test_gcra_with_a_long_interval_passes_no_earlier_than_retry_after(server: Server) -> None:
    # One an hour: T = 3.6e9 µs. The retry is an hour away, to the microsecond.
    hourly = RateLimit(name="hourly", limit=1, window="hour", algorithm="gcra")
    clock = MicroClock()
    with server.client() as client:
        limiter = controlled(client, clock)
        limiter.hit(hourly, "s")
        denied = limiter.hit(hourly, "s")
        clock.us = T0 + 3_600 * SECOND - 1
        one_early = limiter.peek(hourly, "s")
        clock.us += 1
        on_time = limiter.peek(hourly, "s")

    assert denied.retry_after == timedelta(hours=1)
    assert not one_early.allowed
    assert on_time.allowed


GC_BASE_MS = 1_735_689_600_000
"""lib/gcra.lua stores the TAT in microseconds counted from 2025-01-01."""


def test_gcra_state_outlives_its_arrival_time_on_the_server_clock(target: Target) -> None:
    # hit_gcra.lua sets the expiry only when the TAT enters a later second
    # and otherwise keeps it; acquire and refund (lib/gcra.lua) set it too.
    # Whichever wrote last, the key must live until GRACE_MS past its TAT,
    # or a busy subject's state would vanish and its burst refill early.
    spec = RateLimit(name="tat", limit=10, window="second", algorithm="gcra", burst=100)
    lives: list[bool] = []
    expiries: list[int] = []
    with target.sync_client() as client:
        limiter = Limiter(client)

        def check() -> None:
            (key,) = client.scan_iter("*tat*")
            tat_ms = GC_BASE_MS + float(client.get(key)) / 1000
            expiry = client.pexpiretime(key)
            lives.append(expiry >= tat_ms + 5_000)
            expiries.append(expiry)

        for step in range(45):
            if step % 9 == 8:
                limiter.refund(spec, "s", 3)
            elif step % 5 == 4:
                limiter.acquire([Hit(spec, "s", 2)])
            else:
                assert limiter.hit(spec, "s", 1 + step % 3).allowed
            check()

    assert all(lives)
    # The loop crossed seconds of TAT, and some hits kept the expiry.
    assert len(set(expiries)) > 2
    assert len(set(expiries)) < len(expiries)


async def test_async_gcra_passes_the_burst_then_refills(target: Target) -> None:
    clock = MicroClock()
    async with target.async_client() as client:
        limiter = AsyncLimiter(client, time_source="client", clock=clock)
        burst = [(await limiter.hit(GCRA_BURST4, "s")).allowed for _ in range(5)]
        clock.us += T
        refilled = await limiter.hit(GCRA_BURST4, "s")

    assert burst == [True, True, True, True, False]
    assert refilled.allowed
    assert refilled.used == 4


# -- Sliding log -----------------------------------------------------------------

W = SECOND
LOG = RateLimit(name="login", limit=5, window=timedelta(seconds=1), algorithm="sliding_log")


def test_sliding_log_entry_at_exactly_now_minus_window_no_longer_counts(target: Target) -> None:
    clock = MicroClock()
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        filled = limiter.hit(LOG, "s", cost=5)
        clock.us = T0 + W - 1
        still_in = limiter.hit(LOG, "s")
        clock.us = T0 + W
        out = limiter.hit(LOG, "s", cost=5)

    assert filled.used == 5
    assert not still_in.allowed
    assert still_in.used == 5
    assert out.allowed
    assert out.used == 5


def test_sliding_log_retry_after_is_when_enough_oldest_entries_leave(target: Target) -> None:
    clock = MicroClock()
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        for offset, cost in ((0, 2), (100_000, 1), (200_000, 2)):
            clock.us = T0 + offset
            limiter.hit(LOG, "s", cost=cost)
        clock.us = T0 + 300_000
        three = limiter.hit(LOG, "s", cost=3)
        two = limiter.peek(LOG, "s", cost=2)
        clock.us = T0 + 100_000 + W - 1
        one_early = limiter.hit(LOG, "s", cost=3)
        clock.us += 1
        on_time = limiter.hit(LOG, "s", cost=3)

    # Three units must leave: the two at T0 and the one at T0 + 100 ms.
    assert not three.allowed
    assert three.retry_after == timedelta(milliseconds=800)
    assert two.retry_after == timedelta(milliseconds=700)
    assert three.used == 5
    # reset_at: when the newest entry leaves the window.
    assert three.reset_at == at(T0 + 200_000 + W)
    assert not one_early.allowed
    assert on_time.allowed
    assert on_time.used == 5
    assert on_time.reset_at == at(T0 + 100_000 + 2 * W)


def test_sliding_log_with_nothing_logged_resets_now(target: Target) -> None:
    with target.sync_client() as client:
        empty = controlled(client, MicroClock()).peek(LOG, "s")

    assert empty.used == 0
    assert empty.reset_at == at(T0)


def test_sliding_log_limit_above_max_log_is_refused_naming_limit_and_max_log() -> None:
    with pytest.raises(InvalidInput) as refused:
        RateLimit(name="login", limit=50_000, window=timedelta(minutes=15), algorithm="sliding_log")

    message = str(refused.value)
    assert message.startswith("RateLimit.limit: ")
    assert "50000 is above max_log=10000" in message
    assert RateLimit(name="at-bound", limit=10_000, window="minute", algorithm="sliding_log")


def test_sliding_log_raising_max_log_admits_a_larger_limit(server: Server) -> None:
    spec = RateLimit(
        name="big", limit=12_000, window="minute", algorithm="sliding_log", max_log=20_000
    )
    with server.client() as client:
        limiter = controlled(client, MicroClock())
        whole = limiter.hit(spec, "s", cost=12_000)
        over = limiter.hit(spec, "s")

    assert whole.allowed
    assert whole.used == 12_000
    assert not over.allowed


def test_shadow_sliding_log_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"RateLimit\.shadow: a shadow sliding_log"):
        RateLimit(name="s", limit=5, window="minute", algorithm="sliding_log", shadow=True)


def test_sliding_log_counts_a_request_id_charged_again_after_its_record_expired(
    server: Server,
) -> None:
    # request-ids.md: a record lives request_ttl; after that the id is new and
    # a hit under it is charged again. The log must then hold what it reports.
    spec = RateLimit(name="login", limit=5, window="hour", algorithm="sliding_log")
    with server.client() as client:
        limiter = Limiter(client, request_ttl=timedelta(milliseconds=20))
        limiter.hit(spec, "s", cost=2, request_id="req-1")
        time.sleep(0.1)
        again = limiter.hit(spec, "s", cost=2, request_id="req-1")
        logged = limiter.peek(spec, "s", cost=0)

    assert again.granted == 2
    assert again.used == 4
    assert logged.used == again.used


async def test_async_sliding_log_is_exact_over_a_span(target: Target) -> None:
    clock = MicroClock()
    async with target.async_client() as client:
        limiter = AsyncLimiter(client, time_source="client", clock=clock)
        clock.us = T0 + W - 1
        await limiter.hit(LOG, "s", cost=5)
        clock.us = T0 + W  # a new fixed window would start here, the log does not
        straddle = await limiter.hit(LOG, "s")
        clock.us = T0 + 2 * W - 1
        slid = await limiter.hit(LOG, "s", cost=5)

    assert not straddle.allowed
    assert straddle.retry_after == timedelta(microseconds=W - 1)
    assert slid.allowed


# -- Sliding counter -------------------------------------------------------------

L = SECOND
COUNTER = RateLimit(
    name="search", limit=10, window=timedelta(seconds=1), algorithm="sliding_counter"
)


def test_sliding_counter_weights_the_previous_window_by_what_is_left_of_it(
    target: Target,
) -> None:
    clock = MicroClock(T0 + 9 * L // 10)
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        limiter.hit(COUNTER, "s", cost=10)
        clock.us = T0 + L + 3 * L // 10
        estimate = limiter.peek(COUNTER, "s", cost=0)
        fits = limiter.hit(COUNTER, "s", cost=3)
        over = limiter.hit(COUNTER, "s")
        clock.us = T0 + L + 55 * L // 100
        later = limiter.peek(COUNTER, "s", cost=0)

    # 10 x 0.7 of the previous window, nothing yet in this one.
    assert (estimate.used, estimate.remaining) == (7, 3)
    assert fits.allowed
    assert fits.used == 10
    assert not over.allowed
    # 10 x 0.45 + 3 = 7.5: used rounds up, what fits rounds down.
    assert (later.used, later.remaining) == (8, 2)


def test_sliding_counter_retry_after_is_the_first_instant_that_passes(target: Target) -> None:
    clock = MicroClock(T0 + 9 * L // 10)
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        # Case 1: room comes as the previous window slides out of this one.
        limiter.hit(COUNTER, "a", cost=10)
        clock.us = T0 + L + 3 * L // 10
        sliding = limiter.hit(COUNTER, "a", cost=5)
        # Case 2: the current window is too full; room comes in the next one.
        limiter.hit(COUNTER, "b", cost=10)
        next_window = limiter.hit(COUNTER, "b", cost=4)
        start = clock.us
        outcomes = []
        for subject, cost, decision in (("a", 5, sliding), ("b", 4, next_window)):
            assert decision.retry_after is not None
            clock.us = start + decision.retry_after // US - 1
            outcomes.append(limiter.peek(COUNTER, subject, cost=cost).allowed)
            clock.us += 1
            outcomes.append(limiter.peek(COUNTER, subject, cost=cost).allowed)

    assert sliding.retry_after == timedelta(milliseconds=200)  # 10 x (1 - e) <= 5 at e = 0.5
    assert next_window.retry_after == timedelta(milliseconds=1100)  # 10 x (1 - e) <= 6 at e = 0.4
    assert outcomes == [False, True, False, True]


@pytest.mark.parametrize(
    ("charged_at", "retry_from"),
    [
        # 9 in the previous window: 9 x (1 - e) <= 8 from e = 1/9, 111,111.1 µs in.
        (T0 + L // 2, T0 + L),
        # 9 in this window: in the next, the same 1/9 of the way in.
        (T0, T0),
    ],
    ids=["sliding-out-of-this-window", "in-the-next-window"],
)
def test_sliding_counter_retry_after_between_microseconds_is_rounded_up(
    target: Target, charged_at: int, retry_from: int
) -> None:
    clock = MicroClock(charged_at)
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        limiter.hit(COUNTER, "s", cost=9)
        clock.us = retry_from
        denied = limiter.hit(COUNTER, "s", cost=2)
        assert denied.retry_after is not None
        clock.us += denied.retry_after // US
        retried = limiter.peek(COUNTER, "s", cost=2)

    assert retried.allowed
    assert clock.us == T0 + L + 111_112


def test_sliding_counter_reset_at_is_when_the_estimate_drains(target: Target) -> None:
    clock = MicroClock(T0 + L + L // 5)
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        untouched = limiter.peek(COUNTER, "s")
        charged = limiter.hit(COUNTER, "s", cost=4)
        clock.us = T0 + 2 * L + L // 2
        sliding_out = limiter.peek(COUNTER, "s", cost=0)
        clock.us = T0 + 3 * L
        drained = limiter.peek(COUNTER, "s", cost=0)

    assert untouched.reset_at == at(T0 + L + L // 5)
    # This window's count is the previous one's until the end of the next.
    assert charged.reset_at == at(T0 + 3 * L)
    assert sliding_out.used == 2
    assert sliding_out.reset_at == at(T0 + 3 * L)
    assert drained.used == 0


@st.composite
def adversarial_arrivals(draw: st.DrawFn) -> list[int]:
    """Offsets from T0 over four windows, crowding the window edges."""
    near_edge = st.builds(
        lambda window, offset: window * L + offset,
        st.integers(1, 3),
        st.one_of(st.integers(-3, 3), st.integers(-L // 5, L // 5)),
    )
    anywhere = st.integers(0, 4 * L - 1)
    return sorted(draw(st.lists(st.one_of(near_edge, anywhere), min_size=1, max_size=30)))


def test_sliding_counter_never_admits_more_than_twice_the_limit_less_one_in_a_window_span(
    server: Server,
) -> None:
    # algorithms.md: "It never admits more than 2 x limit - 1 in any span of
    # one window." Every arrival asks for as much as it can get (partial).
    with server.client() as client:

        @settings(max_examples=80, deadline=None)
        @given(limit=st.sampled_from([1, 2, 3, 5, 10, 60]), arrivals=adversarial_arrivals())
        def bounded(limit: int, arrivals: list[int]) -> None:
            spec = RateLimit(
                name="bound", limit=limit, window=timedelta(seconds=1), algorithm="sliding_counter"
            )
            clock = MicroClock()
            limiter = controlled(client, clock, prefix=f"bound{next(_runs)}")
            admitted = []
            for offset in arrivals:
                clock.us = T0 + offset
                admitted.append((clock.us, limiter.hit(spec, "s", limit, partial=True).granted))

            assert most_in_one_span(admitted, L) <= 2 * limit - 1

        bounded()


def test_sliding_counter_reaches_its_bound_when_the_previous_window_crowds_its_end(
    target: Target,
) -> None:
    clock = MicroClock(T0 + L - 1)
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        admitted = [(clock.us, limiter.hit(COUNTER, "s", cost=10, partial=True).granted)]
        clock.us = T0 + 2 * L - 2
        admitted.append((clock.us, limiter.hit(COUNTER, "s", cost=10, partial=True).granted))

    assert admitted == [(T0 + L - 1, 10), (T0 + 2 * L - 2, 9)]
    assert most_in_one_span(admitted, L) == 2 * 10 - 1


def test_fixed_window_admits_twice_the_limit_in_a_window_span(target: Target) -> None:
    # The twin of the bound above: the same check fails for a fixed window.
    spec = RateLimit(name="fixed", limit=10, window=timedelta(seconds=1))
    clock = MicroClock(T0 + L - 1)
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        admitted = [(clock.us, limiter.hit(spec, "s", cost=10).granted)]
        clock.us = T0 + L
        admitted.append((clock.us, limiter.hit(spec, "s", cost=10).granted))

    assert most_in_one_span(admitted, L) == 2 * 10
    assert most_in_one_span(admitted, L) > 2 * 10 - 1


@pytest.mark.parametrize(("window", "limit"), [("hour", 1), ("day", 5)])
def test_sliding_counter_with_a_long_window_keeps_its_bound(
    server: Server, window: str, limit: int
) -> None:
    spec = RateLimit(name="long", limit=limit, window=window, algorithm="sliding_counter")  # type: ignore[arg-type]
    length = {"hour": 3_600, "day": 86_400}[window] * SECOND
    clock = MicroClock(T0 - 1)
    with server.client() as client:
        limiter = controlled(client, clock)
        admitted = [(clock.us, limiter.hit(spec, "s", cost=limit).granted)]
        # Two microseconds short of a window later: the first hit still counts.
        clock.us = T0 + length - 2
        admitted.append((clock.us, limiter.hit(spec, "s", cost=limit, partial=True).granted))

    assert most_in_one_span(admitted, length) <= 2 * limit - 1


def test_sliding_counter_admits_uniform_traffic_at_the_rate_within_one_unit_per_window(
    server: Server,
) -> None:
    clock = MicroClock()
    with server.client() as client:
        limiter = controlled(client, clock)
        at_rate: dict[int, int] = {}
        for n in range(80):  # 10 a second, half a period off the window edges
            clock.us = T0 + 50_000 + n * 100_000
            window = (clock.us - T0) // L
            at_rate[window] = at_rate.get(window, 0) + limiter.hit(COUNTER, "at").allowed
        below = []
        for n in range(64):  # 8 a second
            clock.us = T0 + 10 * L + 3_000 + n * 125_000
            below.append(limiter.hit(COUNTER, "below").allowed)

    assert at_rate[0] == 10
    assert all(9 <= admitted <= 10 for admitted in at_rate.values()), at_rate
    assert all(below)


def test_every_algorithm_keeps_counting_when_a_worker_clock_is_a_little_behind(
    server: Server,
) -> None:
    # clock.lua: state outlives its window "so a worker whose clock runs a few
    # seconds behind the writer's (client time) still finds the count". Two
    # workers 4 ms apart, straddling a window edge, share one limit of 10.
    specs = {
        algorithm: RateLimit(
            name=algorithm, limit=10, window=timedelta(seconds=1), algorithm=algorithm
        )
        for algorithm in ("gcra", "sliding_log", "sliding_counter")
    }
    ahead, behind = MicroClock(T0 + 2_000), MicroClock(T0 - 2_000)
    with server.client() as client:
        early, late = controlled(client, ahead), controlled(client, behind)
        admitted = {
            name: (
                sum(early.hit(spec, "s").allowed for _ in range(10)),
                sum(late.hit(spec, "s").allowed for _ in range(10)),
            )
            for name, spec in specs.items()
        }

    assert admitted == dict.fromkeys(specs, (10, 0))


def test_client_time_fixed_windows_follow_each_workers_clock_at_the_edge(server: Server) -> None:
    # A fixed window's counter is named by its window. With client time, the
    # window is the one each worker's clock names, so two workers whose clocks
    # straddle an edge count in two windows (docs/clock-and-windows.md): the
    # reason server time, one clock for all, is the default.
    spec = RateLimit(name="edge", limit=10, window=timedelta(seconds=1))
    ahead, behind = MicroClock(T0 + 2_000), MicroClock(T0 - 2_000)
    with server.client() as client:
        early, late = controlled(client, ahead), controlled(client, behind)
        first = [early.hit(spec, "s") for _ in range(10)]
        second = [late.hit(spec, "s") for _ in range(10)]

    assert all(d.allowed for d in first + second)
    assert {d.reset_at for d in first} != {d.reset_at for d in second}


async def test_async_sliding_counter_weights_the_previous_window(target: Target) -> None:
    clock = MicroClock(T0 + L // 2)
    async with target.async_client() as client:
        limiter = AsyncLimiter(client, time_source="client", clock=clock)
        await limiter.hit(COUNTER, "s", cost=8)
        clock.us = T0 + L + L // 4
        estimate = await limiter.hit(COUNTER, "s", cost=4)
        over = await limiter.hit(COUNTER, "s")

    assert estimate.allowed
    assert estimate.used == 10  # 8 x 0.75 + 4
    assert not over.allowed


# -- Partial grants ----------------------------------------------------------------

KINDS = ("fixed_window", "spend_cap", "gcra", "sliding_log", "sliding_counter")


def spec_of(kind: str, name: str = "tokens", limit: int = 10, **options: Any) -> Spec[Any]:
    """A limit of ``limit`` units of ``kind``, not refilling while the clock stands still."""
    if kind == "spend_cap":
        return SpendCap(
            name=name,
            limit=Decimal(limit),
            currency="AUD",
            window="hour",
            unit=Decimal(1),
            **options,
        )
    return RateLimit(name=name, limit=limit, window="hour", algorithm=kind, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_partial_hit_grants_what_remains(target: Target, kind: str) -> None:
    spec = spec_of(kind)
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        first = limiter.hit(spec, "s", 7, partial=True)
        short = limiter.hit(spec, "s", 5, partial=True)
        empty = limiter.hit(spec, "s", 2, partial=True)
        zero = limiter.hit(spec, "s", 0, partial=True)
        limiter.hit(spec, "whole", 7)
        whole = limiter.hit(spec, "whole", 5)

    assert (first.allowed, first.granted, first.used, first.remaining) == (True, 7, 7, 3)
    assert (short.allowed, short.granted, short.used, short.remaining) == (True, 3, 10, 0)
    assert (empty.allowed, empty.granted, empty.used) == (False, 0, 10)
    assert empty.retry_after is not None
    assert (zero.allowed, zero.granted) == (True, 0)
    # Without partial=True the same shortfall is a plain denial.
    assert (whole.allowed, whole.granted, whole.used) == (False, 0, 7)


@pytest.mark.parametrize("kind", KINDS)
def test_partial_replay_returns_the_original_grant_and_charges_nothing_more(
    target: Target, kind: str
) -> None:
    spec = spec_of(kind)
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        limiter.hit(spec, "s", 7)
        first = limiter.hit(spec, "s", 5, partial=True, request_id="req-1")
        limiter.reset(spec, "s")  # room again: a fresh evaluation would grant all 5
        replay = limiter.hit(spec, "s", 5, partial=True, request_id="req-1")
        after = limiter.peek(spec, "s", 0)
        fresh = limiter.hit(spec, "s", 5, partial=True, request_id="req-2")

    assert first.granted == 3
    assert replay == first
    assert after.used == 0
    assert fresh.granted == 5


TASKS = 200


@pytest.mark.parametrize("kind", KINDS)
async def test_racing_partial_hits_grant_exactly_the_limit(server: Server, kind: str) -> None:
    spec = spec_of(kind, name="race", limit=100)
    grants: list[Any] = []
    async with AsyncLimiter.from_url(
        server.url, time_source="client", clock=MicroClock()
    ) as limiter:

        async def attempt() -> bool:
            decision = await limiter.hit(spec, "subject", 3, partial=True)
            assert decision.used <= 100
            grants.append(decision.granted)
            return decision.allowed

        admitted, _ = await _race(TASKS, attempt)
        final = await limiter.peek(spec, "subject", 0)

    assert sum(grants) == 100
    assert final.used == 100
    assert sorted(grants, reverse=True)[:35] == [3] * 33 + [1, 0]
    assert admitted == 34


async def test_naive_partial_read_then_write_grants_past_the_limit(server: Server) -> None:
    # The twin of the race above: read what is left, grant it, then add it.
    client = redis.asyncio.Redis.from_url(server.url, max_connections=TASKS)
    grants: list[int] = []

    async def attempt() -> bool:
        used = int(await client.get("naive") or 0)
        grant = max(min(3, 100 - used), 0)
        if grant:
            await client.incrby("naive", grant)
        grants.append(grant)
        return grant > 0

    try:
        await _race(TASKS, attempt)
    finally:
        await client.aclose()

    assert sum(grants) > 100


# -- Refunds -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_refund_gives_back_usage_and_never_below_zero(target: Target, kind: str) -> None:
    spec = spec_of(kind)
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        limiter.hit(spec, "s", 5)
        back = limiter.refund(spec, "s", 2)
        emptied = limiter.refund(spec, "s", 100)
        refilled = [limiter.hit(spec, "s", 5).allowed for _ in range(3)]

    assert (back.used, back.remaining, back.granted) == (3, 7, 0)
    assert emptied.used == 0
    # Refunding more than was used leaves no credit behind.
    assert refilled == [True, True, False]


@pytest.mark.parametrize("kind", ["fixed_window", "spend_cap"])
def test_refund_after_the_window_closed_gives_nothing_back(target: Target, kind: str) -> None:
    spec = spec_of(kind)
    clock = MicroClock()
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        limiter.hit(spec, "s", 8)
        clock.us += 3_600 * SECOND
        refunded = limiter.refund(spec, "s", 5)
        next_window = [limiter.hit(spec, "s", 5).allowed for _ in range(3)]

    assert refunded.used == 0
    assert next_window == [True, True, False]


def test_gcra_refund_moves_the_arrival_time_back_never_before_now(server: Server) -> None:
    clock = MicroClock()
    with server.client() as client:
        limiter = controlled(client, clock)
        limiter.hit(GCRA, "s", 6)
        back = limiter.refund(GCRA, "s", 2)
        clock.us += 2 * T
        emptied = limiter.refund(GCRA, "s", 5)
        refilled = [limiter.hit(GCRA, "s").allowed for _ in range(11)]

    assert back.used == 4
    assert back.reset_at == at(T0 + 4 * T)
    assert emptied.used == 0
    assert emptied.reset_at == at(T0 + 2 * T)
    assert refilled == [True] * 10 + [False]


def test_sliding_log_refund_removes_the_newest_entries(target: Target) -> None:
    clock = MicroClock()
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        limiter.hit(LOG, "s", 2)
        clock.us = T0 + 100_000
        limiter.hit(LOG, "s", 2)
        clock.us = T0 + 200_000
        one = limiter.refund(LOG, "s", 1)
        two = limiter.refund(LOG, "s", 1)
        clock.us = T0 + W
        oldest_gone = limiter.peek(LOG, "s", 0)

    assert one.used == 3
    assert one.reset_at == at(T0 + 100_000 + W)
    assert two.used == 2
    assert two.reset_at == at(T0 + W)
    assert oldest_gone.used == 0


def test_sliding_counter_refund_lowers_only_the_current_window(target: Target) -> None:
    clock = MicroClock(T0 + L // 2)
    with target.sync_client() as client:
        limiter = controlled(client, clock)
        limiter.hit(COUNTER, "s", 6)
        clock.us = T0 + L + L // 2
        charged = limiter.hit(COUNTER, "s", 2)
        refunded = limiter.refund(COUNTER, "s", 10)

    assert charged.used == 5  # 6 x 0.5 + 2
    assert refunded.used == 3  # the previous window's share stays
    assert refunded.remaining == 7


def test_spend_cap_refund_lowers_committed_spend_never_holds(target: Target) -> None:
    cap = SpendCap(name="ai", limit=Decimal("10.00"), currency="AUD", window="day")
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        limiter.hit(cap, "s", Decimal("4.00"))
        limiter.reserve(cap, "s", Decimal("3.00"))
        refunded = limiter.refund(cap, "s", Decimal("10.00"))

    assert refunded.used == 0
    assert refunded.held == Decimal("3.00")
    assert refunded.remaining == Decimal("7.00")


def test_concurrency_limit_refund_is_refused(server: Server) -> None:
    inflight = Concurrency(name="openai", limit=2)
    with server.client() as client:
        limiter = Limiter(client)
        lease = limiter.lease(inflight, "s")
        with pytest.raises(InvalidInput, match="release the lease"):
            limiter.refund(inflight, "s", 1)
        second = limiter.lease(inflight, "s", raise_on_deny=False)
        third = limiter.lease(inflight, "s", raise_on_deny=False)

    assert lease.allowed
    assert second.allowed
    assert not third.allowed


@pytest.mark.parametrize("kind", KINDS)
def test_refund_resent_with_its_request_id_gives_back_nothing_more(
    target: Target, kind: str
) -> None:
    spec = spec_of(kind)
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        limiter.hit(spec, "s", 6)
        first = limiter.refund(spec, "s", 2, request_id="req-1:refund")
        again = limiter.refund(spec, "s", 2, request_id="req-1:refund")
        after = limiter.peek(spec, "s", 0)

    assert first.used == 4
    assert again == first
    assert after.used == 4


@pytest.mark.parametrize("kind", KINDS)
def test_refunds_without_an_id_give_back_each_time(target: Target, kind: str) -> None:
    # The twin of the test above: the same two sends without an id count twice.
    spec = spec_of(kind)
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        limiter.hit(spec, "s", 6)
        limiter.refund(spec, "s", 2)
        limiter.refund(spec, "s", 2)
        after = limiter.peek(spec, "s", 0)

    assert after.used == 2


@pytest.mark.parametrize("kind", KINDS)
def test_refund_request_id_reused_for_another_amount_is_refused(target: Target, kind: str) -> None:
    spec = spec_of(kind)
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        limiter.hit(spec, "s", 6)
        limiter.refund(spec, "s", 2, request_id="req-1:refund")
        with pytest.raises(RequestIdReused):
            limiter.refund(spec, "s", 3, request_id="req-1:refund")
        after = limiter.peek(spec, "s", 0)

    assert after.used == 4


# -- Shadow mode ---------------------------------------------------------------------

SHADOW_KINDS = ("fixed_window", "spend_cap", "gcra", "sliding_counter")


@pytest.mark.parametrize("kind", SHADOW_KINDS)
def test_shadow_limit_allows_charges_and_flags_hits_over_it(target: Target, kind: str) -> None:
    spec = spec_of(kind, name="trial", limit=3, shadow=True)
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        decisions = [limiter.hit(spec, "s") for _ in range(5)]

    assert all(d.allowed for d in decisions)
    assert [d.shadow_denied for d in decisions] == [False, False, False, True, True]
    assert [d.used for d in decisions] == [1, 2, 3, 4, 5]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0, 0]
    assert [d.granted for d in decisions] == [1] * 5
    assert all(d.retry_after is None for d in decisions)


@pytest.mark.parametrize("kind", SHADOW_KINDS)
def test_shadow_peek_reports_what_a_hit_would(target: Target, kind: str) -> None:
    spec = spec_of(kind, name="trial", limit=3, shadow=True)
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        fits = limiter.peek(spec, "s", 3)
        limiter.hit(spec, "s", 3)
        over = limiter.peek(spec, "s", 1)
        unchanged = limiter.peek(spec, "s", 0)

    assert (fits.allowed, fits.shadow_denied) == (True, False)
    assert (over.allowed, over.shadow_denied) == (True, True)
    assert (over.used, over.remaining, over.granted) == (3, 0, 0)
    assert unchanged.used == 3


@pytest.mark.parametrize("kind", SHADOW_KINDS)
def test_shadow_and_real_specs_with_different_names_count_apart(target: Target, kind: str) -> None:
    trial = spec_of(kind, name="trial", limit=3, shadow=True)
    real = spec_of(kind, name="real", limit=3)
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        for _ in range(4):
            limiter.hit(trial, "s")
        enforced = [limiter.hit(real, "s").allowed for _ in range(4)]

    assert enforced == [True, True, True, False]


# -- Keys ------------------------------------------------------------------------------


def test_every_algorithm_keeps_each_subjects_keys_in_its_hash_slot(target: Target) -> None:
    specs = [spec_of(kind) for kind in KINDS]
    subjects = {"alice": "{s:alice}", "bob/ü": "{s:bob%2F%C3%BC}"}
    with target.sync_client() as client:
        limiter = controlled(client, MicroClock())
        for subject in subjects:
            for n, spec in enumerate(specs):
                limiter.hit(spec, subject, 2, request_id=f"hit-{n}")
            for spec in (specs[0], specs[3]):
                limiter.refund(spec, subject, 1, request_id="refund")
        keys = sorted(key.decode() for key in client.scan_iter("*"))

    for subject, tag in subjects.items():
        mine = [key for key in keys if tag in key]
        kinds = {key.split(tag, 1)[1].split(":")[1] for key in mine}
        assert kinds == {"fw", "sc", "gc", "sl", "sw"}, subject
        assert {key_slot(key.encode()) for key in mine} == {key_slot(tag.encode())}
        assert any(":r:" in key for key in mine)
        assert any(":f:" in key for key in mine)
    assert all(sum(tag in key for tag in subjects.values()) == 1 for key in keys)

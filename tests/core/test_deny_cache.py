"""The local deny cache: which calls it answers, until when, and what forgets it.

Every limiter here decides on a controlled clock (``time_source="client"``),
and server work is counted with EVALSHA runs: a cached denial runs none.
"""

from __future__ import annotations

import itertools
import pickle
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from helpers import START, Clock, evalsha_runs, seconds_at
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Server

from atomlimit import (
    AsyncLimiter,
    Breaker,
    BreakerOpen,
    Decision,
    DenyCache,
    Hit,
    InvalidInput,
    Limiter,
    RateLimit,
    SpendCap,
)

MINUTE = RateLimit(name="per-minute", limit=3, window="minute")
SMOOTH = RateLimit(name="smooth", limit=2, window=timedelta(seconds=10), algorithm="gcra")
SLIDING = RateLimit(
    name="sliding", limit=3, window=timedelta(seconds=10), algorithm="sliding_counter"
)
CAP = SpendCap(name="budget", limit=Decimal("1.00"), currency="USD", window="day")
_prefixes = itertools.count()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def limiter_on(client: redis.Redis, clock: Clock, cache: Any = 100, **options: Any) -> Limiter:
    return Limiter(
        client,
        prefix=f"deny{next(_prefixes)}",
        time_source="client",
        clock=clock,
        deny_cache=cache,
        **options,
    )


def at_window_start() -> Clock:
    """A clock at the start of a minute: a fixed window has all of it left."""
    return Clock(START - START % 60)


# --------------------------------------------------------------------------
# Answered locally, until time alone could change the answer
# --------------------------------------------------------------------------


def test_a_denied_subject_is_answered_without_the_server_until_the_window_ends(
    server: Server,
) -> None:
    clock = at_window_start()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        for _ in range(3):
            assert limiter.hit(MINUTE, "flood").allowed
        first = limiter.hit(MINUTE, "flood")
        before = evalsha_runs(client)
        clock.advance(20)
        again = [limiter.hit(MINUTE, "flood") for _ in range(50)]
        runs_while_cached = evalsha_runs(client) - before
        clock.advance(40)  # the window ends
        after = limiter.hit(MINUTE, "flood")

    assert not first.allowed
    assert not first.cached
    assert runs_while_cached == 0
    assert all(not d.allowed and d.cached for d in again)
    assert again[0].retry_after == timedelta(seconds=40)
    assert again[0].reset_at == first.reset_at
    assert (again[0].used, again[0].remaining, again[0].granted) == (3, 0, 0)
    assert after.allowed
    assert not after.cached


async def test_the_async_limiter_answers_cached_denials_alike(server: Server) -> None:
    clock = at_window_start()
    async with server.async_client() as client:
        limiter = AsyncLimiter(
            client,
            prefix=f"deny{next(_prefixes)}",
            time_source="client",
            clock=clock,
            deny_cache=DenyCache(max_entries=10),
        )
        for _ in range(4):
            await limiter.hit(MINUTE, "flood")
        with server.client() as counter:
            before = evalsha_runs(counter)
            cached = [await limiter.hit(MINUTE, "flood") for _ in range(20)]
            runs = evalsha_runs(counter) - before
        clock.advance(60)
        after = await limiter.hit(MINUTE, "flood")
        await limiter.aclose()

    assert runs == 0
    assert all(d.cached and not d.allowed for d in cached)
    assert after.allowed


def test_gcra_is_answered_locally_until_its_retry_after(server: Server) -> None:
    clock = Clock()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(SMOOTH, "s", 2)
        denied = limiter.hit(SMOOTH, "s")
        assert denied.retry_after is not None
        clock.advance(denied.retry_after.total_seconds() - 0.001)
        still = limiter.hit(SMOOTH, "s")
        clock.advance(0.001)
        passes = limiter.hit(SMOOTH, "s")

    assert denied.retry_after == timedelta(seconds=5)
    assert still.cached
    assert not still.allowed
    assert still.retry_after == timedelta(milliseconds=1)
    assert passes.allowed
    assert not passes.cached


def test_a_sliding_counter_is_answered_locally_until_its_retry_after(server: Server) -> None:
    clock = Clock()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(SLIDING, "s", 3)
        denied = limiter.hit(SLIDING, "s")
        assert denied.retry_after is not None
        cached = limiter.hit(SLIDING, "s")
        clock.advance(denied.retry_after.total_seconds())
        later = limiter.hit(SLIDING, "s")

    assert cached.cached
    assert not later.cached


def test_a_spend_cap_is_answered_locally_until_its_window_ends(server: Server) -> None:
    clock = Clock()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(CAP, "s", Decimal("0.90"))
        denied = limiter.hit(CAP, "s", Decimal("0.20"))
        cached = limiter.hit(CAP, "s", Decimal("0.50"))
        smaller = limiter.hit(CAP, "s", Decimal("0.10"))

    assert not denied.allowed
    assert denied.retry_after is not None
    assert cached.cached
    assert cached.retry_after == denied.retry_after
    assert smaller.allowed
    assert not smaller.cached


def test_a_cached_denial_repeats_the_server_denial_but_for_its_wait(server: Server) -> None:
    clock = at_window_start()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(MINUTE, "s", 3)
        first = limiter.hit(MINUTE, "s")
        ends = (first.reset_at - EPOCH) // timedelta(microseconds=1)
        clock.now = seconds_at(ends - 1)  # the last microsecond the denial stands
        last = limiter.hit(MINUTE, "s")

    expected = Decision(
        False,
        first.limit,
        first.used,
        first.remaining,
        first.reset_at,
        timedelta(microseconds=1),
        first.granted,
        first.held,
        spec=MINUTE,
        cached=True,
    )
    assert type(last) is Decision
    assert last == expected
    assert repr(last) == repr(expected)
    assert pickle.loads(pickle.dumps(last)) == expected
    with pytest.raises(AttributeError):
        last.allowed = True  # type: ignore[misc]


def test_an_int_cost_on_a_spend_cap_is_whole_currency_when_cached(server: Server) -> None:
    clock = Clock()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(CAP, "s", Decimal("0.90"))
        denied = limiter.hit(CAP, "s", Decimal("0.20"))  # 0.10 remains
        one_dollar = limiter.hit(CAP, "s", 1)  # 100 cents, not 1

    assert denied.remaining == Decimal("0.10")
    assert one_dollar.cached
    assert not one_dollar.allowed


# --------------------------------------------------------------------------
# Which calls a cached denial decides
# --------------------------------------------------------------------------


def test_a_cached_denial_decides_only_costs_at_least_the_denied_one(server: Server) -> None:
    clock = at_window_start()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(MINUTE, "s", 1)
        denied = limiter.hit(MINUTE, "s", 3)  # 2 remain
        same, larger = limiter.hit(MINUTE, "s", 3), limiter.hit(MINUTE, "s", 5)
        smaller = limiter.hit(MINUTE, "s", 2)

    assert not denied.allowed
    assert denied.remaining == 2
    assert same.cached
    assert larger.cached
    assert smaller.allowed
    assert not smaller.cached


def test_when_nothing_remains_a_fixed_window_denial_decides_any_cost(server: Server) -> None:
    clock = at_window_start()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(MINUTE, "s", 3)
        limiter.hit(MINUTE, "s", 2)
        before = evalsha_runs(client)
        one = limiter.hit(MINUTE, "s", 1)
        partial = limiter.hit(MINUTE, "s", 2, partial=True)
        free = limiter.hit(MINUTE, "s", 0)
        runs = evalsha_runs(client) - before

    assert one.cached
    assert partial.cached
    assert free.allowed
    assert not free.cached
    assert runs == 1


def test_gcra_gives_units_back_one_by_one_so_a_smaller_cost_asks_the_server(
    server: Server,
) -> None:
    clock = Clock()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(SMOOTH, "s", 2)
        denied = limiter.hit(SMOOTH, "s", 2)
        clock.advance(5)  # one unit is back, two are not
        two = limiter.hit(SMOOTH, "s", 2)
        one = limiter.hit(SMOOTH, "s", 1)

    assert denied.remaining == 0
    assert two.cached
    assert one.allowed
    assert not one.cached


def test_bad_input_is_refused_even_when_a_denial_is_cached(server: Server) -> None:
    clock = at_window_start()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(MINUTE, "s", 3)
        limiter.hit(MINUTE, "s")
        with pytest.raises(InvalidInput):
            limiter.hit(MINUTE, "s", -1)
        with pytest.raises(InvalidInput):
            limiter.hit(MINUTE, "s", 1, partial="yes")  # type: ignore[arg-type]
        # Values the common call's shortcut must not take for an int or False.
        for cost in (True, 2**53, 1.0):
            with pytest.raises(InvalidInput):
                limiter.hit(MINUTE, "s", cost)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            limiter.hit(MINUTE, "s", 1, partial=0)  # type: ignore[arg-type]


def test_another_limit_of_the_same_name_is_not_decided_by_its_denial(server: Server) -> None:
    wider = RateLimit(name="per-minute", limit=10, window="minute")
    clock = at_window_start()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(MINUTE, "s", 3)
        limiter.hit(MINUTE, "s")
        other = limiter.hit(wider, "s")

    assert other.allowed
    assert not other.cached


# --------------------------------------------------------------------------
# Calls that always ask the server
# --------------------------------------------------------------------------


def test_request_ids_peeks_and_acquires_bypass_the_cache(server: Server) -> None:
    clock = at_window_start()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(MINUTE, "s", 3)
        limiter.hit(MINUTE, "s")
        before = evalsha_runs(client)
        with_id = limiter.hit(MINUTE, "s", request_id="req-1")
        peeked = limiter.peek(MINUTE, "s")
        acquired = limiter.acquire([Hit(MINUTE, "s")])
        reserved = limiter.reserve(MINUTE, "s", 1)
        runs = evalsha_runs(client) - before

    assert runs == 4
    assert not any(d.cached for d in (with_id, peeked, *acquired.decisions, reserved.decision))
    assert not with_id.allowed
    assert not acquired.allowed
    assert not reserved.allowed


def test_a_limiter_without_a_cache_always_asks_the_server(server: Server) -> None:
    clock = at_window_start()
    with server.client() as client:
        limiter = limiter_on(client, clock, cache=None)
        limiter.hit(MINUTE, "s", 3)
        before = evalsha_runs(client)
        denials = [limiter.hit(MINUTE, "s") for _ in range(5)]
        runs = evalsha_runs(client) - before

    assert runs == 5
    assert not any(d.cached or d.allowed for d in denials)


def test_hit_many_sends_only_the_hits_the_cache_cannot_answer(server: Server) -> None:
    clock = at_window_start()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(MINUTE, "a", 3)
        limiter.hit(MINUTE, "a")
        before = evalsha_runs(client)
        decisions = limiter.hit_many([Hit(MINUTE, "a"), Hit(MINUTE, "b"), Hit(MINUTE, "a", 2)])
        runs = evalsha_runs(client) - before
        all_cached = limiter.hit_many([Hit(MINUTE, "a")])
        runs_after = evalsha_runs(client) - before

    assert [(d.allowed, d.cached) for d in decisions] == [
        (False, True),
        (True, False),
        (False, True),
    ]
    assert runs == 1
    assert all_cached[0].cached
    assert runs_after == 1


def test_a_cached_denial_is_answered_while_the_breaker_is_open(fresh_server: Server) -> None:
    clock = at_window_start()
    guarded = RateLimit(name="guarded", limit=1, window="minute", on_backend_error="allow")
    client = fresh_server.client(retry=Retry(NoBackoff(), 0), socket_timeout=1)
    limiter = limiter_on(client, clock, breaker=Breaker(failures=1))
    limiter.hit(guarded, "s")
    limiter.hit(guarded, "s")
    fresh_server.stop()
    degraded = limiter.hit(guarded, "t")  # fails, and opens the breaker
    refused = limiter.hit(guarded, "t")
    cached = limiter.hit(guarded, "s")
    client.close()

    assert degraded.degraded
    assert degraded.allowed
    assert refused.degraded
    assert isinstance(refused.cause, BreakerOpen)
    assert cached.cached
    assert not cached.allowed


# --------------------------------------------------------------------------
# What forgets a cached denial
# --------------------------------------------------------------------------


def test_a_refund_through_the_limiter_forgets_the_denial(server: Server) -> None:
    clock = at_window_start()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(MINUTE, "s", 3)
        limiter.hit(MINUTE, "s")
        limiter.refund(MINUTE, "s", 1)
        after = limiter.hit(MINUTE, "s")

    assert after.allowed
    assert not after.cached


def test_a_reset_through_the_limiter_forgets_the_denial(server: Server) -> None:
    clock = at_window_start()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        limiter.hit(MINUTE, "s", 3)
        limiter.hit(MINUTE, "s")
        limiter.reset(MINUTE, "s")
        after = limiter.hit(MINUTE, "s")

    assert after.allowed


@pytest.mark.parametrize("finish", ["release", "settle"])
def test_a_release_or_settle_through_the_limiter_forgets_the_denial(
    server: Server, finish: str
) -> None:
    clock = Clock()
    with server.client() as client:
        limiter = limiter_on(client, clock)
        held = limiter.reserve(CAP, "s", Decimal("0.80"))
        denied = limiter.hit(CAP, "s", Decimal("0.50"))
        if finish == "release":
            held.release()
        else:
            held.settle(Decimal("0.10"))
        after = limiter.hit(CAP, "s", Decimal("0.50"))

    assert not denied.allowed
    assert after.allowed
    assert not after.cached


def test_another_process_refund_is_not_seen_until_the_denial_expires(server: Server) -> None:
    clock = at_window_start()
    prefix = f"deny{next(_prefixes)}"
    with server.client() as client:
        cached = Limiter(client, prefix=prefix, time_source="client", clock=clock, deny_cache=10)
        other = Limiter(client, prefix=prefix, time_source="client", clock=clock)
        cached.hit(MINUTE, "s", 3)
        cached.hit(MINUTE, "s")
        other.refund(MINUTE, "s", 3)
        stale = cached.hit(MINUTE, "s")
        peeked = other.peek(MINUTE, "s")
        clock.advance(60)
        fresh = cached.hit(MINUTE, "s")

    # Denying more than the server would is the price; admitting more never happens.
    assert stale.cached
    assert not stale.allowed
    assert peeked.allowed
    assert fresh.allowed
    assert not fresh.cached


def test_forget_drops_one_subject_or_every_subject_of_a_limit(server: Server) -> None:
    clock = at_window_start()
    cache = DenyCache(max_entries=10)
    with server.client() as client:
        limiter = limiter_on(client, clock, cache=cache)
        for subject in ("a", "b", "c"):
            limiter.hit(MINUTE, subject, 4)
        cache.forget(MINUTE, "a")
        one_gone = len(cache)
        cache.forget(MINUTE)
        all_gone = len(cache)

    assert (one_gone, all_gone) == (2, 0)


def test_the_cache_keeps_at_most_max_entries_dropping_the_oldest(server: Server) -> None:
    clock = at_window_start()
    cache = DenyCache(max_entries=2)
    with server.client() as client:
        limiter = limiter_on(client, clock, cache=cache)
        for subject in ("a", "b", "c"):
            limiter.hit(MINUTE, subject, 4)
        size = len(cache)
        oldest, newest = limiter.hit(MINUTE, "a", 4), limiter.hit(MINUTE, "c", 4)

    assert size == 2
    assert not oldest.cached
    assert newest.cached


# --------------------------------------------------------------------------
# Its bounds
# --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -1, 1_000_001, 2.5, "10", True, None])
def test_max_entries_is_bounded(size: Any) -> None:
    with pytest.raises(InvalidInput, match="max_entries"):
        DenyCache(max_entries=size)


@pytest.mark.parametrize("value", [0, 1_000_001, "big", 1.0, object()])
def test_a_limiter_refuses_a_bad_deny_cache(value: Any) -> None:
    with pytest.raises(InvalidInput):
        Limiter(redis.Redis(), deny_cache=value)


def test_one_deny_cache_serves_one_limiter() -> None:
    cache = DenyCache()
    Limiter(redis.Redis(), deny_cache=cache)
    with pytest.raises(InvalidInput, match="one limiter"):
        Limiter(redis.Redis(), deny_cache=cache)


# --------------------------------------------------------------------------
# The model: it can only deny more, never admit more
# --------------------------------------------------------------------------

MODEL_SUBJECTS = ("a", "b")


class DenyCacheMachine(RuleBasedStateMachine):
    """A limiter with the cache and one without, on one server and one clock.

    The uncached limiter plays another process: its refunds and resets are
    the ones the cached limiter cannot see.
    """

    url = ""
    spec: RateLimit = MINUTE

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(START - START % 60)
        self.client = redis.Redis.from_url(self.url)
        prefix = f"model-deny{next(_prefixes)}"
        options: dict[str, Any] = {"prefix": prefix, "time_source": "client", "clock": self.clock}
        self.cached = Limiter(self.client, deny_cache=DenyCache(max_entries=3), **options)
        self.plain = Limiter(self.client, **options)
        self.foreign = False
        """Whether the other limiter gave room back since every cached denial ran out."""

    def teardown(self) -> None:
        self.client.close()

    @rule(seconds=st.sampled_from([0.001, 1, 2.5, 5, 20]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def every_cached_denial_runs_out(self) -> None:
        self.clock.advance(60)
        self.foreign = False

    @rule(
        subject=st.sampled_from(MODEL_SUBJECTS),
        cost=st.integers(0, 4),
        partial=st.booleans(),
        times=st.integers(1, 3),
    )
    def hit(self, subject: str, cost: int, partial: bool, times: int) -> None:
        for _ in range(times):
            self.hit_once(self.spec, subject, cost, partial)

    def hit_once(self, spec: RateLimit, subject: str, cost: int, partial: bool) -> None:
        would = self.plain.peek(spec, subject, cost)
        decision = self.cached.hit(spec, subject, cost, partial=partial)
        if decision.allowed:
            assert would.allowed or partial
        if decision.cached:
            assert not decision.allowed
            # Alone on the server, the cache is exact: it denies only what
            # the server would deny.
            assert self.foreign or not would.allowed
        assert decision.used <= spec.limit

    @rule(subject=st.sampled_from(MODEL_SUBJECTS))
    def plain_hit(self, subject: str) -> None:
        assert self.plain.hit(self.spec, subject).used <= self.spec.limit

    @rule(subject=st.sampled_from(MODEL_SUBJECTS), amount=st.integers(1, 3), ours=st.booleans())
    def refund(self, subject: str, amount: int, ours: bool) -> None:
        (self.cached if ours else self.plain).refund(self.spec, subject, amount)
        self.foreign = self.foreign or not ours

    @rule(subject=st.sampled_from(MODEL_SUBJECTS), ours=st.booleans())
    def reset(self, subject: str, ours: bool) -> None:
        (self.cached if ours else self.plain).reset(self.spec, subject)
        self.foreign = self.foreign or not ours

    @invariant()
    def usage_never_exceeds_the_limit(self) -> None:
        for subject in MODEL_SUBJECTS:
            assert self.plain.peek(self.spec, subject, 0).used <= self.spec.limit


@pytest.mark.parametrize("spec", [MINUTE, SMOOTH, SLIDING], ids=lambda spec: spec.algorithm)
def test_the_cache_only_ever_denies_more_than_the_server(server: Server, spec: RateLimit) -> None:
    DenyCacheMachine.url = server.url
    DenyCacheMachine.spec = spec
    run_state_machine_as_test(
        DenyCacheMachine,
        settings=settings(max_examples=50, stateful_step_count=30, deadline=None),
    )

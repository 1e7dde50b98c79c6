"""The limiters over fakeredis, unchanged: what works, and what differs.

Many applications' suites already run on ``fakeredis`` (with ``lupa`` for
Lua). The same calls, on the same client clock, must decide the same there
as on a real server: each test below runs one schedule of calls on both and
compares every Decision. What fakeredis cannot do (INFO, a cluster) is in
docs/testing.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import pytest
from helpers import Clock
from servers import Server

from atomlimit import (
    AsyncLimiter,
    Concurrency,
    Hit,
    Limiter,
    RateLimit,
    SpendCap,
    UnsafeServer,
)

SPECS = [
    RateLimit(name="fixed", limit=5, window="minute"),
    RateLimit(name="calendar", limit=5, window="day", tz="Australia/Sydney"),
    RateLimit(name="gcra", limit=3, window=timedelta(seconds=10), algorithm="gcra", burst=4),
    RateLimit(name="log", limit=5, window=timedelta(seconds=30), algorithm="sliding_log"),
    RateLimit(name="counter", limit=5, window="minute", algorithm="sliding_counter"),
    SpendCap(name="cap", limit=Decimal("1.00"), currency="AUD", window="hour"),
]
CAP = SPECS[-1]
SLOTS = Concurrency(name="slots", limit=2, lease=timedelta(seconds=30))


def seen(decision: Any) -> tuple[Any, ...]:
    """Everything a Decision says, but its spec and cause."""
    return (
        decision.allowed,
        decision.limit,
        decision.used,
        decision.remaining,
        decision.reset_at,
        decision.retry_after,
        decision.granted,
        decision.held,
        decision.shadow_denied,
    )


def schedule(limiter: Limiter, clock: Clock) -> list[tuple[Any, ...]]:
    """Hits, peeks, refunds and resets of every kind, the clock moving between them."""
    made = []
    for spec in SPECS:
        cost = Decimal("0.30") if isinstance(spec, SpendCap) else 1
        for step in range(14):
            made.append(seen(limiter.hit(spec, "client-42", cost)))
            if step % 4 == 3:
                made.append(seen(limiter.peek(spec, "client-42", cost)))
                made.append(seen(limiter.refund(spec, "client-42", cost)))
            clock.advance(2.5)
        made.append(seen(limiter.hit(spec, "client-42", cost * 3, partial=True)))
        limiter.reset(spec, "client-42")
        made.append(seen(limiter.peek(spec, "client-42", cost)))
    return made


def holds(limiter: Limiter, clock: Clock) -> list[Any]:
    """Reservations, leases, a one-subject acquire and hit_many."""
    made: list[Any] = []
    reservation = limiter.reserve(CAP, "s", Decimal("0.60"), ttl=timedelta(seconds=20))
    made.append(seen(reservation.decision))
    made.append(seen(limiter.hit(CAP, "s", Decimal("0.50"))))
    made.append(reservation.settle(Decimal("0.25"))[:2])
    made.append(limiter.reserve(CAP, "s", Decimal("0.10")).release()[:2])
    leases = [limiter.lease(SLOTS, "s", raise_on_deny=False) for _ in range(3)]
    made.append([lease.allowed for lease in leases])
    clock.advance(10)
    made.append(leases[0].renew())
    made.append(leases[1].release())
    clock.advance(25)
    made.append(leases[0].renew())
    acquired = limiter.acquire(
        [Hit(SPECS[0], "t"), Hit(CAP, "t", Decimal("0.40")), Hit(SLOTS, "t")]
    )
    made.append((acquired.allowed, [seen(d) for d in acquired.decisions]))
    made.append([seen(d) for d in limiter.hit_many([Hit(SPECS[0], "u"), Hit(SPECS[2], "u")])])
    return made


def on_both(server: Server, run: Callable[[Limiter, Clock], Any]) -> tuple[Any, Any]:
    """``run`` on fakeredis and on ``server``, each limiter on a clock of its own."""
    fake_clock, real_clock = Clock(), Clock()
    fake = run(Limiter(fakeredis.FakeRedis(), time_source="client", clock=fake_clock), fake_clock)
    with server.client() as client:
        real = run(Limiter(client, time_source="client", clock=real_clock), real_clock)
    return fake, real


def test_every_kind_decides_the_same_on_fakeredis_as_on_a_real_server(server: Server) -> None:
    fake, real = on_both(server, schedule)

    assert len(fake) == len(real) > 100
    assert fake == real


def test_reservations_leases_acquire_and_hit_many_agree_too(server: Server) -> None:
    fake, real = on_both(server, holds)

    assert fake == real


async def test_async_limiter_over_fake_async_redis_agrees(server: Server) -> None:
    async def run(limiter: AsyncLimiter, clock: Clock) -> list[Any]:
        made = []
        for spec in SPECS[:3]:
            made.extend(
                seen(d) for d in await asyncio.gather(*(limiter.hit(spec, "s") for _ in range(7)))
            )
            clock.advance(30)
        return made

    fake_clock, real_clock = Clock(), Clock()
    fake = await run(
        AsyncLimiter(fakeredis.FakeAsyncRedis(), time_source="client", clock=fake_clock),
        fake_clock,
    )
    async with server.async_client() as client:
        real = await run(AsyncLimiter(client, time_source="client", clock=real_clock), real_clock)

    # Which task's hit came first is the event loop's choice, not the server's.
    assert sorted(fake, key=repr) == sorted(real, key=repr)
    assert sum(d[0] for d in fake) == 5 + 5 + 4


def test_server_time_works_on_fakeredis_too() -> None:
    limiter = Limiter(fakeredis.FakeRedis())

    decisions = [limiter.hit(SPECS[0], "s") for _ in range(6)]

    assert [d.allowed for d in decisions] == [True] * 5 + [False]


# --------------------------------------------------------------------------
# The differences
# --------------------------------------------------------------------------


def test_fakeredis_has_no_info_so_the_limiter_warns_once_and_strict_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="atomlimit"):
        limiter = Limiter(fakeredis.FakeRedis())
        decisions = [limiter.hit(SPECS[0], "s") for _ in range(3)]
    strict = Limiter(fakeredis.FakeRedis(), strict=True)

    assert all(d.allowed for d in decisions)
    assert caplog.text.count("could not check the eviction policy") == 1
    with pytest.raises(UnsafeServer, match="could not check the server"):
        strict.hit(SPECS[0], "s")


RECORDED = [
    ("a hit with a request id", lambda limiter: limiter.hit(SPECS[0], "s", request_id="req-1")),
    ("a refund with a request id", lambda lim: lim.refund(SPECS[0], "s", 1, request_id="rf-1")),
    ("an acquire over two subjects", lambda lim: lim.acquire([Hit(SPECS[0], "a"), Hit(CAP, "b")])),
    ("an acquire with a request id", lambda lim: lim.acquire([Hit(SPECS[0], "a")], request_id="q")),
    ("a reserve with a request id", lambda lim: lim.reserve(CAP, "s", 1, request_id="r-1")),
    ("a lease with a request id", lambda lim: lim.lease(SLOTS, "s", request_id="l-1")),
]


@pytest.mark.parametrize(("what", "call"), RECORDED, ids=[what for what, _ in RECORDED])
def test_calls_that_keep_a_request_id_record_run_on_fakeredis(
    what: str, call: Callable[[Limiter], Any]
) -> None:
    # fakeredis's Lua has no cmsgpack; records are then kept as text.
    result = call(Limiter(fakeredis.FakeRedis()))

    assert result is not None


def test_a_request_id_replays_on_fakeredis_as_on_a_server() -> None:
    limiter = Limiter(fakeredis.FakeRedis())
    first = limiter.hit(SPECS[0], "s", request_id="req-1")
    again = limiter.hit(SPECS[0], "s", request_id="req-1")
    after = limiter.peek(SPECS[0], "s", cost=0)

    assert again == first
    assert after.used == first.used == 1


def test_the_same_calls_work_on_a_real_server(server: Server) -> None:
    # The same calls, on a real server.
    with server.client() as client:
        limiter = Limiter(client)
        for _, call in RECORDED:
            call(limiter)

"""A replayed request id is the first decision, even after its limit changed.

docs/request-ids.md promises that sending a charged request again with its
id returns the original decision. An application may redeploy with a new
limit of the same name between the two sends (the record lives for a day);
the replay must still report the limit and remaining the first charge was
decided under, not figures worked out from the new limit.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import pytest
from servers import Server

from atomlimit import AsyncLimiter, Concurrency, Decision, Hit, Limiter, RateLimit, SpendCap

# Each kind, before and after its limit was raised; one name for both.
CHANGED: dict[str, tuple[Any, Any, Any]] = {
    "fixed_window": (
        RateLimit(name="api", limit=10, window="minute"),
        RateLimit(name="api", limit=20, window="minute"),
        2,
    ),
    "gcra": (
        RateLimit(name="api", limit=10, window="minute", algorithm="gcra"),
        RateLimit(name="api", limit=20, window="minute", algorithm="gcra"),
        2,
    ),
    "sliding_log": (
        RateLimit(name="api", limit=10, window="minute", algorithm="sliding_log"),
        RateLimit(name="api", limit=20, window="minute", algorithm="sliding_log"),
        2,
    ),
    "sliding_counter": (
        RateLimit(name="api", limit=10, window="minute", algorithm="sliding_counter"),
        RateLimit(name="api", limit=20, window="minute", algorithm="sliding_counter"),
        2,
    ),
    "spend_cap": (
        SpendCap(name="ai", limit=Decimal("10.00"), currency="AUD", window="day"),
        SpendCap(name="ai", limit=Decimal("20.00"), currency="AUD", window="day"),
        Decimal("2.50"),
    ),
}
BEFORE = RateLimit(name="api", limit=10, window="minute")
AFTER = RateLimit(name="api", limit=20, window="minute")


def figures(decision: Decision[Any]) -> tuple[Any, ...]:
    """Everything a decision says, but the spec it was asked with."""
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


@pytest.mark.parametrize("kind", sorted(CHANGED))
def test_a_replayed_hit_reports_the_limit_it_was_charged_under(server: Server, kind: str) -> None:
    before, after, cost = CHANGED[kind]
    with Limiter.from_url(server.url) as limiter:
        first = limiter.hit(before, "s", cost, request_id="req-1")
        replay = limiter.hit(after, "s", cost, request_id="req-1")

    assert first.limit == before.limit
    assert figures(replay) == figures(first)
    assert replay.spec is after


async def test_async_a_replayed_hit_reports_the_limit_it_was_charged_under(
    server: Server,
) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        first = await limiter.hit(BEFORE, "s", 2, request_id="req-1")
        replay = await limiter.hit(AFTER, "s", 2, request_id="req-1")

    assert (replay.limit, replay.remaining) == (10, 8)
    assert figures(replay) == figures(first)


def test_a_replayed_acquire_reports_each_limit_it_was_charged_under(server: Server) -> None:
    slots = Concurrency(name="slots", limit=3, lease=timedelta(minutes=1))
    more_slots = Concurrency(name="slots", limit=5, lease=timedelta(minutes=1))
    cap, bigger_cap, _ = CHANGED["spend_cap"]
    with Limiter.from_url(server.url) as limiter:
        first = limiter.acquire(
            [Hit(BEFORE, "s", 2), Hit(slots, "s"), Hit(cap, "s", Decimal("1.00"))],
            request_id="job-1",
        )
        replay = limiter.acquire(
            [Hit(AFTER, "s", 2), Hit(more_slots, "s"), Hit(bigger_cap, "s", Decimal("1.00"))],
            request_id="job-1",
        )
        for lease in first.leases:
            lease.release()

    assert [d.limit for d in replay.decisions] == [10, 3, Decimal("10.00")]
    assert [figures(d) for d in replay.decisions] == [figures(d) for d in first.decisions]


def test_a_replayed_reserve_reports_the_cap_it_held_under(server: Server) -> None:
    cap, bigger_cap, _ = CHANGED["spend_cap"]
    with Limiter.from_url(server.url) as limiter:
        first = limiter.reserve(cap, "s", Decimal("4.00"), request_id="call-7")
        replay = limiter.reserve(bigger_cap, "s", Decimal("4.00"), request_id="call-7")
        first.release()

    assert (replay.decision.limit, replay.decision.remaining) == (
        Decimal("10.00"),
        Decimal("6.00"),
    )
    assert figures(replay.decision) == figures(first.decision)


def test_a_replayed_refund_reports_the_limit_it_was_refunded_under(server: Server) -> None:
    with Limiter.from_url(server.url) as limiter:
        limiter.hit(BEFORE, "s", 5)
        first = limiter.refund(BEFORE, "s", 2, request_id="refund-1")
        replay = limiter.refund(AFTER, "s", 2, request_id="refund-1")

    assert (replay.limit, replay.used, replay.remaining) == (10, 3, 7)
    assert figures(replay) == figures(first)


def test_a_record_kept_before_limits_were_recorded_replays_under_the_current_limit(
    server: Server,
) -> None:
    # A record written by an older release holds the reply alone: it must
    # still replay, and the only limit it can report is the spec's.
    with server.client() as client, Limiter(client) as limiter:
        first = limiter.hit(BEFORE, "s", 2, request_id="req-1")
        (record,) = client.scan_iter("*:r:req-1")
        client.eval(
            "local v = {cmsgpack.unpack(redis.call('GET', KEYS[1]))}\n"
            "table.remove(v)\n"
            "redis.call('SET', KEYS[1], cmsgpack.pack(unpack(v)), 'KEEPTTL')",
            1,
            record,
        )
        replay = limiter.hit(AFTER, "s", 2, request_id="req-1")
        used = limiter.peek(AFTER, "s", 0).used

    assert (replay.limit, replay.used, replay.remaining) == (20, 2, 18)
    assert replay.reset_at == first.reset_at
    assert used == 2


def test_on_fakeredis_a_replay_reports_the_limit_it_was_charged_under() -> None:
    # fakeredis's Lua has no cmsgpack: its records are text.
    with Limiter(fakeredis.FakeRedis()) as limiter:
        first = limiter.hit(BEFORE, "s", 2, request_id="req-1")
        replay = limiter.hit(AFTER, "s", 2, request_id="req-1")

    assert (replay.limit, replay.remaining) == (10, 8)
    assert figures(replay) == figures(first)

"""The seed's RedisClient: same keys and formats, and atomic try_* calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio
from conftest import Target
from proxy import StallingProxy
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from servers import Server

from atomlimit import InvalidInput
from atomlimit.cli.demo import SeedPattern, _race
from atomlimit.compat import (
    CACHE_VERSION,
    DAILY_AI_SPEND_LIMIT,
    RedisClient,
    cache_key,
)

# A pooled asyncio connection retries nothing unless told: this re-sends a
# command whose reply timed out, as a service configured for retries would.
RETRY_TIMEOUTS: dict[str, Any] = {
    "retry": AsyncRetry(NoBackoff(), 3),
    "retry_on_error": [redis.exceptions.TimeoutError],
}
CLIENT_ID = UUID("00000000-0000-4000-8000-000000000042")


@asynccontextmanager
async def seed_client(
    target: Target, tz: str = "UTC", **options: Any
) -> AsyncIterator[RedisClient]:
    client = RedisClient(target.url, tz=tz, cluster=target.kind == "cluster", **options)
    try:
        yield client
    finally:
        await client.close()


def test_cache_helpers_keep_the_seed_s_format() -> None:
    assert CACHE_VERSION == "v1"
    assert cache_key("enrichment", "acme.com:abc123") == "v1:enrichment:acme.com:abc123"
    assert Decimal("100.00") == DAILY_AI_SPEND_LIMIT


async def test_keys_follow_the_seed_patterns_exactly(target: Target) -> None:
    async with seed_client(target) as seed:
        await seed.try_rate_limit("enrichment", "acme", 10)
        await seed.increment_rate_limit("dataforseo", "acme")
        await seed.try_ai_spend(CLIENT_ID, Decimal("1.25"))
        found = [key async for key in seed.redis.scan_iter("*")]
        records = [key for key in found if key.startswith("atomlimit:")]
        record_ttls = [await seed.redis.pttl(key) for key in records]
        keys = sorted(set(found) - set(records))

    # Beside each seed key, a short-lived record of the write, in its slot.
    assert len(records) == 3
    assert all(0 < ttl <= 120_000 for ttl in record_ttls)
    assert {key_slot(r.encode()) for r in records} == {key_slot(k.encode()) for k in keys}
    assert keys == [
        f"ai_spend:{CLIENT_ID}:daily",
        "ratelimit:dataforseo:acme:daily",
        "ratelimit:enrichment:acme:daily",
    ]


async def test_try_rate_limit_counts_until_the_limit(target: Target) -> None:
    async with seed_client(target) as seed:
        results = [await seed.try_rate_limit("enrichment", "acme", 3) for _ in range(5)]
        limited = await seed.check_rate_limit("enrichment", "acme", 3)
        stored = await seed.redis.get("ratelimit:enrichment:acme:daily")

    assert results == [True, True, True, False, False]
    assert limited is True
    assert stored == "3"


async def test_try_ai_spend_keeps_the_total_within_the_limit(target: Target) -> None:
    async with seed_client(target) as seed:
        first = await seed.try_ai_spend(CLIENT_ID, 99.5)
        too_much = await seed.try_ai_spend(CLIENT_ID, 0.51)
        exact_fit = await seed.try_ai_spend(CLIENT_ID, Decimal("0.50"))
        over = await seed.check_ai_spend(CLIENT_ID)
        stored = await seed.redis.get(f"ai_spend:{CLIENT_ID}:daily")

    assert (first, too_much, exact_fit) == (True, False, True)
    assert over is True
    assert stored == "100"


async def test_concurrent_try_rate_limit_admits_exactly_the_limit(target: Target) -> None:
    async with seed_client(target) as seed:

        async def attempt() -> bool:
            return await seed.try_rate_limit("race", "acme", 100)

        admitted, _ = await _race(200, attempt)

    assert admitted == 100


async def test_seed_check_then_increment_overshoots_in_the_same_race(target: Target) -> None:
    if target.kind == "cluster":
        # The seed's verbatim client only speaks to a single server, so the
        # pattern runs on RedisClient's own check and increment, whose GET is
        # a plain command sent through the cluster client's pools. All 200
        # tasks reach the one key's node at once, and the pool per node
        # refuses connections past max_connections (50 by default) with
        # MaxConnectionsError rather than waiting; so the client is sized
        # for the race, as RedisClient's docstring asks. Unsized, whether a
        # run fails depends on how far the client's layout learning, on its
        # first command, happens to stagger the tasks: with the layout
        # learned beforehand, a default pool fails every run. Learning it
        # before the race also keeps tasks off connections redis-py may tear
        # down while it learns (the writer None inside redis-py): the plain
        # GET does not wait for the layout as atomlimit's scripts do.
        async with seed_client(target, max_connections=200) as seed:
            assert isinstance(seed.redis, redis.asyncio.RedisCluster)
            await seed.redis.initialize()

            async def attempt() -> bool:
                if await seed.check_rate_limit("race", "acme", 100):
                    return False
                await seed.increment_rate_limit("race", "acme")
                return True

            admitted, _ = await _race(200, attempt)
    else:
        original = SeedPattern(target.url, 200)

        async def attempt() -> bool:
            if await original.check_rate_limit("race", "acme", 100):
                return False
            await original.increment_rate_limit("race", "acme")
            return True

        try:
            admitted, _ = await _race(200, attempt)
        finally:
            await original.close()

    assert admitted > 100


async def test_concurrent_try_ai_spend_never_passes_the_limit(target: Target) -> None:
    async with seed_client(target) as seed:

        async def attempt() -> bool:
            return await seed.try_ai_spend(CLIENT_ID, 0.37)

        admitted, _ = await _race(400, attempt)
        total = await seed.redis.get(f"ai_spend:{CLIENT_ID}:daily")

    assert admitted == 270
    assert total == "99.9"


async def test_new_calls_read_what_old_workers_wrote(server_target: Target) -> None:
    key = f"ai_spend:{CLIENT_ID}:daily"
    async with seed_client(server_target) as seed:
        old = SeedPattern(server_target.url, 4)
        try:
            await seed.redis.set(key, "12.300000000000001")
            await old.record_ai_spend(str(CLIENT_ID), 0.1)  # INCRBYFLOAT noise on top
            added = await seed.try_ai_spend(CLIENT_ID, Decimal("87.60"))
            refused = await seed.try_ai_spend(CLIENT_ID, Decimal("0.01"))
            after_new = await seed.redis.get(key)
            # An old worker still adds with INCRBYFLOAT to what the new one wrote.
            await old.record_ai_spend(str(CLIENT_ID), 0.25)
            after_old = await seed.redis.get(key)
        finally:
            await old.close()

    assert added
    assert not refused
    assert after_new == "100"
    assert Decimal(after_old) == Decimal("100.25")


async def test_switching_mid_day_loses_no_counts(server_target: Target) -> None:
    async with seed_client(server_target) as seed:
        old = SeedPattern(server_target.url, 4)
        try:
            for _ in range(40):
                await old.increment_rate_limit("enrichment", "acme")
            admitted = [await seed.try_rate_limit("enrichment", "acme", 50) for _ in range(15)]
            await old.increment_rate_limit("enrichment", "acme")
            limited = await old.check_rate_limit("enrichment", "acme", 50)
            stored = await seed.redis.get("ratelimit:enrichment:acme:daily")
        finally:
            await old.close()

    assert sum(admitted) == 10
    assert stored == "51"
    assert limited


@pytest.mark.parametrize("tz", ["UTC", "Australia/Sydney"])
async def test_daily_keys_expire_at_the_next_midnight_in_the_zone(target: Target, tz: str) -> None:
    async with seed_client(target, tz=tz) as seed:
        await seed.try_rate_limit("enrichment", "acme", 10)
        await seed.record_ai_spend(CLIENT_ID, 1.0)
        seconds, micros = await seed.redis.time()
        ttls = [
            await seed.redis.pttl("ratelimit:enrichment:acme:daily"),
            await seed.redis.pttl(f"ai_spend:{CLIENT_ID}:daily"),
        ]

    zone = ZoneInfo(tz)
    now = datetime.fromtimestamp(seconds + micros / 1e6, zone)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), zone)
    expected_ms = (midnight - now).total_seconds() * 1000
    for ttl in ttls:
        assert abs(ttl - expected_ms) < 2_000


async def test_record_ai_spend_returns_the_new_total_as_a_float(target: Target) -> None:
    async with seed_client(target) as seed:
        first = await seed.record_ai_spend(CLIENT_ID, 0.1)
        second = await seed.record_ai_spend(CLIENT_ID, 0.2)

    assert (first, second) == (0.1, 0.3)


async def test_increment_rate_limit_returns_the_count(target: Target) -> None:
    async with seed_client(target) as seed:
        counts = [await seed.increment_rate_limit("enrichment", "acme") for _ in range(3)]

    assert counts == [1, 2, 3]


@pytest.mark.parametrize(
    ("resource_type", "resource_id"),
    [("a:b", "c"), ("a", "b:c"), ("", "x"), ("x", "with space"), ("{x}", "y"), ("x", "\n")],
)
async def test_identifiers_that_could_collide_are_refused(
    server_target: Target, resource_type: str, resource_id: str
) -> None:
    async with seed_client(server_target) as seed:
        with pytest.raises(InvalidInput):
            await seed.try_rate_limit(resource_type, resource_id, 5)


async def test_amount_finer_than_a_micro_aud_is_refused(server_target: Target) -> None:
    async with seed_client(server_target) as seed:
        with pytest.raises(InvalidInput, match="finer than the unit"):
            await seed.try_ai_spend(CLIENT_ID, 0.0000001)
        with pytest.raises(InvalidInput, match="finite"):
            await seed.try_ai_spend(CLIENT_ID, float("nan"))


async def test_stalled_try_calls_retried_by_redis_py_count_once(
    server: Server, stalling_proxy: StallingProxy
) -> None:
    # A retry policy re-sends after the socket timeout; the server has
    # already run the script by then.
    seed = RedisClient(stalling_proxy.url, socket_timeout=0.2, **RETRY_TIMEOUTS)
    try:
        await seed.try_rate_limit("warm", "up", 10)  # connect and load the scripts
        await seed.try_ai_spend("warm-up", Decimal("0.01"))
        stalling_proxy.stall_next_replies(1, 0.6)
        counted = await seed.try_rate_limit("enrichment", "acme", 10)
        stalling_proxy.stall_next_replies(1, 0.6)
        spent = await seed.try_ai_spend(CLIENT_ID, Decimal("1.25"))
    finally:
        await seed.close()
    with server.client(decode_responses=True) as direct:
        count = direct.get("ratelimit:enrichment:acme:daily")
        total = direct.get(f"ai_spend:{CLIENT_ID}:daily")

    assert stalling_proxy.connections_accepted >= 3  # both calls were sent again
    assert counted
    assert spent
    assert (count, total) == ("1", "1.25")


async def test_the_same_stall_makes_the_seed_s_increment_count_twice(
    server: Server, stalling_proxy: StallingProxy
) -> None:
    old = SeedPattern(stalling_proxy.url, 4)
    old.redis = redis.asyncio.Redis.from_url(
        stalling_proxy.url, socket_timeout=0.2, **RETRY_TIMEOUTS
    )
    try:
        await old.increment_rate_limit("warm", "up")
        stalling_proxy.stall_next_replies(1, 0.6)
        await old.increment_rate_limit("enrichment", "acme")
    finally:
        await old.close()
    with server.client(decode_responses=True) as direct:
        count = direct.get("ratelimit:enrichment:acme:daily")

    assert count == "2"


async def test_non_decimal_spend_value_is_reported_not_guessed(server_target: Target) -> None:
    async with seed_client(server_target) as seed:
        await seed.redis.set(f"ai_spend:{CLIENT_ID}:daily", "lots")
        with pytest.raises(Exception, match="plain decimal"):
            await seed.try_ai_spend(CLIENT_ID, 1.0)

"""Races: many workers on one limit admit exactly ``limit``; the seed's pattern does not.

Each race is run twice with the same harness: once on atomlimit, once on the
seed's documented read-then-write pattern. The second run must fail the
assertion the first passes, which shows the harness really races.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import redis
import redis.asyncio
from helpers import process_race
from servers import Cluster, Server

from atomlimit import AsyncLimiter, Limiter, RateLimit, SpendCap
from atomlimit.cli.demo import SeedPattern, _race

LIMIT = 100
TASKS = 200
PROCESSES = 8
ATTEMPTS_PER_PROCESS = 40


async def test_two_hundred_tasks_admit_exactly_the_limit(server: Server) -> None:
    spec = RateLimit(name="race", limit=LIMIT, window="day")
    async with AsyncLimiter.from_url(server.url) as limiter:

        async def attempt() -> bool:
            return (await limiter.hit(spec, "subject")).allowed

        admitted, _ = await _race(TASKS, attempt)
        final = await limiter.peek(spec, "subject")

    assert admitted == LIMIT
    assert final.used == LIMIT


async def test_seed_pattern_overshoots_under_the_same_two_hundred_tasks(server: Server) -> None:
    seed = SeedPattern(server.url, TASKS)

    async def attempt() -> bool:
        if await seed.check_rate_limit("race", "subject", LIMIT):
            return False
        await seed.increment_rate_limit("race", "subject")
        return True

    try:
        admitted, _ = await _race(TASKS, attempt)
    finally:
        await seed.close()

    assert admitted > LIMIT


async def test_concurrent_spends_never_pass_the_cap(server: Server) -> None:
    cap = SpendCap(name="race", limit=Decimal("100.00"), currency="AUD", window="day")
    async with AsyncLimiter.from_url(server.url) as limiter:

        async def attempt() -> bool:
            return (await limiter.hit(cap, "subject", Decimal("0.37"))).allowed

        admitted, _ = await _race(400, attempt)
        final = await limiter.peek(cap, "subject", cost=0)

    assert admitted == 270  # floor(100.00 / 0.37)
    assert final.used == Decimal("99.90")


async def test_seed_spend_pattern_passes_the_cap_under_the_same_race(server: Server) -> None:
    seed = SeedPattern(server.url, 400)

    async def attempt() -> bool:
        if await seed.check_ai_spend("subject"):
            return False
        await seed.record_ai_spend("subject", 0.37)
        return True

    try:
        admitted, _ = await _race(400, attempt)
    finally:
        await seed.close()

    assert admitted * Decimal("0.37") > Decimal("100.00")


async def test_one_limiter_serves_a_thousand_tasks_on_few_connections(server: Server) -> None:
    spec = RateLimit(name="crowd", limit=10_000, window="day")
    async with AsyncLimiter.from_url(server.url, max_connections=20) as limiter:

        async def attempt() -> bool:
            return (await limiter.hit(spec, "subject")).allowed

        admitted, _ = await _race(1_000, attempt)
        with server.client() as probe:
            clients = probe.info("clients")["connected_clients"]

    assert admitted == 1_000
    assert clients <= 21  # the pool's 20, plus the probe


async def test_default_asyncio_pool_fails_the_same_thousand_tasks(server: Server) -> None:
    # The contrast that shows the test above can fail: redis-py's default
    # asyncio pool refuses connections past its limit under the same burst.
    client = redis.asyncio.Redis.from_url(server.url, max_connections=20)

    async def attempt() -> bool:
        await client.incr("crowd")
        return True

    try:
        with pytest.raises(redis.exceptions.ConnectionError, match="Too many connections"):
            await _race(1_000, attempt)
    finally:
        await client.aclose()


async def test_limiter_queues_a_burst_on_a_client_whose_pool_would_refuse_it(
    server: Server,
) -> None:
    # The same default pool as above: the limiter never has more calls in
    # flight than the pool has connections, so the burst waits instead.
    spec = RateLimit(name="crowd", limit=10_000, window="day")
    client = redis.asyncio.Redis.from_url(server.url, max_connections=20)
    limiter = AsyncLimiter(client)

    async def attempt() -> bool:
        return (await limiter.hit(spec, "subject")).allowed

    try:
        admitted, _ = await _race(1_000, attempt)
    finally:
        await client.aclose()

    assert admitted == 1_000


async def test_cold_cluster_clients_serve_a_burst_on_a_small_pool(cluster: Cluster) -> None:
    # redis-py's asyncio cluster client learns the layout on its first
    # command and caps each node's pool, raising past the cap; a fresh
    # client under a burst of 400 tasks must neither race the layout nor
    # overrun the pool.
    spec = RateLimit(name="cold", limit=100, window="day")
    admitted = []
    for round_ in range(5):
        client = cluster.async_client(max_connections=20)
        limiter = AsyncLimiter(client)

        async def attempt(on: AsyncLimiter = limiter, subject: str = f"s{round_}") -> bool:
            return (await on.hit(spec, subject)).allowed

        try:
            admitted.append((await _race(400, attempt))[0])
        finally:
            await client.aclose()

    assert admitted == [100] * 5


def _engine_worker(url: str, start: Any, name: str, attempts: int) -> int:
    spec = RateLimit(name=name, limit=LIMIT, window="day")
    with Limiter.from_url(url) as limiter:
        limiter.peek(spec, "warm-up")  # connect and load the script before the race
        start.wait()
        return sum(limiter.hit(spec, "subject").allowed for _ in range(attempts))


def _seed_worker(url: str, start: Any, name: str, attempts: int) -> int:
    key = f"ratelimit:{name}:subject:daily"
    admitted = 0
    with redis.Redis.from_url(url, decode_responses=True) as client:
        client.ping()
        start.wait()
        for _ in range(attempts):
            # The seed's check_rate_limit, then increment_rate_limit.
            if int(client.get(key) or 0) >= LIMIT:
                continue
            pipe = client.pipeline()
            pipe.incr(key)
            pipe.expireat(key, SeedPattern._next_midnight())
            pipe.execute()
            admitted += 1
    return admitted


@pytest.mark.slow
def test_eight_processes_admit_exactly_the_limit(server: Server) -> None:
    admitted = [
        process_race(server.url, _engine_worker, PROCESSES, ATTEMPTS_PER_PROCESS) for _ in range(3)
    ]

    assert admitted == [LIMIT, LIMIT, LIMIT]


@pytest.mark.slow
def test_seed_pattern_overshoots_under_the_same_eight_processes(server: Server) -> None:
    # The interleaving between processes is up to the OS scheduler, so give
    # the naive pattern several rounds to show its race.
    trials = []
    for _ in range(10):
        trials.append(process_race(server.url, _seed_worker, PROCESSES, ATTEMPTS_PER_PROCESS))
        if trials[-1] > LIMIT:
            break

    assert max(trials) > LIMIT, trials

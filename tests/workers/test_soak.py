"""Sustained load: every task keeps being served, and nothing fails.

A one-shot burst hides unfairness: each task needs one answer and then
stops. Here every task loops for the whole run (a closed loop), so a task
that keeps losing the race for a connection shows as one served far less
often than the others, or as an error when its wait runs out.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio
from servers import Server

from atomlimit import AsyncLimiter, RateLimit

SPEC = RateLimit(name="soak", limit=10**12, window="day")
TASKS = 1_000
SECONDS = 20.0
FAIR = 0.1
"""The slowest task is served at least a tenth as often as the fastest."""


async def _closed_loop(
    decide: Callable[[str], Awaitable[object]], tasks: int, seconds: float
) -> tuple[list[int], list[float], list[BaseException]]:
    """Run ``tasks`` loops of ``decide`` for ``seconds``: served counts, latencies, errors."""
    served = [0] * tasks
    latencies: list[float] = []
    errors: list[BaseException] = []
    stop = time.monotonic() + seconds

    async def worker(n: int) -> None:
        subject = f"subject-{n % 500}"
        while time.monotonic() < stop:
            started = time.monotonic()
            try:
                await decide(subject)
            except Exception as err:
                errors.append(err)
                continue
            latencies.append(time.monotonic() - started)
            served[n] += 1

    await asyncio.gather(*(worker(n) for n in range(tasks)))
    return served, latencies, errors


def _report(name: str, served: list[int], latencies: list[float], errors: list[object]) -> str:
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return (
        f"{name}: {sum(served):,} decisions, errors {len(errors)}, served "
        f"min {min(served)} max {max(served)}, p50 {q[49] * 1e3:.1f} ms, "
        f"p99 {q[98] * 1e3:.1f} ms"
    )


@pytest.mark.slow
async def test_a_thousand_tasks_in_a_closed_loop_are_all_served_without_errors(
    server: Server,
) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:

        async def decide(subject: str) -> object:
            return await limiter.hit(SPEC, subject)

        served, latencies, errors = await _closed_loop(decide, TASKS, SECONDS)
    print(_report("atomlimit, from_url defaults", served, latencies, errors))

    assert errors == []
    assert min(served) >= FAIR * max(served)


@pytest.mark.slow
async def test_redis_pys_blocking_pool_starves_tasks_under_the_same_loop(server: Server) -> None:
    # The same loop on what the limiter used before batching: a blocking
    # pool of 50 connections, one EVALSHA per call. Its waiters are woken
    # unfairly, and a task that just released a connection takes it back.
    pool = redis.asyncio.BlockingConnectionPool.from_url(server.url, max_connections=50)
    client = redis.asyncio.Redis.from_pool(pool)
    incr = client.register_script("return redis.call('INCR', KEYS[1])")

    async def decide(subject: str) -> object:
        return await incr(keys=[subject])

    try:
        served, latencies, errors = await _closed_loop(decide, TASKS, SECONDS / 4)
    finally:
        await client.aclose()
    print(_report("redis-py BlockingConnectionPool", served, latencies, errors))

    assert min(served) < FAIR * max(served)

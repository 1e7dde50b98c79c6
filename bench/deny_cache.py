"""The deny cache under a flood: one subject hammering a limit it has spent.

Each row is run with a limiter that asks the server every time and with
one that has a ``DenyCache``, round after round, the order alternating, on
one throwaway server. Two sections:

    capacity   64 asyncio tasks hit one subject's spent limit as fast as
               they can: the denials per second each limiter can give
    shared     the same 64 tasks paced to a fixed flood (``--flood`` denials
               per second, which both limiters can keep up with), while 8
               more tasks send other subjects' allowed traffic as fast as
               they can: the allowed hits per second left to them

A closed loop of cached denials would take all of the event loop's time
from the allowed traffic, whatever the cache's cost; a flood arrives at its
own pace, so the shared section holds it fixed and shows what the cheaper
denials leave to everyone else. Per row:

    denials/s      the flood's denials per second
    allowed/s      other subjects' admitted hits per second (shared only)
    evalsha/denial server script runs per denial (INFO commandstats)

and the ratios: the cached denial rate against the round-trip one, the
server calls the cache saved, and the allowed rate with the cache against
without it. It asserts nothing.

    python bench/deny_cache.py             # a throwaway redis-server from PATH
    python bench/deny_cache.py --seconds 1 --rounds 1 --flood 5000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass

import redis
from server import redis_server

from atomlimit import AsyncLimiter, RateLimit

FLOOD_TASKS = 64
ALLOWED_TASKS = 8
SPENT = RateLimit(name="spent", limit=10, window="hour")
OPEN = RateLimit(name="open", limit=1_000_000_000, window="hour")
_prefixes = itertools.count()


@dataclass
class Row:
    denials: float
    allowed: float
    evalsha_per_denial: float


def evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0))


async def one_run(url: str, cached: bool, seconds: float, flood_rate: float | None) -> Row:
    limiter = AsyncLimiter.from_url(
        url, prefix=f"bench-deny{next(_prefixes)}", deny_cache=10_000 if cached else None
    )
    for _ in range(SPENT.limit + 1):
        await limiter.hit(SPENT, "abuser")
    counts = {"denied": 0, "allowed": 0, "flood_allowed": 0}
    stop = time.perf_counter() + seconds

    pace = None if flood_rate is None else FLOOD_TASKS / flood_rate

    async def flood() -> None:
        next_at = time.perf_counter()
        while time.perf_counter() < stop:
            decision = await limiter.hit(SPENT, "abuser")
            counts["flood_allowed" if decision.allowed else "denied"] += 1
            if pace is not None:
                next_at += pace
                await asyncio.sleep(max(next_at - time.perf_counter(), 0))

    async def allowed(n: int) -> None:
        while time.perf_counter() < stop:
            decision = await limiter.hit(OPEN, f"user-{n}")
            counts["allowed"] += decision.allowed

    with redis.Redis.from_url(url) as stats:
        before = evalsha_calls(stats)
        started = time.perf_counter()
        others = range(ALLOWED_TASKS if flood_rate is not None else 0)
        await asyncio.gather(*(flood() for _ in range(FLOOD_TASKS)), *(allowed(n) for n in others))
        took = time.perf_counter() - started
        # The allowed traffic's own runs are one per admitted hit.
        flood_runs = evalsha_calls(stats) - before - counts["allowed"]
    await limiter.aclose()
    assert counts["flood_allowed"] == 0, "the spent limit admitted a hit"
    denied = counts["denied"]
    return Row(denied / took, counts["allowed"] / took, flood_runs / max(denied, 1))


async def section(
    url: str, seconds: float, rounds: int, flood_rate: float | None
) -> dict[bool, list[Row]]:
    rows: dict[bool, list[Row]] = {False: [], True: []}
    for n in range(rounds):
        for cached in (False, True) if n % 2 == 0 else (True, False):
            rows[cached].append(await one_run(url, cached, seconds, flood_rate))
    return rows


def show(rows: dict[bool, list[Row]]) -> dict[tuple[bool, str], float]:
    medians = {
        (cached, field): statistics.median(getattr(row, field) for row in rows[cached])
        for cached in (False, True)
        for field in ("denials", "allowed", "evalsha_per_denial")
    }
    print(f"{'row':<14}{'denials/s':>12}{'allowed/s':>12}{'evalsha/denial':>16}")
    for cached, name in ((False, "round trip"), (True, "deny cache")):
        print(
            f"{name:<14}{medians[cached, 'denials']:>12,.0f}{medians[cached, 'allowed']:>12,.0f}"
            f"{medians[cached, 'evalsha_per_denial']:>16.4f}"
        )
    return medians


async def main(url: str, seconds: float, rounds: int, flood_rate: float) -> None:
    print(f"median of {rounds} rounds of {seconds:g} s each")
    print(f"\ncapacity: {FLOOD_TASKS} tasks flooding one spent limit")
    capacity = show(await section(url, seconds, rounds, None))
    print(
        f"\nshared: the flood paced to {flood_rate:,.0f} denials/s, "
        f"{ALLOWED_TASKS} tasks of other subjects' allowed traffic"
    )
    shared = show(await section(url, seconds, rounds, flood_rate))
    speed = capacity[True, "denials"] / capacity[False, "denials"]
    saved = 1 - shared[True, "evalsha_per_denial"] / shared[False, "evalsha_per_denial"]
    kept = shared[True, "allowed"] / shared[False, "allowed"]
    print(f"\ncached / round-trip denials per second: {speed:.1f}x")
    print(f"server calls saved per denial:          {saved:.2%}")
    print(f"allowed traffic, cache / no cache:      {kept:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a throwaway server; default: start redis-server")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flood", type=float, default=5_000.0, help="denials/s, shared section")
    args = parser.parse_args()
    if args.url:
        asyncio.run(main(args.url, args.seconds, args.rounds, args.flood))
    else:
        with redis_server() as url:
            asyncio.run(main(url, args.seconds, args.rounds, args.flood))

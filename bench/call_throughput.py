"""A budgeted model call's own cost: its acquire and its settle, against one hit.

64 asyncio tasks on one server run back to back, in one process, each row
in turn and then again in reverse order (so neither always goes first):

- ``hit``: one fixed-window hit per decision, the library's cheapest call;
- ``call``: ``limiter.call`` over an upstream's requests and tokens,
  settled with an actual: one acquire script, then one settle;
- ``call+client``: the same with a client's daily tokens and spend too:
  one acquire script over both subjects, then one round trip of three
  settles.

It prints decisions per second for each and the call's share of the hit's.
A real model call takes hundreds of milliseconds, so this is headroom, not
the bottleneck: the goal is a share of at least 25 %.

With ``--whole-batches`` each row also runs with the lane handing a batch's
replies out all at once (as before ``HANDOUT``, atomlimit/_batch.py), side
by side, and prints each row's rate against that baseline.

With ``--pin`` (Linux) this process runs on one CPU and the server on
another, as if each had a host of its own. Unpinned on a machine of two
CPUs, the scheduler now and then puts both on one CPU while the other
idles; a call keeps the server busy ten times as long as a hit does, so
that costs the call's row far more than the hit's, and the share moves
between runs with whatever else the machine is doing.

    python bench/call_throughput.py --seconds 5 --rounds 3
    python bench/call_throughput.py --seconds 5 --rounds 3 --whole-batches
    python bench/call_throughput.py --seconds 5 --rounds 3 --pin
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from collections.abc import Awaitable, Callable
from decimal import Decimal

import redis
from load import closed_loop
from server import redis_server

from atomlimit import AsyncLimiter, ClientLimits, RateLimit, SpendCap, Upstream, _batch

TASKS = 64
ROWS = ("hit", "call", "call+client")
HUGE = 10**12
HIT = RateLimit(name="bench-hit", limit=HUGE, window="day")
UPSTREAM = Upstream(
    "bench:model",
    requests=RateLimit(name="bench-rpm", limit=HUGE, window="minute"),
    tokens=RateLimit(name="bench-tpm", limit=HUGE, window="minute"),
)
PER_CLIENT = ClientLimits(
    tokens=RateLimit(name="bench-client-tokens", limit=HUGE, window="day"),
    spend=SpendCap(name="bench-spend", limit=Decimal("1000000000"), currency="USD", window="day"),
)


def rows(limiter: AsyncLimiter) -> dict[str, Callable[[str], Awaitable[bool]]]:
    async def hit(subject: str) -> bool:
        return (await limiter.hit(HIT, subject)).allowed

    async def call(subject: str) -> bool:
        async with limiter.call(UPSTREAM, tokens=1200) as budgeted:
            budgeted.settle(tokens=950)
        return True

    async def client_call(subject: str) -> bool:
        async with limiter.call(
            UPSTREAM, client=subject, tokens=1200, cost=Decimal("0.024"), limits=PER_CLIENT
        ) as budgeted:
            budgeted.settle(tokens=950, cost=Decimal("0.019"))
        return True

    return {"hit": hit, "call": call, "call+client": client_call}


WHOLE = " whole"
"""The suffix of a row run with whole batches handed out at once."""


async def measure(url: str, seconds: float, rounds: int, whole: bool) -> dict[str, list[float]]:
    names = [*ROWS, *(name + WHOLE for name in ROWS)] if whole else list(ROWS)
    rates: dict[str, list[float]] = {name: [] for name in names}
    handout = _batch.HANDOUT
    for round_ in range(rounds):
        order = names if round_ % 2 == 0 else list(reversed(names))
        for name in order:
            _batch.HANDOUT = 2**31 if name.endswith(WHOLE) else handout
            # A limiter of its own for each run: once batches are split, the
            # two pumps go on taking turns, so a lane that ran the other way
            # before would carry its rhythm into this run.
            async with AsyncLimiter.from_url(url) as limiter:
                decide = rows(limiter)[name.removesuffix(WHOLE)]
                loop = await closed_loop(decide, TASKS, seconds, warmup=0.5)
            if loop.errors.count:
                raise RuntimeError(f"{name}: {loop.errors.count} errors, {loop.errors.first}")
            rates[name].append(loop.rate)
    _batch.HANDOUT = handout
    return rates


def pin(url: str) -> str:
    """Put this process on one CPU and the server at ``url`` on another; say which."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs two CPUs")
    with redis.Redis.from_url(url) as probe:
        server: int = probe.info("server")["process_id"]
    os.sched_setaffinity(server, {cpus[1]})
    os.sched_setaffinity(0, {cpus[0]})
    return f"client on CPU {cpus[0]}, server on CPU {cpus[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--whole-batches",
        action="store_true",
        help="also run each row with batches handed out whole, as a baseline",
    )
    parser.add_argument(
        "--pin", action="store_true", help="this process on one CPU, the server on another"
    )
    args = parser.parse_args()
    placed = "unpinned"
    with redis_server() as url:
        if args.pin:
            placed = pin(url)
        rates = asyncio.run(measure(url, args.seconds, args.rounds, args.whole_batches))
    print(
        f"{TASKS} tasks, one server, median of {args.rounds} rounds of {args.seconds:g} s, {placed}"
    )
    print(f"{'row':<18} {'per second':>12} {'share of hit':>13} {'x whole':>8}")
    for suffix in ("", WHOLE) if args.whole_batches else ("",):
        hit = statistics.median(rates["hit" + suffix])
        for name in ROWS:
            rate = statistics.median(rates[name + suffix])
            against = ""
            if args.whole_batches:
                against = f"{rate / statistics.median(rates[name + WHOLE]):8.2f}"
            print(f"{name + suffix:<18} {rate:12,.0f} {rate / hit:13.3f} {against}")


if __name__ == "__main__":
    main()

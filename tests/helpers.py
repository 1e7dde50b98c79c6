"""Small tools shared by the test modules: controlled clocks, process races,
and server-side counts."""

from __future__ import annotations

import math
import multiprocessing
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import redis

from atomlimit._steadfast import STEADFAST, Steadfast

START = datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC).timestamp()
"""An arbitrary instant for controlled clocks, in epoch seconds."""
SECOND = 1_000_000
T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * SECOND
"""A Thursday midnight, in microseconds: aligned to every epoch-aligned length up to a week."""


class Clock:
    """A controlled clock, in epoch seconds; advanced only by the test."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def seconds_at(us: int) -> float:
    """Epoch seconds that the limiter reads back as exactly ``us`` microseconds.

    The limiter takes ``int(clock() * 1e6)``; a float near 1.8e9 seconds is
    only exact to about 0.24 µs, so ``us / 1e6`` can read back one short.
    """
    seconds = us / SECOND
    while int(seconds * SECOND) < us:
        seconds = math.nextafter(seconds, math.inf)
    while int(seconds * SECOND) > us:
        seconds = math.nextafter(seconds, -math.inf)
    assert int(seconds * SECOND) == us
    return seconds


class MicroClock:
    """A controlled clock, in whole microseconds since the epoch."""

    def __init__(self, us: int = T0) -> None:
        self.us = us

    def __call__(self) -> float:
        return seconds_at(self.us)


def evalsha_runs(client: redis.Redis) -> int:
    """EVALSHA calls the server ran to completion (NOSCRIPT replies excluded)."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))


def process_race(
    url: str,
    worker: Callable[..., int],
    processes: int,
    rounds: int,
    combine: Callable[[Iterable[int]], int] = sum,
) -> int:
    """Run ``worker(url, barrier, name, rounds)`` in spawned processes at once.

    The barrier keeps any process from starting before all are connected;
    ``combine`` folds the workers' results (a sum of admissions, say, or
    the max of what each saw in flight).
    """
    context = multiprocessing.get_context("spawn")
    name = f"p{uuid.uuid4().hex[:8]}"
    with context.Manager() as manager:
        start: Any = manager.Barrier(processes)
        with context.Pool(processes) as pool:
            pending = [
                pool.apply_async(worker, (url, start, name, rounds)) for _ in range(processes)
            ]
            return combine(result.get(timeout=120) for result in pending)


def require_tool(name: str) -> None:
    """Skip for want of a command-line tool (``hey``, say), except where the
    servers are required (CI, ``ATOMLIMIT_REQUIRE_SERVERS``): there the test
    must run, so a missing tool fails it instead."""
    import os
    import shutil

    import pytest

    if shutil.which(name) is not None:
        return
    if os.environ.get("ATOMLIMIT_REQUIRE_SERVERS"):
        pytest.fail(f"{name} is not installed, and ATOMLIMIT_REQUIRE_SERVERS is set")
    pytest.skip(f"{name} is not installed (apt-get install {name})")


class Careless(Steadfast):
    """`Steadfast` with the runner told nothing: the control of the
    cancellation tests, where a cancellation drops a call's reply, or its
    unsent end, at once."""

    __slots__ = ()

    def __enter__(self) -> Steadfast:
        self._token = STEADFAST.set(None)
        return self

"""Load generators for bench/peers.py: closed loops, fixed batches, sync chunks.

They know nothing of libraries; each drives a ``decide(subject)`` callable
from bench/variants.py, spreading the calls over :data:`SUBJECTS` so that no
single key is hot and every row touches as many keys as the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

SUBJECTS = tuple(f"subject-{n}" for n in range(500))
WARM_TIMEOUT = 30.0
WARM_STALL = 0.5


@dataclass
class Errors:
    """Failed decisions: how many, and the first one's message."""

    count: int = 0
    first: str | None = None

    def add(self, err: BaseException) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{type(err).__name__}: {err}"


@dataclass
class Loop:
    """What a closed loop saw inside its timed window (errors count throughout)."""

    seconds: float
    admitted: int = 0
    denied: int = 0
    errors: Errors = field(default_factory=Errors)
    served: list[int] = field(default_factory=list)
    """Decisions completed per task, admitted or not."""
    latencies: list[float] = field(default_factory=list)
    """Seconds per decision, when asked for."""
    waiting: list[float] = field(default_factory=list)
    """Age in seconds of each call still in flight when the window closed.

    A task that never gets a connection completes nothing, so it adds no
    latency sample at all; its call's age is where it shows.
    """

    @property
    def rate(self) -> float:
        """Admitted decisions per second."""
        return self.admitted / self.seconds


async def closed_loop(
    decide: Callable[[str], Awaitable[bool]],
    tasks: int,
    seconds: float,
    warmup: float,
    *,
    latencies: bool = False,
) -> Loop:
    """Run ``tasks`` tasks that each call ``decide`` back to back; count a window.

    Every task starts at once, and the window opens ``warmup`` seconds after
    the warm-up of :func:`_first_calls`. Only decisions that complete inside
    the window count. A task issues its next call as soon as the last
    returns, so the rate is what client and server sustain together, not an
    offered load.
    """
    result = Loop(seconds=seconds, served=[0] * tasks)
    counting = False
    stopping = False
    warm = [False] * tasks
    since = [0.0] * tasks

    async def worker(index: int) -> None:
        step = index
        while not stopping:
            subject = SUBJECTS[step % len(SUBJECTS)]
            step += 1
            started = since[index] = time.perf_counter()
            try:
                admitted = await decide(subject)
            except Exception as err:
                result.errors.add(err)
                # A call can fail before it ever suspends (a full pool raises
                # at once); yield, or this task would starve the timer.
                await asyncio.sleep(0)
                continue
            finally:
                since[index] = 0.0
            warm[index] = True
            if not counting:
                continue
            if latencies:
                result.latencies.append(time.perf_counter() - started)
            result.served[index] += 1
            if admitted:
                result.admitted += 1
            else:
                result.denied += 1

    workers = [asyncio.create_task(worker(n)) for n in range(tasks)]
    await _first_calls(lambda: sum(warm), tasks)
    await asyncio.sleep(warmup)
    counting = True
    opened = time.perf_counter()
    await asyncio.sleep(seconds)
    counting = False
    closed = time.perf_counter()
    result.seconds = closed - opened
    result.waiting = [closed - started for started in since if started]
    stopping = True
    await asyncio.gather(*workers)
    return result


async def _first_calls(finished: Callable[[], int], tasks: int) -> None:
    """Wait until every task has finished a call, or no more are finishing.

    With a thousand tasks, opening the connections alone can outlast a fixed
    warm-up, and the window must not time connection setup. But a pool that
    hands connections back to the tasks already holding them never serves
    the rest, so a stall also ends the wait; and a row whose every call fails
    is measured anyway, errors and all, after ``WARM_TIMEOUT``.
    """
    started = changed = time.monotonic()
    seen = 0
    while (done := finished()) < tasks:
        now = time.monotonic()
        if now - started > WARM_TIMEOUT or (done and now - changed > WARM_STALL):
            return
        if done != seen:
            seen, changed = done, now
        await asyncio.sleep(0.05)


async def batch(
    decide: Callable[[str], Awaitable[bool]], decisions: int, tasks: int
) -> tuple[int, Errors]:
    """Make exactly ``decisions`` calls, ``tasks`` at a time; count the admissions.

    For the sections that read the server after a known number of calls,
    where a count matters and a duration would not.
    """
    admitted = 0
    errors = Errors()
    remaining = decisions

    async def worker(index: int) -> None:
        nonlocal admitted, remaining
        step = index
        while remaining > 0:
            remaining -= 1
            subject = SUBJECTS[step % len(SUBJECTS)]
            step += tasks
            try:
                # Await first: `admitted += await ...` would read the total
                # before suspending and write back a stale sum.
                passed = await decide(subject)
            except Exception as err:
                errors.add(err)
                await asyncio.sleep(0)
                continue
            admitted += passed

    await asyncio.gather(*(worker(n) for n in range(min(tasks, decisions))))
    return admitted, errors


def timed_calls(decide: Callable[[str], bool], calls: int, offset: int) -> float:
    """Seconds taken by ``calls`` back-to-back calls, from subject ``offset`` on."""
    subjects = [SUBJECTS[(offset + n) % len(SUBJECTS)] for n in range(calls)]
    started = time.perf_counter()
    for subject in subjects:
        decide(subject)
    return time.perf_counter() - started

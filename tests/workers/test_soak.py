"""Sustained load: every task keeps being served, and nothing fails.

A one-shot burst hides unfairness: each task needs one answer and then
stops. Here every task loops for the whole run (a closed loop), so a task
that keeps losing the race for a connection shows as one served far less
often than the others, or as an error when its wait runs out.

``bench/peers.py --only sustained`` runs the same loop beside a peer on
redis-py's pools, and prints the tail latencies this test leaves out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from servers import Server

from atomlimit import AsyncLimiter, RateLimit

SPEC = RateLimit(name="soak", limit=10**12, window="day")
TASKS = 1_000
SECONDS = 20.0
FAIR = 0.1
"""The task served least is served at least a tenth as often as the one served most."""


async def _closed_loop(
    decide: Callable[[str], Awaitable[object]], tasks: int, seconds: float
) -> tuple[list[int], list[BaseException]]:
    """Run ``tasks`` loops of ``decide`` for ``seconds``: served counts and errors."""
    served = [0] * tasks
    errors: list[BaseException] = []
    stop = time.monotonic() + seconds

    async def worker(n: int) -> None:
        subject = f"subject-{n % 500}"
        while time.monotonic() < stop:
            try:
                await decide(subject)
            except Exception as err:
                errors.append(err)
                continue
            served[n] += 1

    await asyncio.gather(*(worker(n) for n in range(tasks)))
    return served, errors


# Once per run, on one server kind: what is under test is the client side
# (the lanes' queue, their pumps, the pool they draw from), which does the
# same work whichever server answers, and twenty seconds per kind would buy
# no other check.
@pytest.mark.slow
@pytest.mark.one_server_kind
async def test_a_thousand_tasks_in_a_closed_loop_are_all_served_without_errors(
    server: Server,
) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:

        async def decide(subject: str) -> object:
            return await limiter.hit(SPEC, subject)

        served, errors = await _closed_loop(decide, TASKS, SECONDS)
    print(f"{sum(served):,} decisions, {len(errors)} errors, served {min(served)} to {max(served)}")

    assert errors == []
    assert min(served) >= FAIR * max(served)

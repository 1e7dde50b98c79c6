"""A call's client-side work alone: the lane answers from memory.

bench/call_throughput.py measures a call with a server that does its share
of the work on another CPU. This runs the same rows (``hit``, ``call``,
``call+client``) with 64 asyncio tasks against a lane that answers every
script from memory with the reply the server gave the first time, so the
CPU time the process spends is the client's own. Two ways:

- ``next turn``: each reply comes on the event loop's next turn, as a
  server's would, so every call suspends its task once per round trip;
- ``at once``: each future is done before it is returned, so no task ever
  suspends.

The difference between the two is what suspending and resuming the tasks
costs per call. It prints µs of process CPU per call, the best of
``--rounds``, and each row's multiple of a hit's:

    python bench/call_client.py
    python bench/call_client.py --calls 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from call_throughput import ROWS, TASKS, rows
from server import redis_server

from atomlimit import AsyncLimiter, _batch

_EVALSHA = b"EVALSHA\r\n$40\r\n"


def _sha(wire: bytes) -> bytes:
    at = wire.index(_EVALSHA) + len(_EVALSHA)
    return wire[at : at + 40]


async def _per_call(url: str, row: str, calls: int, rounds: int, at_once: bool) -> float:
    """Best µs of process CPU per call of ``row`` with the lane faked."""
    submit = _batch.Lane.submit
    async with AsyncLimiter.from_url(url) as limiter:
        decide = rows(limiter)[row]
        for _ in range(20):
            await decide("warm")
        # One real call, to record what the server answers each script.
        answers: dict[bytes, Any] = {}

        def recording(lane: _batch.Lane, wire: bytes, *args: Any, **kwargs: Any) -> Any:
            future = submit(lane, wire, *args, **kwargs)
            future.add_done_callback(lambda done: answers.setdefault(_sha(wire), done.result()))
            return future

        _batch.Lane.submit = recording  # type: ignore[assignment,method-assign]
        try:
            await decide("subject")
        finally:
            _batch.Lane.submit = submit  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()

        def answering(lane: _batch.Lane, wire: bytes, replies: int = 1, kept: bool = False) -> Any:
            # As the lane makes it: a call that must finish whatever becomes
            # of its task gets a future that refuses cancellation.
            future: asyncio.Future[Any] = _batch._Kept(loop=loop) if kept else loop.create_future()
            if at_once:
                future.set_result(answers[_sha(wire)])
            else:
                loop.call_soon(future.set_result, answers[_sha(wire)])
            return future

        async def worker(count: int) -> None:
            for _ in range(count):
                await decide("subject")

        each = max(calls // TASKS, 1)
        best = float("inf")
        _batch.Lane.submit = answering  # type: ignore[assignment,method-assign]
        try:
            for _ in range(rounds):
                started = time.process_time()
                await asyncio.gather(*(worker(each) for _ in range(TASKS)))
                best = min(best, (time.process_time() - started) / (each * TASKS) * 1e6)
        finally:
            _batch.Lane.submit = submit  # type: ignore[method-assign]
        return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    found: dict[tuple[str, bool], float] = {}
    with redis_server() as url:
        for row in ROWS:
            for at_once in (False, True):
                found[row, at_once] = asyncio.run(
                    _per_call(url, row, args.calls, args.rounds, at_once)
                )
    print(f"{TASKS} tasks, µs of client CPU per call, best of {args.rounds} rounds")
    print(
        f"{'row':<12} {'next turn':>10} {'x hit':>6} {'at once':>8} {'x hit':>6} {'suspending':>11}"
    )
    for row in ROWS:
        turn, now = found[row, False], found[row, True]
        print(
            f"{row:<12} {turn:>10.1f} {turn / found['hit', False]:>10.2f} {now:>10.1f} "
            f"{now / found['hit', True]:>10.2f} {turn - now:>10.1f}"
        )


if __name__ == "__main__":
    main()

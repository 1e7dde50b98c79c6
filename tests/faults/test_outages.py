"""Servers that die, stall and come back, under load, with the circuit breaker.

Each test runs a private server (so killing it harms no other test) and
drives a limiter at it from several threads or tasks while the server is
killed and restarted, paused with CLIENT PAUSE, or blocked with DEBUG
SLEEP. Every call is recorded (when it started, how long it took, what it
decided), and the record is checked afterwards:

- a limit with ``on_backend_error="deny"`` never admits a degraded call;
- a limit with ``"allow"`` admits every degraded call, marked degraded;
- once the server answers again, calls are decided by it again within the
  breaker's cool-down (asserted to an order of magnitude: machines are
  noisy);
- while the server is down, the slowest calls (p99) take about the
  breaker's fast path, far below the socket timeout, where a limiter
  without a breaker pays the timeout on every call.

The figures are printed with each test's output.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.asyncio
from conftest import ServerPool
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Server, start_server

from atomlimit import AsyncLimiter, BackendError, Breaker, Limiter, RateLimit

SOCKET_TIMEOUT = 0.25
COOL_DOWN = timedelta(milliseconds=300)
BREAKER = Breaker(failures=3, cool_down=COOL_DOWN)
ALLOW = RateLimit(name="allow", limit=10**9, window="day", on_backend_error="allow")
DENY = RateLimit(name="deny", limit=300, window="day", on_backend_error="deny")
SPECS = (ALLOW, DENY)


@dataclass(frozen=True, slots=True)
class Made:
    """One call: when it started (monotonic seconds), how long it took, what it decided."""

    started: float
    seconds: float
    spec: RateLimit
    allowed: bool
    degraded: bool


@pytest.fixture
def private(server_kind: str, server_pool: ServerPool) -> Iterator[Server]:
    """A server of this test's own, which may run DEBUG from loopback."""
    srv = start_server(
        server_pool.binary(server_kind), extra_config={"enable-debug-command": "yes"}
    )
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def persistent(server_kind: str, server_pool: ServerPool) -> Iterator[Server]:
    """A server that keeps every acknowledged charge across a crash (AOF, fsync always)."""
    srv = start_server(server_pool.binary(server_kind), persistent=True)
    try:
        yield srv
    finally:
        srv.stop()


def client_of(server: Server) -> redis.Redis:
    # Production settings: a reply or a connection waits SOCKET_TIMEOUT at
    # most, and redis-py's own retries (which wait with backoff) are off.
    return server.client(
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )


def kill(server: Server) -> None:
    """SIGKILL: no shutdown, no goodbye on any connection."""
    server._terminate(kill=True)


AFTER = 2.0
"""Seconds the load goes on once the server is back: enough for a cool-down
and a probe even on a machine busy with other work."""


@dataclass
class Until:
    """When the load stops; moved once the server is back, however long that took."""

    at: float


def load_sync(
    limiter: Limiter, threads: int, until: Until, log: list[Made]
) -> list[threading.Thread]:
    """Threads that hit both limits in turn until ``until``, recording every call."""

    def work() -> None:
        while time.monotonic() < until.at:
            for spec in SPECS:
                started = time.monotonic()
                decision = limiter.hit(spec, "client-42")
                seconds = time.monotonic() - started
                log.append(Made(started, seconds, spec, decision.allowed, decision.degraded))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    return workers


async def load_async(limiter: AsyncLimiter, tasks: int, until: Until, log: list[Made]) -> None:
    async def work() -> None:
        while time.monotonic() < until.at:
            for spec in SPECS:
                started = time.monotonic()
                decision = await limiter.hit(spec, "client-42")
                seconds = time.monotonic() - started
                log.append(Made(started, seconds, spec, decision.allowed, decision.degraded))

    await asyncio.gather(*(work() for _ in range(tasks)))


def p99(calls: list[Made]) -> float:
    return _p99(call.seconds for call in calls)


def _p99(seconds: Iterable[float]) -> float:
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def bare_calls(server: Server, seconds: float) -> list[tuple[float, BaseException | None]]:
    """Calls of a limiter without a breaker for ``seconds``, at least three:
    how long each took, and why."""
    made: list[tuple[float, BaseException | None]] = []
    with client_of(server) as client:
        limiter = Limiter(client, breaker=None)
        until = time.monotonic() + seconds
        while len(made) < 3 or time.monotonic() < until:
            started = time.monotonic()
            decision = limiter.hit(ALLOW, "client-42")
            made.append((time.monotonic() - started, decision.cause))
    return made


def check_policies(log: list[Made]) -> None:
    """Deny never admits without the server; allow always does, marked degraded."""
    degraded = [call for call in log if call.degraded]
    assert degraded, "the outage was never seen: the test did not test anything"
    assert not [c for c in degraded if c.spec is DENY and c.allowed]
    assert all(c.allowed for c in degraded if c.spec is ALLOW)


def recovery(log: list[Made], back: float) -> float:
    """Seconds from the server answering again to the first call it decided."""
    decided = [c.started + c.seconds for c in log if c.started >= back and not c.degraded]
    assert decided, "no call was decided by the server after it came back"
    return min(decided) - back


def report(capsys: pytest.CaptureFixture[str], title: str, rows: list[tuple[str, str]]) -> None:
    with capsys.disabled():
        print(f"\n  {title}")
        for label, value in rows:
            print(f"    {label:<44} {value}")


def figures(log: list[Made], down: tuple[float, float]) -> tuple[list[Made], float]:
    during = [c for c in log if down[0] <= c.started < down[1]]
    return during, p99(during)


# --------------------------------------------------------------------------
# Killed, then restarted, under load
# --------------------------------------------------------------------------


def test_killed_and_restarted_under_load(
    persistent: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    log: list[Made] = []
    with client_of(persistent) as client:
        limiter = Limiter(client, breaker=BREAKER)
        start = time.monotonic()
        until = Until(start + 60)
        workers = load_sync(limiter, threads=4, until=until, log=log)
        time.sleep(0.5)
        kill(persistent)
        killed = time.monotonic()
        time.sleep(0.2)
        bare = bare_calls(persistent, seconds=0.8)
        persistent.restart()
        back = time.monotonic()
        until.at = back + AFTER
        for worker in workers:
            worker.join()
        admitted = Limiter(client).peek(DENY, "client-42").used

    check_policies(log)
    after = recovery(log, back)
    assert after < 10 * COOL_DOWN.total_seconds()
    during, slowest = figures(log, (killed + 0.1, back))
    # Far from a timeout per call: half of one still tells them apart on a
    # busy machine, where the fast path itself can be held up for a while.
    assert slowest < SOCKET_TIMEOUT / 2
    decided = [c for c in log if c.spec is DENY and c.allowed and not c.degraded]
    assert len(decided) == admitted  # every admission the server made was kept across the crash
    assert admitted <= DENY.limit
    assert bare
    assert all(type(cause) is BackendError for _, cause in bare)  # each one tried the server
    report(
        capsys,
        f"killed and restarted, 4 threads, {len(log):,} calls",
        [
            ("calls while down", f"{len(during):,}"),
            ("p99 while down (breaker)", f"{slowest * 1e3:.3f} ms"),
            ("p99 while down (no breaker, one thread)", f"{_p99(s for s, _ in bare) * 1e3:.3f} ms"),
            ("first decision by the server after restart", f"{after * 1e3:.0f} ms"),
        ],
    )


async def test_async_killed_and_restarted_under_load(
    persistent: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    log: list[Made] = []
    async with persistent.async_client(
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    ) as client:
        limiter = AsyncLimiter(client, breaker=BREAKER)
        until = Until(time.monotonic() + 60)
        moments: dict[str, float] = {}

        async def outage() -> None:
            await asyncio.sleep(0.5)
            kill(persistent)
            moments["killed"] = time.monotonic()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(persistent.restart)
            moments["back"] = time.monotonic()
            until.at = moments["back"] + AFTER

        await asyncio.gather(load_async(limiter, 20, until, log), outage())

    check_policies(log)
    after = recovery(log, moments["back"])
    assert after < 10 * COOL_DOWN.total_seconds()
    during, slowest = figures(log, (moments["killed"] + 0.1, moments["back"]))
    # Far from a timeout per call: half of one still tells them apart on a
    # busy machine, where the fast path itself can be held up for a while.
    assert slowest < SOCKET_TIMEOUT / 2
    report(
        capsys,
        f"async: killed and restarted, 20 tasks, {len(log):,} calls",
        [
            ("calls while down", f"{len(during):,}"),
            ("p99 while down (breaker)", f"{slowest * 1e3:.3f} ms"),
            ("first decision by the server after restart", f"{after * 1e3:.0f} ms"),
        ],
    )


# --------------------------------------------------------------------------
# Stalled: CLIENT PAUSE and DEBUG SLEEP, breaker against none
# --------------------------------------------------------------------------

STALL = 1.2


def stall_with(server: Server, command: tuple[Any, ...]) -> threading.Thread:
    """Send ``command`` from a thread of its own: DEBUG SLEEP blocks its sender too."""

    def send() -> None:
        with server.client(socket_timeout=5) as admin:
            admin.execute_command(*command)

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(0.05)  # the server has taken the command
    return thread


def stalled_calls(
    server: Server, breaker: Breaker | None, command: tuple[Any, ...]
) -> tuple[list[Made], float]:
    """One thread hitting through a stall; the calls made in it, and when it ended."""
    log: list[Made] = []
    with client_of(server) as client:
        limiter = Limiter(client, breaker=breaker)
        limiter.peek(ALLOW, "client-42")  # connected, the server checked
        started = time.monotonic()
        sender = stall_with(server, command)
        ended = started + STALL
        for worker in load_sync(limiter, threads=1, until=Until(ended + AFTER), log=log):
            worker.join()
        sender.join()
    return log, ended


@pytest.mark.parametrize(
    "command",
    [("CLIENT", "PAUSE", int(STALL * 1000), "ALL"), ("DEBUG", "SLEEP", STALL)],
    ids=["client-pause", "debug-sleep"],
)
def test_a_stalled_server_costs_the_breakers_fast_path_not_a_timeout_per_call(
    private: Server, command: tuple[Any, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    guarded, ended = stalled_calls(private, BREAKER, command)
    bare, bare_ended = stalled_calls(private, None, command)

    check_policies(guarded)
    check_policies(bare)
    stalled, with_breaker = figures(guarded, (ended - STALL + 0.1, ended - 0.1))
    bare_stalled, without = figures(bare, (bare_ended - STALL + 0.1, bare_ended - 0.1))
    after = recovery(guarded, ended)
    assert with_breaker < SOCKET_TIMEOUT / 2
    assert len(stalled) > 10 * len(bare_stalled)
    # The same stall, without a breaker, costs a timeout per call: the
    # checks above can fail.
    assert without > SOCKET_TIMEOUT / 2
    assert after < 10 * COOL_DOWN.total_seconds()
    report(
        capsys,
        f"{' '.join(map(str, command))}: one thread, socket timeout {SOCKET_TIMEOUT * 1e3:.0f} ms",
        [
            ("calls in the stall, breaker / none", f"{len(stalled):,} / {len(bare_stalled):,}"),
            ("p99 in the stall, breaker", f"{with_breaker * 1e3:.3f} ms"),
            ("p99 in the stall, no breaker", f"{without * 1e3:.1f} ms"),
            (
                "median in the stall, breaker",
                f"{statistics.median(c.seconds for c in stalled) * 1e3:.3f} ms",
            ),
            ("first decision by the server after the stall", f"{after * 1e3:.0f} ms"),
        ],
    )


async def test_async_deadline_and_breaker_through_debug_sleep(
    private: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    # No socket timeout on the client: the limiter's deadline bounds each call.
    log: list[Made] = []
    deadline = timedelta(milliseconds=250)
    async with private.async_client(retry=Retry(NoBackoff(), 0)) as client:
        limiter = AsyncLimiter(client, breaker=BREAKER, deadline=deadline)
        await limiter.peek(ALLOW, "client-42")
        sender = await asyncio.to_thread(stall_with, private, ("DEBUG", "SLEEP", STALL))
        ended = time.monotonic() - 0.05 + STALL
        await load_async(limiter, 20, Until(ended + AFTER), log)
        await asyncio.to_thread(sender.join)

    check_policies(log)
    during, slowest = figures(log, (ended - STALL + 0.35, ended - 0.1))
    after = recovery(log, ended)
    assert slowest < deadline.total_seconds() / 2
    assert after < 10 * COOL_DOWN.total_seconds()
    assert max(c.seconds for c in log) < 5 * deadline.total_seconds()
    report(
        capsys,
        f"async DEBUG SLEEP: 20 tasks, deadline {deadline.total_seconds() * 1e3:.0f} ms, "
        "no socket timeout",
        [
            ("calls in the stall after the first deadline", f"{len(during):,}"),
            ("p99 of those (breaker)", f"{slowest * 1e3:.3f} ms"),
            ("slowest call of the run", f"{max(c.seconds for c in log) * 1e3:.0f} ms"),
            ("first decision by the server after the stall", f"{after * 1e3:.0f} ms"),
        ],
    )

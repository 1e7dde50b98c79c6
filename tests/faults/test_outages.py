"""Servers that die, stall and come back, under load, with the circuit breaker.

Each test runs a private server (so killing it harms no other test) and
drives a limiter at it from several threads or tasks while the server is
killed and restarted, or blocked with CLIENT PAUSE or DEBUG SLEEP. Every
call and every move of the breaker is numbered in the order it happened,
and the record is checked afterwards for what the limiter decided:

- a limit with ``on_backend_error="deny"`` never admits a degraded call;
- a limit with ``"allow"`` admits every degraded call, marked degraded;
- while the server cannot answer, calls are refused by the open breaker
  without trying the server: the calls that did try it are no more than
  the breaker lets through (the failures that open it, what other workers
  had in flight, one probe per cool-down), where a limiter without a
  breaker tries the server on every call;
- a call that tried a stalled server was ended by the socket timeout or the
  deadline, never by the stall ending;
- once the server answers again, a probe closes the breaker and the calls
  after it are decided by the server.

Nothing here reads a clock to check a result: how long each of these takes
(the breaker's fast path against a call that pays the timeout, the time to
recover) is printed by ``bench/outages.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
from conftest import ServerPool
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Server, start_server

from atomlimit import AsyncLimiter, BackendError, Breaker, BreakerOpen, Decision, Limiter, RateLimit
from atomlimit.observe import BreakerState, Observer, error_class

SOCKET_TIMEOUT = 0.25
COOL_DOWN = timedelta(milliseconds=300)
BREAKER = Breaker(failures=3, cool_down=COOL_DOWN)
ALLOW = RateLimit(name="allow", limit=10**9, window="day", on_backend_error="allow")
DENY = RateLimit(name="deny", limit=300, window="day", on_backend_error="deny")
SPECS = (ALLOW, DENY)

RECOVERED = 50
"""Calls in a row the server must decide, after the last degraded call and
the breaker's last move, before the load stops: it is back, and stays back."""
GIVE_UP = 60.0
"""Seconds after which a load that never saw the server come back is
stopped, so that the checks fail instead of the run hanging."""


@dataclass(frozen=True, slots=True)
class Made:
    """One call: its place in the run's order when it began and ended, and what it decided."""

    began: int
    ended: int
    spec: RateLimit
    allowed: bool
    degraded: bool
    cause: BackendError | None


class Run(Observer):
    """One load's record: every call and every move of the breaker, numbered
    in the order they happened across all threads and tasks.

    It also stops the load once the server has been seen back: after an
    outage, :data:`RECOVERED` calls decided by the server, each begun after
    the last degraded call and the last move of the breaker.
    """

    def __init__(self) -> None:
        self._order = itertools.count()
        self._lock = threading.Lock()
        self.calls: list[Made] = []
        self.moves: list[tuple[int, BreakerState, BreakerState]] = []
        self.stop = threading.Event()
        self._outage = False
        self._since = -1
        self._decided = 0

    def begin(self) -> int:
        return next(self._order)

    def made(self, began: int, spec: RateLimit, decision: Decision[Any]) -> None:
        with self._lock:
            ended = next(self._order)
            call = Made(began, ended, spec, decision.allowed, decision.degraded, decision.cause)
            self.calls.append(call)
            if call.degraded:
                self._outage, self._since, self._decided = True, ended, 0
            elif began > self._since:
                self._decided += 1
                if self._outage and self._decided >= RECOVERED:
                    self.stop.set()

    def on_breaker(self, old: BreakerState, new: BreakerState) -> None:
        with self._lock:
            at = next(self._order)
            self.moves.append((at, old, new))
            self._since, self._decided = at, 0

    @property
    def recovered(self) -> bool:
        return self._outage and self._decided >= RECOVERED

    def moved(self, old: BreakerState, new: BreakerState) -> int:
        return sum(1 for _, was, now in self.moves if (was, now) == (old, new))

    @contextmanager
    def giving_up(self) -> Iterator[None]:
        """Stop the load after :data:`GIVE_UP` seconds if it has not stopped itself."""
        timer = threading.Timer(GIVE_UP, self.stop.set)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            self.stop.set()


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


def no_retry() -> redis.asyncio.retry.Retry:
    return redis.asyncio.retry.Retry(NoBackoff(), 0)


def kill(server: Server) -> None:
    """SIGKILL: no shutdown, no goodbye on any connection."""
    server._terminate(kill=True)


def load_sync(limiter: Limiter, threads: int, run: Run) -> list[threading.Thread]:
    """Threads that hit both limits in turn until the run stops, recording every call."""

    def work() -> None:
        while not run.stop.is_set():
            for spec in SPECS:
                began = run.begin()
                run.made(began, spec, limiter.hit(spec, "client-42"))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    return workers


async def load_async(limiter: AsyncLimiter, tasks: int, run: Run) -> None:
    async def work() -> None:
        while not run.stop.is_set():
            for spec in SPECS:
                began = run.begin()
                run.made(began, spec, await limiter.hit(spec, "client-42"))

    await asyncio.gather(*(work() for _ in range(tasks)))


def bare_calls(server: Server, count: int) -> list[BackendError | None]:
    """Why each of ``count`` calls of a limiter without a breaker was degraded."""
    with client_of(server) as client:
        limiter = Limiter(client, breaker=None)
        return [limiter.hit(ALLOW, "client-42").cause for _ in range(count)]


def check_policies(run: Run) -> None:
    """Deny never admits without the server; allow always does, marked degraded."""
    degraded = [call for call in run.calls if call.degraded]
    assert degraded, "the outage was never seen: the test did not test anything"
    assert not [c for c in degraded if c.spec is DENY and c.allowed]
    assert all(c.allowed for c in degraded if c.spec is ALLOW)


def tried(run: Run) -> list[Made]:
    """Degraded calls that went to the server and failed there, not refused by the breaker."""
    return [c for c in run.calls if c.degraded and not isinstance(c.cause, BreakerOpen)]


def let_through(run: Run, workers: int) -> int:
    """How many failed calls the breaker's rules let reach the server in this run.

    Each time it opens: ``failures`` in a row, plus what the other workers
    had in flight on either side of the failure that opened it (a reply
    that came in just before resets the count once). Then one probe per
    cool-down. A run without a breaker lets none through by these rules.
    """
    opened = run.moved("closed", "open")
    probes = run.moved("open", "half_open")
    return opened * (BREAKER.failures + 2 * (workers - 1)) + probes


def check_spared(run: Run, workers: int, *, threads: bool) -> None:
    """The open breaker, not the server, answered the calls of the outage.

    ``threads``: the workers are threads, so once the probe has closed the
    breaker the others may make any number of calls before that move is
    recorded, all to a server that answers again. Tasks cannot: nothing
    awaits in between.
    """
    assert [c for c in run.calls if isinstance(c.cause, BreakerOpen)], "the breaker never opened"
    assert len(tried(run)) <= let_through(run, workers)
    # From each opening until the breaker closes, or opens again after a
    # failed probe, a call begun in between went to the server only as
    # that probe; all the others were refused without a round trip. Where
    # threads may slip in as it closes, the check counts the calls that
    # failed there: a call let through while the server is down fails.
    racing = threads and workers > 1
    sent = [c for c in run.calls if not isinstance(c.cause, BreakerOpen)]
    if racing:
        sent = [c for c in sent if c.degraded]
    ends = [at for at, _, new in run.moves if new in ("open", "closed")]
    for at, _, new in run.moves:
        if new == "open":
            until = next((end for end in ends if end > at), math.inf)
            assert len([c for c in sent if at < c.began < until]) <= 1


def check_recovered(run: Run) -> None:
    """The server came back, a probe closed the breaker, and it decided every call since."""
    assert run.recovered, "the server never decided calls again"
    assert run.moves, "the breaker never moved"
    closed_at, old, new = run.moves[-1]
    assert (old, new) == ("half_open", "closed")
    since = [c for c in run.calls if c.began > closed_at]
    assert len(since) >= RECOVERED
    assert not [c for c in since if c.degraded]


def timed_out(call: Made) -> bool:
    """The call tried the server and the client's socket timeout ended it."""
    return call.cause is not None and error_class(call.cause) == "TimeoutError"


def deadline_passed(call: Made) -> bool:
    """The call tried the server and the limiter's deadline ended it.

    The limiter turns its deadline's expiry into a BackendError caused by
    the built-in TimeoutError; redis-py's own timeout is another class.
    """
    return call.cause is not None and type(call.cause.__cause__) is TimeoutError


# --------------------------------------------------------------------------
# Killed, then restarted, under load
# --------------------------------------------------------------------------


def test_killed_and_restarted_under_load(persistent: Server) -> None:
    run = Run()
    with client_of(persistent) as client:
        limiter = Limiter(client, breaker=BREAKER, observers=[run])
        workers = load_sync(limiter, threads=4, run=run)
        time.sleep(0.5)
        kill(persistent)
        time.sleep(0.2)
        bare = bare_calls(persistent, count=5)
        with run.giving_up():
            persistent.restart()
            for worker in workers:
                worker.join()
        admitted = Limiter(client).peek(DENY, "client-42").used

    check_policies(run)
    check_spared(run, workers=4, threads=True)
    check_recovered(run)
    decided = [c for c in run.calls if c.spec is DENY and c.allowed and not c.degraded]
    # Every admission the server made was kept across the crash. A charge
    # the server ran just before it died may have lost only its reply: the
    # caller then saw a failure whose effect is unknown, and no more.
    unknown = [c for c in run.calls if c.spec is DENY and c.cause and c.cause.applied == "unknown"]
    assert len(decided) <= admitted <= len(decided) + len(unknown)
    assert admitted <= DENY.limit
    # Without a breaker every call tries the server: the check above can fail.
    assert all(type(cause) is BackendError for cause in bare)


async def test_async_killed_and_restarted_under_load(persistent: Server) -> None:
    run = Run()
    async with persistent.async_client(
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=no_retry(),
    ) as client:
        limiter = AsyncLimiter(client, breaker=BREAKER, observers=[run])

        async def outage() -> None:
            await asyncio.sleep(0.5)
            kill(persistent)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(persistent.restart)

        with run.giving_up():
            await asyncio.gather(load_async(limiter, 20, run), outage())

    check_policies(run)
    check_spared(run, workers=20, threads=False)
    check_recovered(run)


# --------------------------------------------------------------------------
# Stalled: CLIENT PAUSE and DEBUG SLEEP, breaker against none
# --------------------------------------------------------------------------

STALL = 1.5


def stall_with(server: Server, command: tuple[Any, ...]) -> threading.Thread:
    """Send ``command`` from a thread of its own (DEBUG SLEEP blocks its sender
    too), and return once the server has stopped answering."""

    def send() -> None:
        with server.client(socket_timeout=5) as admin:
            admin.execute_command(*command)

    thread = threading.Thread(target=send)
    thread.start()
    # A PING that gets no answer shows the stall has begun, so that the
    # load's first calls fall inside it.
    with server.client(socket_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0)) as probe:
        while True:
            try:
                probe.ping()
            except redis.TimeoutError:
                return thread


def stalled_calls(server: Server, breaker: Breaker | None, command: tuple[Any, ...]) -> Run:
    """One thread hitting through a stall until the server is back."""
    run = Run()
    with client_of(server) as client:
        limiter = Limiter(client, breaker=breaker, observers=[run])
        limiter.peek(ALLOW, "client-42")  # connected, the server checked
        sender = stall_with(server, command)
        with run.giving_up():
            for worker in load_sync(limiter, threads=1, run=run):
                worker.join()
        sender.join()
    return run


@pytest.mark.parametrize(
    "command",
    [("CLIENT", "PAUSE", int(STALL * 1000), "ALL"), ("DEBUG", "SLEEP", STALL)],
    ids=["client-pause", "debug-sleep"],
)
def test_a_stalled_server_costs_the_breakers_fast_path_not_a_timeout_per_call(
    private: Server, command: tuple[Any, ...]
) -> None:
    guarded = stalled_calls(private, BREAKER, command)
    bare = stalled_calls(private, None, command)

    for run in (guarded, bare):
        check_policies(run)
        # The first call went out inside the stall: the socket timeout ended
        # it, not the server waking up.
        assert timed_out(run.calls[0])
        assert all(timed_out(call) for call in tried(run))
    check_spared(guarded, workers=1, threads=True)
    check_recovered(guarded)
    # The same stall, without a breaker, sends every call to the server:
    # the check the guarded run passes fails here.
    assert tried(bare)
    assert len(tried(bare)) > let_through(bare, workers=1)
    assert bare.recovered


async def test_async_deadline_and_breaker_through_debug_sleep(private: Server) -> None:
    # No socket timeout on the client: only the limiter's deadline bounds a call.
    run = Run()
    deadline = timedelta(milliseconds=250)
    async with private.async_client(retry=no_retry()) as client:
        limiter = AsyncLimiter(client, breaker=BREAKER, deadline=deadline, observers=[run])
        await limiter.peek(ALLOW, "client-42")
        sender = await asyncio.to_thread(stall_with, private, ("DEBUG", "SLEEP", STALL))
        with run.giving_up():
            await load_async(limiter, 20, run)
        await asyncio.to_thread(sender.join)

    check_policies(run)
    check_spared(run, workers=20, threads=False)
    check_recovered(run)
    assert all(deadline_passed(call) for call in tried(run))
    # Every task's first call went out inside the stall, before anything
    # failed and opened the breaker: had the deadline not ended each of
    # them, the server would have decided them once it woke up.
    first_failure = min(c.ended for c in run.calls if c.degraded)
    first_wave = [c for c in run.calls if c.began < first_failure]
    assert len(first_wave) >= 20
    assert all(deadline_passed(call) for call in first_wave)

"""The two thin shells: [`Limiter`][atomlimit.Limiter] (sync) and
[`AsyncLimiter`][atomlimit.AsyncLimiter].

They hand what `atomlimit._engine` plans to a runner from
`atomlimit._runner`, through the limiter's guard (`atomlimit._guard`:
circuit breaker, failure policy, observers), and wrap held things in handles
from `atomlimit.holds`; every rule lives in those places, once. Read the
two classes side by side: they differ only in ``await``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from atomlimit._acquire import Acquisition, acquire, undo
from atomlimit._checks import check_flag
from atomlimit._engine import (
    DEFAULT_HOLD,
    DEFAULT_REQUEST_TTL,
    DEFAULT_RETRY_TTL,
    Engine,
    Item,
    TimeSource,
)
from atomlimit._guard import AsyncGuardedRunner, Breaker, Guard, GuardedRunner, check_deadline
from atomlimit._limited import check_function, configure
from atomlimit._runner import AsyncRunner, SyncRunner, clock_reader
from atomlimit._steps import Call, Flow
from atomlimit._waiting import deadline_after, pause
from atomlimit.decision import Amount, Decision
from atomlimit.errors import InvalidInput, LimitExceeded
from atomlimit.holds import Acquired, AsyncLease, AsyncReservation, Lease, Pending, Reservation
from atomlimit.observe import Observer
from atomlimit.specs import Concurrency, Hit, Spec, SpendCap

Clock = Callable[[], float]
H = TypeVar("H", Lease, Reservation)
LeaseT = TypeVar("LeaseT", Lease, AsyncLease)
ReservationT = TypeVar("ReservationT", Reservation, AsyncReservation)
P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_CONNECTIONS = 50
MAX_MANY = 10_000
"""Most hits one hit_many decides: one round trip of about a megabyte."""
DEFAULT_POOL_TIMEOUT = 20.0
DEFAULT_BREAKER = Breaker()
"""Open after 5 failures in a row (or one refused connection), probe after 2 s."""


class Limiter:
    """Race-free limits over a sync ``redis.Redis`` or ``redis.RedisCluster``.

    Args:
        client: the connection to use; the limiter never closes a client it
            was given.
        prefix: first part of every key, to share one server between apps.
        time_source: ``"server"`` (default) lets the Redis server's TIME
            decide windows; ``"client"`` uses ``clock`` instead, for managed
            services that refuse TIME and for tests with a controlled clock.
        clock: epoch seconds as a float; with ``time_source="server"`` it only
            centres the planned windows and never decides one.
        request_ttl: how long a caller's ``request_id`` is remembered.
        retry_ttl: how long a call that needs a record but has no
            ``request_id`` (an acquire over several subjects, a reservation's
            outcome) keeps it.
        strict: refuse to decide on a server that may evict keys (a
            ``maxmemory-policy`` other than ``noeviction``) or whose INFO
            cannot be read, instead of logging a warning. A replica is always
            refused. See docs/cli.md (``doctor``).
        breaker: when to stop asking a failing server, and for how long
            ([`Breaker`][atomlimit.Breaker]); None turns the breaker off, so
            every call tries the server. See docs/failure-policy.md.
        observers: objects told of every decision and backend failure
            ([`atomlimit.observe.Observer`][atomlimit.observe.Observer]), at most 16.

    A call waits for the server at most as long as the client allows: its
    ``socket_connect_timeout`` and ``socket_timeout`` (redis-py waits
    forever by default). Set both on a client used in production.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        prefix: str = "atomlimit",
        time_source: TimeSource = "server",
        clock: Clock | None = None,
        request_ttl: timedelta = DEFAULT_REQUEST_TTL,
        retry_ttl: timedelta = DEFAULT_RETRY_TTL,
        strict: bool = False,
        breaker: Breaker | None = DEFAULT_BREAKER,
        observers: Sequence[Observer] = (),
    ) -> None:
        self._engine = Engine(
            prefix=prefix, time_source=time_source, request_ttl=request_ttl, retry_ttl=retry_ttl
        )
        now = clock_reader(clock)
        client = _client(client, (redis.Redis, RedisCluster))
        self._runner = SyncRunner(client, now, strict=check_flag(strict, "strict"))
        self._guard = Guard(breaker, observers, now)
        self._handles = GuardedRunner(self._guard, self._runner)
        self._owns_client = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "atomlimit",
        time_source: TimeSource = "server",
        clock: Clock | None = None,
        request_ttl: timedelta = DEFAULT_REQUEST_TTL,
        retry_ttl: timedelta = DEFAULT_RETRY_TTL,
        strict: bool = False,
        breaker: Breaker | None = DEFAULT_BREAKER,
        observers: Sequence[Observer] = (),
        **redis_options: Any,
    ) -> Self:
        """Connect to ``url``; ``redis_options`` go to ``redis.Redis.from_url``.

        The limiter owns this client and closes it in [`close`][atomlimit.Limiter.close].
        """
        client = _from_url(redis.Redis.from_url, url, redis_options)
        limiter = cls(
            client,
            prefix=prefix,
            time_source=time_source,
            clock=clock,
            request_ttl=request_ttl,
            retry_ttl=retry_ttl,
            strict=strict,
            breaker=breaker,
            observers=observers,
        )
        limiter._owns_client = True
        return limiter

    def hit(
        self,
        limit: Spec[Amount],
        subject: str,
        cost: Amount | int = 1,
        *,
        request_id: str | None = None,
        partial: bool = False,
    ) -> Decision[Amount]:
        """Charge ``cost`` to ``subject`` if it fits within ``limit``; else charge nothing.

        One atomic script run. With ``request_id``, a repeat of a charged
        request returns the original decision and charges nothing. With
        ``partial``, as much of ``cost`` as fits is granted (``granted``).
        """
        runner = self._open()
        call = self._engine.hit(limit, subject, cost, request_id, partial, runner.now())
        result: Decision[Amount] = self._guard.decide("hit", limit, cost, runner.run, call)
        return result

    def hit_many(self, hits: Sequence[Hit[Any]]) -> list[Decision[Any]]:
        """Decide many independent hits in one round trip (one per cluster node).

        Each hit is charged or denied on its own, as [`hit`][atomlimit.Limiter.hit] would; the
        decisions come back in order. For all-or-nothing, use
        [`acquire`][atomlimit.Limiter.acquire].
        """
        runner = self._open()
        calls = _hit_calls(self._engine, hits, runner.now())
        results: list[Decision[Any]] = self._guard.run(
            "hit_many", runner.run_many, calls, self._guard.many(hits)
        )
        return results

    def peek(self, limit: Spec[Amount], subject: str, cost: Amount | int = 1) -> Decision[Amount]:
        """Would a hit of ``cost`` pass now? Charges nothing."""
        runner = self._open()
        call = self._engine.peek(limit, subject, cost, runner.now())
        result: Decision[Amount] = self._guard.decide("peek", limit, cost, runner.run, call)
        return result

    def refund(
        self,
        limit: Spec[Amount],
        subject: str,
        amount: Amount | int,
        *,
        request_id: str | None = None,
    ) -> Decision[Amount]:
        """Give back up to ``amount`` of the current usage; ``used`` never goes below zero.

        With ``request_id``, a repeated refund gives back nothing more.
        """
        runner = self._open()
        call = self._engine.refund(limit, subject, amount, request_id, runner.now())
        result: Decision[Amount] = self._guard.decide("refund", limit, amount, runner.run, call)
        return result

    def reset(self, limit: Spec[Any], subject: str) -> None:
        """Forget ``subject``'s usage of ``limit``; a backend failure always raises."""
        runner = self._open()
        self._guard.run("reset", runner.run, self._engine.reset(limit, subject, runner.now()))

    def acquire(
        self, hits: Sequence[Hit[Any]], *, request_id: str | None = None
    ) -> Acquired[Lease, Reservation]:
        """Charge every hit or none of them; see docs/acquire.md.

        When the server fails, the strictest failure policy among the hits
        decides: any "raise" raises, else any "deny" denies, else all allow.
        """
        runner = self._open()
        flow = acquire(self._engine, hits, request_id)
        fallback = self._guard.acquisition(self._engine, hits)
        found: Acquisition = self._guard.run("acquire", runner.drive, flow, fallback)
        return _acquired(found, hits, self._lease_of, self._reservation_of)

    def undo_acquire(self, hits: Sequence[Hit[Any]], *, request_id: str) -> bool:
        """Take back exactly what the acquire of ``hits`` under ``request_id`` charged.

        For an acquire that raised [`BackendError`][atomlimit.errors.BackendError] part-way:
        pass the same hits and the error's ``request_id``. Returns True if
        something was charged under that id and is now taken back, False if
        nothing was (never charged, already undone, or its record expired).
        Sending it again changes nothing. See docs/acquire.md.
        """
        runner = self._open()
        undone: bool = runner.drive(undo(self._engine, hits, request_id))
        return undone

    def reserve(
        self,
        cap: SpendCap,
        subject: str,
        estimate: Decimal | int,
        *,
        ttl: timedelta = DEFAULT_HOLD,
        request_id: str | None = None,
    ) -> Reservation:
        """Hold ``estimate`` on ``cap`` until settled, released, or ``ttl`` passes."""
        runner = self._open()
        held = self._engine.reserve(cap, subject, estimate, ttl, request_id, runner.now())
        decision = self._guard.decide("reserve", cap, estimate, runner.run, held.call)
        return Reservation(self._engine, self._handles, decision, held.item, held.request_id)

    def reservation(
        self,
        cap: SpendCap,
        subject: str,
        estimate: Decimal | int,
        *,
        ttl: timedelta = DEFAULT_HOLD,
        raise_on_deny: bool = True,
    ) -> Reservation:
        """[`reserve`][atomlimit.Limiter.reserve], for ``with``: the block's end settles or
        releases.

        Raises [`LimitExceeded`][atomlimit.errors.LimitExceeded] when the cap is full, unless
        ``raise_on_deny`` is False.
        """
        check_flag(raise_on_deny, "raise_on_deny")
        return _granted(self.reserve(cap, subject, estimate, ttl=ttl), raise_on_deny)

    def lease(
        self,
        limit: Concurrency,
        subject: str,
        *,
        raise_on_deny: bool = True,
        request_id: str | None = None,
    ) -> Lease:
        """Take one of ``limit``'s slots; also a context manager that releases it.

        Raises [`LimitExceeded`][atomlimit.errors.LimitExceeded] when every slot is taken,
        unless ``raise_on_deny`` is False.
        """
        check_flag(raise_on_deny, "raise_on_deny")
        runner = self._open()
        held = self._engine.lease(limit, subject, request_id, runner.now())
        decision = self._guard.decide("lease", limit, 1, runner.run, held.call)
        lease = Lease(self._engine, self._handles, decision, held.item, held.request_id)
        return _granted(lease, raise_on_deny)

    # ------------------------------------------------------------------
    # Waiting and decorating. Each try is one hit, atomic like any other,
    # so waiters never overshoot; how long to sleep is decided by the pure
    # policy in atomlimit._waiting.
    # ------------------------------------------------------------------

    def wait(
        self,
        limit: Spec[Amount],
        subject: str,
        cost: Amount | int = 1,
        *,
        timeout: timedelta | float | None = None,
    ) -> Decision[Amount]:
        """Hit ``limit`` until it allows, sleeping ``retry_after`` (plus jitter) between tries.

        Returns the allowing Decision. Raises
        [`LimitExceeded`][atomlimit.errors.LimitExceeded] at once when the cost can never
        fit, or when the next try that could pass would land after
        ``timeout`` (a ``timedelta`` or seconds, at most a day; None waits
        as long as it takes). Never sleeps past the deadline.
        """
        deadline = deadline_after(timeout, time.monotonic())
        while True:
            decision = self.hit(limit, subject, cost)
            if decision.allowed:
                return decision
            sleep = pause(decision, deadline, time.monotonic(), random.random)
            if sleep is None:
                raise LimitExceeded(decision, limit=limit, subject=subject)
            time.sleep(sleep)

    def limited(
        self,
        limit: Spec[Any],
        *,
        subject: str | Callable[..., str],
        cost: Any = 1,
        wait: bool = False,
        timeout: timedelta | float | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a function so that each call is charged to ``limit`` first.

        ``subject`` and ``cost`` are values, or callables taking the
        function's own arguments. A denied call raises
        [`LimitExceeded`][atomlimit.errors.LimitExceeded] without running the function, or
        with ``wait=True`` waits as [`wait`][atomlimit.Limiter.wait] does, up to ``timeout``.
        Async functions need [`AsyncLimiter`][atomlimit.AsyncLimiter]; see docs/decorators.md.
        """
        config = configure(limit, subject, cost, wait, timeout)

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            check_function(func, asynchronous=False)

            @functools.wraps(func)
            def charged(*args: P.args, **kwargs: P.kwargs) -> R:
                who, amount = config.arguments(args, kwargs)
                if config.wait:
                    self.wait(config.limit, who, amount, timeout=config.timeout)
                else:
                    decision = self.hit(config.limit, who, amount)
                    if not decision.allowed:
                        raise LimitExceeded(decision, limit=config.limit, subject=who)
                return func(*args, **kwargs)

            return charged

        return decorate

    def close(self) -> None:
        """Close the client if this limiter created it (see
        [`from_url`][atomlimit.Limiter.from_url]).

        Any later call raises [`InvalidInput`][atomlimit.errors.InvalidInput].
        """
        if not self._runner.closed and self._owns_client:
            self._runner.client.close()
        self._runner.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open(self) -> SyncRunner:
        if self._runner.closed:
            raise InvalidInput("this limiter is closed; make a new one")
        return self._runner

    def _lease_of(self, decision: Decision[Any], item: Item, rid: str) -> Lease:
        return Lease(self._engine, self._handles, decision, item, rid)

    def _reservation_of(self, decision: Decision[Any], item: Item, rid: str) -> Reservation:
        return Reservation(self._engine, self._handles, decision, item, rid)


class AsyncLimiter:
    """Race-free limits over ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``.

    Takes the same arguments as [`Limiter`][atomlimit.Limiter], and:

    - ``batch``: calls that concurrent tasks start together go out in one
      write per server, each script still atomic (``batch=False`` sends
      each call on its own).
    - ``deadline``: the longest a call may wait for the server, a
      ``timedelta``; past it the call fails as a
      [`BackendError`][atomlimit.errors.BackendError] (outcome unknown), which the limit's
      failure policy may turn into a degraded decision. An ``acquire`` still
      finishes undoing what it charged before it gives up.

    One instance serves any number of tasks on its event loop.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | AsyncRedisCluster,
        *,
        prefix: str = "atomlimit",
        time_source: TimeSource = "server",
        clock: Clock | None = None,
        request_ttl: timedelta = DEFAULT_REQUEST_TTL,
        retry_ttl: timedelta = DEFAULT_RETRY_TTL,
        batch: bool = True,
        strict: bool = False,
        breaker: Breaker | None = DEFAULT_BREAKER,
        observers: Sequence[Observer] = (),
        deadline: timedelta | None = None,
    ) -> None:
        self._engine = Engine(
            prefix=prefix, time_source=time_source, request_ttl=request_ttl, retry_ttl=retry_ttl
        )
        now = clock_reader(clock)
        client = _client(client, (redis.asyncio.Redis, AsyncRedisCluster))
        batch, strict = check_flag(batch, "batch"), check_flag(strict, "strict")
        self._runner = AsyncRunner(client, now, batch=batch, strict=strict)
        self._guard = Guard(breaker, observers, now, check_deadline(deadline))
        self._handles = AsyncGuardedRunner(self._guard, self._runner)
        self._owns_client = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "atomlimit",
        time_source: TimeSource = "server",
        clock: Clock | None = None,
        request_ttl: timedelta = DEFAULT_REQUEST_TTL,
        retry_ttl: timedelta = DEFAULT_RETRY_TTL,
        batch: bool = True,
        strict: bool = False,
        breaker: Breaker | None = DEFAULT_BREAKER,
        observers: Sequence[Observer] = (),
        deadline: timedelta | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float | None = DEFAULT_POOL_TIMEOUT,
        **redis_options: Any,
    ) -> Self:
        """Connect to ``url`` through a blocking pool of ``max_connections``.

        Calls beyond what the pool can carry wait up to ``pool_timeout``
        seconds for a free connection instead of failing, as redis-py's
        default asyncio pool does past its limit. ``redis_options`` go to
        the pool.
        """
        options = {"max_connections": max_connections, "timeout": pool_timeout, **redis_options}
        pool = _from_url(redis.asyncio.BlockingConnectionPool.from_url, url, options)
        limiter = cls(
            redis.asyncio.Redis.from_pool(pool),
            prefix=prefix,
            time_source=time_source,
            clock=clock,
            request_ttl=request_ttl,
            retry_ttl=retry_ttl,
            batch=batch,
            strict=strict,
            breaker=breaker,
            observers=observers,
            deadline=deadline,
        )
        limiter._owns_client = True
        limiter._runner.keep_connections = True
        return limiter

    async def hit(
        self,
        limit: Spec[Amount],
        subject: str,
        cost: Amount | int = 1,
        *,
        request_id: str | None = None,
        partial: bool = False,
    ) -> Decision[Amount]:
        """Charge ``cost`` to ``subject`` if it fits within ``limit``; else charge nothing.

        One atomic script run. With ``request_id``, a repeat of a charged
        request returns the original decision and charges nothing. With
        ``partial``, as much of ``cost`` as fits is granted (``granted``).
        """
        runner = self._open()
        call = self._engine.hit(limit, subject, cost, request_id, partial, runner.now())
        result: Decision[Amount] = await self._guard.adecide("hit", limit, cost, runner.run, call)
        return result

    async def hit_many(self, hits: Sequence[Hit[Any]]) -> list[Decision[Any]]:
        """Decide many independent hits in one round trip (one per cluster node).

        Each hit is charged or denied on its own, as [`hit`][atomlimit.AsyncLimiter.hit] would; the
        decisions come back in order. For all-or-nothing, use
        [`acquire`][atomlimit.AsyncLimiter.acquire].
        """
        runner = self._open()
        calls = _hit_calls(self._engine, hits, runner.now())
        results: list[Decision[Any]] = await self._guard.arun(
            "hit_many", runner.run_many, calls, self._guard.many(hits)
        )
        return results

    async def peek(
        self, limit: Spec[Amount], subject: str, cost: Amount | int = 1
    ) -> Decision[Amount]:
        """Would a hit of ``cost`` pass now? Charges nothing."""
        runner = self._open()
        call = self._engine.peek(limit, subject, cost, runner.now())
        result: Decision[Amount] = await self._guard.adecide("peek", limit, cost, runner.run, call)
        return result

    async def refund(
        self,
        limit: Spec[Amount],
        subject: str,
        amount: Amount | int,
        *,
        request_id: str | None = None,
    ) -> Decision[Amount]:
        """Give back up to ``amount`` of the current usage; ``used`` never goes below zero.

        With ``request_id``, a repeated refund gives back nothing more.
        """
        runner = self._open()
        call = self._engine.refund(limit, subject, amount, request_id, runner.now())
        result: Decision[Amount] = await self._guard.adecide(
            "refund", limit, amount, runner.run, call
        )
        return result

    async def reset(self, limit: Spec[Any], subject: str) -> None:
        """Forget ``subject``'s usage of ``limit``; a backend failure always raises."""
        runner = self._open()
        await self._guard.arun(
            "reset", runner.run, self._engine.reset(limit, subject, runner.now())
        )

    async def acquire(
        self, hits: Sequence[Hit[Any]], *, request_id: str | None = None
    ) -> Acquired[AsyncLease, AsyncReservation]:
        """Charge every hit or none of them; see [`Limiter.acquire`][atomlimit.Limiter.acquire].

        If the calling task is cancelled part-way, the acquire still runs to
        its end (all charged, or what was charged undone) before the
        cancellation goes through, so no partial charge survives; leases and
        holds it took are then released, since nobody holds their handles.
        """
        self._open()
        flow = acquire(self._engine, hits, request_id)
        fallback = self._guard.acquisition(self._engine, hits)
        found: Acquisition = await self._guard.arun("acquire", self._whole, flow, fallback)
        return _acquired(found, hits, self._lease_of, self._reservation_of)

    async def undo_acquire(self, hits: Sequence[Hit[Any]], *, request_id: str) -> bool:
        """Take back exactly what the acquire of ``hits`` under ``request_id``
        charged; see [`Limiter.undo_acquire`][atomlimit.Limiter.undo_acquire]."""
        runner = self._open()
        undone: bool = await runner.drive(undo(self._engine, hits, request_id))
        return undone

    async def reserve(
        self,
        cap: SpendCap,
        subject: str,
        estimate: Decimal | int,
        *,
        ttl: timedelta = DEFAULT_HOLD,
        request_id: str | None = None,
    ) -> AsyncReservation:
        """Hold ``estimate`` on ``cap`` until settled, released, or ``ttl`` passes."""
        runner = self._open()
        held = self._engine.reserve(cap, subject, estimate, ttl, request_id, runner.now())
        decision = await self._guard.adecide("reserve", cap, estimate, runner.run, held.call)
        return AsyncReservation(self._engine, self._handles, decision, held.item, held.request_id)

    def reservation(
        self,
        cap: SpendCap,
        subject: str,
        estimate: Decimal | int,
        *,
        ttl: timedelta = DEFAULT_HOLD,
        raise_on_deny: bool = True,
    ) -> Pending[AsyncReservation]:
        """[`reserve`][atomlimit.AsyncLimiter.reserve], for ``async with``: the block's end settles
        or releases.

        Raises [`LimitExceeded`][atomlimit.errors.LimitExceeded] when the cap is full, unless
        ``raise_on_deny`` is False.
        """
        check_flag(raise_on_deny, "raise_on_deny")
        return Pending(lambda: self.reserve(cap, subject, estimate, ttl=ttl), raise_on_deny)

    def lease(
        self,
        limit: Concurrency,
        subject: str,
        *,
        raise_on_deny: bool = True,
        request_id: str | None = None,
    ) -> Pending[AsyncLease]:
        """Take one of ``limit``'s slots: await it, or ``async with`` it to release on exit.

        Raises [`LimitExceeded`][atomlimit.errors.LimitExceeded] when every slot is taken,
        unless ``raise_on_deny`` is False.
        """

        check_flag(raise_on_deny, "raise_on_deny")

        async def take() -> AsyncLease:
            runner = self._open()
            held = self._engine.lease(limit, subject, request_id, runner.now())
            decision = await self._guard.adecide("lease", limit, 1, runner.run, held.call)
            return AsyncLease(self._engine, self._handles, decision, held.item, held.request_id)

        return Pending(take, raise_on_deny)

    # ------------------------------------------------------------------
    # Waiting and decorating: Limiter's twins, differing only in await.
    # ------------------------------------------------------------------

    async def wait(
        self,
        limit: Spec[Amount],
        subject: str,
        cost: Amount | int = 1,
        *,
        # Not asyncio.timeout: that cancels when time is up, while a wait
        # knows from retry_after that it cannot make it and gives up at once.
        timeout: timedelta | float | None = None,  # noqa: ASYNC109
    ) -> Decision[Amount]:
        """Hit ``limit`` until it allows, sleeping ``retry_after`` (plus jitter) between tries.

        Returns the allowing Decision. Raises
        [`LimitExceeded`][atomlimit.errors.LimitExceeded] at once when the cost can never
        fit, or when the next try that could pass would land after
        ``timeout`` (a ``timedelta`` or seconds, at most a day; None waits
        as long as it takes). Never sleeps past the deadline.
        """
        deadline = deadline_after(timeout, time.monotonic())
        while True:
            decision = await self.hit(limit, subject, cost)
            if decision.allowed:
                return decision
            sleep = pause(decision, deadline, time.monotonic(), random.random)
            if sleep is None:
                raise LimitExceeded(decision, limit=limit, subject=subject)
            await asyncio.sleep(sleep)

    def limited(
        self,
        limit: Spec[Any],
        *,
        subject: str | Callable[..., str],
        cost: Any = 1,
        wait: bool = False,
        timeout: timedelta | float | None = None,
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Decorate an ``async def`` function so that each call is charged to ``limit`` first.

        ``subject`` and ``cost`` are values, or callables taking the
        function's own arguments. A denied call raises
        [`LimitExceeded`][atomlimit.errors.LimitExceeded] without running the function, or
        with ``wait=True`` waits as [`wait`][atomlimit.AsyncLimiter.wait] does, up to ``timeout``.
        Plain functions need [`Limiter`][atomlimit.Limiter]; see docs/decorators.md.
        """
        config = configure(limit, subject, cost, wait, timeout)

        def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
            check_function(func, asynchronous=True)

            @functools.wraps(func)
            async def charged(*args: P.args, **kwargs: P.kwargs) -> R:
                who, amount = config.arguments(args, kwargs)
                if config.wait:
                    await self.wait(config.limit, who, amount, timeout=config.timeout)
                else:
                    decision = await self.hit(config.limit, who, amount)
                    if not decision.allowed:
                        raise LimitExceeded(decision, limit=config.limit, subject=who)
                return await func(*args, **kwargs)

            return charged

        return decorate

    async def aclose(self) -> None:
        """Close the client if this limiter created it (see
        [`from_url`][atomlimit.AsyncLimiter.from_url]).

        A client you gave it stays open, with every connection the limiter
        held given back to its pool. Any later call raises
        [`InvalidInput`][atomlimit.errors.InvalidInput].
        """
        if not self._runner.closed:
            await self._runner.close()
            if self._owns_client:
                await self._runner.client.aclose()
        self._runner.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _open(self) -> AsyncRunner:
        if self._runner.closed:
            raise InvalidInput("this limiter is closed; make a new one")
        return self._runner

    def _lease_of(self, decision: Decision[Any], item: Item, rid: str) -> AsyncLease:
        return AsyncLease(self._engine, self._handles, decision, item, rid)

    def _reservation_of(self, decision: Decision[Any], item: Item, rid: str) -> AsyncReservation:
        return AsyncReservation(self._engine, self._handles, decision, item, rid)

    async def _whole(self, flow: Flow) -> Acquisition:
        """Drive an acquire to its end even if the caller is cancelled.

        Cancelled part-way (by the caller, or by the deadline), the acquire
        still finishes (all charged, or what was charged undone) before the
        cancellation goes through, so no partial charge survives; leases and
        holds it took are then released, since nobody holds their handles.
        """
        done = asyncio.ensure_future(self._runner.drive(flow))
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                found = await done
                for item, decision in found.held:
                    handle = self._reservation_of if item.hold else self._lease_of
                    await handle(decision, item, found.request_id).release()
            raise


def _hit_calls(engine: Engine, hits: Sequence[Hit[Any]], local: int) -> list[Call]:
    if not isinstance(hits, list | tuple) or len(hits) > MAX_MANY:
        raise InvalidInput(f"hit_many takes a list or tuple of at most {MAX_MANY} Hit objects")
    calls = []
    for hit in hits:
        if not isinstance(hit, Hit):
            raise InvalidInput(f"hit_many takes Hit objects, got {type(hit).__name__}")
        if hit.hold is not None:
            raise InvalidInput("hit_many charges; a Hit with a hold is a reservation (reserve)")
        calls.append(engine.hit(hit.limit, hit.subject, hit.cost, None, False, local))
    return calls


def _client(client: Any, kinds: tuple[type, ...]) -> Any:
    if not isinstance(client, kinds):
        names = " or ".join(f"{k.__module__}.{k.__qualname__}" for k in kinds)
        raise InvalidInput(f"client must be a {names}, got {type(client).__name__}")
    return client


def _from_url(make: Callable[..., Any], url: object, options: dict[str, Any]) -> Any:
    if not isinstance(url, str):
        raise InvalidInput(f"url must be a str like 'redis://host:6379/0', got {url!r:.80}")
    try:
        return make(url, **options)
    except ValueError as err:
        # redis-py names the accepted schemes; the URL itself may hold a
        # password, so only its scheme is repeated.
        scheme = url.split("://", 1)[0] if "://" in url else "(none)"
        raise InvalidInput(f"url is not a Redis URL (scheme {scheme!r}): {err}") from None


def _granted(handle: H, raise_on_deny: bool) -> H:
    if raise_on_deny and not handle.allowed:
        raise LimitExceeded(handle.decision)
    return handle


def _acquired(
    found: Acquisition,
    hits: Sequence[Hit[Any]],
    lease: Callable[[Decision[Any], Item, str], LeaseT],
    hold: Callable[[Decision[Any], Item, str], ReservationT],
) -> Acquired[LeaseT, ReservationT]:
    leases = tuple(lease(d, i, found.request_id) for i, d in found.held if not i.hold)
    holds = tuple(hold(d, i, found.request_id) for i, d in found.held if i.hold)
    denied_by = None if found.denied_at is None else hits[found.denied_at]
    return Acquired(found.allowed, tuple(found.decisions), denied_by, leases, holds)

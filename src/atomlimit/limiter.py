"""The two thin shells: :class:`Limiter` (sync) and :class:`AsyncLimiter`.

They hand what :mod:`atomlimit._engine` plans to a runner from
:mod:`atomlimit._runner`, and wrap held things in handles from
:mod:`atomlimit.holds`; every rule lives in those places, once. Read the two
classes side by side: they differ only in ``await``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeVar

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from atomlimit._engine import (
    DEFAULT_HOLD,
    DEFAULT_REQUEST_TTL,
    DEFAULT_RETRY_TTL,
    Acquisition,
    Clock,
    Engine,
    Item,
    TimeSource,
)
from atomlimit._runner import AsyncRunner, SyncRunner
from atomlimit.decision import Amount, Decision
from atomlimit.errors import LimitExceeded
from atomlimit.holds import Acquired, AsyncLease, AsyncReservation, Lease, Pending, Reservation
from atomlimit.specs import Concurrency, Hit, Spec, SpendCap

H = TypeVar("H", Lease, Reservation)
LeaseT = TypeVar("LeaseT", Lease, AsyncLease)
ReservationT = TypeVar("ReservationT", Reservation, AsyncReservation)

DEFAULT_MAX_CONNECTIONS = 50
DEFAULT_POOL_TIMEOUT = 20.0


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
        retry_ttl: how long the id generated for a call without
            ``request_id`` is remembered; it must outlive redis-py's retries.
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
    ) -> None:
        self._engine = Engine(
            prefix=prefix,
            time_source=time_source,
            clock=clock,
            request_ttl=request_ttl,
            retry_ttl=retry_ttl,
        )
        self._runner = SyncRunner(client)
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
        **redis_options: Any,
    ) -> Self:
        """Connect to ``url``; ``redis_options`` go to ``redis.Redis.from_url``.

        The limiter owns this client and closes it in :meth:`close`.
        """
        limiter = cls(
            redis.Redis.from_url(url, **redis_options),
            prefix=prefix,
            time_source=time_source,
            clock=clock,
            request_ttl=request_ttl,
            retry_ttl=retry_ttl,
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
        call = self._engine.hit(limit, subject, cost, request_id, partial)
        result: Decision[Amount] = self._runner.run(call)
        return result

    def peek(self, limit: Spec[Amount], subject: str, cost: Amount | int = 1) -> Decision[Amount]:
        """Would a hit of ``cost`` pass now? Charges nothing."""
        result: Decision[Amount] = self._runner.run(self._engine.peek(limit, subject, cost))
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
        call = self._engine.refund(limit, subject, amount, request_id)
        result: Decision[Amount] = self._runner.run(call)
        return result

    def reset(self, limit: Spec[Any], subject: str) -> None:
        """Forget ``subject``'s usage of ``limit``."""
        self._runner.run(self._engine.reset(limit, subject))

    def acquire(
        self, hits: Sequence[Hit[Any]], *, request_id: str | None = None
    ) -> Acquired[Lease, Reservation]:
        """Charge every hit or none of them; see :meth:`Engine.acquire` and docs/acquire.md."""
        found: Acquisition = self._runner.drive(self._engine.acquire(hits, request_id))
        return _acquired(found, hits, self._lease_of, self._reservation_of)

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
        held = self._engine.reserve(cap, subject, estimate, ttl, request_id)
        decision = self._runner.run(held.call)
        return Reservation(self._engine, self._runner, decision, held.item, held.request_id)

    def reservation(
        self,
        cap: SpendCap,
        subject: str,
        estimate: Decimal | int,
        *,
        ttl: timedelta = DEFAULT_HOLD,
        raise_on_deny: bool = True,
    ) -> Reservation:
        """:meth:`reserve`, for ``with``: the block's end settles or releases.

        Raises :class:`~atomlimit.LimitExceeded` when the cap is full, unless
        ``raise_on_deny`` is False.
        """
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

        Raises :class:`~atomlimit.LimitExceeded` when every slot is taken,
        unless ``raise_on_deny`` is False.
        """
        held = self._engine.lease(limit, subject, request_id)
        decision = self._runner.run(held.call)
        lease = Lease(self._engine, self._runner, decision, held.item, held.request_id)
        return _granted(lease, raise_on_deny)

    def close(self) -> None:
        """Close the client if this limiter created it (see :meth:`from_url`)."""
        if self._owns_client:
            self._runner.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _lease_of(self, decision: Decision[Any], item: Item, rid: str) -> Lease:
        return Lease(self._engine, self._runner, decision, item, rid)

    def _reservation_of(self, decision: Decision[Any], item: Item, rid: str) -> Reservation:
        return Reservation(self._engine, self._runner, decision, item, rid)


class AsyncLimiter:
    """Race-free limits over ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``.

    Takes the same arguments as :class:`Limiter`. One instance serves any
    number of tasks on its event loop.
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
    ) -> None:
        self._engine = Engine(
            prefix=prefix,
            time_source=time_source,
            clock=clock,
            request_ttl=request_ttl,
            retry_ttl=retry_ttl,
        )
        self._runner = AsyncRunner(client)
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
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float | None = DEFAULT_POOL_TIMEOUT,
        **redis_options: Any,
    ) -> Self:
        """Connect to ``url`` through a blocking pool of ``max_connections``.

        Tasks beyond the pool size wait up to ``pool_timeout`` seconds for a
        free connection instead of failing, as redis-py's default asyncio
        pool does past its limit. ``redis_options`` go to the pool.
        """
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout, **redis_options
        )
        limiter = cls(
            redis.asyncio.Redis.from_pool(pool),
            prefix=prefix,
            time_source=time_source,
            clock=clock,
            request_ttl=request_ttl,
            retry_ttl=retry_ttl,
        )
        limiter._owns_client = True
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
        call = self._engine.hit(limit, subject, cost, request_id, partial)
        result: Decision[Amount] = await self._runner.run(call)
        return result

    async def peek(
        self, limit: Spec[Amount], subject: str, cost: Amount | int = 1
    ) -> Decision[Amount]:
        """Would a hit of ``cost`` pass now? Charges nothing."""
        result: Decision[Amount] = await self._runner.run(self._engine.peek(limit, subject, cost))
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
        call = self._engine.refund(limit, subject, amount, request_id)
        result: Decision[Amount] = await self._runner.run(call)
        return result

    async def reset(self, limit: Spec[Any], subject: str) -> None:
        """Forget ``subject``'s usage of ``limit``."""
        await self._runner.run(self._engine.reset(limit, subject))

    async def acquire(
        self, hits: Sequence[Hit[Any]], *, request_id: str | None = None
    ) -> Acquired[AsyncLease, AsyncReservation]:
        """Charge every hit or none of them; see :meth:`Limiter.acquire`.

        If the calling task is cancelled part-way, the acquire still runs to
        its end (all charged, or what was charged undone) before the
        cancellation goes through, so no partial charge survives; leases and
        holds it took are then released, since nobody holds their handles.
        """
        flow = asyncio.ensure_future(self._runner.drive(self._engine.acquire(hits, request_id)))
        try:
            found: Acquisition = await asyncio.shield(flow)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                done: Acquisition = await flow
                result = _acquired(done, hits, self._lease_of, self._reservation_of)
                for lease in result.leases:
                    await lease.release()
                for reservation in result.reservations:
                    await reservation.release()
            raise
        return _acquired(found, hits, self._lease_of, self._reservation_of)

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
        held = self._engine.reserve(cap, subject, estimate, ttl, request_id)
        decision = await self._runner.run(held.call)
        return AsyncReservation(self._engine, self._runner, decision, held.item, held.request_id)

    def reservation(
        self,
        cap: SpendCap,
        subject: str,
        estimate: Decimal | int,
        *,
        ttl: timedelta = DEFAULT_HOLD,
        raise_on_deny: bool = True,
    ) -> Pending[AsyncReservation]:
        """:meth:`reserve`, for ``async with``: the block's end settles or releases.

        Raises :class:`~atomlimit.LimitExceeded` when the cap is full, unless
        ``raise_on_deny`` is False.
        """
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

        Raises :class:`~atomlimit.LimitExceeded` when every slot is taken,
        unless ``raise_on_deny`` is False.
        """

        async def take() -> AsyncLease:
            held = self._engine.lease(limit, subject, request_id)
            decision = await self._runner.run(held.call)
            return AsyncLease(self._engine, self._runner, decision, held.item, held.request_id)

        return Pending(take, raise_on_deny)

    async def aclose(self) -> None:
        """Close the client if this limiter created it (see :meth:`from_url`)."""
        if self._owns_client:
            await self._runner.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _lease_of(self, decision: Decision[Any], item: Item, rid: str) -> AsyncLease:
        return AsyncLease(self._engine, self._runner, decision, item, rid)

    def _reservation_of(self, decision: Decision[Any], item: Item, rid: str) -> AsyncReservation:
        return AsyncReservation(self._engine, self._runner, decision, item, rid)


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
    leases = tuple(lease(d, i, found.request_id) for i, d in found.held if i.kind == "cc")
    holds = tuple(hold(d, i, found.request_id) for i, d in found.held if i.kind == "rs")
    denied_by = None if found.denied_at is None else hits[found.denied_at]
    return Acquired(found.allowed, tuple(found.decisions), denied_by, leases, holds)

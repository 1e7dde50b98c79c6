"""The two thin shells: :class:`Limiter` (sync) and :class:`AsyncLimiter`.

They hand the calls that :mod:`atomlimit._engine` plans to a runner from
:mod:`atomlimit._runner`; every rule lives in those two places, once. Read
the two classes side by side: they differ only in ``await``.
"""

from __future__ import annotations

from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from atomlimit._engine import DEFAULT_REQUEST_TTL, DEFAULT_RETRY_TTL, Clock, Engine, TimeSource
from atomlimit._runner import AsyncRunner, SyncRunner
from atomlimit.decision import Amount, Decision
from atomlimit.specs import Spec

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
    ) -> Decision[Amount]:
        """Charge ``cost`` to ``subject`` if it fits within ``limit``; else charge nothing.

        One atomic script run. With ``request_id``, a repeat of a charged
        request returns the original decision and charges nothing.
        """
        result: Decision[Amount] = self._runner.run(
            self._engine.hit(limit, subject, cost, request_id)
        )
        return result

    def peek(self, limit: Spec[Amount], subject: str, cost: Amount | int = 1) -> Decision[Amount]:
        """Would a hit of ``cost`` pass now? Charges nothing."""
        result: Decision[Amount] = self._runner.run(self._engine.peek(limit, subject, cost))
        return result

    def reset(self, limit: Spec[Any], subject: str) -> None:
        """Forget ``subject``'s usage of ``limit``."""
        self._runner.run(self._engine.reset(limit, subject))

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
    ) -> Decision[Amount]:
        """Charge ``cost`` to ``subject`` if it fits within ``limit``; else charge nothing.

        One atomic script run. With ``request_id``, a repeat of a charged
        request returns the original decision and charges nothing.
        """
        result: Decision[Amount] = await self._runner.run(
            self._engine.hit(limit, subject, cost, request_id)
        )
        return result

    async def peek(
        self, limit: Spec[Amount], subject: str, cost: Amount | int = 1
    ) -> Decision[Amount]:
        """Would a hit of ``cost`` pass now? Charges nothing."""
        result: Decision[Amount] = await self._runner.run(self._engine.peek(limit, subject, cost))
        return result

    async def reset(self, limit: Spec[Any], subject: str) -> None:
        """Forget ``subject``'s usage of ``limit``."""
        await self._runner.run(self._engine.reset(limit, subject))

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

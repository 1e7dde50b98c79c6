"""The seed application's Redis client, same names and keys, made race-free.

Drop-in for the original ``RedisClient``: method names, signatures, key
patterns and stored formats are unchanged, so old and new workers can share
keys during a rolling deploy. Two calls are new, and they are the ones to
use: `RedisClient.try_rate_limit` and `RedisClient.try_ai_spend`
check and charge in one atomic script, where the old check-then-increment
pairs let concurrent workers all pass the check and overshoot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from atomlimit import _keys
from atomlimit._async_runner import AsyncRunner
from atomlimit._codecs import REPLAN, new_id
from atomlimit._engine import Engine
from atomlimit._inputs import check_int, check_part, check_zone
from atomlimit._money import MAX_UNITS, to_units
from atomlimit._runner_steps import Call, Command
from atomlimit._scripts import Script, script
from atomlimit._windows import WindowPlan
from atomlimit._wire import Arg
from atomlimit.limiter import DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT

__all__ = ["CACHE_VERSION", "DAILY_AI_SPEND_LIMIT", "RedisClient", "cache_key"]

CACHE_VERSION = "v1"
DAILY_AI_SPEND_LIMIT = Decimal("100.00")
"""AUD per client per day. A Decimal now: the old float 100.00 compared equal."""

_APPLIED = (1, 2)
"""Reply codes of a write that happened: now, or on an earlier send of this call."""

_PLACES = 6
"""Spend is added in micro-AUD: amounts finer than 0.000001 are refused."""

# Seed keys are built by plain interpolation, so a ":" inside an identifier
# would make ("a:b", "c") and ("a", "b:c") share a key: check_part refuses
# such input, as it does for cache keys.


def cache_key(category: str, identifier: str) -> str:
    """The seed's versioned cache key: ``v1:{category}:{identifier}``."""
    return _keys.cache_key(CACHE_VERSION, category, identifier)


class RedisClient:
    """The seed's asyncio client. ``tz`` is where the daily keys' midnight falls.

    ``redis`` is the underlying client (text replies), as in the seed. For a
    single server it draws on a blocking pool of ``max_connections``, so a
    burst of tasks waits for a connection rather than failing. With
    ``cluster=True``, ``url`` names any node of a Redis Cluster.
    """

    def __init__(
        self,
        url: str,
        *,
        tz: str = "UTC",
        cluster: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        **redis_options: Any,
    ) -> None:
        zone = check_zone(tz, "tz")
        text = {"encoding": "utf-8", "decode_responses": True}
        self.redis: redis.asyncio.Redis | AsyncRedisCluster
        if cluster:
            # A cluster client keeps one pool per node, each capped at
            # max_connections; size it for the peak concurrency per node.
            self.redis = AsyncRedisCluster.from_url(
                url, max_connections=max_connections, **text, **redis_options
            )
        else:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=DEFAULT_POOL_TIMEOUT,
                **text,
                **redis_options,
            )
            self.redis = redis.asyncio.Redis.from_pool(pool)
        self._engine = Engine()
        self._runner = AsyncRunner(self.redis)
        self._day = WindowPlan("day", zone)

    async def check_rate_limit(self, resource_type: str, resource_id: str, limit: int) -> bool:
        """True if the resource has reached ``limit`` today. Read only.

        Racy when paired with `increment_rate_limit`; prefer
        `try_rate_limit`.
        """
        limit = _limit(limit)
        current = await self._runner.send(
            Command(("GET", _rate_key(resource_type, resource_id)), _same)
        )
        return int(current or 0) >= limit

    async def increment_rate_limit(self, resource_type: str, resource_id: str) -> int:
        """Count one use; the key expires at the next midnight. Returns the count."""
        _, count = await self._count(_rate_key(resource_type, resource_id), "")
        return count

    async def try_rate_limit(self, resource_type: str, resource_id: str, limit: int) -> bool:
        """Count one use if the resource is under ``limit`` today, atomically.

        Returns True if the use was counted, False (counting nothing) if the
        limit was already reached.
        """
        limit = _limit(limit)
        status, _ = await self._count(_rate_key(resource_type, resource_id), limit)
        return status in _APPLIED

    async def check_ai_spend(self, client_id: UUID | str) -> bool:
        """True if the client has spent ``DAILY_AI_SPEND_LIMIT`` or more today."""
        current = await self._runner.send(Command(("GET", _spend_key(client_id)), _same))
        # The client decodes replies, so the value is text, read exactly.
        return Decimal(str(current or 0)) >= DAILY_AI_SPEND_LIMIT

    async def record_ai_spend(self, client_id: UUID | str, amount: float | Decimal) -> float:
        """Add ``amount`` AUD to today's spend unconditionally; returns the new total."""
        _, total = await self._spend(_spend_key(client_id), amount, "")
        return float(total)

    async def try_ai_spend(self, client_id: UUID | str, amount: float | Decimal) -> bool:
        """Add ``amount`` only if today's total stays within ``DAILY_AI_SPEND_LIMIT``.

        Atomic: concurrent calls can never push the total past the limit.
        Returns False, adding nothing, when the amount does not fit.
        """
        cap = to_units(DAILY_AI_SPEND_LIMIT, _PLACES, "DAILY_AI_SPEND_LIMIT")
        status, _ = await self._spend(_spend_key(client_id), amount, cap)
        return status in _APPLIED

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()

    async def _count(self, key: str, limit: int | str) -> tuple[int, int]:
        def finish(reply: Sequence[Any]) -> tuple[int, int]:
            return reply[0], int(reply[2])

        call = self._once(script("compat_count"), key, (limit,), finish)
        result: tuple[int, int] = await self._runner.run(call)
        return result

    async def _spend(
        self, key: str, amount: float | Decimal, cap: int | str
    ) -> tuple[int, Decimal]:
        units = to_units(_exact(amount), _PLACES, "amount")

        def finish(reply: Sequence[Any]) -> tuple[int, Decimal]:
            return reply[0], Decimal(reply[2])

        call = self._once(script("compat_spend"), key, (units, cap, _PLACES), finish)
        result: tuple[int, Decimal] = await self._runner.run(call)
        return result

    def _once(
        self,
        lua: Script,
        key: str,
        head: tuple[Arg, ...],
        finish: Callable[[Sequence[Any]], Any],
    ) -> Call:
        """A compat write on ``key``, recorded so a second send applies it once."""
        engine, local = self._engine, self._runner.now()
        record = _keys.compat_record(key, new_id())

        def plan() -> Call:
            t, client_now = engine.planned(local)
            args = (*head, client_now, *self._day.bounds(t), engine.retry_ttl)

            def read(reply: Sequence[Any]) -> Any:
                engine.observe(reply[1], local)
                return plan() if reply[0] == REPLAN else finish(reply)

            return Call(lua, (key, record), args, read, replayable=True)

        return plan()


def _same(reply: object) -> object:
    return reply


def _exact(amount: object) -> object:
    """The seed passes floats; read one as the decimal it was written as.

    ``repr`` of a float is the shortest text that round-trips, so 0.37 reads
    as Decimal("0.37"), not as the binary value 0.36999999999999999555.
    """
    if isinstance(amount, float):
        # float's own repr: a subclass's (numpy.float64's) may not be a number.
        return Decimal(float.__repr__(amount))
    return amount


def _limit(value: object) -> int:
    # Lua compares it as a double: above 2**53 it would not be exact.
    return check_int(value, "limit", 0, MAX_UNITS)


def _identifier(value: object, field: str) -> str:
    return check_part(str(value) if isinstance(value, UUID) else value, field)


def _rate_key(resource_type: str, resource_id: str) -> str:
    kind = _identifier(resource_type, "resource_type")
    return _keys.daily_count_key(kind, _identifier(resource_id, "resource_id"))


def _spend_key(client_id: UUID | str) -> str:
    return _keys.daily_spend_key(_identifier(client_id, "client_id"))

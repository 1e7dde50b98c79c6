"""The cache's shell: what `atomlimit._cache_plan` plans, sent by a runner.

See [`atomlimit.cache`][atomlimit.cache] for the keys, the categories and an example.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from atomlimit._async_runner import AsyncRunner
from atomlimit._cache_plan import CachePlan, Parts
from atomlimit._errors import InvalidInput
from atomlimit._inputs import show

if TYPE_CHECKING:
    from atomlimit._cache_plan import Category

T = TypeVar("T")
F = TypeVar("F")

DEFAULT_VERSION = "v1"
"""The seed's ``CACHE_VERSION``."""
DEFAULT_WAIT = timedelta(seconds=5)
DEFAULT_LOCK_TTL = timedelta(seconds=10)


class AsyncCache:
    # unasync: async
    """A versioned, typed cache over ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``.

    Takes the same arguments as `Cache`. One instance serves any
    number of tasks on its event loop.
    """

    # unasync: sync
    # """A versioned, typed cache over a sync ``redis.Redis`` or ``redis.RedisCluster``.
    #
    # Args:
    #     client: the connection to use, shared with the rest of the app; the
    #         cache never closes it.
    #     version: first part of every key. Bump it (``"v2"``) when stored
    #         values change shape: old entries become unreachable and expire
    #         by their own TTL.
    #     wait: how long `get_or_set` waits for another worker's factory
    #         before running the factory itself.
    #     lock_ttl: how long a `get_or_set` lock lives if its holder
    #         never releases it (crash, cancellation, lost connection).
    # """
    # unasync: end

    __slots__ = ("_plan", "_runner")

    def __init__(
        self,
        client: redis.asyncio.Redis | AsyncRedisCluster,
        *,
        version: str = DEFAULT_VERSION,
        wait: timedelta = DEFAULT_WAIT,
        lock_ttl: timedelta = DEFAULT_LOCK_TTL,
    ) -> None:
        self._plan = CachePlan(version, wait, lock_ttl)
        self._runner = AsyncRunner(client)

    def key(self, category: Category[Any], parts: Parts) -> str:
        """The Redis key of an entry, e.g. ``v1:enrichment:acme.com:<hash>``."""
        return self._plan.key(category, parts)

    async def get(self, category: Category[T], parts: Parts) -> T | None:
        """The entry's value, or None if it is absent or no longer validates."""
        value: T | None = await self._runner.send(self._plan.get(category, parts))
        return value

    async def set(self, category: Category[T], parts: Parts, value: T) -> None:
        """Store ``value`` with the category's TTL, in one command."""
        await self._runner.send(self._plan.set(category, parts, value))

    async def delete(self, category: Category[Any], parts: Parts) -> bool:
        """Remove the entry; True if it existed."""
        existed: bool = await self._runner.send(self._plan.delete(category, parts))
        return existed

    async def touch(self, category: Category[Any], parts: Parts) -> bool:
        """Restart the entry's TTL at the category's full TTL; True if it existed."""
        existed: bool = await self._runner.send(self._plan.touch(category, parts))
        return existed

    async def get_or_set(
        self,
        category: Category[T],
        parts: Parts,
        factory: Callable[[], Awaitable[T]],
        *,
        wait: timedelta | None = None,
        lock_ttl: timedelta | None = None,
    ) -> T:
        # unasync: async
        """The entry's value; on a miss, ``await factory()``'s, computed once across workers.

        Same protocol as `Cache.get_or_set`. A task cancelled while it
        holds the lock leaves the lock to expire after ``lock_ttl``.
        """
        # unasync: sync
        # """The entry's value; on a miss, ``factory()``'s, computed once across workers.
        #
        # The worker that takes the entry's lock runs ``factory`` and stores its
        # value; the others poll for that value for up to ``wait``, then run
        # ``factory`` themselves. If ``factory`` raises, the lock is released
        # and the error reaches this caller only. ``wait`` and ``lock_ttl``
        # override the cache's defaults for this call.
        # """
        # unasync: end
        flow = self._plan.get_or_set(category, parts, wait=wait, lock_ttl=lock_ttl)
        value: T = await self._runner.drive(flow, _callable(factory))
        return value


def _callable(factory: F) -> F:
    # Checked before the flow takes the lock: a factory that cannot be called
    # would fail only after the lock was written.
    if not callable(factory):
        raise InvalidInput(f"factory must be callable, got {show(factory)}")
    return factory

"""A versioned, typed cache with single-flight fill: :class:`Cache` and :class:`AsyncCache`.

Keys are the seed application's, ``<version>:<category>:<part>[:<part>...]``
(``v1:enrichment:acme.com:<hash>``, ``v1:dataforseo:acme.com``), so entries
it wrote stay readable. Every write sets the value and its TTL in one
``SET ... PX``. A :class:`Category` names a kind of entry, its lifetime and,
optionally, the pydantic model its values are.

>>> import redis
>>> dataforseo = Category("dataforseo", ttl=timedelta(days=30))
>>> client = redis.Redis.from_url("redis://127.0.0.1:6380/0")
>>> cache = Cache(client)
>>> cache.set(dataforseo, "acme.com", b'{"rank": 3}')
>>> cache.get(dataforseo, "acme.com")
b'{"rank": 3}'
>>> client.close()

The two classes differ only in ``await``: each plans through
:mod:`atomlimit._cache_plan` and sends through :mod:`atomlimit._runner`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar, overload

import redis
import redis.asyncio
from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from atomlimit._cache_plan import CachePlan, Parts
from atomlimit._checks import check_model, check_part, show, whole_ms
from atomlimit._runner import AsyncRunner, SyncRunner
from atomlimit.errors import InvalidInput

__all__ = ["AsyncCache", "Cache", "Category"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
F = TypeVar("F")

DEFAULT_VERSION = "v1"
"""The seed's ``CACHE_VERSION``."""
DEFAULT_WAIT = timedelta(seconds=5)
DEFAULT_LOCK_TTL = timedelta(seconds=10)


@dataclass(frozen=True, slots=True, init=False)
class Category(Generic[T]):
    """A kind of cache entry: the name in its keys, its TTL, and its value type.

    With ``model`` (a pydantic model class), values are instances of it,
    stored as their JSON. Without, values are ``bytes`` or ``str``, stored
    as given; reads return ``bytes``, or ``str`` from a client created with
    ``decode_responses=True``.

    >>> Category("dataforseo", ttl=timedelta(days=30))
    Category(name='dataforseo', ttl=datetime.timedelta(days=30), model=None)
    """

    name: str
    """Second part of every key: ``<version>:<name>:...``."""
    ttl: timedelta
    """How long an entry lives after each write (or :meth:`Cache.touch`)."""
    model: type[BaseModel] | None
    """The pydantic model values are, or None for raw bytes / str."""
    _ttl_ms: int = field(repr=False, compare=False)

    @overload
    def __init__(
        self: Category[bytes | str], name: str, ttl: timedelta, model: None = None
    ) -> None: ...

    @overload
    def __init__(self: Category[M], name: str, ttl: timedelta, model: type[M]) -> None: ...

    def __init__(self, name: str, ttl: timedelta, model: type[BaseModel] | None = None) -> None:
        init = object.__setattr__  # frozen: the only writes are here
        init(self, "name", check_part(name, "Category.name"))
        init(self, "ttl", ttl)
        init(self, "model", check_model(model, "Category.model"))
        init(self, "_ttl_ms", whole_ms(ttl, "Category.ttl"))


class Cache:
    """A versioned, typed cache over a sync ``redis.Redis`` or ``redis.RedisCluster``.

    Args:
        client: the connection to use, shared with the rest of the app; the
            cache never closes it.
        version: first part of every key. Bump it (``"v2"``) when stored
            values change shape: old entries become unreachable and expire
            by their own TTL.
        wait: how long :meth:`get_or_set` waits for another worker's factory
            before running the factory itself.
        lock_ttl: how long a :meth:`get_or_set` lock lives if its holder
            never releases it (crash, cancellation, lost connection).
    """

    __slots__ = ("_plan", "_runner")

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        version: str = DEFAULT_VERSION,
        wait: timedelta = DEFAULT_WAIT,
        lock_ttl: timedelta = DEFAULT_LOCK_TTL,
    ) -> None:
        self._plan = CachePlan(version, wait, lock_ttl)
        self._runner = SyncRunner(client)

    def key(self, category: Category[Any], parts: Parts) -> str:
        """The Redis key of an entry, e.g. ``v1:enrichment:acme.com:<hash>``."""
        return self._plan.key(category, parts)

    def get(self, category: Category[T], parts: Parts) -> T | None:
        """The entry's value, or None if it is absent or no longer validates."""
        value: T | None = self._runner.send(self._plan.get(category, parts))
        return value

    def set(self, category: Category[T], parts: Parts, value: T) -> None:
        """Store ``value`` with the category's TTL, in one command."""
        self._runner.send(self._plan.set(category, parts, value))

    def delete(self, category: Category[Any], parts: Parts) -> bool:
        """Remove the entry; True if it existed."""
        existed: bool = self._runner.send(self._plan.delete(category, parts))
        return existed

    def touch(self, category: Category[Any], parts: Parts) -> bool:
        """Restart the entry's TTL at the category's full TTL; True if it existed."""
        existed: bool = self._runner.send(self._plan.touch(category, parts))
        return existed

    def get_or_set(
        self,
        category: Category[T],
        parts: Parts,
        factory: Callable[[], T],
        *,
        wait: timedelta | None = None,
        lock_ttl: timedelta | None = None,
    ) -> T:
        """The entry's value; on a miss, ``factory()``'s, computed once across workers.

        The worker that takes the entry's lock runs ``factory`` and stores its
        value; the others poll for that value for up to ``wait``, then run
        ``factory`` themselves. If ``factory`` raises, the lock is released
        and the error reaches this caller only. ``wait`` and ``lock_ttl``
        override the cache's defaults for this call.
        """
        flow = self._plan.get_or_set(category, parts, wait=wait, lock_ttl=lock_ttl)
        value: T = self._runner.drive(flow, _callable(factory))
        return value


class AsyncCache:
    """A versioned, typed cache over ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``.

    Takes the same arguments as :class:`Cache`. One instance serves any
    number of tasks on its event loop.
    """

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
        """The entry's value; on a miss, ``await factory()``'s, computed once across workers.

        Same protocol as :meth:`Cache.get_or_set`. A task cancelled while it
        holds the lock leaves the lock to expire after ``lock_ttl``.
        """
        flow = self._plan.get_or_set(category, parts, wait=wait, lock_ttl=lock_ttl)
        value: T = await self._runner.drive(flow, _callable(factory))
        return value


def _callable(factory: F) -> F:
    # Checked before the flow takes the lock: a factory that cannot be called
    # would fail only after the lock was written.
    if not callable(factory):
        raise InvalidInput(f"factory must be callable, got {show(factory)}")
    return factory

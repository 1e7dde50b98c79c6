# Generated from src/atomlimit/_async/cache.py by scripts/unasync.py; do not edit.
"""The cache's shell: what `atomlimit._cache_plan` plans, sent by a runner.

See [`atomlimit.cache`][atomlimit.cache] for the keys, the categories and an example.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from redis.cluster import RedisCluster

from atomlimit._cache_plan import CachePlan, Parts
from atomlimit._errors import InvalidInput
from atomlimit._inputs import show
from atomlimit._sync_runner import SyncRunner

if TYPE_CHECKING:
    from atomlimit._cache_plan import Category

T = TypeVar("T")
F = TypeVar("F")

DEFAULT_VERSION = "v1"
"""The seed's ``CACHE_VERSION``."""
DEFAULT_WAIT = timedelta(seconds=5)
DEFAULT_LOCK_TTL = timedelta(seconds=10)


class Cache:
    """A versioned, typed cache over a sync ``redis.Redis`` or ``redis.RedisCluster``.

    Args:
        client: the connection to use, shared with the rest of the app; the
            cache never closes it.
        version: first part of every key. Bump it (``"v2"``) when stored
            values change shape: old entries become unreachable and expire
            by their own TTL.
        wait: how long `get_or_set` waits for another worker's factory
            before running the factory itself.
        lock_ttl: how long a `get_or_set` lock lives if its holder
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


def _callable(factory: F) -> F:
    # Checked before the flow takes the lock: a factory that cannot be called
    # would fail only after the lock was written.
    if not callable(factory):
        raise InvalidInput(f"factory must be callable, got {show(factory)}")
    return factory

"""The cache's sans-I/O core: keys, stored values and the single-flight protocol.

Each cache operation is planned here as plain data: a `Command` (one
Redis command, sent as is) or a `Call` (one script).
Every reply is read here too. `CachePlan.get_or_set` is a generator that
yields the steps of the single-flight protocol one at a time and receives
their results, so [`Cache`][atomlimit.cache.Cache] and
[`AsyncCache`][atomlimit.cache.AsyncCache] drive one protocol and differ only in how
they send, sleep and call the factory.

Key, value and TTL rules here are shared with the session store.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel

from atomlimit import _keys
from atomlimit._errors import BackendError, InvalidInput
from atomlimit._inputs import check_model, check_part, check_value, days, show, whole_ms
from atomlimit._runner_steps import PRODUCE, Call, Command, Flow, Sleep
from atomlimit._scripts import script
from atomlimit._stored_values import encode, ok, reader

MAX_PARTS = 16
MAX_WAIT = timedelta(days=1)
"""Longest a get_or_set waits for another worker's factory."""
MAX_LOCK_TTL = timedelta(days=1)
"""Longest a get_or_set lock outlives a holder that never releases it.

A factory that runs longer than a day is not filling a cache; a lock that
long would leave every other worker producing the value itself after its
wait, which is the stampede the lock is there to prevent.
"""
FIRST_POLL = 0.01
LAST_POLL = 0.1
"""A waiter polls the entry after 10 ms, doubling up to every 100 ms."""


_log = logging.getLogger("atomlimit.cache")

Monotonic = Callable[[], float]
"""Seconds from a clock that never goes back, for a waiter's deadline."""
Parts = str | Sequence[str]
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


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
    """How long an entry lives after each write (or `touch`)."""
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


# --------------------------------------------------------------------------
# The cache plan
# --------------------------------------------------------------------------


class CachePlan:
    """Plans cache operations under one key version; holds no connection."""

    __slots__ = ("_lock_ms", "_version", "_wait")

    def __init__(self, version: str, wait: timedelta, lock_ttl: timedelta) -> None:
        self._version = check_part(version, "version")
        self._wait = _seconds(wait, "wait")
        self._lock_ms = _lock_ms(lock_ttl)

    def key(self, category: Category[Any], parts: Parts) -> str:
        """``<version>:<category>:<part>[:<part>...]``, the seed's cache key."""
        return _keys.cache_key(self._version, category.name, _identifier(parts))

    def get(self, category: Category[Any], parts: Parts) -> Command:
        """Plan reading an entry: its value, or None if absent or no longer valid."""
        return _read(category, self.key(category, parts))

    def set(self, category: Category[Any], parts: Parts, value: object) -> Command:
        """Plan writing an entry with the category's TTL, in the same command."""
        return _write(category, self.key(category, parts), value)

    def delete(self, category: Category[Any], parts: Parts) -> Command:
        """Plan removing an entry; reads True if it existed."""
        return Command(("DEL", self.key(category, parts)), ok)

    def touch(self, category: Category[Any], parts: Parts) -> Command:
        """Plan restarting an entry's TTL at the category's full TTL; True if it existed."""
        return Command(("PEXPIRE", self.key(category, parts), category._ttl_ms), ok)

    def get_or_set(
        self,
        category: Category[Any],
        parts: Parts,
        *,
        wait: timedelta | None = None,
        lock_ttl: timedelta | None = None,
        clock: Monotonic = time.monotonic,
    ) -> Flow:
        """Plan a single-flight read-through; see
        [`atomlimit.cache.Cache.get_or_set`][atomlimit.cache.Cache.get_or_set].

        Every argument is checked here, before the flow sends anything.
        """
        key = self.key(category, parts)
        wait_s = self._wait if wait is None else _seconds(wait, "wait")
        lock_ms = self._lock_ms if lock_ttl is None else _lock_ms(lock_ttl)
        return _single_flight(category, key, wait_s, lock_ms, clock)


def _single_flight(
    category: Category[Any], key: str, wait: float, lock_ms: int, clock: Monotonic
) -> Flow:
    read = _read(category, key)
    lock = _keys.lock_key(key)
    deadline = clock() + wait
    delay = FIRST_POLL
    while True:
        value = yield read
        if value is not None:
            return value
        # A fresh token per attempt: only the attempt that wrote it may delete it.
        token = secrets.token_hex(16)
        if (yield Command(("SET", lock, token, "NX", "PX", lock_ms), ok)):
            unlock = Call(script("cache_unlock"), (lock,), (token,), ok)
            return (yield from _hold(category, key, read, unlock))
        left = deadline - clock()
        if left <= 0:
            break
        yield Sleep(min(delay, left))
        delay = min(delay * 2, LAST_POLL)
    # The lock outlived our wait: its holder is slow, stuck, or gone without
    # releasing it. Produce the value here rather than block the caller longer.
    value = yield PRODUCE
    yield _write(category, key, value)
    return value


def _hold(category: Category[Any], key: str, read: Command, unlock: Call) -> Flow:
    try:
        # The previous holder may have written the entry and released the lock
        # between our read and our lock; read again so the factory runs once.
        value = yield read
        if value is None:
            value = yield PRODUCE
            # The value is written before the lock is released, so a worker
            # that takes the lock next always finds it.
            yield _write(category, key, value)
    except Exception:
        yield from _release(unlock)
        raise
    yield from _release(unlock)
    return value


def _release(unlock: Call) -> Flow:
    try:
        yield unlock
    except BackendError as err:
        # The caller's outcome does not depend on this: the lock expires by its
        # TTL, and waiters poll the entry, not the lock.
        _log.warning("could not release a single-flight lock; it expires by its TTL: %s", err)


def _read(category: Category[Any], key: str) -> Command:
    warned = False

    def complain(why: str) -> None:
        # A waiting get_or_set re-sends this one read every poll; one warning
        # per call is enough.
        nonlocal warned
        if not warned:
            warned = True
            _log.warning("cache entry %s %s; treated as a miss", key, why)

    return Command(("GET", key), reader(category.model, complain))


def _write(category: Category[Any], key: str, value: object) -> Command:
    what = f"category {category.name!r}"
    data = check_value(encode(category.model, value, what), what)
    return Command(("SET", key, data, "PX", category._ttl_ms), ok)


def _identifier(parts: Parts) -> str:
    if isinstance(parts, str):
        return check_part(parts, "identifier")
    if not isinstance(parts, tuple | list):
        raise InvalidInput(
            f"identifier must be a str or a tuple of str, got {type(parts).__name__}"
        )
    count = len(parts)
    if not 1 <= count <= MAX_PARTS:
        raise InvalidInput(f"identifier must have 1 to {MAX_PARTS} parts, got {count}")
    return ":".join(
        check_part(part, f"identifier part {n} of {count}") for n, part in enumerate(parts, 1)
    )


def _seconds(value: object, what: str) -> float:
    if not isinstance(value, timedelta) or not timedelta(0) <= value <= MAX_WAIT:
        raise InvalidInput(
            f"{what} must be a timedelta from 0 to {days(MAX_WAIT)}, got {show(value)}"
        )
    return value.total_seconds()


def _lock_ms(value: object) -> int:
    return whole_ms(value, "lock_ttl", MAX_LOCK_TTL)

"""Server-side sessions with sliding expiry: [`SessionStore`][atomlimit.sessions.SessionStore] and
[`AsyncSessionStore`][atomlimit.sessions.AsyncSessionStore].

Sessions live at the seed application's keys, ``session:<id>``. Ids come from
the ``secrets`` module (256 bits). Each operation is one atomic command:
reading a session extends its TTL in the same step (``GETEX``), and updating
never brings back a session that was deleted or has expired (``SET XX``).

An id that is malformed or unknown reads as None (``update`` and ``delete``
return False); a malformed one is refused before any key is built or any
command sent. Ids never appear in log messages or exception texts.

The two classes differ only in ``await``: each plans through
`atomlimit._session_plan` and sends through `atomlimit._runner`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Generic, TypeVar, overload

import redis
import redis.asyncio
from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from atomlimit._runner import AsyncRunner, SyncRunner
from atomlimit._session_plan import SessionPlan

__all__ = ["AsyncSessionStore", "SessionStore"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_TTL = timedelta(hours=1)


class SessionStore(Generic[T]):
    """Sessions over a sync ``redis.Redis`` or ``redis.RedisCluster``.

    Args:
        client: the connection to use, shared with the rest of the app; the
            store never closes it.
        ttl: how long a session lives after its last create, get or update.
        model: the pydantic model session data is, stored as its JSON; or
            None for raw ``bytes`` / ``str`` (read back as ``bytes``, or as
            ``str`` from a client with ``decode_responses=True``).

    A Redis failure on a well-formed id raises
    [`BackendError`][atomlimit.errors.BackendError]: an outage is not a logout.
    """

    __slots__ = ("_plan", "_runner")

    @overload
    def __init__(
        self: SessionStore[bytes | str],
        client: redis.Redis | RedisCluster,
        *,
        ttl: timedelta = DEFAULT_TTL,
        model: None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: SessionStore[M],
        client: redis.Redis | RedisCluster,
        *,
        ttl: timedelta = DEFAULT_TTL,
        model: type[M],
    ) -> None: ...

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        ttl: timedelta = DEFAULT_TTL,
        model: type[BaseModel] | None = None,
    ) -> None:
        self._plan = SessionPlan(ttl, model)
        self._runner = SyncRunner(client)

    def create(self, data: T) -> str:
        """Store ``data`` as a new session; return its new id."""
        session_id, command = self._plan.create(data)
        self._runner.send(command)
        return session_id

    def get(self, session_id: str) -> T | None:
        """The session's data, restarting its TTL; None if malformed, unknown or invalid."""
        command = self._plan.get(session_id)
        data: T | None = None if command is None else self._runner.send(command)
        return data

    def update(self, session_id: str, data: T) -> bool:
        """Replace a live session's data, restarting its TTL; False if there is none."""
        command = self._plan.update(session_id, data)
        updated: bool = command is not None and self._runner.send(command)
        return updated

    def delete(self, session_id: str) -> bool:
        """End the session; False if there was none."""
        command = self._plan.delete(session_id)
        deleted: bool = command is not None and self._runner.send(command)
        return deleted


class AsyncSessionStore(Generic[T]):
    """Sessions over ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``.

    Takes the same arguments as [`SessionStore`][atomlimit.sessions.SessionStore].
    """

    __slots__ = ("_plan", "_runner")

    @overload
    def __init__(
        self: AsyncSessionStore[bytes | str],
        client: redis.asyncio.Redis | AsyncRedisCluster,
        *,
        ttl: timedelta = DEFAULT_TTL,
        model: None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: AsyncSessionStore[M],
        client: redis.asyncio.Redis | AsyncRedisCluster,
        *,
        ttl: timedelta = DEFAULT_TTL,
        model: type[M],
    ) -> None: ...

    def __init__(
        self,
        client: redis.asyncio.Redis | AsyncRedisCluster,
        *,
        ttl: timedelta = DEFAULT_TTL,
        model: type[BaseModel] | None = None,
    ) -> None:
        self._plan = SessionPlan(ttl, model)
        self._runner = AsyncRunner(client)

    async def create(self, data: T) -> str:
        """Store ``data`` as a new session; return its new id."""
        session_id, command = self._plan.create(data)
        await self._runner.send(command)
        return session_id

    async def get(self, session_id: str) -> T | None:
        """The session's data, restarting its TTL; None if malformed, unknown or invalid."""
        command = self._plan.get(session_id)
        data: T | None = None if command is None else await self._runner.send(command)
        return data

    async def update(self, session_id: str, data: T) -> bool:
        """Replace a live session's data, restarting its TTL; False if there is none."""
        command = self._plan.update(session_id, data)
        updated: bool = command is not None and await self._runner.send(command)
        return updated

    async def delete(self, session_id: str) -> bool:
        """End the session; False if there was none."""
        command = self._plan.delete(session_id)
        deleted: bool = command is not None and await self._runner.send(command)
        return deleted

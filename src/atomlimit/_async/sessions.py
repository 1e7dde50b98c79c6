"""The session store's shell: what `atomlimit._session_plan` plans, sent by a runner.

See [`atomlimit.sessions`][atomlimit.sessions] for the keys and what each operation does.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Generic, TypeVar, overload

import redis.asyncio
from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from atomlimit._async_runner import AsyncRunner
from atomlimit._session_plan import SessionPlan

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_TTL = timedelta(hours=1)


class AsyncSessionStore(Generic[T]):
    # unasync: async
    """Sessions over ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``.

    Takes the same arguments as `SessionStore`.
    """

    # unasync: sync
    # """Sessions over a sync ``redis.Redis`` or ``redis.RedisCluster``.
    #
    # Args:
    #     client: the connection to use, shared with the rest of the app; the
    #         store never closes it.
    #     ttl: how long a session lives after its last create, get or update.
    #     model: the pydantic model session data is, stored as its JSON; or
    #         None for raw ``bytes`` / ``str`` (read back as ``bytes``, or as
    #         ``str`` from a client with ``decode_responses=True``).
    #
    # A Redis failure on a well-formed id raises
    # `BackendError`: an outage is not a logout.
    # """
    # unasync: end

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

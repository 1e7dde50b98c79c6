# Generated from src/atomlimit/_async/sessions.py by scripts/unasync.py; do not edit.
"""The session store's shell: what `atomlimit._session_plan` plans, sent by a runner.

See [`atomlimit.sessions`][atomlimit.sessions] for the keys and what each operation does.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Generic, TypeVar, overload

import redis
from pydantic import BaseModel
from redis.cluster import RedisCluster

from atomlimit._session_plan import SessionPlan
from atomlimit._sync_runner import SyncRunner

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
    `BackendError`: an outage is not a logout.
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

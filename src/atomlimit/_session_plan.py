"""The session store's sans-I/O core: ids, keys, and one command per operation.

Every operation is a single command on a single key, ``session:<id>``, so
each is atomic by itself and none needs a script:

- create: ``SET NX PX``, so a new id can never overwrite a live session;
- get: ``GETEX PX``, so reading and sliding the expiry are one step;
- update: ``SET XX PX``, so a deleted or expired session never comes back;
- delete: ``DEL``.

An id without the shape of one plans nothing (``None``): no key is built from
it and nothing is sent. Ids never enter a log line or an exception text.
Value and TTL rules are the cache's (`atomlimit._cache_plan`).
"""

from __future__ import annotations

import logging
import re
import secrets
from datetime import timedelta
from typing import TypeGuard

from pydantic import BaseModel

from atomlimit import _keys
from atomlimit._errors import BackendError
from atomlimit._inputs import check_model, check_value, whole_ms
from atomlimit._runner_steps import Command
from atomlimit._stored_values import encode, ok, reader

ID_BYTES = 32
"""Random bytes in a new id: 256 bits, 43 URL-safe characters."""
# Also accepts ids the seed app minted in other shapes (UUIDs, hex tokens),
# while refusing anything that could reach outside ``session:`` or be huge.
_ID = re.compile(r"[A-Za-z0-9_\-]{22,128}")

_log = logging.getLogger("atomlimit.sessions")


def new_id() -> str:
    """A fresh, unguessable session id from the ``secrets`` module."""
    return secrets.token_urlsafe(ID_BYTES)


def well_formed(session_id: object) -> TypeGuard[str]:
    """Could ``session_id`` be an id: 22-128 characters of ``A-Z a-z 0-9 _ -``?"""
    return isinstance(session_id, str) and _ID.fullmatch(session_id) is not None


class SessionPlan:
    """Plans session operations; holds no connection."""

    __slots__ = ("_model", "_read", "_ttl_ms")

    def __init__(self, ttl: timedelta, model: type[BaseModel] | None) -> None:
        self._ttl_ms = whole_ms(ttl, "ttl")
        self._model = check_model(model, "model")
        self._read = reader(self._model, _complain)

    def create(self, data: object) -> tuple[str, Command]:
        """A new id, and the command that stores ``data`` under it if it is free."""
        payload = check_value(encode(self._model, data, "create"), "create")
        session_id = new_id()
        args = ("SET", _keys.session_key(session_id), payload, "NX", "PX", self._ttl_ms)
        return session_id, Command(args, _created)

    def get(self, session_id: object) -> Command | None:
        """Read the session and restart its TTL; None for a malformed id."""
        if not well_formed(session_id):
            return None
        return Command(("GETEX", _keys.session_key(session_id), "PX", self._ttl_ms), self._read)

    def update(self, session_id: object, data: object) -> Command | None:
        """Replace a live session's data and restart its TTL; None for a malformed id."""
        payload = check_value(encode(self._model, data, "update"), "update")
        if not well_formed(session_id):
            return None
        return Command(
            ("SET", _keys.session_key(session_id), payload, "XX", "PX", self._ttl_ms), ok
        )

    def delete(self, session_id: object) -> Command | None:
        """Remove the session; None for a malformed id."""
        if not well_formed(session_id):
            return None
        return Command(("DEL", _keys.session_key(session_id)), ok)


def _complain(why: str) -> None:
    _log.warning("a stored session %s; treated as missing", why)


def _created(reply: object) -> None:
    if not reply:
        # 256 random bits do not collide; if they did, the RNG is broken and
        # a retry would not help. NX kept the other session intact.
        raise BackendError("a newly generated session id is already in use; nothing was written")

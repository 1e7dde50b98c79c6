"""Server-side sessions with sliding expiry: [`SessionStore`][atomlimit.sessions.SessionStore] and
[`AsyncSessionStore`][atomlimit.sessions.AsyncSessionStore].

Sessions live at the seed application's keys, ``session:<id>``. Ids come from
the ``secrets`` module (256 bits). Each operation is one atomic command:
reading a session extends its TTL in the same step (``GETEX``), and updating
never brings back a session that was deleted or has expired (``SET XX``).

An id that is malformed or unknown reads as None (``update`` and ``delete``
return False); a malformed one is refused before any key is built or any
command sent. Ids never appear in log messages or exception texts.

Both classes plan through `atomlimit._session_plan` and send through
the runners. `AsyncSessionStore` is written once in
`atomlimit._async.sessions`; `SessionStore` is generated from it.
"""

from __future__ import annotations

from atomlimit._async.sessions import DEFAULT_TTL as DEFAULT_TTL
from atomlimit._async.sessions import AsyncSessionStore
from atomlimit._sync.sessions import SessionStore

__all__ = ["AsyncSessionStore", "SessionStore"]

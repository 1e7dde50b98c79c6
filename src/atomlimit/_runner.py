"""Sending planned calls: the only code that touches a connection.

One runner per I/O style. Both do the same three things: send EVALSHA; on
NOSCRIPT load the script and send again; feed the reply to the call's
``read`` and send again if it returned a re-planned call. Everything else is
decided in the sans-I/O planning code.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from atomlimit._ops import Call
from atomlimit.errors import BackendError

_REPLANS = 3
"""A reply outside the planned windows re-plans around the server's clock;
one re-plan always suffices unless the clock jumps again in between."""


class SyncRunner:
    """Runs calls on a ``redis.Redis`` or ``redis.RedisCluster``."""

    __slots__ = ("client",)

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self.client = client

    def run(self, call: Call) -> Any:
        """Send ``call`` (and any re-plan it asks for); return its result."""
        for _ in range(_REPLANS):
            result = call.read(self.send(call))
            if not isinstance(result, Call):
                return result
            call = result
        raise BackendError("the server clock kept leaving the planned windows")

    def send(self, call: Call) -> Any:
        """One script execution; returns the raw reply."""
        sha, keys = call.script.sha, call.keys
        try:
            try:
                return self.client.evalsha(sha, len(keys), *keys, *call.args)
            except NoScriptError:
                # The script cache is empty after SCRIPT FLUSH, a restart or a
                # failover. NOSCRIPT means nothing ran, so sending again is safe.
                self.client.script_load(call.script.source)
                return self.client.evalsha(sha, len(keys), *keys, *call.args)
        except RedisError as err:
            raise BackendError(f"{call.script.name}: {type(err).__name__}: {err}") from err


class AsyncRunner:
    """Runs calls on a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``."""

    __slots__ = ("client",)

    def __init__(self, client: redis.asyncio.Redis | AsyncRedisCluster) -> None:
        self.client = client

    async def run(self, call: Call) -> Any:
        """Send ``call`` (and any re-plan it asks for); return its result."""
        for _ in range(_REPLANS):
            result = call.read(await self.send(call))
            if not isinstance(result, Call):
                return result
            call = result
        raise BackendError("the server clock kept leaving the planned windows")

    async def send(self, call: Call) -> Any:
        """One script execution; returns the raw reply."""
        sha, keys = call.script.sha, call.keys
        try:
            try:
                return await self.client.evalsha(sha, len(keys), *keys, *call.args)
            except NoScriptError:
                # The script cache is empty after SCRIPT FLUSH, a restart or a
                # failover. NOSCRIPT means nothing ran, so sending again is safe.
                await self.client.script_load(call.script.source)
                return await self.client.evalsha(sha, len(keys), *keys, *call.args)
        except RedisError as err:
            raise BackendError(f"{call.script.name}: {type(err).__name__}: {err}") from err

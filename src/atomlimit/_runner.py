"""Performing planned steps: the only code that touches a connection.

One runner per I/O style, and the two read alike line for line. A runner
sends a script :class:`~atomlimit._steps.Call` (EVALSHA; on NOSCRIPT, load
and send again; send again if the reply asks for a re-plan), sends a plain
:class:`~atomlimit._steps.Command`, and drives a multi-step flow by
performing each step it yields. Every rule lives in the planning code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from atomlimit._steps import Call, Command, Flow, Produce, Sleep, Step
from atomlimit.errors import BackendError

_REPLANS = 3
"""A reply outside the planned windows re-plans around the server's clock;
one re-plan always suffices unless the clock jumps again in between."""


def _failed(name: str, err: RedisError) -> BackendError:
    # Only the operation's name: a command's arguments hold keys, and a
    # session's key holds its id, which must never reach an exception text.
    return BackendError(f"{name}: {type(err).__name__}: {err}")


def _no_factory() -> Any:
    raise RuntimeError("this flow has no factory to call")


async def _no_async_factory() -> Any:
    raise RuntimeError("this flow has no factory to call")


class SyncRunner:
    """Performs steps over a ``redis.Redis`` or ``redis.RedisCluster``."""

    __slots__ = ("client",)

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self.client = client

    def run(self, call: Call) -> Any:
        """Send ``call`` (and any re-plan it asks for); return its result."""
        for _ in range(_REPLANS):
            result = call.read(self._evalsha(call))
            if not isinstance(result, Call):
                return result
            call = result
        raise BackendError("the server clock kept leaving the planned windows")

    def send(self, step: Command | Call) -> Any:
        """Send one command or script; return what its ``read`` makes of the reply."""
        if isinstance(step, Call):
            return self.run(step)
        try:
            # redis-py leaves the sync execute_command unannotated.
            reply = self.client.execute_command(*step.args)  # type: ignore[no-untyped-call]
        except RedisError as err:
            raise _failed(str(step.args[0]), err) from err
        return step.read(reply)

    def drive(self, flow: Flow, factory: Callable[[], Any] = _no_factory) -> Any:
        """Perform each step ``flow`` yields; return what it returns.

        A step that raises is thrown back into the flow, so the flow can
        undo or release what it holds before the error reaches the caller.
        """
        reply: Any = None
        failure: Exception | None = None
        try:
            while True:
                step = flow.send(reply) if failure is None else flow.throw(failure)
                failure = None
                try:
                    reply = self._perform(step, factory)
                except Exception as err:
                    failure = err
        except StopIteration as done:
            return done.value
        finally:
            flow.close()

    def _perform(self, step: Step, factory: Callable[[], Any]) -> Any:
        if isinstance(step, Produce):
            return factory()
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        return self.send(step)

    def _evalsha(self, call: Call) -> Any:
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
            raise _failed(call.script.name, err) from err


class AsyncRunner:
    """Performs steps over ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``.

    It never has more commands in flight than the client has connections.
    redis-py's default asyncio pool, and a cluster client's pool per node,
    raise ``MaxConnectionsError`` instead of waiting when every connection
    is busy, so a burst of tasks queues here, on a semaphore, instead.
    """

    __slots__ = ("_cold", "_gate", "client")

    def __init__(self, client: redis.asyncio.Redis | AsyncRedisCluster) -> None:
        self.client = client
        self._gate = asyncio.Semaphore(_connections_of(client))
        # redis-py's asyncio cluster client learns the cluster's layout on
        # its first command. Tasks that start commands while it does so can
        # be routed through node objects that the layout then replaces, and
        # fail with AttributeError on a connection torn down under them. So
        # every task waits here for the layout first.
        self._cold = isinstance(client, AsyncRedisCluster)

    async def _warm(self) -> None:
        if self._cold:
            assert isinstance(self.client, AsyncRedisCluster)
            await self.client.initialize()
            self._cold = False

    async def run(self, call: Call) -> Any:
        """Send ``call`` (and any re-plan it asks for); return its result."""
        for _ in range(_REPLANS):
            result = call.read(await self._evalsha(call))
            if not isinstance(result, Call):
                return result
            call = result
        raise BackendError("the server clock kept leaving the planned windows")

    async def send(self, step: Command | Call) -> Any:
        """Send one command or script; return what its ``read`` makes of the reply."""
        if isinstance(step, Call):
            return await self.run(step)
        try:
            await self._warm()
            async with self._gate:
                reply = await self.client.execute_command(*step.args)
        except RedisError as err:
            raise _failed(str(step.args[0]), err) from err
        return step.read(reply)

    async def drive(
        self, flow: Flow, factory: Callable[[], Awaitable[Any]] = _no_async_factory
    ) -> Any:
        """Perform each step ``flow`` yields; return what it returns.

        A step that raises is thrown back into the flow, so the flow can
        undo or release what it holds before the error reaches the caller.
        A cancelled task is not: what it holds expires by its TTL.
        """
        reply: Any = None
        failure: Exception | None = None
        try:
            while True:
                step = flow.send(reply) if failure is None else flow.throw(failure)
                failure = None
                try:
                    reply = await self._perform(step, factory)
                except Exception as err:
                    failure = err
        except StopIteration as done:
            return done.value
        finally:
            flow.close()

    async def _perform(self, step: Step, factory: Callable[[], Awaitable[Any]]) -> Any:
        if isinstance(step, Produce):
            return await factory()
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        return await self.send(step)

    async def _evalsha(self, call: Call) -> Any:
        try:
            await self._warm()
            async with self._gate:
                try:
                    return await self._evalsha_once(call)
                except (AttributeError, TypeError):
                    # redis-py's asyncio connection fails a write on a
                    # transport closed under it with these instead of a
                    # ConnectionError (redis-py issues 3546 and 4287). The
                    # write never happened, and a script is safe to send
                    # again (charges carry request ids), so one more try on
                    # a fresh connection is all it needs.
                    return await self._evalsha_once(call)
        except RedisError as err:
            raise _failed(call.script.name, err) from err
        except (AttributeError, TypeError) as err:
            raise BackendError(f"{call.script.name}: the connection failed: {err}") from err

    async def _evalsha_once(self, call: Call) -> Any:
        sha, keys = call.script.sha, call.keys
        try:
            return await self.client.evalsha(sha, len(keys), *keys, *call.args)
        except NoScriptError:
            # The script cache is empty after SCRIPT FLUSH, a restart or a
            # failover. NOSCRIPT means nothing ran, so sending again is safe.
            await self.client.script_load(call.script.source)
            return await self.client.evalsha(sha, len(keys), *keys, *call.args)


def _connections_of(client: redis.asyncio.Redis | AsyncRedisCluster) -> int:
    """How many commands to let the client have in flight at once.

    A cluster client caps each node's pool at ``max_connections``; keeping
    the total in flight under that cap keeps every node under it too.
    """
    if isinstance(client, AsyncRedisCluster):
        limit = client.get_connection_kwargs().get("max_connections")
    elif isinstance(client.connection_pool, redis.asyncio.BlockingConnectionPool):
        # It already waits for a free connection; a second queue in front
        # of it would only add wake-ups.
        limit = None
    else:
        limit = getattr(client.connection_pool, "max_connections", None)
    return limit if isinstance(limit, int) and limit > 0 else 2**31 - 1

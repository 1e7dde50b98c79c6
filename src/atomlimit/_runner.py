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
    """Performs steps over ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``."""

    __slots__ = ("client",)

    def __init__(self, client: redis.asyncio.Redis | AsyncRedisCluster) -> None:
        self.client = client

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
            raise _failed(call.script.name, err) from err

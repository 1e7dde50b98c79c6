"""Sending planned steps, for the cache and the session store.

The limiter's runners send scripts (:class:`~atomlimit._ops.Call`); these
drivers also send plain commands (:class:`~atomlimit._cache_plan.Command`),
and run a multi-step flow such as single-flight ``get_or_set`` by performing
each step it yields: send, sleep, or call the caller's factory. One driver
per I/O style; the rules of every step live in the planning modules.
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
from redis.exceptions import RedisError

from atomlimit._cache_plan import Command, Flow, Produce, Sleep, Step
from atomlimit._ops import Call
from atomlimit._runner import AsyncRunner, SyncRunner
from atomlimit.errors import BackendError


def _failed(command: Command, err: RedisError) -> BackendError:
    # Only the command's name: its arguments hold keys, and a session's key
    # holds its id, which must never reach an exception text.
    name = str(command.args[0])
    return BackendError(f"{name}: {type(err).__name__}: {err}")


class SyncDriver:
    """Sends steps over a ``redis.Redis`` or ``redis.RedisCluster``."""

    __slots__ = ("_client", "_scripts")

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self._client = client
        self._scripts = SyncRunner(client)

    def send(self, step: Command | Call) -> Any:
        """Send one command or script; return what its ``read`` makes of the reply."""
        if isinstance(step, Call):
            return self._scripts.run(step)
        try:
            # redis-py leaves the sync execute_command unannotated.
            reply = self._client.execute_command(*step.args)  # type: ignore[no-untyped-call]
        except RedisError as err:
            raise _failed(step, err) from err
        return step.read(reply)

    def run(self, flow: Flow, factory: Callable[[], Any]) -> Any:
        """Perform each step ``flow`` yields; return what it returns.

        A step that raises is thrown back into the flow, so the flow can
        release what it holds before the error reaches the caller.
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


class AsyncDriver:
    """Sends steps over a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``."""

    __slots__ = ("_client", "_scripts")

    def __init__(self, client: redis.asyncio.Redis | AsyncRedisCluster) -> None:
        self._client = client
        self._scripts = AsyncRunner(client)

    async def send(self, step: Command | Call) -> Any:
        """Send one command or script; return what its ``read`` makes of the reply."""
        if isinstance(step, Call):
            return await self._scripts.run(step)
        try:
            reply = await self._client.execute_command(*step.args)
        except RedisError as err:
            raise _failed(step, err) from err
        return step.read(reply)

    async def run(self, flow: Flow, factory: Callable[[], Awaitable[Any]]) -> Any:
        """Perform each step ``flow`` yields; return what it returns.

        A step that raises is thrown back into the flow, so the flow can
        release what it holds before the error reaches the caller. A
        cancelled task does not: its lock expires by its TTL.
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

"""The asyncio runner: performs planned steps over ``redis.asyncio`` clients.

Calls started by concurrent tasks go out together: each server has a
`atomlimit._batch.Lane` that writes every call waiting for it in one go and
hands each reply back to its caller, keeping every script atomic while
sharing the round trips. With ``batch=False`` every call takes a connection
of its own, as redis-py would send it. What to do with each reply is decided
by the rules in `atomlimit._retry`, shared with the sync runner; everything
asked of redis-py goes through `atomlimit._redis`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from atomlimit import _redis, _wire
from atomlimit._batch import Lane, Lost
from atomlimit._clock import clock_reader
from atomlimit._errors import BackendError, InvalidInput
from atomlimit._redis import AsyncClient, AsyncRedisCluster, RedisClusterException
from atomlimit._retry import (
    FAILED,
    INFO,
    PAUSE,
    REPLANS,
    Attempt,
    Moves,
    Next,
    failure,
    learn,
    resend_pause,
    vet,
)
from atomlimit._runner_steps import Call, Command, Flow, Plan, Produce, Sleep, Step
from atomlimit._scripts import Script
from atomlimit._steadfast import STEADFAST as _STEADFAST


async def _no_factory() -> Any:
    raise RuntimeError("this flow has no factory to call")


class AsyncRunner:
    """Performs steps over ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``."""

    __slots__ = (
        "_batch",
        "_cluster",
        "_lanes",
        "_loads",
        "_loop",
        "_moves",
        "_refreshing",
        "_resends",
        "_single_lane",
        "_strict",
        "_warm",
        "client",
        "closed",
        "keep_connections",
        "now",
    )

    def __init__(
        self,
        client: AsyncClient,
        now: Callable[[], int] | None = None,
        *,
        batch: bool = True,
        strict: bool = False,
    ) -> None:
        self.client = client
        self._strict = strict
        self.now = now or clock_reader(None)
        self._cluster = _redis.is_cluster(client)
        self._resends = _redis.retries(client)
        self._batch = batch
        self._lanes: dict[str, Lane] = {}
        self._loads: dict[tuple[int, str], asyncio.Future[Any]] = {}
        self._single_lane: Lane | None = None
        """The lane of a standalone server, once a call has made it."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warm: asyncio.Future[None] | None = None
        self._refreshing: asyncio.Future[None] | None = None
        """The refresh of the cluster's layout under way, if one is."""
        self._moves = Moves()
        self.closed = False
        self.keep_connections = False
        """Whether idle lanes keep their connections: set where the pool is
        the limiter's own."""

    async def run(self, call: Call) -> Any:
        """Send ``call`` (and any re-plan it asks for); return its result."""
        for _ in range(REPLANS):
            result = call.read(await self._send(call))
            if not isinstance(result, Call):
                return result
            call = result
        raise BackendError("the server clock kept leaving the planned windows")

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Send ``calls`` together; return their results, in order."""
        if len(calls) == 1:
            # A model call's usual end, one settle: what sending it alone does.
            return [await self.run(calls[0])]
        outcomes = await self._send_many(calls)
        results = []
        for call, outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, BackendError):
                raise outcome
            result = call.read(outcome)
            results.append(await self.run(result) if isinstance(result, Call) else result)
        return results

    async def send(self, step: Command | Call) -> Any:
        """Send one command or script; return what its ``read`` makes of the reply."""
        if isinstance(step, Call):
            return await self.run(step)
        client = self.client
        try:
            if isinstance(client, AsyncRedisCluster):
                # Plain commands go through redis-py's own routing, which
                # races on a cluster client's first layout as the lanes would.
                await self._warmed(client)
            reply = await _redis.async_execute(client, step.args)
        except _redis.FAILURES as err:
            raise failure(str(step.args[0]), err) from err
        return step.read(reply)

    async def drive(self, flow: Flow, factory: Callable[[], Awaitable[Any]] = _no_factory) -> Any:
        """Perform each step ``flow`` yields; return what it returns.

        A step that raises is thrown back into the flow, so the flow can
        undo or release what it holds before the error reaches the caller.
        A cancelled task is not: what it holds expires by its TTL.
        """
        reply: Any = None
        failed: Exception | None = None
        try:
            while True:
                step = flow.send(reply) if failed is None else flow.throw(failed)
                failed = None
                try:
                    reply = await self._perform(step, factory)
                except Exception as err:
                    failed = err
        except StopIteration as done:
            return done.value
        finally:
            flow.close()

    async def _perform(self, step: Step, factory: Callable[[], Awaitable[Any]]) -> Any:
        if isinstance(step, Plan):
            return await self.run(step.make(self.now()))
        if isinstance(step, Call):
            return await self.run(step)
        kept = _STEADFAST.get()
        if kept is not None:
            return await kept.outlast(self._perform_other(step, factory))
        return await self._perform_other(step, factory)

    async def _perform_other(
        self, step: Command | Sleep | Produce, factory: Callable[[], Awaitable[Any]]
    ) -> Any:
        """A step that is not a script: a plain command, a sleep, the factory."""
        if isinstance(step, Produce):
            return await factory()
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        return await self.send(step)

    async def _send(self, call: Call, raising: bool = True) -> Any:
        """The reply to ``call``, after whatever the server asked for first."""
        lane = self._single_lane
        kept = _STEADFAST.get()
        if lane is not None and call.wait is None and asyncio.get_running_loop() is self._loop:
            # One server and the loop already checked: the common case, with
            # none of the bookkeeping that redirects and retries need.
            wire = call.encoded or _wire.evalsha(call.script.sha_bytes, call.keys, call.args)
            if kept is None:
                outcome = await lane.submit(wire, 1)
            else:
                sent = lane.submit(wire, 1, kept=True)
                try:
                    outcome = await sent
                except asyncio.CancelledError:
                    # The lane's future refused the cancellation (see
                    # Steadfast): the reply is in, and is acted on.
                    kept.cancelled = True
                    outcome = sent.result()
            if not isinstance(outcome, FAILED):
                return outcome
        else:
            lane, outcome = None, None
        if kept is not None:
            return await kept.outlast(self._recover(call, lane, outcome, raising))
        return await self._recover(call, lane, outcome, raising)

    async def _send_many(self, calls: Sequence[Call]) -> list[Any]:
        """The replies to ``calls``, sent together: errors as BackendError values."""
        lane = self._single_lane
        kept = _STEADFAST.get()
        if (
            lane is None
            or asyncio.get_running_loop() is not self._loop
            or any(call.wait is not None for call in calls)
        ):
            sent = asyncio.gather(*(self._send(call, raising=False) for call in calls))
            return await (sent if kept is None else kept.outlast(sent))
        # One server: the calls queued on its lane as one entry, so they leave
        # in one write, with no task per call and no second pump woken for
        # them; only a failed one goes through the bookkeeping of redirects
        # and retries.
        wire = b"".join(
            c.encoded or _wire.evalsha(c.script.sha_bytes, c.keys, c.args) for c in calls
        )
        if kept is None:
            replies = await lane.submit(wire, len(calls))
        else:
            sent = lane.submit(wire, len(calls), kept=True)
            try:
                replies = await sent
            except asyncio.CancelledError:
                kept.cancelled = True
                replies = sent.result()
        if len(calls) == 1 or isinstance(replies, Lost):
            replies = [replies] * len(calls)
        outcomes = []
        for call, outcome in zip(calls, replies, strict=True):
            if isinstance(outcome, FAILED):
                recovered = self._recover(call, lane, outcome, False)
                outcome = await (recovered if kept is None else kept.outlast(recovered))
            outcomes.append(outcome)
        return outcomes

    async def _recover(self, call: Call, lane: Lane | None, outcome: Any, raising: bool) -> Any:
        """Send ``call`` until its reply is final; ``outcome`` is a first send's
        on ``lane``, if any."""
        attempt = Attempt(call, self._resends, self._cluster)
        loop = asyncio.get_running_loop()
        while True:
            if outcome is None:
                lane = await self._lane(call.keys[0], attempt.asking)
                outcome = await lane.submit(attempt.wire(), attempt.replies)
            step = attempt.after(outcome, loop.time())
            if step is None:
                result = attempt.result()
                if raising and isinstance(result, BackendError):
                    raise result
                return result
            if step is Next.LOAD:
                if attempt.misses == 1:
                    await self._load(lane, call.script)
                else:
                    attempt.load_first()
            elif step is Next.MOVED:
                assert isinstance(self.client, AsyncRedisCluster)
                if not self._moves.follow(self.client, attempt.outcome):
                    await self._refresh()
            elif step is Next.REROUTE:
                if attempt.reroutes > 1:
                    await asyncio.sleep(PAUSE)
                with contextlib.suppress(*_redis.FAILURES, RedisClusterException):
                    # No node could tell the layout: the call is sent as the
                    # old one routes it, and fails again, within REDIRECTS.
                    await self._refresh()
            elif step is Next.WAIT:
                await asyncio.sleep(PAUSE)
            elif step is Next.LOST:
                await asyncio.sleep(resend_pause(attempt.tries))
            outcome = None

    async def _lane(self, key: str, asking: tuple[str, int] | None) -> Lane:
        try:
            return await self._find_lane(key, asking)
        except (*_redis.FAILURES, RedisClusterException) as err:
            # The cluster's layout could not be learned: nothing was sent.
            raise failure("route", err) from err

    async def _find_lane(self, key: str, asking: tuple[str, int] | None) -> Lane:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._bind(loop)
        client = self.client
        if not self._cluster:
            lane = self._single_lane
            if lane is None:
                pool = _redis.pool_of(client)
                lane = self._lanes.get("")
                if lane is None:
                    lane = self._lanes[""] = Lane(
                        _redis.pool_taker(pool),
                        _redis.pool_giver(pool),
                        self._batch,
                        self.keep_connections,
                    )
                    lane.recheck = self._recheck
                if await self._vet(lane, _redis.address(pool)):
                    self._single_lane = lane
            return lane
        assert isinstance(client, AsyncRedisCluster)
        await self._warmed(client)
        node = _redis.node_for(client, key, self._moves.target(key, asking))
        if node is None:
            await self._refresh()
            node = _redis.node_for(client, key, self._moves.target(key, asking))
        if node is None:
            host, port = asking or ("?", 0)
            raise failure("route", _NoNode(f"no node at {host}:{port}"))
        lane = self._lanes.get(node.name)
        if lane is None:
            lane = self._lanes[node.name] = Lane(
                _redis.node_taker(node),
                _redis.node_giver(node),
                self._batch,
                self.keep_connections,
            )
        await self._vet(lane, node.name)
        return lane

    async def _vet(self, lane: Lane, address: str) -> bool:
        """Check the lane's server once; True once it is known fit, raise if unfit."""
        if lane.fitness is None:
            learn(lane, address, await lane.submit(INFO, 1))
            if lane.fitness is None:
                return False
        vet(lane.fitness, self._strict)
        return True

    async def close(self) -> None:
        """Stop taking calls; idle pumps give their connections back to the pool.

        Only on the loop the lanes serve: another loop cannot await them,
        and an idle pump gives its connection back by itself after LINGER.
        """
        self.closed = True
        self._single_lane = None
        if self._loop is asyncio.get_running_loop():
            for lane in list(self._lanes.values()):
                await lane.close()

    def _recheck(self) -> None:
        # The lane's server must be checked again: no call takes the fast
        # path, which skips the check, until one has.
        self._single_lane = None

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:
            raise InvalidInput(
                "this AsyncLimiter is bound to the event loop it first ran on; its "
                "connections cannot serve another loop. Make one limiter per event loop "
                "(for example inside the coroutine that asyncio.run() runs)"
            )
        self._loop = loop

    async def _warmed(self, client: AsyncRedisCluster) -> None:
        # redis-py's asyncio cluster client learns the cluster's layout on
        # its first command. Tasks that start commands while it does so can
        # be routed through node objects that the layout then replaces, and
        # fail on a connection torn down under them. So every task waits
        # here for the layout first.
        if self._warm is None:
            self._warm = asyncio.ensure_future(_redis.async_initialize(client))
        await asyncio.shield(self._warm)

    async def _load(self, lane: Lane | None, lua: Script) -> None:
        """Load ``lua`` on the lane's server once for every call that found it
        missing while the load was on its way."""
        assert lane is not None
        key = (id(lane), lua.sha)
        pending = self._loads.get(key)
        if pending is None:
            wire = _wire.command("SCRIPT", "LOAD", lua.source)
            pending = self._loads[key] = asyncio.ensure_future(lane.submit(wire, 1))
            pending.add_done_callback(lambda _: self._loads.pop(key, None))
        outcome = await asyncio.shield(pending)
        if isinstance(outcome, FAILED):
            raise failure(lua.name, outcome)

    async def _refresh(self) -> None:
        """Learn the cluster's layout again: a MOVED or a route named a node
        it did not know (`Moves`), or a node refused a call (a failover). A
        call that needs a refresh while one is under way waits for that one:
        redis-py 6 makes every node object anew on each refresh and
        disconnects the old ones, connections in use included, so a burst of
        refreshes broke calls in flight on the lanes."""
        running = self._refreshing
        if running is None or running.done():
            client = self.client
            assert isinstance(client, AsyncRedisCluster)
            running = self._refreshing = asyncio.ensure_future(_redis.async_refresh(client))
            running.add_done_callback(lambda _: self._moves.forget())
        await asyncio.shield(running)


class _NoNode(_redis.RedisError):
    """An ASK named a node the cluster's layout does not know."""

"""Performing planned steps: the only code that touches a connection or a clock.

One runner per I/O style; they read alike, and every rule about what to do
with a reply lives in `classify` and the planning code.

Scripts do not go through redis-py's command layer: each call is encoded
once (`atomlimit._wire`), written on a connection taken from the
client's pool (on a cluster, the pool of the node that serves the call's
slot), and its reply read back. That keeps to one round trip, lets the
asyncio runner write many calls in one go (`atomlimit._batch`), and
puts the question "may this be sent again?" in atomlimit's hands: redis-py
re-sends a command whose reply was lost, which for a charge with no record
would charge twice. Here a call is sent again after such a loss only when a
record on the server makes the second send a replay (``Call.replayable``);
otherwise the caller gets a [`BackendError`][atomlimit.errors.BackendError] that says the
outcome is unknown.

Replies that mean "nothing ran" are handled here, transparently: NOSCRIPT
(load the script, send again), and on a cluster MOVED (refresh the slot
map), ASK (send to the importing node after ASKING) and TRYAGAIN or
CLUSTERDOWN (wait a little, send again).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from typing import Any, NamedTuple

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from atomlimit import _server, _wire
from atomlimit._batch import Lane, Lost, Replies, unasked
from atomlimit._checks import show
from atomlimit._scripts import Script
from atomlimit._steps import Acked, Call, Command, Flow, Plan, Produce, Sleep, Step
from atomlimit.errors import Applied, BackendError, InvalidInput, UnsafeServer

_REPLANS = 3
"""A reply outside the planned windows re-plans around the server's clock;
one re-plan always suffices unless the clock jumps again in between."""
_REDIRECTS = 5
"""MOVED and ASK replies followed for one call before giving up."""
_SETTLE_FOR = 10.0
"""Seconds a call keeps waiting out TRYAGAIN and CLUSTERDOWN (a slot
migrating, a failover) before it fails."""
_PAUSE = 0.05
_ASKING = _wire.command("ASKING")
_INFO = _wire.command("INFO", "memory", "replication")
_log = logging.getLogger("atomlimit")
_MAX_CLOCK = 2**53 / 1_000_000
"""Epoch seconds past which instants no longer fit Lua's exact integers."""


_FAILED = (BaseException, Lost)
_UNSORTED = (BaseException, Lost, Replies)
"""Outcomes that are not one plain reply: `Attempt` sorts them out."""


class Next(Enum):
    """What a call's reply asks the runner to do next."""

    DONE = "done"
    LOAD = "load"
    MOVED = "moved"
    ASK = "ask"
    WAIT = "wait"
    LOST = "lost"
    FAILED = "failed"


def classify(outcome: Any) -> Next:
    """The next step after ``outcome``: a reply, an error reply, or a `Lost`."""
    if not isinstance(outcome, _FAILED):
        return Next.DONE
    if isinstance(outcome, Lost):
        return Next.LOST
    if isinstance(outcome, NoScriptError):
        return Next.LOAD
    if isinstance(outcome, AskError):
        return Next.ASK
    if isinstance(outcome, MovedError):
        return Next.MOVED
    if isinstance(outcome, TryAgainError | ClusterDownError):
        return Next.WAIT
    return Next.FAILED


def failure(
    name: str, outcome: Any, request_id: str | None = None, written: bool = False
) -> BackendError:
    """The BackendError for a call that failed with ``outcome``, cause chained.

    ``written`` says an earlier send of the call may have reached the server.
    Only the operation's name goes in the message: a command's arguments
    hold keys, and a session's key holds its id, which must never reach an
    exception text.
    """
    cause = outcome.error if isinstance(outcome, Lost) else outcome
    applied: Applied = "unknown" if written or getattr(outcome, "written", False) else "no"
    err = BackendError(
        f"{name}: {type(cause).__name__}: {cause}", applied=applied, request_id=request_id
    )
    err.__cause__ = cause
    return err


class Attempt:
    """One call on its way through the replies that ask for it to be sent again.

    The rules live here once; each runner performs the fix that
    `after` names (load the script, refresh the slot map, pause) and
    sends the call again.
    """

    __slots__ = (
        "asking",
        "call",
        "deadline",
        "outcome",
        "redirects",
        "replies",
        "tries",
        "written",
    )

    def __init__(self, call: Call) -> None:
        self.call = call
        self.asking: tuple[str, int] | None = None
        """Send to this node after ASKING: the slot is moving there."""
        self.replies = 1 if call.wait is None else 2
        """How many replies the wire brings back."""
        self.tries = 0
        self.redirects = 0
        self.deadline: float | None = None
        self.written = False
        """Some send of this call may have reached the server."""
        self.outcome: Any = None
        """The call's outcome from the last send, as `after` sorted it."""

    def wire(self) -> bytes:
        """The call's request: after ASKING when redirected, before WAIT when it waits."""
        call = self.call
        wire = _wire.evalsha(call.script.sha_bytes, call.keys, call.args)
        if call.wait is not None:
            wire += call.wait.wire
        return _ASKING + wire if self.asking else wire

    def sort(self, outcome: Any) -> Any:
        """The script's own outcome among the replies its wire brought back.

        ASKING's reply is dropped; WAIT's goes with the script's in an
        `Acked`, unless the script failed.
        """
        if type(outcome) is not Replies:
            return outcome
        replies = outcome[1:] if self.asking else outcome
        if self.call.wait is None or isinstance(replies[0], BaseException):
            return replies[0]
        return Acked(replies[0], replies[1])

    def after(self, outcome: Any, now: float, resend: _Resend) -> Next | None:
        """The fix to make before sending again, or None when ``outcome`` is final."""
        outcome = self.outcome = self.sort(outcome)
        step = classify(outcome)
        if step is not Next.LOAD and self.asking is not None:
            # A script loaded on the node that asked for it is sent there
            # again; anything else starts from the slot's owner.
            self.asking = None
            self.replies -= 1
        if isinstance(outcome, Lost):
            self.written = self.written or outcome.written
        if step in (Next.LOAD, Next.ASK, Next.MOVED):
            self.redirects += 1
            if self.redirects > _REDIRECTS:
                return None
            if step is Next.ASK:
                self.asking = (outcome.host, outcome.port)
                self.replies += 1
            return step
        if step is Next.WAIT:
            self.deadline = self.deadline or now + _SETTLE_FOR
            return step if now < self.deadline else None
        if step is Next.LOST and self.call.replayable and self.tries < resend.times:
            self.tries += 1
            return step
        return None

    def result(self) -> Any:
        """The final outcome `after` sorted: the reply, or the BackendError
        the call ended in."""
        outcome = self.outcome
        if classify(outcome) is Next.DONE:
            return outcome
        return failure(self.call.script.name, outcome, self.call.request_id, self.written)


def clock_reader(clock: Callable[[], float] | None) -> Callable[[], int]:
    """The local clock in epoch microseconds, each reading checked."""
    if clock is None:
        return lambda: int(time.time() * 1_000_000)
    if not callable(clock):
        raise InvalidInput(f"clock must be a callable returning epoch seconds, got {show(clock)}")

    def read() -> int:
        seconds = clock()
        if type(seconds) not in (float, int) or not 0 < seconds < _MAX_CLOCK:
            raise InvalidInput(
                f"clock() must return epoch seconds as a finite number between 0 and "
                f"{_MAX_CLOCK:.0f}, got {show(seconds)}"
            )
        return int(seconds * 1_000_000)

    return read


def learn(holder: _Held | Lane, address: str, outcome: Any) -> None:
    """Keep on ``holder`` what the server's INFO reply says of it.

    A warning is logged once: again only if the server comes back with
    another (it is checked again after it closed a connection). A lost
    reply leaves the server unchecked, and the next call asks again.
    """
    if isinstance(outcome, Lost):
        return
    fit = holder.fitness = _server.fitness(address, outcome)
    warning = fit.warning()
    if warning and warning != holder.warned:
        _log.warning("%s", warning)
    holder.warned = warning


def vet(fit: _server.Fitness, strict: bool) -> None:
    """Raise UnsafeServer when ``fit`` says a limiter must not decide there."""
    refusal = fit.refusal(strict)
    if refusal:
        raise UnsafeServer(refusal)


def _address(pool: Any) -> str:
    """Where ``pool`` connects, as messages name the server."""
    service = getattr(pool, "service_name", None)
    if service is not None:
        # A Sentinel-managed pool follows whichever server holds the role.
        role = "primary" if getattr(pool, "is_master", True) else "replica"
        return f"the {role} of Sentinel service {service!r}"
    kwargs = pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


class _Resend(NamedTuple):
    """How often, and after what pause, a replayable call may be sent again:
    what the client's own retry policy says."""

    times: int
    pause: Callable[[int], float]


def _resend_policy(connection_kwargs: dict[str, Any]) -> _Resend:
    retry = connection_kwargs.get("retry")
    if retry is None or not hasattr(retry, "get_retries"):
        return _Resend(0, lambda n: 0.0)
    backoff = getattr(retry, "_backoff", None)

    def pause(failures: int) -> float:
        return float(backoff.compute(failures)) if backoff is not None else 0.0

    return _Resend(max(int(retry.get_retries()), 0), pause)


# -- sync ------------------------------------------------------------------------


class SyncRunner:
    """Performs steps over a ``redis.Redis`` or ``redis.RedisCluster``."""

    __slots__ = ("_cluster", "_resend", "_strict", "client", "closed", "now")

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        now: Callable[[], int] | None = None,
        *,
        strict: bool = False,
    ) -> None:
        self.client = client
        self._strict = strict
        self.now = now or clock_reader(None)
        """The local clock, epoch microseconds (see `clock_reader`)."""
        self._cluster = isinstance(client, RedisCluster)
        self._resend = _resend_policy(_connection_kwargs(client))
        self.closed = False

    def run(self, call: Call) -> Any:
        """Send ``call`` (and any re-plan it asks for); return its result."""
        for _ in range(_REPLANS):
            result = call.read(self._one(call))
            if not isinstance(result, Call):
                return result
            call = result
        raise BackendError("the server clock kept leaving the planned windows")

    def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Send ``calls`` together, one round trip per server; return their results."""
        outcomes = self._exchange(list(calls))
        results = []
        for call, outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, BackendError):
                raise outcome
            result = call.read(outcome)
            results.append(self.run(result) if isinstance(result, Call) else result)
        return results

    def send(self, step: Command | Call) -> Any:
        """Send one command or script; return what its ``read`` makes of the reply."""
        if isinstance(step, Call):
            return self.run(step)
        try:
            # redis-py leaves the sync execute_command unannotated.
            reply = self.client.execute_command(*step.args)  # type: ignore[no-untyped-call]
        except RedisError as err:
            raise failure(str(step.args[0]), err) from err
        return step.read(reply)

    def drive(self, flow: Flow, factory: Callable[[], Any] = lambda: _no_factory()) -> Any:
        """Perform each step ``flow`` yields; return what it returns.

        A step that raises is thrown back into the flow, so the flow can
        undo or release what it holds before the error reaches the caller.
        """
        reply: Any = None
        failed: Exception | None = None
        try:
            while True:
                step = flow.send(reply) if failed is None else flow.throw(failed)
                failed = None
                try:
                    reply = self._perform(step, factory)
                except Exception as err:
                    failed = err
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
        if isinstance(step, Plan):
            return self.run(step.make(self.now()))
        return self.send(step)

    def _one(self, call: Call) -> Any:
        if self._cluster:
            outcome = self._exchange([call])[0]
            if isinstance(outcome, BackendError):
                raise outcome
            return outcome
        # One call to one server: the common case, without the bookkeeping
        # that spreading calls over a cluster's nodes needs.
        attempt = Attempt(call)
        held = _held(self.client.connection_pool)  # type: ignore[union-attr]
        self._vet(held)
        while True:
            outcome = _roundtrip(held, [attempt.wire()], [attempt.replies])[0]
            if not isinstance(outcome, _UNSORTED):
                return outcome
            step = attempt.after(outcome, time.monotonic(), self._resend)
            if step is None:
                result = attempt.result()
                if isinstance(result, BackendError):
                    raise result
                return result
            self._mend(held, attempt, step)

    def _exchange(self, calls: list[Call]) -> list[Any]:
        """Each call's reply, or the BackendError it ended in, in order.

        Calls whose reply says nothing ran (NOSCRIPT, MOVED, ASK, TRYAGAIN)
        are sent again after the fix; a lost reply is sent again only for a
        replayable call, as often as the client's retry policy allows.
        """
        attempts = [Attempt(call) for call in calls]
        outcomes: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        while todo:
            again: list[int] = []
            for held, indices in self._route(attempts, todo).items():
                self._vet(held)
                sent = [attempts[i] for i in indices]
                replies = _roundtrip(held, [a.wire() for a in sent], [a.replies for a in sent])
                for i, attempt, outcome in zip(indices, sent, replies, strict=True):
                    step = attempt.after(outcome, time.monotonic(), self._resend)
                    if step is None:
                        outcomes[i] = attempt.result()
                    else:
                        self._mend(held, attempt, step)
                        again.append(i)
            todo = again
        return outcomes

    def _vet(self, held: _Held) -> None:
        """Check the server behind ``held`` once; refuse it on every call if unfit."""
        fit = held.fitness
        if fit is None:
            learn(held, _address(held.pool), _roundtrip(held, [_INFO], [1])[0])
            fit = held.fitness
            if fit is None:
                return
        vet(fit, self._strict)

    def _mend(self, held: _Held, attempt: Attempt, step: Next) -> None:
        """Do what a reply asked for before the call is sent again."""
        if step is Next.LOAD:
            _roundtrip(held, [_wire.command("SCRIPT", "LOAD", attempt.call.script.source)], [1])
        elif step is Next.MOVED:
            self._refresh()
        elif step is Next.WAIT:
            time.sleep(_PAUSE)
        elif step is Next.LOST:
            time.sleep(self._resend.pause(attempt.tries))

    def _route(self, attempts: list[Attempt], todo: list[int]) -> dict[_Held, list[int]]:
        """The connections of the server each call goes to."""
        client = self.client
        if not self._cluster:
            return {_held(client.connection_pool): todo}  # type: ignore[union-attr]
        try:
            return self._cluster_route(attempts, todo)
        except (RedisError, RedisClusterException) as err:
            # The layout could not be learned: nothing was sent.
            raise failure("route", err) from err

    def _cluster_route(self, attempts: list[Attempt], todo: list[int]) -> dict[_Held, list[int]]:
        client = self.client
        assert isinstance(client, RedisCluster)
        routes: dict[_Held, list[int]] = {}
        for i in todo:
            attempt = attempts[i]
            if attempt.asking:
                host, port = attempt.asking
                node = client.nodes_manager.get_node(host=host, port=port)
                if node is None:
                    self._refresh()
                    node = client.nodes_manager.get_node(host=host, port=port)
                if node is None:
                    name = attempt.call.script.name
                    raise failure(name, RedisError(f"no node at {host}:{port}"))
            else:
                slot = key_slot(attempt.call.keys[0].encode())
                node = client.nodes_manager.get_node_from_slot(slot)
            pool = client.get_redis_connection(node).connection_pool
            routes.setdefault(_held(pool), []).append(i)
        return routes

    def _refresh(self) -> None:
        assert isinstance(self.client, RedisCluster)
        self.client.nodes_manager.initialize()


class _Held:
    """Connections kept between calls, taken once from a redis-py pool.

    redis-py's pool checks a connection out and back in around every
    command, with checks and hooks that cost more than all of a hit's own
    client-side work. A runner keeps the connections it has used in a list
    instead, one list per pool shared by every runner on that pool, and
    looks at each socket before writing on it, as the pool would. The list
    holds no more connections than threads ever used the pool at once.
    """

    __slots__ = ("__weakref__", "fitness", "idle", "pool", "warned")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.idle: list[Any] = []
        self.fitness: _server.Fitness | None = None
        """What INFO said of the server, once a runner has asked; None: ask."""
        self.warned: str | None = None
        """The warning last logged about the server."""

    def take(self) -> Any:
        """A connected connection; raises what connecting raised (nothing written)."""
        try:
            connection = self.idle.pop()
        except IndexError:
            return self.pool.get_connection()
        if _stale(connection):
            # The server closed it: it may have restarted, or a failover
            # made it a replica, so what INFO said is checked again.
            self.fitness = None
            connection.disconnect()
            connection.connect()
        return connection

    def give(self, connection: Any) -> None:
        self.idle.append(connection)


_HELD: weakref.WeakKeyDictionary[Any, _Held] = weakref.WeakKeyDictionary()


def _held(pool: Any) -> _Held:
    held = _HELD.get(pool)
    if held is None:
        held = _HELD.setdefault(pool, _Held(pool))
    return held


# A forked child must not write on its parent's sockets: it starts with no
# connections kept, and redis-py's pools open new ones for it.
os.register_at_fork(after_in_child=_HELD.clear)


def _stale(connection: Any) -> bool:
    """Whether the server has closed ``connection``, or sent something unasked."""
    sock = getattr(connection, "_sock", None)
    return sock is None or unasked(sock)


def _roundtrip(held: _Held, wires: list[bytes], counts: list[int]) -> list[Any]:
    """Write ``wires`` on one connection and read each one's replies.

    Each outcome is the last reply of its wire (an error reply as its
    exception), or a `Lost` for wires whose replies never came.
    """
    try:
        connection = held.take()
    except (RedisError, OSError) as err:
        return [Lost(err, written=False)] * len(wires)
    try:
        connection.send_packed_command(wires, check_health=False)
    except (RedisError, OSError) as err:
        connection.disconnect()
        held.give(connection)
        return [Lost(err, written=True)] * len(wires)
    outcomes: list[Any] = []
    for count in counts:
        try:
            if count == 1:
                reply = connection.read_response()
            else:
                reply = Replies(_each(held, connection.read_response, count))
        except ResponseError as err:
            reply = _answered(held, err)
        except (RedisError, OSError) as err:
            connection.disconnect()
            outcomes.extend([Lost(err, written=True)] * (len(counts) - len(outcomes)))
            break
        outcomes.append(reply)
    held.give(connection)
    return outcomes


def _each(held: _Held, read: Callable[[], Any], count: int) -> list[Any]:
    """``count`` replies, an error reply as its exception: every one is read,
    so the connection stays in step whichever of them failed."""
    replies = []
    for _ in range(count):
        try:
            replies.append(read())
        except ResponseError as err:
            replies.append(_answered(held, err))
    return replies


def _answered(held: _Held, err: ResponseError) -> ResponseError:
    """An error reply; READONLY says the server is a replica now, so the
    next call checks it again (and refuses it)."""
    if isinstance(err, ReadOnlyError):
        held.fitness = None
    return err


def _no_factory() -> Any:
    raise RuntimeError("this flow has no factory to call")


async def _no_async_factory() -> Any:
    raise RuntimeError("this flow has no factory to call")


# -- asyncio ---------------------------------------------------------------------


class AsyncRunner:
    """Performs steps over ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``.

    Calls started by concurrent tasks go out together: each server has a
    `Lane` that writes every call waiting for it in
    one go and hands each reply back to its caller, keeping every script
    atomic while sharing the round trips. With ``batch=False`` every call
    takes a connection of its own, as redis-py would send it.
    """

    __slots__ = (
        "_batch",
        "_cluster",
        "_lanes",
        "_loads",
        "_loop",
        "_resend",
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
        client: redis.asyncio.Redis | AsyncRedisCluster,
        now: Callable[[], int] | None = None,
        *,
        batch: bool = True,
        strict: bool = False,
    ) -> None:
        self.client = client
        self._strict = strict
        self.now = now or clock_reader(None)
        self._cluster = isinstance(client, AsyncRedisCluster)
        self._resend = _resend_policy(_connection_kwargs(client))
        self._batch = batch
        self._lanes: dict[str, Lane] = {}
        self._single_lane: Lane | None = None
        """The lane of a standalone server, once a call has made it."""
        self._loads: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warm: asyncio.Future[None] | None = None
        self.closed = False
        self.keep_connections = False
        """Whether idle lanes keep their connections: set where the pool is
        the limiter's own."""

    async def run(self, call: Call) -> Any:
        """Send ``call`` (and any re-plan it asks for); return its result."""
        for _ in range(_REPLANS):
            result = call.read(await self._send(call))
            if not isinstance(result, Call):
                return result
            call = result
        raise BackendError("the server clock kept leaving the planned windows")

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Send ``calls`` together; return their results, in order."""
        outcomes = await asyncio.gather(*(self._send(call, raising=False) for call in calls))
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
        try:
            reply = await self.client.execute_command(*step.args)
        except RedisError as err:
            raise failure(str(step.args[0]), err) from err
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
        if isinstance(step, Produce):
            return await factory()
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        if isinstance(step, Plan):
            return await self.run(step.make(self.now()))
        return await self.send(step)

    async def _send(self, call: Call, raising: bool = True) -> Any:
        """The reply to ``call``, after whatever the server asked for first."""
        lane = self._single_lane
        if lane is not None and call.wait is None and asyncio.get_running_loop() is self._loop:
            # One server and the loop already checked: the common case, with
            # none of the bookkeeping that redirects and retries need.
            wire = _wire.evalsha(call.script.sha_bytes, call.keys, call.args)
            outcome = await lane.submit(wire, 1)
            if not isinstance(outcome, _FAILED):
                return outcome
        else:
            lane, outcome = None, None
        return await self._recover(call, lane, outcome, raising)

    async def _recover(self, call: Call, lane: Lane | None, outcome: Any, raising: bool) -> Any:
        """Send ``call`` until its reply is final; ``outcome`` is a first send's
        on ``lane``, if any."""
        attempt = Attempt(call)
        loop = asyncio.get_running_loop()
        while True:
            if outcome is None:
                lane = await self._lane(call.keys[0], attempt.asking)
                outcome = await lane.submit(attempt.wire(), attempt.replies)
            step = attempt.after(outcome, loop.time(), self._resend)
            if step is None:
                result = attempt.result()
                if raising and isinstance(result, BackendError):
                    raise result
                return result
            if step is Next.LOAD:
                assert lane is not None
                await self._load(lane, call.script)
            elif step is Next.MOVED:
                await self._refresh()
            elif step is Next.WAIT:
                await asyncio.sleep(_PAUSE)
            elif step is Next.LOST:
                await asyncio.sleep(self._resend.pause(attempt.tries))
            outcome = None

    async def _lane(self, key: str, asking: tuple[str, int] | None) -> Lane:
        try:
            return await self._find_lane(key, asking)
        except (RedisError, RedisClusterException) as err:
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
                pool = client.connection_pool  # type: ignore[union-attr]
                lane = self._lanes.get("")
                if lane is None:
                    lane = self._lanes[""] = Lane(
                        pool.get_connection, pool.release, self._batch, self.keep_connections
                    )
                    lane.recheck = self._recheck
                if await self._vet(lane, _address(pool)):
                    self._single_lane = lane
            return lane
        assert isinstance(client, AsyncRedisCluster)
        await self._warmed(client)
        if asking is not None:
            node = client.nodes_manager.get_node(host=asking[0], port=asking[1])
            if node is None:
                await self._refresh()
                node = client.nodes_manager.get_node(host=asking[0], port=asking[1])
            if node is None:
                raise failure("route", RedisError(f"no node at {asking[0]}:{asking[1]}"))
        else:
            node = client.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        lane = self._lanes.get(node.name)
        if lane is None:
            lane = self._lanes[node.name] = Lane(
                _taker(node), _giver(node), self._batch, self.keep_connections
            )
        await self._vet(lane, node.name)
        return lane

    async def _vet(self, lane: Lane, address: str) -> bool:
        """Check the lane's server once; True once it is known fit, raise if unfit."""
        if lane.fitness is None:
            learn(lane, address, await lane.submit(_INFO, 1))
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
            self._warm = asyncio.ensure_future(client.initialize())  # type: ignore[arg-type]
        await asyncio.shield(self._warm)

    async def _refresh(self) -> None:
        client = self.client
        assert isinstance(client, AsyncRedisCluster)
        await client.nodes_manager.initialize()

    async def _load(self, lane: Lane, lua: Script) -> None:
        """Load ``lua`` on the lane's server once, however many calls found it missing."""
        key = (str(id(lane)), lua.sha)
        pending = self._loads.get(key)
        if pending is None:
            wire = _wire.command("SCRIPT", "LOAD", lua.source)
            pending = self._loads[key] = asyncio.ensure_future(lane.submit(wire, 1))
            pending.add_done_callback(lambda _: self._loads.pop(key, None))
        outcome = await asyncio.shield(pending)
        if isinstance(outcome, BaseException | Lost):
            raise failure(lua.name, outcome)


def _connection_kwargs(client: Any) -> dict[str, Any]:
    if isinstance(client, RedisCluster):
        return dict(client.nodes_manager.connection_kwargs)
    return dict(client.get_connection_kwargs())


def _taker(node: Any) -> Callable[[], Awaitable[Any]]:
    async def take() -> Any:
        return node.acquire_connection()

    return take


def _giver(node: Any) -> Callable[[Any], Awaitable[None]]:
    async def give(connection: Any) -> None:
        node.release(connection)

    return give

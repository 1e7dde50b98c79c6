"""The sync runner: performs planned steps over ``redis.Redis`` or ``redis.RedisCluster``.

Scripts do not go through redis-py's command layer: each call is encoded
once (`atomlimit._wire`), written on a connection taken from the client's
pool (on a cluster, the pool of the node that serves the call's slot), and
its reply read back, through `atomlimit._redis`. That keeps to one round
trip and puts the question "may this be sent again?" in atomlimit's hands:
redis-py re-sends a command whose reply was lost, which for a charge with no
record would charge twice. What to do with each reply is decided by the
rules in `atomlimit._retry`, shared with the async runner.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from atomlimit import _fitness, _redis
from atomlimit._batch import Lost, Replies
from atomlimit._clock import clock_reader
from atomlimit._errors import BackendError
from atomlimit._redis import ReadOnlyError, RedisClusterException, SyncClient
from atomlimit._retry import (
    INFO,
    PAUSE,
    REPLANS,
    UNSORTED,
    Attempt,
    Moves,
    Next,
    failure,
    learn,
    resend_pause,
    vet,
)
from atomlimit._runner_steps import Call, Command, Flow, Plan, Produce, Sleep, Step


class SyncRunner:
    """Performs steps over a ``redis.Redis`` or ``redis.RedisCluster``."""

    __slots__ = ("_cluster", "_moves", "_resends", "_strict", "client", "closed", "now")

    def __init__(
        self,
        client: SyncClient,
        now: Callable[[], int] | None = None,
        *,
        strict: bool = False,
    ) -> None:
        self.client = client
        self._strict = strict
        self.now = now or clock_reader(None)
        """The local clock, epoch microseconds (see `atomlimit._clock.clock_reader`)."""
        self._cluster = _redis.is_cluster(client)
        self._moves = Moves()
        self._resends = _redis.retries(client)
        self.closed = False

    def run(self, call: Call) -> Any:
        """Send ``call`` (and any re-plan it asks for); return its result."""
        for _ in range(REPLANS):
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
            reply = _redis.execute(self.client, step.args)
        except _redis.FAILURES as err:
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
        attempt = Attempt(call, self._resends)
        server = _connections(_redis.pool_of(self.client))
        self._vet(server)
        while True:
            outcome = _roundtrip(server, [attempt.wire()], [attempt.replies])[0]
            if not isinstance(outcome, UNSORTED):
                return outcome
            step = attempt.after(outcome, time.monotonic())
            if step is None:
                result = attempt.result()
                if isinstance(result, BackendError):
                    raise result
                return result
            if step is Next.LOAD:
                attempt.load_first()
            self._mend([(attempt, step)])

    def _exchange(self, calls: list[Call]) -> list[Any]:
        """Each call's reply, or the BackendError it ended in, in order.

        Calls whose reply says nothing ran are sent again after the fix
        (`atomlimit._retry`); a lost reply is sent again only for a
        replayable call, as often as the client's retry policy allows.
        """
        attempts = [Attempt(call, self._resends, self._cluster) for call in calls]
        outcomes: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        while todo:
            again: list[int] = []
            mends: list[tuple[Attempt, Next]] = []
            for server, indices in self._route(attempts, todo).items():
                self._vet(server)
                sent = [attempts[i] for i in indices]
                replies = _roundtrip(server, [a.wire() for a in sent], [a.replies for a in sent])
                loading: set[str] = set()
                for i, attempt, outcome in zip(indices, sent, replies, strict=True):
                    step = attempt.after(outcome, time.monotonic())
                    if step is None:
                        outcomes[i] = attempt.result()
                        continue
                    if step is Next.LOAD and attempt.call.script.sha not in loading:
                        # One load per script and server for the next write:
                        # the calls behind it on the same connection run after it.
                        loading.add(attempt.call.script.sha)
                        attempt.load_first()
                    mends.append((attempt, step))
                    again.append(i)
            self._mend(mends)
            todo = again
        return outcomes

    def _vet(self, server: _Connections) -> None:
        """Check ``server`` once; refuse it on every call if unfit."""
        fit = server.fitness
        if fit is None:
            learn(server, _redis.address(server.pool), _roundtrip(server, [INFO], [1])[0])
            fit = server.fitness
            if fit is None:
                return
        vet(fit, self._strict)

    def _mend(self, mends: list[tuple[Attempt, Next]]) -> None:
        """Do what a round's replies asked for before its calls are sent again:
        once for the round, not once per call. One thread sends a round's
        calls together, so a pause or a refresh per call would add up (fifty
        calls refused by a dead node slept fifty pauses a round, one after
        another); the longest pause and one refresh serve them all."""
        pause, refresh, rerouted = 0.0, False, False
        for attempt, step in mends:
            if step is Next.MOVED:
                refresh = not self._moves.follow(self.client, attempt.outcome) or refresh
            elif step is Next.REROUTE:
                rerouted = True
                if attempt.reroutes > 1:
                    pause = max(pause, PAUSE)
            elif step is Next.WAIT:
                pause = max(pause, PAUSE)
            elif step is Next.LOST:
                pause = max(pause, resend_pause(attempt.tries))
        if pause:
            time.sleep(pause)
        if refresh:
            self._refresh()
        elif rerouted:
            with contextlib.suppress(*_redis.FAILURES, RedisClusterException):
                # No node could tell the layout: the calls are sent as the old
                # one routes them, and fail again, within REDIRECTS.
                self._refresh()

    def _route(self, attempts: list[Attempt], todo: list[int]) -> dict[_Connections, list[int]]:
        """The connections of the server each call goes to."""
        if not self._cluster:
            return {_connections(_redis.pool_of(self.client)): todo}
        try:
            return self._cluster_route(attempts, todo)
        except (*_redis.FAILURES, RedisClusterException) as err:
            # The layout could not be learned: nothing was sent.
            raise failure("route", err) from err

    def _cluster_route(
        self, attempts: list[Attempt], todo: list[int]
    ) -> dict[_Connections, list[int]]:
        client = self.client
        routes: dict[_Connections, list[int]] = {}
        for i in todo:
            attempt = attempts[i]
            key = attempt.call.keys[0]
            node = _redis.node_for(client, key, self._moves.target(key, attempt.asking))
            if node is None:
                self._refresh()
                node = _redis.node_for(client, key, self._moves.target(key, attempt.asking))
            if node is None:
                host, port = attempt.asking or ("?", 0)
                raise failure(attempt.call.script.name, _NoNode(f"no node at {host}:{port}"))
            pool = _redis.node_pool(client, node)  # type: ignore[arg-type]
            routes.setdefault(_connections(pool), []).append(i)
        return routes

    def _refresh(self) -> None:
        """Learn the cluster's layout again; it now holds what MOVED replies said."""
        _redis.refresh(self.client)  # type: ignore[arg-type]
        self._moves.forget()


class _NoNode(_redis.RedisError):
    """An ASK named a node the cluster's layout does not know."""


class _Connections:
    """The connections runners keep to one server, taken once from its redis-py pool.

    redis-py's pool checks a connection out and back in around every
    command, with checks and hooks that cost more than all of a hit's own
    client-side work. Runners keep the connections they have used in a list
    instead, one list per pool shared by every runner on that pool, and ask
    each idle one whether the server closed it before writing on it, as the
    pool would. The list holds no more connections than threads ever used
    the pool at once.

    Each connection carries a connect callback: whenever it is opened, here
    or by redis-py, the server behind it is checked again (a failover may
    have made the same address a replica).
    """

    __slots__ = ("__weakref__", "fitness", "idle", "known", "pool", "warned")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.idle: list[Any] = []
        self.known: weakref.WeakSet[Any] = weakref.WeakSet()
        """The connections that carry this object's connect callback."""
        self.fitness: _fitness.Fitness | None = None
        """What INFO said of the server, once a runner has asked; None: ask."""
        self.warned: str | None = None
        """The warning last logged about the server."""

    def take(self) -> Any:
        """A connected connection; raises what connecting raised (nothing written)."""
        try:
            connection = self.idle.pop()
        except IndexError:
            connection = self.pool.get_connection()
            if connection not in self.known:
                self.known.add(connection)
                _redis.watch(connection, self.connected)
            return connection
        if _redis.stale(connection):
            _redis.reconnect(connection)
        return connection

    def give(self, connection: Any) -> None:
        self.idle.append(connection)

    def connected(self, connection: Any) -> None:
        """redis-py's connect callback: the server must be checked again."""
        self.fitness = None


_SERVERS: weakref.WeakKeyDictionary[Any, _Connections] = weakref.WeakKeyDictionary()


def _connections(pool: Any) -> _Connections:
    server = _SERVERS.get(pool)
    if server is None:
        server = _SERVERS.setdefault(pool, _Connections(pool))
    return server


# A forked child must not write on its parent's sockets: it starts with no
# connections kept, and redis-py's pools open new ones for it.
os.register_at_fork(after_in_child=_SERVERS.clear)


def _roundtrip(server: _Connections, wires: list[bytes], counts: list[int]) -> list[Any]:
    """Write ``wires`` on one connection and read each one's replies.

    Each outcome is the last reply of its wire (an error reply as its
    exception), or a `Lost` for wires whose
    replies never came.
    """
    try:
        connection = server.take()
    except _redis.FAILURES as err:
        return [Lost(err, written=False)] * len(wires)
    try:
        _redis.write(connection, wires)
    except _redis.FAILURES as err:
        _redis.disconnect(connection)
        server.give(connection)
        return [Lost(err, written=True)] * len(wires)
    outcomes: list[Any] = []
    for count in counts:
        try:
            if count == 1:
                reply = _redis.read(connection)
            else:
                reply = Replies(_each(server, connection, count))
        except _redis.ANSWERED as err:
            reply = _answered(server, err)
        except _redis.FAILURES as err:
            _redis.disconnect(connection)
            outcomes.extend([Lost(err, written=True)] * (len(counts) - len(outcomes)))
            break
        outcomes.append(reply)
    server.give(connection)
    return outcomes


def _each(server: _Connections, connection: Any, count: int) -> list[Any]:
    """``count`` replies, an error reply as its exception: every one is read,
    so the connection stays in step whichever of them failed."""
    replies = []
    for _ in range(count):
        try:
            replies.append(_redis.read(connection))
        except _redis.ANSWERED as err:
            replies.append(_answered(server, err))
    return replies


def _answered(server: _Connections, err: Exception) -> Exception:
    """An error reply; READONLY says the server is a replica now, so the
    next call checks it again (and refuses it)."""
    if isinstance(err, ReadOnlyError):
        server.fitness = None
    return err


def _no_factory() -> Any:
    raise RuntimeError("this flow has no factory to call")

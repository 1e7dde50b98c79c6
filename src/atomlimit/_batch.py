"""Auto-batching: calls started by concurrent tasks share round trips.

A `Lane` queues the calls bound for one server. A pump task takes a
connection, writes every queued call in one go (a pipeline: each script
still runs whole, on its own), reads the replies back in order and hands
each to its caller's future. While it waits for those replies, new calls
queue up and go out together in the next write, on this pump or on a second
one. Under load a batch holds as many calls as arrived in one round trip, so
the round trips, syscalls and wake-ups per decision shrink with the load,
and no call waits behind more than the batches already written: the queue
is first in, first out, and every pump empties it. A pump hands a batch's
replies out a part at a time (HANDOUT), so the next batch is written while
the rest of this one is answered, and server and client work side by side.

A pump whose queue empties waits a while (LINGER) for more calls: a
caller that comes back within it wakes the pump, where a new pump would pay
for a task. Where the pool is the limiter's own (``from_url``), the pump
also keeps its connection while it waits, so a lone task calling in a loop
costs about what one redis-py call does; an application's own pool gets its
connection back as soon as the queue is empty.

A caller cancelled before its call was written gives up the call: it is
never written, so it charges nothing. One cancelled after the write gives up
its future; its reply is still read, so the connection stays in step and the
other callers get theirs.

A lane learns of every connect of the connections it uses, however they
were opened (by the lane, or by redis-py's pool when it hands one out): a
connect callback on each makes the runner check the server again, since a
failover may have made the same address a replica.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from atomlimit import _redis
from atomlimit._redis import ReadOnlyError, RedisTimeoutError

PUMPS = 3
"""Pumps per server, each on a connection of its own while it works: one
writes while the others wait for their replies. Two keep a lane of hits
busy; heavier scripts (a model call's acquire and settle) keep the server
at a batch long enough that with two, both were often waiting on it while
the client had nothing to do, and a third makes model calls about a tenth
faster (``bench/call_throughput.py``). A pool too small for three (or
two) gives the lane what it has (`Lane._turn`)."""
MOST = 512
"""Calls per write at most, so one huge burst cannot make the first caller
in it wait for the last one's reply."""
HANDOUT = 16
"""Replies a pump hands out before it lets their callers run, while another
pump has nothing to do. Handed out all at once, a batch's callers would all
come back at once, into one next batch: the server would wait while the
client works and the client while the server does, each batch in turn.
Handed out a part at a time, the first callers' next calls are written
while the rest are still being answered. When every pump is busy (a
thousand tasks fill two batches), the calls would only queue, and the pump
hands the whole batch out."""
RESTED = 0.001
"""Seconds unused after which a connection is checked before a write."""
LINGER = 2.0
"""Seconds an idle pump keeps its connection before giving it back to the
pool, which may be the application's own and small."""


class Lost(NamedTuple):
    """A call whose reply never came."""

    error: BaseException
    written: bool
    """Whether the call may have reached the server (then it may have run)."""


class Replies(list[Any]):
    """Every reply of a wire that holds several commands (ASKING, a script,
    WAIT), in order, each error reply as its exception object."""


class _Kept(asyncio.Future[Any]):
    """A lane future that cannot be cancelled.

    A task cancelled while it awaits one is not woken at once: asyncio
    marks it, and throws CancelledError into it when the reply has come, so
    the task can still read the reply from the future and act on it.
    """

    def cancel(self, msg: Any | None = None) -> bool:
        return False


class _Entry(NamedTuple):
    wire: bytes
    replies: int
    future: asyncio.Future[Any]


class Lane:
    """The calls bound for one server, written together and answered in order."""

    __slots__ = (
        "__weakref__",
        "_closing",
        "_give",
        "_idle",
        "_idle_since",
        "_keep",
        "_known",
        "_loop",
        "_most",
        "_pending",
        "_pumps",
        "_reaper",
        "_resting",
        "_take",
        "_taking",
        "_tasks",
        "_width",
        "fitness",
        "recheck",
        "warned",
    )

    def __init__(
        self,
        take: Callable[[], Awaitable[Any]],
        give: Callable[[Any], Awaitable[Any] | None],
        batch: bool = True,
        keep: bool = False,
    ) -> None:
        self._take = take
        self._give = give
        # A lane serves the loop it was made on (AsyncRunner binds to one).
        self._loop = asyncio.get_running_loop()
        self._pending: deque[_Entry] = deque()
        self._pumps = 0
        # Without batching each call has a connection and a round trip of
        # its own, as redis-py would send it; the pool bounds how many.
        self._width = PUMPS if batch else 2**31 - 1
        self._most = MOST if batch else 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._taking: set[asyncio.Task[Any]] = set()
        """The pumps waiting for the pool to hand them a connection."""
        self._known: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        """The connections that carry this lane's connect callback, and when
        each last finished an exchange."""
        # Idle pumps wait on these: True to serve the queue, False to leave.
        self._idle: list[asyncio.Future[bool]] = []
        self._resting: set[asyncio.Task[Any]] = set()
        """The pumps waiting on those."""
        self._idle_since = 0.0
        self._reaper: asyncio.TimerHandle | None = None
        self._closing = False
        # Whether an idle pump keeps its connection: only where the pool is
        # the limiter's own, since an application's pool may be sized to the
        # application's needs alone.
        self._keep = keep
        self.fitness: Any = None
        """What INFO said of the server, once the runner has asked; None: ask."""
        self.warned: str | None = None
        """The warning last logged about the server."""
        self.recheck: Callable[[], None] | None = None
        """Called when the server must be checked again."""

    def submit(self, wire: bytes, replies: int = 1, kept: bool = False) -> asyncio.Future[Any]:
        """Queue ``wire`` (a whole command, or ``replies`` of them); the future
        resolves to its reply (`Replies` for several), an error reply
        as its exception object, or a `Lost`.

        A ``kept`` call's future refuses cancellation: the call is written
        and answered whatever becomes of its caller, who reads the reply
        when its own cancellation reaches it (`_Kept`).
        """
        future: asyncio.Future[Any] = _Kept(loop=self._loop) if kept else self._loop.create_future()
        self._pending.append(_Entry(wire, replies, future))
        idle = self._idle
        while idle:
            wake = idle.pop()
            if not wake.done():  # a cancelled pump's is done
                wake.set_result(True)
                break
        else:
            if self._pumps < self._width:
                self._start()
        return future

    async def close(self) -> None:
        """End every pump once the queue is empty; wait for the idle ones,
        which give their connections back. A busy pump is not waited for:
        its reply may never come (a stalled server, no timeout), and it
        ends by itself once its batch does."""
        self._closing = True
        # Pumps still waiting for a connection get one as soon as the idle
        # ones give theirs back; each closes it before returning it, and is
        # waited for, so that no open connection reaches the pool after the
        # caller has closed the pool.
        waiting = list(self._resting | self._taking)
        self._wake_idle()
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)

    def _start(self) -> None:
        self._pumps += 1
        task = asyncio.ensure_future(self._pump())
        # Keep a reference: the loop holds tasks only weakly.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self) -> None:
        try:
            while await self._turn():
                if self._keep or not await self._linger():
                    break
        finally:
            self._pumps -= 1
            if self._pending and self._pumps == 0 and not self._closing:
                # Calls queued while the last pump was failing or returning
                # its connection: one more pump serves them.
                self._start()

    async def _turn(self) -> bool:
        """Take a connection, serve the queue, give the connection back;
        False if it failed. A lane that keeps its connections waits for
        more calls on it first."""
        if not self._pending:
            return True
        pump = asyncio.current_task()
        if pump is not None:
            self._taking.add(pump)
        try:
            connection = await self._take()
            await _redis.async_ready(connection, idle=self._rested(connection))
        except Exception as err:
            # Nothing was written.
            if self._most > 1 and self._pumps > 1 and _redis.exhausted(err):
                # The pool is at its size, and another pump serves the queue:
                # this one ends, and the lane asks for no more pumps than it
                # has, rather than fail calls a connection it holds can carry.
                self._width = self._pumps - 1
                return False
            # Whatever else failed (the last pump finding no connection to
            # give, a refused connect, or an option the connection class
            # rejects), the calls waiting get it once, as their outcome; the
            # pump ends rather than trying again in a loop.
            self._fail(self._next(), err, written=False)
            return False
        finally:
            self._taking.discard(pump)
        try:
            working = await self._serve(connection)
            while working and self._keep and await self._linger():
                await _redis.async_ready(connection, idle=self._rested(connection))
                working = await self._serve(connection)
            return working
        finally:
            if self._closing:
                await _redis.async_disconnect(connection)
            given = self._give(connection)
            if given is not None:
                await given

    async def _serve(self, connection: Any) -> bool:
        """Write and answer the queue until it is empty; False if the connection broke."""
        while self._pending:
            batch = self._next()
            if batch and not await self._exchange(connection, batch):
                return False
        return True

    async def _linger(self) -> bool:
        """Wait for more calls; False when the pump has been idle for LINGER."""
        if self._closing:
            return False
        wake: asyncio.Future[bool] = self._loop.create_future()
        self._idle.append(wake)
        pump = asyncio.current_task()
        if pump is not None:
            self._resting.add(pump)
        # One timer for all idle pumps, moved on rather than made per call.
        self._idle_since = self._loop.time()
        if self._reaper is None:
            self._reaper = self._loop.call_at(self._idle_since + LINGER, self._reap)
        try:
            stay = await wake
        finally:
            self._resting.discard(pump)
            if not wake.done():
                wake.cancel()
        # Calls that came in while it was told to leave are served first.
        return stay or bool(self._pending)

    def _reap(self) -> None:
        self._reaper = None
        if not self._idle:
            return
        due = self._idle_since + LINGER
        if self._loop.time() < due:
            # A pump went idle again since the timer was set.
            self._reaper = self._loop.call_at(due, self._reap)
            return
        self._wake_idle()

    def _wake_idle(self) -> None:
        idle, self._idle = self._idle, []
        for wake in idle:
            if not wake.done():
                wake.set_result(False)

    def _next(self) -> list[_Entry]:
        """The next calls to write: at most MOST, leaving out those whose
        callers were cancelled while they queued (never written, never run)."""
        pending, most = self._pending, self._most
        batch: list[_Entry] = []
        while pending and len(batch) < most:
            entry = pending.popleft()
            if not entry.future.done():
                batch.append(entry)
        return batch

    def _rested(self, connection: Any) -> bool:
        """Whether ``connection`` sat unused long enough to be asked, before a
        write, whether the server closed it; puts the lane's connect callback
        on a connection new to the lane.

        Asking costs the pump a turn of the event loop (see
        `atomlimit._redis.async_ready`). A connection back in use within
        RESTED could only have been closed in that instant, which no check
        before a write can tell from a close during the exchange itself.
        """
        last = self._known.get(connection)
        if last is None:
            _redis.watch(connection, self._connected)
            self._known[connection] = self._loop.time()
            return True
        return self._loop.time() - last >= RESTED

    def _connected(self, connection: Any) -> None:
        """redis-py's connect callback: the server must be checked again."""
        self._forget()

    async def _exchange(self, connection: Any, batch: list[_Entry]) -> bool:
        """Write ``batch`` and hand out its replies; False if the connection broke."""
        done = answered = 0
        try:
            # One timeout for the whole batch, the write included: redis-py's
            # own, per reply, cost more than the I/O itself.
            async with asyncio.timeout(_redis.socket_timeout(connection)):
                await _redis.async_write(connection, b"".join(entry.wire for entry in batch))
                for entry in batch:
                    if entry.replies == 1:
                        try:
                            reply = await _redis.async_read(connection)
                        except _redis.ANSWERED as err:
                            reply = self._answered(err)
                    else:
                        reply = await self._each(connection, entry.replies)
                    if not entry.future.done():
                        entry.future.set_result(reply)
                    done += 1
                    # Error replies do not count: the callers a flushed
                    # script cache failed together load it once, together.
                    answered += not isinstance(reply, Exception)
                    if answered == HANDOUT and done < len(batch):
                        answered = 0
                        if self._idle or self._pumps < self._width:
                            # The callers answered so far run now, and their
                            # next calls go out on a pump that has nothing
                            # to do while this one answers the rest: the
                            # server works while the client does. With
                            # every pump busy they would only queue.
                            await asyncio.sleep(0)
            self._known[connection] = self._loop.time()
        except (Exception, asyncio.CancelledError) as err:
            # Whatever broke the exchange, every caller still waiting gets an
            # outcome: one left pending would wait forever.
            await _redis.async_disconnect(connection)
            lost = (
                RedisTimeoutError("Timeout reading from the server")
                if type(err) is TimeoutError
                else err
            )
            self._fail(batch[done:], lost, written=True)
            if isinstance(err, asyncio.CancelledError):
                raise
            return False
        return True

    async def _each(self, connection: Any, count: int) -> Replies:
        """``count`` replies; every one is read, so the connection stays in
        step whichever of them failed."""
        replies = Replies()
        for _ in range(count):
            try:
                replies.append(await _redis.async_read(connection))
            except _redis.ANSWERED as err:
                replies.append(self._answered(err))
        return replies

    def _answered(self, err: Exception) -> Exception:
        """An error reply; READONLY says the server is a replica now."""
        if isinstance(err, ReadOnlyError):
            self._forget()
        return err

    def _forget(self) -> None:
        self.fitness = None
        if self.recheck is not None:
            self.recheck()

    @staticmethod
    def _fail(batch: list[_Entry], err: BaseException, written: bool) -> None:
        lost = Lost(err, written)
        for entry in batch:
            if not entry.future.done():
                entry.future.set_result(lost)

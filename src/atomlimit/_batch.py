"""Auto-batching: calls started by concurrent tasks share round trips.

A `Lane` queues the calls bound for one server. A pump task takes a
connection, writes every queued call in one go (a pipeline: each script
still runs whole, on its own), reads the replies back in order and hands
each to its caller's future. While it waits for those replies, new calls
queue up and go out together in the next write, on this pump or on a second
one. Under load a batch holds as many calls as arrived in one round trip, so
the round trips, syscalls and wake-ups per decision shrink with the load,
and no call waits behind more than the batches already written: the queue
is first in, first out, and every pump empties it.

A pump whose queue empties waits a while (LINGER) for more calls: a
caller that comes back within it wakes the pump, where a new pump would pay
for a task. Where the pool is the limiter's own (``from_url``), the pump
also keeps its connection while it waits, so a lone task calling in a loop
costs about what one redis-py call does; an application's own pool gets its
connection back as soon as the queue is empty.

A caller that is cancelled gives up its future; its reply is still read, so
the connection stays in step and the other callers get theirs.
"""

from __future__ import annotations

import asyncio
import math
import select
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

PUMPS = 2
"""Pumps per server: one writes while the other waits for its replies."""
MOST = 512
"""Calls per write at most, so one huge burst cannot make the first caller
in it wait for the last one's reply."""
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


class _Entry(NamedTuple):
    wire: bytes
    replies: int
    future: asyncio.Future[Any]


class Lane:
    """The calls bound for one server, written together and answered in order."""

    __slots__ = (
        "_closing",
        "_give",
        "_idle",
        "_idle_since",
        "_keep",
        "_loop",
        "_most",
        "_pending",
        "_pumps",
        "_reaper",
        "_resting",
        "_take",
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

    def submit(self, wire: bytes, replies: int = 1) -> asyncio.Future[Any]:
        """Queue ``wire`` (a whole command, or ``replies`` of them); the future
        resolves to its reply (`Replies` for several), an error reply
        as its exception object, or a `Lost`."""
        future: asyncio.Future[Any] = self._loop.create_future()
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
        resting = list(self._resting)
        self._wake_idle()
        if resting:
            await asyncio.gather(*resting, return_exceptions=True)

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
        try:
            connection = await self._take()
        except (RedisError, OSError) as err:
            # Nothing was written: the pool had no connection to give.
            self._fail(self._next(), err, written=False)
            return False
        try:
            working = await self._serve(connection)
            while working and self._keep and await self._linger():
                working = await self._serve(connection)
            return working
        finally:
            given = self._give(connection)
            if given is not None:
                await given

    async def _serve(self, connection: Any) -> bool:
        """Write and answer the queue until it is empty; False if the connection broke."""
        while self._pending:
            if not await self._exchange(connection, self._next()):
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
        pending, most = self._pending, self._most
        if len(pending) <= most:
            batch = list(pending)
            pending.clear()
            return batch
        return [pending.popleft() for _ in range(most)]

    async def _exchange(self, connection: Any, batch: list[_Entry]) -> bool:
        """Write ``batch`` and hand out its replies; False if the connection broke."""
        if not connection.is_connected or _closed_by_server(connection):
            # A pooled connection the server has closed (a restart, a
            # failover, an idle timeout) would take the batch and fail it
            # with an outcome nobody could know; open a fresh one first.
            # The server behind it may have changed role: check it again.
            self._forget()
            try:
                await connection.disconnect(nowait=True)
                await connection.connect()
            except (RedisError, OSError) as err:
                self._fail(batch, err, written=False)
                return False
        done = 0
        try:
            # One timeout for the whole batch, the write included: redis-py's
            # own, per reply and per write, cost more than the I/O itself
            # (its write timeout runs the write as a task of its own).
            async with asyncio.timeout(getattr(connection, "socket_timeout", None)):
                await _write(connection, b"".join(entry.wire for entry in batch))
                for entry in batch:
                    if entry.replies == 1:
                        try:
                            reply = await connection.read_response(timeout=math.inf)
                        except ResponseError as err:
                            reply = self._answered(err)
                    else:
                        reply = await self._each(connection, entry.replies)
                    if not entry.future.done():
                        entry.future.set_result(reply)
                    done += 1
        except (Exception, asyncio.CancelledError) as err:
            # Whatever broke the exchange, every caller still waiting gets an
            # outcome: one left pending would wait forever.
            await connection.disconnect(nowait=True)
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
                replies.append(await connection.read_response(timeout=math.inf))
            except ResponseError as err:
                replies.append(self._answered(err))
        return replies

    def _answered(self, err: ResponseError) -> ResponseError:
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


async def _write(connection: Any, data: bytes) -> None:
    """Write ``data`` on the connection's stream; a failure is a ConnectionError."""
    writer = getattr(connection, "_writer", None)
    if writer is None:
        await connection.send_packed_command(data, check_health=False)
        return
    try:
        # writelines, as redis-py itself writes: a client's own connection
        # class (fakeredis's, say) may offer no more than that.
        writer.writelines((data,))
        await writer.drain()
    except TimeoutError:
        raise
    except OSError as err:
        raise RedisConnectionError(f"Error while writing to the server: {err}") from err


def _closed_by_server(connection: Any) -> bool:
    """Whether the server has closed the connection, or sent something unasked.

    Asked before each write, when every reply asked for has been read: the
    end of the stream after a restart, a failover or an idle timeout must
    not take a batch whose outcome nobody could then know, and redis-py does
    not look before it writes. The event loop marks a stream at its end
    once it has read the FIN, but a caller can wake an idle pump before the
    loop has looked at the socket (a test that restarts the server blocks
    the loop), so the socket itself is asked too: anything to read now is
    the end of the stream or bytes nobody asked for.
    """
    reader = getattr(connection, "_reader", None)
    if reader is not None and reader.at_eof():
        return True
    writer = getattr(connection, "_writer", None)
    sock = None if writer is None else writer.transport.get_extra_info("socket")
    return sock is not None and unasked(sock)


def unasked(sock: Any) -> bool:
    """Whether ``sock`` has anything to read while no reply is awaited: the
    end of the stream (a restart, a failover, an idle timeout) or bytes
    nobody asked for. Either way the connection must be opened afresh
    before anything is written on it. redis-py's sockets carry a timeout,
    so a non-blocking peek would wait: select answers at once."""
    try:
        return bool(select.select((sock,), (), (), 0)[0])
    except (ValueError, OSError):
        return True

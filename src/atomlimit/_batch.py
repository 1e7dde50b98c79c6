"""Auto-batching: calls started by concurrent tasks share round trips.

A :class:`Lane` queues the calls bound for one server. A pump task takes a
connection, writes every queued call in one go (a pipeline: each script
still runs whole, on its own), reads the replies back in order and hands
each to its caller's future. While it waits for those replies, new calls
queue up and go out together in the next write, on this pump or on a second
one. Under load a batch holds as many calls as arrived in one round trip, so
the round trips, syscalls and wake-ups per decision shrink with the load,
and no call waits behind more than the batches already written: the queue
is first in, first out, and every pump empties it.

A caller that is cancelled gives up its future; its reply is still read, so
the connection stays in step and the other callers get theirs.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

PUMPS = 2
"""Pumps per server: one writes while the other waits for its replies."""
MOST = 512
"""Calls per write at most, so one huge burst cannot make the first caller
in it wait for the last one's reply."""


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
        "_give",
        "_loop",
        "_most",
        "_pending",
        "_pumps",
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
        self.fitness: Any = None
        """What INFO said of the server, once the runner has asked; None: ask."""
        self.warned: str | None = None
        """The warning last logged about the server."""
        self.recheck: Callable[[], None] | None = None
        """Called when the server must be checked again."""

    def submit(self, wire: bytes, replies: int = 1) -> asyncio.Future[Any]:
        """Queue ``wire`` (a whole command, or ``replies`` of them); the future
        resolves to its reply (:class:`Replies` for several), an error reply
        as its exception object, or a :class:`Lost`."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append(_Entry(wire, replies, future))
        if self._pumps < self._width:
            self._pumps += 1
            task = asyncio.ensure_future(self._pump())
            # Keep a reference: the loop holds tasks only weakly.
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def _pump(self) -> None:
        try:
            try:
                connection = await self._take()
            except (RedisError, OSError) as err:
                # Nothing was written: the pool had no connection to give.
                self._fail(self._next(), err, written=False)
                return
            try:
                # Let the event loop take in anything the server sent on this
                # idle connection, such as the end of the stream after a
                # restart, before _exchange looks at it.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                while self._pending:
                    if not await self._exchange(connection, self._next()):
                        break
            finally:
                given = self._give(connection)
                if given is not None:
                    await given
        finally:
            self._pumps -= 1
            if self._pending and self._pumps == 0:
                # Calls queued while the last pump was failing or returning
                # its connection: one more pump serves them.
                self._pumps += 1
                task = asyncio.ensure_future(self._pump())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

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
        try:
            await connection.send_packed_command(
                b"".join(entry.wire for entry in batch), check_health=False
            )
        except (RedisError, OSError) as err:
            await connection.disconnect(nowait=True)
            self._fail(batch, err, written=True)
            return False
        done = 0
        try:
            # One timeout for the whole batch: redis-py's own, per reply,
            # costs more than reading the reply.
            async with asyncio.timeout(getattr(connection, "socket_timeout", None)):
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
        except (RedisError, OSError, TimeoutError, asyncio.CancelledError) as err:
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


def _closed_by_server(connection: Any) -> bool:
    """Whether the server's end of the connection is known to be closed.

    The event loop marks a stream at its end as soon as the server's FIN
    arrives; redis-py does not look before it writes.
    """
    reader = getattr(connection, "_reader", None)
    return reader is not None and bool(reader.at_eof())

"""Work that runs to its end though its task is cancelled.

An acquire must end all charged or with what it charged undone, and a model
call's end must settle or release every hold and return every lease. The
asyncio runner consults `STEADFAST` to learn that it is sending such work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


class Steadfast:
    """Work that runs to its end though its task is cancelled: an acquire
    (all charged, or what was charged undone) or a model call's end (every
    hold settled or released, every lease returned).

    While it is in force (``with Steadfast() as kept:``), the runner's calls wait out their
    task's cancellation instead of giving up: a call already queued is
    still written, and its reply read and acted on. ``cancelled`` records
    that a cancellation was held back; the work raises it at its end.

    The common call (one server, no retries) pays for this with a future
    that refuses to be cancelled; a task and a shield for each acquire and
    each end cost a model call about a sixth of its client-side work. Rarer
    paths (redirects, reloads, waits) run in a shielded task of their own.
    """

    __slots__ = ("_token", "cancelled")

    def __init__(self) -> None:
        self.cancelled = False
        self._token: Any = None

    def __enter__(self) -> Steadfast:
        self._token = STEADFAST.set(self)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        STEADFAST.reset(self._token)
        if self.cancelled and kind is not None and issubclass(kind, Exception):
            # The work failed after a cancellation was held back: the
            # cancellation is what the caller asked for, so it goes through.
            raise asyncio.CancelledError from None

    async def outlast(self, work: Awaitable[T]) -> T:
        """``work``'s result; a cancellation meanwhile waits for it, and is recorded."""
        done = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            self.cancelled = True
            return await done


STEADFAST: ContextVar[Steadfast | None] = ContextVar("atomlimit_steadfast", default=None)

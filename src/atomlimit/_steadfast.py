"""Work that runs to its end though its task is cancelled.

An acquire must end all charged or with what it charged undone, and a model
call's end must settle or release every hold and return every lease. The
asyncio runner consults `STEADFAST` to learn that it is sending such work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")


class Steadfast:
    """Work that runs to its end though its task is cancelled: an acquire
    (all charged, or what was charged undone) or a model call's end (every
    hold settled or released, every lease returned).

    While it is in force (`steadfast`), the runner's calls wait out their
    task's cancellation instead of giving up: a call already queued is
    still written, and its reply read and acted on. ``cancelled`` records
    that a cancellation was held back; the work raises it at its end.

    The common call (one server, no retries) pays for this with a future
    that refuses to be cancelled; a task and a shield for each acquire and
    each end cost a model call about a sixth of its client-side work. Rarer
    paths (redirects, reloads, waits) run in a shielded task of their own.
    """

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    async def outlast(self, work: Awaitable[T]) -> T:
        """``work``'s result; a cancellation meanwhile waits for it, and is recorded."""
        done = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            self.cancelled = True
            return await done


STEADFAST: ContextVar[Steadfast | None] = ContextVar("atomlimit_steadfast", default=None)


def steadfast() -> tuple[Steadfast, Any]:
    """Put a `Steadfast` in force for the calling task; reset the token after."""
    state = Steadfast()
    return state, STEADFAST.set(state)


def end_steadfast(token: Any) -> None:
    STEADFAST.reset(token)

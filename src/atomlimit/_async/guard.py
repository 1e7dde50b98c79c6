"""The guard's drivers: each call a limiter makes, sent inside its guard.

The breaker, the failure policy and the reports are the `Guard`'s
(`atomlimit._guard`); a driver admits the call there, sends it, and
hands back what came of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from atomlimit._errors import BackendError, BreakerOpen
from atomlimit._guard import Guard, operation_of

if TYPE_CHECKING:
    from atomlimit._async_runner import AsyncRunner
    from atomlimit._deny_cache import DenyCache
    from atomlimit._engine import Item
    from atomlimit._runner_steps import Call
    from atomlimit.observe import Operation
    from atomlimit.specs import Spec

T = TypeVar("T")


class AsyncGuard(Guard):
    """A limiter's guard, and the driver that sends each of its calls."""

    __slots__ = ()

    async def run(
        self,
        operation: Operation,
        send: Callable[[Any], Awaitable[T]],
        step: Any,
        fallback: Callable[[BackendError], T] | None = None,
    ) -> T:
        """``send(step)``, guarded; a backend failure goes to ``fallback``
        (the policy), or is raised when there is none."""
        started = time.perf_counter()
        ticket = self._admit()
        if isinstance(ticket, BreakerOpen):
            # unasync: async
            # Failing fast must still suspend: a task that retries in a loop
            # would otherwise never let the event loop run anything else.
            await asyncio.sleep(0)
            # unasync: end
            return self._fall_back(operation, ticket, started, fallback)
        try:
            # unasync: async
            if self.deadline is None:
                result = await send(step)
            else:
                async with asyncio.timeout(self.deadline):
                    result = await send(step)
            # unasync: sync
            # result = send(step)
            # unasync: end
        except BaseException as err:
            return self._failed(operation, ticket, started, err, step, fallback)
        self._succeeded(operation, ticket, started, result)
        return result

    async def decide(
        self,
        operation: Operation,
        spec: Spec[Any],
        cost: object,
        send: Callable[[Any], Awaitable[Any]],
        step: Any,
        subject: str | None = None,
        partial: bool = False,
    ) -> Any:
        """`run` for a call that returns one Decision of ``spec`` for
        ``subject`` (which a ``"local"`` policy decides by)."""
        policy = self._policy(spec, cost, operation, subject, partial)
        return await self.run(operation, send, step, policy)


class AsyncGuardedRunner:
    """A runner as a lease or reservation handle sees it: every call guarded."""

    __slots__ = ("_deny", "_guard", "_runner")

    def __init__(
        self, guard: AsyncGuard, runner: AsyncRunner, deny: DenyCache | None = None
    ) -> None:
        self._guard = guard
        self._runner = runner
        self._deny = deny

    def now(self) -> int:
        return self._runner.now()

    async def run(self, call: Call) -> Any:
        return await self._guard.run(operation_of(call), self._runner.run, call)

    def forget(self, item: Item) -> None:
        """Drop the deny cache's denials of ``item``: a settle or release
        through this limiter changed what it holds."""
        if self._deny is not None:
            self._deny.forget(item.spec, item.subject)

# Generated from src/atomlimit/_async/guard.py by scripts/unasync.py; do not edit.
"""The guard's drivers: each call a limiter makes, sent inside its guard.

The breaker, the failure policy and the reports are the `Guard`'s
(`atomlimit._guard`); a driver admits the call there, sends it, and
hands back what came of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from atomlimit._errors import BackendError, BreakerOpen
from atomlimit._guard import Guard, operation_of

if TYPE_CHECKING:
    from atomlimit._deny_cache import DenyCache
    from atomlimit._engine import Item
    from atomlimit._runner_steps import Call
    from atomlimit._sync_runner import SyncRunner
    from atomlimit.observe import Operation
    from atomlimit.specs import Spec

T = TypeVar("T")


class SyncGuard(Guard):
    """A limiter's guard, and the driver that sends each of its calls."""

    __slots__ = ()

    def run(
        self,
        operation: Operation,
        send: Callable[[Any], T],
        step: Any,
        fallback: Callable[[BackendError], T] | None = None,
    ) -> T:
        """``send(step)``, guarded; a backend failure goes to ``fallback``
        (the policy), or is raised when there is none."""
        started = time.perf_counter()
        ticket = self._admit()
        if isinstance(ticket, BreakerOpen):
            return self._fall_back(operation, ticket, started, fallback)
        try:
            result = send(step)
        except BaseException as err:
            return self._failed(operation, ticket, started, err, step, fallback)
        self._succeeded(operation, ticket, started, result)
        return result

    def decide(
        self,
        operation: Operation,
        spec: Spec[Any],
        cost: object,
        send: Callable[[Any], Any],
        step: Any,
        subject: str | None = None,
        partial: bool = False,
    ) -> Any:
        """`run` for a call that returns one Decision of ``spec`` for
        ``subject`` (which a ``"local"`` policy decides by)."""
        policy = self._policy(spec, cost, operation, subject, partial)
        return self.run(operation, send, step, policy)


class GuardedRunner:
    """A runner as a lease or reservation handle sees it: every call guarded."""

    __slots__ = ("_deny", "_guard", "_runner")

    def __init__(self, guard: SyncGuard, runner: SyncRunner, deny: DenyCache | None = None) -> None:
        self._guard = guard
        self._runner = runner
        self._deny = deny

    def now(self) -> int:
        return self._runner.now()

    def run(self, call: Call) -> Any:
        return self._guard.run(operation_of(call), self._runner.run, call)

    def forget(self, item: Item) -> None:
        """Drop the deny cache's denials of ``item``: a settle or release
        through this limiter changed what it holds."""
        if self._deny is not None:
            self._deny.forget(item.spec, item.subject)

"""``limiter.overrides``: per-subject limits kept on the server.

A SaaS's limits depend on each customer's plan and change at runtime. An
override replaces a limit's ``limit`` (and a gcra's ``burst``) for one
subject; every decision script reads it in the same call, so a change is
seen by every worker at its next decision that reaches the server.
``reset`` forgets usage, never overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from atomlimit._override_plan import Override, check_count, subject_of

if TYPE_CHECKING:
    from atomlimit._async_runner import AsyncRunner
    from atomlimit._engine import Engine
    from atomlimit.specs import Spec


class AsyncOverrides:
    """Set, read, delete and list one limiter's per-subject overrides: a
    limiter's ``overrides`` attribute (docs/overrides.md)."""

    __slots__ = ("_engine", "_forget", "_open")

    def __init__(
        self,
        engine: Engine,
        open_runner: Callable[[], AsyncRunner],
        forget: Callable[[Spec[Any], str], None],
    ) -> None:
        # The limiter's parts, not the limiter: this module sits below it.
        # ``forget`` drops the deny cache's denials of a subject whose limit
        # this process just changed, so its next call asks the server.
        self._engine = engine
        self._open = open_runner
        self._forget = forget

    async def set(
        self,
        spec: Spec[Any],
        subject: str,
        *,
        limit: int | Decimal,
        burst: int | None = None,
        expires: datetime | timedelta | None = None,
    ) -> None:
        """Make ``limit`` (a Decimal for a SpendCap) the limit in force for
        ``subject`` under ``spec``, until ``expires`` (an aware datetime, or a
        timedelta from now; None: until deleted). ``burst`` is a gcra
        limit's, and defaults to ``limit``."""
        runner = self._open()
        call = self._engine.override_set(spec, subject, limit, burst, expires, runner.now())
        try:
            await runner.run(call)
        finally:
            # Even a call that failed may have been applied.
            self._forget(spec, subject)

    async def get(self, spec: Spec[Any], subject: str) -> Override | None:
        """``subject``'s override of ``spec`` in force now, or None."""
        runner = self._open()
        found: Override | None = await runner.run(
            self._engine.override_get(spec, subject, runner.now())
        )
        return found

    async def delete(self, spec: Spec[Any], subject: str) -> bool:
        """Delete ``subject``'s override: ``spec``'s own limit applies again.
        Returns whether one was in force."""
        runner = self._open()
        call = self._engine.override_delete(spec, subject, runner.now())
        try:
            deleted: bool = await runner.run(call)
        finally:
            self._forget(spec, subject)
        return deleted

    async def list(self, spec: Spec[Any], *, count: int = 100) -> list[str]:
        """Up to ``count`` subjects (at most 10,000) with an override of
        ``spec``, found by SCAN over every primary, in no particular order."""
        most = check_count(count)
        match = self._engine.override_match(spec)
        runner = self._open()
        found: list[str] = []
        async for key in runner.client.scan_iter(match=match, count=1000):
            text = key.decode() if isinstance(key, bytes) else str(key)
            found.append(unquote(subject_of(text)))
            if len(found) >= most:
                break
        return found

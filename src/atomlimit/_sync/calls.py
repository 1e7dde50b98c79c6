# Generated from src/atomlimit/_async/calls.py by scripts/unasync.py; do not edit.
"""A budgeted model call's handle: the block it runs, and the end it sends.

What the call charges and sends is planned in `atomlimit._model_call`; the
handle takes the acquire when the block opens and sends the end when it
closes, through the limiter's guard.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from atomlimit._acquire import Acquisition
from atomlimit._engine import LaterSettlement, made_decisions
from atomlimit._model_call import Ended, Ending, Planned, denied, ending_calls
from atomlimit._provider_headers import ProviderReport
from atomlimit._waiting import pause
from atomlimit.decision import Decision, Settlement
from atomlimit.errors import InvalidInput, LimitExceeded

if TYPE_CHECKING:
    from collections.abc import Sequence

    from atomlimit._engine import Engine, Item
    from atomlimit._runner_steps import Call
    from atomlimit._sync_runner import SyncRunner


class _Shell(Protocol):
    """What a call needs of its limiter: the acquire and the end, guarded."""

    _engine: Engine
    _runner: SyncRunner

    def _take(
        self, planned: Planned, checked: tuple[list[Item], list[list[int]]]
    ) -> Acquisition: ...

    def _finish(self, calls: list[Call]) -> Ended: ...

    def _forgotten(self, items: Sequence[Item]) -> None: ...


class ModelCall:
    """One request to a model under its upstream's limits and its client's.

    From [`Limiter.call`][atomlimit.Limiter.call], used as a context manager:
    entering the block takes every limit at once, all or nothing (or raises
    [`LimitExceeded`][atomlimit.errors.LimitExceeded] naming the limit that
    denied); inside it, [`settle`][atomlimit.ModelCall.settle],
    [`observe`][atomlimit.ModelCall.observe] and
    [`backoff`][atomlimit.ModelCall.backoff] record what the response said; leaving
    the block sends all of it in one round trip. See docs/llm.md for every
    way out of the block.
    """

    __slots__ = (
        "_checked",
        "_deadline",
        "_ending",
        "_found",
        "_limiter",
        "_planned",
        "_settlements",
        "_wait",
        "corrections",
    )

    def __init__(
        self,
        limiter: _Shell,
        planned: Planned,
        checked: tuple[list[Item], list[list[int]]],
        wait: bool,
        deadline: float | None,
    ) -> None:
        self._limiter = limiter
        self._planned = planned
        self._checked = checked
        self._wait = wait
        self._deadline = deadline
        self._ending = Ending()
        self._found: Acquisition | None = None
        self._settlements: list[Settlement[Any] | LaterSettlement] = []
        self.corrections: list[Decision[Any]] = []
        """The upstream's limits after the provider's figures were applied
        at the block's end (``granted``: units charged to match them)."""

    @property
    def decisions(self) -> list[Decision[Any]]:
        """Every limit's Decision when the call was admitted, upstream's first."""
        # Made on first read, not when the block opens: most calls never
        # read them (`atomlimit._engine.LaterDecisions`).
        return [] if self._found is None else made_decisions(self._found.decisions)

    @property
    def settlements(self) -> list[Settlement[Any]]:
        """What the block's end did to each reservation, once it has run."""
        # Made on first read, as the decisions are.
        settled = self._settlements
        for n, result in enumerate(settled):
            if isinstance(result, LaterSettlement):
                settled[n] = result.made()
        return settled  # type: ignore[return-value]  # every one made just now

    @property
    def request_id(self) -> str | None:
        """The id the call's holds and leases are named by, once admitted."""
        return None if self._found is None else self._found.request_id

    def settle(self, *, tokens: int | None = None, cost: Decimal | int | None = None) -> None:
        """Record the call's actual tokens and cost; the block's end charges them.

        Either may be left out: a limit whose actual is not given is charged
        its estimate when the block ends normally, and nothing if it raised.
        Recording again replaces what was recorded.
        """
        self._ending.settle(tokens, cost)

    def observe(self, headers: object) -> ProviderReport:
        """Record the provider's rate-limit headers; the block's end applies them.

        Reads OpenAI's ``x-ratelimit-*``, Anthropic's ``anthropic-ratelimit-*``,
        the IETF ``RateLimit`` fields and ``Retry-After``. They only ever
        tighten the upstream's limits: what the fleet counts as remaining is
        brought down to what the provider reports. Malformed or unknown
        headers are ignored, never raised. Returns what was read.
        """
        return self._ending.observe(headers)

    def backoff(self, retry_after: timedelta | float | None = None) -> None:
        """Pause the upstream for every worker: the block's end sends the pause.

        For a provider's 429 (or a 503 with ``Retry-After``). ``retry_after``
        is a timedelta or seconds, at most an hour; None takes it from the
        observed headers' ``Retry-After``. When the observed headers show
        which quota ran out (requests or tokens), only that one pauses.
        """
        self._ending.backoff(retry_after)

    def __enter__(self) -> Self:
        if self._found is not None:
            raise InvalidInput("a call's block runs once; make a new call")
        while True:
            found = self._limiter._take(self._planned, self._checked)
            if found.allowed:
                break
            decision = denied(found)
            sleep = pause(decision, self._deadline, time.monotonic(), random.random)
            if not self._wait or sleep is None:
                raise LimitExceeded(decision)
            time.sleep(sleep)
        self._found = found
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        found = self._found
        if found is None or (
            not found.held and not self._ending.reports and not self._ending.pause
        ):
            return
        if found.degraded:
            # Decided without the server: nothing is held there to finish.
            return
        limiter = self._limiter
        calls = ending_calls(
            limiter._engine,
            found,
            self._checked[0],
            self._planned.roles,
            self._ending,
            kind is None,
            limiter._runner.now(),
        )
        results = limiter._finish(calls)
        limiter._forgotten(self._checked[0])
        # A lease given back reads as a bool, and is neither.
        settlements, corrections = self._settlements, self.corrections
        for result in results:
            if isinstance(result, LaterSettlement | Settlement):
                settlements.append(result)
            elif isinstance(result, Decision):
                corrections.append(result)

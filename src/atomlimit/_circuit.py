"""The circuit breaker's state machine: closed, open, half-open.

Pure: every method takes the instant it happens at (monotonic seconds) and
returns the transition it made, if any, for the caller to report. Which
errors count against it is `atomlimit._failures`' business; its
settings are the public [`Breaker`][atomlimit.Breaker].
"""

from __future__ import annotations

import threading

from atomlimit._errors import BackendError, BreakerOpen
from atomlimit.breaker import Breaker
from atomlimit.observe import BreakerState

NORMAL, PROBE = 0, 1
"""Tickets: how the breaker let a call through."""

Transition = tuple[BreakerState, BreakerState] | None


class Circuit:
    """One limiter's breaker state, shared by all of its calls and threads."""

    __slots__ = ("_lock", "breaker", "failures", "last", "opened_at", "probing", "state")

    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker
        self.state: BreakerState = "closed"
        self.failures = 0
        """Consecutive failures while closed."""
        self.opened_at = 0.0
        self.probing = False
        self.last: BackendError | None = None
        """The failure that opened the breaker, chained to its refusals."""
        self._lock = threading.Lock()

    def admit(self, now: float) -> int:
        """A ticket for a call starting at ``now``, or `BreakerOpen`.

        Open, and the cool-down over: the first caller becomes the probe,
        and the others keep failing fast until the probe's answer is in.
        """
        with self._lock:
            state = self.state
            if state == "closed":
                return NORMAL
            wait = self.opened_at + self.breaker.cool_down.total_seconds() - now
            if state == "open" and wait <= 0:
                self.state, self.probing = "half_open", True
                return PROBE
        raise self._refusal(max(wait, 0.0))

    def succeeded(self, ticket: int) -> Transition:
        """The server answered a call admitted with ``ticket``."""
        if ticket == NORMAL:
            # A late success while open proves little about the server now:
            # only the probe closes the breaker.
            if self.failures and self.state == "closed":
                with self._lock:
                    self.failures = 0
            return None
        with self._lock:
            self.state, self.probing, self.failures, self.last = "closed", False, 0, None
        return ("half_open", "closed")

    def failed(self, ticket: int, now: float, error: BackendError, refused: bool) -> Transition:
        """A call admitted with ``ticket`` met a backend failure at ``now``."""
        with self._lock:
            if ticket == PROBE:
                self.state, self.probing, self.opened_at, self.last = "open", False, now, error
                return ("half_open", "open")
            if self.state != "closed":
                return None  # already open: a call that started before
            self.failures += 1
            if self.failures < self.breaker.failures and not refused:
                return None
            self.state, self.opened_at, self.last = "open", now, error
            return ("closed", "open")

    def abandoned(self, ticket: int) -> Transition:
        """A call ended without telling whether the server works (cancelled,
        refused as bad input): a probe's turn passes to the next call."""
        if ticket != PROBE:
            return None
        with self._lock:
            self.state, self.probing = "open", False
        return ("half_open", "open")

    def _refusal(self, wait: float) -> BreakerOpen:
        count = self.breaker.failures
        err = BreakerOpen(
            f"the circuit breaker is open after the backend failed "
            f"({count} failure{'s' if count != 1 else ''} in a row, or a refused "
            f"connection); the next try goes to the server in {wait:.2f} s",
            applied="no",
        )
        err.__cause__ = self.last
        return err

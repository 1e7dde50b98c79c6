"""What a limiter reports, and how often: its observers, and throttled log lines.

An outage makes a degraded decision, and a failing observer an exception,
on every call; a log line per call would bury everything else, so each kind
of warning is written at most every `LOG_EVERY` seconds, with a count
of the ones held back.
"""

from __future__ import annotations

import threading

from atomlimit._errors import InvalidInput
from atomlimit._inputs import show
from atomlimit.observe import Observer

LOG_EVERY = 10.0
"""Seconds between two warnings of one kind (degraded decisions, failing
observers) from one limiter."""
MAX_OBSERVERS = 16


class Throttle:
    """At most one log line per ``every`` seconds, counting the ones held back."""

    __slots__ = ("_at", "_every", "_lock", "_skipped")

    def __init__(self, every: float) -> None:
        self._every = every
        self._at = -float("inf")
        self._skipped = 0
        self._lock = threading.Lock()

    def due(self, now: float) -> int | None:
        """How many were held back since the last line, if one is due now; else None."""
        with self._lock:
            if now - self._at < self._every:
                self._skipped += 1
                return None
            skipped, self._skipped, self._at = self._skipped, 0, now
            return skipped


def check_observers(observers: object) -> tuple[Observer, ...]:
    """``observers`` as a tuple, each with ``on_decision`` and ``on_error``."""
    if not isinstance(observers, list | tuple) or len(observers) > MAX_OBSERVERS:
        raise InvalidInput(
            f"observers must be a list or tuple of at most {MAX_OBSERVERS} observers, "
            f"got {show(observers)}"
        )
    for observer in observers:
        for method in ("on_decision", "on_error"):
            if not callable(getattr(observer, method, None)):
                raise InvalidInput(
                    f"an observer needs an {method} method (see atomlimit.observe.Observer), "
                    f"got {show(observer)}"
                )
    return tuple(observers)

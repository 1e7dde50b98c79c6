"""The circuit breaker's settings: when a limiter stops asking a failing server.

The state machine that applies them lives in `atomlimit._circuit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from atomlimit._errors import InvalidInput
from atomlimit._inputs import check_int, show

__all__ = ["MAX_COOL_DOWN", "MAX_FAILURES", "Breaker"]

MAX_FAILURES = 1_000
"""Most consecutive failures a breaker may wait for before it opens."""
MAX_COOL_DOWN = timedelta(hours=1)
"""Longest a breaker stays open before it lets a probe through."""
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Breaker:
    """When a limiter stops asking a failing server, and for how long.

    After ``failures`` backend failures in a row (a connection that fails,
    a reply that times out), or a single connection the server refused, the
    breaker opens: every call fails fast with
    `BreakerOpen`, which the limit's ``on_backend_error``
    policy raises or turns into a degraded decision, without paying a
    timeout. After ``cool_down`` one call goes through as a probe: if the
    server answers, the breaker closes; if not, it stays open for another
    ``cool_down``.

    Args:
        failures: consecutive failures that open the breaker, 1 to 1,000.
        cool_down: how long it stays open before a probe, 1 ms to 1 hour.
    """

    failures: int = 5
    cool_down: timedelta = timedelta(seconds=2)

    def __post_init__(self) -> None:
        check_int(self.failures, "Breaker.failures", 1, MAX_FAILURES)
        if not isinstance(self.cool_down, timedelta) or not _MS <= self.cool_down <= MAX_COOL_DOWN:
            raise InvalidInput(
                f"Breaker.cool_down must be a timedelta from 1 ms to 1 hour, "
                f"got {show(self.cool_down)}"
            )

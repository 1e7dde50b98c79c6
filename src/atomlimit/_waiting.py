"""How long a waiting caller sleeps after a denial, or that it must give up.

Pure, like the planner: the clock reading, the deadline and the random
draw are inputs, so the policy is tested with plain values and the shells
only sleep what it says. Waiting never charges ahead of time: each try is
a whole atomic hit, and a denied hit charges nothing, so any number of
waiters admit exactly what the limit admits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from atomlimit._errors import InvalidInput
from atomlimit._inputs import show
from atomlimit.decision import Decision

MAX_TIMEOUT = timedelta(days=1)
"""Longest a caller may ask to wait; ``timeout=None`` waits without a deadline."""
JITTER = 0.1
"""Share of ``retry_after`` added at random, so waiters denied together do not
all come back in the same instant."""
MAX_JITTER = 1.0
"""Most jitter, in seconds: a wait of a month needs no days of spread."""
MIN_SLEEP = 0.001
"""Shortest sleep, in seconds; a retry sooner than this would be a spin."""


def deadline_after(timeout: object, now: float) -> float | None:
    """The monotonic instant a wait gives up at, from a ``timeout`` checked for bounds.

    ``timeout`` is None (no deadline), a ``timedelta`` or a number of seconds,
    from 0 (one try) to `MAX_TIMEOUT`.
    """
    if timeout is None:
        return None
    limit = MAX_TIMEOUT.total_seconds()
    if isinstance(timeout, timedelta):
        if timedelta(0) <= timeout <= MAX_TIMEOUT:
            return now + timeout.total_seconds()
    # Exactly int or float: a bool is a bug, and a subclass could be anything.
    elif type(timeout) is int:
        if 0 <= timeout <= limit:  # compared as ints: no float conversion to overflow
            return now + timeout
    elif type(timeout) is float and math.isfinite(timeout) and 0 <= timeout <= limit:
        return now + timeout
    raise InvalidInput(
        "timeout must be None, a timedelta or a number of seconds from 0 to "
        f"{limit:g} (one day), got {show(timeout)}"
    )


def pause(
    decision: Decision[Any], deadline: float | None, now: float, draw: Callable[[], float]
) -> float | None:
    """Seconds to sleep before the next try, or None to give up now.

    Gives up when the cost can never fit (``retry_after`` is None), or when
    the earliest try that could pass lands after ``deadline``. Otherwise
    sleeps ``retry_after`` plus a random share of it (``draw`` returns a
    float in [0, 1)), at least `MIN_SLEEP` and never past the deadline:
    a jitter that would overshoot it is cut, so the last try lands on it.
    """
    retry = decision.retry_after
    if retry is None:
        return None
    wait = retry.total_seconds()
    if deadline is not None and now + wait > deadline:
        return None
    sleep = max(MIN_SLEEP, wait + min(wait * JITTER, MAX_JITTER) * draw())
    return sleep if deadline is None else min(sleep, deadline - now)

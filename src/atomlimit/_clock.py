"""Reading the local clock: the only clock a limiter reads itself.

The server's clock decides windows; the local one only centres the windows a
call plans (or decides them, with ``time_source="client"``). A clock the
caller passes is checked on every reading, since it is their code.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from atomlimit._errors import InvalidInput
from atomlimit._inputs import show

_MAX_CLOCK = 2**53 / 1_000_000
"""Epoch seconds past which instants no longer fit Lua's exact integers."""


def clock_reader(clock: Callable[[], float] | None) -> Callable[[], int]:
    """The local clock in epoch microseconds, each reading checked."""
    if clock is None:
        return lambda: int(time.time() * 1_000_000)
    if not callable(clock):
        raise InvalidInput(f"clock must be a callable returning epoch seconds, got {show(clock)}")

    def read() -> int:
        seconds = clock()
        if type(seconds) not in (float, int) or not 0 < seconds < _MAX_CLOCK:
            raise InvalidInput(
                f"clock() must return epoch seconds as a finite number between 0 and "
                f"{_MAX_CLOCK:.0f}, got {show(seconds)}"
            )
        return int(seconds * 1_000_000)

    return read

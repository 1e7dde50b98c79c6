"""The exceptions every layer raises, defined below everything that raises them.

Their public home is [`atomlimit.errors`][atomlimit.errors], which adds
[`LimitExceeded`][atomlimit.errors.LimitExceeded]: that one carries a Decision, so it sits
above `atomlimit.decision`, while these are raised by the specs and
checks that a Decision is built from.
"""

from __future__ import annotations

from typing import Literal

Applied = Literal["no", "unknown"]


class AtomlimitError(Exception):
    """Base class of every error atomlimit raises."""


class InvalidInput(AtomlimitError, ValueError):
    """A spec or argument is invalid. Raised before anything reaches the server."""


class RequestIdReused(AtomlimitError):
    """A ``request_id`` came back with a different cost than when it was charged.

    Request ids name one charge; reusing one for another amount would silently
    skip that charge, so the server refuses it and charges nothing.
    """


class BackendError(AtomlimitError):
    """The Redis server failed or could not be reached; the cause is chained.

    ``applied`` is ``"no"`` when the call cannot have taken effect (the
    connection was refused, the server answered with an error), and
    ``"unknown"`` when it may have (the reply was lost after the call was
    written, or a charge on a cap with ``wait_replicas`` was not confirmed by
    its replicas). ``request_id`` is the id the call ran under when the
    server keeps a record of it: sending the call again with ``request_id=``
    that id replays the first outcome if it was charged, and decides afresh
    if it was not. It is None when nothing on the server remembers the call.

    For an ``acquire``, both speak for the whole acquire: ``request_id``
    covers every subject, and ``applied`` is ``"unknown"`` while any charge
    may stand. Send the acquire again with that id to complete it, or call
    ``undo_acquire`` with it to take it back.
    """

    def __init__(
        self, message: str, *, applied: Applied = "no", request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.applied: Applied = applied
        self.request_id = request_id


class BreakerOpen(BackendError):
    """The limiter's circuit breaker is open: the call failed fast, unsent.

    After repeated backend failures a limiter stops paying a timeout per
    call: for a cool-down every call raises this at once (``applied`` is
    ``"no"``), then one probe call goes to the server and closes the
    breaker if it answers. ``__cause__`` is the failure that opened it.
    Like any BackendError, a limit's failure policy may turn it into a
    degraded decision.
    """


class UnsafeServer(AtomlimitError):
    """The server would lose or misreport counts: fix the deployment.

    Raised before anything is sent, on every call, by a limiter pointed at a
    replica, and with ``strict=True`` by one whose server may evict its keys
    (a ``maxmemory-policy`` other than ``noeviction``) or could not be
    checked. No failure policy turns it into a decision: the server answers,
    and its answers cannot be trusted.
    """

"""Exceptions, each named for what the caller does next.

- [`InvalidInput`][atomlimit.errors.InvalidInput]: fix the input; nothing was sent to the server.
- [`BackendError`][atomlimit.errors.BackendError]: Redis failed or is unreachable. ``applied`` says
  whether the call may have taken effect; with a ``request_id`` it can be
  sent again safely (or, for an acquire, undone). The redis-py error is
  chained as ``__cause__``. A limit's failure policy (``on_backend_error``)
  can turn it into a degraded decision instead.
- [`BreakerOpen`][atomlimit.errors.BreakerOpen]: a BackendError raised without trying the server,
  because the limiter's circuit breaker is open after repeated failures.
- [`RequestIdReused`][atomlimit.errors.RequestIdReused]: a request id came back with other costs;
  the server refused it and charged nothing.
- [`UnsafeServer`][atomlimit.errors.UnsafeServer]: the server would lose or misreport counts (a
  replica; with ``strict=True``, an evicting ``maxmemory-policy``); fix the
  deployment.
- [`LimitExceeded`][atomlimit.errors.LimitExceeded]: only raised when the caller asks for raising;
  wait for ``decision.retry_after``.

A denial is normally a [`Decision`][atomlimit.Decision] with ``allowed=False``,
not an exception.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from atomlimit.decision import Decision
    from atomlimit.specs import Spec

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


class LimitExceeded(AtomlimitError):
    """A limit denied a request and the caller asked for an exception.

    ``limit`` is the spec that denied, ``subject`` whom it was charged to
    (None where the raiser did not know it), and ``decision`` its
    [`Decision`][atomlimit.Decision]: wait ``decision.retry_after``, or give up
    when that is None (the cost can never fit). The message names the limit
    but never the subject, which may be personal (an address, an account),
    so that logging the error leaks nothing.
    """

    def __init__(
        self,
        decision: Decision[Any],
        *,
        limit: Spec[Any] | None = None,
        subject: str | None = None,
    ) -> None:
        self.decision = decision
        self.limit: Spec[Any] | None = decision.spec if limit is None else limit
        self.subject = subject
        super().__init__(_message(self.limit, decision))


def _message(limit: Spec[Any] | None, decision: Decision[Any]) -> str:
    from atomlimit._checks import show

    named = (
        "limit exceeded"
        if limit is None
        else (f"{type(limit).__name__} {show(limit.name)} exceeded")
    )
    retry = decision.retry_after
    if retry is None:
        return f"{named}; the cost can never fit within it"
    return f"{named}; retry after {retry}"

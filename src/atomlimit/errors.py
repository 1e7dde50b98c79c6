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

from typing import Any

from atomlimit._errors import (
    Applied,
    AtomlimitError,
    BackendError,
    BreakerOpen,
    InvalidInput,
    RequestIdReused,
    UnsafeServer,
)
from atomlimit._inputs import show
from atomlimit.decision import Decision
from atomlimit.specs import Spec

__all__ = [
    "Applied",
    "AtomlimitError",
    "BackendError",
    "BreakerOpen",
    "InvalidInput",
    "LimitExceeded",
    "RequestIdReused",
    "UnsafeServer",
]


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
    named = (
        "limit exceeded"
        if limit is None
        else (f"{type(limit).__name__} {show(limit.name)} exceeded")
    )
    retry = decision.retry_after
    if retry is None:
        return f"{named}; the cost can never fit within it"
    return f"{named}; retry after {retry}"

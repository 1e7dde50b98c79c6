"""The ``RateLimit-Policy`` and ``RateLimit`` header fields, from decisions.

The fields follow draft-ietf-httpapi-ratelimit-headers-11. Both are
structured-field Lists (RFC 9651) with one Item per limit; the Item is the
limit's name as a String, and its parameters say the rest:

- ``RateLimit-Policy``: ``q`` the quota, ``w`` the window in seconds, and
  ``qu`` the quota unit where it is not requests.
- ``RateLimit``: ``r`` what is left, ``t`` the seconds within which no more
  than ``r`` can be used.

>>> from datetime import timedelta
>>> from atomlimit import Hit, Limiter, RateLimit
>>> api = RateLimit(name="api", limit=100, window=timedelta(seconds=60))
>>> with Limiter.from_url("redis://127.0.0.1:6380/0") as limiter:
...     result = limiter.acquire([Hit(api, "client-42")])
>>> at = result.decisions[0].reset_at - timedelta(seconds=42)  # 42 s before the window ends
>>> rate_limit_headers(result.decisions, now=at)
{'RateLimit-Policy': '"api";q=100;w=60', 'RateLimit': '"api";r=99;t=42'}

What each value means for each kind of limit, and why, is in docs/web.md;
how they are built, in `atomlimit._header_fields`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from atomlimit._errors import InvalidInput
from atomlimit._header_fields import (
    MAX_INTEGER,
    POLICY,
    RATE_LIMIT,
    RETRY_AFTER,
    checked_fields,
    retry_after_seconds,
)
from atomlimit._inputs import MAX_HITS
from atomlimit.decision import Decision

__all__ = [
    "MAX_INTEGER",
    "POLICY",
    "RATE_LIMIT",
    "RETRY_AFTER",
    "rate_limit_headers",
    "retry_after_seconds",
]


def rate_limit_headers(
    decisions: Iterable[Decision[Any]], *, now: datetime | None = None
) -> dict[str, str]:
    """The header fields for the limits that decided one request.

    One Item per decision, in order, in each field. When a decision denied
    and says when to retry, ``Retry-After`` is added: whole seconds, rounded
    up, the longest wait among the denials. ``now`` (an aware datetime,
    default the local clock) is what ``t`` counts from.
    """
    return checked_fields(_decisions(decisions), now)


def _decisions(decisions: object) -> list[Decision[Any]]:
    if isinstance(decisions, Decision) or not isinstance(decisions, list | tuple):
        raise InvalidInput(
            f"rate_limit_headers takes a list or tuple of Decisions, got {type(decisions).__name__}"
        )
    if not 0 < len(decisions) <= MAX_HITS:
        raise InvalidInput(
            f"rate_limit_headers takes 1 to {MAX_HITS} decisions, got {len(decisions)}"
        )
    for decision in decisions:
        if not isinstance(decision, Decision):
            raise InvalidInput(f"rate_limit_headers takes Decisions, got {type(decision).__name__}")
    return list(decisions)

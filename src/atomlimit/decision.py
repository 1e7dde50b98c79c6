"""The outcome of one limiter call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Generic, TypeVar

Amount = TypeVar("Amount", int, Decimal)


@dataclass(frozen=True, slots=True)
class Decision(Generic[Amount]):
    """What a limit decided, and where the subject stands after it.

    Amounts are ``int`` for a :class:`~atomlimit.RateLimit` and exact
    ``Decimal`` in the cap's currency for a :class:`~atomlimit.SpendCap`.
    """

    allowed: bool
    """Whether the request was admitted (for ``peek``: would be)."""
    limit: Amount
    """The limit in force (for gcra: the burst, what can pass at once)."""
    used: Amount
    """Used in the current window: after this hit if allowed, unchanged if denied."""
    remaining: Amount
    """``limit - used - held``, never below zero."""
    reset_at: datetime
    """When usage is back to zero with no new traffic, an aware UTC datetime:
    the end of the current window for a fixed window."""
    retry_after: timedelta | None
    """How long until the same request could pass; ``None`` when allowed, or
    when the cost exceeds the limit and can never pass."""
    granted: Amount
    """What this call charged: the cost, less with ``partial=True``, zero when
    denied and for ``peek``."""
    held: Amount
    """Held by open reservations (spend caps only; zero otherwise). Counts
    against the limit alongside ``used``."""
    shadow_denied: bool
    """A shadow limit let this request through although it was over."""

    def __bool__(self) -> bool:
        return self.allowed

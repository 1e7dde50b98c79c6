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
    """The limit in force."""
    used: Amount
    """Used in the current window: after this hit if allowed, unchanged if denied."""
    remaining: Amount
    """``limit - used``, never below zero."""
    reset_at: datetime
    """End of the current window, an aware UTC datetime."""
    retry_after: timedelta | None
    """How long until the same request could pass; ``None`` when allowed, or
    when the cost exceeds the limit and can never pass."""

    def __bool__(self) -> bool:
        return self.allowed

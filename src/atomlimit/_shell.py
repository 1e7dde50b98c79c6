"""What the sync and async limiter shells share: defaults, argument checks,
and the handles an acquire returns.

The shells themselves are written once in `atomlimit._async.limiter`
and generated for sync code into `atomlimit._sync.limiter`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from atomlimit._acquire import Acquisition
from atomlimit._engine import Engine, Item
from atomlimit._errors import InvalidInput
from atomlimit._runner_steps import Call
from atomlimit.breaker import Breaker
from atomlimit.decision import Decision
from atomlimit.holds import Acquired
from atomlimit.specs import Hit

Clock = Callable[[], float]
LeaseT = TypeVar("LeaseT")
ReservationT = TypeVar("ReservationT")

DEFAULT_MAX_CONNECTIONS = 50
MAX_MANY = 10_000
"""Most hits one hit_many decides: one round trip of about a megabyte."""
DEFAULT_POOL_TIMEOUT = 20.0
DEFAULT_BREAKER = Breaker()
"""Open after 5 failures in a row (or one refused connection), probe after 2 s."""


def reserved_limit(limit: object, cap: object) -> Any:
    """The limit a ``reserve`` names, under its name or the old ``cap``.

    ``cap`` was the first parameter's name while only spend caps could be
    reserved; it keeps working, with a warning, for one release.
    """
    if cap is None:
        return limit
    if limit is not None:
        raise InvalidInput("reserve: give the limit once, as limit (cap is its old name)")
    warnings.warn(
        "reserve(cap=...) is deprecated; the parameter is now named limit",
        DeprecationWarning,
        stacklevel=3,
    )
    return cap


def hit_calls(engine: Engine, hits: Sequence[Hit[Any]], local: int) -> list[Call]:
    """The calls of a ``hit_many``, each planned as [`hit`][atomlimit.Limiter.hit] would."""
    if not isinstance(hits, list | tuple) or len(hits) > MAX_MANY:
        raise InvalidInput(f"hit_many takes a list or tuple of at most {MAX_MANY} Hit objects")
    calls = []
    for hit in hits:
        if not isinstance(hit, Hit):
            raise InvalidInput(f"hit_many takes Hit objects, got {type(hit).__name__}")
        if hit.hold is not None:
            raise InvalidInput("hit_many charges; a Hit with a hold is a reservation (reserve)")
        calls.append(engine.hit(hit.limit, hit.subject, hit.cost, None, False, local))
    return calls


def acquired(
    found: Acquisition,
    hits: Sequence[Hit[Any]],
    lease: Callable[[Decision[Any], Item, str], LeaseT],
    hold: Callable[[Decision[Any], Item, str], ReservationT],
) -> Acquired[LeaseT, ReservationT]:
    """What an acquire returns: its decisions, and a handle for each hold it took."""
    decisions = found.decisions
    leases = tuple(lease(decisions[n], i, found.request_id) for i, n in found.held if not i.hold)
    holds = tuple(hold(decisions[n], i, found.request_id) for i, n in found.held if i.hold)
    denied_by = None if found.denied_at is None else hits[found.denied_at]
    return Acquired(found.allowed, tuple(found.decisions), denied_by, leases, holds)

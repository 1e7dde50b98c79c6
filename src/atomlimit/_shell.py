"""What the sync and async limiter shells share: defaults, argument checks,
and the handles an acquire returns.

The shells themselves are written once in :mod:`atomlimit._async.limiter`
and generated for sync code into :mod:`atomlimit._sync.limiter`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from atomlimit._acquire import Acquisition
from atomlimit._engine import Engine, Item
from atomlimit._guard import Breaker
from atomlimit._steps import Call
from atomlimit.decision import Decision
from atomlimit.errors import InvalidInput
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


def hit_calls(engine: Engine, hits: Sequence[Hit[Any]], local: int) -> list[Call]:
    """The calls of a ``hit_many``, each planned as :meth:`~atomlimit.Limiter.hit` would."""
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


def check_client(client: Any, kinds: tuple[type, ...]) -> Any:
    """``client``, if it is one of the redis-py clients the shell can use."""
    if not isinstance(client, kinds):
        names = " or ".join(f"{k.__module__}.{k.__qualname__}" for k in kinds)
        raise InvalidInput(f"client must be a {names}, got {type(client).__name__}")
    return client


def connect(make: Callable[..., Any], url: object, options: dict[str, Any]) -> Any:
    """``make(url, **options)``, with a URL that is not Redis's refused as bad input."""
    if not isinstance(url, str):
        raise InvalidInput(f"url must be a str like 'redis://host:6379/0', got {url!r:.80}")
    try:
        return make(url, **options)
    except ValueError as err:
        # redis-py names the accepted schemes; the URL itself may hold a
        # password, so only its scheme is repeated.
        scheme = url.split("://", 1)[0] if "://" in url else "(none)"
        raise InvalidInput(f"url is not a Redis URL (scheme {scheme!r}): {err}") from None


def acquired(
    found: Acquisition,
    hits: Sequence[Hit[Any]],
    lease: Callable[[Decision[Any], Item, str], LeaseT],
    hold: Callable[[Decision[Any], Item, str], ReservationT],
) -> Acquired[LeaseT, ReservationT]:
    """What an acquire returns: its decisions, and a handle for each hold it took."""
    leases = tuple(lease(d, i, found.request_id) for i, d in found.held if not i.hold)
    holds = tuple(hold(d, i, found.request_id) for i, d in found.held if i.hold)
    denied_by = None if found.denied_at is None else hits[found.denied_at]
    return Acquired(found.allowed, tuple(found.decisions), denied_by, leases, holds)

"""What a caller holds after a call: reservations, leases, acquire results.

Each handle carries what it needs to finish its business (the engine that
plans, the limiter's guarded runner that sends), so settling, releasing or
renewing is one more script run. The async handles are written once in
`atomlimit._async.holds`; the sync ones are generated from them.

A handle from a degraded decision (made without the server, by the limit's
failure policy) holds nothing on the server, whatever its ``allowed`` says,
so its release, renew and settle send nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

from atomlimit._async.holds import AsyncLease, AsyncReservation
from atomlimit._handles import _Handle
from atomlimit._sync.holds import Lease, Reservation
from atomlimit.decision import Decision, Settlement
from atomlimit.errors import LimitExceeded
from atomlimit.specs import Hit

__all__ = [
    "Acquired",
    "AsyncLease",
    "AsyncReservation",
    "Lease",
    "Reservation",
    "Settlement",
]

L = TypeVar("L")
R = TypeVar("R")
H = TypeVar("H", bound=_Handle)


@dataclass(frozen=True, slots=True)
class Acquired(Generic[L, R]):
    """The outcome of [`acquire`][atomlimit.Limiter.acquire]: all of the hits, or none.

    ``decisions`` has one Decision per hit, in order. When the acquire is
    denied, nothing is charged and each decision says whether its limit alone
    would have let the hit through. ``denied_by`` is the first hit, in your
    order, whose limit said no. ``leases`` and ``reservations`` are the
    handles of the hits that hold something, in order, when allowed.
    """

    allowed: bool
    decisions: tuple[Decision[Any], ...]
    denied_by: Hit[Any] | None
    leases: tuple[L, ...]
    reservations: tuple[R, ...]

    def __bool__(self) -> bool:
        return self.allowed


class Pending(Generic[H]):
    """An async hold being taken: await it, or use it with ``async with``.

    ``async with`` enters the handle's own context, so leaving the block
    releases (or settles) it. With ``raise_on_deny``, a denied hold raises
    [`LimitExceeded`][atomlimit.errors.LimitExceeded] instead of yielding a handle whose
    ``allowed`` is False.
    """

    __slots__ = ("_handle", "_raise_on_deny", "_take")

    def __init__(self, take: Callable[[], Awaitable[H]], raise_on_deny: bool) -> None:
        self._take = take
        self._raise_on_deny = raise_on_deny
        self._handle: Any = None

    def __await__(self) -> Generator[Any, None, H]:
        return self._taken().__await__()

    async def __aenter__(self) -> H:
        self._handle = await self._taken()
        await self._handle.__aenter__()
        return self._handle  # type: ignore[no-any-return]

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._handle.__aexit__(kind, err, tb)

    async def _taken(self) -> H:
        return _checked(await self._take(), self._raise_on_deny)


def taken(take: Callable[[], H], raise_on_deny: bool) -> H:
    """A sync hold, taken at once: what `Pending` is on the async side.

    With ``raise_on_deny``, a denied hold raises
    [`LimitExceeded`][atomlimit.errors.LimitExceeded] instead of returning a handle whose
    ``allowed`` is False.
    """
    return _checked(take(), raise_on_deny)


def _checked(handle: H, raise_on_deny: bool) -> H:
    if raise_on_deny and not handle.allowed:
        raise LimitExceeded(handle.decision)
    return handle

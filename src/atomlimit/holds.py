"""What a caller holds after a call: reservations, leases, acquire results.

Each handle carries what it needs to finish its business (the engine that
plans, the limiter's guarded runner that sends), so settling, releasing or
renewing is one more script run. The sync and async handles read alike,
differing in ``await``.

A handle from a degraded decision (made without the server, by the limit's
failure policy) holds nothing on the server, whatever its ``allowed`` says,
so its release, renew and settle send nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from atomlimit._engine import Settlement, SettleStatus
from atomlimit.decision import Decision
from atomlimit.errors import InvalidInput, LimitExceeded
from atomlimit.specs import Hit

if TYPE_CHECKING:
    from atomlimit._engine import Engine, Item
    from atomlimit._guard import AsyncGuardedRunner, GuardedRunner
    from atomlimit._steps import Call

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
H = TypeVar("H")


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


class _Handle:
    """Shared state of a lease or a reservation."""

    __slots__ = ("_engine", "_item", "_runner", "allowed", "decision", "id")

    def __init__(self, engine: Engine, runner: Any, decision: Decision[Any], item: Item, rid: str):
        self._engine = engine
        self._runner = runner
        self._item = item
        self.allowed = decision.allowed
        """Whether the hold was granted."""
        self.decision = decision
        """The limit's Decision when the hold was taken."""
        self.id = rid
        """The hold's id: the request id it was taken under."""

    @property
    def _holds_nothing(self) -> bool:
        """Denied, or degraded: nothing on the server to release or renew."""
        return not self.allowed or self.decision.degraded

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} allowed={self.allowed}>"


class _Reservable(_Handle):
    __slots__ = ("_done", "_settle_with")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._settle_with: Decimal | int | None = None
        self._done: Settlement | None = None
        """What this handle's last settle or release did."""

    def _refuse_if_denied(self) -> None:
        # A denied reservation gave no permission to spend; settling it would
        # also write an outcome under an id a later reserve may reuse.
        if not self.allowed:
            raise InvalidInput("this reservation was denied: nothing is held to settle")

    def _nothing_held(self) -> Settlement:
        # A denied reservation holds nothing and must write no outcome under
        # its id, which a later reserve may reuse (request-ids.md). Nor does
        # a degraded one, whose spend went unrecorded by the policy's consent.
        return Settlement("expired", self.decision.granted, self.decision)

    def _repeat(self, settling: bool) -> SettleStatus | None:
        """The status to report when this handle has already finished, else None.

        After a settle nothing more can happen to the reservation; after a
        release only a settle (the money was spent after all) still changes
        it. Such repeats are sent as a release, which can never charge, so
        they stay harmless after the server has forgotten the outcome.
        """
        done = self._done
        if done is None:
            return None
        if done.status in _SETTLED_HERE:
            return "already_settled"
        return None if settling else "already_released"

    def _remember(self, result: Settlement, status: SettleStatus | None) -> Settlement:
        if status is not None:
            return Settlement(status, result.charged * 0, result.decision)
        self._done = result
        return result

    def _settling(self, actual: Decimal | int) -> tuple[Call, SettleStatus | None]:
        """The call a settle sends: a release when the handle already settled."""
        local = self._runner.now()
        repeat = self._repeat(settling=True)
        if repeat is None:
            return self._engine.settle(self._item, self.id, actual, local), None
        self._item.codec.units(actual)  # bad input is refused all the same
        return self._engine.release(self._item, self.id, local), repeat

    def settle_with(self, actual: Decimal | int) -> None:
        """Settle ``actual`` when the ``with`` block ends, instead of releasing."""
        self._item.codec.units(actual)  # refuse bad input now, not at exit
        self._settle_with = actual


_SETTLED_HERE = ("settled", "already_settled", "settled_after_release", "settled_after_expiry")
_RELEASED_HERE = ("released", "already_released", "expired")


class Reservation(_Reservable):
    """A hold on part of a [`SpendCap`][atomlimit.SpendCap], from ``Limiter.reserve``.

    The held estimate counts against the cap until [`settle`][atomlimit.Reservation.settle] charges
    the actual cost or [`release`][atomlimit.Reservation.release] gives it back; if neither happens,
    the hold expires after its TTL. Both are idempotent. As a context manager, leaving
    the block settles the amount given to [`settle_with`][atomlimit.Reservation.settle_with], or
    releases if none was given or the block raised.
    """

    __slots__ = ()

    _runner: GuardedRunner

    def settle(self, actual: Decimal | int) -> Settlement:
        """Charge the actual cost (even past the cap) and drop the hold."""
        self._refuse_if_denied()
        if self.decision.degraded:
            self._item.codec.units(actual)  # bad input is refused all the same
            return self._nothing_held()
        call, repeat = self._settling(actual)
        return self._remember(self._runner.run(call), repeat)

    def release(self) -> Settlement:
        """Drop the hold and charge nothing."""
        if self._holds_nothing:
            return self._nothing_held()
        repeat = self._repeat(settling=False)
        call = self._engine.release(self._item, self.id, self._runner.now())
        return self._remember(self._runner.run(call), repeat)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.allowed:
            return
        if err is None and self._settle_with is not None:
            self.settle(self._settle_with)
        else:
            self.release()


class AsyncReservation(_Reservable):
    """The asyncio twin of [`Reservation`][atomlimit.Reservation], from ``AsyncLimiter.reserve``."""

    __slots__ = ()

    _runner: AsyncGuardedRunner

    async def settle(self, actual: Decimal | int) -> Settlement:
        """Charge the actual cost (even past the cap) and drop the hold."""
        self._refuse_if_denied()
        if self.decision.degraded:
            self._item.codec.units(actual)  # bad input is refused all the same
            return self._nothing_held()
        call, repeat = self._settling(actual)
        return self._remember(await self._runner.run(call), repeat)

    async def release(self) -> Settlement:
        """Drop the hold and charge nothing."""
        if self._holds_nothing:
            return self._nothing_held()
        repeat = self._repeat(settling=False)
        call = self._engine.release(self._item, self.id, self._runner.now())
        return self._remember(await self._runner.run(call), repeat)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.allowed:
            return
        if err is None and self._settle_with is not None:
            await self.settle(self._settle_with)
        else:
            await self.release()


class Lease(_Handle):
    """One slot of a [`Concurrency`][atomlimit.Concurrency] limit, from ``Limiter.lease``.

    Expires after the spec's lease unless renewed; release is idempotent. As
    a context manager, leaving the block releases it.
    """

    __slots__ = ()

    _runner: GuardedRunner

    def renew(self) -> bool:
        """Extend the lease by its full length; False if it had already lapsed."""
        if self._holds_nothing:
            return False
        call = self._engine.renew(self._item, self.id, self._runner.now())
        held: bool = self._runner.run(call)
        return held

    def release(self) -> bool:
        """Give the slot back; False if it had already lapsed or been released."""
        if self._holds_nothing:
            return False
        held: bool = self._runner.run(
            self._engine.drop_lease(self._item, self.id, self._runner.now())
        )
        return held

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class AsyncLease(_Handle):
    """The asyncio twin of [`Lease`][atomlimit.Lease], from ``AsyncLimiter.lease``."""

    __slots__ = ()

    _runner: AsyncGuardedRunner

    async def renew(self) -> bool:
        """Extend the lease by its full length; False if it had already lapsed."""
        if self._holds_nothing:
            return False
        held: bool = await self._runner.run(
            self._engine.renew(self._item, self.id, self._runner.now())
        )
        return held

    async def release(self) -> bool:
        """Give the slot back; False if it had already lapsed or been released."""
        if self._holds_nothing:
            return False
        held: bool = await self._runner.run(
            self._engine.drop_lease(self._item, self.id, self._runner.now())
        )
        return held

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()


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
        handle = await self._take()
        decision = handle.decision  # type: ignore[attr-defined]
        if self._raise_on_deny and not decision.allowed:
            raise LimitExceeded(decision)
        return handle

"""The handles a limiter returns for what it holds: reservations and leases.

Each handle carries what it needs to finish its business (see
`atomlimit._handles`), so settling, releasing or renewing is one more
script run, sent through the limiter's guarded runner.
"""

from __future__ import annotations

from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from atomlimit._handles import _Handle, _Reservable
from atomlimit.decision import Settlement

if TYPE_CHECKING:
    from atomlimit._async.guard import AsyncGuardedRunner


class AsyncReservation(_Reservable):
    # unasync: async
    """The asyncio twin of [`Reservation`][atomlimit.Reservation], from ``AsyncLimiter.reserve``."""

    # unasync: sync
    # """A held estimate on a [`SpendCap`][atomlimit.SpendCap] or a
    # [`RateLimit`][atomlimit.RateLimit], from ``Limiter.reserve``.
    #
    # The held estimate counts against the limit until [`settle`][atomlimit.Reservation.settle]
    # charges the actual (in full, even past the limit) or
    # [`release`][atomlimit.Reservation.release] gives it back; if neither happens, the hold
    # expires after its TTL. On a spend cap the hold is kept beside the spend (``Decision.held``);
    # on a rate limit it is charged into the count at once, and settling gives the estimate back
    # where it still counts (its window; GCRA's arrival time) before charging the actual. Both
    # are idempotent; ``Settlement.charged`` is a `Decimal` for a spend cap, an int for a rate
    # limit. As a context manager, leaving the block settles the amount given to
    # [`settle_with`][atomlimit.Reservation.settle_with], or releases if none was given or the
    # block raised. See docs/reservations.md.
    # """
    # unasync: end

    __slots__ = ()

    _runner: AsyncGuardedRunner

    async def settle(self, actual: Decimal | int) -> Settlement[Any]:
        """Charge the actual cost (even past the limit) and drop the hold."""
        self._refuse_if_denied()
        if self.decision.degraded:
            self._item.codec.units(actual)  # bad input is refused all the same
            return self._nothing_held()
        call, repeat = self._settling(actual)
        try:
            return self._remember(await self._runner.run(call), repeat)
        finally:
            self._runner.forget(self._item)

    async def release(self) -> Settlement[Any]:
        """Drop the hold and charge nothing."""
        if self._holds_nothing:
            return self._nothing_held()
        repeat = self._repeat(settling=False)
        call = self._engine.release(self._item, self.id, self._runner.now())
        try:
            return self._remember(await self._runner.run(call), repeat)
        finally:
            self._runner.forget(self._item)

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


class AsyncLease(_Handle):
    # unasync: async
    """The asyncio twin of [`Lease`][atomlimit.Lease], from ``AsyncLimiter.lease``."""

    # unasync: sync
    # """One slot of a [`Concurrency`][atomlimit.Concurrency] limit, from ``Limiter.lease``.
    #
    # Expires after the spec's lease unless renewed; release is idempotent. As
    # a context manager, leaving the block releases it.
    # """
    # unasync: end

    __slots__ = ()

    _runner: AsyncGuardedRunner

    async def renew(self) -> bool:
        """Extend the lease by its full length; False if it had already lapsed."""
        if self._holds_nothing:
            return False
        call = self._engine.renew(self._item, self.id, self._runner.now())
        held: bool = await self._runner.run(call)
        return held

    async def release(self) -> bool:
        """Give the slot back; False if it had already lapsed or been released."""
        if self._holds_nothing:
            return False
        call = self._engine.drop_lease(self._item, self.id, self._runner.now())
        held: bool = await self._runner.run(call)
        return held

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()

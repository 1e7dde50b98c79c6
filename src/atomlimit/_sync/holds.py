# Generated from src/atomlimit/_async/holds.py by scripts/unasync.py; do not edit.
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
    from atomlimit._sync.guard import GuardedRunner


class Reservation(_Reservable):
    """A held estimate on a [`SpendCap`][atomlimit.SpendCap] or a
    [`RateLimit`][atomlimit.RateLimit], from ``Limiter.reserve``.

    The held estimate counts against the limit until [`settle`][atomlimit.Reservation.settle]
    charges the actual (in full, even past the limit) or
    [`release`][atomlimit.Reservation.release] gives it back; if neither happens, the hold
    expires after its TTL. On a spend cap the hold is kept beside the spend (``Decision.held``);
    on a rate limit it is charged into the count at once, and settling gives the estimate back
    where it still counts (its window; GCRA's arrival time) before charging the actual. Both
    are idempotent; ``Settlement.charged`` is a `Decimal` for a spend cap, an int for a rate
    limit. As a context manager, leaving the block settles the amount given to
    [`settle_with`][atomlimit.Reservation.settle_with], or releases if none was given or the
    block raised. See docs/reservations.md.
    """

    __slots__ = ()

    _runner: GuardedRunner

    def settle(self, actual: Decimal | int) -> Settlement[Any]:
        """Charge the actual cost (even past the limit) and drop the hold."""
        self._refuse_if_denied()
        if self.decision.degraded:
            self._item.codec.units(actual)  # bad input is refused all the same
            return self._nothing_held()
        call, repeat = self._settling(actual)
        try:
            return self._remember(self._runner.run(call), repeat)
        finally:
            self._runner.forget(self._item)

    def release(self) -> Settlement[Any]:
        """Drop the hold and charge nothing."""
        if self._holds_nothing:
            return self._nothing_held()
        repeat = self._repeat(settling=False)
        call = self._engine.release(self._item, self.id, self._runner.now())
        try:
            return self._remember(self._runner.run(call), repeat)
        finally:
            self._runner.forget(self._item)

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
        call = self._engine.drop_lease(self._item, self.id, self._runner.now())
        held: bool = self._runner.run(call)
        return held

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

"""What every lease and reservation handle shares, sync or async.

A handle carries what it needs to finish its business (the engine that
plans, the limiter's guarded runner that sends), so settling, releasing or
renewing is one more script run. The handles themselves are in
`atomlimit._async.holds` and, generated from it, `atomlimit._sync.holds`.

A handle from a degraded decision (made without the server, by the limit's
failure policy) holds nothing on the server, whatever its ``allowed`` says,
so its release, renew and settle send nothing.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from atomlimit._engine import _SETTLED
from atomlimit._errors import InvalidInput
from atomlimit.decision import Decision, Settlement, SettleStatus

if TYPE_CHECKING:
    from atomlimit._engine import Engine, Item
    from atomlimit._runner_steps import Call


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
    """A reservation's bookkeeping: what to settle at the block's end, and
    what its last settle or release did."""

    __slots__ = ("_done", "_settle_with")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._settle_with: Decimal | int | None = None
        self._done: Settlement[Any] | None = None
        """What this handle's last settle or release did."""

    def _refuse_if_denied(self) -> None:
        # A denied reservation gave no permission to spend; settling it would
        # also write an outcome under an id a later reserve may reuse.
        if not self.allowed:
            raise InvalidInput("this reservation was denied: nothing is held to settle")

    def _nothing_held(self) -> Settlement[Any]:
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
        if done.status in _SETTLED:
            return "already_settled"
        return None if settling else "already_released"

    def _remember(self, result: Settlement[Any], status: SettleStatus | None) -> Settlement[Any]:
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

"""Hypothesis state machines: reservations and leases against pure-Python models.

The limiter runs on a real server with ``time_source="client"`` and a clock
the machine controls, so holds and leases lapse, and windows end, on
command. Each model is written from the docs (reservations.md, leases.md),
not from the scripts: it keeps every hold or lease with its expiry and
works out admission and ``retry_after`` by brute force over the instants at
which something changes.

Keys still expire in real time (a TTL is the client-time span plus a 5 s
grace), so examples stay short and each runs under its own prefix.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    multiple,
    rule,
    run_state_machine_as_test,
)
from servers import Server

from atomlimit import Concurrency, Decision, Lease, Limiter, Reservation, SpendCap

US = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
START_US = int(datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC).timestamp()) * US
MINUTE_US = 60 * US
STEPS = [0.25, 1, 5, 9.75, 10, 29.75, 30, 60]
"""Clock steps, in seconds: all exact in binary, so the clock never rounds."""
_runs = itertools.count()


def _instant(t_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=t_us)


# -- reservations ---------------------------------------------------------------

CAP = SpendCap(
    name="holds", limit=Decimal("1.00"), currency="AUD", window="minute", unit=Decimal("0.01")
)
LIMIT = CAP.limit
HOLD_TTLS = [10, 30, 90]
"""Seconds; 90 outlives the minute the hold was taken in."""


@dataclass
class Hold:
    amount: Decimal
    expires: int


@dataclass
class Taken:
    """A reservation the limiter granted, as the machine remembers it."""

    reservation: Reservation
    estimate: Decimal
    ttl: int
    request_id: str | None


@dataclass
class SpendModel:
    """The cap as the docs describe it: committed spend per window, holds in none."""

    window: int = -1
    committed: Decimal = Decimal(0)
    holds: dict[str, Hold] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)

    def used(self, t: int) -> Decimal:
        return self.committed if self.window == t // MINUTE_US else Decimal(0)

    def held(self, t: int) -> Decimal:
        return sum((h.amount for h in self.holds.values() if h.expires > t), Decimal(0))

    def holding(self, rid: str, t: int) -> bool:
        return rid in self.holds and self.holds[rid].expires > t

    def fits(self, t: int, cost: Decimal) -> bool:
        return self.used(t) + self.held(t) + cost <= LIMIT

    def charge(self, t: int, amount: Decimal) -> None:
        self.committed = self.used(t) + amount
        self.window = t // MINUTE_US

    def earliest_fit(self, t: int, cost: Decimal) -> int | None:
        """The first instant ``cost`` fits with no new activity; None for never."""
        if cost > LIMIT:
            return None
        window_end = (t // MINUTE_US + 1) * MINUTE_US
        changes = {h.expires for h in self.holds.values() if h.expires > t} | {window_end}
        for at in sorted(changes):
            used = Decimal(0) if at >= window_end else self.used(t)
            if used + self.held(at) + cost <= LIMIT:
                return at
        raise AssertionError("with every hold gone and a new window, any cost <= limit fits")

    def window_end(self, t: int) -> datetime:
        return _instant((t // MINUTE_US + 1) * MINUTE_US)


def _amount(quarters: int) -> Decimal:
    return Decimal(quarters) / 4


class ReservationMachine(RuleBasedStateMachine):
    url = ""
    taken = Bundle("taken")

    def __init__(self) -> None:
        super().__init__()
        self.now = START_US
        self.client = redis.Redis.from_url(self.url)
        self.limiter = Limiter(
            self.client,
            prefix=f"holds{next(_runs)}",
            time_source="client",
            clock=lambda: self.now / US,
        )
        self.model = SpendModel()

    def teardown(self) -> None:
        self.client.close()

    def check(self, decision: Decision[Decimal]) -> None:
        used, held = self.model.used(self.now), self.model.held(self.now)
        assert decision.used == used
        assert decision.held == held
        assert decision.remaining == max(LIMIT - used - held, Decimal(0))
        assert decision.reset_at == self.model.window_end(self.now)

    def check_denial(self, decision: Decision[Decimal], cost: Decimal) -> None:
        fit = self.model.earliest_fit(self.now, cost)
        expected = None if fit is None else timedelta(microseconds=fit - self.now)
        assert decision.retry_after == expected
        assert decision.granted == 0

    @rule(seconds=st.sampled_from(STEPS))
    def advance(self, seconds: float) -> None:
        self.now += int(seconds * US)

    @rule(
        target=taken,
        quarters=st.integers(0, 6),
        ttl=st.sampled_from(HOLD_TTLS),
        with_id=st.booleans(),
    )
    def reserve(self, quarters: int, ttl: int, with_id: bool) -> Any:
        estimate = _amount(quarters)
        request_id = f"res{next(_runs)}" if with_id else None
        fits = self.model.fits(self.now, estimate)
        reservation = self.limiter.reserve(
            CAP, "s", estimate, ttl=timedelta(seconds=ttl), request_id=request_id
        )

        assert reservation.allowed == fits
        assert reservation.decision.allowed == fits
        if not fits:
            self.check(reservation.decision)
            self.check_denial(reservation.decision, estimate)
            return multiple()
        self.model.holds[reservation.id] = Hold(estimate, self.now + ttl * US)
        self.check(reservation.decision)
        assert reservation.decision.granted == estimate
        assert reservation.decision.retry_after is None
        if request_id is not None:
            assert reservation.id == request_id
        return Taken(reservation, estimate, ttl, request_id)

    @rule(taken=taken)
    def resend_reserve(self, taken: Taken) -> None:
        if taken.request_id is None:
            return
        # A re-sent reserve replays the original; nothing more is held.
        again = self.limiter.reserve(
            CAP,
            "s",
            taken.estimate,
            ttl=timedelta(seconds=taken.ttl),
            request_id=taken.request_id,
        )
        assert again.id == taken.reservation.id
        assert again.decision == taken.reservation.decision

    @rule(taken=taken, quarters=st.integers(0, 8))
    def settle(self, taken: Taken, quarters: int) -> None:
        actual = _amount(quarters)  # up to twice the cap: overruns included
        rid = taken.reservation.id
        before = self.model.outcomes.get(rid)
        if before == "settled":
            status = "already_settled"
        elif self.model.holding(rid, self.now):
            status = "settled"
        elif before == "released":
            status = "settled_after_release"
        else:
            # Expired, whether or not a release found it gone since.
            status = "settled_after_expiry"
        if status != "already_settled":
            self.model.holds.pop(rid, None)
            self.model.charge(self.now, actual)
            self.model.outcomes[rid] = "settled"

        outcome = taken.reservation.settle(actual)

        assert outcome.status == status
        assert outcome.charged == (0 if status == "already_settled" else actual)
        assert outcome.decision.allowed
        self.check(outcome.decision)

    @rule(taken=taken)
    def release(self, taken: Taken) -> None:
        rid = taken.reservation.id
        before = self.model.outcomes.get(rid)
        if before == "settled":
            status = "already_settled"
        elif before in ("released", "expired"):
            status = "already_released"
        else:
            status = "released" if self.model.holding(rid, self.now) else "expired"
            self.model.holds.pop(rid, None)
            self.model.outcomes[rid] = status

        outcome = taken.reservation.release()

        assert outcome.status == status
        assert outcome.charged == 0
        self.check(outcome.decision)

    @rule(quarters=st.integers(0, 6))
    def hit(self, quarters: int) -> None:
        cost = _amount(quarters)
        fits = self.model.fits(self.now, cost)
        if fits:
            self.model.charge(self.now, cost)

        decision = self.limiter.hit(CAP, "s", cost)

        assert decision.allowed == fits
        self.check(decision)
        if fits:
            assert decision.granted == cost
        else:
            self.check_denial(decision, cost)

    @rule()
    def peek_agrees_with_the_model(self) -> None:
        # A rule, not an invariant: a peek prunes, and scripts must also be
        # right when nothing has pruned since a hold lapsed.
        peeked = self.limiter.peek(CAP, "s", cost=0)

        assert peeked.allowed == self.model.fits(self.now, Decimal(0))
        self.check(peeked)
        if not peeked.allowed:
            self.check_denial(peeked, Decimal(0))


def test_reservations_match_the_model(server: Server) -> None:
    ReservationMachine.url = server.url
    run_state_machine_as_test(
        ReservationMachine,
        settings=settings(max_examples=80, stateful_step_count=30, deadline=None),
    )


# -- leases -------------------------------------------------------------------------

SLOTS = Concurrency(name="slots", limit=3, lease=timedelta(seconds=10))
LEASE_US = 10 * US


@dataclass
class Slot:
    """A lease the limiter granted, as the machine remembers it."""

    lease: Lease
    request_id: str | None


@dataclass
class LeaseModel:
    """Leases in flight, each with when it lapses."""

    expires: dict[str, int] = field(default_factory=dict)

    def live(self, t: int) -> list[int]:
        return sorted(e for e in self.expires.values() if e > t)

    def holding(self, lid: str, t: int) -> bool:
        return lid in self.expires and self.expires[lid] > t


class LeaseMachine(RuleBasedStateMachine):
    url = ""
    slots = Bundle("slots")

    def __init__(self) -> None:
        super().__init__()
        self.now = START_US
        self.client = redis.Redis.from_url(self.url)
        self.limiter = Limiter(
            self.client,
            prefix=f"leases{next(_runs)}",
            time_source="client",
            clock=lambda: self.now / US,
        )
        self.model = LeaseModel()

    def teardown(self) -> None:
        self.client.close()

    def check(self, decision: Decision[int]) -> None:
        live = self.model.live(self.now)
        assert decision.used == len(live)
        assert decision.remaining == SLOTS.limit - len(live)
        assert decision.held == 0
        assert decision.reset_at == _instant(live[-1] if live else self.now)

    @rule(seconds=st.sampled_from([0.25, 1, 4, 9.75, 10, 12]))
    def advance(self, seconds: float) -> None:
        self.now += int(seconds * US)

    @rule(target=slots, with_id=st.booleans())
    def take(self, with_id: bool) -> Any:
        request_id = f"lease{next(_runs)}" if with_id else None
        live = self.model.live(self.now)
        fits = len(live) < SLOTS.limit

        lease = self.limiter.lease(SLOTS, "s", raise_on_deny=False, request_id=request_id)

        assert lease.allowed == fits
        if not fits:
            self.check(lease.decision)
            # retry_after: when the earliest lease in flight lapses.
            assert lease.decision.retry_after == timedelta(microseconds=live[0] - self.now)
            return multiple()
        self.model.expires[lease.id] = self.now + LEASE_US
        self.check(lease.decision)
        assert lease.decision.retry_after is None
        if request_id is not None:
            assert lease.id == request_id
        return Slot(lease, request_id)

    @rule(slot=slots)
    def resend_take(self, slot: Slot) -> None:
        if slot.request_id is None:
            return
        again = self.limiter.lease(SLOTS, "s", request_id=slot.request_id)
        assert again.id == slot.lease.id
        assert again.decision == slot.lease.decision

    @rule(slot=slots)
    def renew(self, slot: Slot) -> None:
        held = self.model.holding(slot.lease.id, self.now)
        if held:
            self.model.expires[slot.lease.id] = self.now + LEASE_US

        assert slot.lease.renew() == held

    @rule(slot=slots)
    def release(self, slot: Slot) -> None:
        held = self.model.holding(slot.lease.id, self.now)
        self.model.expires.pop(slot.lease.id, None)

        assert slot.lease.release() == held

    @rule()
    def reset(self) -> None:
        self.limiter.reset(SLOTS, "s")
        self.model.expires.clear()

    @rule()
    def peek_agrees_with_the_model(self) -> None:
        live = self.model.live(self.now)
        peeked = self.limiter.peek(SLOTS, "s")

        assert peeked.allowed == (len(live) < SLOTS.limit)
        self.check(peeked)
        if not peeked.allowed:
            assert peeked.retry_after == timedelta(microseconds=live[0] - self.now)


def test_leases_match_the_model(server: Server) -> None:
    LeaseMachine.url = server.url
    run_state_machine_as_test(
        LeaseMachine,
        settings=settings(max_examples=80, stateful_step_count=30, deadline=None),
    )

"""Hypothesis state machines: reservations on rate limits against a pure-Python model.

One machine per algorithm that can hold (fixed window, GCRA, sliding
counter), each driving a real server with ``time_source="client"`` and a
clock it moves to the microsecond. The model is written from
docs/reservations.md ("Reservations on rate limits"), not from the scripts:

- a hold is charged into the limit's own usage when it is taken, like a hit;
- settling gives the estimate back where it still counts (the window it was
  taken in; for GCRA the arrival time, never before now) and charges the
  actual in full, past the limit if need be;
- releasing gives the estimate back where it still counts, charging nothing;
- a hold past its TTL is given back by the next reserve, settle, release or
  acquire with a hold on the limit and subject; plain hits and peeks count
  it until then;
- a second settle or release charges nothing.

``retry_after`` and ``reset_at`` are found by searching the model's own
future (the first instant the cost fits, the first instant usage is zero),
never by the library's formulas.

Under the ``ci`` profile (``make pytest``) each machine runs
``MACHINE_SETTINGS``' 60 examples of up to 40 steps, derandomized; the
counts each run made are printed at the end of the test (``pytest -s``).
Keys still expire in real time (a TTL is the client-time span plus a 5 s
grace), so examples stay short and each runs under its own prefix.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import redis
from helpers import SECOND, MicroClock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from servers import Server

from atomlimit import Decision, Hit, Limiter, RateLimit, Reservation

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
LIMIT = 100
LENGTH = 60 * SECOND
"""Every spec here: 100 units a minute."""
SUBJECT = "s"
HOLD_TTLS = (10, 30, 90)
"""Seconds; 90 outlives the minute the hold was taken in."""
STEPS = (1, 250_000, SECOND, 5 * SECOND, 10 * SECOND, 30 * SECOND, LENGTH, 2 * LENGTH)
"""Clock steps, in microseconds: past TTLs, to window ends and beyond."""
MACHINE_SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None)
_runs = itertools.count()


# -- The models ------------------------------------------------------------------


@dataclass
class Hold:
    units: int
    window: int
    """The window it was charged in (fixed window, sliding counter); 0 for GCRA."""
    expires: int


class Usage:
    """How much one subject of one limit has used at an instant, and how it changes."""

    def used(self, now: int) -> int:
        raise NotImplementedError

    def charge(self, now: int, units: int) -> None:
        """Add ``units`` at ``now``, whatever the limit: a fit is decided by the caller."""
        raise NotImplementedError

    def give_back(self, now: int, units: int, window: int) -> None:
        """Take back a hold's charge made in ``window``, where it still counts."""
        raise NotImplementedError

    def refund(self, now: int, units: int) -> None:
        raise NotImplementedError

    def window(self, now: int) -> int:
        return now // LENGTH

    def room(self, now: int) -> int:
        return LIMIT - self.used(now)

    def reset_at(self, now: int) -> int:
        """The first instant from ``now`` at which usage is zero."""
        return first(now, lambda t: self.used(t) == 0)

    def retry_at(self, now: int, cost: int) -> int | None:
        if cost > LIMIT:
            return None
        return first(now, lambda t: self.room(t) >= cost)


def first(now: int, holds: Any) -> int:
    """The first instant from ``now`` at which ``holds(t)``; monotone in ``t``."""
    span = 1
    while not holds(now + span):
        span *= 2
        assert span < 2**45, "usage never drains"
    low, high = now, now + span
    while low < high:
        middle = (low + high) // 2
        if holds(middle):
            high = middle
        else:
            low = middle + 1
    return low


@dataclass
class FixedWindowUsage(Usage):
    """A counter per minute; a closed window's counter (and holds in it) are gone."""

    counts: dict[int, int] = field(default_factory=dict)

    def used(self, now: int) -> int:
        return self.counts.get(self.window(now), 0)

    def charge(self, now: int, units: int) -> None:
        index = self.window(now)
        self.counts[index] = self.counts.get(index, 0) + units

    def give_back(self, now: int, units: int, window: int) -> None:
        if window == self.window(now):
            self.refund(now, units)

    def refund(self, now: int, units: int) -> None:
        index = self.window(now)
        self.counts[index] = max(self.counts.get(index, 0) - units, 0)

    def reset_at(self, now: int) -> int:
        # A fixed window always answers with the end of the window.
        return (self.window(now) + 1) * LENGTH


@dataclass
class GcraUsage(Usage):
    """A theoretical arrival time, moved on by T = 600,000 µs a unit."""

    interval: int = LENGTH // LIMIT
    tat: int = 0

    def ahead(self, now: int) -> int:
        return max(self.tat - now, 0)

    def used(self, now: int) -> int:
        return -(-self.ahead(now) // self.interval)

    def charge(self, now: int, units: int) -> None:
        self.tat = max(self.tat, now) + units * self.interval

    def give_back(self, now: int, units: int, window: int) -> None:
        # The arrival time moves back, never before now.
        self.tat = now + max(self.ahead(now) - units * self.interval, 0)

    def refund(self, now: int, units: int) -> None:
        self.give_back(now, units, 0)

    def window(self, now: int) -> int:
        return 0


@dataclass
class SlidingCounterUsage(Usage):
    """Counts per minute; ``previous x share still inside + current``, as documented.

    The estimate takes the script's float operations, so the two agree to the bit.
    """

    counts: dict[int, int] = field(default_factory=dict)

    def estimate(self, now: int) -> float:
        index, elapsed = divmod(now, LENGTH)
        previous = self.counts.get(index - 1, 0)
        current = self.counts.get(index, 0)
        return previous * ((LENGTH - elapsed) / LENGTH) + current

    def used(self, now: int) -> int:
        return math.ceil(self.estimate(now) - 1e-9)

    def room(self, now: int) -> int:
        return math.floor(LIMIT - self.estimate(now) + 1e-9)

    def charge(self, now: int, units: int) -> None:
        index = self.window(now)
        self.counts[index] = self.counts.get(index, 0) + units

    def give_back(self, now: int, units: int, window: int) -> None:
        # Only the window charged, while it is the current one: once it has
        # closed, its count slides out as it would for any hit.
        if window == self.window(now):
            self.refund(now, units)

    def refund(self, now: int, units: int) -> None:
        index = self.window(now)
        self.counts[index] = max(self.counts.get(index, 0) - units, 0)


@dataclass
class Model:
    """A rate limit with holds: usage, the open holds, and each reservation's outcome."""

    usage: Usage
    holds: dict[str, Hold] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    """Per reservation id: "settled", "released" or "expired" (a release found it gone)."""

    def prune(self, now: int) -> None:
        """What every reservation-path call does first: give back lapsed holds."""
        for rid, hold in sorted(self.holds.items()):
            if hold.expires <= now:
                del self.holds[rid]
                self.usage.give_back(now, hold.units, hold.window)

    def end(self, rid: str, now: int) -> bool:
        """Drop the hold ``rid``, giving its charge back; whether it was still held."""
        hold = self.holds.pop(rid, None)
        if hold is not None:
            self.usage.give_back(now, hold.units, hold.window)
        return hold is not None


# -- The machine -------------------------------------------------------------------


@dataclass
class Taken:
    """A reservation the limiter granted, as the machine remembers it."""

    reservation: Reservation
    estimate: int
    ttl: int
    request_id: str | None


class RateHoldMachine(RuleBasedStateMachine):
    """Hits, reservations, settles, releases, refunds and the clock, against ``Model``."""

    url = ""
    spec: ClassVar[RateLimit]
    counts: ClassVar[Counter[str]] = Counter()
    """Rules run, and examples, over the test: printed at its end."""
    taken = Bundle("taken")

    def __init__(self) -> None:
        super().__init__()
        self.clock = MicroClock()
        self.client = redis.Redis.from_url(self.url)
        self.limiter = Limiter(
            self.client, prefix=f"rh{next(_runs)}", time_source="client", clock=self.clock
        )
        self.model = Model(self.new_usage())
        self.overrun = False
        """Whether a settle charged past the limit: the only way past it."""
        self.counts["examples"] += 1

    def new_usage(self) -> Usage:
        raise NotImplementedError

    def teardown(self) -> None:
        self.client.close()

    @property
    def now(self) -> int:
        return self.clock.us

    def count(self, what: str) -> None:
        self.counts[what] += 1
        self.counts["steps"] += 1

    def check(self, decision: Decision[int], *, granted: int = 0) -> None:
        """The decision reports the model's usage now."""
        usage, now = self.model.usage, self.now
        used = usage.used(now)
        assert decision.used == used
        assert decision.remaining == max(LIMIT - used, 0)
        assert decision.held == 0  # the hold is in the usage, not beside it
        assert decision.granted == granted
        assert decision.limit == LIMIT
        assert decision.reset_at == EPOCH + usage.reset_at(now) * US
        if decision.allowed:
            assert decision.retry_after is None

    def check_denial(self, decision: Decision[int], cost: int) -> None:
        assert not decision.allowed
        self.check(decision)
        retry_at = self.model.usage.retry_at(self.now, cost)
        expected = None if retry_at is None else max(retry_at - self.now, 1) * US
        assert decision.retry_after == expected

    # -- the clock --------------------------------------------------------------

    @rule(step=st.sampled_from(STEPS))
    def advance(self, step: int) -> None:
        self.count("advance")
        self.clock.us += step

    @rule(taken=taken, early=st.booleans())
    def advance_to_expiry(self, taken: Taken, early: bool) -> None:
        # Land exactly on (or one µs before) the instant a hold lapses.
        self.count("advance_to_expiry")
        hold = self.model.holds.get(taken.reservation.id)
        if hold is not None and hold.expires - early > self.now:
            self.clock.us = hold.expires - early

    # -- plain traffic: counts every hold, prunes none ----------------------------

    @rule(cost=st.integers(0, 40))
    def hit(self, cost: int) -> None:
        self.count("hit")
        usage = self.model.usage
        fits = cost <= usage.room(self.now)
        if fits:
            usage.charge(self.now, cost)

        decision = self.limiter.hit(self.spec, SUBJECT, cost)

        if fits:
            assert decision.allowed
            self.check(decision, granted=cost)
            assert decision.used <= LIMIT or self.overrun
        else:
            self.check_denial(decision, cost)

    @rule(amount=st.integers(0, 60))
    def refund(self, amount: int) -> None:
        self.count("refund")
        self.model.usage.refund(self.now, amount)

        after = self.limiter.refund(self.spec, SUBJECT, amount)

        self.check(after)

    # -- reservations -----------------------------------------------------------

    def reserved(self, estimate: int, ttl: int, reservation: Reservation) -> Any:
        """Check a reserve (or an acquire's hold) made at ``now``, and model it."""
        model = self.model
        model.prune(self.now)
        fits = estimate <= model.usage.room(self.now)
        assert reservation.allowed == fits
        if not fits:
            self.check_denial(reservation.decision, estimate)
            # Denied: nothing charged; what a peek reads now is what it said.
            assert self.limiter.peek(self.spec, SUBJECT, 0).used == reservation.decision.used
            return None
        model.usage.charge(self.now, estimate)
        window = model.usage.window(self.now)
        model.holds[reservation.id] = Hold(estimate, window, self.now + ttl * SECOND)
        self.check(reservation.decision, granted=estimate)
        assert reservation.decision.used <= LIMIT or self.overrun
        return reservation

    @rule(
        target=taken,
        estimate=st.integers(0, 60),
        ttl=st.sampled_from(HOLD_TTLS),
        with_id=st.booleans(),
    )
    def reserve(self, estimate: int, ttl: int, with_id: bool) -> Any:
        self.count("reserve")
        request_id = f"res{next(_runs)}" if with_id else None
        reservation = self.limiter.reserve(
            self.spec, SUBJECT, estimate, ttl=timedelta(seconds=ttl), request_id=request_id
        )
        if self.reserved(estimate, ttl, reservation) is None:
            return multiple()
        if request_id is not None:
            assert reservation.id == request_id
        return Taken(reservation, estimate, ttl, request_id)

    @rule(target=taken, estimate=st.integers(0, 60), ttl=st.sampled_from(HOLD_TTLS))
    def acquire_with_a_hold(self, estimate: int, ttl: int) -> Any:
        self.count("acquire_with_a_hold")
        acquired = self.limiter.acquire(
            [Hit(self.spec, SUBJECT, estimate, hold=timedelta(seconds=ttl))]
        )
        if not acquired.allowed:
            assert acquired.reservations == ()
            self.model.prune(self.now)
            self.check_denial(acquired.decisions[0], estimate)
            return multiple()
        (reservation,) = acquired.reservations
        assert acquired.decisions[0] == reservation.decision
        self.reserved(estimate, ttl, reservation)
        return Taken(reservation, estimate, ttl, None)

    @rule(taken=taken)
    def resend_reserve_charges_nothing(self, taken: Taken) -> None:
        if taken.request_id is None:
            return
        self.count("resend_reserve")
        again = self.limiter.reserve(
            self.spec,
            SUBJECT,
            taken.estimate,
            ttl=timedelta(seconds=taken.ttl),
            request_id=taken.request_id,
        )
        assert again.id == taken.reservation.id
        assert again.decision == taken.reservation.decision

    @rule(taken=taken, data=st.data())
    def settle(self, taken: Taken, data: st.DataObject) -> None:
        # Below, at and above the estimate, and past the whole limit.
        actual = data.draw(
            st.one_of(
                st.integers(0, taken.estimate),
                st.integers(taken.estimate, taken.estimate + 20),
                st.integers(LIMIT, LIMIT + 50),
            ),
            label="actual",
        )
        self.count("settle_above" if actual > taken.estimate else "settle_at_or_below")
        model, rid = self.model, taken.reservation.id
        model.prune(self.now)
        before = model.outcomes.get(rid)
        charged = 0
        if before == "settled":
            status = "already_settled"
        else:
            held = model.end(rid, self.now)
            if held:
                status = "settled"
            elif before == "released":
                status = "settled_after_release"
            else:
                status = "settled_after_expiry"
            model.usage.charge(self.now, actual)
            model.outcomes[rid] = "settled"
            charged = actual
            self.overrun = self.overrun or model.usage.used(self.now) > LIMIT

        outcome = taken.reservation.settle(actual)

        assert outcome.status == status
        assert outcome.charged == charged
        assert type(outcome.charged) is int
        assert outcome.decision.allowed
        self.check(outcome.decision, granted=charged)

    @rule(taken=taken)
    def release(self, taken: Taken) -> None:
        self.count("release")
        model, rid = self.model, taken.reservation.id
        model.prune(self.now)
        before = model.outcomes.get(rid)
        if before == "settled":
            status = "already_settled"
        elif before in ("released", "expired"):
            status = "already_released"
        else:
            status = "released" if model.end(rid, self.now) else "expired"
            model.outcomes[rid] = status

        outcome = taken.reservation.release()

        assert outcome.status == status
        assert outcome.charged == 0
        self.check(outcome.decision)

    @rule(draw=st.integers(0, 7))
    def reset(self, draw: int) -> None:
        # A reset forgets the subject: its usage and its holds. Only one
        # draw in eight resets, so most examples build up state.
        if draw:
            return
        self.count("reset")
        self.limiter.reset(self.spec, SUBJECT)
        self.model.usage = self.new_usage()
        self.model.holds.clear()
        self.overrun = False

    @invariant()
    def peek_agrees_with_the_model(self) -> None:
        # A peek prunes nothing: a lapsed hold still counts until a
        # reservation-path call gives it back.
        peeked = self.limiter.peek(self.spec, SUBJECT, 0)
        room = self.model.usage.room(self.now)
        assert peeked.allowed == (room >= 0)
        if peeked.allowed:
            self.check(peeked)
        else:
            self.check_denial(peeked, 0)
        assert peeked.used <= LIMIT or self.overrun


def run_machine(machine: type[RateHoldMachine], url: str) -> None:
    machine.url = url
    machine.counts = Counter()
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)
    counts = machine.counts
    rules = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
    print(f"\n{machine.__name__}: {rules}")
    # Every rule ran: a machine whose bundle stayed empty would test nothing.
    for name in ("reserve", "settle_above", "settle_at_or_below", "release", "advance_to_expiry"):
        assert counts[name] > 0, f"{name} never ran"


class FixedWindowHolds(RateHoldMachine):
    spec = RateLimit(name="tpm", limit=LIMIT, window="minute")

    def new_usage(self) -> Usage:
        return FixedWindowUsage()


class GcraHolds(RateHoldMachine):
    spec = RateLimit(name="tpm", limit=LIMIT, window="minute", algorithm="gcra")

    def new_usage(self) -> Usage:
        return GcraUsage()


class SlidingCounterHolds(RateHoldMachine):
    spec = RateLimit(name="tpm", limit=LIMIT, window="minute", algorithm="sliding_counter")

    def new_usage(self) -> Usage:
        return SlidingCounterUsage()


def test_fixed_window_holds_match_the_model(server: Server) -> None:
    run_machine(FixedWindowHolds, server.url)


def test_gcra_holds_match_the_model(server: Server) -> None:
    run_machine(GcraHolds, server.url)


def test_sliding_counter_holds_match_the_model(server: Server) -> None:
    run_machine(SlidingCounterHolds, server.url)

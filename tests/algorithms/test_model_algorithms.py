"""Hypothesis state machines: GCRA, sliding log and sliding counter against small models.

Each machine drives a real server with ``time_source="client"`` and a clock
it controls to the microsecond, and compares every Decision, field by field,
with a pure-Python model written from docs/algorithms.md,
docs/partial-grants.md and docs/refunds.md. A model knows only how much room
a subject has at an instant; ``retry_after`` and ``reset_at`` are found by
searching the model's own future (the first instant the cost fits, the first
instant usage is zero), never by the library's formulas.

Keys expire in real time (a TTL is the controlled window plus a 5 s grace),
so each example is short and never waits.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any, ClassVar

import redis
from helpers import SECOND, MicroClock
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from servers import Server

from atomlimit import Decision, Limiter, RateLimit
from atomlimit._windows import UNIT_LENGTHS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
SUBJECTS = ("alice", "bob")
MACHINE_SETTINGS = settings(max_examples=60, stateful_step_count=30, deadline=None)
_runs = itertools.count()


# -- Models ----------------------------------------------------------------------


def _length_us(spec: RateLimit) -> int:
    length = spec.window if isinstance(spec.window, timedelta) else UNIT_LENGTHS[spec.window]
    return length // timedelta(microseconds=1)


class Model:
    """How much room each subject of one limit has at an instant, and its changes."""

    limit: int
    """What ``Decision.limit`` reports."""
    horizon: int
    """No retry, and no return to zero, lies further ahead than this (µs)."""

    def room(self, subject: str, now: int) -> int:
        raise NotImplementedError

    def used(self, subject: str, now: int) -> int:
        raise NotImplementedError

    def charge(self, subject: str, now: int, units: int) -> None:
        raise NotImplementedError

    def refund(self, subject: str, now: int, units: int) -> None:
        raise NotImplementedError

    def first(self, now: int, holds: Any) -> int:
        """The first instant from ``now`` at which ``holds(t)``; monotone in ``t``."""
        low, high = now, now + self.horizon
        assert holds(high)
        while low < high:
            middle = (low + high) // 2
            if holds(middle):
                high = middle
            else:
                low = middle + 1
        return low

    def retry_at(self, subject: str, now: int, cost: int) -> int | None:
        if cost > self.limit:
            return None
        return self.first(now, lambda t: self.room(subject, t) >= cost)

    def reset_at(self, subject: str, now: int) -> int:
        return self.first(now, lambda t: self.used(subject, t) == 0)


@dataclass
class Gcra(Model):
    """A theoretical arrival time per subject, moved on by ``T`` per unit.

    The server keeps the TAT in whole microseconds, rounded up; so does the
    model (a no-op when ``T`` is whole).
    """

    burst: int
    interval: Fraction
    tat: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.limit = self.burst
        self.horizon = math.ceil(2 * self.burst * self.interval) + 1

    def room(self, subject: str, now: int) -> int:
        ahead = max(self.tat.get(subject, 0) - now, 0)
        return math.floor((self.burst * self.interval - ahead) / self.interval)

    def used(self, subject: str, now: int) -> int:
        return self.burst - self.room(subject, now)

    def charge(self, subject: str, now: int, units: int) -> None:
        base = max(self.tat.get(subject, 0), now)
        self.tat[subject] = math.ceil(base + units * self.interval)


@dataclass
class SlidingLog(Model):
    """Every admitted unit's instant; a unit counts while it is after ``now - window``."""

    limit: int
    window: int
    log: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.horizon = self.window

    def _live(self, subject: str, now: int) -> list[int]:
        return [t for t in self.log.get(subject, []) if t > now - self.window]

    def room(self, subject: str, now: int) -> int:
        return self.limit - len(self._live(subject, now))

    def used(self, subject: str, now: int) -> int:
        return len(self._live(subject, now))

    def charge(self, subject: str, now: int, units: int) -> None:
        self.log[subject] = self._live(subject, now) + [now] * units

    def refund(self, subject: str, now: int, units: int) -> None:
        live = self._live(subject, now)
        self.log[subject] = live[: max(len(live) - units, 0)]


@dataclass
class SlidingCounter(Model):
    """Counts per epoch-aligned window; the documented estimate over the last window.

    ``estimate = previous x (window - elapsed) / window + current``, in the
    same float operations as the script, so the two agree to the bit.
    """

    limit: int
    window: int
    counts: dict[tuple[str, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.horizon = 2 * self.window

    def estimate(self, subject: str, now: int) -> float:
        index, elapsed = divmod(now, self.window)
        previous = self.counts.get((subject, index - 1), 0)
        current = self.counts.get((subject, index), 0)
        weight = (self.window - elapsed) / self.window
        return previous * weight + current

    def room(self, subject: str, now: int) -> int:
        return math.floor(self.limit - self.estimate(subject, now) + 1e-9)

    def used(self, subject: str, now: int) -> int:
        return math.ceil(self.estimate(subject, now) - 1e-9)

    def charge(self, subject: str, now: int, units: int) -> None:
        key = (subject, now // self.window)
        self.counts[key] = self.counts.get(key, 0) + units

    def refund(self, subject: str, now: int, units: int) -> None:
        key = (subject, now // self.window)
        self.counts[key] = max(self.counts.get(key, 0) - units, 0)


# -- The machine every algorithm shares ---------------------------------------------


@dataclass
class Charge:
    name: str
    subject: str
    cost: int
    partial: bool
    request_id: str
    decision: Decision[int]


class AlgorithmMachine(RuleBasedStateMachine):
    """Hits, replays and the clock, checked against ``models``; subclasses add more."""

    url = ""
    specs: ClassVar[dict[str, RateLimit]] = {}
    steps: ClassVar[tuple[int, ...]] = ()
    charges = Bundle("charges")

    def __init__(self) -> None:
        super().__init__()
        self.clock = MicroClock()
        self.client = redis.Redis.from_url(self.url)
        self.limiter = Limiter(
            self.client,
            prefix=f"alg{next(_runs)}",
            time_source="client",
            clock=self.clock,
        )
        self.models = self.new_models()
        self.denials: list[int] = []
        """Instants at which a denied hit said it could be retried."""
        self.last = (sorted(self.specs)[0], SUBJECTS[0])
        """The limit and subject hit last: rules return to them half the time."""

    def new_models(self) -> dict[str, Model]:
        raise NotImplementedError

    def teardown(self) -> None:
        self.client.close()

    def advance(self, us: int) -> None:
        self.clock.us = max(self.clock.us, us)

    def pick(self, data: st.DataObject) -> tuple[str, str]:
        """A limit and a subject; often the last ones, so calls build on each other."""
        if data.draw(st.booleans()):
            return self.last
        name = data.draw(st.sampled_from(sorted(self.specs)))
        self.last = (name, data.draw(st.sampled_from(SUBJECTS)))
        return self.last

    @rule(data=st.data())
    def wait(self, data: st.DataObject) -> None:
        self.advance(self.clock.us + data.draw(st.sampled_from(self.steps)))

    @rule(early=st.booleans())
    def wait_for_a_retry(self, early: bool) -> None:
        # Land exactly on (or one µs before) an instant a denial promised.
        if self.denials:
            self.advance(self.denials.pop() - early)

    @rule(target=charges, data=st.data(), partial=st.booleans(), with_id=st.booleans())
    def hit(self, data: st.DataObject, partial: bool, with_id: bool) -> Any:
        name, subject = self.pick(data)
        model, now = self.models[name], self.clock.us
        cost = data.draw(st.integers(0, model.limit + 1))
        request_id = f"r{next(_runs)}" if with_id else None
        decision = self.limiter.hit(
            self.specs[name], subject, cost, request_id=request_id, partial=partial
        )

        room = model.room(subject, now)
        if cost <= room or (partial and room > 0):
            granted = min(cost, room)
            model.charge(subject, now, granted)
            retry = None
        else:
            granted = 0
            retry_at = model.retry_at(subject, now, cost)
            retry = None if retry_at is None else (retry_at - now) * US
            if retry_at is not None:
                self.denials.append(retry_at)
        used = model.used(subject, now)
        assert decision == Decision(
            allowed=granted > 0 or cost == 0,
            limit=model.limit,
            used=used,
            remaining=max(model.limit - used, 0),
            reset_at=EPOCH + model.reset_at(subject, now) * US,
            retry_after=retry,
            granted=granted,
            held=0,
            shadow_denied=False,
            spec=self.specs[name],
        )
        if request_id and decision.allowed:
            return Charge(name, subject, cost, partial, request_id, decision)
        return None

    @rule(charge=charges)
    def replay_charges_nothing(self, charge: Charge | None) -> None:
        if charge is None:
            return
        again = self.limiter.hit(
            self.specs[charge.name],
            charge.subject,
            charge.cost,
            request_id=charge.request_id,
            partial=charge.partial,
        )
        assert again == charge.decision

    @invariant()
    def peek_agrees_with_the_model(self) -> None:
        now = self.clock.us
        for name, spec in self.specs.items():
            model = self.models[name]
            for subject in SUBJECTS:
                peeked = self.limiter.peek(spec, subject, cost=0)
                assert peeked.allowed
                assert peeked.used == model.used(subject, now)
                assert peeked.remaining == model.room(subject, now)
                assert peeked.reset_at == EPOCH + model.reset_at(subject, now) * US


class RefundingMachine(AlgorithmMachine):
    """A machine whose algorithms take refunds (docs/refunds.md)."""

    @rule(data=st.data(), amount=st.integers(0, 4))
    def refund(self, data: st.DataObject, amount: int) -> None:
        name, subject = self.pick(data)
        model, now = self.models[name], self.clock.us
        after = self.limiter.refund(self.specs[name], subject, amount)
        model.refund(subject, now, amount)

        used = model.used(subject, now)
        assert after.used == used
        assert after.remaining == max(model.limit - used, 0)
        assert after.reset_at == EPOCH + model.reset_at(subject, now) * US
        assert after.granted == 0


# -- GCRA ----------------------------------------------------------------------------

GCRA_SPECS = {
    # T = 100,000 µs, burst 10.
    "steady": RateLimit(name="steady", limit=10, window=timedelta(seconds=1), algorithm="gcra"),
    # T = 500,000 µs, burst 3 (below the rate).
    "bursty": RateLimit(
        name="bursty", limit=4, window=timedelta(seconds=2), algorithm="gcra", burst=3
    ),
}


class GcraMachine(AlgorithmMachine):
    specs = GCRA_SPECS
    steps = (1, 50_000, 99_999, 100_000, 100_001, 250_000, 499_999, 500_000, 1_000_000)

    def new_models(self) -> dict[str, Model]:
        return {
            name: Gcra(spec.burst or spec.limit, Fraction(_length_us(spec), spec.limit))
            for name, spec in self.specs.items()
        }


def test_gcra_matches_the_model(server: Server) -> None:
    GcraMachine.url = server.url
    run_state_machine_as_test(GcraMachine, settings=MACHINE_SETTINGS)


def test_gcra_with_a_fractional_interval_keeps_its_promises(server: Server) -> None:
    """T not a whole number of µs: checked by property, not against a rounding model.

    - never more than ``burst + span / T`` admitted in any span (the rate);
    - ``used`` never passes the burst, and ``remaining`` is the burst less it;
    - once idle for a while, ``burst`` units pass at once and one more does not.
    """
    with server.client() as client:

        @settings(max_examples=50, deadline=None)
        @given(
            limit=st.integers(2, 13),
            window_ms=st.integers(1, 60_000),
            extra=st.one_of(st.none(), st.integers(1, 20)),
            history=st.lists(st.tuples(st.integers(0, 2 * SECOND), st.integers(0, 4)), max_size=25),
        )
        def promises(
            limit: int, window_ms: int, extra: int | None, history: list[tuple[int, int]]
        ) -> None:
            assume(window_ms * 1_000 % limit)
            burst = None if extra is None else min(extra, limit * 2)
            spec = RateLimit(
                name="fraction",
                limit=limit,
                window=timedelta(milliseconds=window_ms),
                algorithm="gcra",
                burst=burst,
            )
            burst_units, interval = burst or limit, Fraction(window_ms * 1_000, limit)
            clock = MicroClock()
            limiter = Limiter(
                client, prefix=f"frac{next(_runs)}", time_source="client", clock=clock
            )
            admitted: list[tuple[int, int]] = []
            for gap, cost in history:
                clock.us += gap
                decision = limiter.hit(spec, "s", cost)
                admitted.append((clock.us, decision.granted))
                assert 0 <= decision.used <= burst_units
                assert decision.remaining == burst_units - decision.used
            for first, _ in admitted:
                for last in (t for t, _ in admitted if t >= first):
                    units = sum(u for t, u in admitted if first <= t <= last)
                    assert units <= burst_units + (last - first) / interval

            clock.us += math.ceil(burst_units * interval) + 1
            run = [limiter.hit(spec, "s").allowed for _ in range(burst_units + 1)]
            assert run == [True] * burst_units + [False]

        promises()


# -- Sliding log -----------------------------------------------------------------------

LOG_SPECS = {
    "login": RateLimit(name="login", limit=5, window=timedelta(seconds=1), algorithm="sliding_log"),
    "otp": RateLimit(
        name="otp", limit=3, window=timedelta(milliseconds=250), algorithm="sliding_log"
    ),
}


class SlidingLogMachine(RefundingMachine):
    specs = LOG_SPECS
    steps = (1, 50_000, 100_000, 249_999, 250_000, 400_000, 999_999, 1_000_000)

    def new_models(self) -> dict[str, Model]:
        return {name: SlidingLog(spec.limit, _length_us(spec)) for name, spec in self.specs.items()}


def test_sliding_log_matches_the_model(server: Server) -> None:
    SlidingLogMachine.url = server.url
    run_state_machine_as_test(SlidingLogMachine, settings=MACHINE_SETTINGS)


# -- Sliding counter ---------------------------------------------------------------------

COUNTER_SPECS = {
    "search": RateLimit(
        name="search", limit=10, window=timedelta(seconds=1), algorithm="sliding_counter"
    ),
    "tiny": RateLimit(
        name="tiny", limit=7, window=timedelta(milliseconds=500), algorithm="sliding_counter"
    ),
}


class SlidingCounterMachine(RefundingMachine):
    specs = COUNTER_SPECS
    steps = (1, 100_000, 333_333, 499_999, 500_000, 999_999, 1_000_000, 1_500_000)

    def new_models(self) -> dict[str, Model]:
        return {
            name: SlidingCounter(spec.limit, _length_us(spec)) for name, spec in self.specs.items()
        }


def test_sliding_counter_matches_the_model(server: Server) -> None:
    SlidingCounterMachine.url = server.url
    run_state_machine_as_test(SlidingCounterMachine, settings=MACHINE_SETTINGS)

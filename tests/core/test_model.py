"""Hypothesis state machines: the limiter against a small pure-Python model.

The limiter runs on a real server with ``time_source="client"`` and a clock
the machine controls, so windows roll over on command.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import redis
from helpers import START
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from servers import Server

from atomlimit import Decision, Limiter, RateLimit, SpendCap

RATE = RateLimit(name="rate", limit=5, window=timedelta(seconds=10))
CAP = SpendCap(
    name="cap", limit=Decimal("1.00"), currency="AUD", window="minute", unit=Decimal("0.01")
)
SPECS = {"rate": RATE, "cap": CAP}
SUBJECTS = ("alice", "bob")
_runs = itertools.count()


def window_of(name: str, t: float) -> int:
    """The model's window index: independent of the library's window code."""
    return int(t // (10 if name == "rate" else 60))


@dataclass
class Counter:
    window: int = -1
    used: Decimal = Decimal(0)


@dataclass
class Charge:
    name: str
    subject: str
    cost: Any
    request_id: str
    decision: Decision[Any]


@dataclass
class Model:
    counters: dict[tuple[str, str], Counter] = field(default_factory=dict)

    def used(self, name: str, subject: str, t: float) -> Decimal:
        counter = self.counters.get((name, subject), Counter())
        return counter.used if counter.window == window_of(name, t) else Decimal(0)

    def charge(self, name: str, subject: str, t: float, cost: Decimal) -> None:
        self.counters[(name, subject)] = Counter(
            window_of(name, t), self.used(name, subject, t) + cost
        )


class LimiterMachine(RuleBasedStateMachine):
    url = ""
    charges = Bundle("charges")

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.client = redis.Redis.from_url(self.url)
        self.limiter = Limiter(
            self.client,
            prefix=f"model{next(_runs)}",
            time_source="client",
            clock=lambda: self.now,
        )
        self.model = Model()

    def teardown(self) -> None:
        self.client.close()

    @rule(seconds=st.sampled_from([0.001, 0.5, 3, 9.999, 10, 30, 61]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(
        target=charges,
        name=st.sampled_from(list(SPECS)),
        subject=st.sampled_from(SUBJECTS),
        units=st.integers(0, 7),
        with_id=st.booleans(),
    )
    def hit(self, name: str, subject: str, units: int, with_id: bool) -> Any:
        cost = units if name == "rate" else Decimal(units) / 4  # 0.25 AUD steps
        request_id = f"r{next(_runs)}" if with_id else None
        limit = SPECS[name].limit
        used = self.model.used(name, subject, self.now)
        decision = self.limiter.hit(SPECS[name], subject, cost, request_id=request_id)

        fits = used + cost <= limit
        assert decision.allowed == fits
        if fits:
            self.model.charge(name, subject, self.now, Decimal(cost))
        assert decision.used == self.model.used(name, subject, self.now)
        assert decision.remaining == max(limit - decision.used, 0)
        if fits or cost > limit:
            assert decision.retry_after is None
        else:
            assert decision.retry_after is not None
            assert decision.retry_after > timedelta(0)
        if fits and request_id:
            return Charge(name, subject, cost, request_id, decision)
        return None

    @rule(charge=charges)
    def replay_charges_nothing(self, charge: Charge | None) -> None:
        if charge is None:
            return
        # Re-send with the same id: the original decision, nothing charged.
        before = self.model.used(charge.name, charge.subject, self.now)
        again = self.limiter.hit(
            SPECS[charge.name],
            charge.subject,
            charge.cost,
            request_id=charge.request_id,
        )
        assert again == charge.decision
        assert self.model.used(charge.name, charge.subject, self.now) == before

    @rule(name=st.sampled_from(list(SPECS)), subject=st.sampled_from(SUBJECTS))
    def reset(self, name: str, subject: str) -> None:
        self.limiter.reset(SPECS[name], subject)
        self.model.counters.pop((name, subject), None)

    @invariant()
    def peek_agrees_with_the_model(self) -> None:
        for name, spec in SPECS.items():
            for subject in SUBJECTS:
                peeked = self.limiter.peek(spec, subject, cost=0)
                assert peeked.used == self.model.used(name, subject, self.now)
                assert peeked.allowed


def test_limiter_matches_the_model(server: Server) -> None:
    LimiterMachine.url = server.url
    run_state_machine_as_test(
        LimiterMachine,
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None),
    )

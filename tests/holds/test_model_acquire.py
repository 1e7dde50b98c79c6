"""A Hypothesis state machine: acquire over several subjects against a pure model.

The limiter runs with ``time_source="client"`` and a clock the machine
controls, on every server kind and on the cluster, where the subjects'
slots are spread over the nodes. The model knows nothing of scripts,
groups or undos: an acquire either charges every hit or none, and each
hit's limit alone decides whether it fits.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from conftest import Target
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

from atomlimit import Acquired, Hit, Limiter, RateLimit, SpendCap

SPECS: dict[str, RateLimit | SpendCap] = {
    "short": RateLimit(name="short", limit=4, window=timedelta(seconds=10)),
    "long": RateLimit(name="long", limit=6, window=timedelta(seconds=30)),
    "cap": SpendCap(
        name="cap", limit=Decimal("1.00"), currency="AUD", window="minute", unit=Decimal("0.01")
    ),
}
LENGTHS = {"short": 10, "long": 30, "cap": 60}
SUBJECTS = ("alice", "bob", "global")
_runs = itertools.count()


def window_of(name: str, t: float) -> int:
    """The model's window index: epoch-aligned, independent of the library's code."""
    return int(t // LENGTHS[name])


def cost_of(name: str, units: int) -> Any:
    return Decimal(units) / 4 if name == "cap" else units  # the cap in 0.25 AUD steps


@dataclass
class Model:
    counters: dict[tuple[str, str], tuple[int, Decimal]] = field(default_factory=dict)

    def used(self, name: str, subject: str, t: float) -> Decimal:
        window, used = self.counters.get((name, subject), (-1, Decimal(0)))
        return used if window == window_of(name, t) else Decimal(0)

    def fits(self, name: str, subject: str, t: float, cost: Any) -> bool:
        return self.used(name, subject, t) + cost <= SPECS[name].limit

    def charge(self, name: str, subject: str, t: float, cost: Any) -> None:
        self.counters[(name, subject)] = (window_of(name, t), self.used(name, subject, t) + cost)


@dataclass
class Sent:
    """An acquire sent under a request id, and what it came to."""

    picks: list[tuple[str, str, int]]
    request_id: str
    result: Acquired[Any, Any]


picks_strategy = st.lists(
    st.tuples(st.sampled_from(list(SPECS)), st.sampled_from(SUBJECTS), st.integers(0, 3)),
    min_size=1,
    max_size=5,
    unique_by=lambda pick: (pick[0], pick[1]),
)


class AcquireMachine(RuleBasedStateMachine):
    client: Any = None
    sent = Bundle("sent")

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.limiter = Limiter(
            self.client,
            prefix=f"acqmodel{next(_runs)}",
            time_source="client",
            clock=lambda: self.now,
        )
        self.model = Model()

    def hits(self, picks: list[tuple[str, str, int]]) -> list[Hit[Any]]:
        return [Hit(SPECS[name], subject, cost_of(name, units)) for name, subject, units in picks]

    def check(
        self, picks: list[tuple[str, str, int]], request_id: str | None
    ) -> Acquired[Any, Any]:
        """Acquire ``picks`` and check the result against the model; charge the model."""
        hits = self.hits(picks)
        fits = [self.model.fits(n, s, self.now, cost_of(n, u)) for n, s, u in picks]
        result = self.limiter.acquire(hits, request_id=request_id)

        assert result.allowed == all(fits)
        assert [d.allowed for d in result.decisions] == fits
        if result.allowed:
            assert result.denied_by is None
            for name, subject, units in picks:
                self.model.charge(name, subject, self.now, cost_of(name, units))
            assert [d.granted for d in result.decisions] == [h.cost for h in hits]
        else:
            assert result.denied_by is hits[fits.index(False)]
            assert all(d.granted == 0 for d in result.decisions)
        # After an allowed acquire, usage includes the charge; after a denied
        # one, it is as it was.
        used = [self.model.used(n, s, self.now) for n, s, _ in picks]
        assert [d.used for d in result.decisions] == used
        return result

    @rule(seconds=st.sampled_from([0.001, 0.5, 3, 9.999, 10, 30, 61]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(picks=picks_strategy)
    def acquire(self, picks: list[tuple[str, str, int]]) -> None:
        self.check(picks, None)

    @rule(target=sent, picks=picks_strategy)
    def acquire_with_id(self, picks: list[tuple[str, str, int]]) -> Sent:
        request_id = f"r{next(_runs)}"
        return Sent(picks, request_id, self.check(picks, request_id))

    @rule(sent=sent)
    def resend(self, sent: Sent) -> None:
        if sent.result.allowed:
            # A charged request is replayed: the same decisions, nothing charged.
            again = self.limiter.acquire(self.hits(sent.picks), request_id=sent.request_id)
            assert again.allowed
            assert again.decisions == sent.result.decisions
        else:
            # A denied one left no record: it is evaluated afresh.
            sent.result = self.check(sent.picks, sent.request_id)

    @rule(name=st.sampled_from(list(SPECS)), subject=st.sampled_from(SUBJECTS))
    def reset(self, name: str, subject: str) -> None:
        self.limiter.reset(SPECS[name], subject)
        self.model.counters.pop((name, subject), None)

    @invariant()
    def every_usage_agrees_with_the_model(self) -> None:
        for name, spec in SPECS.items():
            for subject in SUBJECTS:
                peeked = self.limiter.peek(spec, subject, 0)
                assert peeked.used == self.model.used(name, subject, self.now), (name, subject)


def test_acquire_matches_the_model(target: Target) -> None:
    with target.sync_client() as client:
        AcquireMachine.client = client
        run_state_machine_as_test(
            AcquireMachine,
            settings=settings(max_examples=60, stateful_step_count=25, deadline=None),
        )

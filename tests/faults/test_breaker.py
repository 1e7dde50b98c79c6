"""The circuit breaker as a state machine, fed plain instants and errors.

No server and no clock: the breaker's rules are a function of when things
happen and what failed, so every case is a list of plain values. The
breaker against real servers that die, stall and come back is in
tests/faults/test_outages.py.
"""

from __future__ import annotations

import errno
import logging
import threading
from datetime import timedelta
from typing import Any

import pytest
import redis
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from atomlimit import BackendError, Breaker, BreakerOpen, InvalidInput, RateLimit
from atomlimit._circuit import NORMAL, PROBE, Circuit
from atomlimit._failures import backend_failure, outage
from atomlimit._sync.guard import SyncGuard as Guard

BREAKER = Breaker(failures=3, cool_down=timedelta(seconds=2))
ALLOW = RateLimit(name="api", limit=10, window="minute", on_backend_error="allow")


def timeout() -> BackendError:
    """What the runner raises when a reply did not come in time."""
    err = BackendError("hit_fixed_window: TimeoutError: Timeout reading from socket")
    err.__cause__ = redis.exceptions.TimeoutError("Timeout reading from socket")
    return err


def refused() -> BackendError:
    """What the runner raises when nothing listens on the port."""
    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        except OSError as err:
            raise redis.exceptions.ConnectionError(
                "Error 111 connecting. Connection refused."
            ) from err
    except redis.exceptions.ConnectionError as cause:
        wrapped = BackendError(f"hit_fixed_window: ConnectionError: {cause}")
        wrapped.__cause__ = cause
        return wrapped


def error_reply() -> BackendError:
    """An error reply from a server that works: a wrong type at one key."""
    err = BackendError("hit_fixed_window: ResponseError: WRONGTYPE")
    err.__cause__ = redis.exceptions.ResponseError("WRONGTYPE Operation against a key")
    return err


def fail(circuit: Circuit, ticket: int, now: float, error: BackendError) -> Any:
    counts, was_refused = outage(error)
    assert counts
    return circuit.failed(ticket, now, error, was_refused)


# --------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------


def test_opens_after_the_configured_failures_in_a_row_and_not_before() -> None:
    circuit = Circuit(BREAKER)
    moves = [fail(circuit, circuit.admit(t), t, timeout()) for t in (0.0, 0.1, 0.2)]

    assert moves == [None, None, ("closed", "open")]
    assert circuit.state == "open"


def test_a_success_between_failures_starts_the_count_again() -> None:
    circuit = Circuit(BREAKER)
    for t in (0.0, 0.1):
        fail(circuit, circuit.admit(t), t, timeout())
    circuit.succeeded(circuit.admit(0.2))
    for t in (0.3, 0.4):
        fail(circuit, circuit.admit(t), t, timeout())

    assert circuit.state == "closed"
    assert circuit.failures == 2


def test_a_refused_connection_opens_it_at_once() -> None:
    circuit = Circuit(BREAKER)

    assert fail(circuit, circuit.admit(0.0), 0.0, refused()) == ("closed", "open")


def test_error_replies_do_not_count_the_server_answered() -> None:
    assert outage(error_reply()) == (False, False)
    assert outage(timeout()) == (True, False)
    assert outage(refused()) == (True, True)


def test_redis_errors_that_escape_the_runner_count_as_backend_failures() -> None:
    err = redis.exceptions.ConnectionError("Error 111 connecting")
    wrapped = backend_failure(err, "acquire")

    assert isinstance(wrapped, BackendError)
    assert wrapped.applied == "unknown"
    assert wrapped.__cause__ is err
    assert backend_failure(InvalidInput("bad"), "hit") is None


# --------------------------------------------------------------------------
# Open, then a probe
# --------------------------------------------------------------------------


def opened_at(now: float) -> Circuit:
    circuit = Circuit(BREAKER)
    fail(circuit, circuit.admit(now), now, refused())
    return circuit


def test_while_open_every_call_fails_fast_unsent_with_the_failure_as_cause() -> None:
    circuit = opened_at(10.0)

    with pytest.raises(BreakerOpen) as caught:
        circuit.admit(11.9)

    assert caught.value.applied == "no"
    assert isinstance(caught.value, BackendError)
    assert isinstance(caught.value.__cause__, BackendError)
    assert "next try goes to the server in 0.10 s" in str(caught.value)


def test_after_the_cool_down_one_call_probes_and_the_others_still_fail_fast() -> None:
    circuit = opened_at(10.0)

    probe = circuit.admit(12.0)
    with pytest.raises(BreakerOpen):
        circuit.admit(12.1)

    assert probe == PROBE
    assert circuit.state == "half_open"


def test_a_probe_that_succeeds_closes_it() -> None:
    circuit = opened_at(10.0)

    moved = circuit.succeeded(circuit.admit(12.0))

    assert moved == ("half_open", "closed")
    assert circuit.admit(12.0) == NORMAL
    assert circuit.failures == 0


def test_a_probe_that_fails_opens_it_for_another_cool_down() -> None:
    circuit = opened_at(10.0)

    moved = fail(circuit, circuit.admit(12.0), 12.5, timeout())

    assert moved == ("half_open", "open")
    with pytest.raises(BreakerOpen):
        circuit.admit(14.4)
    assert circuit.admit(14.5) == PROBE


def test_a_probe_that_ends_without_an_answer_passes_its_turn_at_once() -> None:
    # Cancelled, or refused as bad input before anything was sent: the
    # server was not asked, so the next call probes without waiting again.
    circuit = opened_at(10.0)

    moved = circuit.abandoned(circuit.admit(12.0))

    assert moved == ("half_open", "open")
    assert circuit.admit(12.01) == PROBE


def test_late_answers_of_calls_admitted_before_it_opened_change_nothing() -> None:
    circuit = Circuit(BREAKER)
    early = [circuit.admit(0.0) for _ in range(5)]
    fail(circuit, circuit.admit(0.1), 0.1, refused())

    moves = [circuit.succeeded(early[0]), fail(circuit, early[1], 0.3, timeout())]

    assert moves == [None, None]
    assert circuit.state == "open"
    assert circuit.opened_at == 0.1


def test_threads_racing_to_fail_open_it_once_and_racing_to_probe_get_one_probe() -> None:
    circuit = Circuit(Breaker(failures=3, cool_down=timedelta(seconds=2)))
    start = threading.Barrier(16)
    moves: list[Any] = []
    tickets: list[Any] = []

    def fail_once() -> None:
        ticket = circuit.admit(0.0)
        start.wait()
        moves.append(fail(circuit, ticket, 0.0, timeout()))

    def try_to_probe() -> None:
        start.wait()
        try:
            tickets.append(circuit.admit(5.0))
        except BreakerOpen:
            tickets.append(None)

    for work in (fail_once, try_to_probe):
        threads = [threading.Thread(target=work) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert [m for m in moves if m] == [("closed", "open")]
    assert tickets.count(PROBE) == 1
    assert tickets.count(None) == 15


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"failures": 0}, "Breaker.failures"),
        ({"failures": 1001}, "Breaker.failures"),
        ({"failures": True}, "Breaker.failures"),
        ({"cool_down": 2.0}, "Breaker.cool_down"),
        ({"cool_down": timedelta(0)}, "Breaker.cool_down"),
        ({"cool_down": timedelta(hours=2)}, "Breaker.cool_down"),
    ],
)
def test_breaker_settings_are_bounded(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        Breaker(**options)


# --------------------------------------------------------------------------
# The rules, against a model, over any order of events
# --------------------------------------------------------------------------


class BreakerRules(RuleBasedStateMachine):
    """Any interleaving of calls, answers and time keeps the breaker's promises:

    - closed, it admits every call;
    - it opens only after ``failures`` consecutive failures or a refusal;
    - open, it admits nothing before the cool-down ends, then exactly one probe;
    - only the probe's answer closes it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.circuit = Circuit(Breaker(failures=3, cool_down=timedelta(seconds=1)))
        self.now = 0.0
        self.tickets: list[int] = []
        self.probes_out = 0
        self.streak = 0

    @rule(seconds=st.floats(min_value=0, max_value=1.5))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def a_call_starts(self) -> None:
        state, opened = self.circuit.state, self.circuit.opened_at
        try:
            ticket = self.circuit.admit(self.now)
        except BreakerOpen:
            assert state != "closed"
            assert state == "half_open" or self.now < opened + 1
            return
        if ticket == PROBE:
            assert state == "open"
            assert self.now >= opened + 1
            self.probes_out += 1
        else:
            assert state == "closed"
        self.tickets.append(ticket)

    @precondition(lambda self: self.tickets)
    @rule(data=st.data(), kind=st.sampled_from(["ok", "timeout", "refused", "reply", "gone"]))
    def a_call_ends(self, data: st.DataObject, kind: str) -> None:
        ticket = self.tickets.pop(data.draw(st.integers(0, len(self.tickets) - 1)))
        before = self.circuit.state
        if kind == "gone":
            self.circuit.abandoned(ticket)
        elif kind in ("ok", "reply"):
            self.circuit.succeeded(ticket)
        else:
            fail(self.circuit, ticket, self.now, timeout() if kind == "timeout" else refused())
        after = self.circuit.state
        if ticket == PROBE:
            self.probes_out -= 1
            assert after == ("closed" if kind in ("ok", "reply") else "open")
        elif before != "closed":
            assert after == before  # a call from before it opened changes nothing
        elif kind == "timeout":
            self.streak += 1
            assert (after == "open") == (self.streak >= 3)
        elif kind == "refused":
            assert after == "open"
        elif kind in ("ok", "reply"):
            self.streak = 0
        if after != "closed":
            self.streak = 0

    @invariant()
    def at_most_one_probe_is_out(self) -> None:
        assert self.probes_out in (0, 1)
        assert (self.probes_out == 1) == (self.circuit.state == "half_open")


TestBreakerRules = BreakerRules.TestCase


# --------------------------------------------------------------------------
# The guard around a call: policy, observers, log, with a manual clock
# --------------------------------------------------------------------------


class Ticking:
    """A manual monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_decision(self, decision: Any, operation: str, seconds: float) -> None:
        self.events.append(("decision", operation, decision.degraded, decision.allowed))

    def on_error(self, error: BackendError, operation: str, seconds: float) -> None:
        self.events.append(("error", operation, type(error).__name__))

    def on_breaker(self, old: str, new: str) -> None:
        self.events.append(("breaker", old, new))


def failing(error: BackendError) -> Any:
    def send(step: object) -> Any:
        raise error

    return send


def test_the_guard_fails_fast_once_open_and_the_policy_decides_each_call() -> None:
    clock, seen = Ticking(), Recorder()
    guard = Guard(BREAKER, [seen], now=lambda: 1_800_000_000_000_000, clock=clock)
    sent: list[object] = []

    def send(step: object) -> Any:
        sent.append(step)
        raise timeout()

    decisions = [guard.decide("hit", ALLOW, 1, send, n) for n in range(5)]

    assert sent == [0, 1, 2]  # the last two never reached the server
    assert all(d.allowed and d.degraded for d in decisions)
    assert [type(d.cause).__name__ for d in decisions] == ["BackendError"] * 3 + ["BreakerOpen"] * 2
    assert ("breaker", "closed", "open") in seen.events
    assert seen.events.count(("error", "hit", "BreakerOpen")) == 2
    assert seen.events.count(("decision", "hit", True, True)) == 5


def test_the_guard_closes_the_breaker_when_the_probe_gets_an_answer() -> None:
    clock, seen = Ticking(), Recorder()
    guard = Guard(BREAKER, [seen], now=lambda: 1_800_000_000_000_000, clock=clock)
    guard.decide("hit", ALLOW, 1, failing(refused()), None)
    clock.now += 2.0

    answer = guard.run("peek", lambda step: "answered", None)

    assert answer == "answered"
    breaker_moves = [e for e in seen.events if e[0] == "breaker"]
    assert breaker_moves == [
        ("breaker", "closed", "open"),
        ("breaker", "open", "half_open"),
        ("breaker", "half_open", "closed"),
    ]


def test_an_observer_that_raises_never_changes_a_decision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def on_decision(self, *args: object) -> None:
            raise RuntimeError("dashboard down")

        on_error = on_decision

    guard = Guard(None, [Broken()], now=lambda: 1_800_000_000_000_000)

    with caplog.at_level(logging.WARNING, logger="atomlimit"):
        decision = guard.decide("hit", ALLOW, 1, failing(timeout()), None)

    assert decision.allowed
    assert decision.degraded
    assert "observer Broken.on_error raised; ignored" in caplog.text
    assert "RuntimeError: dashboard down" in caplog.text


def test_degraded_decisions_are_logged_at_most_every_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Ticking()
    guard = Guard(None, [], now=lambda: 1_800_000_000_000_000, clock=clock)
    with caplog.at_level(logging.WARNING, logger="atomlimit"):
        for _ in range(100):
            guard.decide("hit", ALLOW, 1, failing(timeout()), None)
            clock.now += 0.25  # 100 calls over 25 s

    warnings = [
        r.getMessage() for r in caplog.records if "deciding without the server" in r.message
    ]
    assert len(warnings) == 3  # at 0 s, 10 s and 20 s
    assert "39 more such decisions since the last warning" in warnings[1]


def test_without_a_breaker_every_call_tries_the_server() -> None:
    guard = Guard(None, [], now=lambda: 1_800_000_000_000_000)
    sent: list[object] = []

    def send(step: object) -> Any:
        sent.append(step)
        raise refused()

    for n in range(10):
        guard.decide("hit", ALLOW, 1, send, n)

    assert sent == list(range(10))


def test_a_call_refused_as_bad_input_is_raised_and_gives_up_the_probe() -> None:
    clock = Ticking()
    guard = Guard(BREAKER, [], now=lambda: 1_800_000_000_000_000, clock=clock)
    guard.decide("hit", ALLOW, 1, failing(refused()), None)
    clock.now += 2.0

    def bad(step: object) -> Any:
        raise InvalidInput("no")

    with pytest.raises(InvalidInput):
        guard.decide("hit", ALLOW, 1, bad, None)
    probe_again = guard.run("hit", lambda step: "answered", None)

    assert probe_again == "answered"

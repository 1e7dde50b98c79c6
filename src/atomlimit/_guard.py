"""The guard around each of a limiter's calls: breaker, failure policy, reports.

Every call a shell makes goes through its limiter's `Guard`:

1. The circuit breaker (`atomlimit._circuit`) admits it, or refuses it
   at once with `BreakerOpen` once the backend has failed
   enough (`atomlimit._failures` says which failures count).
2. The call is sent (the runner's business), within the async limiter's
   deadline if it has one.
3. A backend failure, or the breaker's refusal, goes to the limit's failure
   policy (``on_backend_error``): raised, or turned into a degraded
   [`Decision`][atomlimit.Decision] (`atomlimit._degraded`), logged at
   most every `LOG_EVERY` seconds. A ``"local"`` policy decides by the
   guard's in-process limiter (`atomlimit._local_limits`), one per limiter.
4. Observers hear of each decision and each failure.

The guard's drivers, which send the call, are written once in
`atomlimit._async.guard` and generated for sync code into
`atomlimit._sync.guard`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from atomlimit._circuit import NORMAL, PROBE, Circuit, Transition
from atomlimit._degraded import degraded, degraded_acquisition, degraded_many
from atomlimit._errors import BackendError, BreakerOpen, InvalidInput
from atomlimit._failures import backend_failure, outage
from atomlimit._inputs import show
from atomlimit._local_limits import DEFAULT_LOCAL_SUBJECTS, LOCAL_POLICIES, LocalLimits
from atomlimit._reporting import LOG_EVERY, check_observers
from atomlimit._reporting import Throttle as _Throttle
from atomlimit.breaker import Breaker
from atomlimit.decision import Decision
from atomlimit.observe import Observer, Operation

if TYPE_CHECKING:
    from atomlimit._acquire import Acquisition
    from atomlimit._engine import Engine
    from atomlimit._runner_steps import Call
    from atomlimit.specs import Hit, Spec

T = TypeVar("T")

_log = logging.getLogger("atomlimit")


_DECIDING = frozenset({"hit", "hit_many", "peek", "refund", "acquire", "reserve", "lease"})
_NAMES = {"lease_renew": "renew", "lease_release": "release"}
_LOCAL_CHARGES = frozenset({"hit", "reserve", "lease"})
"""Operations that charge the in-process limiter under a "local" policy: a
reservation's estimate and a lease count there as a hit does."""


def _decisions_in(result: Any) -> Sequence[Decision[Any]]:
    if isinstance(result, Decision):
        return (result,)
    if isinstance(result, list):
        return result
    found = getattr(result, "decisions", None)  # acquire's result
    if found is not None:
        return found  # type: ignore[no-any-return]
    decision = getattr(result, "decision", None)  # a lease or a reservation
    return (decision,) if isinstance(decision, Decision) else ()


# --------------------------------------------------------------------------
# The guard: one per limiter
# --------------------------------------------------------------------------


class Guard:
    """Wraps each of a limiter's calls in its breaker, policy and observers.

    Everything but the sending: a limiter's driver (``SyncGuard`` or
    ``AsyncGuard``, subclasses of this one) admits each call here, sends
    it, and reports here what came of it.

    Args:
        breaker: None for no breaker.
        observers: checked with `check_observers`.
        now: the limiter's clock in epoch microseconds, for degraded decisions.
        deadline: seconds an async call may take; None for no limit.
        clock: monotonic seconds, for the breaker's cool-down and the log.
        local_subjects: most (limit, subject) entries the in-process limiter
            of ``"local"`` policies keeps.
    """

    __slots__ = (
        "_circuit",
        "_clock",
        "_log",
        "_observer_log",
        "_observers",
        "deadline",
        "local",
        "now",
    )

    def __init__(
        self,
        breaker: Breaker | None,
        observers: Sequence[Observer],
        now: Callable[[], int],
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        local_subjects: int = DEFAULT_LOCAL_SUBJECTS,
    ) -> None:
        if breaker is not None and not isinstance(breaker, Breaker):
            raise InvalidInput(f"breaker must be a Breaker or None, got {show(breaker)}")
        self._circuit = None if breaker is None else Circuit(breaker)
        self._observers = check_observers(observers)
        self.now = now
        self.deadline = deadline
        self._clock = clock
        self._log = _Throttle(LOG_EVERY)
        self._observer_log = _Throttle(LOG_EVERY)
        self.local = LocalLimits(local_subjects)
        """What ``"local"`` policies decide by while the server cannot be asked.
        Kept when the server is back, never sent to it: a later outage in the
        same window goes on counting against the same share."""

    @property
    def observed(self) -> bool:
        """Whether any observer is told of this limiter's decisions."""
        return bool(self._observers)

    def _admit(self) -> int | BreakerOpen:
        """The breaker's ticket for a call, or its refusal."""
        circuit = self._circuit
        if circuit is None or circuit.state == "closed":
            return NORMAL
        try:
            ticket = circuit.admit(self._clock())
        except BreakerOpen as refusal:
            return refusal
        if ticket == PROBE:
            self._moved(("open", "half_open"))
        return ticket

    def _succeeded(self, operation: Operation, ticket: int, started: float, result: Any) -> None:
        circuit = self._circuit
        if circuit is not None and (ticket or circuit.failures):
            self._moved(circuit.succeeded(ticket))
        if self._observers and operation in _DECIDING:
            seconds = time.perf_counter() - started
            for decision in _decisions_in(result):
                self._report_decision(decision, operation, seconds)

    def answered(
        self, operation: Operation, decisions: Sequence[Decision[Any]], started: float
    ) -> None:
        """Report decisions answered without the server (the deny cache's).

        The breaker neither admits nor hears of them: no server was asked.
        """
        if self._observers:
            seconds = time.perf_counter() - started
            for decision in decisions:
                self._report_decision(decision, operation, seconds)

    def _failed(
        self,
        operation: Operation,
        ticket: int,
        started: float,
        err: BaseException,
        step: Any,
        fallback: Callable[[BackendError], T] | None,
    ) -> T:
        """Report a failed call, then raise it or hand it to the policy."""
        error = self._deadline_passed(err, step, operation) or backend_failure(err, operation)
        circuit = self._circuit
        if error is None:
            if circuit is not None:
                self._moved(circuit.abandoned(ticket))
            raise err
        if circuit is not None:
            counts, refused = outage(error)
            if counts:
                self._moved(circuit.failed(ticket, self._clock(), error, refused))
            else:
                self._moved(circuit.succeeded(ticket))  # the server answered
        return self._fall_back(operation, error, started, fallback)

    def _fall_back(
        self,
        operation: Operation,
        error: BackendError,
        started: float,
        fallback: Callable[[BackendError], T] | None,
    ) -> T:
        """Report ``error``, then raise it, or return what the policy makes of it."""
        seconds = time.perf_counter() - started
        self._report_error(error, operation, seconds)
        if fallback is None:
            raise error
        result = fallback(error)  # raises when the policy is "raise"
        if self._observers:
            for decision in _decisions_in(result):
                self._report_decision(decision, operation, seconds)
        return result

    def _deadline_passed(
        self, err: BaseException, step: Any, operation: str
    ) -> BackendError | None:
        """The deadline's TimeoutError as a BackendError; None for any other error.

        The runners turn every timeout of their own into a BackendError, so
        a bare TimeoutError out of a guarded call is the deadline's.
        """
        if self.deadline is None or type(err) is not TimeoutError:
            return None
        error = BackendError(
            f"{operation}: no reply within the limiter's deadline of {self.deadline:g} s",
            applied="unknown",
            request_id=getattr(step, "request_id", None),
        )
        error.__cause__ = err
        return error

    def _policy(
        self,
        spec: Spec[Any],
        cost: object,
        operation: Operation,
        subject: str | None = None,
        partial: bool = False,
    ) -> Callable[[BackendError], Decision[Any]]:
        charge = operation == "hit"
        local = None
        if subject is not None and spec.on_backend_error in LOCAL_POLICIES:
            local, charge = self.local, operation in _LOCAL_CHARGES
            if operation == "refund":
                # A refund may be of a charge the server made: giving it back
                # here would let this process admit more than its share.
                cost = 0

        def decide(cause: BackendError) -> Decision[Any]:
            decision = degraded(spec, cost, charge, self.now(), cause, local, subject, partial)
            self.note_degraded(f"{spec.name!r} {spec.on_backend_error}", cause)
            return decision

        return decide

    def many(self, hits: Sequence[Hit[Any]]) -> Callable[[BackendError], list[Decision[Any]]]:
        """The policy of a ``hit_many`` (`degraded_many`)."""

        def decide(cause: BackendError) -> list[Decision[Any]]:
            decisions = degraded_many(hits, self.now(), cause, self.local)
            self.note_degraded(", ".join(repr(hit.limit.name) for hit in hits[:3]), cause)
            return decisions

        return decide

    def acquisition(
        self, engine: Engine, hits: Sequence[Hit[Any]]
    ) -> Callable[[BackendError], Acquisition]:
        """The policy of an ``acquire`` (`degraded_acquisition`)."""

        def decide(cause: BackendError) -> Acquisition:
            # A model call's hits are made when read (atomlimit._model_call).
            made = hits if isinstance(hits, list | tuple) else list(hits)
            found = degraded_acquisition(engine, made, self.now(), cause, self.local)
            self.note_degraded(
                ", ".join(repr(d.spec.name) for d in found.decisions[:3] if d.spec), cause
            )
            return found

        return decide

    def note_degraded(self, names: str, cause: BackendError) -> None:
        """Log, at most every LOG_EVERY seconds, that decisions are being made
        without the server."""
        skipped = self._log.due(self._clock())
        if skipped is None:
            return
        more = f"; {skipped} more such decisions since the last warning" if skipped else ""
        _log.warning(
            "deciding without the server, by each limit's on_backend_error (%s): %s%s",
            names,
            cause,
            more,
        )

    def _report_decision(
        self, decision: Decision[Any], operation: Operation, seconds: float
    ) -> None:
        for observer in self._observers:
            try:
                observer.on_decision(decision, operation, seconds)
            except Exception:
                self._observer_failed(observer, "on_decision")

    def _report_error(self, error: BackendError, operation: Operation, seconds: float) -> None:
        for observer in self._observers:
            try:
                observer.on_error(error, operation, seconds)
            except Exception:
                self._observer_failed(observer, "on_error")

    def _moved(self, transition: Transition) -> None:
        if transition is None:
            return
        old, new = transition
        if new == "open" and old == "closed":
            circuit = self._circuit
            assert circuit is not None
            _log.warning(
                "circuit breaker open: calls fail fast for %g s, then one probes the server "
                "(last failure: %s)",
                circuit.breaker.cool_down.total_seconds(),
                circuit.last,
            )
        elif new == "closed":
            _log.info("circuit breaker closed: the server answered the probe")
        for observer in self._observers:
            on_breaker = getattr(observer, "on_breaker", None)
            if on_breaker is None:
                continue
            try:
                on_breaker(old, new)
            except Exception:
                self._observer_failed(observer, "on_breaker")

    def _observer_failed(self, observer: object, method: str) -> None:
        # Watching must never change a decision; the traceback says why. An
        # observer that fails on every call would log on every call, so the
        # log is throttled like degraded decisions are.
        skipped = self._observer_log.due(self._clock())
        if skipped is None:
            return
        more = f"; {skipped} more observer failures since the last warning" if skipped else ""
        _log.warning(
            "observer %s.%s raised; ignored%s",
            type(observer).__name__,
            method,
            more,
            exc_info=True,
        )


def operation_of(call: Call) -> Operation:
    """What observers hear a handle's call as: the method that sent it."""
    name = call.script.name
    return cast("Operation", _NAMES.get(name, name))

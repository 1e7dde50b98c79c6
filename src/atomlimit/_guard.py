"""What a limiter does when the backend fails: the breaker, the policy, the reports.

Every call a shell makes goes through its limiter's `Guard`:

1. The circuit breaker (`Circuit`) admits it, or refuses it at once
   with [`BreakerOpen`][atomlimit.errors.BreakerOpen] once the backend has failed enough.
2. The call is sent (the runner's business), within the async limiter's
   deadline if it has one.
3. A backend failure, or the breaker's refusal, goes to the limit's failure
   policy (``on_backend_error``): raised, or turned into a degraded
   [`Decision`][atomlimit.Decision] (`degraded`), logged at most every
   `LOG_EVERY` seconds.
4. Observers hear of each decision and each failure.

The state machine and the policy are pure: they take instants and errors as
plain values, so they are tested without a server or a clock. The guard's
two drivers, sync and async, read alike and differ only in ``await``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atomlimit._checks import check_int, show
from atomlimit.decision import Decision
from atomlimit.errors import BackendError, BreakerOpen, InvalidInput
from atomlimit.observe import BreakerState, Observer, Operation

if TYPE_CHECKING:
    from atomlimit._acquire import Acquisition
    from atomlimit._engine import Engine
    from atomlimit._steps import Call
    from atomlimit.specs import Hit, Spec

T = TypeVar("T")

_log = logging.getLogger("atomlimit")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ALLOWING: Final = ("allow", "allow_unmetered_spend")
"""Policies that admit while the server cannot be asked."""
LOG_EVERY = 10.0
"""Seconds between two warnings about degraded decisions from one limiter:
an outage makes one per call, and a log line per call would bury the rest."""
MAX_OBSERVERS = 16
MAX_FAILURES = 1_000
MAX_COOL_DOWN = timedelta(hours=1)
MAX_DEADLINE = timedelta(minutes=10)
_MS = timedelta(milliseconds=1)
_CHAIN = 8
"""Causes followed when looking for a refused connection."""

# Failures that say the server cannot be reached or did not answer in time.
# An error reply (a wrong type, out of memory) comes fast from a server that
# works, and one bad key must not stop every call, so it does not count.
_OUTAGES = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    OSError,
    TimeoutError,
)


# --------------------------------------------------------------------------
# The circuit breaker
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Breaker:
    """When a limiter stops asking a failing server, and for how long.

    After ``failures`` backend failures in a row (a connection that fails,
    a reply that times out), or a single connection the server refused, the
    breaker opens: every call fails fast with
    [`BreakerOpen`][atomlimit.errors.BreakerOpen], which the limit's ``on_backend_error``
    policy raises or turns into a degraded decision, without paying a
    timeout. After ``cool_down`` one call goes through as a probe: if the
    server answers, the breaker closes; if not, it stays open for another
    ``cool_down``.

    Args:
        failures: consecutive failures that open the breaker, 1 to 1,000.
        cool_down: how long it stays open before a probe, 1 ms to 1 hour.
    """

    failures: int = 5
    cool_down: timedelta = timedelta(seconds=2)

    def __post_init__(self) -> None:
        check_int(self.failures, "Breaker.failures", 1, MAX_FAILURES)
        if not isinstance(self.cool_down, timedelta) or not _MS <= self.cool_down <= MAX_COOL_DOWN:
            raise InvalidInput(
                f"Breaker.cool_down must be a timedelta from 1 ms to 1 hour, "
                f"got {show(self.cool_down)}"
            )


NORMAL, PROBE = 0, 1
"""Tickets: how the breaker let a call through."""

Transition = tuple[BreakerState, BreakerState] | None


class Circuit:
    """One limiter's breaker state, shared by all of its calls and threads.

    Pure: every method takes the instant it happens at (monotonic seconds)
    and returns the transition it made, if any, for the caller to report.
    """

    __slots__ = ("_lock", "breaker", "failures", "last", "opened_at", "probing", "state")

    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker
        self.state: BreakerState = "closed"
        self.failures = 0
        """Consecutive failures while closed."""
        self.opened_at = 0.0
        self.probing = False
        self.last: BackendError | None = None
        """The failure that opened the breaker, chained to its refusals."""
        self._lock = threading.Lock()

    def admit(self, now: float) -> int:
        """A ticket for a call starting at ``now``, or
        [`BreakerOpen`][atomlimit.errors.BreakerOpen].

        Open, and the cool-down over: the first caller becomes the probe,
        and the others keep failing fast until the probe's answer is in.
        """
        with self._lock:
            state = self.state
            if state == "closed":
                return NORMAL
            wait = self.opened_at + self.breaker.cool_down.total_seconds() - now
            if state == "open" and wait <= 0:
                self.state, self.probing = "half_open", True
                return PROBE
        raise self._refusal(max(wait, 0.0))

    def succeeded(self, ticket: int) -> Transition:
        """The server answered a call admitted with ``ticket``."""
        if ticket == NORMAL:
            # A late success while open proves little about the server now:
            # only the probe closes the breaker.
            if self.failures and self.state == "closed":
                with self._lock:
                    self.failures = 0
            return None
        with self._lock:
            self.state, self.probing, self.failures, self.last = "closed", False, 0, None
        return ("half_open", "closed")

    def failed(self, ticket: int, now: float, error: BackendError, refused: bool) -> Transition:
        """A call admitted with ``ticket`` met a backend failure at ``now``."""
        with self._lock:
            if ticket == PROBE:
                self.state, self.probing, self.opened_at, self.last = "open", False, now, error
                return ("half_open", "open")
            if self.state != "closed":
                return None  # already open: a call that started before
            self.failures += 1
            if self.failures < self.breaker.failures and not refused:
                return None
            self.state, self.opened_at, self.last = "open", now, error
            return ("closed", "open")

    def abandoned(self, ticket: int) -> Transition:
        """A call ended without telling whether the server works (cancelled,
        refused as bad input): a probe's turn passes to the next call."""
        if ticket != PROBE:
            return None
        with self._lock:
            self.state, self.probing = "open", False
        return ("half_open", "open")

    def _refusal(self, wait: float) -> BreakerOpen:
        count = self.breaker.failures
        err = BreakerOpen(
            f"the circuit breaker is open after the backend failed "
            f"({count} failure{'s' if count != 1 else ''} in a row, or a refused "
            f"connection); the next try goes to the server in {wait:.2f} s",
            applied="no",
        )
        err.__cause__ = self.last
        return err


def outage(error: BackendError) -> tuple[bool, bool]:
    """Whether ``error`` counts against the breaker, and whether the server
    refused the connection (which opens it at once)."""
    cause: BaseException | None = error.__cause__
    counts = isinstance(cause, _OUTAGES)
    refused = False
    for _ in range(_CHAIN):
        if cause is None:
            break
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            refused = True
            break
        cause = cause.__cause__ or cause.__context__
    return counts or refused, refused


def backend_failure(err: BaseException, operation: str) -> BackendError | None:
    """``err`` as a BackendError if it is a backend failure, else None.

    The runners wrap what redis-py raises; a few paths (a cluster client
    learning its layout) let redis-py's own errors through, and a deadline
    arrives as a TimeoutError, so these are wrapped here, cause chained.
    """
    if isinstance(err, BackendError):
        return err
    if isinstance(err, RedisError | RedisClusterException | OSError):
        wrapped = BackendError(f"{operation}: {type(err).__name__}: {err}", applied="unknown")
        wrapped.__cause__ = err
        return wrapped
    return None


# --------------------------------------------------------------------------
# The failure policy
# --------------------------------------------------------------------------


def degraded(
    spec: Spec[Any], cost: object, charge: bool, now_us: int, cause: BackendError
) -> Decision[Any]:
    """The decision ``spec``'s policy makes without the server, or ``cause`` raised.

    Nothing is known of the subject's usage, so ``used`` and ``held`` are
    zero. Admitted: ``remaining`` is the whole limit, and ``granted`` the
    cost of a charge (what the caller may go on to use, though nothing was
    recorded). Denied: ``remaining`` and ``granted`` are zero. A shadow limit
    still admits, marked ``shadow_denied`` when its policy denies.
    ``retry_after`` is None: nobody knows when the server is back.
    """
    policy = spec.on_backend_error
    if policy == "raise":
        raise cause
    codec = spec._codec
    allows = policy in ALLOWING
    shadow = bool(getattr(spec, "shadow", False))
    granted = codec.amount(codec.units(cost)) if charge and (allows or shadow) else codec.zero
    return Decision(
        allowed=allows or shadow,
        limit=codec.limit_value,
        used=codec.zero,
        remaining=codec.amount(codec.limit) if allows else codec.zero,
        reset_at=_EPOCH + timedelta(microseconds=now_us),
        retry_after=None,
        granted=granted,
        held=codec.zero,
        shadow_denied=shadow and not allows,
        spec=spec,
        degraded=True,
        cause=cause,
    )


def strictest(specs: Sequence[Spec[Any]]) -> str:
    """The policy that wins among several limits: raise, then deny, then allow."""
    policies = {spec.on_backend_error for spec in specs}
    if "raise" in policies:
        return "raise"
    return "deny" if "deny" in policies else "allow"


def degraded_many(
    hits: Sequence[Hit[Any]], now_us: int, cause: BackendError
) -> list[Decision[Any]]:
    """``hit_many`` without the server: each hit by its own policy, or raise if
    any hit's policy raises (one failed round trip fails every hit)."""
    if strictest([hit.limit for hit in hits]) == "raise":
        raise cause
    return [degraded(hit.limit, hit.cost, True, now_us, cause) for hit in hits]


def degraded_acquisition(
    engine: Engine, hits: Sequence[Hit[Any]], now_us: int, cause: BackendError
) -> Acquisition:
    """``acquire`` without the server: the strictest policy among the hits wins.

    Any hit whose policy raises makes the acquire raise. Otherwise each hit
    is decided by its own policy and the acquire is allowed only if all of
    them allow; ``denied_by`` is the first that denies. The hits are checked
    as the acquire would have checked them, so bad input still raises
    InvalidInput. What this send charged was already undone by the acquire
    (or the failure left it unknown, never admitted twice).
    """
    from atomlimit._acquire import Acquisition, _groups, _hit_item
    from atomlimit._checks import check_hits
    from atomlimit._engine import request_part

    items = [_hit_item(engine, hit) for hit in check_hits(hits)]
    _groups(items)  # the same refusals as a sent acquire: a limit named twice
    if strictest([item.spec for item in items]) == "raise":
        raise cause
    decisions = [degraded(i.spec, i.codec.amount(i.units), True, now_us, cause) for i in items]
    allowed = all(d.allowed for d in decisions)
    denied_at = None if allowed else next(n for n, d in enumerate(decisions) if not d.allowed)
    held = [(i, d) for i, d in zip(items, decisions, strict=True) if i.holds] if allowed else []
    rid = request_part(engine.record_ttl(None)[0])
    return Acquisition(allowed, decisions, denied_at, held, rid)


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


class _Throttle:
    """At most one log line per ``every`` seconds, counting the ones held back."""

    __slots__ = ("_at", "_every", "_lock", "_skipped")

    def __init__(self, every: float) -> None:
        self._every = every
        self._at = -float("inf")
        self._skipped = 0
        self._lock = threading.Lock()

    def due(self, now: float) -> int | None:
        """How many were held back since the last line, if one is due now; else None."""
        with self._lock:
            if now - self._at < self._every:
                self._skipped += 1
                return None
            skipped, self._skipped, self._at = self._skipped, 0, now
            return skipped


def check_observers(observers: object) -> tuple[Observer, ...]:
    """``observers`` as a tuple, each with ``on_decision`` and ``on_error``."""
    if not isinstance(observers, list | tuple) or len(observers) > MAX_OBSERVERS:
        raise InvalidInput(
            f"observers must be a list or tuple of at most {MAX_OBSERVERS} observers, "
            f"got {show(observers)}"
        )
    for observer in observers:
        for method in ("on_decision", "on_error"):
            if not callable(getattr(observer, method, None)):
                raise InvalidInput(
                    f"an observer needs an {method} method (see atomlimit.observe.Observer), "
                    f"got {show(observer)}"
                )
    return tuple(observers)


def check_deadline(deadline: object) -> float | None:
    """A per-call deadline in seconds, from a timedelta of 1 ms to 10 minutes, or None."""
    if deadline is None:
        return None
    if isinstance(deadline, timedelta) and _MS <= deadline <= MAX_DEADLINE:
        return deadline.total_seconds()
    raise InvalidInput(
        f"deadline must be None or a timedelta from 1 ms to 10 minutes, got {show(deadline)}"
    )


_DECIDING = frozenset({"hit", "hit_many", "peek", "refund", "acquire", "reserve", "lease"})
_NAMES = {"lease_renew": "renew", "lease_release": "release"}


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

    Args:
        breaker: None for no breaker.
        observers: checked with `check_observers`.
        now: the limiter's clock in epoch microseconds, for degraded decisions.
        deadline: seconds an async call may take; None for no limit.
        clock: monotonic seconds, for the breaker's cool-down and the log.
    """

    __slots__ = ("_circuit", "_clock", "_log", "_observer_log", "_observers", "deadline", "now")

    def __init__(
        self,
        breaker: Breaker | None,
        observers: Sequence[Observer],
        now: Callable[[], int],
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
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

    # -- sync ------------------------------------------------------------------

    def run(
        self,
        operation: Operation,
        send: Callable[[Any], T],
        step: Any,
        fallback: Callable[[BackendError], T] | None = None,
    ) -> T:
        """``send(step)``, guarded; a backend failure goes to ``fallback``
        (the policy), or is raised when there is none."""
        started = time.perf_counter()
        ticket = self._admit()
        if isinstance(ticket, BreakerOpen):
            return self._fall_back(operation, ticket, started, fallback)
        try:
            result = send(step)
        except BaseException as err:
            return self._failed(operation, ticket, started, err, step, fallback)
        self._succeeded(operation, ticket, started, result)
        return result

    def decide(
        self,
        operation: Operation,
        spec: Spec[Any],
        cost: object,
        send: Callable[[Any], Any],
        step: Any,
    ) -> Any:
        """`run` for a call that returns one Decision of ``spec``."""
        return self.run(operation, send, step, self._policy(spec, cost, operation == "hit"))

    # -- async -----------------------------------------------------------------

    async def arun(
        self,
        operation: Operation,
        send: Callable[[Any], Awaitable[T]],
        step: Any,
        fallback: Callable[[BackendError], T] | None = None,
    ) -> T:
        """The async twin of `run`, within the deadline."""
        started = time.perf_counter()
        ticket = self._admit()
        if isinstance(ticket, BreakerOpen):
            # Failing fast must still suspend: a task that retries in a loop
            # would otherwise never let the event loop run anything else.
            await asyncio.sleep(0)
            return self._fall_back(operation, ticket, started, fallback)
        try:
            if self.deadline is None:
                result = await send(step)
            else:
                async with asyncio.timeout(self.deadline):
                    result = await send(step)
        except BaseException as err:
            return self._failed(operation, ticket, started, err, step, fallback)
        self._succeeded(operation, ticket, started, result)
        return result

    async def adecide(
        self,
        operation: Operation,
        spec: Spec[Any],
        cost: object,
        send: Callable[[Any], Awaitable[Any]],
        step: Any,
    ) -> Any:
        """The async twin of `decide`."""
        return await self.arun(operation, send, step, self._policy(spec, cost, operation == "hit"))

    # -- shared ----------------------------------------------------------------

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
        self, spec: Spec[Any], cost: object, charge: bool
    ) -> Callable[[BackendError], Decision[Any]]:
        def decide(cause: BackendError) -> Decision[Any]:
            decision = degraded(spec, cost, charge, self.now(), cause)
            self.note_degraded(f"{spec.name!r} {spec.on_backend_error}", cause)
            return decision

        return decide

    def many(self, hits: Sequence[Hit[Any]]) -> Callable[[BackendError], list[Decision[Any]]]:
        """The policy of a ``hit_many`` (`degraded_many`)."""

        def decide(cause: BackendError) -> list[Decision[Any]]:
            decisions = degraded_many(hits, self.now(), cause)
            self.note_degraded(", ".join(repr(hit.limit.name) for hit in hits[:3]), cause)
            return decisions

        return decide

    def acquisition(
        self, engine: Engine, hits: Sequence[Hit[Any]]
    ) -> Callable[[BackendError], Acquisition]:
        """The policy of an ``acquire`` (`degraded_acquisition`)."""

        def decide(cause: BackendError) -> Acquisition:
            found = degraded_acquisition(engine, hits, self.now(), cause)
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


class GuardedRunner:
    """A sync runner as a lease or reservation handle sees it: every call guarded."""

    __slots__ = ("_guard", "_runner")

    def __init__(self, guard: Guard, runner: Any) -> None:
        self._guard = guard
        self._runner = runner

    def now(self) -> int:
        return self._runner.now()  # type: ignore[no-any-return]

    def run(self, call: Call) -> Any:
        name = call.script.name
        operation: Any = _NAMES.get(name, name)
        return self._guard.run(operation, self._runner.run, call)


class AsyncGuardedRunner(GuardedRunner):
    """The async twin of `GuardedRunner`."""

    __slots__ = ()

    async def run(self, call: Call) -> Any:
        name = call.script.name
        operation: Any = _NAMES.get(name, name)
        return await self._guard.arun(operation, self._runner.run, call)

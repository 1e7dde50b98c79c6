"""Watching a limiter: the observer protocol, and adapters for metrics systems.

A limiter calls each of its ``observers`` after every call: once per
[`Decision`][atomlimit.Decision] it returns
([`Observer.on_decision`][atomlimit.observe.Observer.on_decision]), once per backend failure
([`Observer.on_error`][atomlimit.observe.Observer.on_error]), and on every change of its circuit
breaker ([`Observer.on_breaker`][atomlimit.observe.Observer.on_breaker]). An observer that raises is
logged and skipped: watching a limiter can never change what it decides.

Two adapters ship here, each behind its own extra, imported only when built,
so ``import atomlimit`` pulls in neither library:

- [`PrometheusObserver`][atomlimit.observe.PrometheusObserver]
  (``pip install 'atomlimit[prometheus]'``);
- [`OpenTelemetryObserver`][atomlimit.observe.OpenTelemetryObserver]
  (``pip install 'atomlimit[otel]'``).

Subjects never become labels or attributes: there is one per client, user or
API key, without bound, and each label value is a time series kept forever
by the metrics backend. Limit names, kinds, operations and outcomes are
fixed by the code, so their combinations stay few.
"""

from __future__ import annotations

import itertools
import math
import re
import weakref
from typing import Any, Literal, Protocol, runtime_checkable

from atomlimit._errors import BackendError, BreakerOpen, InvalidInput
from atomlimit._inputs import show
from atomlimit._version import __version__
from atomlimit.decision import Decision
from atomlimit.specs import Concurrency, RateLimit, Spec, SpendCap

__all__ = [
    "BreakerState",
    "Observer",
    "OpenTelemetryObserver",
    "Operation",
    "Outcome",
    "PrometheusObserver",
    "error_class",
    "kind_of",
    "outcome_of",
]

BreakerState = Literal["closed", "open", "half_open"]
"""``closed``: calls go to the server. ``open``: calls fail fast, without
the server. ``half_open``: one probe call is on its way to the server."""

Operation = Literal[
    "hit",
    "hit_many",
    "peek",
    "refund",
    "reset",
    "acquire",
    "reserve",
    "settle",
    "release",
    "lease",
    "renew",
]
"""The limiter method a report is about; a handle's ``release`` of a lease
or a reservation reports as ``"release"``."""

Outcome = Literal["allowed", "denied", "shadow_denied", "degraded"]

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Seconds: a decision takes about a round trip (0.1 to 1 ms on a LAN), a
failing one up to the client's socket timeout."""


@runtime_checkable
class Observer(Protocol):
    """What a limiter tells its observers. Subclass it to inherit no-op methods.

    Each method is called on the caller's thread (or task), right after the
    call it reports on, so it should be quick: count, don't send. A method
    that raises is logged on the ``atomlimit`` logger and skipped.
    """

    def on_decision(self, decision: Decision[Any], operation: Operation, seconds: float) -> None:
        """A call returned ``decision``, after ``seconds`` in the limiter.

        Called once per Decision: an ``acquire`` or ``hit_many`` of three
        hits reports three, each with the whole call's time. A degraded
        decision (``decision.degraded``) is reported here too, after
        [`on_error`][atomlimit.observe.Observer.on_error] reported its cause. A
        denial answered by the limiter's deny cache (``decision.cached``) is
        reported here too, though no server was asked.
        """

    def on_error(self, error: BackendError, operation: Operation, seconds: float) -> None:
        """A call met a backend failure: ``error`` was raised, or the limit's
        failure policy turned it into a degraded decision.

        A call the circuit breaker refused reports a
        [`BreakerOpen`][atomlimit.errors.BreakerOpen], which costs no round trip.
        """

    def on_breaker(self, old: BreakerState, new: BreakerState) -> None:
        """The limiter's circuit breaker went from ``old`` to ``new``."""


def outcome_of(decision: Decision[Any]) -> Outcome:
    """The outcome a decision counts as: degraded first, then shadow, then allowed."""
    if decision.degraded:
        return "degraded"
    if decision.shadow_denied:
        return "shadow_denied"
    return "allowed" if decision.allowed else "denied"


def kind_of(spec: Spec[Any] | None) -> str:
    """``"fixed_window"``, ``"gcra"``, ..., ``"spend_cap"`` or ``"concurrency"``."""
    if isinstance(spec, RateLimit):
        return spec.algorithm
    if isinstance(spec, SpendCap):
        return "spend_cap"
    if isinstance(spec, Concurrency):
        return "concurrency"
    return "unknown"


def error_class(error: BackendError) -> str:
    """A backend error's class for counting: what redis-py raised, by name.

    ``BreakerOpen`` for a call the breaker refused; ``ConnectionError``,
    ``TimeoutError``, ``ResponseError`` and so on for what the client met.
    A bounded set: the exception classes of redis-py and Python.
    """
    if isinstance(error, BreakerOpen):
        return "BreakerOpen"
    cause = error.__cause__
    return type(cause).__name__ if cause is not None else type(error).__name__


# --------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------


class PrometheusObserver(Observer):
    """Counts decisions and errors, times calls, and tracks breakers, in Prometheus.

    Metrics, with ``namespace`` (default ``atomlimit``) in front:

    - ``atomlimit_decisions_total{limit, kind, operation, outcome}``: one per
      Decision; ``outcome`` is ``allowed``, ``denied``, ``shadow_denied`` or
      ``degraded``.
    - ``atomlimit_backend_errors_total{operation, error}``: one per backend
      failure; ``error`` is the class of what went wrong
      ([`error_class`][atomlimit.observe.error_class]), ``BreakerOpen`` for a call failed fast.
    - ``atomlimit_decision_seconds{operation}``: a histogram of the time a
      call took, once per Decision.
    - ``atomlimit_breakers_open``: how many limiters reporting here have
      their breaker open or half-open right now.
    - ``atomlimit_breaker_transitions_total{state}``: breaker changes, by
      the state entered.
    - ``atomlimit_cached_denials_total{limit, kind, operation}``: denials
      answered by the limiter's [`DenyCache`][atomlimit.DenyCache] without a
      round trip; each is also counted in ``decisions_total`` as ``denied``.

    ``registry`` defaults to prometheus-client's global registry. Observers
    built on one registry with one namespace share its metrics, so every
    limiter of an application may build its own; the first one's
    ``buckets`` are the ones used.
    """

    def __init__(
        self,
        registry: Any = None,
        *,
        namespace: str = "atomlimit",
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        try:
            import prometheus_client as prom
        except ImportError as err:
            raise ImportError(
                "PrometheusObserver needs prometheus-client: pip install 'atomlimit[prometheus]'"
            ) from err
        _check_namespace(namespace)
        _check_buckets(buckets)
        registry = prom.REGISTRY if registry is None else registry
        made = _PROMETHEUS.setdefault(registry, {})
        metrics = made.get(namespace)
        if metrics is None:
            metrics = made[namespace] = _prometheus_metrics(prom, registry, namespace, buckets)
        (
            self._decisions,
            self._errors,
            self._seconds,
            self._open,
            self._transitions,
            self._cached,
        ) = metrics
        # Resolving a labelled child costs more than counting with it, and
        # the label sets are few: keep the children.
        self._counted: dict[tuple[str, str, str, str], Any] = {}
        self._timed: dict[str, Any] = {}

    def on_decision(self, decision: Decision[Any], operation: Operation, seconds: float) -> None:
        spec = decision.spec
        name = spec.name if spec is not None else ""
        labels = (name, kind_of(spec), operation, outcome_of(decision))
        counter = self._counted.get(labels)
        if counter is None:
            counter = self._counted[labels] = self._decisions.labels(*labels)
        counter.inc()
        if decision.cached:
            self._cached.labels(*labels[:3]).inc()
        timer = self._timed.get(operation)
        if timer is None:
            timer = self._timed[operation] = self._seconds.labels(operation)
        timer.observe(seconds)

    def on_error(self, error: BackendError, operation: Operation, seconds: float) -> None:
        self._errors.labels(operation, error_class(error)).inc()

    def on_breaker(self, old: BreakerState, new: BreakerState) -> None:
        self._transitions.labels(new).inc()
        if old == "closed":
            self._open.inc()
        elif new == "closed":
            self._open.dec()


_PROMETHEUS: weakref.WeakKeyDictionary[Any, dict[str, tuple[Any, ...]]] = (
    weakref.WeakKeyDictionary()
)
"""The metrics made on each registry, by namespace: a registry takes each
name once, so a second observer on it must reuse the first one's."""


_NAMESPACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_BUCKETS = 64


def _check_namespace(namespace: object) -> None:
    if type(namespace) is not str or not _NAMESPACE.fullmatch(namespace):
        raise InvalidInput(
            "namespace must be 1-64 letters, digits or _, not starting with a digit, "
            f"got {show(namespace)}"
        )


def _check_buckets(buckets: object) -> None:
    """Histogram bounds: 1 to 64 finite seconds, each above the last."""
    if (
        isinstance(buckets, tuple)
        and 0 < len(buckets) <= MAX_BUCKETS
        and all(type(b) in (int, float) and 0 < b < math.inf for b in buckets)
        and all(a < b for a, b in itertools.pairwise(buckets))
    ):
        return
    raise InvalidInput(
        f"buckets must be a tuple of 1 to {MAX_BUCKETS} increasing positive seconds, "
        f"got {show(buckets)}"
    )


def _prometheus_metrics(
    prom: Any, registry: Any, namespace: str, buckets: tuple[float, ...]
) -> tuple[Any, ...]:
    where = {"namespace": namespace, "registry": registry}
    return (
        prom.Counter(
            "decisions",
            "Decisions made, by limit, kind, operation and outcome.",
            ["limit", "kind", "operation", "outcome"],
            **where,
        ),
        prom.Counter(
            "backend_errors",
            "Backend failures met by limiter calls, by operation and error class.",
            ["operation", "error"],
            **where,
        ),
        prom.Histogram(
            "decision_seconds",
            "Time a limiter call took, once per decision it made.",
            ["operation"],
            buckets=buckets,
            **where,
        ),
        prom.Gauge(
            "breakers_open", "Limiters whose circuit breaker is open or half-open.", **where
        ),
        prom.Counter(
            "breaker_transitions",
            "Circuit breaker changes, by the state entered.",
            ["state"],
            **where,
        ),
        prom.Counter(
            "cached_denials",
            "Denials answered by the deny cache, without the server.",
            ["limit", "kind", "operation"],
            **where,
        ),
    )


# --------------------------------------------------------------------------
# OpenTelemetry
# --------------------------------------------------------------------------


class OpenTelemetryObserver(Observer):
    """The same measurements as [`PrometheusObserver`][atomlimit.observe.PrometheusObserver],
    through the OpenTelemetry metrics API.

    Instruments, on ``meter`` (default: ``metrics.get_meter("atomlimit")``,
    from whatever meter provider the application set up):
    ``atomlimit.decisions`` (counter; attributes ``limit``, ``kind``,
    ``operation``, ``outcome``), ``atomlimit.backend_errors`` (counter;
    ``operation``, ``error``), ``atomlimit.decision.duration`` (histogram,
    seconds; ``operation``), ``atomlimit.breakers_open`` (up-down
    counter) and ``atomlimit.cached_denials`` (counter; ``limit``, ``kind``,
    ``operation``: denials the deny cache answered). Subjects are never
    attributes.
    """

    def __init__(self, meter: Any = None) -> None:
        try:
            from opentelemetry import metrics
        except ImportError as err:
            raise ImportError(
                "OpenTelemetryObserver needs opentelemetry-api: pip install 'atomlimit[otel]'"
            ) from err
        if meter is None:
            meter = metrics.get_meter("atomlimit", __version__)
        self._decisions = meter.create_counter(
            "atomlimit.decisions", unit="{decision}", description="Decisions made."
        )
        self._errors = meter.create_counter(
            "atomlimit.backend_errors", unit="{error}", description="Backend failures met."
        )
        self._seconds = meter.create_histogram(
            "atomlimit.decision.duration", unit="s", description="Time a limiter call took."
        )
        self._open = meter.create_up_down_counter(
            "atomlimit.breakers_open",
            unit="{breaker}",
            description="Limiters whose circuit breaker is open or half-open.",
        )
        self._cached = meter.create_counter(
            "atomlimit.cached_denials",
            unit="{decision}",
            description="Denials answered by the deny cache, without the server.",
        )

    def on_decision(self, decision: Decision[Any], operation: Operation, seconds: float) -> None:
        spec = decision.spec
        where = {
            "limit": spec.name if spec is not None else "",
            "kind": kind_of(spec),
            "operation": operation,
        }
        self._decisions.add(1, {**where, "outcome": outcome_of(decision)})
        if decision.cached:
            self._cached.add(1, where)
        self._seconds.record(seconds, {"operation": operation})

    def on_error(self, error: BackendError, operation: Operation, seconds: float) -> None:
        self._errors.add(1, {"operation": operation, "error": error_class(error)})

    def on_breaker(self, old: BreakerState, new: BreakerState) -> None:
        if old == "closed":
            self._open.add(1)
        elif new == "closed":
            self._open.add(-1)

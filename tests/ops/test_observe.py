"""Observers on real servers: what a limiter reports, and the Prometheus and
OpenTelemetry adapters that count it."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from typing import Any

import pytest
import redis
from conftest import Target
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Server, free_port

from atomlimit import (
    AsyncLimiter,
    BackendError,
    Breaker,
    Concurrency,
    Hit,
    InvalidInput,
    Limiter,
    RateLimit,
    SpendCap,
)
from atomlimit.observe import (
    Observer,
    OpenTelemetryObserver,
    PrometheusObserver,
    error_class,
    kind_of,
)

DAILY = RateLimit(name="enrichment", limit=2, window="day", on_backend_error="deny")
SMOOTH = RateLimit(name="api", limit=10, window="minute", algorithm="gcra")
CAP = SpendCap(name="ai", limit=Decimal("1.00"), currency="AUD", window="day")
SLOTS = Concurrency(name="openai", limit=1)
SHADOW = RateLimit(name="new-daily", limit=1, window="day", shadow=True)


class Recorder(Observer):
    """Keeps what it is told."""

    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, bool, float]] = []
        self.errors: list[tuple[str, str]] = []
        self.breaker: list[tuple[str, str]] = []

    def on_decision(self, decision: Any, operation: Any, seconds: float) -> None:
        self.decisions.append((operation, decision.spec.name, decision.allowed, seconds))

    def on_error(self, error: BackendError, operation: Any, seconds: float) -> None:
        self.errors.append((operation, error_class(error)))

    def on_breaker(self, old: Any, new: Any) -> None:
        self.breaker.append((old, new))


def dead_client() -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))


# --------------------------------------------------------------------------
# What a limiter reports
# --------------------------------------------------------------------------


def test_every_decision_is_reported_once_with_its_operation(target: Target) -> None:
    seen = Recorder()
    with target.sync_client() as client:
        limiter = Limiter(client, observers=[seen])
        limiter.hit(DAILY, "s")
        limiter.peek(DAILY, "s")
        limiter.refund(DAILY, "s", 1)
        limiter.acquire([Hit(DAILY, "s"), Hit(CAP, "s", Decimal("0.10"))])
        limiter.hit_many([Hit(DAILY, "s"), Hit(DAILY, "t")])
        with limiter.lease(SLOTS, "s") as lease:
            lease.renew()
        limiter.reserve(CAP, "s", Decimal("0.20")).settle(Decimal("0.10"))
        limiter.reset(DAILY, "s")

    operations = [(op, name) for op, name, _, _ in seen.decisions]
    assert operations == [
        ("hit", "enrichment"),
        ("peek", "enrichment"),
        ("refund", "enrichment"),
        ("acquire", "enrichment"),
        ("acquire", "ai"),
        ("hit_many", "enrichment"),
        ("hit_many", "enrichment"),
        ("lease", "openai"),
        ("reserve", "ai"),
    ]
    assert all(seconds > 0 for *_, seconds in seen.decisions)
    assert seen.errors == []


async def test_async_limiter_reports_alike(target: Target) -> None:
    seen = Recorder()
    async with target.async_client() as client:
        limiter = AsyncLimiter(client, observers=[seen])
        await limiter.hit(DAILY, "s")
        await limiter.acquire([Hit(SMOOTH, "s"), Hit(CAP, "s", Decimal("0.10"))])
        async with limiter.lease(SLOTS, "s"):
            pass

    assert [(op, name) for op, name, _, _ in seen.decisions] == [
        ("hit", "enrichment"),
        ("acquire", "api"),
        ("acquire", "ai"),
        ("lease", "openai"),
    ]


def test_failures_degraded_decisions_and_the_breaker_are_reported() -> None:
    seen = Recorder()
    with dead_client() as client:
        limiter = Limiter(client, observers=[seen], breaker=Breaker(failures=2))
        limiter.hit(DAILY, "s")
        limiter.hit(DAILY, "s")
        with pytest.raises(BackendError):
            limiter.hit(SMOOTH, "s")

    assert seen.errors == [
        ("hit", "ConnectionError"),
        ("hit", "BreakerOpen"),
        ("hit", "BreakerOpen"),
    ]
    assert [(op, allowed) for op, _, allowed, _ in seen.decisions] == [
        ("hit", False),
        ("hit", False),
    ]
    assert seen.breaker == [("closed", "open")]


def test_an_observer_that_raises_is_logged_and_the_decision_stands(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Observer):
        def on_decision(self, decision: Any, operation: Any, seconds: float) -> None:
            raise ZeroDivisionError("bad dashboard")

    with server.client() as client:
        limiter = Limiter(client, observers=[Broken()])
        decisions = [limiter.hit(DAILY, "s") for _ in range(3)]

    assert [d.allowed for d in decisions] == [True, True, False]
    # Logged once: an observer failing on every call must not flood the log.
    assert caplog.text.count("observer Broken.on_decision raised; ignored") == 1


# --------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------


def test_prometheus_counts_decisions_by_limit_kind_operation_and_outcome(server: Server) -> None:
    registry = CollectorRegistry()
    with server.client() as client:
        limiter = Limiter(client, observers=[PrometheusObserver(registry)])
        for _ in range(3):
            limiter.hit(DAILY, "client-42")
        limiter.hit(SHADOW, "client-42", cost=2)
        limiter.peek(CAP, "client-42")

    def decisions(limit: str, kind: str, operation: str, outcome: str) -> float | None:
        labels = {"limit": limit, "kind": kind, "operation": operation, "outcome": outcome}
        return registry.get_sample_value("atomlimit_decisions_total", labels)

    assert decisions("enrichment", "fixed_window", "hit", "allowed") == 2
    assert decisions("enrichment", "fixed_window", "hit", "denied") == 1
    assert decisions("new-daily", "fixed_window", "hit", "shadow_denied") == 1
    assert decisions("ai", "spend_cap", "peek", "allowed") == 1
    assert registry.get_sample_value("atomlimit_decision_seconds_count", {"operation": "hit"}) == 4


def test_prometheus_counts_errors_degraded_decisions_and_open_breakers() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    with dead_client() as client:
        limiter = Limiter(client, observers=[observer], breaker=Breaker(failures=1))
        for _ in range(3):
            limiter.hit(DAILY, "s")
        open_now = registry.get_sample_value("atomlimit_breakers_open")

    def errors(error: str) -> float | None:
        labels = {"operation": "hit", "error": error}
        return registry.get_sample_value("atomlimit_backend_errors_total", labels)

    degraded = {"limit": "enrichment", "kind": "fixed_window", "operation": "hit"}
    assert errors("ConnectionError") == 1
    assert errors("BreakerOpen") == 2
    assert (
        registry.get_sample_value("atomlimit_decisions_total", {**degraded, "outcome": "degraded"})
        == 3
    )
    assert open_now == 1
    assert registry.get_sample_value("atomlimit_breaker_transitions_total", {"state": "open"}) == 1


def test_prometheus_breaker_gauge_returns_to_zero_when_the_probe_succeeds() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    observer.on_breaker("closed", "open")
    observer.on_breaker("open", "half_open")
    halfway = registry.get_sample_value("atomlimit_breakers_open")
    observer.on_breaker("half_open", "closed")

    assert halfway == 1
    assert registry.get_sample_value("atomlimit_breakers_open") == 0


def test_observers_on_one_registry_share_its_metrics(server: Server) -> None:
    registry = CollectorRegistry()
    with server.client() as client:
        first = Limiter(client, observers=[PrometheusObserver(registry)])
        second = Limiter(client, observers=[PrometheusObserver(registry)])
        first.hit(DAILY, "a")
        second.hit(DAILY, "b")

    labels = {"limit": "enrichment", "kind": "fixed_window", "operation": "hit"}
    counted = registry.get_sample_value(
        "atomlimit_decisions_total", {**labels, "outcome": "allowed"}
    )
    assert counted == 2


@pytest.mark.parametrize(
    "options",
    [
        {"namespace": "my-app"},
        {"namespace": ""},
        {"namespace": "x" * 65},
        {"buckets": ()},
        {"buckets": (0.5, 0.1)},
        {"buckets": (0.1, float("inf"))},
        {"buckets": [0.1]},
        {"buckets": tuple(range(1, 66))},
    ],
)
def test_prometheus_options_are_bounded(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        PrometheusObserver(CollectorRegistry(), **options)


def test_subjects_never_become_label_values(server: Server) -> None:
    registry = CollectorRegistry()
    subjects = [f"customer-{n}" for n in range(50)]
    with server.client() as client:
        limiter = Limiter(client, observers=[PrometheusObserver(registry)])
        for subject in subjects:
            limiter.hit(DAILY, subject)

    values = {
        value
        for metric in registry.collect()
        for sample in metric.samples
        for value in sample.labels.values()
    }
    assert not values & set(subjects)
    series = [s for m in registry.collect() for s in m.samples if s.name.endswith("_total")]
    assert len(series) == 1  # fifty subjects, one time series


# --------------------------------------------------------------------------
# OpenTelemetry
# --------------------------------------------------------------------------


def test_opentelemetry_counts_the_same_things(server: Server) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    with server.client() as client:
        limiter = Limiter(client, observers=[OpenTelemetryObserver(meter)])
        for _ in range(3):
            limiter.hit(DAILY, "client-42")

    data = reader.get_metrics_data()
    assert data is not None
    metrics = {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    counted = {
        (point.attributes["outcome"], point.value)
        for point in metrics["atomlimit.decisions"].data.data_points
    }
    assert counted == {("allowed", 2), ("denied", 1)}
    (timed,) = metrics["atomlimit.decision.duration"].data.data_points
    assert timed.count == 3
    assert all(
        "client-42" not in str(p.attributes)
        for p in metrics["atomlimit.decisions"].data.data_points
    )


# --------------------------------------------------------------------------
# Cached denials
# --------------------------------------------------------------------------


def test_cached_denials_are_reported_as_denials_of_their_operation(server: Server) -> None:
    seen = Recorder()
    cached: list[bool] = []

    class Cached(Observer):
        def on_decision(self, decision: Any, operation: Any, seconds: float) -> None:
            cached.append(decision.cached)

    with server.client() as client:
        limiter = Limiter(client, observers=[seen, Cached()], deny_cache=100)
        for _ in range(4):
            limiter.hit(DAILY, "s")
        limiter.hit_many([Hit(DAILY, "s"), Hit(DAILY, "t")])

    assert [(op, allowed) for op, _, allowed, _ in seen.decisions] == [
        ("hit", True),
        ("hit", True),
        ("hit", False),
        ("hit", False),
        ("hit_many", False),
        ("hit_many", True),
    ]
    assert cached == [False, False, False, True, True, False]
    assert seen.errors == []


def test_prometheus_counts_cached_denials_beside_every_denial(server: Server) -> None:
    registry = CollectorRegistry()
    with server.client() as client:
        limiter = Limiter(client, observers=[PrometheusObserver(registry)], deny_cache=100)
        for _ in range(5):
            limiter.hit(DAILY, "client-42")

    where = {"limit": "enrichment", "kind": "fixed_window", "operation": "hit"}
    denied = registry.get_sample_value("atomlimit_decisions_total", {**where, "outcome": "denied"})
    assert denied == 3
    assert registry.get_sample_value("atomlimit_cached_denials_total", where) == 2


def test_opentelemetry_counts_cached_denials(server: Server) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    with server.client() as client:
        limiter = Limiter(client, observers=[OpenTelemetryObserver(meter)], deny_cache=100)
        for _ in range(5):
            limiter.hit(DAILY, "client-42")

    data = reader.get_metrics_data()
    assert data is not None
    (metric,) = [
        metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "atomlimit.cached_denials"
    ]
    (point,) = metric.data.data_points
    assert point.value == 2
    assert dict(point.attributes) == {
        "limit": "enrichment",
        "kind": "fixed_window",
        "operation": "hit",
    }


# --------------------------------------------------------------------------
# Imports
# --------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_atomlimit_works_without_either_metrics_library() -> None:
    # None in sys.modules makes an import fail as if the package were absent.
    done = _python(
        "import sys\n"
        "sys.modules['prometheus_client'] = None\n"
        "sys.modules['opentelemetry'] = None\n"
        "import atomlimit, atomlimit.observe\n"
        "try:\n"
        "    atomlimit.observe.PrometheusObserver()\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )

    assert done.returncode == 0, done.stderr
    assert "pip install 'atomlimit[prometheus]'" in done.stdout


def test_importing_atomlimit_does_not_import_prometheus_client() -> None:
    done = _python("import sys, atomlimit; print('prometheus_client' in sys.modules)")

    assert done.stdout.strip() == "False"


def test_kinds_are_named_for_the_reader() -> None:
    assert [kind_of(spec) for spec in (DAILY, SMOOTH, CAP, SLOTS, None)] == [
        "fixed_window",
        "gcra",
        "spend_cap",
        "concurrency",
        "unknown",
    ]

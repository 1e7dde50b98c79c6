"""The Celery app that tests/workers/test_celery.py runs real workers with.

A worker imports it as ``celery -A celery_tasks`` with tests/workers on
PYTHONPATH, and finds the suite's server in ``ATOMLIMIT_TEST_URL``: db 0
holds the limits and what the tasks record, db 1 is the broker and db 2
the result backend. The tasks record what they did in Redis, for the test
to count; nothing here reads a clock to decide anything.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import redis
from celery import Celery
from celery.signals import task_retry, worker_process_init, worker_ready

from atomlimit import Concurrency, Limiter, RateLimit, SpendCap
from atomlimit.celery import LimitedTask, TaskLimiter

URL_VARIABLE = "ATOMLIMIT_TEST_URL"
WINDOW = timedelta(seconds=2)
PER_WINDOW = 50
VISIBILITY = 20
"""The broker's visibility timeout in seconds: the countdown cap is half of it."""

app = Celery("celery_tasks")
limits = TaskLimiter(lambda: Limiter.from_url(os.environ[URL_VARIABLE]))

FLEET = RateLimit(name="fleet", limit=PER_WINDOW, window=WINDOW)
HOURLY = RateLimit(name="hourly", limit=1, window="hour")
SLOTS = Concurrency(name="slots", limit=3, lease=timedelta(seconds=60))
ONE = Concurrency(name="one", limit=1, lease=timedelta(seconds=60))
BUDGET = SpendCap(name="budget", limit=Decimal("10.00"), currency="USD", window="day")


def db(url: str, number: int) -> str:
    """``url`` with its database number replaced."""
    return url.rsplit("/", 1)[0] + f"/{number}"


def configure(url: str) -> None:
    """Point the app at the server the test started."""
    os.environ[URL_VARIABLE] = url
    app.conf.update(
        broker_url=db(url, 1),
        result_backend=db(url, 2),
        broker_transport_options={"visibility_timeout": VISIBILITY},
        task_default_queue="atomlimit-tests",
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )


if URL_VARIABLE in os.environ:
    configure(os.environ[URL_VARIABLE])

_local = threading.local()


def store() -> redis.Redis:
    """This process's client for recording, made after any fork."""
    client: redis.Redis | None = getattr(_local, "client", None)
    if client is None or getattr(_local, "pid", None) != os.getpid():
        client = redis.Redis.from_url(os.environ[URL_VARIABLE])
        _local.client, _local.pid = client, os.getpid()
    return client


# -- what the workers report -------------------------------------------------


@worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    store().incr("workers-ready")


@worker_process_init.connect
def _child_started(**_: Any) -> None:
    # A sleep or wait reached from atomlimit's own code is counted: a
    # denial must end by scheduling a retry, never by sleeping in the pool.
    sleep = time.sleep

    def counted_sleep(seconds: float) -> None:
        caller = inspect.currentframe()
        module = (
            ""
            if caller is None or caller.f_back is None
            else caller.f_back.f_globals.get("__name__", "")
        )
        if str(module).startswith("atomlimit"):
            store().incr("slept")
        sleep(seconds)

    time.sleep = counted_sleep
    store().incr("children")


@task_retry.connect
def _retried(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    acquired = getattr(request, "atomlimit", None)
    if acquired is None or acquired.allowed:
        return
    decision = next(d for d in acquired.decisions if not d.allowed)
    store().rpush(
        f"denials:{sender.name}",
        json.dumps(
            {
                "countdown": reason.when,
                "retry_after": decision.retry_after.total_seconds(),
                "retries": request.retries,
            }
        ),
    )


# -- the tasks -----------------------------------------------------------------

_ENTER = """
local running = redis.call('INCR', KEYS[1])
if running > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], running)
end
return running
"""


def _busy(name: str) -> None:
    """Count this body as running, keep the highest count seen, and hold a while."""
    client = store()
    client.eval(_ENTER, 2, f"{name}:running", f"{name}:most")
    try:
        time.sleep(0.2)  # the body's own work: not a denial
    finally:
        client.decr(f"{name}:running")
        client.incr(f"{name}:done")


@app.task(bind=True)
@limits.limited(FLEET)
def fleet(self: Any, n: int) -> int:
    """Ran under the fleet-wide limit: counted by the window its decision names."""
    reset = self.request.atomlimit.decisions[0].reset_at
    store().incr(f"fleet:{reset.timestamp():.3f}")
    return n


@app.task(bind=True, rate_limit=f"{PER_WINDOW // WINDOW.seconds}/s")
def naive(self: Any, n: int) -> int:
    """Celery's own per-worker rate limit: counted by the server's window."""
    client = store()
    seconds, _ = client.time()
    client.incr(f"naive:{seconds // WINDOW.seconds}")
    return n


@app.task(bind=True)
@limits.limited(HOURLY, subject="far")
def far(self: Any) -> None:
    """Its second call is denied for up to an hour, past the countdown cap."""
    store().incr("far:ran")


@app.task(bind=True)
@limits.limited(SLOTS)
def capped(self: Any, n: int) -> None:
    _busy("capped")


@app.task(bind=True)
def uncapped(self: Any, n: int) -> None:
    _busy("uncapped")


@app.task(bind=True)
@limits.limited(ONE, subject="fails")
def fails(self: Any) -> None:
    store().incr("fails:ran")
    raise ValueError("the task's own failure")


@app.task(bind=True)
@limits.limited(ONE, subject="retries")
def retries_once(self: Any) -> None:
    """Retries itself once; the second attempt records the leases it sees held."""
    client = store()
    if self.request.retries == 0:
        client.incr("retries:first")
        raise self.retry(countdown=0.1)
    held = limits.limiter.peek(ONE, "retries").used
    client.rpush("retries:held", held)


@app.task(bind=True)
@limits.limited(ONE, subject="dies")
def dies(self: Any) -> None:
    store().incr("dies:ran")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(
    base=LimitedTask,
    limited=limits.limited(
        BUDGET,
        subject=lambda cost: "team",
        estimate=Decimal("1.00"),
        settle=lambda result: Decimal(result),
    ),
)
def spends(cost: str) -> str:
    """Held an estimate of 1.00 while it runs; settled at what it returns."""
    store().incr("spends:ran")
    return cost


@app.task(bind=True)
@limits.limited(HOURLY, subject="waits")
def waits(self: Any) -> None:
    """The control for the sleep counter: this one does wait, in the worker."""
    limits.limiter.wait(RateLimit(name="tiny", limit=1, window=timedelta(milliseconds=300)), "w")
    limits.limiter.wait(RateLimit(name="tiny", limit=1, window=timedelta(milliseconds=300)), "w")
    store().incr("waits:ran")

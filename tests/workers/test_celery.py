"""atomlimit.celery under real Celery workers: prefork pools started as subprocesses.

The app is tests/workers/celery_tasks.py; its tasks record what they did in
Redis, and each test counts those records. Broker and result backend are the
suite's own server (dbs 1 and 2), so no other service runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import celery_tasks
import pytest
from servers import Server

from atomlimit import InvalidInput, Limiter, RateLimit
from atomlimit.celery import TaskLimiter, countdown_cap

ROOT = Path(__file__).resolve().parents[2]
STARTUP = 60.0
"""Seconds the workers may take to start every pool process."""
PATIENCE = 90.0
"""Seconds a test waits for its tasks to be recorded before it fails."""

# The subject here is Celery's side (pools, retries, the broker), which
# does the same whichever server kind answers; one kind is enough.
pytestmark = [pytest.mark.slow, pytest.mark.one_server_kind]


@contextmanager
def workers(
    server: Server, count: int = 1, concurrency: int = 4, *, failing: bool = False
) -> Iterator[Any]:
    """``count`` Celery workers with prefork pools, and a client of db 0.

    A worker that logs a traceback fails the test, unless its tasks are
    ``failing`` on purpose.
    """
    celery_tasks.configure(server.url)
    env = {
        **os.environ,
        celery_tasks.URL_VARIABLE: server.url,
        "PYTHONPATH": os.pathsep.join(
            str(ROOT / part) for part in ("src", "tests/workers", "tests")
        ),
    }
    started = [
        subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "celery_tasks", "worker",
                "--pool=prefork", f"--concurrency={concurrency}", f"--hostname=w{n}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel=WARNING",
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for n in range(count)
    ]  # fmt: skip
    client = server.client(decode_responses=True)
    try:
        wait_for(
            lambda: (
                int(client.get("workers-ready") or 0) == count
                and int(client.get("children") or 0) >= count * concurrency
            ),
            STARTUP,
            started,
        )
        yield client
    finally:
        for process in started:
            os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                _, errors = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                _, errors = process.communicate()
            assert failing or "Traceback" not in errors, errors
        client.close()


def wait_for(
    done: Callable[[], bool], patience: float, processes: list[subprocess.Popen[str]] = ()
) -> None:
    """Poll until ``done``; fail if a worker exits or patience runs out."""
    give_up = time.monotonic() + patience
    while not done():
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"a worker exited: {process.communicate()[1]}")
        if time.monotonic() > give_up:
            pytest.fail("the tasks were not all recorded in time")
        time.sleep(0.1)


def at_window_start(client: Any, window: timedelta) -> None:
    """Wait for the start of the server's next window, so that the first is whole."""
    seconds, micros = client.time()
    now = seconds + micros / 1e6
    length = window.total_seconds()
    time.sleep(length - now % length + 0.05)


def counts(client: Any, prefix: str) -> list[int]:
    """Per-window counters under ``prefix``, in window order."""
    keys = sorted(client.scan_iter(match=f"{prefix}:*"), key=lambda key: float(key.split(":")[1]))
    return [int(client.get(key)) for key in keys]


def test_two_hundred_tasks_run_exactly_fifty_per_window_across_two_workers(
    server: Server,
) -> None:
    with workers(server, count=2) as client:
        at_window_start(client, celery_tasks.WINDOW)
        for n in range(200):
            celery_tasks.fleet.delay(n)
        wait_for(lambda: sum(counts(client, "fleet")) >= 200, PATIENCE)
        ran = counts(client, "fleet")
        denials = [json.loads(x) for x in client.lrange("denials:celery_tasks.fleet", 0, -1)]
        slept = int(client.get("slept") or 0)

    waiting = [200 - sum(ran[:n]) for n in range(len(ran))]
    assert sum(ran) == 200  # every task ran, exactly once
    assert max(ran) <= celery_tasks.PER_WINDOW
    assert [r for r, w in zip(ran, waiting, strict=True) if w >= 50] == [50] * 4
    # Each denial ended by scheduling its retry in retry_after plus at most a
    # tenth, never by sleeping, and it did not count as one of the retries.
    assert len(denials) >= 150
    assert all(d["retry_after"] <= d["countdown"] <= d["retry_after"] * 1.1 for d in denials)
    assert {d["retries"] for d in denials} == {0}
    assert slept == 0


def test_celery_rate_limit_on_two_workers_admits_more_than_the_fleet_limit(
    server: Server,
) -> None:
    with workers(server, count=2) as client:
        at_window_start(client, celery_tasks.WINDOW)
        for n in range(200):
            celery_tasks.naive.delay(n)
        # The first window is the one to count; once a second has begun, it is over.
        wait_for(lambda: len(counts(client, "naive")) >= 2, PATIENCE)
        first = counts(client, "naive")[0]

    # Each worker keeps its own 25/s, and its bucket starts full: the fleet
    # runs about twice the limit, all 200 tasks being there to run.
    assert first > celery_tasks.PER_WINDOW


def test_a_denial_past_the_countdown_cap_retries_at_the_cap(server: Server) -> None:
    with workers(server) as client:
        cap = countdown_cap(celery_tasks.app.conf).total_seconds()
        celery_tasks.far.delay()
        celery_tasks.far.delay()
        wait_for(lambda: client.llen("denials:celery_tasks.far") >= 1, PATIENCE)
        denial = json.loads(client.lindex("denials:celery_tasks.far", 0))

    assert cap == celery_tasks.VISIBILITY / 2
    assert denial["retry_after"] > cap
    assert denial["countdown"] == cap


def test_the_sleep_counter_sees_a_wait_inside_the_worker(server: Server) -> None:
    with workers(server, concurrency=1) as client:
        celery_tasks.waits.delay()
        wait_for(lambda: client.get("waits:ran") == "1", PATIENCE)
        slept = int(client.get("slept") or 0)

    assert slept >= 1  # the control: what the first test asserts is zero can be seen


def test_no_more_than_three_bodies_run_at_once_under_a_cap_of_three(server: Server) -> None:
    with workers(server) as client:
        for n in range(20):
            celery_tasks.uncapped.delay(n)
        wait_for(lambda: client.get("uncapped:done") == "20", PATIENCE)
        for n in range(20):
            celery_tasks.capped.delay(n)
        wait_for(lambda: client.get("capped:done") == "20", PATIENCE)
        most = {name: int(client.get(f"{name}:most")) for name in ("uncapped", "capped")}

    assert most == {"uncapped": 4, "capped": 3}


def test_a_lease_is_released_when_the_task_fails_retries_or_its_process_dies(
    server: Server,
) -> None:
    one = celery_tasks.ONE
    with workers(server, failing=True) as client, Limiter.from_url(server.url) as limiter:
        celery_tasks.fails.delay()
        celery_tasks.retries_once.delay()
        celery_tasks.dies.delay()
        wait_for(
            lambda: (
                client.get("fails:ran") == "1"
                and client.llen("retries:held") == 1
                and client.get("dies:ran") == "1"
                and limiter.peek(one, "dies").used == 0
            ),
            PATIENCE,
        )
        held = {subject: limiter.peek(one, subject).used for subject in ("fails", "retries")}
        seen_by_second_attempt = client.lrange("retries:held", 0, -1)

    # With a 60 s lease and a cap of one, the second attempt ran at once
    # holding the only slot: the first attempt's lease was given back.
    assert seen_by_second_attempt == ["1"]
    assert held == {"fails": 0, "retries": 0}


def test_a_reservation_is_settled_at_the_cost_the_task_returns(server: Server) -> None:
    with workers(server) as client, Limiter.from_url(server.url) as limiter:
        for cost in ("0.12", "0.30"):
            celery_tasks.spends.delay(cost)
        wait_for(lambda: client.get("spends:ran") == "2", PATIENCE)
        wait_for(lambda: limiter.peek(celery_tasks.BUDGET, "team", cost=0).held == 0, PATIENCE)
        spent = limiter.peek(celery_tasks.BUDGET, "team", cost=0)

    assert spent.used == Decimal("0.42")
    assert spent.held == 0


def test_the_limiter_is_built_again_in_a_forked_child(server: Server) -> None:
    limits = TaskLimiter.from_url(server.url)
    parent = limits.limiter
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports whether it got a limiter of its own
        os.write(write, b"own" if limits.limiter is not parent else b"shared")
        os._exit(0)
    os.waitpid(pid, 0)
    said = os.read(read, 16)
    os.close(read)
    os.close(write)

    assert limits.limiter is parent
    assert said == b"own"
    limits.close()


@pytest.mark.parametrize(
    ("limits", "options"),
    [
        ((), {}),
        (("not a limit",), {}),
        ((RateLimit(name="r", limit=1, window="day"),), {"max_countdown": timedelta(0)}),
        ((RateLimit(name="r", limit=1, window="day"),), {"max_countdown": 30}),
        ((RateLimit(name="r", limit=1, window="day"),), {"denials_use_retries": "yes"}),
        ((RateLimit(name="r", limit=1, window="day"),), {"estimate": Decimal(1)}),
        ((celery_tasks.BUDGET,), {}),
        ((celery_tasks.ONE,), {"subject": 42}),
    ],
)
def test_a_bad_configuration_is_refused_when_the_task_is_defined(
    limits: tuple[Any, ...], options: dict[str, Any]
) -> None:
    task_limiter = TaskLimiter.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(InvalidInput):
        task_limiter.limited(*limits, **options)

"""A Celery app whose tasks are limited across the whole fleet, not per worker.

- ``send_newsletter`` may run 10 times per 2-second window, whichever
  worker runs it: a denied task is retried when the window turns, without
  sleeping in the worker.
- ``summarize`` runs at most 2 at once fleet-wide, and holds 0.05 USD of a
  daily budget while it runs, settled at the cost it returns.

Run it in one go (it starts a worker with a prefork pool of 4, sends the
tasks, and prints what ran):

    python examples/celery_app.py --url redis://127.0.0.1:6379/0

Or run the worker yourself, from examples/:

    ATOMLIMIT_URL=redis://127.0.0.1:6379/0 celery -A celery_app worker --concurrency=4

The limits live in the URL's database; the broker uses the next one, and the
result backend the one after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from celery import Celery

from atomlimit import Concurrency, Limiter, RateLimit, SpendCap
from atomlimit.celery import LimitedTask, TaskLimiter

URL = os.environ.get("ATOMLIMIT_URL", "redis://127.0.0.1:6379/0")


def database(url: str, offset: int) -> str:
    """``url`` with its database number moved on by ``offset``."""
    base, _, number = url.rpartition("/")
    return f"{base}/{int(number or 0) + offset}"


app = Celery("celery_app", broker=database(URL, 1), backend=database(URL, 2))
app.conf.update(
    # Keep a countdown well inside the time the Redis transport waits
    # before it hands an unacknowledged task to another worker.
    broker_transport_options={"visibility_timeout": 3600},
    broker_connection_retry_on_startup=True,
)

# Each worker process connects on its first task, after the pool forks.
limits = TaskLimiter.from_url(URL)

NEWSLETTERS = RateLimit(name="newsletters", limit=10, window=timedelta(seconds=2))
MODEL_SLOTS = Concurrency(name="model", limit=2, lease=timedelta(minutes=2))
MODEL_BUDGET = SpendCap(name="model-spend", limit=Decimal("5.00"), currency="USD", window="day")


@app.task(bind=True)
@limits.limited(NEWSLETTERS)
def send_newsletter(self: Any, user: str) -> str:
    """Send one newsletter; returns the end of the window it was sent in."""
    window_end = self.request.atomlimit.decisions[0].reset_at
    return str(window_end.isoformat())


@app.task(
    base=LimitedTask,
    limited=limits.limited(
        MODEL_SLOTS,
        MODEL_BUDGET,
        subject=lambda team, text: team,
        estimate=Decimal("0.05"),
        settle=lambda result: Decimal(result["cost"]),
    ),
)
def summarize(team: str, text: str) -> dict[str, str]:
    """Summarize ``text``; the cost is what the model call reports."""
    time.sleep(0.1)  # the model call
    return {"summary": text[:20], "cost": "0.02"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=URL)
    url = parser.parse_args().url
    here = Path(__file__).resolve().parent
    env = {**os.environ, "ATOMLIMIT_URL": url}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here), env.get("PYTHONPATH")]))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--concurrency=4",
         "--without-gossip", "--without-mingle", "--loglevel=WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,  # the banner; errors are logged to stderr
    )  # fmt: skip
    try:
        sender = Celery("sender", broker=database(url, 1), backend=database(url, 2))
        sent = [sender.signature("celery_app.send_newsletter", (f"user-{n}",)) for n in range(25)]
        newsletters = [task.apply_async() for task in sent]
        summaries = [
            sender.signature("celery_app.summarize", ("team-a", f"report {n}")).apply_async()
            for n in range(5)
        ]
        windows = Counter(datetime.fromisoformat(r.get(timeout=120)) for r in newsletters)
        for result in summaries:
            result.get(timeout=120)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    with Limiter.from_url(url) as limiter:
        spent = limiter.peek(MODEL_BUDGET, "team-a", cost=0)
    print(f"sent {sum(windows.values())} newsletters, at most {max(windows.values())} per window")
    print(f"spent {spent.used} USD on {len(summaries)} summaries, {spent.held} USD still held")


if __name__ == "__main__":
    main()

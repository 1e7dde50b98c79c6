"""A sync job runner whose jobs are limited by decorators.

``export`` may run 3 times per half second per customer; extra runs wait
their turn (``wait=True``). ``send_report`` may run twice a day per
customer; a third run is skipped with LimitExceeded instead of waiting a
day. The customer is read from each call's own arguments.

    python examples/job_runner.py --url redis://localhost:6379/0

The Redis URL comes from ``--url``, else ``$ATOMLIMIT_URL``.
"""

from __future__ import annotations

import argparse
import os
import time

from atomlimit import Limiter, LimitExceeded, RateLimit

EXPORTS = RateLimit.parse("3/500ms", name="exports")
REPORTS = RateLimit.parse("2/day", name="reports")


def run(url: str) -> None:
    started = time.monotonic()
    with Limiter.from_url(url) as limiter:

        @limiter.limited(EXPORTS, subject=lambda customer, n: customer, wait=True, timeout=30)
        def export(customer: str, n: int) -> None:
            print(f"export {customer} #{n} at {time.monotonic() - started:.2f} s")

        @limiter.limited(REPORTS, subject=lambda customer: customer)
        def send_report(customer: str) -> None:
            print(f"report sent to {customer}")

        for n in range(1, 8):
            export("acme", n)
        for _ in range(3):
            try:
                send_report("acme")
            except LimitExceeded as denied:
                print(f"report skipped: RateLimit {REPORTS.name!r} exceeded; {later(denied)}")


def later(denied: LimitExceeded) -> str:
    """When the denied call could run, in seconds from now."""
    wait = denied.decision.retry_after
    if wait is None:
        return "the cost can never fit"
    return f"retry after {wait.total_seconds():.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("ATOMLIMIT_URL", "redis://localhost:6379/0")
    )
    run(parser.parse_args().url)


if __name__ == "__main__":
    main()

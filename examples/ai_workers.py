"""Workers calling a paid model API under a daily spend cap, with reservations.

Each job waits its turn under a request rate, then reserves the most its
call can cost before making it, and settles what the call actually cost
afterwards. The hold counts against the cap while the call runs, so any
number of workers, in any number of processes, never spend past the cap;
a job that cannot reserve is refused before it spends anything.

The model API here is a local stub that prices tokens and sleeps a little;
swap in a real client's call and its usage figures.

    python examples/ai_workers.py --url redis://localhost:6379/0 --jobs 40 --workers 8

The Redis URL comes from ``--url``, else ``$ATOMLIMIT_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from atomlimit import AsyncLimiter, LimitExceeded, RateLimit, SpendCap

TEAM = "team-a"
CAP = SpendCap(name="model-spend", limit=Decimal("0.25"), currency="USD", window="day")
REQUESTS = RateLimit.parse("20/s", name="model-requests")
PRICE_PER_TOKEN = Decimal("0.00002")
MAX_TOKENS = 1000
ESTIMATE = PRICE_PER_TOKEN * MAX_TOKENS
"""The most one call can cost: it never returns more than MAX_TOKENS."""


@dataclass
class Completion:
    text: str
    tokens: int


async def complete(prompt: str, max_tokens: int) -> Completion:
    """The stub model API: a few milliseconds, and a token count from the prompt."""
    await asyncio.sleep(0.005)
    tokens = min(max_tokens, 200 + len(prompt) * 37 % 800)
    return Completion(text=prompt.upper(), tokens=tokens)


@dataclass
class Tally:
    completed: int = 0
    refused: int = 0
    spent: Decimal = Decimal(0)


async def worker(limiter: AsyncLimiter, jobs: asyncio.Queue[str], tally: Tally) -> None:
    while True:
        prompt = await jobs.get()
        try:
            await limiter.wait(REQUESTS, TEAM, timeout=timedelta(seconds=30))
            async with limiter.reservation(
                CAP, TEAM, estimate=ESTIMATE, ttl=timedelta(minutes=2)
            ) as held:
                result = await complete(prompt, MAX_TOKENS)
                cost = PRICE_PER_TOKEN * result.tokens
                held.settle_with(cost)  # charged when the block ends
            tally.completed += 1
            tally.spent += cost
        except LimitExceeded:
            tally.refused += 1
        finally:
            jobs.task_done()


async def run(url: str, job_count: int, worker_count: int) -> None:
    async with AsyncLimiter.from_url(url) as limiter:
        jobs: asyncio.Queue[str] = asyncio.Queue()
        for n in range(job_count):
            jobs.put_nowait(f"summarise document {n} " + "lorem " * (n % 7))
        tally = Tally()
        workers = [asyncio.create_task(worker(limiter, jobs, tally)) for _ in range(worker_count)]
        await jobs.join()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        final = await limiter.peek(CAP, TEAM, cost=0)

    print(f"jobs {job_count}, workers {worker_count}, cap {CAP.limit} {CAP.currency} per day")
    print(f"completed {tally.completed}, refused {tally.refused}")
    verdict = "within the cap" if tally.spent <= CAP.limit else "OVER THE CAP"
    print(f"spent {tally.spent} {CAP.currency}, {verdict}")
    print(f"server: used {final.used} {CAP.currency}, held {final.held} {CAP.currency}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("ATOMLIMIT_URL", "redis://localhost:6379/0")
    )
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(run(args.url, args.jobs, args.workers))


if __name__ == "__main__":
    main()

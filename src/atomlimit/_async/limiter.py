"""The limiter shell: what `atomlimit._engine` plans, sent through the guard.

The shell hands each planned call to a runner (`atomlimit._async_runner`)
through the limiter's guard (breaker, failure policy, observers) and wraps
what it holds in handles (`atomlimit.holds`); every rule lives in
those places, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from atomlimit._acquire import (
    Acquisition,
    acquire,
    charged_at_once,
    undo,
    unrecorded,
)
from atomlimit._async.calls import AsyncModelCall
from atomlimit._async.guard import AsyncGuard, AsyncGuardedRunner
from atomlimit._async.holds import AsyncLease, AsyncReservation
from atomlimit._async.overrides import AsyncOverrides
from atomlimit._async_runner import AsyncRunner
from atomlimit._clock import clock_reader
from atomlimit._deny_cache import DenyCache, deny_cache_of
from atomlimit._engine import (
    DEFAULT_HOLD,
    DEFAULT_REQUEST_TTL,
    DEFAULT_RETRY_TTL,
    Charged,
    Engine,
    Item,
    Kept,
    TimeSource,
)
from atomlimit._inputs import check_deadline, check_flag
from atomlimit._limited import check_function, configure
from atomlimit._local_limits import DEFAULT_LOCAL_SUBJECTS
from atomlimit._model_call import (
    CallShapes,
    Checked,
    Ended,
    Planned,
    pause_items,
    pause_length,
)
from atomlimit._money import Amount
from atomlimit._redis import check_client
from atomlimit._redis import from_url as connect
from atomlimit._runner_steps import Call, Flow
from atomlimit._shell import (
    DEFAULT_BREAKER,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_POOL_TIMEOUT,
    Clock,
    acquired,
    hit_calls,
    reserved_limit,
)
from atomlimit._steadfast import Steadfast  # unasync: async
from atomlimit._waiting import deadline_after, pause
from atomlimit._windows import from_us
from atomlimit.breaker import Breaker
from atomlimit.decision import Decision
from atomlimit.errors import InvalidInput, LimitExceeded
from atomlimit.holds import Acquired, Pending
from atomlimit.observe import Observer
from atomlimit.specs import Concurrency, Hit, RateLimit, Spec, SpendCap
from atomlimit.upstream import ClientLimits, Upstream

_US = timedelta(microseconds=1)
_YIELD_EVERY = 16  # unasync: async
P = ParamSpec("P")
R = TypeVar("R")


class AsyncLimiter:
    # unasync: async
    """Race-free limits over ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``.

    Takes the same arguments as [`Limiter`][atomlimit.Limiter], and:

    - ``batch``: calls that concurrent tasks start together go out in one
      write per server, each script still atomic (``batch=False`` sends
      each call on its own).
    - ``deadline``: the longest a call may wait for the server, a
      ``timedelta``; past it the call fails as a
      `BackendError` (outcome unknown), which the limit's
      failure policy may turn into a degraded decision. An ``acquire`` still
      finishes undoing what it charged before it gives up.

    One instance serves any number of tasks on its event loop.
    """

    # unasync: sync
    # """Race-free limits over a sync ``redis.Redis`` or ``redis.RedisCluster``.
    #
    # Args:
    #     client: the connection to use; the limiter never closes a client it
    #         was given.
    #     prefix: first part of every key, to share one server between apps.
    #     time_source: ``"server"`` (default) lets the Redis server's TIME
    #         decide windows; ``"client"`` uses ``clock`` instead, for managed
    #         services that refuse TIME and for tests with a controlled clock.
    #     clock: epoch seconds as a float; with ``time_source="server"`` it only
    #         centres the planned windows and never decides one.
    #     request_ttl: how long a caller's ``request_id`` is remembered.
    #     retry_ttl: how long a call that needs a record but has no
    #         ``request_id`` (an acquire over several subjects, a reservation's
    #         outcome) keeps it.
    #     strict: refuse to decide on a server that may evict keys (a
    #         ``maxmemory-policy`` other than ``noeviction``) or whose INFO
    #         cannot be read, instead of logging a warning. A replica is always
    #         refused. See docs/cli.md (``doctor``).
    #     breaker: when to stop asking a failing server, and for how long
    #         ([`Breaker`][atomlimit.Breaker]); None turns the breaker off, so
    #         every call tries the server. See docs/failure-policy.md.
    #     observers: objects told of every decision and backend failure
    #         ([`atomlimit.observe.Observer`][atomlimit.observe.Observer]), at most 16.
    #     local_subjects: most (limit, subject) pairs whose usage the limiter
    #         keeps in-process for limits with ``on_backend_error="local"``,
    #         1 to 1,000,000; the least recently used is forgotten first. See
    #         docs/failure-policy.md.
    #     deny_cache: a [`DenyCache`][atomlimit.DenyCache] (or its size, 1 to
    #         1,000,000 entries) to answer repeated denied hits without the
    #         server; None (default) asks the server every time. See docs/local.md.
    #
    # A call waits for the server at most as long as the client allows: its
    # ``socket_connect_timeout`` and ``socket_timeout`` (redis-py waits
    # forever by default). Set both on a client used in production.
    # """
    # unasync: end

    def __init__(
        self,
        client: redis.asyncio.Redis | AsyncRedisCluster,
        *,
        prefix: str = "atomlimit",
        time_source: TimeSource = "server",
        clock: Clock | None = None,
        request_ttl: timedelta = DEFAULT_REQUEST_TTL,
        retry_ttl: timedelta = DEFAULT_RETRY_TTL,
        batch: bool = True,  # unasync: async
        strict: bool = False,
        breaker: Breaker | None = DEFAULT_BREAKER,
        observers: Sequence[Observer] = (),
        deadline: timedelta | None = None,  # unasync: async
        local_subjects: int = DEFAULT_LOCAL_SUBJECTS,
        deny_cache: DenyCache | int | None = None,
    ) -> None:
        self._engine = Engine(
            prefix=prefix, time_source=time_source, request_ttl=request_ttl, retry_ttl=retry_ttl
        )
        now = clock_reader(clock)
        client = check_client(client, (redis.asyncio.Redis, AsyncRedisCluster))
        batch = check_flag(batch, "batch")  # unasync: async
        strict = check_flag(strict, "strict")
        self._runner = AsyncRunner(
            client,
            now,
            strict=strict,
            batch=batch,  # unasync: async
        )
        self._guard = AsyncGuard(
            breaker,
            observers,
            now,
            check_deadline(deadline),  # unasync: async
            local_subjects=local_subjects,
        )
        self._deny = deny_cache_of(deny_cache)
        self._shapes = CallShapes()
        # Fixed for the limiter's life: without observers a cached answer
        # skips timing itself, which no one would be told of.
        self._observed = self._guard.observed
        self._answered = 0  # unasync: async
        self._handles = AsyncGuardedRunner(self._guard, self._runner, self._deny)
        # One script may name several subjects' keys unless a cluster spreads them.
        self.overrides = AsyncOverrides(self._engine, self._open, self._forget)
        """Per-subject limits kept on the server (docs/overrides.md)."""
        self._engine.together = not isinstance(client, AsyncRedisCluster)
        self._owns_client = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "atomlimit",
        time_source: TimeSource = "server",
        clock: Clock | None = None,
        request_ttl: timedelta = DEFAULT_REQUEST_TTL,
        retry_ttl: timedelta = DEFAULT_RETRY_TTL,
        batch: bool = True,  # unasync: async
        strict: bool = False,
        breaker: Breaker | None = DEFAULT_BREAKER,
        observers: Sequence[Observer] = (),
        deadline: timedelta | None = None,  # unasync: async
        local_subjects: int = DEFAULT_LOCAL_SUBJECTS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,  # unasync: async
        pool_timeout: float | None = DEFAULT_POOL_TIMEOUT,  # unasync: async
        deny_cache: DenyCache | int | None = None,
        **redis_options: Any,
    ) -> Self:
        # unasync: async
        """Connect to ``url`` through a blocking pool of ``max_connections``.

        Calls beyond what the pool can carry wait up to ``pool_timeout``
        seconds for a free connection instead of failing, as redis-py's
        default asyncio pool does past its limit. ``redis_options`` go to
        the pool.
        """
        options = {"max_connections": max_connections, "timeout": pool_timeout, **redis_options}
        pool = connect(redis.asyncio.BlockingConnectionPool.from_url, url, options)
        client = redis.asyncio.Redis.from_pool(pool)
        # unasync: sync
        # """Connect to ``url``; ``redis_options`` go to ``redis.Redis.from_url``.
        #
        # The limiter owns this client and closes it in `close`.
        # """
        # client = connect(redis.Redis.from_url, url, redis_options)
        # unasync: end
        limiter = cls(
            client,
            prefix=prefix,
            time_source=time_source,
            clock=clock,
            request_ttl=request_ttl,
            retry_ttl=retry_ttl,
            batch=batch,  # unasync: async
            strict=strict,
            breaker=breaker,
            observers=observers,
            deadline=deadline,  # unasync: async
            local_subjects=local_subjects,
            deny_cache=deny_cache,
        )
        limiter._owns_client = True
        limiter._runner.keep_connections = True  # unasync: async
        return limiter

    async def hit(
        self,
        limit: Spec[Amount],
        subject: str,
        cost: Amount | int = 1,
        *,
        request_id: str | None = None,
        partial: bool = False,
    ) -> Decision[Amount]:
        """Charge ``cost`` to ``subject`` if it fits within ``limit``; else charge nothing.

        One atomic script run. With ``request_id``, a repeat of a charged
        request returns the original decision and charges nothing. With
        ``partial``, as much of ``cost`` as fits is granted (``granted``).
        With a deny cache, a denial it holds answers without the server
        (``Decision.cached``); calls with a ``request_id`` always ask.
        """
        runner = self._open()
        local = runner.now()
        deny = self._deny if request_id is None else None
        if deny is not None:
            observed = self._observed
            started = time.perf_counter() if observed else 0.0
            known = deny.check(limit, subject, cost, partial, False, self._engine.planned(local)[0])
            if known is not None:
                if observed:
                    self._guard.answered("hit", (known,), started)
                # unasync: async
                # Answering from memory must still suspend now and then: a
                # task that hits in a loop would otherwise never let the
                # event loop run anything else. Every time would cost more
                # than the answer itself.
                self._answered += 1
                if not self._answered % _YIELD_EVERY:
                    await asyncio.sleep(0)
                # unasync: end
                return known
        call = self._engine.hit(limit, subject, cost, request_id, partial, local)
        result: Decision[Amount] = await self._guard.decide(
            "hit", limit, cost, runner.run, call, subject, partial
        )
        if deny is not None and not result.allowed and not partial:
            # Planned at `local`, decided at the server's time then: the skew
            # this reply taught puts `local` on the server's clock.
            deny.learn(limit, subject, cost, False, result, self._engine.planned(local)[0])
        return result

    async def hit_many(self, hits: Sequence[Hit[Any]]) -> list[Decision[Any]]:
        """Decide many independent hits in one round trip (one per cluster node).

        Each hit is charged or denied on its own, as [`hit`][atomlimit.AsyncLimiter.hit] would; the
        decisions come back in order. For all-or-nothing, use
        [`acquire`][atomlimit.AsyncLimiter.acquire].
        """
        runner = self._open()
        local = runner.now()
        calls = hit_calls(self._engine, hits, local)
        if self._deny is not None:
            return await self._hit_many_cached(hits, calls, local)
        results: list[Decision[Any]] = await self._guard.run(
            "hit_many", runner.run_many, calls, self._guard.many(hits)
        )
        return results

    async def _hit_many_cached(
        self, hits: Sequence[Hit[Any]], calls: list[Call], local: int
    ) -> list[Decision[Any]]:
        """``hit_many`` with a deny cache: only the hits it cannot answer are sent."""
        deny = self._deny
        assert deny is not None
        started = time.perf_counter() if self._observed else 0.0
        now = self._engine.planned(local)[0]
        found = [deny.check(h.limit, h.subject, h.cost, False, False, now) for h in hits]
        if self._observed:
            known = [d for d in found if d is not None]
            if known:
                self._guard.answered("hit_many", known, started)
        asked = [n for n, d in enumerate(found) if d is None]
        # unasync: async
        if not asked:
            await asyncio.sleep(0)  # as a cached hit does: let other tasks run
        # unasync: end
        if asked:
            sent = [hits[n] for n in asked]
            results: list[Decision[Any]] = await self._guard.run(
                "hit_many", self._runner.run_many, [calls[n] for n in asked], self._guard.many(sent)
            )
            now = self._engine.planned(local)[0]
            for n, hit, decision in zip(asked, sent, results, strict=True):
                found[n] = decision
                deny.learn(hit.limit, hit.subject, hit.cost, False, decision, now)
        return found  # type: ignore[return-value]

    async def peek(
        self, limit: Spec[Amount], subject: str, cost: Amount | int = 1
    ) -> Decision[Amount]:
        """Would a hit of ``cost`` pass now? Charges nothing."""
        runner = self._open()
        call = self._engine.peek(limit, subject, cost, runner.now())
        result: Decision[Amount] = await self._guard.decide(
            "peek", limit, cost, runner.run, call, subject
        )
        return result

    async def refund(
        self,
        limit: Spec[Amount],
        subject: str,
        amount: Amount | int,
        *,
        request_id: str | None = None,
    ) -> Decision[Amount]:
        """Give back up to ``amount`` of the current usage; ``used`` never goes below zero.

        With ``request_id``, a repeated refund gives back nothing more.
        """
        runner = self._open()
        call = self._engine.refund(limit, subject, amount, request_id, runner.now())
        try:
            result: Decision[Amount] = await self._guard.decide(
                "refund", limit, amount, runner.run, call, subject
            )
        finally:
            self._forget(limit, subject)
        return result

    async def reset(self, limit: Spec[Any], subject: str) -> None:
        """Forget ``subject``'s usage of ``limit``; a backend failure always raises."""
        runner = self._open()
        call = self._engine.reset(limit, subject, runner.now())
        try:
            await self._guard.run("reset", runner.run, call)
        finally:
            self._forget(limit, subject)

    async def acquire(
        self, hits: Sequence[Hit[Any]], *, request_id: str | None = None
    ) -> Acquired[AsyncLease, AsyncReservation]:
        # unasync: async
        """Charge every hit or none of them; see [`Limiter.acquire`][atomlimit.Limiter.acquire].

        If the calling task is cancelled part-way, the acquire still runs to
        its end (all charged, or what was charged undone) before the
        cancellation goes through, so no partial charge survives; leases and
        holds it took are then released, since nobody holds their handles.
        """
        # unasync: sync
        # """Charge every hit or none of them; see docs/acquire.md.
        #
        # When the server fails, the strictest failure policy among the hits
        # decides: any "raise" raises, else any "deny" denies, else all allow.
        # """
        # unasync: end
        self._open()
        flow = acquire(self._engine, hits, request_id)
        fallback = self._guard.acquisition(self._engine, hits)
        found: Acquisition = await self._guard.run("acquire", self._whole, flow, fallback)
        return acquired(found, hits, self._lease_of, self._reservation_of)

    async def undo_acquire(self, hits: Sequence[Hit[Any]], *, request_id: str) -> bool:
        # unasync: async
        """Take back exactly what the acquire of ``hits`` under ``request_id``
        charged; see [`Limiter.undo_acquire`][atomlimit.Limiter.undo_acquire]."""
        # unasync: sync
        # """Take back exactly what the acquire of ``hits`` under ``request_id`` charged.
        #
        # For an acquire that raised `BackendError` part-way:
        # pass the same hits and the error's ``request_id``. Returns True if
        # something was charged under that id and is now taken back, False if
        # nothing was (never charged, already undone, or its record expired).
        # Sending it again changes nothing. See docs/acquire.md.
        # """
        # unasync: end
        runner = self._open()
        try:
            undone: bool = await runner.drive(undo(self._engine, hits, request_id))
        finally:
            for hit in hits if isinstance(hits, list | tuple) else ():
                self._forget(getattr(hit, "limit", None), getattr(hit, "subject", None))
        return undone

    async def reserve(
        self,
        limit: SpendCap | RateLimit | None = None,
        subject: str | None = None,
        estimate: Decimal | int | None = None,
        *,
        ttl: timedelta = DEFAULT_HOLD,
        request_id: str | None = None,
        cap: SpendCap | None = None,
    ) -> AsyncReservation:
        """Hold ``estimate`` on ``limit`` until settled, released, or ``ttl`` passes.

        ``limit`` is a [`SpendCap`][atomlimit.SpendCap] (an amount of money) or a
        [`RateLimit`][atomlimit.RateLimit] with the fixed-window, GCRA or sliding-counter
        algorithm (units, such as tokens). The hold counts from the moment it is
        taken; settling charges the actual amount, even past the limit. See
        docs/reservations.md. ``cap`` is the old name of ``limit``, deprecated.
        """
        spec = reserved_limit(limit, cap)
        runner = self._open()
        held = self._engine.reserve(spec, subject, estimate, ttl, request_id, runner.now())  # type: ignore[arg-type]
        decision = await self._guard.decide(
            "reserve", spec, estimate, runner.run, held.call, held.item.subject
        )
        return AsyncReservation(self._engine, self._handles, decision, held.item, held.request_id)

    def reservation(
        self,
        limit: SpendCap | RateLimit | None = None,
        subject: str | None = None,
        estimate: Decimal | int | None = None,
        *,
        ttl: timedelta = DEFAULT_HOLD,
        raise_on_deny: bool = True,
        cap: SpendCap | None = None,
    ) -> Pending[AsyncReservation]:
        """[`reserve`][atomlimit.AsyncLimiter.reserve], for ``async with``: the block's end settles
        or releases.

        Raises [`LimitExceeded`][atomlimit.errors.LimitExceeded] when the limit is full, unless
        ``raise_on_deny`` is False.
        """
        spec = reserved_limit(limit, cap)
        check_flag(raise_on_deny, "raise_on_deny")
        return Pending(lambda: self.reserve(spec, subject, estimate, ttl=ttl), raise_on_deny)

    def lease(
        self,
        limit: Concurrency,
        subject: str,
        *,
        raise_on_deny: bool = True,
        request_id: str | None = None,
    ) -> Pending[AsyncLease]:
        # unasync: async
        """Take one of ``limit``'s slots: await it, or ``async with`` it to release on exit.

        Raises [`LimitExceeded`][atomlimit.errors.LimitExceeded] when every slot is taken,
        unless ``raise_on_deny`` is False.
        """
        # unasync: sync
        # """Take one of ``limit``'s slots; also a context manager that releases it.
        #
        # Raises [`LimitExceeded`][atomlimit.errors.LimitExceeded] when every slot is taken,
        # unless ``raise_on_deny`` is False.
        # """
        # unasync: end
        check_flag(raise_on_deny, "raise_on_deny")

        async def take() -> AsyncLease:
            runner = self._open()
            held = self._engine.lease(limit, subject, request_id, runner.now())
            decision = await self._guard.decide("lease", limit, 1, runner.run, held.call, subject)
            return AsyncLease(self._engine, self._handles, decision, held.item, held.request_id)

        return Pending(take, raise_on_deny)

    # ------------------------------------------------------------------
    # Waiting and decorating. Each try is one hit, atomic like any other,
    # so waiters never overshoot; how long to sleep is decided by the pure
    # policy in atomlimit._waiting.
    # ------------------------------------------------------------------

    # ------------------------------------------------------------------
    # Budgeted model calls: an upstream's limits and a client's, taken in
    # one acquire and finished in one round trip (atomlimit._model_call).
    # ------------------------------------------------------------------

    def call(
        self,
        upstream: Upstream,
        *,
        client: str | None = None,
        tokens: int = 0,
        cost: Decimal | int = 0,
        limits: ClientLimits | None = None,
        timeout: timedelta = DEFAULT_HOLD,
        wait: bool = False,
        wait_timeout: timedelta | float | None = None,
    ) -> AsyncModelCall:
        # unasync: async
        """One request to a model, for ``async with``: every limit or none, then one settle.

        Entering the block takes, in one all-or-nothing acquire, the
        ``upstream``'s limits (shared by the whole fleet) and, with
        ``limits``, the ``client``'s own: a request counted, ``tokens`` and
        ``cost`` held as estimates, an in-flight lease. A denial raises
        [`LimitExceeded`][atomlimit.errors.LimitExceeded] naming the limit, or with
        ``wait=True`` waits as [`wait`][atomlimit.AsyncLimiter.wait] does, up to
        ``wait_timeout``. Holds last ``timeout`` (the call's own timeout; a
        lease lasts its spec's ``lease``). See docs/llm.md.
        """
        # unasync: sync
        # """One request to a model, for ``with``: every limit or none, then one settle.
        #
        # See [`AsyncLimiter.call`][atomlimit.AsyncLimiter.call] and docs/llm.md.
        # """
        # unasync: end
        self._open()
        check_flag(wait, "wait")
        # Every refusal of the input is made now, before the block opens.
        planned, checked = self._shapes.plan(
            self._engine, upstream, client, tokens, cost, limits, timeout
        )
        deadline = None if wait_timeout is None else deadline_after(wait_timeout, time.monotonic())
        return AsyncModelCall(self, planned, checked, wait, deadline)

    async def pause(
        self,
        upstream: Upstream,
        length: timedelta | float,
        *,
        quota: str | None = None,
    ) -> datetime:
        """Pause ``upstream`` for every worker: its calls are denied until then.

        ``length`` is a timedelta or seconds, at most an hour; ``quota``
        ("requests" or "tokens") pauses only the limits of that kind. A
        pause is only ever extended, never shortened. Returns when it ends.
        """
        runner = self._open()
        items = pause_items(self._engine, upstream, quota)
        call = self._engine.pause(items, "pause", pause_length(length) // _US, runner.now())
        until: list[int] = await self._guard.run("settle", runner.run, call)
        return from_us(max(until))

    async def clear_pause(self, upstream: Upstream, *, forget: bool = False) -> None:
        """End ``upstream``'s pause now; with ``forget``, also what the provider's
        figures taught its limits (the outside use learned)."""
        runner = self._open()
        items = pause_items(self._engine, upstream, None)
        action = "forget" if check_flag(forget, "forget") else "clear"
        try:
            await self._guard.run(
                "reset", runner.run, self._engine.pause(items, action, 0, runner.now())
            )
        finally:
            self._forgotten(items)

    def _take(self, planned: Planned, checked: Checked) -> Awaitable[Acquisition]:
        """A call's acquire, guarded as any acquire is; ``checked`` is what
        `checked_items` made of its hits when the call was made. The guarded
        run itself, not a coroutine around it: a frame less on every step."""
        self._open()
        fallback = self._guard.acquisition(self._engine, planned.hits)
        items, groups = checked
        if unrecorded(items, groups, None):
            return self._guard.run("acquire", self._at_once, (items, planned.kept), fallback)
        flow = acquire(self._engine, planned.hits, None, planned.guards, checked)
        return self._guard.run("acquire", self._whole, flow, fallback)

    async def _at_once(self, step: tuple[list[Item], Kept | None]) -> Acquisition:
        """An acquire of one subject that keeps no record (`unrecorded`): its
        one script sent directly, not through the acquire's flow, which
        would send that script and nothing else. The flow's steps cost a
        model call a tenth of its client-side work. With the call shape's
        `Kept` encoding, the script is written from it (`Engine.charge_kept`)."""
        engine, runner = self._engine, self._runner
        items, encoding = step
        rid = engine.record_ttl(None)[0]
        local = runner.now()
        if encoding is None:
            call = engine.charge(items, rid, None, local)
        else:
            call = engine.charge_kept(items, rid, local, encoding)
        # unasync: async
        with Steadfast() as kept:
            outcome: Charged = await runner.run(call)
        # unasync: sync
        # outcome: Charged = runner.run(call)
        # unasync: end
        # unasync: async
        found = charged_at_once(items, outcome)
        if kept.cancelled:
            await self._let_go(found)
            raise asyncio.CancelledError
        return found
        # unasync: sync
        # return charged_at_once(items, outcome)
        # unasync: end

    def _finish(self, calls: list[Call]) -> Awaitable[Ended]:
        """A call's end: every settle, release and correction in one round trip
        (the guarded run itself, as `_take`)."""
        return self._guard.run("settle", self._runner.run_many, calls)

    async def wait(
        self,
        limit: Spec[Amount],
        subject: str,
        cost: Amount | int = 1,
        *,
        # unasync: async
        # Not asyncio.timeout: that cancels when time is up, while a wait
        # knows from retry_after that it cannot make it and gives up at once.
        # unasync: end
        timeout: timedelta | float | None = None,  # noqa: ASYNC109
    ) -> Decision[Amount]:
        """Hit ``limit`` until it allows, sleeping ``retry_after`` (plus jitter) between tries.

        Returns the allowing Decision. Raises
        [`LimitExceeded`][atomlimit.errors.LimitExceeded] at once when the cost can never
        fit, or when the next try that could pass would land after
        ``timeout`` (a ``timedelta`` or seconds, at most a day; None waits
        as long as it takes). Never sleeps past the deadline.
        """
        deadline = deadline_after(timeout, time.monotonic())
        while True:
            decision = await self.hit(limit, subject, cost)
            if decision.allowed:
                return decision
            sleep = pause(decision, deadline, time.monotonic(), random.random)
            if sleep is None:
                raise LimitExceeded(decision, limit=limit, subject=subject)
            await asyncio.sleep(sleep)

    def limited(
        self,
        limit: Spec[Any] | Callable[[], Spec[Any]],
        *,
        subject: str | Callable[..., str],
        cost: Any = 1,
        wait: bool = False,
        timeout: timedelta | float | None = None,
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        # unasync: async
        """Decorate an ``async def`` function so that each call is charged to ``limit`` first.

        ``limit`` is a spec, or a callable returning the limit in force, such
        as a policy file's [`limit`][atomlimit.policies.Policies.limit]: each
        call charges the limit as the last reload left it. ``subject`` and
        ``cost`` are values, or callables taking the
        function's own arguments. A denied call raises
        [`LimitExceeded`][atomlimit.errors.LimitExceeded] without running the function, or
        with ``wait=True`` waits as [`wait`][atomlimit.AsyncLimiter.wait] does, up to ``timeout``.
        Plain functions need [`Limiter`][atomlimit.Limiter]; see docs/decorators.md.
        """
        # unasync: sync
        # """Decorate a function so that each call is charged to ``limit`` first.
        #
        # ``limit`` is a spec, or a callable returning the limit in force, such
        # as a policy file's [`limit`][atomlimit.policies.Policies.limit]: each
        # call charges the limit as the last reload left it. ``subject`` and
        # ``cost`` are values, or callables taking the
        # function's own arguments. A denied call raises
        # [`LimitExceeded`][atomlimit.errors.LimitExceeded] without running the function, or
        # with ``wait=True`` waits as [`wait`][atomlimit.AsyncLimiter.wait] does, up to ``timeout``.
        # Async functions need [`AsyncLimiter`][atomlimit.AsyncLimiter]; see docs/decorators.md.
        # """
        # unasync: end
        config = configure(limit, subject, cost, wait, timeout)

        def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
            check_function(func, asynchronous=True)

            @functools.wraps(func)
            async def charged(*args: P.args, **kwargs: P.kwargs) -> R:
                who, amount = config.arguments(args, kwargs)
                spec = config.limit  # the limit in force now, for a policy file's
                if config.wait:
                    await self.wait(spec, who, amount, timeout=config.timeout)
                else:
                    decision = await self.hit(spec, who, amount)
                    if not decision.allowed:
                        raise LimitExceeded(decision, limit=spec, subject=who)
                return await func(*args, **kwargs)

            return charged

        return decorate

    async def aclose(self) -> None:
        # unasync: async
        """Close the client if this limiter created it (see
        [`from_url`][atomlimit.AsyncLimiter.from_url]).

        A client you gave it stays open, with every connection the limiter
        held given back to its pool. Any later call raises
        `InvalidInput`.
        """
        # unasync: sync
        # """Close the client if this limiter created it (see
        # [`from_url`][atomlimit.AsyncLimiter.from_url]).
        # Any later call raises `InvalidInput`.
        # """
        # unasync: end
        if self._runner.closed:
            return
        await self._runner.close()  # unasync: async
        if self._owns_client:
            await self._runner.client.aclose()
        self._runner.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _forget(self, limit: Any, subject: Any) -> None:
        """Drop the deny cache's denials of ``subject`` under ``limit``: this
        process just gave room back, or changed what a limit counts."""
        if self._deny is not None and type(subject) is str:
            self._deny.forget(limit, subject)

    def _forgotten(self, items: Sequence[Item]) -> None:
        """`_forget` for each item: a call's end settled or released them."""
        if self._deny is not None:
            for item in items:
                self._forget(item.spec, item.subject)

    def _open(self) -> AsyncRunner:
        if self._runner.closed:
            raise InvalidInput("this limiter is closed; make a new one")
        return self._runner

    def _lease_of(self, decision: Decision[Any], item: Item, rid: str) -> AsyncLease:
        return AsyncLease(self._engine, self._handles, decision, item, rid)

    def _reservation_of(self, decision: Decision[Any], item: Item, rid: str) -> AsyncReservation:
        return AsyncReservation(self._engine, self._handles, decision, item, rid)

    async def _whole(self, flow: Flow) -> Acquisition:
        """Drive an acquire to its end: all charged, or what was charged undone."""
        # unasync: async
        # Cancelled part-way (by the caller, or by the deadline), the acquire
        # still finishes before the cancellation goes through, so no partial
        # charge survives; leases and holds it took are then released, since
        # nobody holds their handles.
        with Steadfast() as kept:
            found: Acquisition = await self._runner.drive(flow)
        if kept.cancelled:
            await self._let_go(found)
            raise asyncio.CancelledError
        return found
        # unasync: sync
        # found: Acquisition = self._runner.drive(flow)
        # return found
        # unasync: end

    # unasync: async
    async def _let_go(self, found: Acquisition) -> None:
        """Release what a cancelled acquire took: nobody holds its handles."""
        with contextlib.suppress(Exception):
            for item, n in found.held:
                handle = self._reservation_of if item.hold else self._lease_of
                await handle(found.decisions[n], item, found.request_id).release()

    # unasync: end

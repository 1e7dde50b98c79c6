"""Auto-batching and hit_many: calls share round trips, and each stays its own.

An AsyncLimiter writes the calls that concurrent tasks start together in
one go per server (atomlimit/_batch.py). Every script still runs whole, on
its own, so counts stay exact; these tests also show what batching must not
change: a lost batch charges each call at most once, a cancelled caller
does not take its neighbours' replies with it, and a flushed script cache
is reloaded once for the whole batch.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from conftest import Target
from helpers import evalsha_runs
from proxy import StallingProxy
from servers import Server

from atomlimit import (
    AsyncLimiter,
    BackendError,
    Hit,
    InvalidInput,
    Limiter,
    RateLimit,
    SpendCap,
    _batch,
)
from atomlimit._batch import Lane
from atomlimit.cli.demo import SeedPattern, _race

LIMIT = 100
TASKS = 1_000
SPEC = RateLimit(name="batched", limit=LIMIT, window="day")
MANY = RateLimit(name="many", limit=10**9, window="day")
CAP = SpendCap(name="batched", limit=Decimal("10.00"), currency="AUD", window="day")
STALL = 0.6
SOCKET_TIMEOUT = 0.2


async def test_a_thousand_batched_tasks_admit_exactly_the_limit(server: Server) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:

        async def attempt() -> bool:
            return (await limiter.hit(SPEC, "subject")).allowed

        admitted, _ = await _race(TASKS, attempt)
        final = await limiter.peek(SPEC, "subject")
        with server.client() as probe:
            connections = probe.info("clients")["connected_clients"]

    assert admitted == LIMIT
    assert final.used == LIMIT
    # A thousand calls went out on the lane's few connections, not a
    # thousand: the pumps (2), the first-use INFO, and this probe.
    assert connections <= 4


async def test_the_seed_pattern_overshoots_under_the_same_thousand_tasks(server: Server) -> None:
    seed = SeedPattern(server.url, TASKS)

    async def attempt() -> bool:
        if await seed.check_rate_limit("batched", "subject", LIMIT):
            return False
        await seed.increment_rate_limit("batched", "subject")
        return True

    try:
        admitted, _ = await _race(TASKS, attempt)
    finally:
        await seed.close()

    assert admitted > LIMIT


async def test_without_batching_each_call_has_its_own_round_trip_and_counts_stay_exact(
    server: Server,
) -> None:
    async with AsyncLimiter.from_url(server.url, batch=False, max_connections=30) as limiter:

        async def attempt() -> bool:
            return (await limiter.hit(SPEC, "subject")).allowed

        admitted, _ = await _race(300, attempt)
        with server.client() as probe:
            connections = probe.info("clients")["connected_clients"]

    assert admitted == LIMIT
    assert connections > 4  # many calls in flight at once, each on a connection


async def test_a_stalled_batch_charges_each_call_at_most_once(
    server: Server, stalling_proxy: StallingProxy
) -> None:
    # The whole batch's replies are held past the socket timeout: every call
    # in it ran on the server, and none is sent again (no request id, so a
    # second send could charge twice): each reports an unknown outcome.
    client = stalling_proxy.async_client(socket_timeout=SOCKET_TIMEOUT)
    async with client:
        limiter = AsyncLimiter(client)
        # Connect, load the script, open the window, and open every
        # connection the lane will use: a new connection's handshake reply
        # would otherwise be the chunk the proxy holds back.
        await asyncio.gather(*(limiter.hit(CAP, "s", cost=0) for _ in range(50)))
        connections = stalling_proxy.connections_accepted
        with server.client() as direct:
            before = evalsha_runs(direct)
        stalling_proxy.stall_next_replies(1, STALL)
        outcomes = await asyncio.gather(
            *(limiter.hit(CAP, "s", cost=Decimal("0.01")) for _ in range(50)),
            return_exceptions=True,
        )
    await asyncio.sleep(STALL)
    with server.client() as direct:
        runs = evalsha_runs(direct) - before
        used = Limiter(direct).peek(CAP, "s", cost=0).used

    lost = [o for o in outcomes if isinstance(o, BackendError)]
    decided = [o for o in outcomes if not isinstance(o, BaseException)]
    assert stalling_proxy.connections_accepted == connections
    assert lost, "the stall must have caught part of the batch"
    assert all(err.applied == "unknown" for err in lost)
    assert runs == 50  # each call ran once: none was sent twice
    assert used == Decimal("0.01") * 50
    assert len(lost) + len(decided) == 50


async def test_a_stalled_batch_with_request_ids_is_sent_again_and_replayed(
    server: Server, stalling_proxy: StallingProxy
) -> None:
    client = stalling_proxy.async_client(socket_timeout=SOCKET_TIMEOUT)
    async with client:
        limiter = AsyncLimiter(client)
        await limiter.hit(CAP, "s", cost=0, request_id="warm-up")
        stalling_proxy.stall_next_replies(1, STALL)
        decisions = await asyncio.gather(
            *(limiter.hit(CAP, "s", cost=Decimal("0.01"), request_id=f"r{n}") for n in range(50))
        )
    with server.client() as direct:
        used = Limiter(direct).peek(CAP, "s", cost=0).used

    assert all(d.allowed for d in decisions)
    assert sorted(d.used for d in decisions)[-1] == Decimal("0.50")
    assert used == Decimal("0.50")  # re-sent calls replayed; nothing charged twice


async def test_a_cancelled_caller_leaves_the_others_in_its_batch_their_replies(
    server: Server,
) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        await limiter.hit(MANY, "warm-up")
        tasks = [asyncio.create_task(limiter.hit(MANY, f"s{n}")) for n in range(200)]
        await asyncio.sleep(0)
        for task in tasks[::7]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        after = await limiter.hit(MANY, "after")

    cancelled = [r for r in results if isinstance(r, asyncio.CancelledError)]
    decided = [r for r in results if not isinstance(r, BaseException)]
    assert cancelled
    assert len(decided) + len(cancelled) == 200
    assert all(d.allowed and d.used == 1 for d in decided)
    assert after.allowed  # the lane and its connections are still in step


async def test_a_flushed_script_cache_is_reloaded_once_for_a_whole_batch(server: Server) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        await limiter.hit(MANY, "warm-up")
        with server.client() as direct:
            direct.script_flush()
            direct.config_resetstat()
            decisions = await asyncio.gather(*(limiter.hit(MANY, f"s{n}") for n in range(300)))
            loads = direct.info("commandstats").get("cmdstat_script|load", {}).get("calls", 0)

    assert all(d.allowed for d in decisions)
    assert loads == 1


async def test_a_second_event_loop_is_refused_with_a_clear_error(server: Server) -> None:
    limiter = AsyncLimiter.from_url(server.url)
    await limiter.hit(MANY, "s")

    def elsewhere() -> None:
        asyncio.run(limiter.hit(MANY, "s"))

    with pytest.raises(InvalidInput, match="one limiter per event loop"):
        await asyncio.to_thread(elsewhere)
    await limiter.aclose()


async def test_your_own_pool_gets_its_connection_back_between_calls(server: Server) -> None:
    # A pump waiting for more calls must not sit on a connection of the
    # application's pool: with one connection in all, the application's
    # own command right after a hit needs it back (redis-py's default pool
    # refuses past its limit rather than waiting).
    async with server.async_client(max_connections=1) as client:
        limiter = AsyncLimiter(client)
        for _ in range(3):
            await limiter.hit(MANY, "s")
            await client.set("own", "command")
        await limiter.aclose()
        assert await client.get("own") == b"command"  # closing the limiter left it open


@pytest.mark.parametrize("size", [1, 2])
async def test_a_pool_smaller_than_the_lanes_pumps_serves_every_call(
    server: Server, size: int
) -> None:
    # redis-py's default asyncio pool refuses a connection past its size
    # rather than wait. A pump that finds it full while another pump holds
    # a connection leaves the queue to that one; failing the calls, as the
    # last pump must, failed every one of these before (then the breaker).
    async with server.async_client(max_connections=size) as client:
        limiter = AsyncLimiter(client)
        outcomes = []
        for _ in range(20):
            outcomes += await asyncio.gather(
                *(limiter.hit(MANY, f"small-{size}") for _ in range(64)), return_exceptions=True
            )
        used = (await limiter.peek(MANY, f"small-{size}", 0)).used
        await limiter.aclose()

    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    assert used == 20 * 64


async def test_a_lane_takes_at_most_three_connections_under_load(server: Server) -> None:
    with server.client() as admin:
        before = admin.info("stats")["total_connections_received"]
        async with AsyncLimiter.from_url(server.url) as limiter:
            for _ in range(20):
                await asyncio.gather(*(limiter.hit(MANY, f"load-{n}") for n in range(500)))
        opened = admin.info("stats")["total_connections_received"] - before

    assert 2 <= opened <= 3


async def test_from_url_keeps_one_connection_for_a_lone_caller_and_closes_its_pumps(
    server: Server,
) -> None:
    def pumps() -> set[asyncio.Task[object]]:
        return {t for t in asyncio.all_tasks() if "Lane._pump" in repr(t.get_coro())}

    with server.client() as admin:
        before = admin.info("stats")["total_connections_received"]
        others = pumps()  # other tests' limiters may share this event loop
        limiter = AsyncLimiter.from_url(server.url)
        for _ in range(200):
            await limiter.hit(MANY, "lone")
        ours = pumps() - others
        waiting = [not pump.done() for pump in ours]
        await limiter.aclose()
        opened = admin.info("stats")["total_connections_received"] - before

    # One pump, still waiting for the next call on its one connection, and
    # gone once the limiter is closed.
    assert opened == 1
    assert waiting == [True]
    assert all(pump.done() for pump in ours)


def test_a_closed_limiter_refuses_every_call(server: Server) -> None:
    limiter = Limiter.from_url(server.url)
    limiter.hit(MANY, "s")
    limiter.close()

    with pytest.raises(InvalidInput, match="closed"):
        limiter.hit(MANY, "s")
    with pytest.raises(InvalidInput, match="closed"):
        limiter.peek(MANY, "s")


# -- hit_many ---------------------------------------------------------------


def test_hit_many_decides_each_hit_on_its_own(target: Target) -> None:
    three = RateLimit(name="three", limit=3, window="day")
    hits = [Hit(three, "a"), Hit(three, "a", 2), Hit(three, "a"), Hit(CAP, "b", Decimal("4.00"))]
    with target.sync_client() as client:
        limiter = Limiter(client)
        decisions = limiter.hit_many(hits)
        after = limiter.peek(three, "a", cost=0)

    assert [d.allowed for d in decisions] == [True, True, False, True]
    assert [d.used for d in decisions[:3]] == [1, 3, 3]
    assert decisions[3].used == Decimal("4.00")
    assert after.used == 3  # the denied third charged nothing


async def test_async_hit_many_decides_many_subjects_across_the_cluster(target: Target) -> None:
    hits = [Hit(MANY, f"subject-{n}") for n in range(300)]
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)
        decisions = await limiter.hit_many(hits)
        again = await limiter.hit_many(hits)

    assert [d.used for d in decisions] == [1] * 300
    assert [d.used for d in again] == [2] * 300


def test_hit_many_writes_one_batch_per_server(server: Server) -> None:
    hits = [Hit(MANY, f"subject-{n}") for n in range(500)]
    with server.client() as client:
        limiter = Limiter(client)
        limiter.hit(MANY, "warm-up")
        client.config_resetstat()
        started = time.perf_counter()
        decisions = limiter.hit_many(hits)
        batched = time.perf_counter() - started
        stats = client.info("commandstats")["cmdstat_evalsha"]

    assert all(d.allowed for d in decisions)
    assert stats["calls"] == 500
    # Printed, not asserted: the machine is shared.
    print(f"hit_many of 500 hits: {batched * 1e3:.1f} ms, one write")


def test_hit_many_refuses_holds_and_leases_before_sending(server: Server) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        with pytest.raises(InvalidInput, match="reservation"):
            limiter.hit_many([Hit(CAP, "s", Decimal(1), hold=timedelta(minutes=5))])
        with pytest.raises(InvalidInput, match="Hit objects"):
            limiter.hit_many("not hits")  # type: ignore[arg-type]
        keys = client.dbsize()

    assert keys == 0


# -- memory ---------------------------------------------------------------------


async def test_fifty_thousand_hits_leave_one_key_per_limit_and_subject(server: Server) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        for start in range(0, 50_000, 5_000):
            await asyncio.gather(
                *(limiter.hit(MANY, f"subject-{n % 500}") for n in range(start, start + 5_000))
            )
        with server.client() as probe:
            keys = probe.dbsize()

    assert keys <= 500 + 1  # one counter per subject, nothing per hit


async def _exchanges_begun_beside_another(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, int]:
    """Closed-loop hits by 64 tasks, after a warm-up: how many batches were
    written, and how many of them while another was still being answered."""
    in_flight, begun, beside = 0, 0, 0
    exchange = Lane._exchange

    async def counted(lane: Lane, connection: object, batch: list[object]) -> bool:
        nonlocal in_flight, begun, beside
        begun += 1
        beside += in_flight > 0
        in_flight += 1
        try:
            return await exchange(lane, connection, batch)  # type: ignore[arg-type]
        finally:
            in_flight -= 1

    async with AsyncLimiter.from_url(server.url) as limiter:

        async def loop(rounds: int) -> None:
            for _ in range(rounds):
                await limiter.hit(MANY, "looping")

        await asyncio.gather(*(loop(5) for _ in range(64)))
        monkeypatch.setattr(Lane, "_exchange", counted)
        await asyncio.gather(*(loop(20) for _ in range(64)))
        used = (await limiter.peek(MANY, "looping")).used
    assert used == 64 * 25
    return begun, beside


async def test_a_batch_is_answered_in_parts_so_the_next_is_written_meanwhile(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 64 tasks calling in a loop: the first callers answered call again,
    # and their calls are written on the second pump while the first still
    # answers the rest, so the server is not left waiting for every caller
    # of a batch to have run.
    begun, beside = await _exchanges_begun_beside_another(server, monkeypatch)
    assert beside >= begun // 2


async def test_a_batch_answered_whole_leaves_one_exchange_at_a_time(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control: handed out all at once, every caller comes back into one
    # next batch, and the two pumps take turns.
    monkeypatch.setattr(_batch, "HANDOUT", 10**9)
    begun, beside = await _exchanges_begun_beside_another(server, monkeypatch)
    assert beside < begun // 2

"""What happens to calls around a connection's life: cancelled, failing to
connect, closed with the limiter, and a script cache flushed under load.

Each test here failed before the fix it names, on a real server.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis
import redis.asyncio
from conftest import ServerPool
from servers import Server, start_server, wait_until

from atomlimit import AsyncLimiter, BackendError, InvalidInput, Limiter, RateLimit
from atomlimit._batch import Lost
from atomlimit._engine import Engine
from atomlimit._redis import AskError, BusyLoadingError, MovedError, TryAgainError
from atomlimit._retry import REDIRECTS, SETTLE_FOR, Attempt, Next, classify, failure

RATE = RateLimit(name="conn", limit=10**9, window="day")


@pytest.mark.parametrize("batch", [True, False])
async def test_a_call_cancelled_before_it_is_written_charges_nothing(
    server: Server, batch: bool
) -> None:
    async with AsyncLimiter.from_url(server.url, batch=batch) as limiter:
        await limiter.hit(RATE, "s")  # connect, check the server, load the script
        for _ in range(5):
            task = asyncio.ensure_future(limiter.hit(RATE, "s"))
            await asyncio.sleep(0)  # the call is queued on the lane, not yet written
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        used = (await limiter.peek(RATE, "s", cost=0)).used

    assert used == 1


class _Refusing(redis.asyncio.Connection):
    """A connection class whose connect fails with an error redis-py never raises."""

    connects = 0

    async def connect(self) -> None:
        type(self).connects += 1
        raise RuntimeError("refused by the connection class")


async def test_an_unexpected_error_while_connecting_fails_the_call_once() -> None:
    pool = redis.asyncio.ConnectionPool(connection_class=_Refusing, host="127.0.0.1", port=1)
    client = redis.asyncio.Redis(connection_pool=pool)
    limiter = AsyncLimiter(client, breaker=None)
    _Refusing.connects = 0
    # Before the fix the pump died, was started again at once, and the call
    # never returned; wait_for only keeps a regression from hanging the suite.
    with pytest.raises(BackendError) as failed:
        await asyncio.wait_for(limiter.hit(RATE, "s"), 30)
    await asyncio.sleep(0.1)  # a respawning pump would keep connecting here

    assert failed.value.applied == "no"
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert _Refusing.connects <= 2  # the first-use INFO, then the call: no loop
    await client.aclose()


@pytest.mark.parametrize("make", [Limiter.from_url, AsyncLimiter.from_url])
def test_an_option_neither_library_accepts_is_refused_when_the_limiter_is_built(
    server: Server, make: object
) -> None:
    with pytest.raises(InvalidInput, match="deny_cache"):
        make(server.url, deny_cache=True)  # type: ignore[operator]


def test_a_client_whose_connections_cannot_be_made_is_refused_when_the_limiter_is_built() -> None:
    pool = redis.ConnectionPool(host="127.0.0.1", port=1, deny_cache=True)
    with pytest.raises(InvalidInput, match="deny_cache"):
        Limiter(redis.Redis(connection_pool=pool))


async def test_closing_after_a_burst_without_batching_leaves_no_connection_open(
    server: Server,
) -> None:
    name = "burst-then-close"
    limiter = AsyncLimiter.from_url(server.url, batch=False, client_name=name)
    await asyncio.gather(*(limiter.hit(RATE, f"s{n}") for n in range(300)))
    await limiter.aclose()
    # Pumps that were still waiting for a connection when the limiter closed
    # took one afterwards and gave it back open, into a pool already closed;
    # the limiter (and so its pool) stays referenced, so nothing collects them.
    await asyncio.sleep(0.5)

    def ours() -> list[dict[str, object]]:
        with server.client() as admin:
            return [c for c in admin.client_list() if c.get("name") == name]

    # The server drops a closed client when it reads the FIN: poll for that.
    # Before the fix, 50 connections stayed open in the closed pool for good.
    assert (
        wait_until("the limiter's connections closed", lambda: not ours(), timeout=10) is not None
    )
    assert ours() == []
    assert limiter is not None


async def test_a_flush_storm_fails_no_call(server: Server) -> None:
    stop = threading.Event()
    flushes = 0

    def flush() -> None:
        nonlocal flushes
        with server.client() as admin:
            while not stop.is_set() and flushes < 5_000:
                admin.script_flush()
                flushes += 1

    async with AsyncLimiter.from_url(server.url) as limiter:
        await limiter.hit(RATE, "warm-up")
        flusher = threading.Thread(target=flush)
        flusher.start()
        try:
            outcomes = []
            for round_ in range(5):
                outcomes += await asyncio.gather(
                    *(limiter.hit(RATE, f"r{round_}-{n}") for n in range(200)),
                    return_exceptions=True,
                )
        finally:
            stop.set()
            flusher.join()

    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert flushes > 0
    assert failed == []


def test_loading_means_nothing_ran_and_is_waited_out() -> None:
    call = Engine().hit(RATE, "s", 1, None, False, 1_700_000_000_000_000)
    attempt = Attempt(call, resends=0)
    loading = BusyLoadingError("Redis is loading the dataset in memory")

    assert attempt.after(loading, now=0.0) is Next.WAIT
    assert attempt.after(loading, now=100.0) is None  # past the settling time
    assert attempt.result().applied == "no"
    assert failure("hit", Lost(loading, written=True)).applied == "unknown"


def _migrating_slot() -> tuple[AskError, TryAgainError]:
    ask = AskError("12182 127.0.0.1:7001")
    return ask, TryAgainError("Multiple keys request during rehashing of slot")


def test_ask_and_tryagain_by_turns_are_followed_for_the_settling_time() -> None:
    # A slot migrating: the source asks the call to go to the importing
    # node, which answers TRYAGAIN while only some of the call's keys have
    # moved; the next send starts from the source again.
    call = Engine().hit(RATE, "s", 1, None, False, 1_700_000_000_000_000)
    attempt = Attempt(call, resends=0)
    ask, tryagain = _migrating_slot()

    assert attempt.after(ask, now=0.0) is Next.ASK
    assert attempt.after(tryagain, now=0.0) is Next.WAIT
    for step in range(1, 4 * REDIRECTS):
        assert attempt.after(ask, now=step * 0.1) is Next.ASK
        assert attempt.asking == ("127.0.0.1", 7001)
        assert attempt.after(tryagain, now=step * 0.1) is Next.WAIT
    assert attempt.after(b"done", now=3.0) is None
    assert attempt.result() == b"done"


def test_asks_while_waiting_out_a_migration_end_with_the_settling_time() -> None:
    call = Engine().hit(RATE, "s", 1, None, False, 1_700_000_000_000_000)
    attempt = Attempt(call, resends=0)
    ask, tryagain = _migrating_slot()

    assert attempt.after(tryagain, now=0.0) is Next.WAIT
    assert attempt.after(ask, now=SETTLE_FOR - 0.01) is Next.ASK
    assert attempt.after(ask, now=SETTLE_FOR) is None
    assert isinstance(attempt.result().__cause__, AskError)


def test_asks_and_moves_outside_a_migration_stay_bounded() -> None:
    call = Engine().hit(RATE, "s", 1, None, False, 1_700_000_000_000_000)
    ask, _ = _migrating_slot()
    moved = MovedError("12182 127.0.0.1:7001")
    for redirect in (ask, moved):
        attempt = Attempt(call, resends=0)
        steps = [attempt.after(redirect, now=0.0) for _ in range(REDIRECTS + 1)]
        assert steps[-1] is None
        assert None not in steps[:-1]


def test_a_moved_slot_is_learned_again_not_followed_as_an_ask() -> None:
    # redis-py's MovedError subclasses its AskError.
    assert classify(MovedError("12182 127.0.0.1:7001")) is Next.MOVED
    assert classify(_migrating_slot()[0]) is Next.ASK


def test_moves_while_waiting_out_a_migration_stay_bounded() -> None:
    call = Engine().hit(RATE, "s", 1, None, False, 1_700_000_000_000_000)
    attempt = Attempt(call, resends=0)
    _, tryagain = _migrating_slot()
    moved = MovedError("12182 127.0.0.1:7001")

    assert attempt.after(tryagain, now=0.0) is Next.WAIT
    steps = [attempt.after(moved, now=0.0) for _ in range(REDIRECTS + 1)]
    assert steps[-1] is None
    assert None not in steps[:-1]


def test_a_refused_call_on_a_cluster_is_rerouted_boundedly_and_only_there() -> None:
    # A refused connection wrote nothing: on a cluster the slot may have a
    # new owner (a failover), so the call learns the layout and goes again,
    # whatever it is; a written one, or one on a single server, does not.
    call = Engine().hit(RATE, "s", 1, None, False, 1_700_000_000_000_000)
    refused = Lost(ConnectionError("Error 111 connecting"), written=False)
    attempt = Attempt(call, resends=0, cluster=True)
    steps = [attempt.after(refused, now=0.0) for _ in range(REDIRECTS + 1)]
    assert steps[:-1] == [Next.REROUTE] * REDIRECTS
    assert steps[-1] is None
    assert attempt.reroutes == REDIRECTS + 1  # the runners pause before each but the first
    assert attempt.result().applied == "no"

    written = Lost(ConnectionError("Connection closed by server"), written=True)
    assert Attempt(call, resends=0, cluster=True).after(written, now=0.0) is None
    assert Attempt(call, resends=0).after(refused, now=0.0) is None


def test_a_loading_server_is_waited_out_not_reported_as_unknown(
    server_kind: str, server_pool: ServerPool
) -> None:
    # A server restarting from its data answers LOADING until it has read
    # it all; nothing runs meanwhile. The delay per key makes loading last
    # long enough for a call to meet it.
    slow = {"key-load-delay": "500", "loading-process-events-interval-bytes": "1024"}
    with start_server(server_pool.binary(server_kind), extra_config=slow) as server:
        with server.client() as admin:
            with admin.pipeline(transaction=False) as pipe:
                for n in range(4_000):
                    pipe.set(f"filler:{n}", n)
                pipe.execute()
            admin.save()
        with server.client() as client:
            limiter = Limiter(client)
            limiter.hit(RATE, "s")
            restarting = threading.Thread(target=server.restart)
            restarting.start()
            try:
                saw_loading = _wait_for_loading(server)
                decision = limiter.hit(RATE, "s")
            finally:
                restarting.join()

    assert saw_loading
    assert decision.allowed


def _wait_for_loading(server: Server) -> bool:
    """Whether a PING met the restarted server while it was still loading."""

    def loading() -> bool:
        with server.client(socket_connect_timeout=0.5, retry=None) as probe:
            try:
                probe.ping()
            except BusyLoadingError:
                return True
            except redis.ConnectionError:
                return False
        return False

    return bool(wait_until("the server loading its data", loading, timeout=10))

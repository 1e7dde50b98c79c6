"""Replication: charges that wait for replicas, and failover under load.

Every server here is real and private to its test: a primary, a replica
(``replicaof``) and, for failover, a Redis Sentinel (``redis-server
--sentinel``), all on free loopback ports.

- ``SpendCap(wait_replicas=N)`` sends ``WAIT`` after each charge, in the
  same write: a charge returns only once N replicas have it, and one whose
  replicas do not confirm raises ``BackendError(applied="unknown")`` with an
  id that replays it.
- A limiter built from a Sentinel-discovered client keeps deciding across a
  failover; the charges the failover lost are counted and printed.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import (
    Cluster,
    Server,
    start_replica,
    start_sentinel,
    start_server,
    wait_replicated,
    wait_until,
)

from atomlimit import (
    AsyncLimiter,
    BackendError,
    Hit,
    InvalidInput,
    Limiter,
    RateLimit,
    SpendCap,
    UnsafeServer,
)
from atomlimit._engine import Engine
from atomlimit._runner_steps import Acked

WAITING = SpendCap(
    name="confirmed",
    limit=Decimal("10.00"),
    currency="AUD",
    window="day",
    wait_replicas=1,
    wait_timeout=timedelta(milliseconds=300),
)
PLAIN = SpendCap(name="confirmed", limit=Decimal("10.00"), currency="AUD", window="day")
DAILY = RateLimit(name="daily", limit=100, window="day")
GENERATED_ID = re.compile(r"@[0-9a-f]{24}")


# -- planning: pure -------------------------------------------------------------


def test_a_waiting_charge_is_planned_with_wait_and_a_record() -> None:
    engine = Engine(new_id=lambda: "@" + "0" * 24)

    call = engine.hit(WAITING, "s", Decimal("1.00"), None, False, 1_000_000)
    plain = engine.hit(PLAIN, "s", Decimal("1.00"), None, False, 1_000_000)

    assert call.wait is not None
    assert (call.wait.replicas, call.wait.timeout_ms) == (1, 300)
    assert call.wait.wire == b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$3\r\n300\r\n"
    assert call.replayable
    assert call.request_id == "@" + "0" * 24
    assert call.script.name == "charge"
    assert plain.wait is None  # every other call is planned as before
    assert not plain.replayable


def _reply(code: int, used: int) -> list[int]:
    """A charge.lua reply for one spend-cap item, at an instant in a day window."""
    now = 1_000_000
    return [code, now, 1 if code else 0, used, 0, 86_400_000_000, 0, 1_000_000 if code else 0]


def test_a_charge_fewer_replicas_confirmed_raises_unknown_with_its_id() -> None:
    engine = Engine(new_id=lambda: "@" + "1" * 24)
    call = engine.hit(WAITING, "s", Decimal("1.00"), None, False, 1_000_000)

    confirmed = call.read(Acked(_reply(1, 1_000_000), 1))
    replayed = call.read(Acked(_reply(2, 1_000_000), 2))
    denied = call.read(Acked(_reply(0, 10_000_000), 0))  # a denial wrote nothing
    with pytest.raises(BackendError) as unconfirmed:
        call.read(Acked(_reply(1, 1_000_000), 0))
    refusal = redis.exceptions.NoPermissionError("this user has no permissions to run 'wait'")
    with pytest.raises(BackendError) as refused:
        call.read(Acked(_reply(1, 1_000_000), refusal))

    assert confirmed.allowed
    assert replayed.allowed
    assert not denied.allowed
    assert unconfirmed.value.applied == "unknown"
    assert unconfirmed.value.request_id == "@" + "1" * 24
    assert "0 of 1 replicas acknowledged it within 300 ms" in str(unconfirmed.value)
    assert refused.value.__cause__ is refusal
    assert refused.value.applied == "unknown"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("wait_replicas", -1),
        ("wait_replicas", 33),
        ("wait_replicas", True),
        ("wait_timeout", timedelta(0)),
        ("wait_timeout", timedelta(seconds=61)),
        ("wait_timeout", timedelta(microseconds=1500)),
        ("wait_timeout", 1.0),
    ],
)
def test_wait_fields_are_bounded(field: str, value: object) -> None:
    with pytest.raises(InvalidInput, match=f"SpendCap.{field}"):
        SpendCap(name="c", limit=Decimal(1), currency="AUD", window="day", **{field: value})


# -- a primary and its replica --------------------------------------------------


@contextmanager
def _halted(replica: Server, primary: Server) -> Iterator[None]:
    """The replica stopped, then started again and synced with ``primary``."""
    replica.halt()
    wait_until("primary noticing its replica is gone", lambda: _online(primary) == 0)
    try:
        yield
    finally:
        replica.restart()
        wait_replicated(primary, 1)


def _online(primary: Server) -> int:
    info = primary.info("replication")
    return sum(
        1
        for field, value in info.items()
        if field.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


def _same_on_both(primary: redis.Redis, replica: redis.Redis) -> bool:
    """Whether the replica holds every key of the primary, with the same value."""
    for key in primary.scan_iter("*"):
        kind = primary.type(key)
        read = {b"string": "get", b"hash": "hgetall", b"zset": "zrange"}[kind]
        args = (0, -1) if read == "zrange" else ()
        if getattr(primary, read)(key, *args) != getattr(replica, read)(key, *args):
            return False
    return True


def test_what_waiting_costs_a_charge(pair: tuple[Server, Server]) -> None:
    # No timing is asserted: the figures are printed. Each waiting charge is
    # still one round trip, and the replica acknowledges within it.
    primary, replica = pair
    with primary.client() as client, replica.client() as copy:
        limiter = Limiter(client)
        limiter.hit(WAITING, "warm-up", 0)
        limiter.hit(PLAIN, "warm-up", 0, request_id="w")
        timings = {}
        for cap in (PLAIN, WAITING):
            started = time.perf_counter()
            for n in range(500):
                # Both recorded, so the only difference is WAIT.
                limiter.hit(cap, "s", Decimal("0.01"), request_id=f"{cap.wait_replicas}-{n}")
            timings[cap.wait_replicas] = (time.perf_counter() - started) / 500
        on_replica = _same_on_both(client, copy)

    plain, waiting = timings[0], timings[1]
    print(
        f"\n{primary.binary.rsplit('/', 1)[-1]}: a recorded charge {plain * 1e6:.0f} us, "
        f"with wait_replicas=1 {waiting * 1e6:.0f} us (x {waiting / plain:.2f})"
    )
    assert on_replica


def test_a_waiting_charge_returns_once_the_replica_has_it(pair: tuple[Server, Server]) -> None:
    primary, replica = pair
    with primary.client() as client, replica.client() as copy:
        limiter = Limiter(client)
        charges = [limiter.hit(WAITING, f"s{n}", Decimal("1.25")) for n in range(20)]
        on_replica = _same_on_both(client, copy)  # read the instant the last one returned
        held = limiter.reserve(WAITING, "s0", Decimal("2.00"))
        acquired = limiter.acquire([Hit(WAITING, "s1", Decimal("1.00")), Hit(DAILY, "s1")])
        after = _same_on_both(client, copy)

    assert all(charge.allowed for charge in charges)
    assert on_replica
    assert held.allowed
    assert acquired.allowed
    assert after


def test_without_waiting_a_charge_returns_though_no_replica_has_it(
    pair: tuple[Server, Server],
) -> None:
    # The twin of the test above, on a stopped replica: the charge returns
    # allowed while the primary has no replica at all. A failover to that
    # replica now would lose the charge, and nobody was told.
    primary, replica = pair
    with primary.client() as client:
        limiter = Limiter(client)
        limiter.hit(PLAIN, "warm-up", 0)
        with _halted(replica, primary):
            charge = limiter.hit(PLAIN, "s", Decimal("1.25"))
            replicas = _online(primary)

    assert charge.allowed
    assert replicas == 0


def test_a_stopped_replica_makes_the_charge_unknown_and_its_id_replays_it(
    pair: tuple[Server, Server],
) -> None:
    primary, replica = pair
    with primary.client() as client:
        limiter = Limiter(client)
        limiter.hit(WAITING, "warm-up", 0)
        with _halted(replica, primary):
            with pytest.raises(BackendError) as caught:
                limiter.hit(WAITING, "s", Decimal("1.25"))
            during = limiter.peek(WAITING, "s", 0).used
            with pytest.raises(BackendError) as again:
                limiter.hit(WAITING, "s", Decimal("1.25"), request_id=caught.value.request_id)
        replayed = limiter.hit(WAITING, "s", Decimal("1.25"), request_id=caught.value.request_id)
        after = limiter.peek(WAITING, "s", 0).used
        with replica.client() as copy:
            on_replica = _same_on_both(client, copy)

    assert caught.value.applied == "unknown"
    assert GENERATED_ID.fullmatch(caught.value.request_id or "")
    assert "0 of 1 replicas" in str(caught.value)
    assert during == Decimal("1.25")  # made on the primary, just not confirmed
    assert again.value.request_id == caught.value.request_id  # still unconfirmed
    assert replayed.allowed
    assert replayed.used == Decimal("1.25")  # a replay: charged once
    assert after == Decimal("1.25")
    assert on_replica


def test_a_denial_does_not_wait_for_a_stopped_replica(pair: tuple[Server, Server]) -> None:
    primary, replica = pair
    with primary.client() as client:
        limiter = Limiter(client)
        spent = limiter.hit(WAITING, "s", Decimal("10.00"))
        with _halted(replica, primary):
            denied = limiter.hit(WAITING, "s", Decimal("0.01"))

    assert spent.allowed
    assert not denied.allowed


def test_a_waiting_acquire_that_is_not_confirmed_is_completed_with_its_id(
    pair: tuple[Server, Server],
) -> None:
    primary, replica = pair
    hits = [Hit(DAILY, "client-a"), Hit(WAITING, "client-a", Decimal("2.00"))]
    with primary.client() as client:
        limiter = Limiter(client)
        limiter.hit(WAITING, "warm-up", 0)
        with _halted(replica, primary), pytest.raises(BackendError) as caught:
            limiter.acquire(hits)
        completed = limiter.acquire(hits, request_id=caught.value.request_id)
        usage = [limiter.peek(DAILY, "client-a", 0).used, limiter.peek(WAITING, "client-a", 0).used]

    assert caught.value.applied == "unknown"
    assert GENERATED_ID.fullmatch(caught.value.request_id or "")
    assert completed.allowed
    assert usage == [1, Decimal("2.00")]


def test_a_waiting_reservation_that_is_not_confirmed_is_replayed_with_its_id(
    pair: tuple[Server, Server],
) -> None:
    primary, replica = pair
    with primary.client() as client:
        limiter = Limiter(client)
        limiter.hit(WAITING, "warm-up", 0)
        with _halted(replica, primary), pytest.raises(BackendError) as caught:
            limiter.reserve(WAITING, "s", Decimal("3.00"))
        held = limiter.reserve(WAITING, "s", Decimal("3.00"), request_id=caught.value.request_id)
        state = limiter.peek(WAITING, "s", 0)

    assert caught.value.applied == "unknown"
    assert held.allowed
    assert state.held == Decimal("3.00")  # one hold, not two


async def test_async_waiting_charges_return_once_the_replica_has_them(
    pair: tuple[Server, Server],
) -> None:
    primary, replica = pair
    async with primary.async_client() as client:
        limiter = AsyncLimiter(client)
        charges = await asyncio.gather(
            *(limiter.hit(WAITING, f"s{n % 7}", Decimal("0.25")) for n in range(50)),
            *(limiter.hit(DAILY, f"s{n % 7}") for n in range(50)),
        )
        with primary.client() as direct, replica.client() as copy:
            on_replica = _same_on_both(direct, copy)

    assert all(charge.allowed for charge in charges)
    assert on_replica


async def test_async_a_stopped_replica_makes_the_charge_unknown_and_replayable(
    pair: tuple[Server, Server],
) -> None:
    primary, replica = pair
    async with primary.async_client() as client:
        limiter = AsyncLimiter(client)
        await limiter.hit(WAITING, "warm-up", 0)
        with _halted(replica, primary), pytest.raises(BackendError) as caught:
            await limiter.hit(WAITING, "s", Decimal("1.25"))
        replayed = await limiter.hit(
            WAITING, "s", Decimal("1.25"), request_id=caught.value.request_id
        )

    assert caught.value.applied == "unknown"
    assert replayed.used == Decimal("1.25")


def test_hit_many_waits_for_each_charge(pair: tuple[Server, Server]) -> None:
    primary, replica = pair
    with primary.client() as client, replica.client() as copy:
        decisions = Limiter(client).hit_many(
            [Hit(WAITING, f"s{n}", Decimal("1.00")) for n in range(10)]
        )
        on_replica = _same_on_both(client, copy)

    assert all(d.allowed for d in decisions)
    assert on_replica


def test_on_a_cluster_wait_goes_to_the_node_that_charged(cluster: Cluster) -> None:
    # The test cluster has no replicas, so no node can confirm: each charge
    # is made on its own node, and reported unconfirmed.
    with cluster.client() as client:
        limiter = Limiter(client)
        errors = []
        for n in range(6):
            with pytest.raises(BackendError) as caught:
                limiter.hit(WAITING, f"s{n}", Decimal("1.00"))
            errors.append(caught.value)
        used = [limiter.peek(WAITING, f"s{n}", 0).used for n in range(6)]
        with pytest.raises(BackendError):
            limiter.hit_many([Hit(WAITING, "many", Decimal("1.00"))])

    assert all(err.applied == "unknown" and err.request_id for err in errors)
    assert all("0 of 1 replicas" in str(err) for err in errors)
    assert used == [Decimal("1.00")] * 6


async def test_async_on_a_cluster_wait_goes_to_the_node_that_charged(cluster: Cluster) -> None:
    client = cluster.async_client()
    try:
        limiter = AsyncLimiter(client)
        with pytest.raises(BackendError) as caught:
            await limiter.hit(WAITING, "s", Decimal("1.00"))
        used = (await limiter.peek(WAITING, "s", 0)).used
    finally:
        await client.aclose()

    assert caught.value.applied == "unknown"
    assert used == Decimal("1.00")


# -- failover under load, through Sentinel ----------------------------------------

LOAD = RateLimit(name="load", limit=10**12, window="day")
"""A limit no run reaches: every charge the primary makes is admitted."""
AFTER = 100
"""Hits sent once the failover is over, each of which must count."""
SERVICE = "atomlimit"


class Tally:
    """What the load saw: admitted hits, and errors by what they said of the charge."""

    def __init__(self) -> None:
        self.admitted = 0
        self.refused = 0
        """BackendError(applied="no"): nothing was charged."""
        self.unknown = 0
        """BackendError(applied="unknown"): charged or not."""

    def count(self, decision: Any = None, error: BackendError | None = None) -> None:
        if error is None:
            self.admitted += bool(decision.allowed)
        elif error.applied == "no":
            self.refused += 1
        else:
            self.unknown += 1


GUARDED = {"min-replicas-to-write": "1", "min-replicas-max-lag": "1"}


@contextmanager
def _watched(kind: str) -> Iterator[tuple[Server, Server, Any]]:
    """A primary, its replica and a Sentinel watching them (Redis 7 from PATH)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("failover tests need redis-server on PATH", pytrace=False)
    config = GUARDED if kind == "guarded" else {}
    with start_server(binary, extra_config=config) as primary:
        replica = start_replica(binary, primary, extra_config=config)
        try:
            with start_sentinel(binary, primary, name=SERVICE) as sentinel:
                yield primary, replica, sentinel
        finally:
            replica.stop()


def _fail_over(kind: str, primary: Server, replica: Server, sentinel: Any) -> None:
    """Cause the failover and wait until it is over.

    ``kill``: the primary dies, and Sentinel promotes the replica once it
    has been unreachable for ``down-after-milliseconds``. Otherwise an
    operator asks for it (``SENTINEL FAILOVER``); the old primary keeps
    taking writes until Sentinel turns it into a replica of the new one.
    """
    if kind == "kill":
        primary._terminate(kill=True)
    else:
        sentinel.failover()
    wait_until("Sentinel naming the replica", lambda: sentinel.primary_address()[1] == replica.port)
    if kind != "kill":
        wait_until(
            "the old primary turned into a replica",
            lambda: primary.info("replication")["role"] == "slave",
        )
        # With min-replicas-to-write, the new primary takes writes once its
        # new replica has synced: that too is part of the failover window.
        wait_until("the new primary's replica in sync", lambda: _online(replica) == 1)


def _report(kind: str, mode: str, tally: Tally, counted: int, seconds: float, back: float) -> None:
    print(
        f"\nfailover ({kind}, {mode}): admitted {tally.admitted}, counted on the new primary "
        f"{counted}, lost {tally.admitted - counted}; errors: {tally.refused} refused "
        f"(nothing charged), {tally.unknown} unknown; failover took {seconds:.1f} s, "
        f"deciding again after {back:.1f} s"
    )


def test_a_limiter_on_a_sentinel_replica_is_refused_naming_the_service() -> None:
    with _watched("operator") as (_, _replica, sentinel):
        discovery = redis.sentinel.Sentinel([("127.0.0.1", sentinel.port)], socket_timeout=0.5)
        with (
            discovery.slave_for(SERVICE, socket_timeout=0.5) as client,
            pytest.raises(UnsafeServer) as refused,
        ):
            Limiter(client).hit(LOAD, "s")
        with discovery.master_for(SERVICE, socket_timeout=0.5) as client:
            decision = Limiter(client).hit(LOAD, "s")

    assert f"the replica of Sentinel service {SERVICE!r}" in str(refused.value)
    assert decision.allowed


FAILOVERS = ["operator", "guarded", "kill"]


@pytest.mark.parametrize("kind", FAILOVERS)
def test_a_sentinel_client_keeps_deciding_across_a_failover(kind: str) -> None:
    with _watched(kind) as (primary, replica, sentinel):
        discovery = redis.sentinel.Sentinel([("127.0.0.1", sentinel.port)], socket_timeout=0.5)
        client = discovery.master_for(SERVICE, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
        limiter = Limiter(client)
        tally, stop = Tally(), threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    tally.count(limiter.hit(LOAD, "s"))
                except BackendError as err:
                    tally.count(error=err)

        workers = [threading.Thread(target=load) for _ in range(2)]
        for worker in workers:
            worker.start()
        try:
            time.sleep(0.5)
            started = time.monotonic()
            _fail_over(kind, primary, replica, sentinel)
            seconds = time.monotonic() - started
            # The load goes on past the failover window, which ends when the
            # limiter decides again (after the circuit breaker's cool-down,
            # if the failover opened it).
            resumed = tally.admitted
            wait_until("the limiter deciding again", lambda: tally.admitted > resumed)
            back = time.monotonic() - started
            wait_until("the limiter going on", lambda: tally.admitted > resumed + AFTER)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        with replica.client() as promoted:
            counted = int(Limiter(promoted).peek(LOAD, "s", 0).used)
            role = promoted.info("replication")["role"]
            after = [limiter.hit(LOAD, "s") for _ in range(AFTER)]
            counted_after = int(Limiter(promoted).peek(LOAD, "s", 0).used)
        client.close()

    _report(kind, "sync", tally, counted, seconds, back)
    assert role == "master"
    assert tally.admitted > 0
    assert counted <= tally.admitted + tally.unknown  # no charge from nowhere
    assert all(decision.allowed for decision in after)
    assert counted_after == counted + AFTER  # past the window, nothing is lost


async def test_async_a_sentinel_client_keeps_deciding_across_a_failover() -> None:
    kind = "kill"
    with _watched(kind) as (primary, replica, sentinel):
        discovery = redis.asyncio.sentinel.Sentinel(
            [("127.0.0.1", sentinel.port)], socket_timeout=0.5
        )
        client = discovery.master_for(SERVICE, socket_timeout=0.5, retry=None)
        limiter = AsyncLimiter(client)
        tally, stop = Tally(), asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                try:
                    tally.count(await limiter.hit(LOAD, "s"))
                except BackendError as err:
                    tally.count(error=err)
                    await asyncio.sleep(0.01)

        workers = [asyncio.ensure_future(load()) for _ in range(20)]
        try:
            await asyncio.sleep(0.5)
            started = time.monotonic()
            await asyncio.to_thread(_fail_over, kind, primary, replica, sentinel)
            seconds = time.monotonic() - started
            resumed = tally.admitted
            await asyncio.to_thread(
                wait_until, "the limiter deciding again", lambda: tally.admitted > resumed
            )
            back = time.monotonic() - started
            await asyncio.to_thread(
                wait_until, "the limiter going on", lambda: tally.admitted > resumed + AFTER
            )
        finally:
            stop.set()
            await asyncio.gather(*workers)
        with replica.client() as promoted:
            counted = int(Limiter(promoted).peek(LOAD, "s", 0).used)
            after = [await limiter.hit(LOAD, "s") for _ in range(AFTER)]
            counted_after = int(Limiter(promoted).peek(LOAD, "s", 0).used)
        await client.aclose()

    _report(kind, "async", tally, counted, seconds, back)
    assert tally.admitted > 0
    assert counted <= tally.admitted + tally.unknown
    assert all(decision.allowed for decision in after)
    assert counted_after == counted + AFTER

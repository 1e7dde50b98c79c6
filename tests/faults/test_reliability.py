"""Servers that would lose or misreport counts: eviction, replicas, an ACL without INFO.

On first use each limiter reads ``INFO memory replication`` from its server,
and again after the server closed a connection or answered READONLY. These
tests start servers configured the way a deployment might be, and show what
a limiter does there: warn once, refuse with ``strict=True``, refuse a
replica always, and a primary made a replica from the next call. Where a
risk is real, a test measures it (how far eviction lets a limit overshoot,
what remembering caller ids costs) and prints the figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from conftest import ServerPool
from helpers import evalsha_runs
from servers import Server, start_server, wait_until

from atomlimit import AsyncLimiter, BackendError, Limiter, RateLimit, UnsafeServer, _wire
from atomlimit._engine import Engine

DAILY = RateLimit(name="daily", limit=100, window="day")
MAXMEMORY = str(64 * 1024 * 1024)


@contextmanager
def _configured(server_pool: ServerPool, kind: str, **config: str) -> Iterator[Server]:
    """A private server of ``kind`` started with ``config`` (names with ``_`` as ``-``)."""
    extra = {name.replace("_", "-"): value for name, value in config.items()}
    with start_server(server_pool.binary(kind), extra_config=extra) as server:
        yield server


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "atomlimit"]


# -- eviction ------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_an_evicting_policy_is_logged_once_and_the_limiter_still_decides(
    server_kind: str, server_pool: ServerPool, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        _configured(server_pool, server_kind, maxmemory=MAXMEMORY, maxmemory_policy=policy) as srv,
        srv.client() as client,
        caplog.at_level(logging.WARNING, logger="atomlimit"),
    ):
        limiter = Limiter(client)
        decisions = [limiter.hit(DAILY, "s") for _ in range(3)]
        peeked = limiter.peek(DAILY, "s")

    (warning,) = _warnings(caplog)
    assert policy in warning
    assert f"127.0.0.1:{srv.port}" in warning
    assert "set maxmemory-policy noeviction" in warning
    assert [d.used for d in decisions] == [1, 2, 3]
    assert peeked.used == 3


async def test_async_an_evicting_policy_is_logged_once(
    server_kind: str, server_pool: ServerPool, caplog: pytest.LogCaptureFixture
) -> None:
    config = {"maxmemory": MAXMEMORY, "maxmemory_policy": "allkeys-lru"}
    with (
        _configured(server_pool, server_kind, **config) as srv,
        caplog.at_level(logging.WARNING, logger="atomlimit"),
    ):
        async with srv.async_client() as client:
            limiter = AsyncLimiter(client)
            decisions = [await limiter.hit(DAILY, "s") for _ in range(3)]

    (warning,) = _warnings(caplog)
    assert "allkeys-lru" in warning
    assert [d.used for d in decisions] == [1, 2, 3]


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_strict_refuses_an_evicting_server_before_anything_is_written(
    server_kind: str, server_pool: ServerPool, policy: str
) -> None:
    with (
        _configured(server_pool, server_kind, maxmemory=MAXMEMORY, maxmemory_policy=policy) as srv,
        srv.client() as client,
    ):
        limiter = Limiter(client, strict=True)
        with pytest.raises(UnsafeServer) as first:
            limiter.hit(DAILY, "s")
        with pytest.raises(UnsafeServer):
            limiter.peek(DAILY, "s")  # refused on every call, not only the first
        keys, runs = client.dbsize(), evalsha_runs(client)

    assert policy in str(first.value)
    assert "strict=True" in str(first.value)
    assert (keys, runs) == (0, 0)


async def test_async_strict_refuses_an_evicting_server_before_anything_is_written(
    server_kind: str, server_pool: ServerPool
) -> None:
    config = {"maxmemory": MAXMEMORY, "maxmemory_policy": "volatile-ttl"}
    with _configured(server_pool, server_kind, **config) as srv:
        async with srv.async_client() as client:
            limiter = AsyncLimiter(client, strict=True)
            with pytest.raises(UnsafeServer) as refused:
                await limiter.hit(DAILY, "s")
            keys = await client.dbsize()

    assert "volatile-ttl" in str(refused.value)
    assert keys == 0


def test_noeviction_with_maxmemory_is_neither_logged_nor_refused(
    server_kind: str, server_pool: ServerPool, caplog: pytest.LogCaptureFixture
) -> None:
    # The OOM behaviour of a full noeviction server is shown in test_server.py
    # (test_a_full_noeviction_server_refuses_charges_but_still_denies_and_peeks).
    config = {"maxmemory": MAXMEMORY, "maxmemory_policy": "noeviction"}
    with (
        _configured(server_pool, server_kind, **config) as srv,
        srv.client() as client,
        caplog.at_level(logging.WARNING, logger="atomlimit"),
    ):
        decision = Limiter(client, strict=True).hit(DAILY, "s")

    assert decision.allowed
    assert _warnings(caplog) == []


def _under_memory_pressure(
    client: redis.Redis, limiter: Limiter, attempts: int
) -> tuple[int, list[BackendError]]:
    """Hits admitted, and the errors of those refused, while a cache keeps
    the server at maxmemory.

    Each round hits the limit, then writes a 4 KB cache entry that lives 90
    days, like the enrichment cache of the application atomlimit replaced.
    Under ``volatile-ttl`` the server makes room by evicting the keys that
    expire soonest: a daily counter before any cache entry.
    """
    admitted, refused = 0, []
    for n in range(attempts):
        try:
            admitted += limiter.hit(DAILY, "s").allowed
        except BackendError as err:
            refused.append(err)
        with contextlib.suppress(redis.exceptions.OutOfMemoryError):  # noeviction refuses it
            client.set(f"cache:{n}", b"x" * 4096, ex=90 * 86_400)
    return admitted, refused


@pytest.mark.parametrize("policy", ["volatile-ttl", "noeviction"])
def test_eviction_lets_a_limit_admit_more_than_it_allows(
    server_kind: str, server_pool: ServerPool, policy: str
) -> None:
    # What the warning is about, measured: a counter the server evicts
    # starts again from zero. Under noeviction the same load never admits
    # more than the limit: a charge the full server cannot write is refused,
    # with nothing applied, and so are the cache's writes.
    with _configured(server_pool, server_kind, maxmemory_policy=policy) as srv, srv.client() as c:
        limiter = Limiter(c)
        limiter.hit(DAILY, "warm-up", 0)  # check the server and load the script first
        c.config_set("maxmemory", int(c.info("memory")["used_memory"]) + 256 * 1024)
        admitted, refused = _under_memory_pressure(c, limiter, 1_000)
        evicted = int(c.info("stats")["evicted_keys"])

    print(
        f"\n{server_kind} {policy}: limit {DAILY.limit}, 1000 attempts: admitted {admitted}, "
        f"refused {len(refused)} (OOM), {evicted} keys evicted"
    )
    if policy == "noeviction":
        assert admitted <= DAILY.limit
        assert evicted == 0
        for err in refused:
            assert isinstance(err.__cause__, redis.exceptions.OutOfMemoryError)
            assert err.applied == "no"
    else:
        assert admitted > DAILY.limit
        assert evicted > 0


# -- replicas ------------------------------------------------------------------


def test_a_limiter_on_a_replica_refuses_every_call_naming_the_primary(
    pair: tuple[Server, Server],
) -> None:
    primary, secondary = pair
    with primary.client() as writer:
        Limiter(writer).hit(DAILY, "s", DAILY.limit)  # the primary's count: the limit is spent
    with secondary.client() as client:
        limiter = Limiter(client)
        with pytest.raises(UnsafeServer) as refused:
            limiter.peek(DAILY, "s")
        with pytest.raises(UnsafeServer):
            limiter.hit(DAILY, "s")

    assert "replica" in str(refused.value)
    assert f"127.0.0.1:{primary.port}" in str(refused.value)


async def test_async_a_limiter_on_a_replica_refuses_every_call(
    pair: tuple[Server, Server],
) -> None:
    primary, secondary = pair
    async with secondary.async_client() as client:
        limiter = AsyncLimiter(client)
        with pytest.raises(UnsafeServer) as refused:
            await limiter.hit(DAILY, "s")
        with pytest.raises(UnsafeServer):
            await limiter.peek(DAILY, "s")

    assert f"127.0.0.1:{primary.port}" in str(refused.value)


@contextmanager
def _demotable(server_kind: str, server_pool: ServerPool) -> Iterator[tuple[Server, Server]]:
    """Two private primaries: the first is made a replica of the second mid-test."""
    binary = server_pool.binary(server_kind)
    fast_sync = {"repl-diskless-sync-delay": "0"}
    with start_server(binary) as demoted, start_server(binary, extra_config=fast_sync) as promoted:
        yield demoted, promoted


def _demote(server: Server, primary: Server, kill_clients: bool) -> None:
    """Make ``server`` a replica of ``primary``, as a failover does to an old primary.

    Sentinel also closes the old primary's client connections; a manual
    REPLICAOF leaves them open, and the next write on one answers READONLY.
    """
    with server.client() as admin:
        admin.replicaof("127.0.0.1", primary.port)
        wait_until(
            "the demoted server syncing",
            lambda: admin.info("replication")["master_link_status"] == "up",
        )
        if kill_clients:
            admin.client_kill_filter(_type="normal", skipme=True)


def test_a_primary_made_a_replica_is_refused_once_its_clients_reconnect(
    server_kind: str, server_pool: ServerPool
) -> None:
    with _demotable(server_kind, server_pool) as (old, new), old.client() as client:
        limiter = Limiter(client)
        first = limiter.hit(DAILY, "s")
        _demote(old, new, kill_clients=True)
        # The call that finds its connection closed opens another and goes
        # out; the check runs again before the next one.
        with contextlib.suppress(UnsafeServer):
            limiter.peek(DAILY, "s")
        with pytest.raises(UnsafeServer) as refused:
            limiter.peek(DAILY, "s")

    assert first.allowed
    assert f"127.0.0.1:{new.port}" in str(refused.value)


def test_a_primary_made_a_replica_under_an_open_connection_is_refused_after_readonly(
    server_kind: str, server_pool: ServerPool
) -> None:
    with _demotable(server_kind, server_pool) as (old, new), old.client() as client:
        limiter = Limiter(client)
        limiter.hit(DAILY, "s")
        _demote(old, new, kill_clients=False)
        with pytest.raises(BackendError) as readonly:
            limiter.hit(DAILY, "s")
        with pytest.raises(UnsafeServer):
            limiter.peek(DAILY, "s")

    assert isinstance(readonly.value.__cause__, redis.exceptions.ReadOnlyError)
    assert readonly.value.applied == "no"


async def test_async_a_primary_made_a_replica_is_refused_once_its_clients_reconnect(
    server_kind: str, server_pool: ServerPool
) -> None:
    with _demotable(server_kind, server_pool) as (old, new):
        async with old.async_client() as client:
            limiter = AsyncLimiter(client)
            await limiter.hit(DAILY, "s")
            await asyncio.to_thread(_demote, old, new, True)
            with contextlib.suppress(UnsafeServer):
                await limiter.peek(DAILY, "s")
            with pytest.raises(UnsafeServer):
                await limiter.peek(DAILY, "s")
            with pytest.raises(UnsafeServer):
                await limiter.hit(DAILY, "s")


async def test_async_a_primary_made_a_replica_is_refused_after_readonly(
    server_kind: str, server_pool: ServerPool
) -> None:
    with _demotable(server_kind, server_pool) as (old, new):
        async with old.async_client() as client:
            limiter = AsyncLimiter(client)
            await limiter.hit(DAILY, "s")
            await asyncio.to_thread(_demote, old, new, False)
            with pytest.raises(BackendError) as readonly:
                await limiter.hit(DAILY, "s")
            with pytest.raises(UnsafeServer):
                await limiter.peek(DAILY, "s")

    assert isinstance(readonly.value.__cause__, redis.exceptions.ReadOnlyError)


def _bare_hit(client: redis.Redis, subject: str) -> object:
    """The hit script a limiter would send, sent with no first-use check; its reply."""
    call = Engine().hit(DAILY, subject, 1, None, False, int(time.time() * 1_000_000))
    client.script_load(call.script.source)
    connection = client.connection_pool.get_connection()
    try:
        connection.send_packed_command([_wire.evalsha(call.script.sha_bytes, call.keys, call.args)])
        try:
            return connection.read_response()
        except redis.exceptions.ResponseError as err:
            return err
    finally:
        client.connection_pool.release(connection)


def test_without_the_check_a_replica_answers_denials_and_refuses_charges(
    pair: tuple[Server, Server],
) -> None:
    # Why a replica is refused up front rather than left to fail: a denial
    # writes nothing, so a replica runs the script and answers it from its
    # copy of the counts, which replication may not have brought up to
    # date. Only a charge fails there.
    primary, secondary = pair
    with primary.client() as writer, secondary.client() as reader:
        Limiter(writer).hit(DAILY, "spent", DAILY.limit)
        writer.execute_command("WAIT", 1, 5000)
        denial = _bare_hit(reader, "spent")
        charge = _bare_hit(reader, "fresh")

    assert isinstance(denial, list)
    assert denial[0] == 0  # denied, answered by the replica
    assert isinstance(charge, redis.exceptions.ReadOnlyError)


# -- ACL without +info -----------------------------------------------------------


def _documented_acl() -> list[str]:
    """The grants docs/script-loading.md tells operators to give a limiter's user."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "script-loading.md").read_text()
    block = docs.split("ACL SETUSER limiter on >secret ~* -@all", 1)[1].split("```", 1)[0]
    return block.split()


@contextmanager
def _user_without_info(server: Server) -> Iterator[redis.Redis]:
    grants = [grant for grant in _documented_acl() if grant != "+info"]
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "noinfo", "on", ">secret", "~*", "-@all", *grants)
        try:
            with server.client(username="noinfo", password="secret") as client:
                yield client
        finally:
            admin.execute_command("ACL", "DELUSER", "noinfo")


def test_an_acl_without_info_is_logged_once_and_the_limiter_works(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with _user_without_info(server) as client, caplog.at_level(logging.WARNING, "atomlimit"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.info("memory")
        limiter = Limiter(client)
        decisions = [limiter.hit(DAILY, "s") for _ in range(2)]

    (warning,) = _warnings(caplog)
    assert "grant +info" in warning
    assert [d.used for d in decisions] == [1, 2]


async def test_async_an_acl_without_info_is_logged_once_and_the_limiter_works(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    grants = [grant for grant in _documented_acl() if grant != "+info"]
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "noinfo", "on", ">secret", "~*", "-@all", *grants)
    try:
        with caplog.at_level(logging.WARNING, "atomlimit"):
            async with server.async_client(username="noinfo", password="secret") as client:
                limiter = AsyncLimiter(client)
                decisions = [await limiter.hit(DAILY, "s") for _ in range(2)]
    finally:
        with server.client() as admin:
            admin.execute_command("ACL", "DELUSER", "noinfo")

    (warning,) = _warnings(caplog)
    assert "grant +info" in warning
    assert [d.used for d in decisions] == [1, 2]


def test_strict_refuses_a_server_it_cannot_check(server: Server) -> None:
    with _user_without_info(server) as client:
        with pytest.raises(UnsafeServer) as refused:
            Limiter(client, strict=True).hit(DAILY, "s")
        with server.client() as admin:
            keys = admin.dbsize()

    assert "could not check the server" in str(refused.value)
    assert "grant +info" in str(refused.value)
    assert keys == 0


# -- what remembering caller ids costs ------------------------------------------------

REMEMBERED = 10_000
RECORD_BOUND = 300
"""Bytes per remembered caller id that docs/request-ids.md promises not to pass."""


def test_caller_ids_cost_a_bounded_record_each_for_request_ttl(
    server_kind: str, server_pool: ServerPool
) -> None:
    # Ids shaped like the ones callers send (a prefix and a UUID, 40
    # characters), each on a charged hit: one record per decision, kept for
    # the default request_ttl of a day.
    enrichment = RateLimit(name="enrichment", limit=10**9, window="day")
    with start_server(server_pool.binary(server_kind)) as srv, srv.client() as client:
        limiter = Limiter(client)
        limiter.hit(enrichment, "client-42", request_id="warm-up")
        before = int(client.info("memory")["used_memory"])
        for n in range(REMEMBERED):
            limiter.hit(enrichment, "client-42", request_id=f"req-{uuid.UUID(int=n)}")
        per_decision = (int(client.info("memory")["used_memory"]) - before) / REMEMBERED
        record = next(iter(client.scan_iter("*:r:req-*")))
        one, ttl_ms = client.memory_usage(record), client.pttl(record)

    day = 86_400
    print(
        f"\n{server_kind}: one record {one} B (MEMORY USAGE), {per_decision:.0f} B per charged "
        f"decision (used_memory); at request_ttl=1 day: {per_decision * day / 1e6:.1f} MB "
        "per decision/s"
    )
    assert 0 < per_decision <= RECORD_BOUND
    assert abs(ttl_ms - day * 1000) < 60_000  # kept for the default request_ttl


def test_a_limiter_from_a_url_refuses_a_primary_made_a_replica(
    server_kind: str, server_pool: ServerPool
) -> None:
    with _demotable(server_kind, server_pool) as (old, new), Limiter.from_url(old.url) as limiter:
        limiter.hit(DAILY, "s")
        _demote(old, new, kill_clients=True)
        with contextlib.suppress(UnsafeServer):
            limiter.peek(DAILY, "s")
        with pytest.raises(UnsafeServer):
            limiter.peek(DAILY, "s")


@pytest.mark.parametrize(
    ("construction", "batch"),
    [("client", True), ("client", False), ("from_url", True), ("from_url", False)],
)
async def test_every_async_construction_refuses_a_primary_made_a_replica(
    server_kind: str, server_pool: ServerPool, construction: str, batch: bool
) -> None:
    # The lane hands its connection back to an application's pool after each
    # batch, and the pool reconnects a closed one silently when it hands it
    # out again: the lane must learn of that connect all the same.
    with _demotable(server_kind, server_pool) as (old, new):
        async with contextlib.AsyncExitStack() as stack:
            if construction == "client":
                client = await stack.enter_async_context(old.async_client())
                limiter = AsyncLimiter(client, batch=batch)
            else:
                limiter = AsyncLimiter.from_url(old.url, batch=batch)
            await stack.enter_async_context(limiter)
            await limiter.hit(DAILY, "s")
            await asyncio.to_thread(_demote, old, new, True)
            with contextlib.suppress(UnsafeServer):
                await limiter.peek(DAILY, "s")
            with pytest.raises(UnsafeServer):
                await limiter.peek(DAILY, "s")
            with pytest.raises(UnsafeServer):
                await limiter.hit(DAILY, "s")

"""Sessions: seed keys, unguessable ids, sliding expiry, and ids kept out of errors and logs.

Id shapes and planned commands are tested without a server; the rest runs
against real Redis and Valkey, and a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import traceback
import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.asyncio
from pydantic import BaseModel, ConfigDict
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Cluster, Server, free_port

from atomlimit import _session_plan
from atomlimit._session_plan import SessionPlan, new_id, well_formed
from atomlimit.errors import BackendError, InvalidInput
from atomlimit.sessions import AsyncSessionStore, SessionStore


class SessionData(BaseModel):
    model_config = ConfigDict(frozen=True)

    user_id: int
    role: str


ALICE = SessionData(user_id=1, role="admin")
ALICE_AGAIN = SessionData(user_id=1, role="viewer")
HOUR_MS = 3_600_000

MALFORMED_IDS: list[Any] = [
    "",
    "short",
    "a" * 129,
    "abc:def" * 4,
    "session:" + "a" * 30,
    "a" * 30 + "*",
    "a" * 30 + " ",
    "a" * 30 + "\n",
    "{" + "a" * 30 + "}",
    "ä" * 30,
    None,
    12345678901234567890123,
    b"a" * 43,
    ["a" * 43],
]


def nowhere() -> redis.Redis:
    """A client for a port nothing listens on: any command sent fails."""
    return redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))


# --------------------------------------------------------------------------
# Ids and planned commands (no server)
# --------------------------------------------------------------------------


def test_new_ids_are_url_safe_and_carry_256_random_bits() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for session_id in ids:
        assert len(session_id) == 43  # 32 bytes, base64url without padding
        assert well_formed(session_id)


@pytest.mark.parametrize(
    "session_id",
    [secrets.token_urlsafe(16), secrets.token_urlsafe(32), str(uuid.uuid4()), uuid.uuid4().hex],
)
def test_ids_of_other_common_shapes_are_accepted(session_id: str) -> None:
    assert well_formed(session_id)


@pytest.mark.parametrize("session_id", MALFORMED_IDS)
def test_malformed_ids_plan_no_command(session_id: Any) -> None:
    plan = SessionPlan(timedelta(hours=1), SessionData)
    assert not well_formed(session_id)
    assert plan.get(session_id) is None
    assert plan.update(session_id, ALICE) is None
    assert plan.delete(session_id) is None


def test_each_operation_is_one_command_on_the_seed_key() -> None:
    plan = SessionPlan(timedelta(hours=1), SessionData)
    session_id, create = plan.create(ALICE)
    key = f"session:{session_id}"
    data = ALICE.model_dump_json()
    assert create.args == ("SET", key, data, "NX", "PX", HOUR_MS)
    assert plan.get(session_id).args == ("GETEX", key, "PX", HOUR_MS)  # type: ignore[union-attr]
    assert plan.update(session_id, ALICE).args == ("SET", key, data, "XX", "PX", HOUR_MS)  # type: ignore[union-attr]
    assert plan.delete(session_id).args == ("DEL", key)  # type: ignore[union-attr]


def test_store_arguments_are_validated() -> None:
    with pytest.raises(InvalidInput, match=r"^ttl must be a timedelta of whole milliseconds"):
        SessionStore(nowhere(), ttl=timedelta(0))
    with pytest.raises(InvalidInput, match=r"^ttl"):
        SessionStore(nowhere(), ttl=3600)  # type: ignore[call-overload]
    with pytest.raises(InvalidInput, match=r"^model must be a pydantic BaseModel"):
        SessionStore(nowhere(), model=dict)  # type: ignore[call-overload]


def test_data_of_the_wrong_type_is_refused_before_anything_is_sent() -> None:
    store = SessionStore(nowhere(), model=SessionData)
    with pytest.raises(InvalidInput, match="create takes a SessionData, got dict"):
        store.create({"user_id": 1, "role": "admin"})  # type: ignore[arg-type]
    # A programming error is reported even alongside an id, and never echoes it.
    session_id = new_id()
    with pytest.raises(InvalidInput, match="update takes a SessionData, got str") as caught:
        store.update(session_id, "data")  # type: ignore[arg-type]
    assert session_id not in str(caught.value)
    raw = SessionStore(nowhere())
    with pytest.raises(InvalidInput, match=r"create takes bytes or str \(no model\), got int"):
        raw.create(7)  # type: ignore[arg-type]


@pytest.mark.parametrize("session_id", MALFORMED_IDS)
def test_malformed_ids_read_as_missing_without_touching_the_server(session_id: Any) -> None:
    store = SessionStore(nowhere(), model=SessionData)
    assert store.get(session_id) is None
    assert store.update(session_id, ALICE) is False
    assert store.delete(session_id) is False


# --------------------------------------------------------------------------
# Against real servers
# --------------------------------------------------------------------------


def test_sessions_live_at_the_seed_key_with_the_ttl(server: Server) -> None:
    with server.client() as client:
        store = SessionStore(client, ttl=timedelta(hours=1), model=SessionData)
        session_id = store.create(ALICE)

        assert client.keys("*") == [f"session:{session_id}".encode()]
        assert client.get(f"session:{session_id}") == ALICE.model_dump_json().encode()
        assert HOUR_MS - 5_000 < client.pttl(f"session:{session_id}") <= HOUR_MS


@pytest.mark.parametrize("decode", [True, False])
def test_session_data_round_trips(server: Server, decode: bool) -> None:
    with server.client(decode_responses=decode) as client:
        store = SessionStore(client, model=SessionData)
        session_id = store.create(ALICE)
        assert store.get(session_id) == ALICE
        assert store.update(session_id, ALICE_AGAIN) is True
        assert store.get(session_id) == ALICE_AGAIN
        assert store.delete(session_id) is True
        assert store.get(session_id) is None
        assert store.delete(session_id) is False


@pytest.mark.parametrize("decode", [True, False])
async def test_async_session_data_round_trips(server: Server, decode: bool) -> None:
    async with server.async_client(decode_responses=decode) as client:
        store = AsyncSessionStore(client, model=SessionData)
        session_id = await store.create(ALICE)
        assert await store.get(session_id) == ALICE
        assert await store.update(session_id, ALICE_AGAIN) is True
        assert await store.get(session_id) == ALICE_AGAIN
        assert await store.delete(session_id) is True
        assert await store.get(session_id) is None
        assert await store.update(session_id, ALICE) is False


@pytest.mark.parametrize("decode", [True, False])
def test_raw_session_data_reads_back_as_bytes_or_str(server: Server, decode: bool) -> None:
    with server.client(decode_responses=decode) as client:
        store = SessionStore(client)
        session_id = store.create(b'{"cart": [1, 2]}')
        assert store.get(session_id) == ('{"cart": [1, 2]}' if decode else b'{"cart": [1, 2]}')


def test_reading_a_session_slides_its_expiry(server: Server) -> None:
    with server.client() as client:
        store = SessionStore(client, ttl=timedelta(seconds=2), model=SessionData)
        session_id = store.create(ALICE)
        key = f"session:{session_id}"
        time.sleep(0.3)
        before = client.pttl(key)
        assert before <= 1_700

        assert store.get(session_id) == ALICE
        after = client.pttl(key)
        assert after > before
        assert after > 1_900


async def test_async_reading_and_updating_slide_the_expiry(server: Server) -> None:
    async with server.async_client() as client:
        store = AsyncSessionStore(client, ttl=timedelta(seconds=2), model=SessionData)
        session_id = await store.create(ALICE)
        key = f"session:{session_id}"
        await client.pexpire(key, 500)  # as if 1.5 s had passed

        assert await store.get(session_id) == ALICE
        assert await client.pttl(key) > 1_900
        await client.pexpire(key, 500)
        assert await store.update(session_id, ALICE_AGAIN) is True
        assert await client.pttl(key) > 1_900


def test_unknown_ids_read_as_missing_and_create_no_key(server: Server) -> None:
    with server.client() as client:
        store = SessionStore(client, model=SessionData)
        unknown = new_id()
        assert store.get(unknown) is None
        assert store.update(unknown, ALICE) is False
        assert store.delete(unknown) is False
        assert client.keys("*") == []


def test_update_never_brings_back_a_deleted_or_expired_session(server: Server) -> None:
    with server.client() as client:
        store = SessionStore(client, model=SessionData)
        deleted = store.create(ALICE)
        store.delete(deleted)
        assert store.update(deleted, ALICE_AGAIN) is False

        expired = store.create(ALICE)
        client.pexpire(f"session:{expired}", 1)
        time.sleep(0.05)
        assert store.update(expired, ALICE_AGAIN) is False
        assert store.get(expired) is None
        assert client.keys("*") == []


def test_an_id_collision_never_overwrites_a_live_session(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = new_id()
    monkeypatch.setattr(_session_plan, "new_id", lambda: taken)
    with server.client() as client:
        store = SessionStore(client, model=SessionData)
        assert store.create(ALICE) == taken
        with pytest.raises(BackendError, match="already in use; nothing was written") as caught:
            store.create(ALICE_AGAIN)
        assert taken not in str(caught.value)
        assert store.get(taken) == ALICE


def test_an_invalid_stored_session_reads_as_missing_and_is_logged_without_its_id(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with server.client() as client:
        store = SessionStore(client, model=SessionData)
        session_id = new_id()
        client.set(f"session:{session_id}", '{"user_id": "not-a-number", "role": "x"}', px=HOUR_MS)

        with caplog.at_level(logging.WARNING, logger="atomlimit.sessions"):
            assert store.get(session_id) is None
        assert "a stored session does not validate as SessionData" in caplog.text
        assert "user_id: int_parsing" in caplog.text
        assert session_id not in caplog.text
        assert "not-a-number" not in caplog.text


def _all_text(err: BaseException) -> str:
    return "".join(traceback.format_exception(err)) + repr(err) + repr(err.__cause__)


def test_session_ids_never_appear_in_backend_errors_or_logs(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with server.client() as client:
        session_id = SessionStore(client, model=SessionData).create(ALICE)

    # The same live id, while Redis is unreachable.
    down = SessionStore(nowhere(), model=SessionData)
    with caplog.at_level(logging.DEBUG):
        for operation in (
            lambda: down.get(session_id),
            lambda: down.update(session_id, ALICE_AGAIN),
            lambda: down.delete(session_id),
            lambda: down.create(ALICE),
        ):
            with pytest.raises(BackendError) as caught:
                operation()
            assert isinstance(caught.value.__cause__, redis.ConnectionError)
            assert session_id not in _all_text(caught.value)
    assert session_id not in caplog.text


async def test_async_session_ids_never_appear_in_backend_errors(server: Server) -> None:
    async with server.async_client() as client:
        session_id = await AsyncSessionStore(client).create(b"x")
    async with redis.asyncio.Redis(port=free_port(), retry=AsyncRetry(NoBackoff(), 0)) as gone:
        store = AsyncSessionStore(gone)
        with pytest.raises(BackendError, match=r"^GETEX: ConnectionError") as caught:
            await store.get(session_id)
        assert session_id not in _all_text(caught.value)
        assert await store.get("not/an:id") is None


async def test_async_concurrent_reads_all_slide_one_session(server: Server) -> None:
    async with server.async_client() as client:
        store = AsyncSessionStore(client, ttl=timedelta(seconds=2), model=SessionData)
        session_id = await store.create(ALICE)
        # Well short of the 2 s TTL, so a slid session shows above 1.9 s, and
        # long enough that a loaded machine's 50 reads all find it.
        await client.pexpire(f"session:{session_id}", 1_500)
        results = await asyncio.gather(*(store.get(session_id) for _ in range(50)))
        assert results == [ALICE] * 50
        assert await client.pttl(f"session:{session_id}") > 1_900


# --------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------


def test_sessions_on_a_cluster(cluster: Cluster) -> None:
    with cluster.client() as client:
        store = SessionStore(client, model=SessionData)
        ids = [store.create(ALICE) for _ in range(20)]
        nodes = {client.get_node_from_key(f"session:{sid}").name for sid in ids}
        assert len(nodes) > 1
        for session_id in ids:
            assert store.get(session_id) == ALICE
            assert store.update(session_id, ALICE_AGAIN) is True
            assert client.pttl(f"session:{session_id}") > HOUR_MS - 5_000
            assert store.delete(session_id) is True
            assert store.get(session_id) is None


async def test_async_sessions_on_a_cluster(cluster: Cluster) -> None:
    async with cluster.async_client() as client:
        store = AsyncSessionStore(client, model=SessionData)
        ids = [await store.create(ALICE) for _ in range(10)]
        assert [await store.get(sid) for sid in ids] == [ALICE] * 10
        assert [await store.delete(sid) for sid in ids] == [True] * 10

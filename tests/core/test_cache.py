"""The versioned, typed cache: keys, values, TTLs, versions and single-flight fill.

Pure planning (keys, validation, the single-flight flow) is tested without a
server; everything else runs against real Redis and Valkey, and a cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import redis
from pydantic import BaseModel, ConfigDict
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Cluster, Server, free_port

from atomlimit._cache_plan import CachePlan
from atomlimit._keys import LOCK_SUFFIX
from atomlimit._runner_steps import PRODUCE, Call, Command, Produce, Sleep, Step
from atomlimit._scripts import script
from atomlimit._sync_runner import SyncRunner
from atomlimit.cache import AsyncCache, Cache, Category
from atomlimit.compat import CACHE_VERSION, cache_key
from atomlimit.errors import BackendError, InvalidInput


class CompanyProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    employees: int


DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
ENRICHMENT = Category("enrichment", ttl=timedelta(days=90), model=CompanyProfile)
DATAFORSEO = Category("dataforseo", ttl=timedelta(days=30))
ACME = CompanyProfile(name="Acme", employees=42)
SECOND = timedelta(seconds=1)


def plan(version: str = "v1") -> CachePlan:
    return CachePlan(version, wait=timedelta(seconds=5), lock_ttl=timedelta(seconds=10))


# --------------------------------------------------------------------------
# Categories, keys and identifiers (no server)
# --------------------------------------------------------------------------


def test_keys_follow_the_seed_patterns_exactly() -> None:
    assert plan().key(ENRICHMENT, ("acme.com", DIGEST)) == f"v1:enrichment:acme.com:{DIGEST}"
    assert plan().key(DATAFORSEO, "acme.com") == "v1:dataforseo:acme.com"
    assert plan().key(DATAFORSEO, ("acme.com",)) == "v1:dataforseo:acme.com"
    # The seed's own helper builds the same strings.
    assert plan(CACHE_VERSION).key(ENRICHMENT, ["acme.com", DIGEST]) == cache_key(
        "enrichment", f"acme.com:{DIGEST}"
    )


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (("acme.com", "a:b"), "identifier part 2 of 2 'a:b' contains ':'"),
        (("acme com", DIGEST), "identifier part 1 of 2 'acme com' contains ' '"),
        (("acme.com", ""), "identifier part 2 of 2 is empty"),
        (("{acme}.com",), "identifier part 1 of 1 '{acme}.com' contains '{'"),
        (("acme.com", "x\x00"), "identifier part 2 of 2 'x\\x00' contains '\\x00'"),
        (("acme.com", "tab\there"), "contains '\\t'"),
        (("acme.com", "zero\u200bwidth"), "contains '\\u200b'"),
        (("x" * 257,), "identifier part 1 of 1 'xxxxxxxx"),
        (("x" * 257,), "... is 257 characters long; at most 256"),
        (("acme.com", 7), "identifier part 2 of 2 must be a str, got int"),
        ("acme.com:" + DIGEST, "identifier 'acme.com:9f86"),
        ((), "identifier must have 1 to 16 parts, got 0"),
        (("a",) * 17, "identifier must have 1 to 16 parts, got 17"),
        ({"acme.com"}, "identifier must be a str or a tuple of str, got set"),
    ],
)
def test_bad_identifier_fails_naming_the_bad_part(parts: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        plan().key(ENRICHMENT, parts)
    assert message in str(caught.value)


def test_identifier_parts_may_be_any_printable_text() -> None:
    key = plan().key(DATAFORSEO, ("bücher.de", "x" * 256, "ünï-cødé_~!"))
    assert key == "v1:dataforseo:bücher.de:" + "x" * 256 + ":ünï-cødé_~!"


@pytest.mark.parametrize("name", ["", "a:b", "two words", "{tag}", "x" * 257, "new\nline"])
def test_category_name_is_validated(name: str) -> None:
    with pytest.raises(InvalidInput, match=r"^Category\.name"):
        Category(name, ttl=SECOND)


@pytest.mark.parametrize(
    "ttl",
    [
        timedelta(0),
        timedelta(seconds=-1),
        timedelta(microseconds=1500),
        timedelta(days=3651),
        3600,
        None,
    ],
)
def test_category_ttl_must_be_whole_milliseconds_within_range(ttl: Any) -> None:
    with pytest.raises(InvalidInput, match=r"^Category\.ttl must be a timedelta of whole milli"):
        Category("c", ttl=ttl)


def test_category_model_must_be_a_pydantic_model() -> None:
    @dataclass
    class Plain:
        x: int

    for model in (Plain, dict, CompanyProfile(name="a", employees=1)):
        with pytest.raises(InvalidInput, match=r"^Category\.model"):
            Category("c", ttl=SECOND, model=model)  # type: ignore[call-overload]


def test_category_is_immutable_and_compares_by_value() -> None:
    same = Category("enrichment", ttl=timedelta(days=90), model=CompanyProfile)
    assert same == ENRICHMENT
    assert hash(same) == hash(ENRICHMENT)
    with pytest.raises(AttributeError):
        ENRICHMENT.ttl = SECOND  # type: ignore[misc]


@pytest.mark.parametrize("version", ["", "v 2", "v:2", "{v2}", 2])
def test_version_is_validated(version: Any) -> None:
    with pytest.raises(InvalidInput, match=r"^version"):
        plan(version)


@pytest.mark.parametrize(
    ("field", "value"),
    [("wait", timedelta(seconds=-1)), ("lock_ttl", timedelta(0)), ("lock_ttl", 10)],
)
def test_single_flight_bounds_are_validated(field: str, value: Any) -> None:
    bounds = {"wait": timedelta(seconds=5), "lock_ttl": timedelta(seconds=10), field: value}
    with pytest.raises(InvalidInput, match=f"^{field}"):
        CachePlan("v1", **bounds)
    with pytest.raises(InvalidInput, match=f"^{field}"):
        plan().get_or_set(DATAFORSEO, "acme.com", **{field: value})


def test_set_refuses_a_value_of_the_wrong_type() -> None:
    with pytest.raises(
        InvalidInput, match="category 'enrichment' takes a CompanyProfile, got dict"
    ):
        plan().set(ENRICHMENT, ("acme.com", DIGEST), {"name": "Acme", "employees": 42})
    with pytest.raises(InvalidInput, match="takes bytes or str \\(no model\\), got int"):
        plan().set(DATAFORSEO, "acme.com", 42)


def test_writes_carry_their_ttl_in_the_same_command() -> None:
    command = plan().set(ENRICHMENT, ("acme.com", DIGEST), ACME)
    assert command.args == (
        "SET",
        f"v1:enrichment:acme.com:{DIGEST}",
        ACME.model_dump_json(),
        "PX",
        90 * 86_400_000,
    )
    touch = plan().touch(DATAFORSEO, "acme.com")
    assert touch.args == ("PEXPIRE", "v1:dataforseo:acme.com", 30 * 86_400_000)


# --------------------------------------------------------------------------
# The single-flight flow, step by step (no server)
# --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_flow(
    reply: Callable[[Step], Any], *, wait: timedelta = 5 * SECOND
) -> tuple[list[Step], Any]:
    """Run a get_or_set flow on scripted replies and a fake clock.

    A reply that is an exception is thrown into the flow, as the drivers do.
    """
    clock = FakeClock()
    flow = plan().get_or_set(ENRICHMENT, ("acme.com", DIGEST), wait=wait, clock=clock)
    steps: list[Step] = []
    sent: Any = None
    while True:
        try:
            step = flow.throw(sent) if isinstance(sent, Exception) else flow.send(sent)
        except StopIteration as done:
            return steps, done.value
        steps.append(step)
        sent = reply(step)
        if isinstance(step, Sleep):
            clock.now += step.seconds


def shape(step: Step) -> str:
    if isinstance(step, Command):
        return " ".join(str(arg) for arg in step.args[:1]) + (" NX" if "NX" in step.args else "")
    if isinstance(step, Call):
        return f"script {step.script.name}"
    if isinstance(step, Sleep):
        return f"sleep {step.seconds:g}"
    return "factory"


def test_cold_key_holder_locks_rereads_computes_writes_then_unlocks() -> None:
    def reply(step: Step) -> Any:
        if isinstance(step, Produce):
            return ACME
        if isinstance(step, Command) and step.args[0] == "SET":
            return True
        if isinstance(step, Call):
            return 1
        return None  # both GETs miss

    steps, value = run_flow(reply)
    assert value == ACME
    assert [shape(s) for s in steps] == [
        "GET",
        "SET NX",
        "GET",
        "factory",
        "SET",
        "script cache_unlock",
    ]
    lock, write, unlock = steps[1], steps[4], steps[5]
    assert isinstance(lock, Command)
    assert isinstance(write, Command)
    assert isinstance(unlock, Call)
    key = f"v1:enrichment:acme.com:{DIGEST}"
    assert lock.args[1] == key + LOCK_SUFFIX == f"{key}::lock"
    assert lock.args[3:] == ("NX", "PX", 10_000)
    assert write.args == ("SET", key, ACME.model_dump_json(), "PX", 90 * 86_400_000)
    # Compare-and-delete with the very token that took the lock.
    assert unlock.keys == (lock.args[1],)
    assert unlock.args == (lock.args[2],)


def test_holder_that_finds_the_value_after_locking_does_not_run_the_factory() -> None:
    gets = iter([None, ACME.model_dump_json()])

    def reply(step: Step) -> Any:
        if isinstance(step, Command):
            return True if step.args[0] == "SET" else step.read(next(gets))
        return 1

    steps, value = run_flow(reply)
    assert value == ACME
    assert [shape(s) for s in steps] == ["GET", "SET NX", "GET", "script cache_unlock"]


def test_waiter_polls_with_growing_backoff_until_the_value_appears() -> None:
    gets = iter([None] * 7 + [ACME.model_dump_json()])

    def reply(step: Step) -> Any:
        if isinstance(step, Command):
            return None if step.args[0] == "SET" else step.read(next(gets))
        assert not isinstance(step, Produce | Call)
        return None

    steps, value = run_flow(reply)
    assert value == ACME
    sleeps = [s.seconds for s in steps if isinstance(s, Sleep)]
    assert sleeps == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.1, 0.1, 0.1])
    assert PRODUCE not in steps


def test_waiter_runs_the_factory_itself_after_the_wait_bound() -> None:
    def reply(step: Step) -> Any:
        if isinstance(step, Produce):
            return ACME
        # Every read misses and the lock is never free; only the final write succeeds.
        if isinstance(step, Command) and step.args[0] == "SET" and "NX" not in step.args:
            return True
        return None

    steps, value = run_flow(reply, wait=timedelta(milliseconds=250))
    assert value == ACME
    sleeps = [s.seconds for s in steps if isinstance(s, Sleep)]
    # Never sleeps past the bound: the last nap is cut to what is left.
    assert sum(sleeps) == pytest.approx(0.25)
    assert sleeps[-1] == pytest.approx(0.25 - 0.01 - 0.02 - 0.04 - 0.08)
    assert [shape(s) for s in steps[-2:]] == ["factory", "SET"]
    assert not any(isinstance(s, Call) for s in steps)  # it never held the lock


def test_zero_wait_runs_the_factory_without_sleeping() -> None:
    def reply(step: Step) -> Any:
        return ACME if isinstance(step, Produce) else None

    steps, _ = run_flow(reply, wait=timedelta(0))
    assert [shape(s) for s in steps] == ["GET", "SET NX", "factory", "SET"]


def test_failing_factory_releases_the_lock_then_raises_to_its_caller() -> None:
    class Boom(Exception):
        pass

    def reply(step: Step) -> Any:
        if isinstance(step, Produce):
            return Boom("factory failed")
        if isinstance(step, Command):
            return True if step.args[0] == "SET" else None
        return 1

    with pytest.raises(Boom, match="factory failed"):
        run_flow(reply)


def test_failing_factory_still_sends_the_unlock() -> None:
    seen: list[str] = []

    def reply(step: Step) -> Any:
        seen.append(shape(step))
        if isinstance(step, Produce):
            return RuntimeError("no")
        if isinstance(step, Command):
            return True if step.args[0] == "SET" else None
        return 1

    with pytest.raises(RuntimeError):
        run_flow(reply)
    assert seen == ["GET", "SET NX", "GET", "factory", "script cache_unlock"]


def test_a_failed_unlock_is_logged_and_the_value_still_returned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def reply(step: Step) -> Any:
        if isinstance(step, Produce):
            return ACME
        if isinstance(step, Call):
            return BackendError("cache_unlock: ConnectionError: gone")
        return True if step.args[0] == "SET" else None  # type: ignore[union-attr]

    with caplog.at_level(logging.WARNING, logger="atomlimit.cache"):
        _, value = run_flow(reply)
    assert value == ACME
    assert "could not release a single-flight lock" in caplog.text


# --------------------------------------------------------------------------
# Against real servers
# --------------------------------------------------------------------------


def _factory_counter(delay: float, value: CompanyProfile = ACME) -> tuple[Any, list[int]]:
    runs = [0]

    async def factory() -> CompanyProfile:
        runs[0] += 1
        await asyncio.sleep(delay)
        return value

    return factory, runs


def test_entries_land_at_the_seed_keys_with_their_ttl(server: Server) -> None:
    with server.client() as client:
        cache = Cache(client)
        cache.set(ENRICHMENT, ("acme.com", DIGEST), ACME)
        cache.set(DATAFORSEO, "acme.com", b'{"rank": 3}')

        assert sorted(client.keys("*")) == [
            b"v1:dataforseo:acme.com",
            f"v1:enrichment:acme.com:{DIGEST}".encode(),
        ]
        assert client.get(f"v1:enrichment:acme.com:{DIGEST}") == ACME.model_dump_json().encode()
        ninety_days, thirty_days = 90 * 86_400_000, 30 * 86_400_000
        assert ninety_days - 5_000 < client.pttl(f"v1:enrichment:acme.com:{DIGEST}") <= ninety_days
        assert thirty_days - 5_000 < client.pttl("v1:dataforseo:acme.com") <= thirty_days
        assert cache.key(ENRICHMENT, ("acme.com", DIGEST)) == f"v1:enrichment:acme.com:{DIGEST}"


@pytest.mark.parametrize("decode", [True, False])
def test_entries_the_seed_app_wrote_stay_readable(server: Server, decode: bool) -> None:
    # The seed writes through a decode_responses=True client with its own key helper.
    with server.client(decode_responses=True) as seed:
        seed.set(cache_key("enrichment", f"acme.com:{DIGEST}"), json.dumps(ACME.model_dump()))
        seed.set(cache_key("dataforseo", "acme.com"), '{"rank": 3}')
    with server.client(decode_responses=decode) as client:
        cache = Cache(client)
        assert cache.get(ENRICHMENT, ("acme.com", DIGEST)) == ACME
        raw = cache.get(DATAFORSEO, "acme.com")
        assert raw == ('{"rank": 3}' if decode else b'{"rank": 3}')


@pytest.mark.parametrize("decode", [True, False])
async def test_model_values_round_trip(server: Server, decode: bool) -> None:
    async with server.async_client(decode_responses=decode) as client:
        cache = AsyncCache(client)
        assert await cache.get(ENRICHMENT, ("acme.com", DIGEST)) is None
        await cache.set(ENRICHMENT, ("acme.com", DIGEST), ACME)
        profile = await cache.get(ENRICHMENT, ("acme.com", DIGEST))
        assert profile == ACME
        assert isinstance(profile, CompanyProfile)


@pytest.mark.parametrize("decode", [True, False])
def test_raw_values_read_back_as_bytes_or_as_str_when_the_client_decodes(
    server: Server, decode: bool
) -> None:
    with server.client(decode_responses=decode) as client:
        cache = Cache(client)
        cache.set(DATAFORSEO, "bytes.com", b"\x00\xff raw" if not decode else b"raw bytes")
        cache.set(DATAFORSEO, "text.com", "héllo")
        cache.set(DATAFORSEO, "empty.com", b"")
        if decode:
            assert cache.get(DATAFORSEO, "bytes.com") == "raw bytes"
            assert cache.get(DATAFORSEO, "text.com") == "héllo"
            assert cache.get(DATAFORSEO, "empty.com") == ""
        else:
            assert cache.get(DATAFORSEO, "bytes.com") == b"\x00\xff raw"
            assert cache.get(DATAFORSEO, "text.com") == "héllo".encode()
            # An empty value is a hit, not a miss.
            assert cache.get(DATAFORSEO, "empty.com") == b""


def test_a_stored_value_that_no_longer_validates_is_a_logged_miss(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-value-content"
    key = f"v1:enrichment:acme.com:{DIGEST}"
    with server.client() as client:
        cache = Cache(client)
        for stored in (
            json.dumps({"name": secret}),  # a field the model now requires is missing
            json.dumps({"name": secret, "employees": "many"}),
            f"not json {secret}",
            b"\xff\xfe not utf-8",
        ):
            client.set(key, stored)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="atomlimit.cache"):
                assert cache.get(ENRICHMENT, ("acme.com", DIGEST)) is None
            assert len(caplog.records) == 1
            assert f"cache entry {key} does not validate as CompanyProfile" in caplog.text
            assert secret not in caplog.text

        # get_or_set treats it as a miss too, and replaces it.
        assert cache.get_or_set(ENRICHMENT, ("acme.com", DIGEST), lambda: ACME) == ACME
        assert cache.get(ENRICHMENT, ("acme.com", DIGEST)) == ACME


async def test_waiters_on_an_invalid_entry_warn_once_each_and_replace_it(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    key = f"v1:enrichment:stale.com:{DIGEST}"
    async with server.async_client() as client:
        cache = AsyncCache(client)
        await client.set(key, json.dumps({"legacy": True}))
        factory, runs = _factory_counter(0.3)  # long enough for several polls each
        with caplog.at_level(logging.WARNING, logger="atomlimit.cache"):
            results = await asyncio.gather(
                *(cache.get_or_set(ENRICHMENT, ("stale.com", DIGEST), factory) for _ in range(5))
            )
        assert results == [ACME] * 5
        assert runs[0] == 1
        assert len(caplog.records) == 5
        assert await cache.get(ENRICHMENT, ("stale.com", DIGEST)) == ACME


def test_a_version_bump_makes_old_entries_unreachable(server: Server) -> None:
    with server.client() as client:
        v1, v2 = Cache(client, version="v1"), Cache(client, version="v2")
        v1.set(ENRICHMENT, ("acme.com", DIGEST), ACME)

        assert v2.get(ENRICHMENT, ("acme.com", DIGEST)) is None
        fresh = CompanyProfile(name="Acme Corp", employees=43)
        assert v2.get_or_set(ENRICHMENT, ("acme.com", DIGEST), lambda: fresh) == fresh

        # Old workers still read their own entries during the rollout, and
        # both generations expire by their own TTL.
        assert v1.get(ENRICHMENT, ("acme.com", DIGEST)) == ACME
        assert sorted(client.keys("*")) == [
            f"v1:enrichment:acme.com:{DIGEST}".encode(),
            f"v2:enrichment:acme.com:{DIGEST}".encode(),
        ]
        assert all(client.pttl(key) > 0 for key in client.keys("*"))


def test_every_key_the_cache_writes_has_a_ttl(server: Server) -> None:
    with server.client() as client:
        cache = Cache(client, lock_ttl=timedelta(seconds=7))
        lock = f"v1:enrichment:acme.com:{DIGEST}{LOCK_SUFFIX}"
        lock_ttls: list[int] = []

        def factory() -> CompanyProfile:
            lock_ttls.append(client.pttl(lock))
            return ACME

        cache.set(DATAFORSEO, "acme.com", b"x")
        cache.get_or_set(ENRICHMENT, ("acme.com", DIGEST), factory)
        with pytest.raises(ZeroDivisionError):
            cache.get_or_set(DATAFORSEO, "fails.com", lambda: 1 / 0)  # type: ignore[arg-type,return-value]
        cache.touch(DATAFORSEO, "acme.com")

        assert 0 < lock_ttls[0] <= 7_000  # the lock carries its TTL from the start
        keys = client.keys("*")
        assert sorted(keys) == [
            b"v1:dataforseo:acme.com",
            f"v1:enrichment:acme.com:{DIGEST}".encode(),
        ]
        assert all(client.pttl(key) > 0 for key in keys)


def test_touch_restarts_the_ttl_and_delete_removes(server: Server) -> None:
    with server.client() as client:
        cache = Cache(client)
        key = "v1:dataforseo:acme.com"
        assert cache.touch(DATAFORSEO, "acme.com") is False
        assert cache.delete(DATAFORSEO, "acme.com") is False
        cache.set(DATAFORSEO, "acme.com", b"x")
        client.pexpire(key, 60_000)

        assert cache.touch(DATAFORSEO, "acme.com") is True
        assert client.pttl(key) > 30 * 86_400_000 - 5_000
        assert cache.delete(DATAFORSEO, "acme.com") is True
        assert client.exists(key) == 0
        assert cache.get(DATAFORSEO, "acme.com") is None


async def test_async_touch_and_delete(server: Server) -> None:
    async with server.async_client() as client:
        cache = AsyncCache(client)
        await cache.set(DATAFORSEO, "acme.com", b"x")
        await client.pexpire("v1:dataforseo:acme.com", 60_000)
        assert await cache.touch(DATAFORSEO, "acme.com") is True
        assert await client.pttl("v1:dataforseo:acme.com") > 60_000
        assert await cache.delete(DATAFORSEO, "acme.com") is True
        assert await cache.delete(DATAFORSEO, "acme.com") is False


def test_bad_identifiers_are_refused_before_anything_is_sent() -> None:
    # Nothing listens on this port: any command would raise BackendError.
    with redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0)) as nowhere:
        cache = Cache(nowhere)
        with pytest.raises(InvalidInput, match="identifier part 2 of 2 'a:b' contains ':'"):
            cache.get(ENRICHMENT, ("acme.com", "a:b"))
        with pytest.raises(InvalidInput, match="identifier part 1 of 1 is empty"):
            cache.get_or_set(ENRICHMENT, ("",), lambda: ACME)
        with pytest.raises(InvalidInput, match="takes a CompanyProfile"):
            cache.set(ENRICHMENT, ("acme.com", DIGEST), "not a profile")  # type: ignore[arg-type]


def test_redis_failures_raise_backend_error_with_the_cause_chained() -> None:
    with redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0)) as nowhere:
        cache = Cache(nowhere)
        with pytest.raises(BackendError, match=r"^GET: ConnectionError") as caught:
            cache.get(DATAFORSEO, "acme.com")
        assert isinstance(caught.value.__cause__, redis.ConnectionError)


def test_unlock_deletes_only_the_lock_its_own_token_took(server: Server) -> None:
    with server.client() as client:
        runner = SyncRunner(client)
        flow = plan().get_or_set(DATAFORSEO, "acme.com")
        lock = "v1:dataforseo:acme.com" + LOCK_SUFFIX
        # Our lock expired and another worker took it with its own token.
        client.set(lock, "their-token", px=60_000)
        next(flow)  # GET
        take = flow.send(None)
        assert isinstance(take, Command)
        ours = take.args[2]
        assert runner.send(take) is False  # theirs is held: we cannot take it

        # The release script itself, with our token and with theirs.
        unlock = Call(script("cache_unlock"), (lock,), (ours,), bool)
        assert runner.send(unlock) is False
        assert client.get(lock) == b"their-token"
        assert runner.send(unlock._replace(args=("their-token",))) is True
        assert client.exists(lock) == 0
        flow.close()


# --------------------------------------------------------------------------
# Single flight under real concurrency
# --------------------------------------------------------------------------

CONCURRENCY = 100
FACTORY_DELAY = 0.2


async def test_single_flight_runs_the_factory_once_where_naive_get_then_set_runs_it_many_times(
    server: Server,
) -> None:
    async with server.async_client() as client:
        cache = AsyncCache(client)
        await client.ping()

        factory, runs = _factory_counter(FACTORY_DELAY)
        results = await asyncio.gather(
            *(
                cache.get_or_set(ENRICHMENT, ("single.com", DIGEST), factory)
                for _ in range(CONCURRENCY)
            )
        )
        assert runs[0] == 1
        assert results == [ACME] * CONCURRENCY

        # The same harness, concurrency and factory delay, with the naive pattern.
        naive_factory, naive_runs = _factory_counter(FACTORY_DELAY)

        async def get_then_set() -> CompanyProfile:
            value = await cache.get(ENRICHMENT, ("naive.com", DIGEST))
            if value is None:
                value = await naive_factory()
                await cache.set(ENRICHMENT, ("naive.com", DIGEST), value)
            return value

        naive = await asyncio.gather(*(get_then_set() for _ in range(CONCURRENCY)))
        assert naive == [ACME] * CONCURRENCY
        assert naive_runs[0] > 1, "the naive pattern should stampede, or this test proves nothing"
        assert await client.keys("*::lock") == []


def test_sync_single_flight_across_threads_runs_the_factory_once(server: Server) -> None:
    threads = 20
    with server.client(max_connections=threads + 5) as client:
        cache = Cache(client)

        def race(call: Callable[[Callable[[], CompanyProfile]], CompanyProfile]) -> int:
            runs = [0]
            counted = threading.Lock()
            start = threading.Barrier(threads)

            def factory() -> CompanyProfile:
                with counted:
                    runs[0] += 1
                time.sleep(FACTORY_DELAY)
                return ACME

            def worker() -> CompanyProfile:
                start.wait()
                return call(factory)

            with ThreadPoolExecutor(threads) as pool:
                results = list(pool.map(lambda _: worker(), range(threads)))
            assert results == [ACME] * threads
            return runs[0]

        def naive(factory: Callable[[], CompanyProfile]) -> CompanyProfile:
            value = cache.get(ENRICHMENT, ("naive.com", DIGEST))
            if value is None:
                value = factory()
                cache.set(ENRICHMENT, ("naive.com", DIGEST), value)
            return value

        single = race(lambda f: cache.get_or_set(ENRICHMENT, ("single.com", DIGEST), f))
        assert single == 1
        assert race(naive) > 1


async def test_expired_lock_holder_does_not_block_waiters(server: Server) -> None:
    async with server.async_client() as client:
        cache = AsyncCache(client)
        lock = f"v1:enrichment:dead.com:{DIGEST}{LOCK_SUFFIX}"
        # A holder that took the lock and died: nobody will ever release it.
        assert await client.set(lock, "dead-holder", nx=True, px=300)

        locks: list[bytes | None] = []

        async def factory() -> CompanyProfile:
            locks.append(await client.get(lock))
            await asyncio.sleep(0.05)
            return ACME

        results = await asyncio.gather(
            *(
                cache.get_or_set(ENRICHMENT, ("dead.com", DIGEST), factory, wait=5 * SECOND)
                for _ in range(20)
            )
        )

        assert results == [ACME] * 20
        # One waiter took the lock once the dead holder's had expired, and
        # ran the factory under it; the rest got its value. Waiters that
        # ignored the lock would have run it under the dead holder's, and
        # waiters that waited out their 5 s bound would each have run it.
        assert len(locks) == 1
        assert locks[0] not in (None, b"dead-holder")
        assert await cache.get(ENRICHMENT, ("dead.com", DIGEST)) == ACME
        assert await client.exists(lock) == 0


async def test_stuck_lock_holder_is_bounded_by_the_wait(server: Server) -> None:
    async with server.async_client() as client:
        cache = AsyncCache(client)
        lock = f"v1:enrichment:stuck.com:{DIGEST}{LOCK_SUFFIX}"
        # A holder that is alive but stuck far longer than anyone should wait.
        await client.set(lock, "stuck-holder", px=60_000)

        locks: list[bytes | None] = []

        async def factory() -> CompanyProfile:
            locks.append(await client.get(lock))
            return ACME

        await client.config_resetstat()
        results = await asyncio.gather(
            *(
                cache.get_or_set(
                    ENRICHMENT, ("stuck.com", DIGEST), factory, wait=timedelta(milliseconds=300)
                )
                for _ in range(10)
            )
        )
        reads = (await client.info("commandstats"))["cmdstat_get"]["calls"]

        assert results == [ACME] * 10
        # Each waiter that outwaited the bound ran the factory itself, while
        # the stuck holder still had the lock: none waited for it to expire.
        assert 1 <= len(locks) <= 10
        assert set(locks) == {b"stuck-holder"}
        # And none ran it at once: every waiter read the entry again after
        # a first miss before giving up (the factory's reads of the lock
        # are GETs too).
        assert reads - len(locks) >= 2 * 10
        assert await cache.get(ENRICHMENT, ("stuck.com", DIGEST)) == ACME
        assert await client.get(lock) == b"stuck-holder"  # not ours to delete


async def test_cancelled_holder_leaves_its_lock_to_expire_and_waiters_take_over(
    server: Server,
) -> None:
    async with server.async_client() as client:
        cache = AsyncCache(client, lock_ttl=timedelta(milliseconds=400))
        lock = f"v1:enrichment:cancel.com:{DIGEST}{LOCK_SUFFIX}"
        holding = asyncio.Event()

        async def hangs() -> CompanyProfile:
            holding.set()
            await asyncio.sleep(60)
            raise AssertionError("never finishes")

        holder = asyncio.create_task(cache.get_or_set(ENRICHMENT, ("cancel.com", DIGEST), hangs))
        await holding.wait()
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        assert 0 < await client.pttl(lock) <= 400  # the dead holder's lock is still there

        factory, runs = _factory_counter(0.02)
        results = await asyncio.gather(
            *(cache.get_or_set(ENRICHMENT, ("cancel.com", DIGEST), factory) for _ in range(10))
        )
        assert results == [ACME] * 10
        assert runs[0] == 1


async def test_failing_factory_releases_the_lock_and_a_waiter_takes_over(server: Server) -> None:
    async with server.async_client() as client:
        cache = AsyncCache(client)
        runs = [0]

        async def first_call_fails() -> CompanyProfile:
            runs[0] += 1
            await asyncio.sleep(0.1)
            if runs[0] == 1:
                raise RuntimeError("upstream API down")
            return ACME

        results = await asyncio.gather(
            *(
                cache.get_or_set(ENRICHMENT, ("flaky.com", DIGEST), first_call_fails)
                for _ in range(10)
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1
        assert isinstance(errors[0], RuntimeError)
        assert results.count(ACME) == 9
        # The failed holder's run, then one waiter's under the released lock.
        # Had the lock been left to expire (10 s), the waiters would have
        # outwaited their 5 s bound and each run the factory itself.
        assert runs[0] == 2
        assert await client.keys("*::lock") == []


# --------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------

DOMAINS = ("acme.com", "globex.com", "initech.com", "umbrella.com", "hooli.com")


def test_cache_on_a_cluster(cluster: Cluster) -> None:
    with cluster.client() as client:
        cache = Cache(client)
        for domain in DOMAINS:
            cache.set(DATAFORSEO, domain, domain.encode())
            assert cache.get(ENRICHMENT, (domain, DIGEST)) is None
            assert cache.get_or_set(ENRICHMENT, (domain, DIGEST), lambda: ACME) == ACME

        for domain in DOMAINS:
            assert client.get(f"v1:dataforseo:{domain}") == domain.encode()
            assert cache.get(ENRICHMENT, (domain, DIGEST)) == ACME
            assert client.pttl(f"v1:enrichment:{domain}:{DIGEST}") > 0
            assert client.exists(f"v1:enrichment:{domain}:{DIGEST}{LOCK_SUFFIX}") == 0
        assert cache.touch(DATAFORSEO, "acme.com") is True
        assert cache.delete(DATAFORSEO, "acme.com") is True
        # The entries spread over the masters: each step touches one key, so
        # an entry and its lock need not share a node.
        nodes = {client.get_node_from_key(f"v1:dataforseo:{domain}").name for domain in DOMAINS}
        assert len(nodes) > 1


async def test_async_single_flight_on_a_cluster(cluster: Cluster) -> None:
    async with cluster.async_client() as client:
        cache = AsyncCache(client)
        for domain in DOMAINS:
            factory, runs = _factory_counter(0.05)
            results = await asyncio.gather(
                *(cache.get_or_set(ENRICHMENT, (domain, DIGEST), factory) for _ in range(20))
            )
            assert results == [ACME] * 20
            assert runs[0] == 1
            assert await cache.get(ENRICHMENT, (domain, DIGEST)) == ACME

"""Concurrency leases on real servers: at most ``limit`` calls in flight.

Timing tests use ``time_source="client"`` with a clock the test moves, so
leases lapse on command; they run on Redis, Valkey and the cluster. The race
tests count calls in flight in the workers themselves, and each is run again
on the naive two-command pattern, which must fail the same check.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import redis.asyncio
from conftest import Target
from helpers import START, Clock, process_race
from redis.crc import key_slot
from servers import Server

from atomlimit import (
    AsyncLease,
    AsyncLimiter,
    Concurrency,
    InvalidInput,
    Lease,
    Limiter,
    LimitExceeded,
)
from atomlimit._keys import subject_tag

OPENAI = Concurrency(name="openai", limit=3, lease=timedelta(seconds=10))


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(START + seconds, UTC)


def _limiter(client: Any, clock: Clock) -> Limiter:
    return Limiter(client, time_source="client", clock=clock)


def _async_limiter(client: Any, clock: Clock) -> AsyncLimiter:
    return AsyncLimiter(client, time_source="client", clock=clock)


# -- at most `limit` at once --------------------------------------------------------


def test_at_most_limit_leases_then_denied_until_the_earliest_expires(target: Target) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        taken = []
        for _ in range(3):
            taken.append(limiter.lease(OPENAI, "s"))
            clock.advance(2)
        denied = limiter.lease(OPENAI, "s", raise_on_deny=False)  # at +6 s
        clock.advance(3.5)
        still = limiter.lease(OPENAI, "s", raise_on_deny=False)  # at +9.5 s
        clock.advance(0.5)
        freed = limiter.lease(OPENAI, "s", raise_on_deny=False)  # at +10 s

    assert all(isinstance(lease, Lease) and lease.allowed for lease in taken)
    assert [lease.decision.used for lease in taken] == [1, 2, 3]
    assert [lease.decision.remaining for lease in taken] == [2, 1, 0]
    # reset_at: when the last lease in flight expires.
    assert [lease.decision.reset_at for lease in taken] == [_at(10), _at(12), _at(14)]
    assert len({lease.id for lease in taken}) == 3
    assert not denied.allowed
    assert denied.decision.used == 3
    assert denied.decision.retry_after == timedelta(seconds=4)  # the first ends at +10 s
    assert denied.decision.reset_at == _at(14)
    assert not still.allowed
    assert still.decision.retry_after == timedelta(seconds=0.5)
    assert freed.allowed
    assert freed.decision.used == 3


def test_full_concurrency_raises_limit_exceeded_by_default(target: Target) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        for _ in range(3):
            limiter.lease(OPENAI, "s")
        clock.advance(1)
        with pytest.raises(LimitExceeded) as caught:
            limiter.lease(OPENAI, "s")
        peeked = limiter.peek(OPENAI, "s")

    assert not caught.value.decision.allowed
    assert caught.value.decision.retry_after == timedelta(seconds=9)
    assert peeked.used == 3  # the denial took nothing


async def test_async_full_concurrency_raises_or_returns_a_denied_lease(target: Target) -> None:
    async with target.async_client() as client:
        limiter = _async_limiter(client, Clock())
        held = [await limiter.lease(OPENAI, "s") for _ in range(3)]
        with pytest.raises(LimitExceeded) as caught:
            await limiter.lease(OPENAI, "s")
        denied = await limiter.lease(OPENAI, "s", raise_on_deny=False)
        peeked = await limiter.peek(OPENAI, "s")

    assert all(isinstance(lease, AsyncLease) and lease.allowed for lease in held)
    assert caught.value.decision.retry_after == timedelta(seconds=10)
    assert not denied.allowed
    assert await denied.release() is False
    assert await denied.renew() is False
    assert peeked.used == 3


def test_denied_lease_without_raising_has_release_and_renew_that_do_nothing(
    target: Target,
) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        held = [limiter.lease(OPENAI, "s") for _ in range(3)]
        denied = limiter.lease(OPENAI, "s", raise_on_deny=False)
        released, renewed = denied.release(), denied.renew()
        with denied:
            pass
        peeked = limiter.peek(OPENAI, "s")

    assert len(held) == 3
    assert not denied.allowed
    assert (released, renewed) == (False, False)
    assert peeked.used == 3  # nobody else's slot was touched


# -- release and renew ---------------------------------------------------------------


def test_release_frees_the_slot_and_is_idempotent(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        held = [limiter.lease(OPENAI, "s") for _ in range(3)]
        first, second = held[0].release(), held[0].release()
        after = limiter.lease(OPENAI, "s", raise_on_deny=False)
        peeked = limiter.peek(OPENAI, "s")

    assert (first, second) == (True, False)
    assert after.allowed
    assert peeked.used == 3
    assert not peeked.allowed


def test_renew_extends_the_lease_to_a_full_length_from_now(target: Target) -> None:
    one = Concurrency(name="one", limit=1, lease=timedelta(seconds=10))
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        lease = limiter.lease(one, "s")
        clock.advance(8)
        renewed = lease.renew()  # now lasts until +18 s
        clock.advance(5)
        denied = limiter.lease(one, "s", raise_on_deny=False)  # at +13 s
        clock.advance(4.5)
        still_held = limiter.peek(one, "s")  # at +17.5 s
        clock.advance(0.5)
        taken = limiter.lease(one, "s", raise_on_deny=False)  # at +18 s

    assert renewed is True
    assert not denied.allowed
    assert denied.decision.retry_after == timedelta(seconds=5)
    assert denied.decision.reset_at == _at(18)
    assert not still_held.allowed
    assert taken.allowed


def test_renew_after_the_lease_lapsed_returns_false_and_takes_no_slot(target: Target) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        lease = limiter.lease(OPENAI, "s")
        clock.advance(10)
        renewed = lease.renew()
        peeked = limiter.peek(OPENAI, "s")
        released = lease.release()

    assert renewed is False
    assert peeked.used == 0
    assert released is False


def test_release_after_the_lease_lapsed_returns_false(target: Target) -> None:
    # docs/leases.md: release() "returns False if the lease had already
    # lapsed". A lapsed lease no script has pruned yet still answers True.
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        lease = limiter.lease(OPENAI, "s")
        clock.advance(11)
        released = lease.release()

    assert released is False


async def test_async_renew_and_release(target: Target) -> None:
    clock = Clock()
    async with target.async_client() as client:
        limiter = _async_limiter(client, clock)
        lease = await limiter.lease(OPENAI, "s")
        clock.advance(9)
        renewed = await lease.renew()
        clock.advance(9)
        still = await limiter.peek(OPENAI, "s")
        first, second = await lease.release(), await lease.release()
        after = await limiter.peek(OPENAI, "s")

    assert renewed is True
    assert still.used == 1
    assert (first, second) == (True, False)
    assert after.used == 0


# -- a holder that dies ------------------------------------------------------------


def test_dead_holders_lease_expires_and_frees_its_slot(target: Target) -> None:
    two = Concurrency(name="two", limit=2, lease=timedelta(seconds=10))
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        limiter.lease(two, "s")  # both holders die holding their leases
        limiter.lease(two, "s")
        clock.advance(9.5)
        before = limiter.lease(two, "s", raise_on_deny=False)
        clock.advance(0.5)
        after = limiter.lease(two, "s", raise_on_deny=False)
        members = client.zcard("atomlimit:v1:{s:s}:cc:two")

    assert not before.allowed
    assert before.decision.retry_after == timedelta(seconds=0.5)
    assert after.allowed
    assert after.decision.used == 1
    assert members == 1  # both dead leases pruned by the take, no cleanup job


# -- the context manager -----------------------------------------------------------


def test_lease_block_releases_its_slot_on_exit(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        with limiter.lease(OPENAI, "s") as lease:
            inside = limiter.peek(OPENAI, "s")
        after = limiter.peek(OPENAI, "s")
        again = lease.release()

    assert inside.used == 1
    assert after.used == 0
    assert again is False


def test_lease_block_that_raises_releases_and_re_raises(target: Target) -> None:
    def failing_call(limiter: Limiter) -> None:
        with limiter.lease(OPENAI, "s"):
            raise RuntimeError("the call failed")

    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        with pytest.raises(RuntimeError, match="the call failed"):
            failing_call(limiter)
        after = limiter.peek(OPENAI, "s")

    assert after.used == 0


async def test_async_lease_block_releases_on_exit_and_when_it_raises(target: Target) -> None:
    async with target.async_client() as client:
        limiter = _async_limiter(client, Clock())
        async with limiter.lease(OPENAI, "s") as lease:
            inside = await limiter.peek(OPENAI, "s")
        after_block = await limiter.peek(OPENAI, "s")
        with pytest.raises(RuntimeError, match="boom"):
            await _async_failing_block(limiter)
        after_raise = await limiter.peek(OPENAI, "s")
        again = await lease.release()

    assert isinstance(lease, AsyncLease)
    assert inside.used == 1
    assert after_block.used == 0
    assert after_raise.used == 0
    assert again is False


async def _async_failing_block(limiter: AsyncLimiter) -> None:
    async with limiter.lease(OPENAI, "s"):
        raise RuntimeError("boom")


async def test_async_full_lease_block_raises_before_entering(target: Target) -> None:
    entered: list[bool] = []

    async def enter(limiter: AsyncLimiter) -> None:
        async with limiter.lease(OPENAI, "s"):
            entered.append(True)

    async with target.async_client() as client:
        limiter = _async_limiter(client, Clock())
        held = [await limiter.lease(OPENAI, "s") for _ in range(3)]
        with pytest.raises(LimitExceeded):
            await enter(limiter)
        peeked = await limiter.peek(OPENAI, "s")

    assert len(held) == 3
    assert entered == []
    assert peeked.used == 3


# -- peek, reset, hit, request ids ---------------------------------------------------


def test_peek_and_reset_on_a_concurrency_limit(target: Target) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        empty = limiter.peek(OPENAI, "s")
        held = [limiter.lease(OPENAI, "s") for _ in range(3)]
        clock.advance(4)
        full = limiter.peek(OPENAI, "s")
        limiter.reset(OPENAI, "s")
        after_reset = limiter.peek(OPENAI, "s")
        released = held[0].release()
        renewed = held[1].renew()

    assert (empty.allowed, empty.used, empty.remaining) == (True, 0, 3)
    assert (full.allowed, full.used, full.remaining) == (False, 3, 0)
    assert full.retry_after == timedelta(seconds=6)
    assert full.granted == 0
    assert (after_reset.allowed, after_reset.used) == (True, 0)
    assert (released, renewed) == (False, False)  # reset dropped every lease


def test_hit_or_refund_on_a_concurrency_limit_is_refused(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        with pytest.raises(InvalidInput, match="lease"):
            limiter.hit(OPENAI, "s")
        with pytest.raises(InvalidInput, match="lease"):
            limiter.refund(OPENAI, "s", 1)
        peeked = limiter.peek(OPENAI, "s")

    assert peeked.used == 0


async def test_async_hit_on_a_concurrency_limit_is_refused(target: Target) -> None:
    async with target.async_client() as client:
        limiter = _async_limiter(client, Clock())
        with pytest.raises(InvalidInput, match="lease"):
            await limiter.hit(OPENAI, "s")
        peeked = await limiter.peek(OPENAI, "s")

    assert peeked.used == 0


def test_resent_lease_with_a_request_id_takes_one_slot(target: Target) -> None:
    with target.sync_client() as client:
        limiter = _limiter(client, Clock())
        first = limiter.lease(OPENAI, "s", request_id="call-1")
        resent = limiter.lease(OPENAI, "s", request_id="call-1")
        peeked = limiter.peek(OPENAI, "s")
        released = first.release(), resent.release()

    assert first.id == resent.id == "call-1"
    assert resent.decision == first.decision
    assert peeked.used == 1
    assert released == (True, False)


# -- races: many holders at once -----------------------------------------------------

RACE_TASKS = 100
RACE_SLOTS = 5
RACE_SPEC = Concurrency(name="race", limit=RACE_SLOTS, lease=timedelta(seconds=60))

Take = Callable[[], Awaitable[Any]]
GiveBack = Callable[[Any], Awaitable[bool]]


@dataclass
class InFlight:
    now: int = 0
    peak: int = 0
    done: int = 0
    released: int = 0


async def _lease_race(take: Take, give_back: GiveBack) -> InFlight:
    """Every task takes a lease (retrying while full), holds it a few ms, gives it back."""
    rng = random.Random(20260101)
    pauses = [rng.uniform(0.001, 0.005) for _ in range(RACE_TASKS)]
    count = InFlight()
    gate = asyncio.Event()

    async def worker(pause: float) -> None:
        await gate.wait()
        handle = await take()
        while handle is None:  # full: try again shortly
            await asyncio.sleep(0.001)
            handle = await take()
        count.now += 1
        count.peak = max(count.peak, count.now)
        await asyncio.sleep(pause)
        count.now -= 1
        released = await give_back(handle)  # awaited before the += reads the tally
        count.released += released
        count.done += 1

    tasks = [asyncio.create_task(worker(pause)) for pause in pauses]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    return count


async def test_hundred_tasks_never_hold_more_than_the_limit_at_once(server: Server) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:

        async def take() -> AsyncLease | None:
            lease = await limiter.lease(RACE_SPEC, "subject", raise_on_deny=False)
            return lease if lease.allowed else None

        async def give_back(lease: AsyncLease) -> bool:
            return await lease.release()

        count = await _lease_race(take, give_back)
        final = await limiter.peek(RACE_SPEC, "subject")

    assert count.peak == RACE_SLOTS  # never more, and the limit was reached
    assert count.done == count.released == RACE_TASKS
    assert final.used == 0


async def test_naive_count_then_add_holds_more_than_the_limit_under_the_same_race(
    server: Server,
) -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=server.port, max_connections=RACE_TASKS)
    key = "naive:leases"

    async def take() -> str | None:
        if await client.zcard(key) >= RACE_SLOTS:
            return None
        member = uuid.uuid4().hex
        await client.zadd(key, {member: time.time() + 60})
        return member

    async def give_back(member: str) -> bool:
        return bool(await client.zrem(key, member))

    async with client:
        count = await _lease_race(take, give_back)

    assert count.peak > RACE_SLOTS


PROCESSES = 6
ROUNDS_PER_PROCESS = 50
PROCESS_SLOTS = 3


def _engine_holder(url: str, start: Any, name: str, rounds: int) -> int:
    spec = Concurrency(name=name, limit=PROCESS_SLOTS, lease=timedelta(seconds=60))
    rng = random.Random()
    peak = 0
    with Limiter.from_url(url) as limiter, redis.Redis.from_url(url) as counter:
        limiter.peek(spec, "warm-up")  # connect and load the scripts before the race
        start.wait()
        for _ in range(rounds):
            while not (lease := limiter.lease(spec, "subject", raise_on_deny=False)).allowed:
                time.sleep(0.0005)
            peak = max(peak, counter.incr(f"{name}:in-flight"))
            time.sleep(rng.uniform(0.001, 0.003))
            counter.decr(f"{name}:in-flight")
            lease.release()
    return peak


def _naive_holder(url: str, start: Any, name: str, rounds: int) -> int:
    rng = random.Random()
    peak = 0
    key = f"{name}:leases"
    with redis.Redis.from_url(url) as client:
        client.ping()
        start.wait()
        for _ in range(rounds):
            while client.zcard(key) >= PROCESS_SLOTS:
                time.sleep(0.0005)
            member = uuid.uuid4().hex
            client.zadd(key, {member: time.time() + 60})
            peak = max(peak, client.incr(f"{name}:in-flight"))
            time.sleep(rng.uniform(0.001, 0.003))
            client.decr(f"{name}:in-flight")
            client.zrem(key, member)
    return peak


@pytest.mark.slow
def test_processes_never_hold_more_than_the_limit_at_once(server: Server) -> None:
    peak = process_race(server.url, _engine_holder, PROCESSES, ROUNDS_PER_PROCESS, max)

    assert peak == PROCESS_SLOTS  # never more, and the limit was reached


@pytest.mark.slow
def test_naive_count_then_add_overshoots_under_the_same_processes(server: Server) -> None:
    # The interleaving between processes is up to the OS scheduler, so give
    # the naive pattern several rounds to show its race.
    peaks = []
    for _ in range(5):
        peaks.append(process_race(server.url, _naive_holder, PROCESSES, ROUNDS_PER_PROCESS, max))
        if peaks[-1] > PROCESS_SLOTS:
            break

    assert max(peaks) > PROCESS_SLOTS, peaks


# -- keys ---------------------------------------------------------------------------


def test_every_lease_key_carries_its_subjects_tag_and_a_ttl(target: Target) -> None:
    clock = Clock()
    subjects = ("client-42", "a:b{c}")
    with target.sync_client() as client:
        limiter = _limiter(client, clock)
        for subject in subjects:
            kept = limiter.lease(OPENAI, subject, request_id="lease-1")
            limiter.lease(OPENAI, subject).release()
            with limiter.lease(OPENAI, subject):
                pass
            limiter.lease(OPENAI, subject)  # its holder dies
            clock.advance(5)
            kept.renew()
            limiter.lease(OPENAI, subject, raise_on_deny=False)
        keys = _all_keys(client)
        ttls = {key: client.pttl(key) for key in keys}

    assert len(keys) >= 2 * 2  # a lease set and a request record per subject
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    for subject in subjects:
        tag = subject_tag(subject)
        mine = [key for key in keys if key.startswith(f"atomlimit:v1:{tag}:")]
        assert {key_slot(key.encode()) for key in mine} == {key_slot(tag.encode())}
        assert any(key.endswith(":cc:openai") for key in mine)
    assert len([k for s in subjects for k in keys if subject_tag(s) in k]) == len(keys)


def _all_keys(client: Any) -> list[str]:
    # SCAN, unlike KEYS, walks every primary of a cluster.
    return sorted(k.decode() if isinstance(k, bytes) else k for k in client.scan_iter("*"))

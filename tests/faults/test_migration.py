"""A cluster slot migrates under load, and hits on it keep working, exactly.

While a slot moves, the source node answers a call naming a key it no
longer has with ASK (go to the importing node, after ASKING), and a call
naming several keys of which only some are still there with TRYAGAIN. A
hit names two keys, its window's counter and its subject's override hash,
which usually does not exist; so while the slot moves, the source answers
ASK and the importing node TRYAGAIN, by turns. The runner follows each ASK
and waits out each TRYAGAIN, within SETTLE_FOR (atomlimit._retry), then
follows MOVED once the slot is handed over. The control runs a bare script
naming a second, never-existing key in every call, with redis-py's own
retries: it fails until the migration ends.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import redis
import redis.asyncio
from redis.crc import key_slot
from servers import Cluster, Server

from atomlimit import AsyncLimiter, RateLimit

SPEC = RateLimit(name="moving", limit=10**9, window="day")
SUBJECT = "migrating"
FILLER = 3_000
"""Keys that share the subject's slot, so that moving it takes a while."""
TASKS = 50


def _owner(cluster: Cluster, slot: int) -> tuple[Server, str, Server, str]:
    """The node serving ``slot`` and another node, each with its cluster id."""
    with cluster.nodes[0].client() as client:
        layout = client.execute_command("CLUSTER", "SLOTS")
    port = next(int(primary[1]) for first, last, primary, *_ in layout if first <= slot <= last)
    source = next(node for node in cluster.nodes if node.port == port)
    target = next(node for node in cluster.nodes if node.port != port)
    return source, _node_id(source), target, _node_id(target)


def _node_id(node: Server) -> str:
    with node.client() as client:
        return str(client.execute_command("CLUSTER", "MYID").decode())


@contextmanager
def _load(
    decide: Callable[[], Awaitable[object]],
    close: Callable[[], Awaitable[object]] | None = None,
) -> Iterator[tuple[list[object], list[BaseException]]]:
    """Run ``TASKS`` loops of ``decide`` in a background thread's event loop,
    then ``close`` in that loop."""
    results: list[object] = []
    errors: list[BaseException] = []
    running = [True]

    async def worker() -> None:
        while running[0]:
            try:
                results.append(await decide())
            except Exception as err:
                errors.append(err)
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(TASKS)))
        if close is not None:
            await close()

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    try:
        time.sleep(0.3)  # the load is running before the slot moves
        yield results, errors
        time.sleep(0.3)  # and keeps running after it has moved
    finally:
        running[0] = False
        thread.join(timeout=30)


def _migrate(source: Server, source_id: str, target: Server, target_id: str, slot: int) -> None:
    """Move ``slot`` from ``source`` to ``target`` the way redis-cli does, in small steps."""
    with source.client() as src, target.client() as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5_000, "KEYS", *keys)
            time.sleep(0.01)
        for node in (dst, src):
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def _settle(cluster: Cluster, slot: int, owner_port: int) -> None:
    """Wait until every node agrees who serves ``slot``."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        agreed = True
        for node in cluster.nodes:
            with node.client() as client:
                layout = client.execute_command("CLUSTER", "SLOTS")
            port = next(int(p[1]) for first, last, p, *_ in layout if first <= slot <= last)
            agreed = agreed and port == owner_port
        if agreed:
            return
        time.sleep(0.1)


def test_hits_keep_working_exactly_while_their_slot_migrates(cluster: Cluster) -> None:
    tag = "{s:" + SUBJECT + "}"
    slot = key_slot(tag.encode())
    source, source_id, target, target_id = _owner(cluster, slot)
    with source.client() as direct:
        direct.mset({f"{tag}:filler:{n}": "x" for n in range(FILLER)})
    client = cluster.async_client()
    limiter = AsyncLimiter(client)

    async def decide() -> object:
        return await limiter.hit(SPEC, SUBJECT)

    try:
        with _load(decide, client.aclose) as (decisions, errors):
            _migrate(source, source_id, target, target_id, slot)
        _settle(cluster, slot, target.port)
        with cluster.client() as probe:
            counted = max(int(probe.get(key)) for key in probe.scan_iter(f"*{tag}:fw:*"))
    finally:
        _migrate(target, target_id, source, source_id, slot)
        _settle(cluster, slot, source.port)
    print(f"during the migration: {len(decisions):,} hits decided, {len(errors)} errors")

    assert errors == []
    assert len(decisions) > TASKS
    assert all(getattr(d, "allowed", False) for d in decisions)
    assert counted == len(decisions)  # every admitted hit counted once, on one node


def test_a_call_naming_a_missing_key_fails_while_its_slot_migrates(cluster: Cluster) -> None:
    tag = "{s:" + SUBJECT + "-control}"
    slot = key_slot(tag.encode())
    source, source_id, target, target_id = _owner(cluster, slot)
    with source.client() as direct:
        direct.mset({f"{tag}:filler:{n}": "x" for n in range(FILLER)})
    client = cluster.client()
    record = client.register_script("redis.call('GET', KEYS[2]) return redis.call('INCR', KEYS[1])")

    async def decide() -> object:
        return await asyncio.to_thread(
            record, keys=[f"{tag}:counter", f"{tag}:record:{time.monotonic_ns()}"]
        )

    try:
        with _load(decide) as (_, errors):
            _migrate(source, source_id, target, target_id, slot)
        _settle(cluster, slot, target.port)
    finally:
        _migrate(target, target_id, source, source_id, slot)
        _settle(cluster, slot, source.port)
        client.close()
    print(f"during the migration: {len(errors)} errors, first: {errors[:1]}")

    assert errors
    assert all(isinstance(err, redis.exceptions.RedisError) for err in errors)


def _layout_reads(cluster: Cluster) -> int:
    """How many times the nodes were asked for the cluster's layout."""
    reads = 0
    for node in cluster.nodes:
        with node.client() as client:
            stats = client.info("commandstats")
        reads += sum(
            stats.get(f"cmdstat_cluster|{sub}", {}).get("calls", 0) for sub in ("slots", "shards")
        )
    return reads


def test_calls_that_meet_moved_together_share_one_refresh_of_the_layout(cluster: Cluster) -> None:
    """A burst of MOVED replies learns the layout once, not once per call.

    redis-py 6 makes every node object anew on each refresh and disconnects
    the old ones, connections in use included: with each of a batch's calls
    refreshing, a migration broke calls in flight on the lanes. Here every
    call of one batch meets MOVED; refreshing once per MOVED, as each call
    did, asks the nodes for the layout ``TASKS`` times.
    """
    tag = "{s:" + SUBJECT + "}"
    slot = key_slot(tag.encode())
    source, source_id, target, target_id = _owner(cluster, slot)

    async def main() -> tuple[list[object], int]:
        client = cluster.async_client()
        limiter = AsyncLimiter(client)
        try:
            await limiter.hit(SPEC, SUBJECT)  # the layout learned, the lane made
            # Moved while the client still routes the slot to the source.
            _migrate(source, source_id, target, target_id, slot)
            _settle(cluster, slot, target.port)
            before = _layout_reads(cluster)
            decisions = await asyncio.gather(*(limiter.hit(SPEC, SUBJECT) for _ in range(TASKS)))
            return list(decisions), _layout_reads(cluster) - before
        finally:
            await client.aclose()

    try:
        decisions, reads = asyncio.run(main())
    finally:
        _migrate(target, target_id, source, source_id, slot)
        _settle(cluster, slot, source.port)

    assert all(getattr(d, "allowed", False) for d in decisions)
    assert 1 <= reads < 5  # one per part of the batch handed out, at most, against TASKS

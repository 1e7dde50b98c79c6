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
from redis.exceptions import MovedError
from servers import Cluster, Server

from atomlimit import AsyncLimiter, Limiter, RateLimit
from atomlimit._retry import Moves

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


def _moved_replies(node: Server) -> int:
    """How many MOVED replies ``node`` has given."""
    with node.client() as client:
        stats = client.info("errorstats")
    return int(stats.get("errorstat_MOVED", {}).get("count", 0))


def test_calls_that_meet_moved_follow_it_without_learning_the_layout_again(
    cluster: Cluster,
) -> None:
    """A MOVED naming a node the layout knows is followed, and remembered.

    redis-py 6 makes every node object anew each time the layout is learned
    and disconnects the old ones, connections in use included: learning it
    on MOVED broke calls in flight beside the one that met it. Here every
    call of one batch meets MOVED; each is sent to the node it names, no
    node is asked for the layout, and the next batch goes straight there.
    Learning the layout once per MOVED, as the runner first did, asked for
    it ``TASKS`` times; once per burst, as it did next, at least once.
    """
    tag = "{s:" + SUBJECT + "}"
    slot = key_slot(tag.encode())
    source, source_id, target, target_id = _owner(cluster, slot)

    async def main() -> tuple[list[object], int, int]:
        client = cluster.async_client()
        limiter = AsyncLimiter(client)
        try:
            await limiter.hit(SPEC, SUBJECT)  # the layout learned, the lane made
            # Moved while the client still routes the slot to the source.
            _migrate(source, source_id, target, target_id, slot)
            _settle(cluster, slot, target.port)
            reads, moved = _layout_reads(cluster), _moved_replies(source)
            first = await asyncio.gather(*(limiter.hit(SPEC, SUBJECT) for _ in range(TASKS)))
            met = _moved_replies(source) - moved
            second = await asyncio.gather(*(limiter.hit(SPEC, SUBJECT) for _ in range(TASKS)))
            assert _moved_replies(source) - moved == met  # the second batch met none
            return [*first, *second], _layout_reads(cluster) - reads, met
        finally:
            await client.aclose()

    try:
        decisions, reads, met = asyncio.run(main())
    finally:
        _migrate(target, target_id, source, source_id, slot)
        _settle(cluster, slot, source.port)

    assert all(getattr(d, "allowed", False) for d in decisions)
    assert met >= 1  # the first batch did go to the source and was sent on
    assert reads == 0


def test_a_sync_limiter_follows_moved_without_learning_the_layout_again(
    cluster: Cluster,
) -> None:
    """The sync runner follows a MOVED as the async one does: once, then
    straight to the new owner, with no node asked for the layout."""
    tag = "{s:" + SUBJECT + "}"
    slot = key_slot(tag.encode())
    source, source_id, target, target_id = _owner(cluster, slot)
    client = cluster.client()
    limiter = Limiter(client)
    try:
        limiter.hit(SPEC, SUBJECT)  # the layout learned
        _migrate(source, source_id, target, target_id, slot)
        _settle(cluster, slot, target.port)
        reads, moved = _layout_reads(cluster), _moved_replies(source)
        decisions = [limiter.hit(SPEC, SUBJECT) for _ in range(TASKS)]
        met, reads = _moved_replies(source) - moved, _layout_reads(cluster) - reads
    finally:
        client.close()
        _migrate(target, target_id, source, source_id, slot)
        _settle(cluster, slot, source.port)

    assert all(d.allowed for d in decisions)
    assert met == 1  # only the first hit went to the source
    assert reads == 0


def test_a_moved_naming_a_node_the_layout_lacks_asks_for_the_layout(cluster: Cluster) -> None:
    """`Moves` follows only nodes the client knows; for another it says to
    learn the layout, and learning it drops what MOVED replies said."""
    tag = "{s:" + SUBJECT + "}"
    slot = key_slot(tag.encode())
    source, _, target, _ = _owner(cluster, slot)
    key = f"{tag}:counter"
    with cluster.client() as client:
        moves = Moves()
        assert moves.target(key, None) is None
        assert not moves.follow(client, MovedError(f"{slot} 127.0.0.1:1"))
        assert moves.target(key, None) is None
        assert moves.follow(client, MovedError(f"{slot} 127.0.0.1:{target.port}"))
        assert moves.target(key, None) == ("127.0.0.1", target.port)
        assert moves.target(key, ("127.0.0.1", source.port)) == ("127.0.0.1", source.port)
        assert moves.target("{another}:key", None) is None
        moves.forget()
        assert moves.target(key, None) is None


def test_calls_that_need_the_layout_together_learn_it_once(cluster: Cluster) -> None:
    """Concurrent refreshes of the layout share the one under way: each of
    ``TASKS`` refreshing on its own asks the nodes ``TASKS`` times."""

    async def main() -> int:
        client = cluster.async_client()
        limiter = AsyncLimiter(client)
        try:
            await limiter.hit(SPEC, SUBJECT)
            before = _layout_reads(cluster)
            await asyncio.gather(*(limiter._runner._refresh() for _ in range(TASKS)))
            return _layout_reads(cluster) - before
        finally:
            await client.aclose()

    assert 1 <= asyncio.run(main()) < 5

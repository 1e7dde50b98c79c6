"""A cluster master dies and its replica takes over: limiters follow the slot.

The master of the subject's slot is stopped, and its replica made master
with ``CLUSTER FAILOVER TAKEOVER``. No node will ever answer MOVED for the
old master: it is gone. A call routed by the layout the client learned
before finds its connection refused, which means nothing was written; the
runner learns the layout again and sends the call to the slot's owner now
(`atomlimit._retry`, ``Next.REROUTE``). Before, every call on the slot went
to the dead node for as long as the process lived, and the breaker opened.

Each test runs a cluster of its own (three masters, one replica), since a
failover changes its layout for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from conftest import ServerPool
from redis.crc import key_slot
from servers import HOST, Cluster, Server, start_cluster, wait_until

from atomlimit import AsyncLimiter, BackendError, Decision, Limiter, RateLimit
from atomlimit._retry import REDIRECTS

SPEC = RateLimit(name="failing-over", limit=10**9, window="day")
SUBJECT = "failing-over"
HITS = 40


class _Failover:
    """A cluster whose slot for ``SUBJECT`` has a master and one replica."""

    def __init__(self, cluster: Cluster, replica: Server, master: Server) -> None:
        self.cluster, self.replica, self.master = cluster, replica, master

    def layout_reads(self) -> int:
        """How many times the live nodes were asked for the layout."""
        reads = 0
        for node in (*self.cluster.nodes, self.replica):
            if node.running:
                with node.client() as client:
                    stats = client.info("commandstats")
                reads += sum(
                    stats.get(f"cmdstat_cluster|{sub}", {}).get("calls", 0)
                    for sub in ("slots", "shards")
                )
        return reads

    def take_over(self) -> None:
        """Stop the master; make the replica master; wait until the live
        nodes agree."""
        self.master.stop()
        with self.replica.client() as client:
            client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        slot = key_slot(("{s:" + SUBJECT + "}").encode())
        live = [node for node in (*self.cluster.nodes, self.replica) if node.running]

        def agreed() -> bool:
            for node in live:
                with node.client() as client:
                    layout = client.execute_command("CLUSTER", "SLOTS")
                owner = next(int(p[1]) for first, last, p, *_ in layout if first <= slot <= last)
                if owner != self.replica.port:
                    return False
            return True

        wait_until("the live nodes agree the replica owns the slot", agreed)

    def replicated(self, hits: int) -> None:
        """Wait until the replica has counted ``hits``: the count carries over."""
        wait_until("the replica has the count", lambda: self.counted() == hits)

    def counted(self) -> int:
        """The subject's count, read on the replica (the new master, after)."""
        with self.replica.client() as client:
            client.execute_command("READONLY")  # a replica's keys, not a MOVED
            keys = [k for k in client.scan_iter(f"*{{s:{SUBJECT}}}:fw:*") if b":ovr" not in k]
            return sum(int(client.get(key) or 0) for key in keys)


@pytest.fixture
def failover(server_pool: ServerPool) -> Iterator[_Failover]:
    binary = server_pool.binaries["redis"]
    cluster = start_cluster(binary, masters=3)
    replica = Server(binary, cluster=True)
    try:
        replica._start_on_free_port()
        slot = key_slot(("{s:" + SUBJECT + "}").encode())
        with cluster.nodes[0].client() as client:
            layout = client.execute_command("CLUSTER", "SLOTS")
        port = next(int(p[1]) for first, last, p, *_ in layout if first <= slot <= last)
        master = next(node for node in cluster.nodes if node.port == port)
        with master.client() as client:
            master_id = client.execute_command("CLUSTER", "MYID").decode()
        with replica.client() as client:
            client.execute_command("CLUSTER", "MEET", HOST, master.port)

            def known() -> bool:
                nodes = client.execute_command("CLUSTER", "NODES").decode()
                return master_id in nodes

            wait_until("the replica knows the master", known)
            client.execute_command("CLUSTER", "REPLICATE", master_id)

            def synced() -> bool:
                return bool(client.info("replication").get("master_link_status") == "up")

            wait_until("the replica is in sync", synced)
        yield _Failover(cluster, replica, master)
    finally:
        replica.stop()
        cluster.stop()


def test_an_async_limiter_follows_a_failover_to_the_new_master(failover: _Failover) -> None:
    async def main() -> tuple[int, list[Decision[int]]]:
        client = failover.cluster.async_client()
        limiter = AsyncLimiter(client)
        try:
            before = [await limiter.hit(SPEC, SUBJECT) for _ in range(HITS)]
            failover.replicated(HITS)
            failover.take_over()
            after = [await limiter.hit(SPEC, SUBJECT) for _ in range(HITS)]
            return sum(d.allowed for d in before), after
        finally:
            await client.aclose()

    allowed_before, after = asyncio.run(main())

    assert allowed_before == HITS
    assert all(d.allowed for d in after)
    assert failover.counted() == 2 * HITS


def test_a_sync_limiter_follows_a_failover_to_the_new_master(failover: _Failover) -> None:
    client = failover.cluster.client()
    limiter = Limiter(client)
    try:
        before = [limiter.hit(SPEC, SUBJECT) for _ in range(HITS)]
        failover.replicated(HITS)
        failover.take_over()
        after = [limiter.hit(SPEC, SUBJECT) for _ in range(HITS)]
    finally:
        client.close()

    assert all(d.allowed for d in before)
    assert all(d.allowed for d in after)
    assert failover.counted() == 2 * HITS


def test_a_master_down_with_no_takeover_fails_the_call_after_a_few_layout_reads(
    failover: _Failover,
) -> None:
    """Until a replica takes over, the slot has no owner to find: the call
    fails as one that reached no server, after at most `REDIRECTS` layout
    reads, not a stream of them."""

    async def main() -> tuple[BaseException | None, int]:
        client = failover.cluster.async_client()
        limiter = AsyncLimiter(client)
        try:
            await limiter.hit(SPEC, SUBJECT)
            failover.master.stop()
            reads = failover.layout_reads()
            try:
                await limiter.hit(SPEC, SUBJECT)
            except BackendError as err:
                return err, failover.layout_reads() - reads
            return None, failover.layout_reads() - reads
        finally:
            await client.aclose()

    err, reads = asyncio.run(main())
    print(f"the layout was read {reads} times before the call failed: {err}")

    assert isinstance(err, BackendError)
    assert err.applied == "no"
    assert 1 <= reads <= REDIRECTS

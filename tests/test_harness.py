"""Self-tests for the test harness (servers.py, proxy.py, conftest.py).

If these fail, failures elsewhere in the suite are not trustworthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from proxy import StallingProxy
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import CLUSTER_SLOTS, Cluster, Server, find_binaries

TESTS_DIR = Path(__file__).resolve().parent


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


# --------------------------------------------------------------------------
# Standalone servers
# --------------------------------------------------------------------------


def test_server_answers_ping_and_is_expected_product(server: Server, server_kind: str) -> None:
    with server.client() as client:
        assert client.ping() is True
        info = client.info("server")
    assert info["tcp_port"] == server.port
    if server_kind == "valkey":
        # Valkey keeps reporting a Redis-compatible redis_version (7.2.4) and
        # adds its own identity fields.
        assert info.get("server_name") == "valkey"
        assert "valkey_version" in info
    else:
        assert "redis_version" in info
        assert "valkey_version" not in info
        assert info.get("server_name", "redis") == "redis"
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    with redis.Redis.from_url(server.url) as via_url:
        assert via_url.ping() is True


_LEFTOVER_SCRIPT = "return 'leftover'"
_LEFTOVER_SHA = hashlib.sha1(_LEFTOVER_SCRIPT.encode()).hexdigest()


@pytest.mark.parametrize("round_", [1, 2])
def test_server_fixture_starts_empty(server: Server, round_: int) -> None:
    # Whichever round runs second proves the fixture wiped what the first left.
    with server.client() as client:
        assert client.dbsize() == 0
        assert client.script_exists(_LEFTOVER_SHA) == [False]
        client.set("harness:leftover", round_)
        assert client.script_load(_LEFTOVER_SCRIPT) == _LEFTOVER_SHA


def test_shared_server_is_reused_within_session(
    server: Server, request: pytest.FixtureRequest
) -> None:
    pool = request.getfixturevalue("server_pool")
    kind = request.getfixturevalue("server_kind")
    assert pool.standalone(kind) is server
    assert server.running


# --------------------------------------------------------------------------
# Persistent server and restarts
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_persistent_server_keeps_data_but_not_scripts_across_restart(
    fresh_server: Server, kill: bool
) -> None:
    with fresh_server.client() as client:
        client.set("harness:persist", "kept")
        sha = client.script_load("return 1")
        assert client.script_exists(sha) == [True]
    old_pid = fresh_server.pid
    port = fresh_server.port

    fresh_server.restart(kill=kill)

    assert fresh_server.pid != old_pid
    assert fresh_server.port == port
    with fresh_server.client() as client:
        assert client.get("harness:persist") == b"kept"
        assert client.script_exists(sha) == [False]
        assert client.config_get("appendonly") == {"appendonly": "yes"}


def test_fresh_server_is_private(fresh_server: Server, server: Server) -> None:
    assert fresh_server.port != server.port
    assert fresh_server.dir != server.dir


def test_existing_client_reconnects_after_restart(fresh_server: Server) -> None:
    client = fresh_server.client(retry=_no_retry())
    try:
        client.set("harness:k", "1")
        fresh_server.restart()
        # The pooled connection is dead; redis-py reconnects on the next
        # command only after noticing, so the first call may fail.
        with contextlib.suppress(redis.ConnectionError):
            client.ping()
        assert client.get("harness:k") == b"1"
    finally:
        client.close()


# --------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------


def test_cluster_has_three_masters_covering_all_slots(cluster: Cluster) -> None:
    assert len(cluster.nodes) == 3
    assert cluster.startup_nodes == [("127.0.0.1", node.port) for node in cluster.nodes]
    for node in cluster.nodes:
        with node.client(decode_responses=True) as client:
            info = client.execute_command("CLUSTER", "INFO")
            fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
            assert fields["cluster_state"] == "ok"
            assert int(fields["cluster_slots_assigned"]) == CLUSTER_SLOTS
            assert int(fields["cluster_known_nodes"]) == 3
            assert int(fields["cluster_size"]) == 3
            nodes_text = client.execute_command("CLUSTER", "NODES")
            masters = [ln for ln in nodes_text.splitlines() if "master" in ln.split()[2]]
            assert len(masters) == 3

    with cluster.nodes[0].client() as client:
        covered: set[int] = set()
        for entry in client.execute_command("CLUSTER", "SLOTS"):
            covered.update(range(int(entry[0]), int(entry[1]) + 1))
    assert covered == set(range(CLUSTER_SLOTS))


def test_cluster_client_routes_keys_to_every_node(cluster: Cluster) -> None:
    rc = cluster.client()
    try:
        key_for_port: dict[int, str] = {}
        i = 0
        while len(key_for_port) < len(cluster.nodes):
            key = f"harness:route:{i}"
            node = rc.get_node_from_key(key)  # type: ignore[no-untyped-call]
            key_for_port.setdefault(node.port, key)
            i += 1
        for port, key in key_for_port.items():
            assert rc.set(key, str(port)) is True
            assert rc.get(key) == str(port).encode()
    finally:
        rc.close()
    # Each node physically holds exactly the one key routed to it.
    for node in cluster.nodes:
        with node.client() as client:
            assert client.dbsize() == 1
            assert client.get(key_for_port[node.port]) == str(node.port).encode()


def test_cluster_fixture_starts_empty(cluster: Cluster) -> None:
    for node in cluster.nodes:
        with node.client() as client:
            assert client.dbsize() == 0


async def test_cluster_async_client(cluster: Cluster) -> None:
    rc = cluster.async_client()
    try:
        await rc.set("harness:{tag}:a", "1")
        await rc.set("harness:{tag}:b", "2")
        assert await rc.mget("harness:{tag}:a", "harness:{tag}:b") == [b"1", b"2"]
    finally:
        await rc.aclose()


# --------------------------------------------------------------------------
# Stalling proxy
# --------------------------------------------------------------------------


def _proxy_client(proxy: StallingProxy, timeout: float) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=timeout, retry=_no_retry())


def test_proxy_is_transparent_without_delay(server: Server, stalling_proxy: StallingProxy) -> None:
    assert stalling_proxy.delay == 0
    with redis.Redis.from_url(stalling_proxy.url, retry=_no_retry()) as client:
        assert client.ping() is True
        big = os.urandom(1 << 20)  # spans many TCP chunks in both directions
        client.set("harness:big", big)
        assert client.get("harness:big") == big
        pipe = client.pipeline(transaction=False)
        for _ in range(200):
            pipe.incr("harness:counter")
        assert pipe.execute() == list(range(1, 201))
    assert stalling_proxy.connections_accepted == 1
    with server.client() as direct:
        assert direct.get("harness:counter") == b"200"


def test_proxy_delay_times_out_client_but_server_executes(
    server: Server, stalling_proxy: StallingProxy
) -> None:
    client = _proxy_client(stalling_proxy, timeout=0.2)
    try:
        # Handshake replies are delayed too, so connect before stalling.
        assert client.ping() is True
        stalling_proxy.delay = 0.5
        # The client's timeout ends the call: had it waited out the stall,
        # the reply would have come and SET returned.
        with pytest.raises(redis.TimeoutError):
            client.set("harness:stalled", "written")
        with server.client() as direct:
            assert direct.get("harness:stalled") == b"written"

        stalling_proxy.delay = 0
        # redis-py drops the timed-out connection; the next command reconnects.
        assert client.get("harness:stalled") == b"written"
        assert stalling_proxy.connections_accepted == 2
    finally:
        client.close()


def test_proxy_stall_next_replies_only_delays_that_many(
    server: Server, stalling_proxy: StallingProxy
) -> None:
    client = _proxy_client(stalling_proxy, timeout=0.2)
    try:
        assert client.ping() is True
        stalling_proxy.stall_next_replies(1, 0.5)
        with pytest.raises(redis.TimeoutError):
            client.incr("harness:n")
        assert client.incr("harness:n") == 2
    finally:
        client.close()


def test_proxy_forwards_server_side_close(server: Server, stalling_proxy: StallingProxy) -> None:
    with socket.create_connection(("127.0.0.1", stalling_proxy.port), timeout=2) as sock:
        sock.sendall(b"QUIT\r\n")
        received = b""
        while chunk := sock.recv(1024):
            received += chunk
    assert received == b"+OK\r\n"


def test_proxy_drop_connections(server: Server, stalling_proxy: StallingProxy) -> None:
    with socket.create_connection(("127.0.0.1", stalling_proxy.port), timeout=2) as raw:
        raw.sendall(b"PING\r\n")
        assert raw.recv(1024) == b"+PONG\r\n"
        stalling_proxy.drop_connections()
        assert raw.recv(1024) == b""
    # redis-py notices the dead pooled connection and transparently reconnects.
    client = _proxy_client(stalling_proxy, timeout=1.0)
    try:
        assert client.ping() is True
        stalling_proxy.drop_connections()
        assert client.ping() is True
    finally:
        client.close()
    assert stalling_proxy.connections_accepted == 3


def test_proxy_stop_is_prompt_and_leaves_no_threads(server: Server) -> None:
    proxy = StallingProxy("127.0.0.1", server.port).start()
    port = proxy.port
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        proxy.delay = 30  # a stalled reply must not hold up stop()
        sock.sendall(b"PING\r\n")
        time.sleep(0.1)
        proxy.stop()
        assert sock.recv(1024) == b""  # client sees the connection closed, the reply dropped
    finally:
        sock.close()
    # stop() gives each thread 5 s to end: a thread that slept out the
    # 30 s stall would still be here.
    leftover = [t.name for t in threading.enumerate() if t.name.endswith(f"-{port}")]
    assert leftover == []


# --------------------------------------------------------------------------
# asyncio support in conftest
# --------------------------------------------------------------------------

_async_ran: list[str] = []


async def test_async_redis_client(server: Server, server_kind: str) -> None:
    client = server.async_client()
    try:
        assert await client.ping() is True
        results = await asyncio.gather(*(client.incr("harness:async") for _ in range(50)))
        assert sorted(results) == list(range(1, 51))
        assert await client.get("harness:async") == b"50"
    finally:
        await client.aclose()
    _async_ran.append(server_kind)


def test_async_tests_really_ran(server_kind: str) -> None:
    # Guards against a pytest that silently "passes" un-awaited coroutines.
    assert server_kind in _async_ran


# --------------------------------------------------------------------------
# ATOMLIMIT_REQUIRE_SERVERS enforcement (inner pytest sessions)
# --------------------------------------------------------------------------


def _inner_pytest(env_updates: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_updates}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:valkey",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            "-q",
            str(TESTS_DIR / "test_harness.py"),
        ],
        cwd=TESTS_DIR.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_required_missing_binary_fails_session(tmp_path: Path) -> None:
    # An empty PATH hides redis-server; the session must error, not skip.
    result = _inner_pytest({"ATOMLIMIT_REQUIRE_SERVERS": "redis", "PATH": str(tmp_path)})
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "ATOMLIMIT_REQUIRE_SERVERS" in output
    assert "not found: ['redis']" in output


def test_required_unknown_kind_fails_session() -> None:
    result = _inner_pytest({"ATOMLIMIT_REQUIRE_SERVERS": "redis,memcached"})
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "memcached" in output


def test_required_present_binaries_collect_fine() -> None:
    found = sorted(find_binaries())
    result = _inner_pytest({"ATOMLIMIT_REQUIRE_SERVERS": ",".join(found)})
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    for kind in found:
        assert f"[{kind}]" in result.stdout

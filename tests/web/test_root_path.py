"""The middleware's include and exclude rules under a root path.

An application served below a prefix sees it in ``root_path``, and, under
the current ASGI convention, in ``path`` too. The rules must match the path
the application routes in every convention: a real uvicorn process started
with ``--root-path``, Starlette's ``Mount``, and an older server that leaves
the prefix out of ``path``. Each is tried with an include rule and with an
exclude rule, and with request targets that try to reach the limited
handler some other way.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from root_path_app import PER_MINUTE, PROTECTED, RULES, RULES_ENV, URL_ENV, protected_app
from servers import Server
from starlette.applications import Starlette
from starlette.routing import Mount

from atomlimit import AsyncLimiter, Limiter
from atomlimit.asgi import Receive, Scope, Send

ROOT = "/v1"
STARTUP = 30.0
"""Seconds uvicorn may take to start answering."""
# Other spellings of the limited route, and routes near it: none may reach
# the limited handler without a charge.
DETOURS = [
    "/%61pi/items",
    "/api/items/",
    "/v1/api/items",
    "//api/items",
    "/health/../api/items",
    "/v1/../api/items",
    "/API/items",
]
FREE = ["/health", "/v1"]
"""Routes that are not limited: ``/v1`` is also the root path the tests serve at."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def uvicorn_serving(server: Server, rules: str) -> Iterator[httpx2.Client]:
    """The application under a real uvicorn started with ``--root-path``."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "root_path_app:create_app",
        "--app-dir", str(Path(__file__).parent), "--root-path", ROOT,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, URL_ENV: server.url, RULES_ENV: rules}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + STARTUP
            while True:
                if process.poll() is not None:
                    pytest.fail(f"uvicorn exited early: {process.communicate()[1]}")
                try:
                    client.get("/health")
                    break
                except httpx2.TransportError:
                    if time.monotonic() > deadline:
                        pytest.fail("uvicorn did not start answering")
                    time.sleep(0.1)
            yield client
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=30)
    assert "Traceback" not in errors, errors


def older_server(app: Any) -> Any:
    """A server of the older convention: ``root_path`` set, and left out of ``path``."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        await app({**scope, "root_path": ROOT}, receive, send)

    return serve


@asynccontextmanager
async def asgi_client(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def check(responses: dict[str, list[httpx2.Response]]) -> None:
    limited = responses["/api/items"]
    assert [r.status_code for r in limited] == [200, 200, 200, 429]
    assert all("RateLimit" in r.headers for r in limited)
    # The limit is spent: a detour that reached the handler would show.
    for target in DETOURS:
        assert all(r.text != PROTECTED for r in responses[target]), target
    for target in FREE:
        free = responses.get(target, [])
        assert all(r.status_code == 200 for r in free), target
        assert all("RateLimit" not in r.headers for r in free), target


def requests_of(get: Any) -> dict[str, list[httpx2.Response]]:
    return {
        "/api/items": [get("/api/items") for _ in range(4)],
        **{target: [get(target)] for target in DETOURS},
        "/health": [get("/health") for _ in range(5)],
        "/v1": [get("/v1") for _ in range(5)],
    }


@pytest.mark.slow
@pytest.mark.parametrize("rules", sorted(RULES))
def test_uvicorn_with_a_root_path_charges_the_limited_route(server: Server, rules: str) -> None:
    with uvicorn_serving(server, rules) as client:
        responses = requests_of(client.get)
        with Limiter.from_url(server.url) as limiter:
            used = limiter.peek(PER_MINUTE, "127.0.0.1").used

    check(responses)
    assert used == 3


@pytest.mark.parametrize("rules", sorted(RULES))
@pytest.mark.parametrize("convention", ["mount", "older"])
async def test_a_mounted_application_charges_the_limited_route(
    server: Server, rules: str, convention: str
) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        inner = protected_app(limiter, rules)
        if convention == "mount":
            app, prefix = Starlette(routes=[Mount(ROOT, app=inner)]), ROOT
        else:
            app, prefix = older_server(inner), ""
        async with asgi_client(app) as client:
            responses: dict[str, list[httpx2.Response]] = {}
            for target, count in [("/api/items", 4), *((t, 1) for t in DETOURS)]:
                responses[target] = [await client.get(prefix + target) for _ in range(count)]
            # Under the older convention a path equal to the root path is the
            # root itself, to Starlette's router as much as to the middleware.
            for target in FREE if convention == "mount" else ["/health"]:
                responses[target] = [await client.get(prefix + target) for _ in range(5)]
        used = (await limiter.peek(PER_MINUTE, "127.0.0.1")).used

    check(responses)
    assert used == 3

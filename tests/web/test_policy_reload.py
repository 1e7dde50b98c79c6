"""A policy file's reload reaches middlewares and decorators already built.

A middleware given ``policies.select(...)`` and a decorator given
``policies.limit(...)`` ask for the limits in force on each request or call,
so a reload is seen by the next one, with no rebuild and no deploy. The
controls build the same middleware and decorator from the specs themselves,
as a plain list, and keep the old limit after the same reload.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from servers import Server
from werkzeug.test import Client

from atomlimit import AsyncLimiter, InvalidInput, Limiter, LimitExceeded
from atomlimit.asgi import RateLimitMiddleware as AsgiMiddleware
from atomlimit.policies import Policies, load
from atomlimit.wsgi import RateLimitMiddleware as WsgiMiddleware

API = '[limits.api]\nrate = "{n}/day"\n'
JOBS = '[limits.jobs]\nrate = "{n}/day"\n'


def _policies(tmp_path: Path, text: str) -> Policies:
    path = tmp_path / "policies.toml"
    path.write_text(text)
    return load(path)


def _rewrite(policies: Policies, text: str) -> None:
    Path(policies.path).write_text(text)
    policies.reload()


async def _asgi_app(scope: object, receive: object, send: object) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


def _wsgi_app(environ: object, start_response: object) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
    return [b"ok"]


async def _statuses(app: object, count: int) -> list[int]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return [(await client.get("/")).status_code for _ in range(count)]


@pytest.mark.parametrize("live", [True, False], ids=["select", "control-frozen-list"])
async def test_the_asgi_middleware_charges_the_limits_of_the_last_reload(
    tmp_path: Path, server: Server, live: bool
) -> None:
    policies = _policies(tmp_path, API.format(n=2))
    async with AsyncLimiter(server.async_client()) as limiter:
        limits = policies.select("api") if live else [policies["api"]]
        app = AsgiMiddleware(_asgi_app, limiter=limiter, limits=limits)
        before = await _statuses(app, 3)
        _rewrite(policies, API.format(n=4))
        after = await _statuses(app, 3)

    assert before == [200, 200, 429]
    if live:
        assert after == [200, 200, 429]  # the same count, against the new limit of 4
        assert app.limits == (policies["api"],)
    else:
        assert after == [429, 429, 429]


@pytest.mark.parametrize("live", [True, False], ids=["select", "control-frozen-list"])
def test_the_wsgi_middleware_charges_the_limits_of_the_last_reload(
    tmp_path: Path, server: Server, live: bool
) -> None:
    policies = _policies(tmp_path, API.format(n=2))
    with server.client() as redis_client:
        limiter = Limiter(redis_client)
        limits = policies.select("api") if live else [policies["api"]]
        client = Client(WsgiMiddleware(_wsgi_app, limiter=limiter, limits=limits))
        before = [client.get("/").status_code for _ in range(3)]
        _rewrite(policies, API.format(n=4))
        after = [client.get("/").status_code for _ in range(3)]

    assert before == [200, 200, 429]
    assert after == ([200, 200, 429] if live else [429, 429, 429])


@pytest.mark.parametrize("live", [True, False], ids=["limit", "control-spec"])
def test_a_decorator_charges_the_limit_of_the_last_reload(
    tmp_path: Path, server: Server, live: bool
) -> None:
    policies = _policies(tmp_path, JOBS.format(n=3))
    with server.client() as redis_client:
        limiter = Limiter(redis_client)
        limit = policies.limit("jobs") if live else policies["jobs"]

        @limiter.limited(limit, subject="worker", cost=1)
        def job() -> str:
            return "done"

        job()
        job()
        _rewrite(policies, JOBS.format(n=2))
        try:
            third = job()
        except LimitExceeded as err:
            third = f"denied under {err.decision.limit}"

    assert third == ("denied under 2" if live else "done")


def test_a_reload_that_drops_a_selected_limit_fails_the_next_request_by_name(
    tmp_path: Path, server: Server
) -> None:
    policies = _policies(tmp_path, API.format(n=2) + JOBS.format(n=2))
    selected = policies.select("api", "jobs")
    _rewrite(policies, API.format(n=2))

    with pytest.raises(InvalidInput, match="no limit named 'jobs'"):
        selected()
    with pytest.raises(InvalidInput, match="no limit named 'missing'"):
        policies.select("missing")

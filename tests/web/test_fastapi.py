"""atomlimit.fastapi.limit: one route's limit, through FastAPI's TestClient and a real server."""

# No `from __future__ import annotations`: FastAPI reads the Depends() in
# each handler's annotations, and string annotations naming a local limiter
# cannot be resolved.
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Annotated, Any

import http_sfv
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from servers import Server

from atomlimit import (
    AsyncLimiter,
    Concurrency,
    Decision,
    InvalidInput,
    Limiter,
    RateLimit,
    SpendCap,
)
from atomlimit.asgi import RateLimitMiddleware
from atomlimit.fastapi import limit

SEARCH = RateLimit(name="search", limit=2, window="minute")
EXPORT = RateLimit(name="export", limit=1, window="day")
CAP = SpendCap(name="ai", limit=Decimal("1.00"), currency="AUD", window="day")


def items(field: str) -> list[tuple[str, dict[str, Any]]]:
    members = http_sfv.List()
    members.parse(field.encode("ascii"))
    return [(member.value, dict(member.params)) for member in members]


def api_key(request: Request) -> str | None:
    return request.headers.get("x-api-key")


def make_app(limiter: AsyncLimiter) -> FastAPI:
    app = FastAPI()

    @app.get("/search")
    async def search(
        decision: Annotated[Decision[int], Depends(limit(limiter, SEARCH))],
    ) -> dict[str, Any]:
        return {"remaining": decision.remaining}

    @app.get("/export", dependencies=[Depends(limit(limiter, EXPORT, key=api_key))])
    async def export() -> dict[str, str]:
        return {"export": "done"}

    async def price(request: Request) -> Decimal:
        body = await request.json()
        return Decimal(body["price"])

    @app.post("/complete")
    async def complete(
        decision: Annotated[
            Decision[Decimal], Depends(limit(limiter, CAP, key=api_key, cost=price))
        ],
    ) -> dict[str, Any]:
        return decision.as_dict()

    @app.get("/raw")
    async def raw(
        decision: Annotated[Decision[int], Depends(limit(limiter, EXPORT, key=lambda r: "raw"))],
    ) -> JSONResponse:
        return JSONResponse({"ok": True}, headers=decision.headers())

    return app


@contextmanager
def served(server: Server) -> Iterator[TestClient]:
    limiter = AsyncLimiter.from_url(server.url)
    with TestClient(make_app(limiter)) as client:
        try:
            yield client
        finally:
            client.portal.call(limiter.aclose)


def test_a_route_admits_its_limit_then_raises_429_with_the_fields(server: Server) -> None:
    with served(server) as client:
        responses = [client.get("/search") for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [r.json() for r in responses[:2]] == [{"remaining": 1}, {"remaining": 0}]
    assert items(responses[0].headers["RateLimit-Policy"]) == [("search", {"q": 2, "w": 60})]
    assert items(responses[1].headers["RateLimit"])[0][1]["r"] == 0
    denied = responses[2]
    assert denied.json() == {"detail": "RateLimit 'search' exceeded"}
    retry = int(denied.headers["Retry-After"])
    assert 1 <= retry <= 60
    assert items(denied.headers["RateLimit"]) == [("search", {"r": 0, "t": retry})]


def test_a_key_of_the_request_limits_each_caller_and_none_is_unlimited(server: Server) -> None:
    with served(server) as client:
        alice = [
            client.get("/export", headers={"x-api-key": "alice"}).status_code for _ in range(2)
        ]
        bob = client.get("/export", headers={"x-api-key": "bob"}).status_code
        anonymous = [client.get("/export") for _ in range(3)]

    assert alice == [200, 429]
    assert bob == 200
    assert {r.status_code for r in anonymous} == {200}
    assert all("RateLimit" not in r.headers for r in anonymous)


def test_an_async_cost_charges_a_spend_cap_in_its_currency(server: Server) -> None:
    with served(server) as client:
        first = client.post("/complete", json={"price": "0.60"}, headers={"x-api-key": "acme"})
        second = client.post("/complete", json={"price": "0.41"}, headers={"x-api-key": "acme"})

    assert first.status_code == 200
    assert first.json()["used"] == "0.60"
    assert items(first.headers["RateLimit-Policy"]) == [("ai", {"q": 1, "qu": "AUD", "w": 86400})]
    assert second.status_code == 429
    assert "Retry-After" in second.headers


def test_a_handler_returning_its_own_response_adds_the_fields_itself(server: Server) -> None:
    with served(server) as client:
        response = client.get("/raw")

    assert response.status_code == 200
    assert items(response.headers["RateLimit"])[0][1]["r"] == 0


def test_the_dependency_and_the_middleware_work_together(server: Server) -> None:
    everything = RateLimit(name="everything", limit=3, window="minute")
    limiter = AsyncLimiter.from_url(server.url)
    app = make_app(limiter)
    app.add_middleware(RateLimitMiddleware, limiter=limiter, limits=everything)
    with TestClient(app) as client:
        codes = [client.get("/search").status_code for _ in range(4)]
        last = client.get("/search")
        client.portal.call(limiter.aclose)

    # The route allows 2; the middleware 3: the 3rd is the route's 429, the
    # 4th and 5th the middleware's.
    assert codes == [200, 200, 429, 429]
    assert last.json()["violated-policies"] == ["everything"]


def test_a_bad_configuration_is_refused_when_the_route_is_built(server: Server) -> None:
    limiter = AsyncLimiter.from_url(server.url)
    with Limiter.from_url(server.url) as sync_limiter, pytest.raises(InvalidInput, match="Async"):
        limit(sync_limiter, SEARCH)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="Concurrency"):
        limit(limiter, Concurrency(name="c", limit=1))
    with pytest.raises(InvalidInput, match="key must be"):
        limit(limiter, SEARCH, key="x-api-key")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="cost"):
        limit(limiter, CAP, cost=0.5)

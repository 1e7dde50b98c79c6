"""RateLimitMiddleware through an ASGI test client, against real servers.

The race at the end is run twice with one harness: through the middleware,
and through a naive middleware that peeks and then hits. The naive one must
admit more than the limit, which shows the harness races.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import http_sfv
import httpx
import pytest
from conftest import Target
from servers import Server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from atomlimit import AsyncLimiter, Concurrency, InvalidInput, Limiter, RateLimit, SpendCap
from atomlimit.asgi import (
    QUOTA_EXCEEDED,
    UNKNOWN_CLIENT,
    RateLimitMiddleware,
    Receive,
    Scope,
    Send,
    client_address,
)

PER_MINUTE = RateLimit(name="per-minute", limit=3, window="minute")
PER_DAY = RateLimit(name="per-day", limit=5, window="day")


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """A bare ASGI application: no framework at all."""
    assert scope["type"] == "http"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


@asynccontextmanager
async def client_of(app: Any, peer: str = "203.0.113.7") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def items(field: str) -> list[tuple[str, dict[str, Any]]]:
    members = http_sfv.List()
    members.parse(field.encode("ascii"))
    return [(member.value, dict(member.params)) for member in members]


async def test_allowed_responses_carry_the_fields_and_the_limit_denies_with_429(
    target: Target,
) -> None:
    async with target.async_client() as redis_client:
        limiter = AsyncLimiter(redis_client)
        app = RateLimitMiddleware(hello, limiter=limiter, limits=PER_MINUTE)
        async with client_of(app) as client:
            responses = [await client.get("/") for _ in range(4)]

    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert responses[0].text == "hello"
    assert items(responses[0].headers["RateLimit-Policy"]) == [("per-minute", {"q": 3, "w": 60})]
    assert [items(r.headers["RateLimit"])[0][1]["r"] for r in responses] == [2, 1, 0, 0]
    denied = responses[3]
    assert denied.headers["content-type"] == "application/problem+json"
    assert denied.json() == {
        "type": QUOTA_EXCEEDED,
        "title": "Too Many Requests",
        "status": 429,
        "violated-policies": ["per-minute"],
    }
    retry = int(denied.headers["Retry-After"])
    assert 1 <= retry <= 60
    assert items(denied.headers["RateLimit"]) == [("per-minute", {"r": 0, "t": retry})]


async def test_every_limit_is_checked_in_one_acquire_and_a_denial_charges_none(
    server: Server,
) -> None:
    tight = RateLimit(name="tight", limit=1, window="day")
    async with AsyncLimiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(hello, limiter=limiter, limits=[PER_DAY, tight])
        async with client_of(app) as client:
            first = await client.get("/")
            second = await client.get("/")
        day = await limiter.peek(PER_DAY, "203.0.113.7")

    assert first.status_code == 200
    assert [name for name, _ in items(first.headers["RateLimit"])] == ["per-day", "tight"]
    assert second.status_code == 429
    assert second.json()["violated-policies"] == ["tight"]
    assert day.used == 1  # the denied request charged nothing to per-day


async def test_a_key_returning_none_lets_the_request_through_unlimited(server: Server) -> None:
    def key(scope: Scope) -> str | None:
        return None if scope["path"].startswith("/internal") else "everyone"

    async with AsyncLimiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(hello, limiter=limiter, limits=PER_MINUTE, key=key)
        async with client_of(app) as client:
            internal = [await client.get("/internal/job") for _ in range(10)]
            public = [await client.get("/") for _ in range(4)]

    assert {r.status_code for r in internal} == {200}
    assert all("RateLimit" not in r.headers for r in internal)
    assert [r.status_code for r in public] == [200, 200, 200, 429]


async def test_an_async_key_is_awaited(server: Server) -> None:
    async def key(scope: Scope) -> str:
        await asyncio.sleep(0)
        return dict(scope["headers"]).get(b"x-api-key", b"anonymous").decode()

    async with AsyncLimiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(hello, limiter=limiter, limits=PER_MINUTE, key=key)
        async with client_of(app) as client:
            alice = [await client.get("/", headers={"x-api-key": "alice"}) for _ in range(4)]
            bob = await client.get("/", headers={"x-api-key": "bob"})

    assert [r.status_code for r in alice] == [200, 200, 200, 429]
    assert bob.status_code == 200


async def test_the_default_key_is_the_client_address(server: Server) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(hello, limiter=limiter, limits=PER_MINUTE)
        async with client_of(app, "198.51.100.1") as one, client_of(app, "198.51.100.2") as two:
            ones = [(await one.get("/")).status_code for _ in range(4)]
            twos = [(await two.get("/")).status_code for _ in range(3)]

    assert ones == [200, 200, 200, 429]
    assert twos == [200, 200, 200]


async def test_x_forwarded_for_is_ignored_unless_trusted(server: Server) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(hello, limiter=limiter, limits=PER_MINUTE)
        async with client_of(app) as client:
            codes = [
                (await client.get("/", headers={"x-forwarded-for": f"10.0.0.{n}"})).status_code
                for n in range(4)
            ]

    assert codes == [200, 200, 200, 429]  # one peer, one subject, whatever the header says


async def test_a_trusted_proxy_hop_names_the_client_and_spoofed_entries_do_not(
    server: Server,
) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(
            hello, limiter=limiter, limits=PER_MINUTE, key=client_address(trusted_hops=1)
        )
        async with client_of(app, "192.0.2.10") as proxy:
            # The client forged the first entries; the proxy appended the last.
            spoofed = [
                await proxy.get("/", headers={"x-forwarded-for": f"1.1.1.{n}, 198.51.100.9"})
                for n in range(4)
            ]
            other = await proxy.get("/", headers={"x-forwarded-for": "198.51.100.77"})
        used = (await limiter.peek(PER_MINUTE, "198.51.100.9")).used

    assert [r.status_code for r in spoofed] == [200, 200, 200, 429]
    assert other.status_code == 200
    assert used == 3


@pytest.mark.parametrize(
    ("headers", "subject"),
    [
        ([], "192.0.2.10"),  # no header: the peer
        ([(b"x-forwarded-for", b"not-an-address")], "192.0.2.10"),
        ([(b"x-forwarded-for", b"198.51.100.9")], "192.0.2.10"),  # fewer entries than hops
        ([(b"x-forwarded-for", b"203.0.113.5, 198.51.100.9")], "203.0.113.5"),
        ([(b"x-forwarded-for", b"203.0.113.5"), (b"x-forwarded-for", b"10.0.0.1")], "203.0.113.5"),
        ([(b"X-Forwarded-For", b"2001:DB8::1 , 10.0.0.1")], "2001:db8::1"),
        ([(b"x-forwarded-for", b"1, " * 100_000 + b"203.0.113.5, 10.0.0.1")], "203.0.113.5"),
    ],
)
def test_the_address_two_trusted_hops_away(headers: list[Any], subject: str) -> None:
    key = client_address(trusted_hops=2)

    assert key({"type": "http", "headers": headers, "client": ("192.0.2.10", 1)}) == subject


def test_a_request_without_a_client_address_shares_one_subject() -> None:
    assert client_address()({"type": "http", "headers": [], "client": None}) == UNKNOWN_CLIENT


async def test_include_and_exclude_choose_the_limited_paths(server: Server) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(
            hello, limiter=limiter, limits=PER_MINUTE, include=["/api/"], exclude=["/api/health"]
        )
        async with client_of(app) as client:
            outside = [await client.get("/apix") for _ in range(5)]
            health = [await client.get("/api/health") for _ in range(5)]
            limited = [await client.get(path) for path in ("/api", "/api/a", "/api/b", "/api/c")]

    assert {r.status_code for r in outside + health} == {200}
    assert all("RateLimit" not in r.headers for r in outside + health)
    assert [r.status_code for r in limited] == [200, 200, 200, 429]


async def test_a_streamed_response_passes_through_untouched(server: Server) -> None:
    chunks = [b"one ", b"two ", b"three"]

    async def stream(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with AsyncLimiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(stream, limiter=limiter, limits=PER_MINUTE)
        async with client_of(app) as client:
            response = await client.get("/")

    assert response.content == b"".join(chunks)
    assert response.headers["x-app"] == "1"
    assert len(response.headers.get_list("RateLimit")) == 1  # added once, at the start
    assert items(response.headers["RateLimit"])[0][1]["r"] == 2


async def test_a_concurrency_limit_holds_its_lease_until_the_response_is_sent(
    server: Server,
) -> None:
    in_flight = Concurrency(name="in-flight", limit=1, lease=timedelta(seconds=30))
    started = asyncio.Event()
    finish = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            started.set()
            await finish.wait()
        await hello(scope, receive, send)

    async with AsyncLimiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(slow, limiter=limiter, limits=in_flight)
        async with client_of(app) as client:
            pending = asyncio.ensure_future(client.get("/slow"))
            await started.wait()
            during = await client.get("/")
            finish.set()
            first = await pending
            after = await client.get("/")
        left = await limiter.peek(in_flight, "203.0.113.7")

    assert first.status_code == 200
    assert during.status_code == 429
    assert items(during.headers["RateLimit-Policy"])[0][1]["qu"] == "concurrent-requests"
    assert after.status_code == 200
    assert left.used == 0


def starlette_app(limiter: AsyncLimiter, events: list[str]) -> Starlette:
    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("home")

    async def numbers(request: Request) -> StreamingResponse:
        async def count() -> AsyncIterator[bytes]:
            for n in range(3):
                yield f"{n}\n".encode()

        return StreamingResponse(count())

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(
        routes=[Route("/", home), Route("/numbers", numbers), WebSocketRoute("/ws", echo)],
        lifespan=lifespan,
    )
    app.add_middleware(RateLimitMiddleware, limiter=limiter, limits=[PER_MINUTE])
    return app


def test_under_starlette_lifespan_and_websockets_pass_through(server: Server) -> None:
    events: list[str] = []
    limiter = AsyncLimiter.from_url(server.url)
    with TestClient(starlette_app(limiter, events)) as client:
        pages = [client.get("/") for _ in range(3)]
        streamed = client.get("/numbers")
        echoes = []
        for n in range(5):
            with client.websocket_connect("/ws") as socket:
                socket.send_text(f"hi {n}")
                echoes.append(socket.receive_text())
        client.portal.call(limiter.aclose)

    assert events == ["startup", "shutdown"]
    assert [p.status_code for p in pages] == [200, 200, 200]
    assert streamed.status_code == 429
    assert echoes == [f"hi {n}" for n in range(5)]  # websockets are not limited


RACE = RateLimit(name="race", limit=50, window="day")
REQUESTS = 200


class NaiveMiddleware:
    """The read-then-write pattern: peek, let the request through, then hit."""

    def __init__(self, app: Any, limiter: AsyncLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (await self.limiter.peek(RACE, "everyone")).allowed:
            await send({"type": "http.response.start", "status": 429, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.limiter.hit(RACE, "everyone")
        await self.app(scope, receive, send)


async def race(app: Any) -> int:
    async with client_of(app) as client:
        responses = await asyncio.gather(*(client.get("/") for _ in range(REQUESTS)))
    return sum(r.status_code == 200 for r in responses)


ROOMY = RateLimit(name="roomy", limit=10_000, window="day")


# One RateLimit is charged with hit, several with one acquire: both raced.
@pytest.mark.parametrize("limits", [[RACE], [RACE, ROOMY]], ids=["hit", "acquire"])
async def test_two_hundred_concurrent_requests_admit_exactly_the_limit(
    server: Server, limits: list[RateLimit]
) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(hello, limiter=limiter, limits=limits, key=lambda s: "everyone")
        admitted = await race(app)
        used = [(await limiter.peek(limit, "everyone")).used for limit in limits]

    assert admitted == RACE.limit
    # A request the tight limit denied charged nothing to the roomy one.
    assert used == [RACE.limit] * len(limits)


async def test_a_naive_peek_then_hit_middleware_overshoots_under_the_same_race(
    server: Server,
) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        admitted = await race(NaiveMiddleware(hello, limiter))

    assert admitted > RACE.limit


async def test_a_bad_configuration_is_refused(server: Server) -> None:
    async with AsyncLimiter.from_url(server.url) as limiter:
        with (
            Limiter.from_url(server.url) as sync_limiter,
            pytest.raises(InvalidInput, match="AsyncLimiter"),
        ):
            RateLimitMiddleware(hello, limiter=sync_limiter, limits=PER_MINUTE)  # type: ignore[arg-type]
        cap = SpendCap(name="ai", limit=1, currency="AUD", window="day")
        bad: list[tuple[dict[str, Any], str]] = [
            ({"limits": cap}, "SpendCap"),
            ({"limits": []}, "1 to 64"),
            ({"limits": [PER_MINUTE] * 65}, "1 to 64"),
            ({"limits": [PER_MINUTE, RateLimit(name="per-minute", limit=9, window="day")]}, "two"),
            ({"limits": PER_MINUTE, "key": "client"}, "key must be"),
            ({"limits": PER_MINUTE, "include": ["api"]}, "starting with '/'"),
            ({"limits": PER_MINUTE, "exclude": "/health"}, "list"),
            ({"limits": PER_MINUTE, "include": ["/" + "a" * 2000]}, "at most 1024"),
        ]
        for options, message in bad:
            with pytest.raises(InvalidInput, match=message):
                RateLimitMiddleware(hello, limiter=limiter, **options)
    with pytest.raises(InvalidInput, match="trusted_hops"):
        client_address(trusted_hops=17)


def test_importing_atomlimit_and_its_middleware_pulls_in_no_framework() -> None:
    code = (
        "import sys, atomlimit, atomlimit.asgi;"
        "print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in {'starlette', 'fastapi', 'httpx', 'httpx2', 'anyio'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout

    assert json.loads(out.replace("'", '"')) == []

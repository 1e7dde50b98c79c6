"""One client is one subject, however its address is written.

An IPv4 client behind a dual-stack socket or proxy arrives as an
IPv4-mapped IPv6 address; a link-local IPv6 address may carry a zone; hex
digits come in either case. Each written form must charge the same subject,
in ``X-Forwarded-For`` and in the peer address alike.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from servers import Server

from atomlimit import AsyncLimiter, RateLimit
from atomlimit.asgi import RateLimitMiddleware, Receive, Scope, Send, client_address

PER_MINUTE = RateLimit(name="per-minute", limit=3, window="minute")
PROXY = "192.0.2.10"

FORMS = [
    ("198.51.100.1", "198.51.100.1"),
    ("::ffff:198.51.100.1", "198.51.100.1"),
    ("::FFFF:C633:6401", "198.51.100.1"),
    ("0:0:0:0:0:ffff:198.51.100.1", "198.51.100.1"),
    ("fe80::1%eth0", "fe80::1"),
    ("FE80:0:0:0:0:0:0:1%7", "fe80::1"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
]


@pytest.mark.parametrize(("written", "subject"), FORMS)
def test_a_forwarded_address_has_one_form(written: str, subject: str) -> None:
    key = client_address(trusted_hops=1)
    headers = [(b"x-forwarded-for", written.encode("ascii"))]

    assert key({"type": "http", "headers": headers, "client": (PROXY, 1)}) == subject


@pytest.mark.parametrize(("written", "subject"), FORMS)
def test_a_peer_address_has_one_form(written: str, subject: str) -> None:
    assert client_address()({"type": "http", "headers": [], "client": (written, 1)}) == subject


@pytest.mark.parametrize(
    "written",
    [
        "fe80::1%" + "x" * 100,  # a zone too long to be an interface
        "::ffff:" + "1" * 100,
        "198.51.100.1%eth0",  # IPv4 has no zones
    ],
)
def test_an_entry_that_is_no_bounded_address_falls_back_to_the_peer(written: str) -> None:
    key = client_address(trusted_hops=1)
    headers = [(b"x-forwarded-for", written.encode("ascii"))]

    assert key({"type": "http", "headers": headers, "client": (PROXY, 1)}) == PROXY


def test_a_peer_that_is_no_address_is_its_own_subject() -> None:
    assert client_address()({"type": "http", "headers": [], "client": ("testclient", 1)}) == (
        "testclient"
    )


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def statuses(app: Any, peer: str, headers: dict[str, str]) -> int:
    transport = httpx2.ASGITransport(app=app, client=(peer, 40000))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        return (await client.get("/", headers=headers)).status_code


@pytest.mark.parametrize("where", ["peer", "forwarded"])
async def test_every_form_of_one_address_charges_one_limit(server: Server, where: str) -> None:
    mapped = [written for written, subject in FORMS if subject == "198.51.100.1"]
    async with AsyncLimiter.from_url(server.url) as limiter:
        if where == "peer":
            app = RateLimitMiddleware(hello, limiter=limiter, limits=PER_MINUTE)
            codes = [await statuses(app, written, {}) for written in mapped]
        else:
            app = RateLimitMiddleware(
                hello, limiter=limiter, limits=PER_MINUTE, key=client_address(trusted_hops=1)
            )
            codes = [await statuses(app, PROXY, {"x-forwarded-for": written}) for written in mapped]
        used = (await limiter.peek(PER_MINUTE, "198.51.100.1")).used

    assert codes == [200, 200, 200, 429]
    assert used == 3

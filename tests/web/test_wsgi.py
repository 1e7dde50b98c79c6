"""The WSGI RateLimitMiddleware, called as a PEP 3333 server calls it, against real servers.

Most tests go through werkzeug's test client; the ones about a lease's
lifetime drive the application by hand (start_response, iterate, close),
so that the moment a server closes the response is the test's to choose.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import http_sfv
import pytest
from servers import Server
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client, EnvironBuilder

from atomlimit import AsyncLimiter, BackendError, Concurrency, InvalidInput, Limiter, RateLimit
from atomlimit.asgi import QUOTA_EXCEEDED
from atomlimit.wsgi import (
    UNKNOWN_CLIENT,
    Environ,
    RateLimitMiddleware,
    StartResponse,
    client_address,
)

PER_MINUTE = RateLimit(name="per-minute", limit=3, window="minute")
PER_DAY = RateLimit(name="per-day", limit=5, window="day")


def hello(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """A bare WSGI application: no framework at all."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "1")])
    return [b"hello"]


def items(field: str) -> list[tuple[str, dict[str, Any]]]:
    members = http_sfv.List()
    members.parse(field.encode("ascii"))
    return [(member.value, dict(member.params)) for member in members]


def client_of(app: Any, peer: str = "203.0.113.7") -> Client:
    """A test client whose requests come from ``peer``, as a server would say."""

    def from_peer(environ: Environ, start_response: StartResponse) -> Any:
        environ["REMOTE_ADDR"] = peer
        return app(environ, start_response)

    return Client(from_peer)


class Called:
    """One request driven by hand: the status and headers given, and the open body."""

    def __init__(self, app: Any, path: str = "/", **environ: Any) -> None:
        built = EnvironBuilder(path=path, environ_base={"REMOTE_ADDR": "203.0.113.7", **environ})
        self.status = ""
        self.headers: list[tuple[str, str]] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            self.status, self.headers = status, headers
            return lambda data: None

        self.body = app(built.get_environ(), start_response)

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


def test_allowed_responses_carry_the_fields_and_the_limit_denies_with_429(
    server: Server,
) -> None:
    with Limiter.from_url(server.url) as limiter:
        client = client_of(RateLimitMiddleware(hello, limiter=limiter, limits=PER_MINUTE))
        responses = [client.get("/") for _ in range(4)]

    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert responses[0].text == "hello"
    assert responses[0].headers["X-App"] == "1"
    assert items(responses[0].headers["RateLimit-Policy"]) == [("per-minute", {"q": 3, "w": 60})]
    assert [items(r.headers["RateLimit"])[0][1]["r"] for r in responses] == [2, 1, 0, 0]
    denied = responses[3]
    assert denied.headers["Content-Type"] == "application/problem+json"
    assert denied.json == {
        "type": QUOTA_EXCEEDED,
        "title": "Too Many Requests",
        "status": 429,
        "violated-policies": ["per-minute"],
    }
    retry = int(denied.headers["Retry-After"])
    assert 1 <= retry <= 60
    assert items(denied.headers["RateLimit"]) == [("per-minute", {"r": 0, "t": retry})]
    assert int(denied.headers["Content-Length"]) == len(denied.data)


def test_every_limit_is_checked_in_one_acquire_and_a_denial_charges_none(server: Server) -> None:
    tight = RateLimit(name="tight", limit=1, window="day")
    with Limiter.from_url(server.url) as limiter:
        client = client_of(RateLimitMiddleware(hello, limiter=limiter, limits=[PER_DAY, tight]))
        first, second = client.get("/"), client.get("/")
        day = limiter.peek(PER_DAY, "203.0.113.7")

    assert first.status_code == 200
    assert [name for name, _ in items(first.headers["RateLimit"])] == ["per-day", "tight"]
    assert second.status_code == 429
    assert second.json["violated-policies"] == ["tight"]
    assert day.used == 1  # the denied request charged nothing to per-day


def test_a_key_returning_none_lets_the_request_through_unlimited(server: Server) -> None:
    def key(environ: Environ) -> str | None:
        return None if environ["PATH_INFO"].startswith("/internal") else "everyone"

    with Limiter.from_url(server.url) as limiter:
        client = client_of(RateLimitMiddleware(hello, limiter=limiter, limits=PER_MINUTE, key=key))
        internal = [client.get("/internal/job") for _ in range(10)]
        public = [client.get("/") for _ in range(4)]

    assert {r.status_code for r in internal} == {200}
    assert all("RateLimit" not in r.headers for r in internal)
    assert [r.status_code for r in public] == [200, 200, 200, 429]


def test_the_default_key_is_remote_addr_and_ignores_x_forwarded_for(server: Server) -> None:
    with Limiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(hello, limiter=limiter, limits=PER_MINUTE)
        one, two = client_of(app, "198.51.100.1"), client_of(app, "198.51.100.2")
        ones = [
            one.get("/", headers={"X-Forwarded-For": f"10.0.0.{n}"}).status_code for n in range(4)
        ]
        other = two.get("/").status_code

    assert ones == [200, 200, 200, 429]  # one peer, one subject, whatever the header says
    assert other == 200


def test_a_trusted_proxy_hop_names_the_client_and_spoofed_entries_do_not(
    server: Server,
) -> None:
    with Limiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(
            hello, limiter=limiter, limits=PER_MINUTE, key=client_address(trusted_hops=1)
        )
        proxy = client_of(app, "192.0.2.10")
        spoofed = [
            proxy.get("/", headers={"X-Forwarded-For": f"1.1.1.{n}, ::ffff:198.51.100.9"})
            for n in range(4)
        ]
        other = proxy.get("/", headers={"X-Forwarded-For": "198.51.100.77"})
        used = limiter.peek(PER_MINUTE, "198.51.100.9").used

    assert [r.status_code for r in spoofed] == [200, 200, 200, 429]
    assert other.status_code == 200
    assert used == 3


@pytest.mark.parametrize(
    ("forwarded", "subject"),
    [
        (None, "192.0.2.10"),  # no header: the peer
        ("not-an-address", "192.0.2.10"),
        ("198.51.100.9", "192.0.2.10"),  # fewer entries than hops
        ("203.0.113.5, 198.51.100.9", "203.0.113.5"),
        ("2001:DB8::1 , 10.0.0.1", "2001:db8::1"),
        ("caf\xe9::1, 10.0.0.1", "192.0.2.10"),  # latin-1, as PEP 3333 carries bytes
        ("1, " * 100_000 + "203.0.113.5, 10.0.0.1", "203.0.113.5"),
    ],
)
def test_the_address_two_trusted_hops_away(forwarded: str | None, subject: str) -> None:
    environ = {"REMOTE_ADDR": "192.0.2.10"}
    if forwarded is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded

    assert client_address(trusted_hops=2)(environ) == subject


def test_a_request_without_a_client_address_shares_one_subject() -> None:
    assert client_address()({}) == UNKNOWN_CLIENT
    assert client_address()({"REMOTE_ADDR": "::FFFF:C633:6401"}) == "198.51.100.1"


def test_include_and_exclude_match_below_the_script_name(server: Server) -> None:
    with Limiter.from_url(server.url) as limiter:
        limited = RateLimitMiddleware(
            hello, limiter=limiter, limits=PER_MINUTE, include=["/api/"], exclude=["/api/health"]
        )
        # Mounted at /v1: the application sees SCRIPT_NAME=/v1 and routes PATH_INFO.
        client = client_of(DispatcherMiddleware(hello, {"/v1": limited}))
        outside = [client.get(path) for path in ("/v1/apix", "/v1", "/api/items", "/v1/v1/api")]
        health = [client.get("/v1/api/health") for _ in range(5)]
        inside = [client.get(path) for path in ("/v1/api", "/v1/api/a", "/v1/api/b", "/v1/api/c")]

    assert {r.status_code for r in outside + health} == {200}
    assert all("RateLimit" not in r.headers for r in outside + health)
    assert [r.status_code for r in inside] == [200, 200, 200, 429]


def test_a_non_ascii_prefix_matches_the_path_as_sent_in_utf8(server: Server) -> None:
    with Limiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(hello, limiter=limiter, limits=PER_MINUTE, include=["/übung"])
        client = client_of(app)
        codes = [client.get("/%C3%BCbung/1").status_code for _ in range(4)]

    assert codes == [200, 200, 200, 429]


def test_a_streamed_body_passes_through_chunk_by_chunk(server: Server) -> None:
    produced: list[bytes] = []

    def stream(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("X-App", "1")])
        for chunk in (b"one ", b"two ", b"three"):
            produced.append(chunk)
            yield chunk

    with Limiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(stream, limiter=limiter, limits=[PER_MINUTE, PER_DAY])
        called = Called(app)
        chunks = iter(called.body)
        first = next(chunks)
        seen_after_first = list(produced)
        rest = list(chunks)
        called.close()

    assert first == b"one "
    assert seen_after_first == [b"one "]  # nothing read ahead, nothing buffered
    assert rest == [b"two ", b"three"]
    assert dict(called.headers)["X-App"] == "1"
    assert [name for name, _ in called.headers].count("RateLimit") == 1


def test_a_concurrency_lease_is_held_until_the_server_closes_the_response(
    server: Server,
) -> None:
    in_flight = Concurrency(name="in-flight", limit=1, lease=timedelta(seconds=30))
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"part"

        def close(self) -> None:
            closed.append(True)

    def app(environ: Environ, start_response: StartResponse) -> Body:
        start_response("200 OK", [])
        return Body()

    with Limiter.from_url(server.url) as limiter:
        limited = RateLimitMiddleware(app, limiter=limiter, limits=in_flight)
        first = Called(limited)
        sent = b"".join(first.body)  # fully sent, not yet closed
        while_open = Called(limited)
        first.close()
        after_close = Called(limited)
        after_close.close()
        third = Called(limited)
        third.close()

    assert sent == b"part"
    assert first.status.startswith("200")
    assert while_open.status.startswith("429")
    assert json.loads(b"".join(while_open.body))["violated-policies"] == ["in-flight"]
    assert items(dict(while_open.headers)["RateLimit"])[0][1]["r"] == 0
    assert after_close.status.startswith("200")
    assert third.status.startswith("200")  # the lease of after_close was released too
    assert closed == [True, True, True]  # the application's own close still runs


def test_an_application_that_raises_releases_its_lease(server: Server) -> None:
    in_flight = Concurrency(name="in-flight", limit=1, lease=timedelta(seconds=30))

    def broken(environ: Environ, start_response: StartResponse) -> list[bytes]:
        raise RuntimeError("boom")

    with Limiter.from_url(server.url) as limiter:
        app = RateLimitMiddleware(broken, limiter=limiter, limits=in_flight)
        for _ in range(3):
            with pytest.raises(RuntimeError, match="boom"):
                Called(app)
        lease = limiter.peek(in_flight, "203.0.113.7")

    assert lease.used == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_failure_policy_decides_when_the_server_is_down() -> None:
    fail_open = RateLimit(name="open", limit=1, window="minute", on_backend_error="allow")
    fail_closed = RateLimit(name="closed", limit=1, window="minute", on_backend_error="deny")
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with Limiter.from_url(url, socket_connect_timeout=1) as limiter:
        opened = client_of(RateLimitMiddleware(hello, limiter=limiter, limits=fail_open))
        closed = client_of(RateLimitMiddleware(hello, limiter=limiter, limits=fail_closed))
        raising = client_of(RateLimitMiddleware(hello, limiter=limiter, limits=PER_MINUTE))
        allowed = [opened.get("/").status_code for _ in range(3)]
        denied = closed.get("/")
        with pytest.raises(BackendError):
            raising.get("/")

    assert allowed == [200, 200, 200]  # a limit of 1, but nothing could count
    assert denied.status_code == 429
    assert denied.json["violated-policies"] == ["closed"]


def test_a_bad_configuration_is_refused(server: Server) -> None:
    with Limiter.from_url(server.url) as limiter:
        async_limiter = AsyncLimiter.from_url(server.url)
        with pytest.raises(InvalidInput, match="WSGI is synchronous"):
            RateLimitMiddleware(hello, limiter=async_limiter, limits=PER_MINUTE)  # type: ignore[arg-type]
        bad: list[tuple[dict[str, Any], str]] = [
            ({"limits": []}, "1 to 64"),
            ({"limits": [PER_MINUTE, RateLimit(name="per-minute", limit=9, window="day")]}, "two"),
            ({"limits": PER_MINUTE, "key": "client"}, "key must be"),
            ({"limits": PER_MINUTE, "include": ["api"]}, "starting with '/'"),
            ({"limits": PER_MINUTE, "exclude": "/health"}, "list"),
        ]
        for options, message in bad:
            with pytest.raises(InvalidInput, match=message):
                RateLimitMiddleware(hello, limiter=limiter, **options)
        with pytest.raises(InvalidInput, match="WSGI application"):
            RateLimitMiddleware(None, limiter=limiter, limits=PER_MINUTE)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="trusted_hops"):
        client_address(trusted_hops=17)


def test_importing_the_wsgi_middleware_pulls_in_no_framework() -> None:
    code = (
        "import sys, atomlimit.wsgi;"
        "print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in {'flask', 'werkzeug', 'django', 'starlette', 'gunicorn'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout

    assert json.loads(out.replace("'", '"')) == []

"""atomlimit.django: the middleware and the decorator, through Django's test clients and
under real servers (gunicorn for WSGI, uvicorn for ASGI), against real Redis.

The flood at the end runs the same harness against the decorator and against a naive
read-then-write view, which must admit more than the limit: that shows the harness races.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import django
import http_sfv
import httpx
import pytest
from asgiref.sync import async_to_sync
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, override_settings
from helpers import require_tool
from servers import Server

# Set only for the setup: left in os.environ, it would reach every process
# this session starts (a Celery worker's Django fixup would try to load it).
_SET = "DJANGO_SETTINGS_MODULE" not in os.environ
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_project.settings")
django.setup()
if _SET:
    del os.environ["DJANGO_SETTINGS_MODULE"]

import atomlimit.django as atomlimit_django  # noqa: E402  (needs the settings above)
from atomlimit import AsyncLimiter, Concurrency, InvalidInput, RateLimit  # noqa: E402
from atomlimit.asgi import QUOTA_EXCEEDED  # noqa: E402
from atomlimit.django import RequestLimits, client_address, limit  # noqa: E402

HERE = Path(__file__).resolve().parent
EXCLUDED = ["/health", "/naive", "/decorated", "/decorated-async", "/stream", "/astream", "/flood"]
PROBLEM = "application/problem+json"


def items(field: str) -> list[tuple[str, dict[str, Any]]]:
    members = http_sfv.List()
    members.parse(field.encode("ascii"))
    return [(member.value, dict(member.params)) for member in members]


@contextmanager
def project(server: Server, **atomlimit: Any) -> Iterator[None]:
    """The test project's settings, on ``server``, with ``atomlimit`` over its ATOMLIMIT."""
    server.flush()
    options = {"URL": server.url, "LIMITS": ["3/minute"], "EXCLUDE": EXCLUDED, **atomlimit}
    with override_settings(
        ROOT_URLCONF="django_project.urls",
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=["atomlimit.django.RateLimitMiddleware"],
        ATOMLIMIT=options,
    ):
        yield


def no_sync_limiter() -> None:
    raise AssertionError("the sync Limiter was used")


def test_the_middleware_adds_the_fields_and_denies_the_fourth_with_problem_json(
    server: Server,
) -> None:
    with project(server):
        client = Client()
        responses = [client.get("/") for _ in range(4)]
        health = client.get("/health")

    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert items(responses[0].headers["RateLimit-Policy"]) == [("3/minute", {"q": 3, "w": 60})]
    assert [items(r.headers["RateLimit"])[0][1]["r"] for r in responses] == [2, 1, 0, 0]
    denied = responses[3]
    assert denied.headers["Content-Type"] == PROBLEM
    assert int(denied.headers["Retry-After"]) >= 1
    assert json.loads(denied.content) == {
        "type": QUOTA_EXCEEDED,
        "title": "Too Many Requests",
        "status": 429,
        "violated-policies": ["3/minute"],
    }
    assert health.status_code == 200
    assert "RateLimit" not in health.headers


def test_the_view_reads_the_decision_on_the_request(server: Server) -> None:
    with project(server):
        client = Client()
        seen = [client.get("/seen").json() for _ in range(2)]

    assert seen == [{"remaining": [2]}, {"remaining": [1]}]


async def test_under_asgi_the_middleware_charges_through_the_async_limiter(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomlimit_django._LIMITERS, "sync", no_sync_limiter)
    with project(server):
        client = AsyncClient()
        codes = [(await client.get(path)).status_code for path in ["/async", "/", "/async"]]
        denied = await client.get("/async")

    # The sync view runs in a thread, but the middleware runs in the loop.
    assert codes == [200, 200, 200]
    assert denied.status_code == 429
    assert denied.headers["Content-Type"] == PROBLEM


async def test_under_asgi_a_decorated_async_view_uses_the_async_limiter(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomlimit_django._LIMITERS, "sync", no_sync_limiter)
    with project(server):
        client = AsyncClient()
        codes = [(await client.get("/decorated-async")).status_code for _ in range(4)]

    assert codes == [200, 200, 200, 429]


async def test_under_asgi_a_decorated_sync_view_uses_the_sync_limiter_in_its_thread(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_async_limiter(request: HttpRequest) -> None:
        raise AssertionError("the AsyncLimiter was used")

    monkeypatch.setattr(atomlimit_django._LIMITERS, "in_loop", no_async_limiter)
    with project(server, LIMITS=["100/minute"]):
        client = AsyncClient()
        codes = [(await client.get("/decorated")).status_code for _ in range(4)]

    assert codes == [200, 200, 200, 429]


def test_under_wsgi_an_async_view_gets_a_loop_per_request_and_is_still_counted(
    server: Server,
) -> None:
    # Django's WSGI handler (and its test Client) runs each async view in a
    # fresh event loop, which a kept AsyncLimiter cannot serve: the control.
    limiter: AsyncLimiter | None = None
    spec = RateLimit.parse("3/minute", name="kept")

    async def kept(request: HttpRequest) -> HttpResponse:
        nonlocal limiter
        limiter = limiter or AsyncLimiter.from_url(server.url)
        return HttpResponse(str((await limiter.hit(spec, "x")).remaining))

    with project(server):
        codes = [Client().get("/decorated-async").status_code for _ in range(4)]
        assert async_to_sync(kept)(None).content == b"2"
        with pytest.raises(InvalidInput, match="bound to the event loop"):
            async_to_sync(kept)(None)

    assert codes == [200, 200, 200, 429]


def test_a_new_event_loop_gets_a_new_async_limiter_once_the_old_one_closed(
    server: Server,
) -> None:
    with project(server):
        codes = [async_to_sync(AsyncClient().get)("/async").status_code for _ in range(4)]

    assert codes == [200, 200, 200, 429]


def test_a_decorated_view_counts_its_own_limit_and_the_middleware_its_own(
    server: Server,
) -> None:
    view = limit("2/minute", group="both")(lambda request: HttpResponse("ok"))
    with project(server, EXCLUDE=[]):
        request_factory = django.test.RequestFactory()
        middleware = atomlimit_django.RateLimitMiddleware(view)
        responses = [middleware(request_factory.get("/x")) for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    # One field for both layers, the middleware's limit first.
    assert [name for name, _ in items(responses[0].headers["RateLimit"])] == [
        "3/minute",
        "both:2/minute",
    ]
    assert json.loads(responses[2].content)["violated-policies"] == ["both:2/minute"]


def test_rate_strings_on_a_view_are_named_after_the_view(server: Server) -> None:
    def search(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    view = limit("5/minute")(search)
    with project(server):
        response = view(django.test.RequestFactory().get("/"))

    assert (
        items(response.headers["RateLimit"])[0][0] == f"{__name__}.{search.__qualname__}:5/minute"
    )


def test_block_false_lets_the_view_see_the_denial(server: Server) -> None:
    @limit("1/minute", group="soft", block=False)
    def soft(request: HttpRequest) -> HttpResponse:
        return HttpResponse("limited" if request.atomlimit.limited else "fine")

    with project(server):
        replies = [soft(django.test.RequestFactory().get("/")).content for _ in range(2)]

    assert replies == [b"fine", b"limited"]


def test_methods_limits_only_those_methods(server: Server) -> None:
    view = limit("1/minute", group="posts", methods=["post"])(lambda r: HttpResponse("ok"))
    factory = django.test.RequestFactory()
    with project(server):
        codes = [view(factory.get("/")).status_code for _ in range(3)]
        posts = [view(factory.post("/")).status_code for _ in range(2)]

    assert codes == [200, 200, 200]
    assert posts == [200, 429]


def test_the_key_from_settings_decides_the_subject_and_none_is_unlimited(
    server: Server,
) -> None:
    with project(server, KEY="test_django.api_key", LIMITS=["1/minute"]):
        client = Client()
        alice = [client.get("/", HTTP_X_API_KEY="alice").status_code for _ in range(2)]
        bob = client.get("/", HTTP_X_API_KEY="bob").status_code
        internal = [client.get("/").status_code for _ in range(3)]

    assert alice == [200, 429]
    assert bob == 200
    assert internal == [200, 200, 200]


def api_key(request: HttpRequest) -> str | None:
    key: str | None = request.headers.get("x-api-key")
    return key


def test_the_client_address_trusts_x_forwarded_for_only_behind_trusted_hops() -> None:
    factory = django.test.RequestFactory()
    request = factory.get("/", REMOTE_ADDR="::ffff:10.0.0.5", HTTP_X_FORWARDED_FOR="203.0.113.9")

    assert client_address()(request) == "10.0.0.5"
    assert client_address(trusted_hops=1)(request) == "203.0.113.9"
    with pytest.raises(InvalidInput, match="trusted_hops"):
        client_address(trusted_hops=99)


def test_include_and_exclude_choose_the_paths(server: Server) -> None:
    with project(server, LIMITS=["1/minute"], INCLUDE=["/seen"], EXCLUDE=[]):
        client = Client()
        free = [client.get("/").status_code for _ in range(3)]
        limited = [client.get("/seen").status_code for _ in range(2)]

    assert free == [200, 200, 200]
    assert limited == [200, 429]


@pytest.mark.parametrize("path", ["/stream", "/astream"])
def test_a_concurrency_lease_is_held_until_the_stream_ends(server: Server, path: str) -> None:
    with project(server):
        client = Client()
        first = client.get(path)
        while_streaming = client.get(path).status_code
        body = b"".join(first)  # an async stream is read through asgiref, as WSGI reads it
        first.close()
        after = client.get(path)
        b"".join(after)
        after.close()

    assert first.status_code == 200
    assert body == b"ab"
    assert while_streaming == 429
    assert after.status_code == 200
    assert items(after.headers["RateLimit-Policy"])[0][1]["qu"] == "concurrent-requests"


async def test_an_async_stream_under_asgi_holds_its_lease_until_it_ends(server: Server) -> None:
    with project(server):
        client = AsyncClient()
        first = await client.get("/astream")
        while_streaming = (await client.get("/astream")).status_code
        body = b"".join([part async for part in first.streaming_content])
        after = await client.get("/astream")
        [part async for part in after.streaming_content]

    assert first.status_code == 200
    assert body == b"ab"
    assert while_streaming == 429
    assert after.status_code == 200


@pytest.mark.parametrize(("policy", "status"), [("allow", 200), ("deny", 429)])
def test_the_failure_policy_decides_when_the_server_is_down(
    server: Server, policy: str, status: int
) -> None:
    with project(server, URL="redis://127.0.0.1:1/0", ON_BACKEND_ERROR=policy):
        response = Client().get("/")
        decision = response.wsgi_request.atomlimit.decisions[0]

    assert response.status_code == status
    assert decision.degraded


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"URL": ""}, "URL"),
        ({"COLOR": "red"}, "COLOR"),
        ({"ON_BACKEND_ERROR": "maybe"}, "ON_BACKEND_ERROR"),
        ({"LIMITS": []}, "LIMITS"),
        ({"LIMITS": ["3/minute", "3/minute"]}, "two limits"),
        ({"LIMITS": [42]}, "RateLimit"),
        ({"INCLUDE": ["api"]}, "include"),
        ({"TRUSTED_HOPS": -1}, "trusted_hops"),
    ],
)
def test_bad_settings_raise_invalid_input_when_the_middleware_loads(
    server: Server, options: dict[str, Any], message: str
) -> None:
    with project(server, **options), pytest.raises(InvalidInput, match=message):
        atomlimit_django.RateLimitMiddleware(lambda request: HttpResponse())


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "at least one"),
        (("3/fortnight",), {}, "fortnight"),
        (("3/minute",), {"group": ""}, "group"),
        (("3/minute",), {"methods": "GET"}, "methods"),
        (("3/minute",), {"block": "no"}, "block"),
        (("3/minute",), {"key": 3}, "key"),
    ],
)
def test_a_bad_decorator_raises_invalid_input_before_any_request(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        limit(*args, **kwargs)(lambda request: HttpResponse())


def test_request_limits_reads_allowed_and_limited() -> None:
    assert RequestLimits().allowed
    assert RequestLimits().headers() == {}


def test_two_limits_on_a_view_are_charged_all_or_nothing(server: Server) -> None:
    slots = Concurrency(name="slots", limit=5)
    view = limit("2/minute", slots, group="pair")(lambda r: HttpResponse("ok"))
    with project(server):
        codes = [view(django.test.RequestFactory().get("/")).status_code for _ in range(3)]

    assert codes == [200, 200, 429]
    with server.client() as redis_client:
        held = [k for k in redis_client.scan_iter(match="*}:cc:*") if redis_client.zcard(k)]
    assert held == []


# --------------------------------------------------------------------------
# Real servers
# --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving(command: Callable[[int], list[str]], server: Server, **env: str) -> Iterator[str]:
    """The test project served by ``command(port)``, and its base URL."""
    port = free_port()
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1] / "src")]),
        "ATOMLIMIT_URL": server.url,
        "DJANGO_SETTINGS_MODULE": "django_project.settings",
        **env,
    }
    # A file, not a pipe: each 429 is logged, and a full pipe would stall the workers.
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command(port), env=environment, stderr=log, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(base, process)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=60)
        log.seek(0)
        errors = log.read()
    assert "Traceback" not in errors, errors


def wait_until_up(base: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail("the server exited early")
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail("the server did not start answering")


def gunicorn(workers: int, threads: int) -> Callable[[int], list[str]]:
    return lambda port: [
        sys.executable, "-m", "gunicorn", "django_project.wsgi:application",
        "--workers", str(workers), "--threads", str(threads), "--log-level", "warning",
        "--bind", f"127.0.0.1:{port}",
    ]  # fmt: skip


def uvicorn(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "django_project.asgi:application",
        "--lifespan", "off", "--log-level", "warning", "--no-proxy-headers",
        "--port", str(port),
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.one_server_kind  # the server is the same Redis for both; the subject is Django's
def test_under_uvicorn_the_middleware_and_async_views_share_one_count(server: Server) -> None:
    server.flush()
    with serving(uvicorn, server) as base:
        codes = [httpx.get(f"{base}{path}").status_code for path in ["/async", "/", "/async"]]
        denied = httpx.get(f"{base}/async")
        decorated = [httpx.get(f"{base}/decorated-async").status_code for _ in range(4)]

    assert codes == [200, 200, 200]
    assert denied.status_code == 429
    assert denied.headers["content-type"] == PROBLEM
    assert decorated == [200, 200, 200, 429]


def hey(url: str, requests: int, concurrency: int) -> dict[int, int]:
    """The status codes of a ``hey`` flood of ``url``, counted."""
    output = subprocess.run(
        [shutil.which("hey") or "hey", "-n", str(requests), "-c", str(concurrency), url],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    section = output.split("Status code distribution:")[1]
    return {int(code): int(count) for code, count in re.findall(r"\[(\d+)\]\s+(\d+)", section)}


@pytest.mark.slow
@pytest.mark.one_server_kind  # the race is in the application's check, not the server
def test_a_flood_of_gunicorn_workers_admits_exactly_the_limit_and_the_naive_view_more(
    server: Server,
) -> None:
    require_tool("hey")
    server.flush()
    env = {"ATOMLIMIT_DECORATED_LIMIT": "500", "ATOMLIMIT_MIDDLEWARE": "0"}
    with serving(gunicorn(workers=4, threads=4), server, **env) as base:
        exact = hey(f"{base}/flood", 3000, 100)
        naive = hey(f"{base}/naive", 3000, 100)
    print(f"atomlimit: {exact}; the naive view: {naive}")

    assert exact == {200: 500, 429: 2500}
    assert naive[200] > 500

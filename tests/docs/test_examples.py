"""The programs in examples/, each started against a real server and checked by what it
prints or serves. The web applications run under uvicorn on a free loopback port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import http_sfv
import httpx
import pytest
import redis
from provider import ProviderConfig, RunningProvider
from servers import Server

from atomlimit import Concurrency, Limiter, SpendCap

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STARTUP = 30.0
"""Seconds an application may take to start answering."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving(script: str, server: Server, *args: str) -> Iterator[httpx.Client]:
    """The example application running under uvicorn, and a client for it."""
    port = free_port()
    command = [sys.executable, str(EXAMPLES / script), "--url", server.url, "--port", str(port)]
    process = subprocess.Popen([*command, *args], stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            wait_until_up(client, process)
            clear_of_a_minute_edge(server)
            yield client
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=30)
    assert "Traceback" not in errors, errors


def wait_until_up(client: httpx.Client, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the example exited early: {process.communicate()[1]}")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail("the example did not start answering")


def clear_of_a_minute_edge(server: Server) -> None:
    """Start a test's requests at least 15 s before the server's minute turns.

    The example applications count per minute, in fixed windows that the
    server's clock opens; a test whose requests straddle the turn of a
    minute would see its counts start again part-way. This waits, by the
    server's TIME, for the next minute when the current one is nearly over.
    """
    with redis.Redis.from_url(server.url) as client:
        seconds, micros = client.time()
    into_minute = seconds % 60 + micros / 1e6
    if into_minute > 45:
        time.sleep(60 - into_minute + 0.1)


def run(script: str, server: Server) -> str:
    try:
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / script), "--url", server.url],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as err:
        # What the example said on its way out is the only clue to why.
        raise AssertionError(f"{script}: {err}\nstderr:\n{err.stderr}") from err
    return result.stdout


def items(field: str) -> list[tuple[str, dict[str, object]]]:
    members = http_sfv.List()
    members.parse(field.encode("ascii"))
    return [(member.value, dict(member.params)) for member in members]


def test_the_fastapi_app_limits_every_route_and_search_more_tightly(server: Server) -> None:
    with serving("fastapi_app.py", server) as client:
        searches = [client.get("/search", params={"q": "redis"}) for _ in range(3)]
        home = [client.get("/") for _ in range(3)]
        health = [client.get("/health") for _ in range(10)]

    assert [r.status_code for r in searches] == [200, 200, 429]
    assert searches[0].json() == {"q": "redis", "searches_left": 1}
    assert searches[2].json() == {"detail": "RateLimit 'search' exceeded"}
    assert int(searches[2].headers["Retry-After"]) >= 1
    # The middleware's per-client limit of 5 counts the searches too.
    assert [r.status_code for r in home] == [200, 200, 429]
    assert home[2].json()["violated-policies"] == ["per-client"]
    assert items(home[0].headers["RateLimit-Policy"]) == [("per-client", {"q": 5, "w": 60})]
    assert {r.status_code for r in health} == {200}


def test_the_starlette_app_limits_api_paths_and_streams_untouched(server: Server) -> None:
    with serving("starlette_app.py", server) as client:
        streamed = client.get("/api/stream")
        listed = [client.get("/api/items") for _ in range(3)]
        health = client.get("/health")

    assert streamed.status_code == 200
    assert streamed.text == "line 0\nline 1\nline 2\n"
    assert [name for name, _ in items(streamed.headers["RateLimit"])] == ["burst", "daily"]
    assert [r.status_code for r in listed] == [200, 200, 429]
    assert listed[2].json()["violated-policies"] == ["burst"]
    assert "RateLimit" not in health.headers


def test_the_starlette_app_behind_a_trusted_proxy_limits_each_forwarded_client(
    server: Server,
) -> None:
    with serving("starlette_app.py", server, "--trusted-hops", "1") as client:
        alice = [
            client.get("/api/items", headers={"x-forwarded-for": "198.51.100.1"}).status_code
            for _ in range(4)
        ]
        bob = client.get("/api/items", headers={"x-forwarded-for": "198.51.100.2"}).status_code

    assert alice == [200, 200, 200, 429]
    assert bob == 200


def test_the_starlette_app_charges_the_peer_whatever_x_forwarded_for_says(
    server: Server,
) -> None:
    # uvicorn trusts X-Forwarded-For from loopback unless told not to, which
    # would make each spoofed address below a subject of its own.
    with serving("starlette_app.py", server) as client:
        codes = [
            client.get("/api/items", headers={"x-forwarded-for": f"198.51.100.{n}"}).status_code
            for n in range(4)
        ]

    assert codes == [200, 200, 200, 429]


def test_the_fastapi_app_charges_the_peer_whatever_x_forwarded_for_says(server: Server) -> None:
    with serving("fastapi_app.py", server) as client:
        codes = [
            client.get("/", headers={"x-forwarded-for": f"198.51.100.{n}"}).status_code
            for n in range(6)
        ]

    assert codes == [200] * 5 + [429]


def test_the_django_app_limits_every_request_and_its_async_search_more_tightly(
    server: Server,
) -> None:
    with serving("django_app.py", server) as client:
        searches = [client.get("/search", params={"q": "redis"}) for _ in range(3)]
        home = [client.get("/", headers={"x-forwarded-for": f"198.51.100.{n}"}) for n in range(3)]
        health = [client.get("/health") for _ in range(10)]

    assert [r.status_code for r in searches] == [200, 200, 429]
    assert searches[0].json() == {"q": "redis", "searches_left": 1, "requests_left": 4}
    assert [name for name, _ in items(searches[0].headers["RateLimit"])] == [
        "per-client",
        "search:2/minute",
    ]
    assert searches[2].headers["content-type"] == "application/problem+json"
    assert searches[2].json()["violated-policies"] == ["search:2/minute"]
    assert int(searches[2].headers["Retry-After"]) >= 1
    # The middleware counted all three searches; spoofed X-Forwarded-For
    # changes nothing, so the fifth request of the minute is the last.
    assert [r.status_code for r in home] == [200, 200, 429]
    assert home[2].json()["violated-policies"] == ["per-client"]
    assert {r.status_code for r in health} == {200}


def test_the_ai_workers_never_spend_past_the_cap(server: Server) -> None:
    lines = run("ai_workers.py", server).splitlines()

    completed, refused = (int(part.split()[-1]) for part in lines[1].split(", "))
    spent = Decimal(lines[2].split()[1])
    cap = SpendCap(name="model-spend", limit=Decimal("0.25"), currency="USD", window="day")
    with Limiter.from_url(server.url) as limiter:
        on_server = limiter.peek(cap, "team-a", cost=0)

    assert completed + refused == 40
    assert completed > 0
    assert refused > 0  # the cap binds
    assert spent <= cap.limit
    assert on_server.used == spent
    assert on_server.held == 0
    assert lines[2].endswith("within the cap")


def test_the_job_runner_waits_for_exports_and_skips_the_extra_report(server: Server) -> None:
    lines = run("job_runner.py", server).splitlines()

    assert [line.split(" at ")[0] for line in lines[:7]] == [
        f"export acme #{n}" for n in range(1, 8)
    ]
    assert lines[7:9] == ["report sent to acme", "report sent to acme"]
    assert re.fullmatch(
        r"report skipped: RateLimit 'reports' exceeded; retry after \d+\.\d\d s", lines[9]
    )
    assert "acme" not in lines[9]


def test_the_flask_app_under_gunicorn_limits_every_route_and_search_more_tightly(
    server: Server,
) -> None:
    with serving("flask_app.py", server) as client:
        searches = [client.get("/search", params={"q": "redis"}) for _ in range(3)]
        home = [client.get("/") for _ in range(4)]
        report = client.get("/report")
        health = [client.get("/health") for _ in range(10)]
        reports_in_flight = held_until_released(server, Concurrency(name="reports", limit=1))

    assert [r.status_code for r in searches] == [200, 200, 429]
    assert searches[1].json() == {"q": "redis", "searches_left": 0}
    assert searches[2].headers["content-type"] == "application/problem+json"
    assert len(searches[2].json()["violated-policies"]) == 1
    assert int(searches[2].headers["Retry-After"]) >= 1
    # The default 5 a minute counts the two searches too.
    assert [r.status_code for r in home] == [200, 200, 200, 429]
    assert home[0].json() == {"left": [2]}
    assert home[3].json()["violated-policies"] == ["5/minute"]
    # The report's lease is released once gunicorn closes the streamed body.
    assert report.status_code == 200
    assert report.text == "line 0\nline 1\nline 2\n"
    assert reports_in_flight == 0
    assert items(report.headers["RateLimit-Policy"]) == [
        ("reports", {"q": 1, "qu": "concurrent-requests"})
    ]
    assert {r.status_code for r in health} == {200}
    assert all("RateLimit" not in r.headers for r in health)


def held_until_released(server: Server, spec: Concurrency) -> int:
    """The example's leases of ``spec`` once released: gunicorn closes a body after
    sending it, so the client may read the last byte a moment before."""
    with Limiter.from_url(server.url, prefix="example") as limiter:
        for _ in range(100):
            used = limiter.peek(spec, "127.0.0.1").used
            if used == 0:
                break
            time.sleep(0.05)
    return used


def test_the_wsgi_app_limits_api_paths_only(server: Server) -> None:
    with serving("wsgi_app.py", server) as client:
        listed = [client.get("/api/items") for _ in range(4)]
        health = [client.get("/health") for _ in range(5)]

    assert [r.status_code for r in listed] == [200, 200, 200, 429]
    assert [name for name, _ in items(listed[0].headers["RateLimit"])] == ["burst", "daily"]
    assert listed[3].json()["violated-policies"] == ["burst"]
    assert {r.status_code for r in health} == {200}
    assert all("RateLimit" not in r.headers for r in health)


# The worker's side is Celery's, the same whichever server kind answers.
@pytest.mark.slow
@pytest.mark.one_server_kind
def test_the_celery_app_sends_at_most_ten_per_window_and_settles_each_summary(
    server: Server,
) -> None:
    lines = run("celery_app.py", server).splitlines()

    assert lines[0] == "sent 25 newsletters, at most 10 per window"
    assert lines[1] == "spent 0.10 USD on 5 summaries, 0.00 USD still held"


@pytest.mark.one_server_kind
def test_the_openai_example_runs_the_official_sdk_under_budgeted_calls(
    server: Server, provider: RunningProvider
) -> None:
    # The provider's limits are the example's (per minute), less the 30 % of
    # each window another consumer of the key takes, which only its headers
    # reveal: the example observes and settles through the official SDK, and
    # every answer is counted once.
    config = ProviderConfig(rpm=300, tpm=40_000, window_ms=60_000, other_share=Decimal("0.3"))
    provider.reset(config)
    command = [
        sys.executable, str(EXAMPLES / "openai_budgeted.py"), "--url", server.url,
        "--base-url", provider.base_url, "--calls", "30", "--workers", "6",
    ]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": "example-key"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    printed = dict(
        re.findall(r"^(completed|provider 429s|tokens|spent) (\S+)", result.stdout, re.M)
    )
    stats = provider.stats().key("example-key")
    answered = sum(window.usage for window in stats.windows.values())
    spend = SpendCap(name="client-spend", limit=Decimal("5.00"), currency="USD", window="day")
    with Limiter.from_url(server.url) as limiter:
        held = [limiter.peek(spend, f"client-{n}", 0) for n in range(3)]

    assert printed["completed"] == "30"
    assert int(printed["tokens"]) == answered  # each answer's usage, settled once
    assert stats.received == 30 + int(printed["provider 429s"])
    assert sum(d.used for d in held) == Decimal(printed["spent"])
    assert [d.held for d in held] == [0, 0, 0]  # every hold settled or released

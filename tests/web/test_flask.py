"""atomlimit.flask through Flask's test client, against real servers.

Flask's test client is the WSGI server here, and like one it leaves the
closing of a response to its caller: a test about a lease closes each
response, as a server does once the body is sent.

The same extension under gunicorn is tested by tests/docs/test_examples.py
(examples/flask_app.py) and, under a flood, by test_wsgi_flood.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import http_sfv
import pytest
from flask import Flask, Response, g, has_request_context, request, stream_with_context
from servers import Server

from atomlimit import Concurrency, InvalidInput, Limiter, RateLimit
from atomlimit.asgi import QUOTA_EXCEEDED
from atomlimit.flask import RateLimited, RateLimits

PEER = {"REMOTE_ADDR": "203.0.113.7"}


@pytest.fixture(autouse=True)
def no_request_context_outlives_its_test() -> Iterator[None]:
    """A streamed response left open keeps its request context pushed.

    The garbage collector then pops it at some later point, inside another
    test's request, and that request fails with "Working outside of
    request context": every test here closes what it streams.
    """
    yield
    assert not has_request_context(), "a streamed response was left open"


def items(field: str) -> list[tuple[str, dict[str, Any]]]:
    members = http_sfv.List()
    members.parse(field.encode("ascii"))
    return [(member.value, dict(member.params)) for member in members]


def make_app(server: Server, **config: Any) -> tuple[Flask, RateLimits]:
    app = Flask(__name__)
    app.config.update(ATOMLIMIT_URL=server.url, **config)
    rl = RateLimits(app)

    @app.get("/")
    def home() -> dict[str, Any]:
        return {"left": [d.remaining for d in g.atomlimit]}

    @app.get("/health")
    @rl.exempt
    def health() -> str:
        return "ok"

    return app, rl


def test_default_limits_cover_every_route_and_deny_with_the_problem_body(server: Server) -> None:
    app, _ = make_app(server, ATOMLIMIT_DEFAULT_LIMITS=["3/minute"])
    client = app.test_client()
    responses = [client.get("/", environ_base=PEER) for _ in range(4)]
    missing = client.get("/nowhere", environ_base=PEER)

    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.json for r in responses[:3]] == [{"left": [2]}, {"left": [1]}, {"left": [0]}]
    assert items(responses[0].headers["RateLimit-Policy"]) == [("3/minute", {"q": 3, "w": 60})]
    denied = responses[3]
    assert denied.headers["Content-Type"] == "application/problem+json"
    assert denied.json == {
        "type": QUOTA_EXCEEDED,
        "title": "Too Many Requests",
        "status": 429,
        "violated-policies": ["3/minute"],
    }
    retry = int(denied.headers["Retry-After"])
    assert items(denied.headers["RateLimit"]) == [("3/minute", {"r": 0, "t": retry})]
    assert len(denied.headers.getlist("RateLimit")) == 1
    assert missing.status_code == 429  # a 404 is a request too


def test_a_views_limit_is_charged_with_the_defaults_in_one_step(server: Server) -> None:
    app, rl = make_app(server, ATOMLIMIT_DEFAULT_LIMITS="5/minute; 100/day")

    @app.get("/search")
    @rl.limit("2/minute")
    def search() -> dict[str, Any]:
        return {"left": [d.remaining for d in g.atomlimit]}

    client = app.test_client()
    searches = [client.get("/search", environ_base=PEER) for _ in range(3)]
    home = client.get("/", environ_base=PEER)

    assert [r.status_code for r in searches] == [200, 200, 429]
    assert searches[1].json == {"left": [3, 98, 0]}
    assert [name for name, _ in items(searches[2].headers["RateLimit"])] == [
        "5/minute",
        "100/day",
        "test_flask.test_a_views_limit_is_charged_with_the_defaults_in_one_step.<locals>.search"
        " 2/minute",
    ]
    assert len(searches[2].json["violated-policies"]) == 1
    # The denied search charged none of the three: 2 searches, then home.
    assert home.json == {"left": [2, 97]}


def test_an_exempt_view_is_never_limited(server: Server) -> None:
    app, _ = make_app(server, ATOMLIMIT_DEFAULT_LIMITS=["1/minute"])
    client = app.test_client()
    health = [client.get("/health", environ_base=PEER) for _ in range(5)]

    assert {r.status_code for r in health} == {200}
    assert all("RateLimit" not in r.headers for r in health)


def test_a_spec_shared_by_two_views_is_one_budget_and_a_key_picks_the_subject(
    server: Server,
) -> None:
    app, rl = make_app(server)
    shared = RateLimit(name="exports", limit=2, window="hour")

    def api_key() -> str | None:
        return request.headers.get("X-Api-Key")  # no key: this limit is not charged

    @app.get("/csv")
    @rl.limit(shared, key=api_key)
    def csv() -> str:
        return "csv"

    @app.get("/pdf")
    @rl.limit(shared, key=api_key)
    def pdf() -> str:
        return "pdf"

    client = app.test_client()
    alice = {"X-Api-Key": "alice"}
    codes = [client.get(p, headers=alice).status_code for p in ("/csv", "/pdf", "/csv")]
    bob = client.get("/pdf", headers={"X-Api-Key": "bob"}).status_code
    anonymous = [client.get("/csv").status_code for _ in range(4)]

    assert codes == [200, 200, 429]
    assert bob == 200
    assert anonymous == [200] * 4


def test_the_default_key_reads_x_forwarded_for_only_with_trusted_hops(server: Server) -> None:
    spoofing, _ = make_app(server, ATOMLIMIT_DEFAULT_LIMITS=["2/minute"])
    client = spoofing.test_client()
    spoofed = [
        client.get("/", headers={"X-Forwarded-For": f"10.0.0.{n}"}, environ_base=PEER).status_code
        for n in range(3)
    ]
    proxied, _ = make_app(server, ATOMLIMIT_DEFAULT_LIMITS=["2/minute"], ATOMLIMIT_TRUSTED_HOPS=1)
    behind = proxied.test_client()
    forwarded = [
        behind.get("/", headers={"X-Forwarded-For": f"10.0.1.{n}"}, environ_base=PEER).status_code
        for n in range(3)
    ]

    assert spoofed == [200, 200, 429]
    assert forwarded == [200, 200, 200]  # each forwarded client is its own subject


def test_an_errorhandler_may_answer_the_429_and_keeps_the_fields(server: Server) -> None:
    app, _ = make_app(server, ATOMLIMIT_DEFAULT_LIMITS=["1/minute"])

    @app.errorhandler(429)
    def too_many(error: RateLimited) -> tuple[dict[str, Any], int]:
        return {"slow down": [d.spec.name for d in error.decisions if d.spec]}, 429

    client = app.test_client()
    client.get("/", environ_base=PEER)
    denied = client.get("/", environ_base=PEER)

    assert denied.status_code == 429
    assert denied.json == {"slow down": ["1/minute"]}
    assert int(denied.headers["Retry-After"]) >= 1
    assert items(denied.headers["RateLimit"])[0][1]["r"] == 0


def test_a_concurrency_lease_is_held_until_the_streamed_response_closes(server: Server) -> None:
    app, rl = make_app(server)
    in_flight = Concurrency(name="reports", limit=1, lease=timedelta(seconds=30))

    @app.get("/report")
    @rl.limit(in_flight)
    def report() -> Response:
        def lines() -> Iterator[str]:
            yield from ("a\n", "b\n")

        return Response(stream_with_context(lines()))

    client = app.test_client()
    # The test client reads a streamed body's first chunk before it returns,
    # which enters stream_with_context's request context. Every response is
    # closed here: one left open is finalized by the garbage collector at
    # some later point, in another test's request, and pops that request's
    # context instead of its own.
    first = client.get("/report", environ_base=PEER)
    sent = b"".join(first.response)  # fully sent, not yet closed
    with client.get("/report", environ_base=PEER) as while_open:
        refusal = json.loads(while_open.get_data())
    first.close()  # as a WSGI server does once the body is sent
    with client.get("/report", environ_base=PEER) as after:
        pass
    with client.get("/report", environ_base=PEER) as again:
        pass

    assert sent == b"a\nb\n"
    assert while_open.status_code == 429
    assert refusal["violated-policies"] == ["reports"]
    assert [after.status_code, again.status_code] == [200, 200]


def test_a_view_that_raises_releases_its_lease(server: Server) -> None:
    app, rl = make_app(server)
    in_flight = Concurrency(name="jobs", limit=1, lease=timedelta(seconds=30))

    @app.get("/job")
    @rl.limit(in_flight)
    def job() -> str:
        raise RuntimeError("boom")

    client = app.test_client()
    codes = []
    for _ in range(3):
        with client.get("/job", environ_base=PEER) as response:  # closed, as a server does
            codes.append(response.status_code)
    with Limiter.from_url(server.url) as limiter:
        used = limiter.peek(in_flight, "203.0.113.7").used

    assert codes == [500, 500, 500]
    assert used == 0


def test_override_defaults_charges_only_the_views_own_limit(server: Server) -> None:
    app, rl = make_app(server, ATOMLIMIT_DEFAULT_LIMITS=["1/minute"])

    @app.get("/bulk")
    @rl.limit("3/minute", override_defaults=True)
    def bulk() -> str:
        return "ok"

    client = app.test_client()
    codes = [client.get("/bulk", environ_base=PEER).status_code for _ in range(4)]

    assert codes == [200, 200, 200, 429]


def test_disabled_charges_nothing_and_a_prefix_separates_applications(server: Server) -> None:
    off, _ = make_app(server, ATOMLIMIT_DEFAULT_LIMITS=["1/minute"], ATOMLIMIT_ENABLED=False)
    one, _ = make_app(server, ATOMLIMIT_DEFAULT_LIMITS=["1/minute"], ATOMLIMIT_KEY_PREFIX="one")
    two, _ = make_app(server, ATOMLIMIT_DEFAULT_LIMITS=["1/minute"], ATOMLIMIT_KEY_PREFIX="two")

    assert [off.test_client().get("/").status_code for _ in range(3)] == [200] * 3
    assert one.test_client().get("/").status_code == 200
    assert two.test_client().get("/").status_code == 200  # its own keys
    assert one.test_client().get("/").status_code == 429


def test_one_extension_serves_two_applications_with_their_own_limiters(server: Server) -> None:
    rl = RateLimits()
    apps = []
    for prefix in ("a", "b"):
        app = Flask(__name__)
        app.config.update(
            ATOMLIMIT_URL=server.url,
            ATOMLIMIT_KEY_PREFIX=prefix,
            ATOMLIMIT_DEFAULT_LIMITS=["1/hour"],
        )
        rl.init_app(app)
        app.add_url_rule("/", "home", lambda: "ok")
        apps.append(app)

    codes = [app.test_client().get("/").status_code for app in apps for _ in range(2)]
    with apps[0].app_context():
        assert isinstance(rl.limiter, Limiter)

    assert codes == [200, 429, 200, 429]


def test_a_bad_configuration_is_refused(server: Server) -> None:
    with pytest.raises(InvalidInput, match="ATOMLIMIT_URL"):
        RateLimits(Flask(__name__))
    for config, message in [
        ({"ATOMLIMIT_DEFAULT_LIMITS": 5}, "ATOMLIMIT_DEFAULT_LIMITS"),
        ({"ATOMLIMIT_DEFAULT_LIMITS": ["5 per fortnight"]}, "fortnight|position"),
        ({"ATOMLIMIT_DEFAULT_LIMITS": ["5/minute", "5/minute"]}, "two limits named"),
        ({"ATOMLIMIT_TRUSTED_HOPS": 17}, "trusted_hops"),
        ({"ATOMLIMIT_ENABLED": "no"}, "ATOMLIMIT_ENABLED"),
    ]:
        app = Flask(__name__)
        app.config.update(ATOMLIMIT_URL=server.url, **config)
        with pytest.raises(InvalidInput, match=message):
            RateLimits(app)
    rl = RateLimits()
    with pytest.raises(InvalidInput, match="exempt"):
        rl.limit("1/minute")(rl.exempt(lambda: "x"))
    with pytest.raises(InvalidInput, match="has limits"):
        rl.exempt(rl.limit("1/minute")(lambda: "x"))
    with pytest.raises(InvalidInput, match="RateLimit, a Concurrency"):
        rl.limit(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="key must be"):
        rl.limit("1/minute", key="ip")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="Limiter"):
        RateLimits(limiter="redis://")  # type: ignore[arg-type]

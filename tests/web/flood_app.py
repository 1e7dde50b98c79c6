"""The applications tests/web/test_wsgi_flood.py floods under gunicorn.

``create()`` reads which one from ``$FLOOD_MODE``: the WSGI middleware or
the Flask extension, each with atomlimit or with the naive pattern (GET the
count, compare, INCR), all with a limit of ``LIMIT`` for one client.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import redis
from flask import Flask

from atomlimit import Limiter, RateLimit
from atomlimit.flask import RateLimits
from atomlimit.wsgi import Environ, RateLimitMiddleware, StartResponse

LIMIT = 500
MODES = ("wsgi", "naive-wsgi", "flask", "naive-flask")
URL_ENV = "FLOOD_URL"
MODE_ENV = "FLOOD_MODE"
SPEC = RateLimit(name="flood", limit=LIMIT, window="hour")
NAIVE_KEY = "naive:flood"


def hello(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """The flooded route; ``/up``, which the test polls until gunicorn answers, is never limited."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def naive_allows(client: redis.Redis) -> bool:
    """The read-then-write check: between GET and INCR, every other worker may read too."""
    used = int(client.get(NAIVE_KEY) or 0)
    if used >= LIMIT:
        return False
    client.incr(NAIVE_KEY)
    return True


def naive_wsgi(client: redis.Redis) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not naive_allows(client):
            start_response("429 Too Many Requests", [])
            return [b""]
        return hello(environ, start_response)

    return app


def flask_app(url: str, naive: bool) -> Flask:
    app = Flask(__name__)
    app.config.update(ATOMLIMIT_URL=url, ATOMLIMIT_DEFAULT_LIMITS=[] if naive else [SPEC])
    rl = RateLimits(app)
    client = redis.Redis.from_url(url)

    @app.get("/up")
    @rl.exempt
    def up() -> str:
        return "up"

    @app.get("/")
    def home() -> Any:
        if naive and not naive_allows(client):
            return "", 429
        return "ok"

    return app


def create() -> Any:
    url, mode = os.environ[URL_ENV], os.environ[MODE_ENV]
    if mode == "wsgi":
        limiter = Limiter.from_url(url)
        return RateLimitMiddleware(hello, limiter=limiter, limits=SPEC, exclude=["/up"])
    if mode == "naive-wsgi":
        return naive_wsgi(redis.Redis.from_url(url))
    if mode in ("flask", "naive-flask"):
        return flask_app(url, naive=mode == "naive-flask")
    raise ValueError(f"{MODE_ENV} must be one of {MODES}, got {mode!r}")

"""A bare WSGI application behind atomlimit.wsgi.RateLimitMiddleware.

``/api/...`` allows each client 3 requests per 10 seconds and 100 a day,
both charged in one atomic step; ``/health`` is not limited. No framework:
the middleware wraps any PEP 3333 callable (a Flask app's ``wsgi_app``, a
Django ``WSGIHandler``) the same way.

    pip install atomlimit gunicorn
    python examples/wsgi_app.py --url redis://localhost:6379/0 --port 8003

or ``ATOMLIMIT_URL=... gunicorn -w 4 'wsgi_app:create_app()'``. The Redis
URL comes from ``--url``, else ``$ATOMLIMIT_URL``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from atomlimit import Limiter, RateLimit
from atomlimit.wsgi import RateLimitMiddleware

BURST = RateLimit.parse("3/10s", name="burst")
DAILY = RateLimit.parse("100/day", name="daily")


def application(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ.get("PATH_INFO", "/")
    body = json.dumps({"status": "ok"} if path == "/health" else {"items": [1, 2]}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def create_app(url: str | None = None, trusted_hops: int = 0) -> RateLimitMiddleware:
    limiter = Limiter.from_url(url or os.environ.get("ATOMLIMIT_URL", "redis://localhost:6379/0"))
    return RateLimitMiddleware(
        application, limiter=limiter, limits=[BURST, DAILY], include=["/api"]
    )


def main() -> None:
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("ATOMLIMIT_URL", "redis://localhost:6379/0")
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    args = parser.parse_args()
    with make_server(args.host, args.port, create_app(args.url), handler_class=Quiet) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()

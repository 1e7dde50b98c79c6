"""A Flask application limited by atomlimit.flask, served by gunicorn.

Every route allows each client 5 requests a minute (the default limits);
``/search`` allows 2 a minute on top of that, charged in the same atomic
step; ``/report`` runs at most 1 at a time per client, its lease held
until the streamed body is sent; ``/health`` is exempt. A view reads its
decisions from ``flask.g.atomlimit``.

    pip install 'atomlimit[flask]' gunicorn
    python examples/flask_app.py --url redis://localhost:6379/0 --port 8002

or, with gunicorn's own command line:

    ATOMLIMIT_URL=redis://localhost:6379/0 gunicorn -w 4 'flask_app:create_app()'

The Redis URL comes from ``--url``, else ``$ATOMLIMIT_URL``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g, request, stream_with_context
from gunicorn.app.base import BaseApplication

from atomlimit import Concurrency
from atomlimit.flask import RateLimits

rl = RateLimits()


def create_app(url: str | None = None) -> Flask:
    """The application; its limiter is made from ``ATOMLIMIT_URL``."""
    app = Flask(__name__)
    app.config.update(
        ATOMLIMIT_URL=url or os.environ.get("ATOMLIMIT_URL", "redis://localhost:6379/0"),
        ATOMLIMIT_DEFAULT_LIMITS=["5/minute"],
        ATOMLIMIT_KEY_PREFIX="example",
    )
    rl.init_app(app)

    @app.get("/")
    def home() -> dict[str, Any]:
        return {"left": [decision.remaining for decision in g.atomlimit]}

    @app.get("/search")
    @rl.limit("2/minute")
    def search() -> dict[str, Any]:
        return {"q": request.args.get("q", ""), "searches_left": g.atomlimit[-1].remaining}

    @app.get("/report")
    @rl.limit(Concurrency(name="reports", limit=1), override_defaults=True)
    def report() -> Response:
        def lines() -> Iterator[str]:
            for n in range(3):
                yield f"line {n}\n"

        return Response(stream_with_context(lines()), mimetype="text/plain")

    @app.get("/health")
    @rl.exempt
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


class Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn, serving one application object with the given settings."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self) -> Flask:
        return self.application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("ATOMLIMIT_URL", "redis://localhost:6379/0")
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    options = {
        "bind": f"{args.host}:{args.port}",
        "workers": args.workers,
        "loglevel": "warning",
    }
    Gunicorn(create_app(args.url), options).run()


if __name__ == "__main__":
    main()

"""A FastAPI application limited two ways: every route per client, and one route more tightly.

The middleware allows each client address 5 requests a minute on every
route but ``/health``; ``/search`` also allows 2 a minute, through a
dependency that hands its Decision to the handler. Allowed responses carry
the RateLimit header fields; denied ones are 429s with ``Retry-After``.

    pip install 'atomlimit[fastapi]' uvicorn
    python examples/fastapi_app.py --url redis://localhost:6379/0 --port 8000
    curl -i localhost:8000/search?q=redis

The Redis URL comes from ``--url``, else ``$ATOMLIMIT_URL``. The client
is the peer that opened the connection: uvicorn runs with
``proxy_headers=False`` (``--no-proxy-headers`` on its command line),
because by default it takes the client from X-Forwarded-For for requests
from 127.0.0.1 and ::1, which lets a local caller name any subject. See
docs/web.md, "Whose request is it".
"""

# No `from __future__ import annotations` here: FastAPI reads Depends() from
# the handlers' annotations at runtime, and as strings they could not name
# the dependency built inside create_app.
import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI

from atomlimit import AsyncLimiter, Decision, RateLimit
from atomlimit.asgi import RateLimitMiddleware
from atomlimit.fastapi import limit

PER_CLIENT = RateLimit.parse("5/minute", name="per-client")
SEARCH = RateLimit.parse("2/minute", name="search")


def create_app(url: str) -> FastAPI:
    """The application, with its limiter on ``url``, closed when the app shuts down."""
    limiter = AsyncLimiter.from_url(url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await limiter.aclose()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(
        RateLimitMiddleware, limiter=limiter, limits=[PER_CLIENT], exclude=["/health"]
    )
    searches = limit(limiter, SEARCH)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/search")
    async def search(
        q: str, decision: Annotated[Decision[int], Depends(searches)]
    ) -> dict[str, Any]:
        return {"q": q, "searches_left": decision.remaining}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("ATOMLIMIT_URL", "redis://localhost:6379/0")
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.url),
        host=args.host,
        port=args.port,
        log_level="warning",
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()

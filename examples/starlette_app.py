"""A Starlette application behind RateLimitMiddleware, optionally behind proxies.

``/api/...`` allows each client 3 requests per 10 seconds and 100 a day,
both charged in one atomic step; ``/health`` is not limited; ``/api/stream``
streams its body and gets the same header fields as any other response.

    pip install starlette uvicorn atomlimit
    python examples/starlette_app.py --url redis://localhost:6379/0 --port 8001
    python examples/starlette_app.py --trusted-hops 1    # behind one proxy you run

The Redis URL comes from ``--url``, else ``$ATOMLIMIT_URL``. With
``--trusted-hops N`` the client is the address N entries from the right
of X-Forwarded-For, which your N proxies wrote; without it the client is
the peer that opened the connection, and the header is ignored, since any
client can send one.

That needs uvicorn's own proxy handling off, and it is on by default:
uvicorn rewrites the client from X-Forwarded-For for every request from
127.0.0.1 or ::1 (``--forwarded-allow-ips``, default
``$FORWARDED_ALLOW_IPS`` or ``127.0.0.1,::1``), so a local caller could
name any subject it likes. This program runs uvicorn with
``proxy_headers=False``; serving ``create_app`` with the uvicorn command,
pass ``--no-proxy-headers`` for the same.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from atomlimit import AsyncLimiter, RateLimit
from atomlimit.asgi import RateLimitMiddleware, client_address

BURST = RateLimit.parse("3/10s", name="burst")
DAILY = RateLimit.parse("100/day", name="daily")


async def items(request: Request) -> JSONResponse:
    return JSONResponse({"items": ["a", "b", "c"]})


async def stream(request: Request) -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        for n in range(3):
            yield f"line {n}\n".encode()

    return StreamingResponse(lines(), media_type="text/plain")


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app(url: str, trusted_hops: int = 0) -> Starlette:
    """The application, with its limiter on ``url``, closed when the app shuts down."""
    limiter = AsyncLimiter.from_url(url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await limiter.aclose()

    app = Starlette(
        routes=[Route("/api/items", items), Route("/api/stream", stream), Route("/health", health)],
        lifespan=lifespan,
    )
    app.add_middleware(
        RateLimitMiddleware,
        limiter=limiter,
        limits=[BURST, DAILY],
        key=client_address(trusted_hops=trusted_hops),
        include=["/api"],
    )
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("ATOMLIMIT_URL", "redis://localhost:6379/0")
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--trusted-hops", type=int, default=0)
    args = parser.parse_args()
    app = create_app(args.url, args.trusted_hops)
    # atomlimit's key alone reads X-Forwarded-For (see the module docstring).
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", proxy_headers=False)


if __name__ == "__main__":
    main()

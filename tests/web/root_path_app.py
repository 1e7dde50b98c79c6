"""A Starlette application whose ``/api/items`` is limited, for the root-path tests.

``create_app`` is the factory uvicorn runs in its own process; it reads the
server URL and the rules from the environment. ``protected_app`` builds the
same application in the test's process, for the ASGI test client.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from atomlimit import AsyncLimiter, RateLimit
from atomlimit.asgi import RateLimitMiddleware

PER_MINUTE = RateLimit(name="per-minute", limit=3, window="minute")
PROTECTED = "items"
"""The body only the limited handler sends."""

# Each way of choosing the limited paths, so that each can be shown not to
# let a root path past it. "/v1" is also the root path the tests serve at:
# an exclude rule that matched the prefix in front of the route would let
# every request through.
RULES: dict[str, dict[str, Any]] = {
    "include": {"include": ["/api"]},
    "exclude": {"exclude": ["/health", "/v1"]},
}
URL_ENV = "ATOMLIMIT_ROOT_PATH_URL"
RULES_ENV = "ATOMLIMIT_ROOT_PATH_RULES"


async def items(request: Request) -> PlainTextResponse:
    return PlainTextResponse(PROTECTED)


async def free(request: Request) -> PlainTextResponse:
    return PlainTextResponse("free")


def protected_app(limiter: AsyncLimiter, rules: str) -> Starlette:
    app = Starlette(routes=[Route("/api/items", items), Route("/health", free), Route("/v1", free)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter, limits=PER_MINUTE, **RULES[rules])
    return app


def create_app() -> Starlette:
    return protected_app(AsyncLimiter.from_url(os.environ[URL_ENV]), os.environ[RULES_ENV])

"""A limit on one FastAPI route, as a dependency.

::

    from atomlimit.fastapi import limit

    @app.get("/search")
    async def search(decision: Annotated[Decision, Depends(limit(limiter, per_minute))]):
        ...

The dependency charges the request, raises ``HTTPException(429)`` with
``Retry-After`` and the ``RateLimit`` fields when the limit denies, and
otherwise adds the fields to the route's response and hands the
[`Decision`][atomlimit.Decision] to the handler. For every route at once, use
[`atomlimit.asgi.RateLimitMiddleware`][atomlimit.asgi.RateLimitMiddleware]. See docs/web.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request, Response

from atomlimit._codecs import codec_of
from atomlimit._errors import InvalidInput
from atomlimit._inputs import show
from atomlimit.asgi import client_address
from atomlimit.decision import Decision
from atomlimit.limiter import AsyncLimiter
from atomlimit.specs import RateLimit, Spec, SpendCap

__all__ = ["limit"]

RequestKey = Callable[[Request], "str | Awaitable[str | None] | None"]
Dependency = Callable[[Request, Response], Awaitable["Decision[Any] | None"]]


def limit(
    limiter: AsyncLimiter,
    spec: Spec[Any],
    *,
    key: RequestKey | None = None,
    cost: Any = 1,
) -> Dependency:
    """A dependency that charges each request of a route to ``spec``.

    Args:
        limiter: the [`AsyncLimiter`][atomlimit.AsyncLimiter] to charge through.
        spec: a [`RateLimit`][atomlimit.RateLimit] or [`SpendCap`][atomlimit.SpendCap].
        key: ``key(request)`` gives the subject, or None to let the request
            through unlimited (the dependency then gives None); it may be
            async. Default: the client address, as
            [`atomlimit.asgi.client_address`][atomlimit.asgi.client_address] reads it.
        cost: what a request costs: a value, or ``cost(request)``, which may
            be async (to read the body, say).

    The dependency's value is the allowing Decision. A handler that returns
    a ``Response`` itself should add ``decision.headers()`` to it, since
    FastAPI only merges headers into responses it builds.
    """
    if not isinstance(limiter, AsyncLimiter):
        raise InvalidInput(f"limiter must be an AsyncLimiter, got {show(limiter)}")
    if not isinstance(spec, RateLimit | SpendCap):
        raise InvalidInput(
            "limit takes a RateLimit or SpendCap (for calls in flight, put a Concurrency "
            f"limit in RateLimitMiddleware), got {show(spec)}"
        )
    if key is not None and not callable(key):
        raise InvalidInput(f"key must be a callable of the request, got {show(key)}")
    if not callable(cost):
        codec_of(spec).units(cost)  # a fixed cost is checked now, as a hit would
    address = client_address()

    async def charge(request: Request, response: Response) -> Decision[Any] | None:
        subject = address(request.scope) if key is None else await _value(key(request))
        if subject is None:
            return None
        amount = await _value(cost(request)) if callable(cost) else cost
        decision: Decision[Any] = await limiter.hit(spec, subject, amount)
        fields = decision.headers()
        if not decision.allowed:
            detail = f"{type(spec).__name__} {show(spec.name)} exceeded"
            raise HTTPException(status_code=429, detail=detail, headers=fields)
        response.headers.update(fields)
        return decision

    return charge


async def _value(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result

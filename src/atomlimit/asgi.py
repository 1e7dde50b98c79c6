"""Rate limits for any ASGI application, in one atomic check per request.

[`RateLimitMiddleware`][atomlimit.asgi.RateLimitMiddleware] is plain ASGI: it imports no framework,
so it wraps a Starlette, FastAPI or Litestar application, or a bare ASGI callable,
alike::

    app.add_middleware(RateLimitMiddleware, limiter=limiter, limits=[per_minute, per_day])

Every limit of a request is charged in one [`acquire`][atomlimit.AsyncLimiter.acquire]:
all of them, or none; a single rate limit, in one
[`hit`][atomlimit.AsyncLimiter.hit], which is the same decision made by the
smaller script. A denied request gets ``429`` with a small
``application/problem+json`` body, ``Retry-After`` and the ``RateLimit``
fields; an allowed one goes to the application, and its response carries
the fields too. Lifespan and WebSocket events, and every message after the
response starts, pass through untouched. See docs/web.md.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from atomlimit._errors import InvalidInput
from atomlimit._inputs import show
from atomlimit._web import MAX_HOPS as MAX_HOPS
from atomlimit._web import MAX_PATH as MAX_PATH
from atomlimit._web import MAX_PATHS as MAX_PATHS
from atomlimit._web import QUOTA_EXCEEDED as QUOTA_EXCEEDED
from atomlimit._web import UNKNOWN_CLIENT as UNKNOWN_CLIENT
from atomlimit._web import (
    Charge,
    Fields,
    Paths,
    Verdict,
    checked_hops,
    client_subject,
    lone_rate_limit,
    route_path,
)
from atomlimit.limiter import AsyncLimiter
from atomlimit.specs import Concurrency, RateLimit, Spec

__all__ = ["UNKNOWN_CLIENT", "RateLimitMiddleware", "client_address"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Key = Callable[[Scope], str | Awaitable[str | None] | None]
"""Gives a request's subject from its ASGI scope; None lets it through unlimited."""


def client_address(trusted_hops: int = 0) -> Callable[[Scope], str]:
    """A key giving the client's IP address: the default key of the middleware.

    With ``trusted_hops=0`` (the default) it is the address of the peer the
    server saw, ``scope["client"]``, and ``X-Forwarded-For`` is ignored: any
    client can write that header, and trusting it would let each request
    pick its own subject. Behind proxies that you run and that each append
    the address they received from to ``X-Forwarded-For``, pass how many
    there are: the key then takes the entry that many places from the
    right, the one your outermost proxy wrote. A request with fewer entries
    than that, or an entry that is not an IP address, falls back to the
    peer. A server that already rewrites ``scope["client"]`` from proxy
    headers (``uvicorn --proxy-headers``) needs ``trusted_hops=0``.

    An address is given in one form, so one client is one subject however
    it is written: an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) as
    its IPv4 address, an IPv6 address compressed and in lower case, without
    a zone (``fe80::1%eth0`` is ``fe80::1``).
    """
    hops = checked_hops(trusted_hops)

    def key(scope: Scope) -> str:
        forwarded = _forwarded_for(scope.get("headers", ())) if hops else None
        peer = scope.get("client")
        return client_subject(peer[0] if peer else None, forwarded, hops)

    return key


class RateLimitMiddleware:
    """Charge each HTTP request to ``limits`` before the application sees it.

    Args:
        app: the ASGI application to wrap.
        limiter: an [`AsyncLimiter`][atomlimit.AsyncLimiter]; the middleware never
            closes it.
        limits: a [`RateLimit`][atomlimit.RateLimit] or
            [`Concurrency`][atomlimit.Concurrency], or a list of up to 64 of them
            with distinct names, each charged 1 per request. Or a callable that returns
            them, such as a policy file's
            [`select`][atomlimit.policies.Policies.select], asked on each request:
            a reload is seen by the next request. A Concurrency
            limit holds its lease until the response is sent.
        key: ``key(scope)`` gives the subject, a str, or None to let the
            request through unlimited; it may be async. Default:
            [`client_address`][atomlimit.asgi.client_address], the peer's address.
        include: path prefixes to limit (default: every path). A prefix
            matches whole segments: ``"/api"`` matches ``/api`` and
            ``/api/x``, not ``/apix``. Prefixes are matched against the
            path the application routes, below its ``root_path``.
        exclude: path prefixes never limited; they win over ``include``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: AsyncLimiter,
        limits: RateLimit
        | Concurrency
        | Sequence[RateLimit | Concurrency]
        | Callable[[], Sequence[Spec[Any]]],
        key: Key | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
    ) -> None:
        if not callable(app):
            raise InvalidInput(f"app must be an ASGI application, got {show(app)}")
        if not isinstance(limiter, AsyncLimiter):
            raise InvalidInput(
                "limiter must be an AsyncLimiter (a sync Limiter would block the event loop), "
                f"got {show(limiter)}"
            )
        if key is not None and not callable(key):
            raise InvalidInput(f"key must be a callable of the ASGI scope, got {show(key)}")
        self.app = app
        self.limiter = limiter
        self._charge = Charge(limits)
        self.key: Key = client_address() if key is None else key
        self._paths = Paths(include, exclude)

    @property
    def limits(self) -> tuple[Spec[int], ...]:
        """The limits in force now: each request charges these."""
        return self._charge.limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (
            self._paths.everywhere or self._paths.applies(_route_path(scope))
        ):
            await self.app(scope, receive, send)
            return
        subject = self.key(scope)
        if inspect.isawaitable(subject):
            subject = await subject
        if subject is None:
            await self.app(scope, receive, send)
            return
        hits = self._charge.hits(subject)
        lone = lone_rate_limit(hits)
        if lone is not None:
            verdict = Verdict.of(await self.limiter.hit(lone.limit, lone.subject), _now_us())
        else:
            verdict = Verdict.of(await self.limiter.acquire(hits), _now_us())
        if not verdict.allowed:
            await _too_many_requests(send, verdict)
            return
        try:
            await self.app(scope, receive, _adding(send, _raw(verdict.fields)))
        finally:
            for lease in verdict.leases:
                await lease.release()


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def _route_path(scope: Scope) -> str:
    """The path the application routes, below its ``root_path`` (see `route_path`)."""
    return route_path(scope.get("path", ""), scope.get("root_path", ""))


def _raw(fields: Fields) -> list[tuple[bytes, bytes]]:
    """Fields as ASGI writes them: lower-case names, bytes."""
    return [(name.lower().encode("ascii"), value.encode("ascii")) for name, value in fields]


def _adding(send: Send, fields: list[tuple[bytes, bytes]]) -> Send:
    """``send``, with the fields added to the response's start; the body passes as sent."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            # A new message: the application may reuse its own.
            message = {**message, "headers": [*message.get("headers", ()), *fields]}
        await send(message)

    return sending


async def _too_many_requests(send: Send, verdict: Verdict) -> None:
    status, headers, body = verdict.denial()
    await send({"type": "http.response.start", "status": status, "headers": _raw(headers)})
    await send({"type": "http.response.body", "body": body})


def _forwarded_for(headers: Any) -> str | None:
    """Every X-Forwarded-For field of the request, as one list, or None."""
    values = [value for name, value in headers if name.lower() == b"x-forwarded-for"]
    if not values:
        return None
    # Repeated fields are one list, in order (RFC 9110, 5.3). Latin-1 maps
    # each byte to one character, so a non-ASCII entry is no address.
    return b",".join(values).decode("latin-1")

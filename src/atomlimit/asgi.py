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

import functools
import inspect
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from atomlimit._errors import InvalidInput
from atomlimit._header_fields import header_fields
from atomlimit._inputs import MAX_HITS, check_int, show
from atomlimit.decision import Decision
from atomlimit.holds import AsyncLease
from atomlimit.limiter import AsyncLimiter
from atomlimit.specs import Concurrency, Hit, RateLimit, Spec

__all__ = ["UNKNOWN_CLIENT", "RateLimitMiddleware", "client_address"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Key = Callable[[Scope], str | Awaitable[str | None] | None]
"""Gives a request's subject from its ASGI scope; None lets it through unlimited."""

UNKNOWN_CLIENT = "unknown-client"
"""The subject of a request whose server gave no client address (a Unix socket).

All such requests share it, so a missing address limits too much rather
than not at all, and shows up at once.
"""
MAX_HOPS = 16
"""Most trusted proxies in front of the application."""
MAX_PATHS = 64
"""Most path prefixes in ``include`` or ``exclude``."""
MAX_PATH = 1024
"""Longest path prefix."""
_MAX_ADDRESS = 64
"""Longest address read: an IPv6 address has at most 45 characters, and a zone
id names an interface (at most 15 on Linux)."""
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
"""The problem type that draft-ietf-httpapi-ratelimit-headers-11 defines for a 429."""


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
    hops = check_int(trusted_hops, "trusted_hops", 0, MAX_HOPS)

    def key(scope: Scope) -> str:
        if hops:
            forwarded = _forwarded_for(scope.get("headers", ()), hops)
            if forwarded is not None:
                return forwarded
        peer = scope.get("client")
        if not peer:
            return UNKNOWN_CLIENT
        # A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d; a
        # peer that is no IP address (a test client's name) stays as given.
        host = str(peer[0])
        return _canonical_address(host) or host

    return key


class RateLimitMiddleware:
    """Charge each HTTP request to ``limits`` before the application sees it.

    Args:
        app: the ASGI application to wrap.
        limiter: an [`AsyncLimiter`][atomlimit.AsyncLimiter]; the middleware never
            closes it.
        limits: a [`RateLimit`][atomlimit.RateLimit] or
            [`Concurrency`][atomlimit.Concurrency], or a list of up to 64 of them
            with distinct names, each charged 1 per request. A Concurrency
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
        limits: RateLimit | Concurrency | Sequence[RateLimit | Concurrency],
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
        self.limits = _checked_limits(limits)
        # One RateLimit needs no all-or-nothing across limits and holds no
        # lease: a hit decides it alike, without acquire's record.
        only = self.limits[0]
        self._only: RateLimit | None = (
            only if len(self.limits) == 1 and isinstance(only, RateLimit) else None
        )
        self.key: Key = client_address() if key is None else key
        self._include = None if include is None else _prefixes(include, "include")
        self._exclude = _prefixes(exclude, "exclude")
        self._everywhere = self._include is None and not self._exclude

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (self._everywhere or self._applies(_route_path(scope))):
            await self.app(scope, receive, send)
            return
        subject = self.key(scope)
        if inspect.isawaitable(subject):
            subject = await subject
        if subject is None:
            await self.app(scope, receive, send)
            return
        decisions: Sequence[Decision[int]]
        leases: Sequence[AsyncLease] = ()
        if self._only is not None:
            decision = await self.limiter.hit(self._only, subject)
            decisions, allowed = (decision,), decision.allowed
        else:
            result = await self.limiter.acquire([Hit(limit, subject) for limit in self.limits])
            decisions, allowed, leases = result.decisions, result.allowed, result.leases
        now_us = int(time.time() * 1_000_000)
        fields = [
            (name.lower().encode("ascii"), value.encode("ascii"))
            for name, value in header_fields(decisions, now_us).items()
        ]
        if not allowed:
            denied = [d.spec.name for d in decisions if not d.allowed and d.spec]
            await _too_many_requests(send, fields, denied)
            return
        try:
            await self.app(scope, receive, _adding(send, fields))
        finally:
            for lease in leases:
                await lease.release()

    def _applies(self, path: str) -> bool:
        if _matches(path, self._exclude):
            return False
        return self._include is None or _matches(path, self._include)


def _route_path(scope: Scope) -> str:
    """The path the application routes: ``path`` below the ``root_path`` it is served at.

    Newer servers and Starlette's ``Mount`` put ``root_path`` into ``path``
    (as the ASGI spec now says); older ones leave it out. Starlette's router
    tells them apart by whether ``path`` starts with ``root_path`` at a
    segment boundary, and so does this: the rules must match the route the
    application takes, or a root path would carry every request past
    ``include``, or into an ``exclude``.
    """
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        if len(path) == len(root):
            return "/"
        if path[len(root)] == "/":
            return path[len(root) :]
    return path


def _adding(send: Send, fields: list[tuple[bytes, bytes]]) -> Send:
    """``send``, with the fields added to the response's start; the body passes as sent."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            # A new message: the application may reuse its own.
            message = {**message, "headers": [*message.get("headers", ()), *fields]}
        await send(message)

    return sending


async def _too_many_requests(
    send: Send, fields: list[tuple[bytes, bytes]], denied: list[str]
) -> None:
    body = json.dumps(
        {
            "type": QUOTA_EXCEEDED,
            "title": "Too Many Requests",
            "status": 429,
            "violated-policies": denied,
        }
    ).encode("ascii")
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode("ascii")),
        *fields,
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _forwarded_for(headers: Any, hops: int) -> str | None:
    """The address ``hops`` entries from the right of X-Forwarded-For, normalised, or None."""
    values = [value for name, value in headers if name.lower() == b"x-forwarded-for"]
    if not values:
        return None
    # Repeated fields are one list, in order (RFC 9110, 5.3); only the
    # right end is read, so a long header costs no more than a short one.
    entries = b",".join(values).rsplit(b",", hops)
    if len(entries) < hops:
        return None
    entry = entries[-hops].strip()
    if len(entry) > _MAX_ADDRESS:
        return None
    try:
        return _canonical_address(entry.decode("ascii"))
    except UnicodeDecodeError:
        return None


@functools.lru_cache(maxsize=4096)
def _canonical_address(text: str) -> str | None:
    """``text`` as one IP address in its one written form, or None if it is not one.

    The forms a client can take are many (``::ffff:198.51.100.1``,
    ``::FFFF:C633:6401``, ``fe80::1%eth0``); each would be a subject of its
    own, with a limit of its own. Kept, since a server sees few peers and
    parsing costs more than the lookup.
    """
    if len(text) > _MAX_ADDRESS:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        # The zone names an interface of the host that saw the address,
        # not another client; rebuilding from the integer drops it.
        return str(ipaddress.IPv6Address(int(address)))
    return str(address)


def _checked_limits(limits: object) -> tuple[Spec[int], ...]:
    chosen = limits if isinstance(limits, list | tuple) else [limits]
    if not 0 < len(chosen) <= MAX_HITS:
        raise InvalidInput(f"limits takes 1 to {MAX_HITS} limits, got {len(chosen)}")
    names = set()
    for limit in chosen:
        if not isinstance(limit, RateLimit | Concurrency):
            raise InvalidInput(
                "limits takes RateLimit and Concurrency limits, charged 1 per request (a "
                f"SpendCap's cost is known in the handler: reserve there), got {show(limit)}"
            )
        if limit.name in names:
            # The header fields name each limit; two alike could not be told apart.
            raise InvalidInput(f"limits has two limits named {show(limit.name)}")
        names.add(limit.name)
    return tuple(chosen)


def _prefixes(value: object, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_PATHS:
        raise InvalidInput(f"{what} takes a list of at most {MAX_PATHS} path prefixes")
    prefixes = []
    for prefix in value:
        if type(prefix) is not str or not prefix.startswith("/") or len(prefix) > MAX_PATH:
            raise InvalidInput(
                f"{what} takes path prefixes starting with '/', at most {MAX_PATH} characters, "
                f"got {show(prefix)}"
            )
        whole = prefix.rstrip("/")
        prefixes.append((whole or "/", whole + "/"))
    return tuple(prefixes)


def _matches(path: str, prefixes: tuple[tuple[str, str], ...]) -> bool:
    return any(path == whole or path.startswith(below) for whole, below in prefixes)

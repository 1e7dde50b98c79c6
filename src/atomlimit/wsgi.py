"""Rate limits for any WSGI application, in one atomic check per request.

[`RateLimitMiddleware`][atomlimit.wsgi.RateLimitMiddleware] is plain WSGI (PEP 3333): it
imports no framework, so it wraps a Flask, Django, Pyramid or Bottle
application, or a bare WSGI callable, alike::

    app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter=limiter, limits=[per_minute])

It is the ASGI middleware's twin, through the sync [`Limiter`][atomlimit.Limiter]:
every limit of a request is charged in one [`acquire`][atomlimit.Limiter.acquire]
(a single rate limit in one [`hit`][atomlimit.Limiter.hit]); a denied request
gets ``429`` with a small ``application/problem+json`` body, ``Retry-After``
and the ``RateLimit`` fields; an allowed one goes to the application, and
its response carries the fields too. A ``Concurrency`` lease is held until
the server closes the response, so a streamed body counts in flight until
its last chunk. See docs/web.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

from atomlimit._errors import InvalidInput
from atomlimit._inputs import show
from atomlimit._web import UNKNOWN_CLIENT as UNKNOWN_CLIENT
from atomlimit._web import (
    Charge,
    Fields,
    Paths,
    Verdict,
    checked_hops,
    client_subject,
    lone_rate_limit,
)
from atomlimit.holds import Lease
from atomlimit.limiter import Limiter
from atomlimit.specs import Concurrency, Hit, RateLimit, Spec

__all__ = ["UNKNOWN_CLIENT", "RateLimitMiddleware", "client_address"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
"""PEP 3333's ``start_response(status, headers, exc_info=None)``."""
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
Key = Callable[[Environ], str | None]
"""Gives a request's subject from its WSGI environ; None lets it through unlimited."""


def client_address(trusted_hops: int = 0) -> Callable[[Environ], str]:
    """A key giving the client's IP address: the default key of the middleware.

    With ``trusted_hops=0`` (the default) it is ``REMOTE_ADDR``, the peer
    the server saw, and ``X-Forwarded-For`` is ignored: any client can
    write that header. Behind proxies that you run and that each append
    the address they received from, pass how many there are: the key takes
    the entry that many places from the right. A request with fewer
    entries, or an entry that is not an IP address, falls back to the peer.
    Addresses are written in one form, as
    [`atomlimit.asgi.client_address`][atomlimit.asgi.client_address] writes them.
    """
    hops = checked_hops(trusted_hops)

    def key(environ: Environ) -> str:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR") if hops else None
        return client_subject(environ.get("REMOTE_ADDR"), forwarded, hops)

    return key


class RateLimitMiddleware:
    """Charge each request to ``limits`` before the WSGI application sees it.

    Args:
        app: the WSGI application to wrap.
        limiter: a sync [`Limiter`][atomlimit.Limiter]; the middleware never
            closes it.
        limits: a [`RateLimit`][atomlimit.RateLimit] or
            [`Concurrency`][atomlimit.Concurrency], or a list of up to 64 of them
            with distinct names, each charged 1 per request. Or a callable that returns
            them, such as a policy file's
            [`select`][atomlimit.policies.Policies.select], asked on each request:
            a reload is seen by the next request. A Concurrency
            limit holds its lease until the server closes the response.
        key: ``key(environ)`` gives the subject, a str, or None to let the
            request through unlimited. Default:
            [`client_address`][atomlimit.wsgi.client_address], ``REMOTE_ADDR``.
        include: path prefixes to limit (default: every path), matched by
            whole segments against ``PATH_INFO``, the path below the
            application's ``SCRIPT_NAME``.
        exclude: path prefixes never limited; they win over ``include``.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        limiter: Limiter,
        limits: RateLimit
        | Concurrency
        | Sequence[RateLimit | Concurrency]
        | Callable[[], Sequence[Spec[Any]]],
        key: Key | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
    ) -> None:
        if not callable(app):
            raise InvalidInput(f"app must be a WSGI application, got {show(app)}")
        if not isinstance(limiter, Limiter):
            raise InvalidInput(
                f"limiter must be a Limiter (WSGI is synchronous), got {show(limiter)}"
            )
        if key is not None and not callable(key):
            raise InvalidInput(f"key must be a callable of the WSGI environ, got {show(key)}")
        self.app = app
        self.limiter = limiter
        self._charge = Charge(limits)
        self.key: Key = client_address() if key is None else key
        self._paths = Paths(include, exclude)

    @property
    def limits(self) -> tuple[Spec[int], ...]:
        """The limits in force now: each request charges these."""
        return self._charge.limits

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not (self._paths.everywhere or self._paths.applies(path_info(environ))):
            return self.app(environ, start_response)
        subject = self.key(environ)
        if subject is None:
            return self.app(environ, start_response)
        verdict = charge(self.limiter, self._charge.hits(subject))
        if not verdict.allowed:
            return too_many_requests(verdict, start_response)
        return respond(self.app, environ, _adding(start_response, verdict.fields), verdict.leases)


def path_info(environ: Environ) -> str:
    """The path the application routes: ``PATH_INFO``, below ``SCRIPT_NAME``, as text.

    PEP 3333 carries the path's bytes as latin-1 characters; a path that is
    not ASCII is read back as the UTF-8 it was sent in, as a framework
    routes it, so a non-ASCII prefix matches.
    """
    path: str = environ.get("PATH_INFO") or "/"
    if not path.isascii():
        path = path.encode("latin-1").decode("utf-8", "replace")
    return path


def charge(limiter: Limiter, hits: list[Hit[Any]]) -> Verdict:
    """One request charged to ``hits``: one hit for a lone rate limit, else one acquire."""
    lone = lone_rate_limit(hits)
    if lone is not None:
        decision = limiter.hit(lone.limit, lone.subject)
        return Verdict.of(decision, int(time.time() * 1_000_000))
    return Verdict.of(limiter.acquire(hits), int(time.time() * 1_000_000))


def too_many_requests(verdict: Verdict, start_response: StartResponse) -> list[bytes]:
    """The 429 of a denied request, written through ``start_response``."""
    _, headers, body = verdict.denial()
    start_response("429 Too Many Requests", headers)
    return [body]


def respond(
    app: WSGIApp, environ: Environ, start_response: StartResponse, leases: Sequence[Lease]
) -> Iterable[bytes]:
    """``app``'s response, with ``leases`` held until the server closes it."""
    if not leases:
        return app(environ, start_response)
    try:
        body = app(environ, start_response)
    except BaseException:
        _release(leases)
        raise
    return _Releasing(body, leases)


def _adding(start_response: StartResponse, fields: Fields) -> StartResponse:
    """``start_response``, with the fields added to the application's headers."""

    def starting(
        status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        return start_response(status, [*headers, *fields], exc_info)

    return starting


class _Releasing:
    """A response body that releases its leases when the server closes it.

    PEP 3333 has the server call ``close()`` once the body is sent, or
    when the client goes away, so a lease covers the whole response,
    streamed or not; the body is passed through chunk by chunk, never
    buffered. A server that never closes a body leaves the lease to
    expire with its spec's lease length.
    """

    __slots__ = ("_body", "_leases")

    def __init__(self, body: Iterable[bytes], leases: Sequence[Lease]) -> None:
        self._body = body
        self._leases: Sequence[Lease] = leases

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        leases, self._leases = self._leases, ()
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            _release(leases)


def _release(leases: Sequence[Lease]) -> None:
    for lease in leases:
        lease.release()

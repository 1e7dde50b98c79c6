"""Views of every kind the limits meet: sync and async, decorated, streaming, and a naive
read-then-write limit that races."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import redis
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from atomlimit import Concurrency, RateLimit
from atomlimit.django import limit

DECORATED_LIMIT = int(os.environ.get("ATOMLIMIT_DECORATED_LIMIT", "3"))
_naive_client: redis.Redis | None = None
View = Callable[..., Any]


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello")


async def ahello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello")


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def seen(request: HttpRequest) -> JsonResponse:
    """What the middleware decided, as the view sees it on the request."""
    decisions = request.atomlimit.decisions
    return JsonResponse({"remaining": [d.remaining for d in decisions]})


@limit(f"{DECORATED_LIMIT}/minute", group="decorated")
def decorated(request: HttpRequest) -> HttpResponse:
    return HttpResponse("decorated")


@limit(f"{DECORATED_LIMIT}/minute", group="decorated-async")
async def adecorated(request: HttpRequest) -> HttpResponse:
    return HttpResponse("decorated")


WORK = 0.005
"""Seconds the flooded views work, as a real view does between the naive
pattern's read and its write. With next to no work, the handlers in flight
at the limit now and then all read after each other's write, and the naive
view admitted exactly the limit in one run of many; the race it shows needs
the window a real request has."""


# Exact over any minute-long span, so a flood that crosses a minute's end
# still admits the limit and no more.
@limit(
    RateLimit(
        name="flood", limit=DECORATED_LIMIT, window=timedelta(minutes=1), algorithm="sliding_log"
    )
)
def flood(request: HttpRequest) -> HttpResponse:
    time.sleep(WORK)
    return HttpResponse("flood")


@limit(Concurrency(name="streams", limit=1))
def stream(request: HttpRequest) -> StreamingHttpResponse:
    def parts() -> Iterator[bytes]:
        yield from (b"a", b"b")

    return StreamingHttpResponse(parts())


@limit(Concurrency(name="astreams", limit=1))
async def astream(request: HttpRequest) -> StreamingHttpResponse:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"a", b"b"):
            yield part

    return StreamingHttpResponse(parts())


def naive_limit(limit: int) -> Callable[[View], View]:
    """The pattern atomlimit replaces: read the count, compare, serve, then count."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def checked(request: HttpRequest) -> HttpResponse:
            global _naive_client
            if _naive_client is None:
                _naive_client = redis.Redis.from_url(os.environ["ATOMLIMIT_URL"])
            key = "naive:" + request.META["REMOTE_ADDR"]
            if int(_naive_client.get(key) or 0) >= limit:
                return HttpResponse(status=429)
            response = view(request)
            _naive_client.incr(key)
            return response

        return checked

    return decorate


@naive_limit(DECORATED_LIMIT)
def naive(request: HttpRequest) -> HttpResponse:
    time.sleep(WORK)
    return HttpResponse("naive")

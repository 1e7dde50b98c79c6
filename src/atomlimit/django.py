"""Rate limits for Django: a middleware for every request, a decorator for one view.

Both read ``settings.ATOMLIMIT`` and work for sync and async views alike::

    ATOMLIMIT = {"URL": "redis://localhost:6379/0", "LIMITS": ["100/minute"]}
    MIDDLEWARE = [..., "atomlimit.django.RateLimitMiddleware"]

    @limit("10/minute")
    def search(request): ...

A request is charged in one atomic step, as
[`atomlimit.asgi.RateLimitMiddleware`][atomlimit.asgi.RateLimitMiddleware] charges it: one
[`hit`][atomlimit.Limiter.hit] for a single rate limit, else one
[`acquire`][atomlimit.Limiter.acquire] of every limit. What was decided is on
``request.atomlimit`` (a [`RequestLimits`][atomlimit.django.RequestLimits]); a
denial is a ``429`` with ``Retry-After``, the ``RateLimit`` fields and an
``application/problem+json`` body. Code that runs in the event loop uses an
[`AsyncLimiter`][atomlimit.AsyncLimiter], code in a thread the sync
[`Limiter`][atomlimit.Limiter]. See docs/django.md.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.module_loading import import_string

from atomlimit import _web
from atomlimit._errors import InvalidInput
from atomlimit._header_fields import header_fields
from atomlimit._inputs import show
from atomlimit.decision import Decision
from atomlimit.holds import AsyncLease, Lease
from atomlimit.limiter import AsyncLimiter, Limiter
from atomlimit.specs import Concurrency, FailurePolicy, RateLimit, Spec

__all__ = ["RateLimitMiddleware", "RequestLimits", "aclose", "client_address", "limit"]

RequestKey: TypeAlias = Callable[[HttpRequest], "str | Awaitable[str | None] | None"]
"""Gives a request's subject; None lets it through unlimited. May be async."""
Limits: TypeAlias = "str | RateLimit | Concurrency"
View: TypeAlias = Callable[..., Any]

SETTING = "ATOMLIMIT"
_OPTIONS = frozenset(
    {"URL", "LIMITS", "KEY", "TRUSTED_HOPS", "INCLUDE", "EXCLUDE", "ON_BACKEND_ERROR", "PREFIX"}
)
_POLICIES = ("raise", "deny", "allow")


def client_address(trusted_hops: int = 0) -> Callable[[HttpRequest], str]:
    """A key giving the client's IP address: the default key.

    The address is ``REMOTE_ADDR``, the peer the server saw; with
    ``trusted_hops=N`` it is the entry ``N`` places from the right of
    ``X-Forwarded-For``, which your ``N`` proxies wrote. The rules, and the
    one form each address is written in, are those of
    [`atomlimit.asgi.client_address`][atomlimit.asgi.client_address].
    """
    hops = _web.checked_hops(trusted_hops)

    def key(request: HttpRequest) -> str:
        meta = request.META
        # Repeated X-Forwarded-For fields reach META joined with commas.
        forwarded = meta.get("HTTP_X_FORWARDED_FOR") if hops else None
        return _web.client_subject(meta.get("REMOTE_ADDR"), forwarded, hops)

    return key


@dataclass
class RequestLimits:
    """What atomlimit decided for one request: ``request.atomlimit``.

    The middleware's decisions come first, then each decorator's, in the
    order they ran. A view only sees a denial with ``limit(block=False)``.
    """

    decisions: list[Decision[int]] = field(default_factory=list)
    """Every decision made for the request, in order."""

    @property
    def allowed(self) -> bool:
        """Whether every limit allowed the request."""
        return all(decision.allowed for decision in self.decisions)

    @property
    def limited(self) -> bool:
        """Whether a limit denied the request (django-ratelimit's ``request.limited``)."""
        return not self.allowed

    def headers(self) -> dict[str, str]:
        """The ``RateLimit-Policy`` and ``RateLimit`` fields (and ``Retry-After``
        on a denial) for every decision."""
        if not self.decisions:
            return {}
        return header_fields(self.decisions, _now_us())


@dataclass(frozen=True)
class _Config:
    """``settings.ATOMLIMIT``, checked once."""

    url: str
    limits: tuple[Spec[int], ...]
    key: RequestKey
    paths: _web.Paths
    policy: FailurePolicy
    prefix: str


def _read_settings() -> _Config:
    # Imported here: Django's lazy settings object raises on any attribute
    # read before settings are configured, and tools that walk a module's
    # names (doctest finders) would trip on it.
    from django.conf import settings

    raw = getattr(settings, SETTING, None)
    if not isinstance(raw, dict):
        raise InvalidInput(f"settings.{SETTING} must be a dict, got {show(raw)}")
    unknown = sorted(set(raw) - _OPTIONS)
    if unknown:
        raise InvalidInput(
            f"settings.{SETTING} takes {', '.join(sorted(_OPTIONS))}; got {show(unknown[0])}"
        )
    url = raw.get("URL")
    if type(url) is not str or not url:
        raise InvalidInput(f"settings.{SETTING}['URL'] must be a Redis URL, got {show(url)}")
    policy = raw.get("ON_BACKEND_ERROR", "raise")
    if policy not in _POLICIES:
        raise InvalidInput(
            f"settings.{SETTING}['ON_BACKEND_ERROR'] must be one of {_POLICIES}, got {show(policy)}"
        )
    key = raw.get("KEY")
    if isinstance(key, str):
        key = import_string(key)
    if key is not None and not callable(key):
        raise InvalidInput(f"settings.{SETTING}['KEY'] must be a callable or its dotted path")
    limits = raw.get("LIMITS", ())
    return _Config(
        url=url,
        limits=tuple(_spec(item, policy, None) for item in _listed(limits, "LIMITS")),
        key=client_address(raw.get("TRUSTED_HOPS", 0)) if key is None else key,
        paths=_web.Paths(raw.get("INCLUDE"), raw.get("EXCLUDE", ())),
        policy=policy,
        prefix=raw.get("PREFIX", "atomlimit"),
    )


def _listed(value: object, what: str) -> Sequence[object]:
    if isinstance(value, list | tuple):
        return value
    if isinstance(value, str | RateLimit | Concurrency):
        return [value]
    raise InvalidInput(f"{what} takes a rate string, a RateLimit or a Concurrency, or a list")


def _spec(item: object, policy: FailurePolicy, group: str | None) -> Spec[int]:
    """A limit from a rate string (named by its ``group``, if any) or as given."""
    if isinstance(item, str):
        parsed = RateLimit.parse(item)
        name = parsed.name if group is None else f"{group}:{parsed.name}"
        return RateLimit(**{**dict(parsed), "name": name, "on_backend_error": policy})
    if isinstance(item, RateLimit | Concurrency):
        return item
    raise InvalidInput(
        "limits take rate strings, RateLimit and Concurrency limits, charged 1 per request, "
        f"got {show(item)}"
    )


class _Limiters:
    """The process's limiters, made when first needed (after a server forks its workers).

    One [`Limiter`][atomlimit.Limiter] serves every thread. An
    [`AsyncLimiter`][atomlimit.AsyncLimiter] is bound to the event loop its
    connections were opened on. Under ASGI that is the server's one loop.
    Under WSGI, asgiref runs each async view in a loop of its own, closed
    after the request: an AsyncLimiter there would open connections per
    request, so those requests use the sync Limiter in a worker thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._config: _Config | None = None
        self._sync: Limiter | None = None
        self._async: AsyncLimiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def config(self) -> _Config:
        config = self._config
        if config is None:
            with self._lock:
                if self._config is None:
                    self._config = _read_settings()
                config = self._config
        return config

    def sync(self) -> Limiter:
        limiter = self._sync
        if limiter is None:
            with self._lock:
                if self._sync is None:
                    config = self.config
                    self._sync = Limiter.from_url(config.url, prefix=config.prefix)
                limiter = self._sync
        return limiter

    def in_loop(self, request: HttpRequest) -> AsyncLimiter | None:
        """The AsyncLimiter of the running loop, or None where the sync Limiter must serve."""
        if not isinstance(request, ASGIRequest):
            return None  # a loop asgiref made for this request alone
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return self._async
        if self._loop is not None and not self._loop.is_closed():
            return None  # another live loop owns it
        # The old loop is closed, and its connections with it: nothing is
        # left to close them on. A server has one loop; a test suite has one
        # per test.
        config = self.config
        # Unbatched: a batching lane runs a task of its own in the loop, and
        # Django sends no shutdown event to stop it before the loop closes.
        self._async = AsyncLimiter.from_url(config.url, prefix=config.prefix, batch=False)
        self._loop = loop
        return self._async

    async def aclose(self) -> None:
        with self._lock:
            sync, limiter, loop = self._sync, self._async, self._loop
            self._sync, self._async, self._loop = None, None, None
        if sync is not None:
            sync.close()
        if limiter is not None and loop is asyncio.get_running_loop():
            await limiter.aclose()

    def forget(self) -> None:
        """Drop the settings and the limiters, for settings that change (in tests)."""
        with self._lock:
            if self._sync is not None:
                self._sync.close()
            self._config, self._sync, self._async, self._loop = None, None, None, None


_LIMITERS = _Limiters()


def _settings_changed(*, setting: str, **_: Any) -> None:
    if setting == SETTING:
        _LIMITERS.forget()


setting_changed.connect(_settings_changed)


class _Rule:
    """Which limits a request is charged, and who it is charged to."""

    __slots__ = ("block", "charge", "key", "methods")

    def __init__(
        self,
        limits: Sequence[Spec[int]],
        key: RequestKey,
        methods: frozenset[str] | None = None,
        block: bool = True,
    ) -> None:
        self.charge = _web.Charge(limits)
        self.key = key
        self.methods = methods
        self.block = block

    def skips(self, request: HttpRequest) -> bool:
        return self.methods is not None and request.method not in self.methods

    def decide(self, limiter: Limiter, subject: str) -> _web.Verdict:
        hits = self.charge.hits(subject)
        lone = _web.lone_rate_limit(hits)
        if lone is not None:
            return _web.Verdict.of(limiter.hit(lone.limit, subject), _now_us())
        return _web.Verdict.of(limiter.acquire(hits), _now_us())

    async def adecide(self, limiter: AsyncLimiter, subject: str) -> _web.Verdict:
        hits = self.charge.hits(subject)
        lone = _web.lone_rate_limit(hits)
        if lone is not None:
            return _web.Verdict.of(await limiter.hit(lone.limit, subject), _now_us())
        return _web.Verdict.of(await limiter.acquire(hits), _now_us())


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def _record(request: HttpRequest, verdict: _web.Verdict) -> RequestLimits:
    found = getattr(request, "atomlimit", None)
    if not isinstance(found, RequestLimits):
        found = RequestLimits()
        request.atomlimit = found
    found.decisions.extend(verdict.decisions)
    return found


def _subject(rule: _Rule, request: HttpRequest) -> str | None:
    subject = rule.key(request)
    if inspect.isawaitable(subject):
        subject = async_to_sync(_awaited)(subject)
    return subject


async def _asubject(rule: _Rule, request: HttpRequest) -> str | None:
    subject = rule.key(request)
    return await subject if inspect.isawaitable(subject) else subject


async def _awaited(value: Awaitable[str | None]) -> str | None:
    return await value


def _run(rule: _Rule, request: HttpRequest, respond: Callable[[HttpRequest], Any]) -> Any:
    """The sync shell: charge, then answer 429 or call ``respond``."""
    if rule.skips(request):
        return respond(request)
    subject = _subject(rule, request)
    if subject is None:
        return respond(request)
    verdict = rule.decide(_LIMITERS.sync(), subject)
    limits = _record(request, verdict)
    if not verdict.allowed and rule.block:
        return _too_many_requests(verdict)
    try:
        response = respond(request)
    except BaseException:
        for lease in verdict.leases:
            lease.release()
        raise
    _add_fields(response, limits, verdict)
    return _after(response, verdict.leases)


async def _arun(
    rule: _Rule, request: HttpRequest, respond: Callable[[HttpRequest], Awaitable[Any]]
) -> Any:
    """The async shell: the AsyncLimiter in the server's loop, else the Limiter in a thread."""
    if rule.skips(request):
        return await respond(request)
    subject = await _asubject(rule, request)
    if subject is None:
        return await respond(request)
    limiter = _LIMITERS.in_loop(request)
    if limiter is None:
        decide = sync_to_async(rule.decide, thread_sensitive=False)
        verdict = await decide(_LIMITERS.sync(), subject)
    else:
        verdict = await rule.adecide(limiter, subject)
    limits = _record(request, verdict)
    if not verdict.allowed and rule.block:
        return _too_many_requests(verdict)
    try:
        response = await respond(request)
    except BaseException:
        for lease in verdict.leases:
            await _arelease(lease)
        raise
    _add_fields(response, limits, verdict)
    return await _aafter(response, verdict.leases)


def _too_many_requests(verdict: _web.Verdict) -> HttpResponse:
    status, fields, body = verdict.denial()
    response = HttpResponse(body, status=status)
    for name, value in fields:
        response.headers[name] = value
    return response


def _add_fields(response: object, limits: RequestLimits, verdict: _web.Verdict) -> None:
    if not isinstance(response, HttpResponseBase):
        return
    # Every decision of the request, so that an outer layer (the middleware
    # around a decorated view) writes its fields with the inner one's.
    alone = len(limits.decisions) == len(verdict.decisions)
    fields = verdict.fields if alone else limits.headers().items()
    for name, value in fields:
        response.headers[name] = value


def _after(response: Any, leases: Sequence[Any]) -> Any:
    """Release the leases when the response is done: now, or when a stream ends."""
    if not leases:
        return response
    if isinstance(response, HttpResponseBase) and response.streaming:
        if response.is_async:
            response.streaming_content = _astream(response.streaming_content, leases)
        else:
            response.streaming_content = _stream(response.streaming_content, leases)
        return response
    for lease in leases:
        _release(lease)
    return response


async def _aafter(response: Any, leases: Sequence[Any]) -> Any:
    if leases and not (isinstance(response, HttpResponseBase) and response.streaming):
        for lease in leases:
            await _arelease(lease)
        return response
    return _after(response, leases)


def _stream(content: Iterator[bytes], leases: Sequence[Any]) -> Iterator[bytes]:
    # Django closes the generator when the response closes, even part-way.
    try:
        yield from content
    finally:
        for lease in leases:
            _release(lease)


async def _astream(content: AsyncIterator[bytes], leases: Sequence[Any]) -> AsyncIterator[bytes]:
    try:
        async for part in content:
            yield part
    finally:
        for lease in leases:
            await _arelease(lease)


def _release(lease: Lease | AsyncLease) -> None:
    if isinstance(lease, AsyncLease):
        async_to_sync(lease.release)()
    else:
        lease.release()


async def _arelease(lease: Lease | AsyncLease) -> None:
    if isinstance(lease, AsyncLease):
        await lease.release()
    else:
        await sync_to_async(lease.release, thread_sensitive=False)()


async def aclose() -> None:
    """Close the limiters that the middleware and the decorators made in this process.

    A server needs no call: the connections close when the worker exits.
    A script or a test whose event loop ends before the process does calls
    it in that loop, so that the [`AsyncLimiter`][atomlimit.AsyncLimiter]
    made there stops before the loop closes. The next request makes new ones.
    """
    await _LIMITERS.aclose()


class RateLimitMiddleware:
    """Charge each request to ``settings.ATOMLIMIT["LIMITS"]`` before its view runs.

    Add ``"atomlimit.django.RateLimitMiddleware"`` to ``MIDDLEWARE``, early,
    before middleware that does work a denied request should not cost.
    It runs in whichever mode Django's handler gives it, so under ASGI it
    charges through an [`AsyncLimiter`][atomlimit.AsyncLimiter] in the
    server's loop, and under WSGI through the [`Limiter`][atomlimit.Limiter].
    ``INCLUDE`` and ``EXCLUDE`` path prefixes match the path below the
    application's script name (``request.path_info``).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        config = _LIMITERS.config
        if not config.limits:
            raise InvalidInput(
                f"RateLimitMiddleware needs settings.{SETTING}['LIMITS']: "
                "a rate string, a RateLimit or a Concurrency, or a list of them"
            )
        self.get_response = get_response
        self._rule = _Rule(config.limits, config.key)
        self._paths = config.paths
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        if not self._paths.applies(request.path_info):
            return self.get_response(request)
        return _run(self._rule, request, self.get_response)

    async def _acall(self, request: HttpRequest) -> Any:
        if not self._paths.applies(request.path_info):
            return await self.get_response(request)
        return await _arun(self._rule, request, self.get_response)


def limit(
    *limits: Limits,
    key: RequestKey | str | None = None,
    group: str | None = None,
    methods: Sequence[str] | None = None,
    block: bool = True,
) -> Callable[[View], View]:
    """A decorator that charges each request of one view to ``limits``.

    Args:
        limits: rate strings (``"10/minute"``), [`RateLimit`][atomlimit.RateLimit] or
            [`Concurrency`][atomlimit.Concurrency] limits, 1 to 64, charged 1 per
            request in one step. A rate string's limit is named
            ``"<group>:<rate>"``, so each view counts its own.
        key: ``key(request)`` gives the subject, or None to let the request
            through unlimited; it may be async, or a dotted path. Default:
            ``settings.ATOMLIMIT["KEY"]``, else the client address.
        group: names the rate strings' limits (default: the view's module and
            name); views with one group share their counts.
        methods: HTTP methods to limit (default: all).
        block: with False, a denied request still reaches the view, which
            reads ``request.atomlimit.limited``.

    Async views are charged through an [`AsyncLimiter`][atomlimit.AsyncLimiter]
    under ASGI, sync views through the [`Limiter`][atomlimit.Limiter]. For a
    class-based view, ``method_decorator(limit(...), name="dispatch")``.
    """
    if not limits:
        raise InvalidInput("limit takes at least one limit")
    if isinstance(key, str):
        key = import_string(key)
    if key is not None and not callable(key):
        raise InvalidInput(f"key must be a callable of the request, got {show(key)}")
    if group is not None and (type(group) is not str or not 0 < len(group) <= 200):
        raise InvalidInput(f"group must be a str of 1 to 200 characters, got {show(group)}")
    if type(block) is not bool:
        raise InvalidInput(f"block must be a bool, got {show(block)}")
    chosen = _methods(methods)

    def decorate(view: View) -> View:
        named = group or f"{view.__module__}.{view.__qualname__}"
        # Rate strings are parsed now, so a bad one fails at import; the
        # failure policy and the default key come from settings, read lazily.
        for item in limits:
            _spec(item, "raise", named)

        @functools.cache
        def rule() -> _Rule:
            config = _LIMITERS.config
            specs = [_spec(item, config.policy, named) for item in limits]
            return _Rule(specs, key or config.key, chosen, block)

        _settings_rules.append(rule)
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def charged_async(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                return await _arun(rule(), request, lambda r: view(r, *args, **kwargs))

            return charged_async

        @functools.wraps(view)
        def charged(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            return _run(rule(), request, lambda r: view(r, *args, **kwargs))

        return charged

    return decorate


_settings_rules: list[Any] = []
"""Each decorated view's cached rule, cleared when the settings change."""


def _forget_rules(*, setting: str, **_: Any) -> None:
    if setting == SETTING:
        for rule in _settings_rules:
            rule.cache_clear()


setting_changed.connect(_forget_rules)


def _methods(methods: object) -> frozenset[str] | None:
    if methods is None:
        return None
    if isinstance(methods, str) or not isinstance(methods, list | tuple | set | frozenset):
        raise InvalidInput(f"methods takes a list of HTTP methods, got {show(methods)}")
    if not 0 < len(methods) <= 16 or not all(
        type(m) is str and m.isalpha() and len(m) <= 16 for m in methods
    ):
        raise InvalidInput(f"methods takes 1 to 16 HTTP methods, got {show(methods)}")
    return frozenset(m.upper() for m in methods)

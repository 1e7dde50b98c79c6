"""Rate limits for a Flask application, configured the Flask way.

::

    from atomlimit.flask import RateLimits

    rl = RateLimits(app)  # or rl = RateLimits(); rl.init_app(app)

    @app.get("/search")
    @rl.limit("10/minute")
    def search(): ...

    @app.get("/health")
    @rl.exempt
    def health(): ...

Every request is charged, in one atomic [`hit`][atomlimit.Limiter.hit] or
[`acquire`][atomlimit.Limiter.acquire], to ``ATOMLIMIT_DEFAULT_LIMITS`` and to
the limits of its view. A denial raises
[`RateLimited`][atomlimit.flask.RateLimited], a ``429`` with the same
``application/problem+json`` body, ``Retry-After`` and ``RateLimit`` fields
as the middlewares give; ``@app.errorhandler(429)`` may answer it another
way. An allowed request gets the fields on its response, and its
Decisions in ``flask.g.atomlimit``. See docs/flask.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import TooManyRequests

from atomlimit._errors import InvalidInput
from atomlimit._inputs import check_flag, show
from atomlimit._web import Verdict, checked_hops, checked_limits
from atomlimit.decision import Decision
from atomlimit.holds import Lease
from atomlimit.limiter import Limiter
from atomlimit.specs import Concurrency, Hit, RateLimit
from atomlimit.wsgi import charge, client_address

__all__ = ["RateLimited", "RateLimits"]

View = TypeVar("View", bound=Callable[..., Any])
Key = Callable[[], "str | None"]
"""Gives the subject of the current request (read ``flask.request``); None: not limited."""
Limit = RateLimit | Concurrency | str
"""A limit as a spec, or a rate string for [`RateLimit.parse`][atomlimit.RateLimit.parse]."""

EXTENSION = "atomlimit"
"""The extension's key in ``app.extensions``."""
_RULES = "__atomlimit__"
"""The attribute on a view function that holds its own limits."""
_EXEMPT = "exempt"
_STATE = "_atomlimit_verdict"
"""Where, in ``flask.g``, the verdict waits for the response."""


class RateLimited(TooManyRequests):
    """The ``429`` of a denied request: its response is ready, fields and all.

    ``decisions`` are every limit's Decision; an ``errorhandler(429)`` may
    build its own response from them (the ``RateLimit`` fields are added to
    it unless it sets them).
    """

    def __init__(self, decisions: Sequence[Decision[Any]], response: Response) -> None:
        super().__init__(response=response)
        self.decisions = tuple(decisions)


class _Rules:
    """One view's own limits, each with the key that names its subject."""

    __slots__ = ("keys", "limits", "override_defaults")

    def __init__(self) -> None:
        self.limits: list[RateLimit | Concurrency] = []
        self.keys: list[Key | None] = []
        self.override_defaults = False


class _AppState:
    """What one application was configured with, and each view's limits once combined."""

    __slots__ = ("defaults", "enabled", "key", "limiter", "plans")

    def __init__(self, limiter: Limiter, defaults: Sequence[Limit], key: Key, enabled: bool):
        self.limiter = limiter
        self.defaults: tuple[tuple[RateLimit | Concurrency, Key | None], ...] = tuple(
            (spec, None) for spec in _checked(_specs(defaults, "ATOMLIMIT_DEFAULT_LIMITS"))
        )
        self.key = key
        self.enabled = enabled
        self.plans: dict[Any, tuple[tuple[RateLimit | Concurrency, Key | None], ...]] = {}


class RateLimits:
    """The Flask extension: default limits for every route, and a view's own.

    Args:
        app: the application to set up now; or call `init_app` later, once
            per application.
        limiter: the [`Limiter`][atomlimit.Limiter] to charge through. Default:
            one made from ``ATOMLIMIT_URL`` and ``ATOMLIMIT_KEY_PREFIX``.
        key: ``key()`` gives the subject of the current request, reading
            ``flask.request``; None lets the request through unlimited.
            Default: the client's address, ``REMOTE_ADDR`` (or the entry of
            ``X-Forwarded-For`` ``ATOMLIMIT_TRUSTED_HOPS`` from the right),
            as [`atomlimit.wsgi.client_address`][atomlimit.wsgi.client_address] reads it.
        default_limits: limits for every route, overriding
            ``ATOMLIMIT_DEFAULT_LIMITS``.

    Configuration (``app.config``):

    | key | default | meaning |
    |---|---|---|
    | ``ATOMLIMIT_URL`` | required without ``limiter`` | the Redis URL |
    | ``ATOMLIMIT_KEY_PREFIX`` | ``"atomlimit"`` | the prefix of every key written |
    | ``ATOMLIMIT_DEFAULT_LIMITS`` | none | limits every request is charged to |
    | ``ATOMLIMIT_TRUSTED_HOPS`` | ``0`` | proxies you run in front of the app |
    | ``ATOMLIMIT_ENABLED`` | ``True`` | ``False`` charges nothing (for tests) |
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        limiter: Limiter | None = None,
        key: Key | None = None,
        default_limits: Sequence[Limit] | None = None,
    ) -> None:
        if limiter is not None and not isinstance(limiter, Limiter):
            raise InvalidInput(
                f"limiter must be a Limiter (Flask views are synchronous), got {show(limiter)}"
            )
        if key is not None and not callable(key):
            raise InvalidInput(f"key must be a callable of no arguments, got {show(key)}")
        self._limiter = limiter
        self._key = key
        self._defaults = (
            None if default_limits is None else _specs(default_limits, "default_limits")
        )
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read ``app.config`` and hook the checks into ``app``'s requests."""
        config = app.config
        limiter = self._limiter
        if limiter is None:
            url = config.get("ATOMLIMIT_URL")
            if not isinstance(url, str):
                raise InvalidInput(
                    f"set ATOMLIMIT_URL to a Redis URL, or pass limiter=, got {show(url)}"
                )
            prefix = config.get("ATOMLIMIT_KEY_PREFIX", "atomlimit")
            limiter = Limiter.from_url(url, prefix=prefix)
        hops = checked_hops(config.get("ATOMLIMIT_TRUSTED_HOPS", 0))
        defaults = self._defaults
        if defaults is None:
            defaults = _specs(
                config.get("ATOMLIMIT_DEFAULT_LIMITS", ()), "ATOMLIMIT_DEFAULT_LIMITS"
            )
        enabled = check_flag(config.get("ATOMLIMIT_ENABLED", True), "ATOMLIMIT_ENABLED")
        key = self._key or _client_address(hops)
        app.extensions[EXTENSION] = _AppState(limiter, defaults, key, enabled)
        app.before_request(_check)
        app.after_request(_add_fields)
        app.teardown_request(_release_left)

    @property
    def limiter(self) -> Limiter:
        """The current application's [`Limiter`][atomlimit.Limiter]."""
        return _state().limiter

    def limit(
        self, limit: Limit, *, key: Key | None = None, override_defaults: bool = False
    ) -> Callable[[View], View]:
        """A decorator: charge each request of the view to ``limit`` as well.

        ``limit`` is a [`RateLimit`][atomlimit.RateLimit] or
        [`Concurrency`][atomlimit.Concurrency], or a rate string such as
        ``"10/minute"``, which becomes a RateLimit named after the view, so
        each view it decorates counts on its own; a spec object used on two
        views is one budget shared by both. ``key()`` gives this limit's
        subject (default: the extension's key). With ``override_defaults``
        the default limits are not charged for this view. The view is
        returned as it is, so the decorator may sit above or below
        ``@app.route``; stacked, a view's limits are charged together.
        """
        if key is not None and not callable(key):
            raise InvalidInput(f"key must be a callable of no arguments, got {show(key)}")
        flag = check_flag(override_defaults, "override_defaults")
        _spec(limit, None, "limit")  # a bad limit fails here, not at the first request

        def decorate(view: View) -> View:
            rules = getattr(view, _RULES, None)
            if rules == _EXEMPT:
                raise InvalidInput(f"{view.__qualname__} is exempt; it takes no limit")
            if rules is None:
                rules = _Rules()
                setattr(view, _RULES, rules)
            spec = _spec(limit, f"{view.__module__}.{view.__qualname__}", "limit")
            checked_limits([*rules.limits, spec])
            rules.limits.insert(0, spec)  # decorators apply bottom up; keep reading order
            rules.keys.insert(0, key)
            rules.override_defaults = rules.override_defaults or flag
            return view

        return decorate

    def exempt(self, view: View) -> View:
        """A decorator: the view is never limited, not even by the default limits."""
        if isinstance(getattr(view, _RULES, None), _Rules):
            raise InvalidInput(f"{view.__qualname__} has limits; it cannot be exempt")
        setattr(view, _RULES, _EXEMPT)
        return view


def _state() -> _AppState:
    state: _AppState = current_app.extensions[EXTENSION]
    return state


def _client_address(hops: int) -> Key:
    of_environ = client_address(hops)  # the WSGI middleware's key, on Flask's request

    def key() -> str:
        return of_environ(request.environ)

    return key


def _plan(state: _AppState, view: Any) -> tuple[tuple[RateLimit | Concurrency, Key | None], ...]:
    """The limits of a view's requests, defaults first, checked once per view."""
    plan = state.plans.get(view)
    if plan is None:
        rules = getattr(view, _RULES, None)
        if rules == _EXEMPT:
            plan = ()
        elif rules is None:
            plan = state.defaults
        else:
            own = tuple(zip(rules.limits, rules.keys, strict=True))
            plan = own if rules.override_defaults else (*state.defaults, *own)
            checked_limits([spec for spec, _ in plan])  # no two limits of one name
        state.plans[view] = plan
    return plan


def _check() -> None:
    """Before the view: charge the request, or raise its 429."""
    state = _state()
    g.atomlimit = ()
    if not state.enabled:
        return
    plan = _plan(state, current_app.view_functions.get(request.endpoint or ""))
    if not plan:
        return
    hits: list[Hit[Any]] = []
    subject: str | None = None
    for spec, key in plan:
        if key is None:
            if subject is None:
                subject = state.key() or ""
            chosen: str | None = subject
        else:
            chosen = key()
        if chosen:  # None (or an unset default) leaves this limit out
            hits.append(Hit(spec, chosen))
    if not hits:
        return
    verdict = charge(state.limiter, hits)
    setattr(g, _STATE, verdict)
    if verdict.allowed:
        g.atomlimit = tuple(verdict.decisions)
        return
    status, headers, body = verdict.denial()
    raise RateLimited(verdict.decisions, Response(body, status, headers))


def _add_fields(response: Response) -> Response:
    """After the view: the fields on the response, and the leases held until it closes."""
    verdict: Verdict | None = g.pop(_STATE, None)
    if verdict is None:
        return response
    headers = response.headers
    if verdict.allowed:
        headers.extend(verdict.fields)
    else:
        # A 429 handler may have built its own response.
        for name, value in verdict.fields:
            if name not in headers:
                headers[name] = value
    leases: Sequence[Lease] = verdict.leases
    if leases:
        # Released when the server closes the response, after a streamed
        # body's last chunk; not at teardown, which comes before streaming.
        response.call_on_close(lambda: _release(leases))
    return response


def _release_left(error: BaseException | None) -> None:
    """A request that ended before a response (an error in another hook) releases here."""
    verdict: Verdict | None = g.pop(_STATE, None)
    if verdict is not None:
        _release(verdict.leases)


def _release(leases: Sequence[Lease]) -> None:
    for lease in leases:
        lease.release()


def _specs(limits: object, what: str) -> list[RateLimit | Concurrency]:
    if isinstance(limits, str):
        # "100/minute; 1000/day", as flask-limiter writes several.
        limits = [part for part in limits.split(";") if part.strip()]
    if not isinstance(limits, list | tuple):
        raise InvalidInput(f"{what} takes a list of limits or rate strings, got {show(limits)}")
    return [_spec(limit, None, what) for limit in limits]


def _spec(limit: object, name: str | None, what: str) -> RateLimit | Concurrency:
    if isinstance(limit, RateLimit | Concurrency):
        return limit
    if isinstance(limit, str):
        text = limit.strip()
        return RateLimit.parse(text, name=None if name is None else f"{name} {text}")
    raise InvalidInput(
        f"{what} takes a RateLimit, a Concurrency or a rate string, got {show(limit)}"
    )


def _checked(limits: list[RateLimit | Concurrency]) -> list[RateLimit | Concurrency]:
    if limits:
        checked_limits(limits)
    return limits

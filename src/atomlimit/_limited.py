"""What ``@limiter.limited(...)`` checks once, when it decorates.

A bad limit, cost, flag or timeout, or a function of the wrong kind for the
limiter (a coroutine function under the sync ``Limiter``, or a plain one
under ``AsyncLimiter``), is refused at decoration, so the mistake shows
when the module is imported rather than on the first call in production.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from atomlimit._codecs import codec_of
from atomlimit._errors import InvalidInput
from atomlimit._inputs import check_flag, show
from atomlimit._waiting import deadline_after
from atomlimit.specs import RateLimit, Spec, SpendCap


@dataclass(frozen=True, slots=True)
class Limited:
    """A checked ``limited`` configuration; resolves subject and cost per call."""

    source: Spec[Any] | Callable[[], Spec[Any]]
    """The limit, or a callable returning the limit in force (a policy
    file's [`limit`][atomlimit.policies.Policies.limit])."""
    subject: str | Callable[..., str]
    cost: Any
    wait: bool
    timeout: Any

    @property
    def limit(self) -> Spec[Any]:
        """The limit to charge now."""
        source = self.source
        if isinstance(source, Spec):
            return source
        return _checked_limit(source())

    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
        """The subject and cost of one call, from the function's own arguments."""
        subject = self.subject(*args, **kwargs) if callable(self.subject) else self.subject
        cost = self.cost(*args, **kwargs) if callable(self.cost) else self.cost
        return subject, cost


def configure(
    limit: object, subject: object, cost: object, wait: object, timeout: object
) -> Limited:
    """Check a ``limited`` configuration before any function is decorated."""
    source = limit
    if callable(limit) and not isinstance(limit, Spec):
        limit = limit()
    limit = _checked_limit(limit)
    if type(subject) is not str and not callable(subject):
        raise InvalidInput(
            f"subject must be a str or a callable of the function's arguments, got {show(subject)}"
        )
    if not callable(cost):
        codec_of(limit).units(cost)  # a fixed cost is checked now, as a hit would
    check_flag(wait, "wait")
    if not wait and timeout is not None:
        raise InvalidInput("timeout is how long to wait: it needs wait=True")
    deadline_after(timeout, 0.0)
    return Limited(source, subject, cost, bool(wait), timeout)  # type: ignore[arg-type]


def _checked_limit(limit: object) -> Spec[Any]:
    if not isinstance(limit, RateLimit | SpendCap):
        raise InvalidInput(
            "limited takes a RateLimit or SpendCap (a Concurrency limit is held with "
            f"lease()), or a callable returning one, got {show(limit)}"
        )
    return limit


def check_function(func: object, asynchronous: bool) -> None:
    """Refuse a function the limiter's shell cannot wrap without blocking or leaking."""
    if not callable(func):
        raise InvalidInput(f"limited decorates a function, got {show(func)}")
    is_async = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
    if asynchronous and not inspect.iscoroutinefunction(func):
        raise InvalidInput(
            "AsyncLimiter.limited decorates async def functions; use Limiter.limited for plain ones"
        )
    if not asynchronous and is_async:
        raise InvalidInput(
            "Limiter.limited decorates plain functions; use AsyncLimiter.limited for async def ones"
        )

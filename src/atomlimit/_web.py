"""What every web integration decides alike, without a framework or a socket.

The ASGI and WSGI middlewares and the framework integrations are thin shells
around this module: they read a peer address, a path and a header out of
their own request object, call the limiter in their own style, and write
what this module gives back into their own response. Here lives the rest:

- whose request it is: the peer address, or an entry of ``X-Forwarded-For``
  behind trusted proxies, in one canonical form;
- which paths are limited: ``include`` and ``exclude`` prefixes, matched by
  whole segments, below the application's root path;
- which limits, checked once: ``limits`` and how one request charges them
  (one ``hit`` for a lone rate limit, else one all-or-nothing ``acquire``);
- the answer: the ``RateLimit`` fields of an allowed request, and the
  ``429`` of a denied one, with its ``application/problem+json`` body.

Pure: no clock (the caller passes ``now_us``), no I/O, no framework.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from atomlimit._errors import InvalidInput
from atomlimit._header_fields import header_fields
from atomlimit._inputs import MAX_HITS, check_int, show
from atomlimit.decision import Decision
from atomlimit.specs import Concurrency, Hit, RateLimit, Spec

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
PROBLEM_JSON = "application/problem+json"

Fields = list[tuple[str, str]]
"""Header fields as (name, value) pairs of ASCII text, in order."""


# --- whose request it is -------------------------------------------------------------


def checked_hops(trusted_hops: object) -> int:
    """``trusted_hops`` checked: 0 to [`MAX_HOPS`][atomlimit._web.MAX_HOPS]."""
    return check_int(trusted_hops, "trusted_hops", 0, MAX_HOPS)


def client_subject(peer: object, forwarded: str | None, hops: int) -> str:
    """The subject of a request: its client's address, in one written form.

    ``peer`` is the address the server saw (None or empty when it saw
    none); ``forwarded`` is the ``X-Forwarded-For`` value, its repeated
    fields joined with commas, or None. With ``hops`` trusted proxies, the
    entry that many places from the right wins when it is an IP address;
    otherwise the peer does. A peer that is no IP address (a test
    client's name) stays as given.
    """
    if hops and forwarded:
        address = forwarded_address(forwarded, hops)
        if address is not None:
            return address
    if not peer:
        return UNKNOWN_CLIENT
    # A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d.
    host = str(peer)
    return canonical_address(host) or host


def forwarded_address(forwarded: str, hops: int) -> str | None:
    """The address ``hops`` entries from the right of ``forwarded``, normalised, or None."""
    # Repeated fields are one list, in order (RFC 9110, 5.3); only the
    # right end is read, so a long header costs no more than a short one.
    entries = forwarded.rsplit(",", hops)
    if len(entries) < hops:
        return None
    return canonical_address(entries[-hops].strip())


@functools.lru_cache(maxsize=4096)
def canonical_address(text: str) -> str | None:
    """``text`` as one IP address in its one written form, or None if it is not one.

    The forms a client can take are many (``::ffff:198.51.100.1``,
    ``::FFFF:C633:6401``, ``fe80::1%eth0``); each would be a subject of its
    own, with a limit of its own. Kept, since a server sees few peers and
    parsing costs more than the lookup.
    """
    if len(text) > _MAX_ADDRESS or not text.isascii():
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


# --- which paths are limited ---------------------------------------------------------


class Paths:
    """``include`` and ``exclude`` path prefixes, checked once.

    A prefix matches whole segments: ``"/api"`` matches ``/api`` and
    ``/api/x``, not ``/apix``. ``exclude`` wins over ``include``; no
    ``include`` means every path.
    """

    __slots__ = ("_exclude", "_include", "everywhere")

    def __init__(self, include: Sequence[str] | None, exclude: Sequence[str]) -> None:
        self._include = None if include is None else _prefixes(include, "include")
        self._exclude = _prefixes(exclude, "exclude")
        self.everywhere = self._include is None and not self._exclude
        """True when every path is limited, so no path need be read."""

    def applies(self, path: str) -> bool:
        """Whether a request to ``path``, below the root path, is limited."""
        if self.everywhere:
            return True
        if _matches(path, self._exclude):
            return False
        return self._include is None or _matches(path, self._include)


def route_path(path: str, root: str) -> str:
    """The path the application routes: ``path`` below the ``root`` it is served at.

    Newer ASGI servers and Starlette's ``Mount`` put the root path into
    ``path`` (as the ASGI spec now says); older ones leave it out.
    Starlette's router tells them apart by whether ``path`` starts with
    ``root`` at a segment boundary, and so does this: the rules must match
    the route the application takes, or a root path would carry every
    request past ``include``, or into an ``exclude``.
    """
    if root and path.startswith(root):
        if len(path) == len(root):
            return "/"
        if path[len(root)] == "/":
            return path[len(root) :]
    return path


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


# --- which limits, and how a request charges them ------------------------------------


class Charge:
    """The limits each request is charged 1 of, checked once.

    ``limits`` may also be a callable that returns them, such as a policy
    file's [`select`][atomlimit.policies.Policies.select]: it is asked on
    each request, and what it returns is checked again only when it is a
    new object (a reload), so every request sees the limits in force.
    """

    __slots__ = ("_source", "_state")

    def __init__(self, limits: object) -> None:
        self._source: Callable[[], object] | None = None
        if callable(limits) and not isinstance(limits, Spec):
            self._source = limits
            limits = limits()
        # What the source gave and its check, swapped as one: threads
        # serving requests never pair one set with another's check.
        self._state = (limits, checked_limits(limits))

    @property
    def limits(self) -> tuple[Spec[int], ...]:
        """The limits in force now."""
        seen, checked = self._state
        if self._source is not None:
            limits = self._source()
            if limits is not seen:
                checked = checked_limits(limits)
                self._state = (limits, checked)
        return checked

    def hits(self, subject: str) -> list[Hit[Any]]:
        """One hit of 1 per limit, for one request of ``subject``."""
        return [Hit(limit, subject) for limit in self.limits]


def lone_rate_limit(hits: Sequence[Hit[Any]]) -> Hit[Any] | None:
    """The one hit of ``hits`` when it is a lone RateLimit's, else None.

    A lone [`RateLimit`][atomlimit.RateLimit] needs no all-or-nothing
    across limits and holds no lease: a shell decides it with one ``hit``,
    the same decision by the smaller script. Anything else goes in one
    ``acquire``.
    """
    if len(hits) == 1 and isinstance(hits[0].limit, RateLimit):
        return hits[0]
    return None


def checked_limits(limits: object) -> tuple[Spec[int], ...]:
    """``limits``: a RateLimit or Concurrency, or a list or tuple of 1 to 64 with distinct names."""
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


class Acquired(Protocol):
    """What a shell reads of an acquire's result, sync or async alike."""

    @property
    def decisions(self) -> Sequence[Decision[Any]]: ...
    @property
    def allowed(self) -> bool: ...
    @property
    def leases(self) -> Sequence[Any]: ...


# --- the answer ----------------------------------------------------------------------


class Verdict:
    """What one request's charge decided, ready for a shell to write.

    ``fields`` go on every response, allowed or not; ``leases`` are the
    Concurrency leases the shell releases once the response is done.
    """

    __slots__ = ("allowed", "decisions", "fields", "leases")

    def __init__(
        self,
        decisions: Sequence[Decision[Any]],
        allowed: bool,
        leases: Sequence[Any],
        now_us: int,
    ) -> None:
        self.decisions = decisions
        self.allowed = allowed
        self.leases = leases
        self.fields: Fields = list(header_fields(decisions, now_us).items())

    @classmethod
    def of(cls, result: Decision[Any] | Acquired, now_us: int) -> Verdict:
        """The verdict of a ``hit``'s Decision or an ``acquire``'s result."""
        if isinstance(result, Decision):
            return cls((result,), result.allowed, (), now_us)
        return cls(result.decisions, result.allowed, result.leases, now_us)

    def denied_by(self) -> list[str]:
        """The names of the limits that said no, in order."""
        return [d.spec.name for d in self.decisions if not d.allowed and d.spec]

    def denial(self) -> tuple[int, Fields, bytes]:
        """The ``429``: status, header fields and its problem+json body.

        The body is the "quota exceeded" problem type of the draft, naming
        the limits that denied; the fields carry ``Retry-After``.
        """
        body = json.dumps(
            {
                "type": QUOTA_EXCEEDED,
                "title": "Too Many Requests",
                "status": 429,
                "violated-policies": self.denied_by(),
            }
        ).encode("ascii")
        headers = [
            ("Content-Type", PROBLEM_JSON),
            ("Content-Length", str(len(body))),
            *self.fields,
        ]
        return 429, headers, body

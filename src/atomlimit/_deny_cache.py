"""The local deny cache: denials kept in the process, so a flood is refused
without a round trip.

Under a flood from one client, or once a shared budget is spent, every
request still asks the server, which can only say no again. A limiter built
with a [`DenyCache`][atomlimit.DenyCache] remembers each denial the server
made, keyed by limit and subject, until the instant at which time alone
could change that answer (the server's ``retry_after``; ``reset_at`` when it
said the cost can never pass), and answers later calls that denial decides
from memory. Pure: the instant is an input, in server microseconds.

What it cannot see: another process's refund, reset, release or settle, or a
hold expiring. A cached denial stands until its time even if one of those
frees room on the server. So the cache can only deny more than the server
would, never admit more: every allowed call went to the server.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from atomlimit._codecs import Codec, LeaseSet, codec_of
from atomlimit._errors import InvalidInput
from atomlimit._inputs import check_flag, show
from atomlimit._money import MAX_UNITS
from atomlimit._windows import to_us
from atomlimit.decision import Decision, denied_again
from atomlimit.specs import RateLimit, Spec, SpendCap

_US = timedelta(microseconds=1)
MAX_ENTRIES = 1_000_000
"""The most denials one cache keeps (about 200 bytes each)."""
DEFAULT_ENTRIES = 10_000

_Key = tuple[str, str, bool]
"""(limit name, subject, guarded): a guarded item (an upstream's limit in a
model call) also reads the upstream's pause, so its denials are its own."""


class _Denial:
    """One cached denial. A slotted class: its fields are read on every
    cached answer, and a slot reads faster than a named tuple's field."""

    __slots__ = (
        "any_until",
        "codec",
        "granted",
        "held",
        "limit",
        "limit_source",
        "plain",
        "remaining",
        "reset_us",
        "retries",
        "spec",
        "units",
        "until",
        "used",
    )

    def __init__(
        self,
        spec: Spec[Any],
        codec: Codec[Any],
        units: int,
        until: int,
        any_until: int,
        decision: Decision[Any],
        reset_us: int,
        retries: bool,
    ) -> None:
        self.spec = spec
        self.codec = codec
        # Whether an int cost is its own count of units (a rate limit's), so
        # the common call skips the codec: a cap's int is whole currency.
        self.plain = type(codec).units is Codec.units
        self.units = units
        """The denied cost, in units: any cost at least this is denied until ``until``."""
        self.until = until
        self.any_until = any_until
        """Until when any cost above zero is denied (nothing remains); 0 for never."""
        self.reset_us = reset_us
        self.retries = retries
        """Whether the server said when the cost could pass (``retry_after``)."""
        # The server's denial, kept as the values a cached answer repeats.
        self.limit = decision.limit
        self.limit_source = decision.limit_source
        self.used = decision.used
        self.remaining = decision.remaining
        self.granted = decision.granted
        self.held = decision.held


class DenyCache:
    """Denials kept in the process, so repeated denied calls skip the server.

    Give one to a limiter (``Limiter(client, deny_cache=DenyCache(10_000))``,
    or ``deny_cache=10_000``). A subject denied on a limit is then answered
    locally, with ``Decision.cached`` set and no round trip, until the time
    at which time alone could change the server's answer, for any call that
    denial decides: a cost at least the denied one, or any cost when nothing
    remains. Calls with a ``request_id``, ``peek``, ``acquire``, ``call``,
    ``reserve`` and ``lease`` always ask the server. A refund, reset,
    release or settle made through the same limiter forgets the affected
    denials; one made by another process is not seen until the cached
    denial's time is up. See docs/local.md.

    Args:
        max_entries: denials kept, 1 to 1,000,000; past it, the oldest go first.
    """

    __slots__ = ("_bound", "_entries", "_lock", "max_entries")

    def __init__(self, max_entries: int = DEFAULT_ENTRIES) -> None:
        if type(max_entries) is not int or not 1 <= max_entries <= MAX_ENTRIES:
            raise InvalidInput(
                f"max_entries must be an int from 1 to {MAX_ENTRIES:,}, got {show(max_entries)}"
            )
        self.max_entries = max_entries
        # Reads are single dict lookups, atomic on their own; every change
        # (and the walk that picks an eviction) holds the lock, so a sync
        # limiter shared by threads never sees a dict change size mid-walk.
        self._entries: dict[_Key, _Denial] = {}
        self._lock = threading.Lock()
        self._bound = False

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DenyCache(max_entries={self.max_entries}, entries={len(self)})"

    def forget(self, spec: Spec[Any], subject: str | None = None) -> None:
        """Drop the cached denials of ``subject`` under ``spec``, or of every
        subject with ``subject=None``.

        A limiter calls it after each refund, reset, release and settle it
        makes; call it yourself when a limit changes for a subject (an
        override, say) so that its next call asks the server.
        """
        name = getattr(spec, "name", None)
        with self._lock:
            if subject is None:
                for key in [k for k in self._entries if k[0] == name]:
                    del self._entries[key]
                return
            self._entries.pop((name, subject, False), None)  # type: ignore[arg-type]
            self._entries.pop((name, subject, True), None)  # type: ignore[arg-type]

    def clear(self) -> None:
        """Drop every cached denial."""
        with self._lock:
            self._entries.clear()

    # -- what a limiter asks ---------------------------------------------------

    def check(
        self,
        spec: Spec[Any],
        subject: str,
        cost: object,
        partial: bool,
        guarded: bool,
        now: int,
    ) -> Decision[Any] | None:
        """The cached denial that decides this call at ``now``, or None to ask the server.

        The cost is checked as planning would check it, so bad input raises
        InvalidInput whether or not a denial is cached.
        """
        entries = self._entries
        if not entries or type(subject) is not str:
            return None
        entry = entries.get((getattr(spec, "name", ""), subject, guarded))
        if entry is None:
            return None
        if entry.spec is not spec and entry.spec != spec:
            return None  # another limit of the same name: its own state
        if partial is False and type(cost) is int and entry.plain and 0 <= cost <= MAX_UNITS:
            units = cost  # the common call: what the codec would return, unchecked
        else:
            units = entry.codec.units(cost)
            partial = check_flag(partial, "partial")
        if partial:
            # A partial hit is denied only when nothing at all fits.
            until = entry.any_until if units else 0
        elif units >= entry.units and now < entry.until:
            until = entry.until
        else:
            until = entry.any_until if units else 0
        if now < until:
            left = until - now  # at least 1 us: now < until, both integers
            return denied_again(
                entry.limit,
                entry.used,
                entry.remaining,
                entry.reset_us,
                left if entry.retries else None,
                entry.granted,
                entry.held,
                entry.spec,
                entry.limit_source,
            )
        if now >= entry.until and now >= entry.any_until:
            with self._lock:
                if entries.get((entry.spec.name, subject, guarded)) is entry:
                    del entries[(entry.spec.name, subject, guarded)]
        return None

    def learn(
        self,
        spec: Spec[Any],
        subject: str,
        cost: object,
        guarded: bool,
        decision: Decision[Any],
        now: int,
    ) -> None:
        """Keep the server's denial ``decision`` of ``cost``, made at ``now``."""
        if decision.allowed or decision.degraded or decision.cached:
            return
        codec = codec_of(spec)
        if isinstance(codec, LeaseSet):
            return  # a lease is taken with lease(), which never reads the cache
        units = codec.units(cost)
        reset_us = to_us(decision.reset_at)
        retry = decision.retry_after
        until = now + _span(retry) if retry is not None else reset_us
        if until <= now:
            return
        entry = _Denial(
            spec,
            codec,
            units,
            until,
            _any_until(spec, units, until, decision),
            decision,
            reset_us,
            retry is not None,
        )
        key = (spec.name, subject, guarded)
        entries = self._entries
        with self._lock:
            # Learning again moves the entry to the back of the eviction order.
            if entries.pop(key, None) is None and len(entries) >= self.max_entries:
                del entries[next(iter(entries))]
            entries[key] = entry

    def bind(self) -> DenyCache:
        """Claim this cache for one limiter: names are only unique within one."""
        with self._lock:
            if self._bound:
                raise InvalidInput("a DenyCache serves one limiter; give each limiter its own")
            self._bound = True
        return self


def deny_cache_of(value: object) -> DenyCache | None:
    """A limiter's ``deny_cache`` argument: None, a DenyCache, or its size."""
    if value is None:
        return None
    if isinstance(value, DenyCache):
        return value.bind()
    if type(value) is int:
        return DenyCache(value).bind()
    raise InvalidInput(
        f"deny_cache must be None, a DenyCache or a number of entries, got {show(value)}"
    )


def _any_until(spec: Spec[Any], units: int, until: int, decision: Decision[Any]) -> int:
    """Until when a smaller cost is refused too: only when nothing remains,
    and only where no unit comes back before ``until``."""
    if decision.remaining or not units:
        return 0
    if units == 1:
        return until  # every smaller cost is zero, which the cost rule covers
    if isinstance(spec, RateLimit) and spec.algorithm == "fixed_window":
        return until  # the whole limit comes back at the window's end, none before
    if isinstance(spec, SpendCap) and not decision.held:
        return until  # nothing held can expire and free part of the cap early
    # GCRA and the sliding kinds give units back one by one: a smaller cost
    # may pass before the denied one could.
    return 0


def _span(length: timedelta) -> int:
    return length // _US

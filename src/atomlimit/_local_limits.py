"""The in-process limiter that ``on_backend_error="local"`` decides by.

While the server cannot be asked (it fails, or the breaker is open), a limit
whose policy is ``"local"`` (``"local_spend"`` for a SpendCap) is decided
here, against ``floor(limit * local_share)``: the share of the limit one
process may admit, so that N processes with a share of 1/N admit no more
than the limit between them. Each kind keeps the semantics of its script in
``lua/lib/``, in integer units on the local clock:

- a fixed window and a spend cap count per window, aligned as the server's
  windows are (the codec's window plan);
- GCRA keeps a theoretical arrival time, in exact integer arithmetic;
- a sliding log keeps when each unit was admitted, a sliding counter this
  window's count and the last;
- a Concurrency limit counts leases until they expire.

Every decision is degraded (``degraded=True``, ``cause`` the failure). State
is kept per (limit, subject) in one LRU per limiter, at most ``subjects``
entries. It is never sent to the server: when the server answers again it
decides alone, and what is kept here only goes on counting against the
share if another outage falls in the same window.

Pure but for a lock: the instant is an input, and nothing here does I/O.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Final

from atomlimit._codecs import (
    CONCURRENCY,
    FIXED_WINDOW,
    GCRA,
    PARTIAL,
    SHADOW,
    SLIDING_COUNTER,
    SLIDING_LOG,
    SPEND,
    Codec,
    length_us,
)
from atomlimit._errors import InvalidInput
from atomlimit._inputs import show
from atomlimit._windows import from_us
from atomlimit.decision import Decision
from atomlimit.specs import local_part

__all__ = ["DEFAULT_LOCAL_SUBJECTS", "MAX_LOCAL_SUBJECTS", "LocalLimits", "check_subjects"]

DEFAULT_LOCAL_SUBJECTS: Final = 10_000
"""Subjects one limiter keeps local state for, by default."""
MAX_LOCAL_SUBJECTS: Final = 1_000_000
"""Most subjects one limiter may keep local state for."""

_US = timedelta(microseconds=1)
LOCAL_POLICIES: Final = ("local", "local_spend")
"""Policies decided by the in-process limiter."""


def check_subjects(value: object) -> int:
    """``local_subjects`` of a limiter, or InvalidInput."""
    if type(value) is not int or not 1 <= value <= MAX_LOCAL_SUBJECTS:
        raise InvalidInput(
            f"local_subjects must be an int from 1 to {MAX_LOCAL_SUBJECTS:,}, got {show(value)}"
        )
    return value


def _ceil_div(top: int, bottom: int) -> int:
    return -(-top // bottom)


class _State:
    """One subject's local state under one limit; each kind fills it in."""

    __slots__ = ()

    def look(self, now: int) -> tuple[int, int]:
        """Units used at ``now``, and when usage is back to zero with no traffic."""
        raise NotImplementedError

    def add(self, units: int, now: int) -> None:
        raise NotImplementedError

    def retry(self, cost: int, now: int) -> int:
        """When ``cost`` could pass (epoch microseconds), or -1 for never."""
        raise NotImplementedError


class _Window(_State):
    """A fixed window or a spend cap: a count per window, as ``fixed_window.lua``."""

    __slots__ = ("codec", "limit", "start", "stop", "used")

    def __init__(self, codec: Codec[Any], limit: int) -> None:
        self.codec, self.limit = codec, limit
        self.start = self.stop = self.used = 0

    def _roll(self, now: int) -> None:
        if not self.start <= now < self.stop:
            self.start, self.stop = self.codec.window(now)
            self.used = 0

    def look(self, now: int) -> tuple[int, int]:
        self._roll(now)
        return self.used, self.stop

    def add(self, units: int, now: int) -> None:
        self._roll(now)
        self.used += units

    def retry(self, cost: int, now: int) -> int:
        return self.stop if cost <= self.limit else -1


class _Gcra(_State):
    """GCRA, as ``gcra.lua``, exactly: times are kept in 1/rate microseconds,
    so the emission interval (window length / rate) is a whole number."""

    __slots__ = ("burst", "length", "rate", "tat")

    def __init__(self, rate: int, burst: int, length: int) -> None:
        self.rate, self.burst, self.length = rate, burst, length
        self.tat = 0
        """The theoretical arrival time, in 1/rate microseconds since the epoch."""

    def _ahead(self, now: int) -> int:
        return max(self.tat - now * self.rate, 0)

    def look(self, now: int) -> tuple[int, int]:
        ahead = self._ahead(now)
        room = self.burst - _ceil_div(ahead, self.length)
        return self.burst - room, now + _ceil_div(ahead, self.rate)

    def add(self, units: int, now: int) -> None:
        self.tat = now * self.rate + self._ahead(now) + units * self.length

    def retry(self, cost: int, now: int) -> int:
        if cost > self.burst:
            return -1
        wait = self._ahead(now) + (cost - self.burst) * self.length
        return now + max(_ceil_div(wait, self.rate), 0)


class _Log(_State):
    """A sliding log, as ``sliding_log.lua``: when each unit was admitted,
    units admitted at one instant kept as one entry."""

    __slots__ = ("entries", "length", "limit", "used")

    def __init__(self, limit: int, length: int) -> None:
        self.limit, self.length = limit, length
        self.entries: deque[list[int]] = deque()
        self.used = 0

    def _prune(self, now: int) -> None:
        entries = self.entries
        while entries and entries[0][0] <= now - self.length:
            self.used -= entries.popleft()[1]

    def look(self, now: int) -> tuple[int, int]:
        self._prune(now)
        stop = self.entries[-1][0] + self.length if self.entries else now
        return self.used, stop

    def add(self, units: int, now: int) -> None:
        if units <= 0:
            return
        if self.entries and self.entries[-1][0] == now:
            self.entries[-1][1] += units
        else:
            self.entries.append([now, units])
        self.used += units

    def retry(self, cost: int, now: int) -> int:
        if cost > self.limit:
            return -1
        # The entry whose expiry makes room for ``cost``.
        freed, needed = 0, self.used + cost - self.limit
        for at, units in self.entries:
            freed += units
            if freed >= needed:
                return at + self.length
        return now


class _Counter(_State):
    """A sliding counter, as ``sliding_counter.lua``: this window's count and
    the last's, the last weighted by how much of it is still inside the span."""

    __slots__ = ("count", "length", "limit", "previous", "start")

    def __init__(self, limit: int, length: int) -> None:
        self.limit, self.length = limit, length
        self.start = self.count = self.previous = 0

    def _roll(self, now: int) -> None:
        start = now - now % self.length
        if self.start >= start:
            return
        self.previous = self.count if self.start == start - self.length else 0
        self.start, self.count = start, 0

    def _scaled(self, now: int) -> int:
        """The estimate of usage times the window length: an integer."""
        length = self.length
        return self.previous * (length - max(now - self.start, 0)) + self.count * length

    def look(self, now: int) -> tuple[int, int]:
        self._roll(now)
        used = _ceil_div(self._scaled(now), self.length)
        if self.count > 0:
            stop = self.start + 2 * self.length
        else:
            stop = self.start + self.length if self.previous > 0 else now
        return used, stop

    def add(self, units: int, now: int) -> None:
        self._roll(now)
        self.count += units

    def retry(self, cost: int, now: int) -> int:
        limit, length, count, previous = self.limit, self.length, self.count, self.previous
        if cost > limit:
            return -1
        if count + cost <= limit and previous > 0:
            return self.start + _ceil_div(
                length * previous - (limit - count - cost) * length, previous
            )
        at = self.start + length
        if count > 0 and cost > limit - count:
            at = self.start + _ceil_div(2 * length * count - (limit - cost) * length, count)
        return max(at, now)


class _Leases(_State):
    """Concurrency, as ``concurrency.lua``: leases counted until they expire.

    A lease taken here is not given back by its handle's ``release()``
    (a degraded handle sends nothing): its slot frees when the lease ends.
    """

    __slots__ = ("expiries", "lease", "limit")

    def __init__(self, limit: int, lease: int) -> None:
        self.limit, self.lease = limit, lease
        self.expiries: deque[int] = deque()  # in order: every lease lasts as long

    def look(self, now: int) -> tuple[int, int]:
        expiries = self.expiries
        while expiries and expiries[0] <= now:
            expiries.popleft()
        return len(expiries), expiries[-1] if expiries else now

    def add(self, units: int, now: int) -> None:
        self.expiries.extend([now + self.lease] * units)

    def retry(self, cost: int, now: int) -> int:
        if cost > self.limit:
            return -1
        n = len(self.expiries) + cost - self.limit
        return self.expiries[n - 1] if n > 0 else now


def local_limit(codec: Codec[Any]) -> int:
    """The units one process may admit of ``codec``'s limit (for GCRA, its burst)."""
    share = codec.spec.local_share
    assert share is not None  # the spec refuses "local" without a share
    return local_part(codec.limit, share)


def _new_state(codec: Codec[Any], limit: int) -> _State:
    spec: Any = codec.spec
    kind = codec.kind
    if kind in (FIXED_WINDOW, SPEND):
        return _Window(codec, limit)
    if kind == CONCURRENCY:
        return _Leases(limit, spec.lease // _US)
    length = length_us(spec)
    if kind == GCRA:
        assert spec.local_share is not None
        return _Gcra(local_part(spec.limit, spec.local_share), limit, length)
    if kind == SLIDING_LOG:
        return _Log(limit, length)
    assert kind == SLIDING_COUNTER
    return _Counter(limit, length)


class LocalItem:
    """One limit of one subject to decide locally: what `LocalLimits` takes."""

    __slots__ = ("codec", "flags", "subject", "units")

    def __init__(self, codec: Codec[Any], subject: str, units: int, flags: int = 0) -> None:
        self.codec, self.subject, self.units = codec, subject, units
        self.flags = flags | codec.flags


class LocalLimits:
    """One limiter's in-process state: an LRU of at most ``subjects`` entries,
    one per (limit, subject), shared by the limiter's threads.

    An entry pushed out of the LRU forgets that subject's usage: size
    ``subjects`` above the subjects a limiter sees in one window, or the
    bound of docs/failure-policy.md no longer holds for the ones forgotten.
    """

    __slots__ = ("_entries", "_lock", "subjects")

    def __init__(self, subjects: int = DEFAULT_LOCAL_SUBJECTS) -> None:
        self.subjects = check_subjects(subjects)
        self._entries: OrderedDict[tuple[Any, ...], _State] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def decide(
        self, item: LocalItem, charge: bool, now: int, cause: BaseException
    ) -> Decision[Any]:
        """Check ``item`` at ``now``, and with ``charge`` charge what fits."""
        return self.decide_all([item], charge, now, cause)[0]

    def decide_all(
        self, items: Sequence[LocalItem], charge: bool, now: int, cause: BaseException
    ) -> list[Decision[Any]]:
        """Check every item at ``now``; with ``charge``, charge them all if
        every one is admitted, else none (as an acquire does)."""
        with self._lock:
            found = [(item, self._state(item)) for item in items]
            outcomes = [self._outcome(item, state, now) for item, state in found]
            admitted = all(granted is not None for granted, _ in outcomes)
            decisions = []
            for (item, state), (granted, shadowed) in zip(found, outcomes, strict=True):
                grant = granted if granted is not None and admitted and charge else 0
                if grant:
                    state.add(grant, now)
                decisions.append(self._decision(item, state, now, granted, grant, shadowed, cause))
            return decisions

    def _state(self, item: LocalItem) -> _State:
        # Keyed by what shapes the state too, not the limit's name alone: a
        # limit changed under the same name (a policy file reloaded) starts
        # afresh instead of reading a state kept in other units.
        spec: Any = item.codec.spec
        key = (
            item.codec.tail,
            item.subject,
            spec.limit,
            spec.local_share,
            getattr(spec, "burst", None),
            getattr(spec, "window", None),
            getattr(spec, "lease", None),
        )
        entries = self._entries
        state = entries.get(key)
        if state is None:
            state = entries[key] = _new_state(item.codec, local_limit(item.codec))
            if len(entries) > self.subjects:
                entries.popitem(last=False)
        else:
            entries.move_to_end(key)
        return state

    @staticmethod
    def _outcome(item: LocalItem, state: _State, now: int) -> tuple[int | None, bool]:
        """What fits, as ``reply.lua``'s ``decide``: the grant (None: denied),
        and whether a shadow limit let it through although it was over."""
        used, _ = state.look(now)
        room = local_limit(item.codec) - used
        cost = item.units
        if cost <= room:
            return cost, False
        if item.flags & PARTIAL and room > 0:
            return room, False
        if item.flags & SHADOW:
            return cost, True
        return None, False

    @staticmethod
    def _decision(
        item: LocalItem,
        state: _State,
        now: int,
        granted: int | None,
        grant: int,
        shadowed: bool,
        cause: BaseException,
    ) -> Decision[Any]:
        codec = item.codec
        amount = codec.amount
        limit = local_limit(codec)
        used, stop = state.look(now)
        retry = None
        if granted is None:
            at = state.retry(item.units, now)
            retry = None if at < 0 else _US * max(at - now, 1)
        return Decision(
            allowed=granted is not None,
            limit=amount(limit),
            used=amount(used),
            remaining=amount(max(limit - used, 0)),
            reset_at=from_us(stop),
            retry_after=retry,
            granted=amount(grant),
            held=codec.zero,
            shadow_denied=shadowed,
            spec=codec.spec,
            degraded=True,
            cause=cause,
        )

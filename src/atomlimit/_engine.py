"""The limiter's sans-I/O core: every operation as plain data in, plain data out.

An operation is planned as a :class:`~atomlimit._steps.Call` (script, KEYS,
ARGV) whose ``read`` turns the reply into the result, or into a re-planned
call when the server's clock fell outside the planned windows. An operation
of several steps, like an acquire across hash slots, is a generator that
yields calls and receives their results. The sync and async limiters only
send and receive, so both share every rule here.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Generator, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any, Literal, NamedTuple

from atomlimit import _keys
from atomlimit._checks import whole_ms
from atomlimit._scripts import Script, script
from atomlimit._steps import Call, Flow
from atomlimit._windows import WindowPlan
from atomlimit.decision import Decision
from atomlimit.errors import AtomlimitError, InvalidInput, RequestIdReused
from atomlimit.specs import Concurrency, Hit, Spec, SpendCap

TimeSource = Literal["server", "client"]
Clock = Callable[[], float]

DEFAULT_REQUEST_TTL = timedelta(days=1)
DEFAULT_RETRY_TTL = timedelta(minutes=2)
DEFAULT_HOLD = timedelta(minutes=5)

_OUTSIDE_PLAN = -1
_REUSED = -2
_CHARGED = (1, 2)
_PARTIAL = 1
_MAX_SUBJECT = 65_536
_MAX_REQUEST_ID = 1_024
_US = timedelta(microseconds=1)

SettleStatus = Literal[
    "settled",
    "already_settled",
    "settled_after_release",
    "settled_after_expiry",
    "released",
    "already_released",
    "expired",
]
_SETTLED: tuple[SettleStatus, ...] = (
    "settled",
    "already_settled",
    "settled_after_release",
    "settled_after_expiry",
)
_RELEASED: tuple[SettleStatus, ...] = ("released", "already_settled", "already_released", "expired")


class Item(NamedTuple):
    """One limit of one subject in a call: its keys and fixed arguments."""

    spec: Spec[Any]
    subject: str
    tag: str
    """The subject's hash tag: items with one tag can share a script call."""
    base: str
    """The key of the limit's main state; other keys extend it."""
    kind: str
    """The scripts' name for the kind of item (lua/lib/items.lua)."""
    keys: tuple[str, ...]
    units: int
    flags: int
    extra: tuple[int | str, ...]

    def encoded(self, t_us: int) -> tuple[int | str, ...]:
        """``kind, #keys, #args, args...`` as the scripts parse it at time ``t_us``."""
        spec = self.spec
        args = (
            spec._limit_units,
            self.units,
            self.flags,
            *spec._window_args(t_us),
            *self.extra,
        )
        return (self.kind, len(self.keys), len(args), *args)


class Charged(NamedTuple):
    """The reply to a charge: every item's decision, and the id it ran under."""

    allowed: bool
    decisions: list[Decision[Any]]
    request_id: str
    replayed: bool = False
    """The charge was made by an earlier send under this id, not by this one."""


class Held(NamedTuple):
    """A planned reservation or lease: the call (read as its Decision), and
    what a handle needs to finish with it later."""

    call: Call
    item: Item
    request_id: str


class Settlement(NamedTuple):
    """What settling or releasing a reservation did.

    ``status`` says which case applied; ``charged`` is what this call
    charged (zero for a release, or for a settle that was already done);
    ``decision`` is the cap after it.
    """

    status: SettleStatus
    charged: Decimal
    decision: Decision[Decimal]


class Acquisition(NamedTuple):
    """What an acquire flow found, before the shell wraps leases and holds."""

    allowed: bool
    decisions: list[Decision[Any]]
    denied_at: int | None
    """Index of the first hit, in the caller's order, whose limit said no."""
    held: list[tuple[Item, Decision[Any]]]
    """Items that hold something (leases, reservations) after an allowed acquire."""
    request_id: str


class Engine:
    """Plans calls and reads replies; holds no connection.

    ``skew`` is the server clock minus the local clock, in microseconds, as
    last observed. It only centres the planned windows on the server's time;
    the server's TIME alone decides which window a hit lands in.
    """

    __slots__ = ("_client_time", "_clock", "_ns", "_request_ttl", "_retry_ttl", "skew")

    def __init__(
        self,
        *,
        prefix: str = "atomlimit",
        time_source: TimeSource = "server",
        clock: Clock | None = None,
        request_ttl: timedelta = DEFAULT_REQUEST_TTL,
        retry_ttl: timedelta = DEFAULT_RETRY_TTL,
    ) -> None:
        if time_source not in ("server", "client"):
            raise InvalidInput(f"time_source must be 'server' or 'client', got {time_source!r}")
        clock = time.time if clock is None else clock
        if not callable(clock):
            raise InvalidInput(f"clock must be a callable returning epoch seconds, got {clock!r}")
        self._ns = _keys.namespace(prefix)
        self._clock = clock
        self._client_time = time_source == "client"
        self._request_ttl = whole_ms(request_ttl, "request_ttl")
        self._retry_ttl = whole_ms(retry_ttl, "retry_ttl")
        self.skew = 0

    # -- planning one item -------------------------------------------------

    def item(
        self,
        spec: Spec[Any],
        subject: str,
        cost: object,
        *,
        hold: timedelta | None = None,
        partial: bool = False,
    ) -> Item:
        """Validate one limit of one subject and plan its keys and arguments."""
        tag, base = self._locate(spec, subject)
        units = spec._cost_units(cost)
        kind, extra = spec._kind, spec._extra_args()
        if hold is not None:
            if not isinstance(spec, SpendCap):
                raise InvalidInput("hold: only a SpendCap can hold a reservation")
            kind, extra = "rs", (_hold_us(hold),)
        return Item(
            spec,
            subject,
            tag,
            base,
            kind,
            spec._state_keys(base),
            units,
            spec._flags | (_PARTIAL if partial else 0),
            extra,
        )

    # -- single calls ------------------------------------------------------

    def hit(
        self,
        spec: Spec[Any],
        subject: str,
        cost: object,
        request_id: str | None,
        partial: bool = False,
    ) -> Call:
        """Plan a check-and-charge of ``cost``: reads as the item's Decision."""
        if isinstance(spec, Concurrency):
            raise InvalidInput("a Concurrency limit is taken with lease(), which can release it")
        item = self.item(spec, subject, cost, partial=partial)
        return self._charge([item], *self.request(request_id), one=True)

    def reserve(
        self,
        spec: SpendCap,
        subject: str,
        estimate: object,
        ttl: timedelta,
        request_id: str | None,
    ) -> Held:
        """Plan holding ``estimate`` on a cap, under the reservation's id."""
        if not isinstance(spec, SpendCap):
            raise InvalidInput(f"reserve takes a SpendCap, got {type(spec).__name__}")
        return self._hold(self.item(spec, subject, estimate, hold=ttl), request_id)

    def lease(self, spec: Concurrency, subject: str, request_id: str | None) -> Held:
        """Plan taking a lease, under the lease's id."""
        if not isinstance(spec, Concurrency):
            raise InvalidInput(f"lease takes a Concurrency limit, got {type(spec).__name__}")
        return self._hold(self.item(spec, subject, 1), request_id)

    def peek(self, spec: Spec[Any], subject: str, cost: object) -> Call:
        """Plan a read-only check: would a hit of ``cost`` pass now?"""
        item = self.item(spec, subject, cost)

        def args_at(t_us: int, client_now: int | str) -> tuple[int | str, ...]:
            return (client_now, 1, *item.encoded(t_us))

        def finish(code: int, now: int, reply: Sequence[int]) -> Decision[Any]:
            return spec._decision(reply[2:8], now, False)

        return self.timed(script("peek"), item.keys, args_at, finish)

    def refund(self, spec: Spec[Any], subject: str, amount: object, request_id: str | None) -> Call:
        """Plan giving back ``amount`` of the current usage, never below zero.

        Recorded under a request id like a charge, so a re-sent refund never
        gives back twice.
        """
        if isinstance(spec, Concurrency):
            raise InvalidInput("a Concurrency limit is not refunded; release the lease")
        item = self.item(spec, subject, amount)
        rid, ttl = self.request(request_id)
        record = f"{item.base}:f:{rid}"
        fingerprint = f"refund:{item.kind}:{item.units}"

        def args_at(t_us: int, client_now: int | str) -> tuple[int | str, ...]:
            return (client_now, item.units, ttl, fingerprint, 1, *item.encoded(t_us))

        def finish(code: int, now: int, reply: Sequence[int]) -> Decision[Any]:
            if code == _REUSED:
                raise RequestIdReused(
                    f"request_id was already used for another refund of {spec.name!r}"
                )
            return spec._decision(reply[2:8], now, False)

        return self.timed(script("refund"), (record, *item.keys), args_at, finish)

    def reset(self, spec: Spec[Any], subject: str) -> Call:
        """Plan forgetting ``subject``'s state under ``spec``."""
        _, base = self._locate(spec, subject)
        return Call(script("reset"), spec._state_keys(base), (), _discard)

    def settle(self, item: Item, request_id: str, actual: object) -> Call:
        """Plan charging a reservation's actual cost: reads as a Settlement."""
        units = item.spec._cost_units(actual)
        call = os.urandom(8).hex()  # names this call, so redis-py's re-send replays it

        def args_at(t_us: int, client_now: int | str) -> tuple[int | str, ...]:
            bounds = item.spec._window_args(t_us)
            limit = item.spec._limit_units
            return (client_now, request_id, units, self._request_ttl, limit, *bounds, call)

        return self._outcome(script("settle"), item, request_id, args_at, _SETTLED)

    def release(self, item: Item, request_id: str) -> Call:
        """Plan dropping a reservation's hold: reads as a Settlement."""

        call = os.urandom(8).hex()

        def args_at(t_us: int, client_now: int | str) -> tuple[int | str, ...]:
            bounds = item.spec._window_args(t_us)
            limit = item.spec._limit_units
            return (client_now, request_id, self._request_ttl, limit, *bounds, call)

        return self._outcome(script("release"), item, request_id, args_at, _RELEASED)

    def renew(self, item: Item, request_id: str) -> Call:
        """Plan extending a lease: reads as True if it was still held."""

        def args_at(t_us: int, client_now: int | str) -> tuple[int | str, ...]:
            return (client_now, request_id, *item.extra)

        def finish(code: int, now: int, reply: Sequence[int]) -> bool:
            return code == 1

        return self.timed(script("lease_renew"), item.keys, args_at, finish)

    def drop_lease(self, item: Item, request_id: str) -> Call:
        """Plan giving a lease back: reads as True if it was still held."""

        def args_at(t_us: int, client_now: int | str) -> tuple[int | str, ...]:
            return (client_now, request_id)

        def finish(code: int, now: int, reply: Sequence[int]) -> bool:
            return code == 1

        return self.timed(script("lease_release"), item.keys, args_at, finish)

    # -- calls over several items of one subject ----------------------------

    def _charge(self, items: Sequence[Item], rid: str, ttl: int, one: bool = False) -> Call:
        """Plan charging every item, all or none, in one script, under ``rid``.

        Reads as Charged, or with ``one`` as the only item's Decision.
        """
        record = self._record(items, rid)
        fingerprint = ";".join(f"{i.kind}:{i.units}:{i.flags}" for i in items)

        def args_at(t_us: int, client_now: int | str) -> tuple[int | str, ...]:
            return (client_now, ttl, rid, fingerprint, len(items), *_encode(items, t_us))

        def finish(code: int, now: int, reply: Sequence[int]) -> Any:
            if code == _REUSED:
                names = ", ".join(repr(i.spec.name) for i in items)
                raise RequestIdReused(f"request_id was already charged for other costs ({names})")
            charged = code in _CHARGED
            if one:
                return items[0].spec._decision(reply[2:8], now, charged)
            return Charged(charged, _decisions(items, reply, now, charged), rid, code == 2)

        keys = (record, *(key for item in items for key in item.keys))
        return self.timed(script("charge"), keys, args_at, finish)

    def check(self, items: Sequence[Item]) -> Call:
        """Plan a read-only check of every item: reads as Charged (nothing charged)."""

        def args_at(t_us: int, client_now: int | str) -> tuple[int | str, ...]:
            return (client_now, len(items), *_encode(items, t_us))

        def finish(code: int, now: int, reply: Sequence[int]) -> Charged:
            return Charged(code == 1, _decisions(items, reply, now, False), "")

        keys = tuple(key for item in items for key in item.keys)
        return self.timed(script("peek"), keys, args_at, finish)

    def undo(self, items: Sequence[Item], request_id: str) -> Call:
        """Plan taking back what a charge of ``items`` under ``request_id`` charged."""

        def args_at(t_us: int, client_now: int | str) -> tuple[int | str, ...]:
            return (client_now, request_id, len(items), *_encode(items, t_us))

        def finish(code: int, now: int, reply: Sequence[int]) -> Charged:
            return Charged(False, _decisions(items, reply, now, False), request_id)

        keys = (self._record(items, request_id), *(k for i in items for k in i.keys))
        return self.timed(script("undo"), keys, args_at, finish)

    # -- an acquire over any number of subjects -----------------------------

    def acquire(self, hits: Sequence[Hit[Any]], request_id: str | None) -> Flow:
        """All the hits or none of them: yields calls, returns an Acquisition.

        Hits of one subject share a hash slot and are charged by one script,
        atomically. Subjects are charged one after another in the order they
        first appear; if one denies, the subjects already charged are undone,
        exactly, before the acquire returns denied. A backend failure part-way
        undoes them too, then re-raises.
        """
        items = [self._hit_item(hit) for hit in hits]
        if not items:
            raise InvalidInput("acquire needs at least one Hit")
        groups = _groups(items)
        rid, ttl = self.request(request_id)
        decisions: list[Decision[Any] | None] = [None] * len(items)
        charged: list[list[int]] = []
        replayed: list[list[int]] = []
        try:
            for group in groups:
                outcome = yield self._charge([items[i] for i in group], rid, ttl)
                _fill(decisions, group, outcome)
                if not outcome.allowed:
                    break
                charged.append(group)
                if outcome.replayed:
                    replayed.append(group)
        except AtomlimitError:
            # After a failure the later subjects' state is unknown: a replayed
            # charge may belong to an earlier send that went all the way, so
            # only what this send charged is taken back.
            ours = [group for group in charged if group not in replayed]
            yield from self._undo_all(items, ours, rid, decisions)
            raise
        if len(charged) == len(groups):
            done = [d for d in decisions if d is not None]
            held = [(items[i], done[i]) for i in range(len(items)) if items[i].kind in ("rs", "cc")]
            return Acquisition(True, done, None, held, rid)
        # Denied: a replayed charge here was stranded by an earlier send that
        # never finished (its later subjects have no record), so it goes too.
        yield from self._undo_all(items, charged, rid, decisions)
        for group in groups[len(charged) + 1 :]:
            _fill(decisions, group, (yield self.check([items[i] for i in group])))
        final = [d for d in decisions if d is not None]
        denied_at = next(i for i, d in enumerate(final) if not d.allowed)
        return Acquisition(False, final, denied_at, [], rid)

    # -- helpers -----------------------------------------------------------

    def timed(
        self,
        lua: Script,
        keys: Sequence[str],
        args_at: Callable[[int, int | str], tuple[int | str, ...]],
        finish: Callable[[int, int, Sequence[Any]], Any],
    ) -> Call:
        """Plan a script that reads the clock: its reply starts ``{code, now}``.

        ``args_at(planned, client_now)`` builds ARGV for the planned instant;
        ``client_now`` is the instant for client time, '' for server time.
        Code -1 means the server's clock was outside the planned windows: the
        call is re-planned around it. Any other reply goes to
        ``finish(code, now, reply)``.
        """
        local = int(self._clock() * 1_000_000)
        planned = local + self.skew
        args = args_at(planned, planned if self._client_time else "")

        def read(reply: Sequence[Any]) -> Any:
            code, now = reply[0], reply[1]
            if not self._client_time:
                # Absolute, not incremental: concurrent calls planned with an
                # older estimate must not add their corrections up.
                self.skew = now - local
            if code == _OUTSIDE_PLAN:
                return self.timed(lua, keys, args_at, finish)
            return finish(code, now, reply)

        return Call(lua, keys, args, read)

    def windowed(
        self,
        lua: Script,
        plan: WindowPlan,
        keys: Sequence[str],
        head: tuple[int | str, ...],
        tail: tuple[int | str, ...],
        finish: Callable[[int, int, Sequence[Any]], Any],
    ) -> Call:
        """A timed call whose ARGV is ``head``, client time, the bounds, ``tail``."""

        def args_at(t_us: int, client_now: int | str) -> tuple[int | str, ...]:
            return (*head, client_now, *plan.bounds(t_us), *tail)

        return self.timed(lua, keys, args_at, finish)

    def _locate(self, spec: Spec[Any], subject: str) -> tuple[str, str]:
        """The subject's hash tag and the spec's base key, after checking both."""
        if not isinstance(spec, Spec):
            raise InvalidInput(f"expected a limit spec, got {type(spec).__name__}")
        if type(subject) is not str:
            raise InvalidInput(f"subject must be a str, got {type(subject).__name__}")
        if len(subject) > _MAX_SUBJECT:
            raise InvalidInput(f"subject must be at most {_MAX_SUBJECT} characters")
        tag = _keys.subject_tag(subject)
        return tag, self._ns + tag + spec._tail

    def request(self, request_id: str | None) -> tuple[str, int]:
        """The id a charge runs under, and how long its record lives.

        Every charge carries an id, so redis-py's transport retries can
        re-send it safely; an id the caller did not choose only needs to
        outlive those retries.
        """
        if request_id is None:
            return f"@{os.urandom(12).hex()}", self._retry_ttl
        return _request_part(request_id), self._request_ttl

    def _hit_item(self, hit: Hit[Any]) -> Item:
        if not isinstance(hit, Hit):
            raise InvalidInput(f"acquire takes Hit objects, got {type(hit).__name__}")
        return self.item(hit.limit, hit.subject, hit.cost, hold=hit.hold)

    def _record(self, items: Sequence[Item], rid: str) -> str:
        if len(items) == 1:
            return f"{items[0].base}:r:{rid}"
        # A request id names one set of limits; several share a record keyed
        # by a digest of their keys, in the subject's slot.
        digest = hashlib.blake2b("|".join(i.base for i in items).encode(), digest_size=8)
        return f"{self._ns}{items[0].tag}:acq:{digest.hexdigest()}:r:{rid}"

    def _undo_all(
        self,
        items: list[Item],
        charged: list[list[int]],
        rid: str,
        decisions: list[Decision[Any] | None],
    ) -> Generator[Call, Any, None]:
        for group in reversed(charged):
            outcome: Charged = yield self.undo([items[i] for i in group], rid)
            _fill(decisions, group, outcome)

    def _hold(self, item: Item, request_id: str | None) -> Held:
        rid, ttl = self.request(request_id)
        return Held(self._charge([item], rid, ttl, one=True), item, rid)

    def _outcome(
        self,
        lua: Script,
        item: Item,
        rid: str,
        args_at: Callable[[int, int | str], tuple[int | str, ...]],
        statuses: tuple[SettleStatus, ...],
    ) -> Call:
        spec = item.spec

        def finish(code: int, now: int, reply: Sequence[int]) -> Settlement:
            decision = spec._decision(reply[2:8], now, True)
            return Settlement(statuses[code - 1], decision.granted, decision)

        keys = (*item.keys, f"{item.base}:o:{rid}")
        return self.timed(lua, keys, args_at, finish)


def _encode(items: Sequence[Item], t_us: int) -> tuple[int | str, ...]:
    if len(items) == 1:
        return items[0].encoded(t_us)
    args: list[int | str] = []
    for item in items:
        args.extend(item.encoded(t_us))
    return tuple(args)


def _decisions(
    items: Sequence[Item], reply: Sequence[int], now: int, charged: bool
) -> list[Decision[Any]]:
    return [
        item.spec._decision(reply[2 + 6 * n : 8 + 6 * n], now, charged)
        for n, item in enumerate(items)
    ]


def _groups(items: Sequence[Item]) -> list[list[int]]:
    """Item indices grouped by subject, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    seen: set[str] = set()
    for index, item in enumerate(items):
        if item.base in seen:
            raise InvalidInput(
                f"acquire names {item.spec.name!r} for one subject twice; merge the costs"
            )
        seen.add(item.base)
        groups.setdefault(item.tag, []).append(index)
    return list(groups.values())


def _fill(decisions: list[Decision[Any] | None], group: list[int], outcome: Charged) -> None:
    for index, decision in zip(group, outcome.decisions, strict=True):
        decisions[index] = decision


def _hold_us(hold: object) -> int:
    if not isinstance(hold, timedelta) or hold < timedelta(milliseconds=1) or hold % _US:
        raise InvalidInput(f"hold must be a timedelta of at least 1 ms, got {hold!r}")
    return hold // _US


def _discard(reply: object) -> None:
    return None


def _request_part(request_id: object) -> str:
    if type(request_id) is not str or not 0 < len(request_id) <= _MAX_REQUEST_ID:
        raise InvalidInput(
            f"request_id must be a non-empty str of at most {_MAX_REQUEST_ID} characters, "
            f"got {request_id!r:.80}"
        )
    # Caller ids are encoded like subjects; generated ids start with "@",
    # which encoding never yields, so the two can never meet.
    return _keys.encode(request_id)

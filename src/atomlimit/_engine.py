"""The limiter's sans-I/O core: every operation as plain data in, plain data out.

An operation is planned as a `Call` (script, KEYS,
ARGV) whose ``read`` turns the reply into the result, or into a re-planned
call when the server's clock fell outside the planned window. Planning takes
the local clock's reading and fresh ids as inputs: it reads no clock and
draws no randomness of its own, so a plan is a function of plain values. The
sync and async limiters only send and receive, so both share every rule here.

Each kind's encoding lives in `atomlimit._codecs`; the acquire saga over
several subjects in `atomlimit._acquire`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import Any, Literal, NamedTuple

from atomlimit import _keys, _override_plan
from atomlimit._codecs import (
    ALWAYS,
    CONCURRENCY,
    GENERATED,
    GUARD,
    PARTIAL,
    READ_HOLDS,
    RECORDED,
    REPLAN,
    REUSED,
    SLIDING_LOG,
    SLOW_START,
    Codec,
    LeaseSet,
    Spend,
    codec_of,
    item_reply,
    new_id,
    replayed_limit,
)
from atomlimit._errors import BackendError, InvalidInput, RequestIdReused
from atomlimit._inputs import (
    MAX_SUBJECT,
    check_choice,
    check_flag,
    check_request_id,
    whole_ms,
)
from atomlimit._inputs import hold_us as check_hold
from atomlimit._later import Later
from atomlimit._runner_steps import Acked, Call, Wait
from atomlimit._scripts import script
from atomlimit._wire import CALL_SLOT, COST_SLOTS, ID_SLOT, Arg, Packed, Template
from atomlimit.decision import Decision, Settlement, SettleStatus
from atomlimit.specs import Concurrency, RateLimit, Spec

TimeSource = Literal["server", "client"]

DEFAULT_REQUEST_TTL = timedelta(days=1)
DEFAULT_RETRY_TTL = timedelta(minutes=2)
DEFAULT_HOLD = timedelta(minutes=5)

_REPLAYED = 2
_CHARGED = (1, _REPLAYED)
_TAGS: dict[str, str] = {}
"""Recent subjects' hash tags: encoding a subject costs more than a hit's
other planning, and traffic keeps coming back to the same subjects."""
_MAX_TAGS = 4096
_MAX_WIRES = 1024
"""Items' wires one codec keeps: a few per subject and window."""
_CACHED_SUBJECT = 256
"""Longer subjects are encoded each time, so the cache stays under ~2 MB."""

_SETTLED: tuple[SettleStatus, ...] = (
    "settled",
    "already_settled",
    "settled_after_release",
    "settled_after_expiry",
)
_RELEASED: tuple[SettleStatus, ...] = ("released", "already_settled", "already_released", "expired")
_UNHELD = {
    SLIDING_LOG: (
        "a sliding_log RateLimit keeps one entry per unit, so an estimate cannot be "
        "held and settled to a different actual; use sliding_counter, fixed_window or gcra"
    ),
    CONCURRENCY: "a Concurrency limit is held with a lease",
}
"""Why a kind cannot hold a reservation, by kind."""


class Item(NamedTuple):
    """One limit of one subject in a call."""

    spec: Spec[Any]
    subject: str
    tag: str
    """The subject's hash tag: items with one tag can share a script call."""
    base: str
    """The limit's key for the subject; its state keys extend it."""
    codec: Codec[Any]
    units: int
    flags: int
    hold: int
    """A reservation's hold, in microseconds; 0 for a charge."""

    @property
    def kind(self) -> str:
        """The scripts' name for the item: a hold is a kind of its own."""
        if self.hold:
            held = self.codec.held
            assert held is not None
            return held
        return self.codec.kind

    @property
    def holds(self) -> bool:
        """Whether the item leaves something held: a lease or a reservation."""
        return bool(self.hold) or isinstance(self.codec, LeaseSet)

    def keys(self, t: int) -> tuple[str, ...]:
        """The item's keys for the scripts of several items: its override's
        hash first (``lua/lib/items.lua``), then its state."""
        keys = (
            self.codec.hold_keys(self.base, t) if self.hold else self.codec.state_keys(self.base, t)
        )
        if self.flags & GUARD:
            return (_keys.override_key(self.base), *keys, _keys.guard_key(self.base))
        return (_keys.override_key(self.base), *keys)

    def encoded(self, t: int) -> tuple[Arg | Packed, ...]:
        """``kind, #keys, #args, args...`` as the scripts parse it, at ``t``."""
        return self.wire(t)[1]

    def wire(self, t: int) -> tuple[tuple[str, ...], tuple[Arg | Packed, ...]]:
        """The item's `keys` and its `encoded` arguments at ``t``, the keys made once.

        The arguments are sent as two encoded runs around the cost: what
        precedes it (kind, counts, limit) and what follows it (flags, the
        kind's own, the hold), each encoded once by the codec.
        """
        codec = self.codec
        known = codec.wires
        shape = (self.base, self.flags, self.hold, codec.era(t))
        made = known.get(shape)
        if made is None:
            # Everything but the cost is the same for every call of this
            # limit and subject in a window: made once, then looked up.
            keys = self.keys(t)
            args = codec.item_args(self.units, self.flags, t)
            if self.hold:
                args = (*args, self.hold)
            head = codec.packed((self.kind, len(keys), len(args), args[0]))
            made = (keys, head, codec.packed(args[2:]))
            if len(known) >= _MAX_WIRES:
                known.clear()  # past windows and subjects gone quiet
            known[shape] = made
        keys, head, tail = made
        return keys, (head, self.units, tail)


class LaterDecisions(Later[Decision[Any]]):
    """A charge's decisions, made from its reply when first read.

    A model call's acquire and end are read on every call, and most callers
    never look at their decisions: making the call's three at once was about
    an eighth of its client-side work (``bench/call_client.py``).
    """

    __slots__ = ()


def made_decisions(decisions: Sequence[Decision[Any]]) -> list[Decision[Any]]:
    """``decisions`` as a list: a `LaterDecisions`' own, made now if not yet."""
    if isinstance(decisions, LaterDecisions):
        return decisions.made()
    return decisions if isinstance(decisions, list) else list(decisions)


class LaterSettlement:
    """A model call's settle or release, its Settlement made when first read,
    as a `LaterDecisions` is."""

    __slots__ = ("_made", "_make")

    def __init__(self, make: Callable[[], Settlement[Any]]) -> None:
        self._make: Callable[[], Settlement[Any]] | None = make
        self._made: Settlement[Any] | None = None

    def made(self) -> Settlement[Any]:
        """The Settlement, made now if not yet."""
        made = self._made
        if made is None:
            assert self._make is not None
            made = self._made = self._make()
            self._make = None
        return made


def _held_settlement(
    item: Item, reply: Sequence[Any], now: int, status: SettleStatus
) -> Settlement[Any]:
    """The Settlement of a hold on a rate limit from its script's reply."""
    decision = _decisions([item], reply, now, True)[0]
    return Settlement(status, decision.granted, decision)


def _spend_settlement(
    codec: Codec[Any], reply: Sequence[Any], now: int, status: SettleStatus
) -> Settlement[Any]:
    """The Settlement of a spend cap's reservation from its script's reply."""
    code, used, held, stop, retry_at, grant = item_reply(reply, 0)
    limit = replayed_limit(reply, 0, 1)  # an override's, while one is in force
    decision = codec.decision(
        code, used, held, stop, retry_at, grant, now, limit, limit is not None
    )
    return Settlement(status, decision.granted, decision)


class Charged(NamedTuple):
    """The reply to a charge: every item's decision, and what a later undo needs."""

    allowed: bool
    decisions: Sequence[Decision[Any]]
    """A list, or for a model call's acquire (``later``) a `LaterDecisions`."""
    request_id: str
    at: int
    """The planned instant: an undo plans the same windows."""
    replayed: bool = False
    """The charge was made by an earlier send under this id, not by this one."""
    undone: bool = False
    """For an undo: a charge was recorded under the id, and is now taken back."""


class Held(NamedTuple):
    """A planned reservation or lease: the call (read as its Decision), and
    what a handle needs to finish with it later."""

    call: Call
    item: Item
    request_id: str


class Kept:
    """A call's encoding kept between its sends (`Engine.charge_kept`): the
    instants it holds for, from the first to past the last, and the
    `Template`; swapped whole, so threads never see half of one."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: tuple[int, int, Template] | None = None


def _slotted(request_id: str) -> bool:
    """Whether ``request_id`` can take an `ID_SLOT`'s place as it is: an id
    as long as a generated one, whose encoding is as long too."""
    return len(request_id) == len(ID_SLOT) and request_id[0] == "@" and request_id.isascii()


def _spanned(items: Sequence[Item], t: int) -> tuple[int, int]:
    """The instants around ``t`` in which every item's keys and arguments
    stay what they are at ``t``."""
    lo, hi = ALWAYS
    for item in items:
        start, stop = item.codec.span(t)
        lo, hi = max(lo, start), min(hi, stop)
    return lo, hi


class Engine:
    """Plans calls and reads replies; holds no connection and reads no clock.

    ``skew`` is the server clock minus the local clock, in microseconds, as
    last observed. It only centres the planned windows on the server's time;
    the server's clock alone decides which window a hit lands in.
    """

    __slots__ = ("_client_time", "_new_id", "_ns", "request_ttl", "retry_ttl", "skew", "together")

    def __init__(
        self,
        *,
        prefix: str = "atomlimit",
        time_source: TimeSource = "server",
        request_ttl: timedelta = DEFAULT_REQUEST_TTL,
        retry_ttl: timedelta = DEFAULT_RETRY_TTL,
        new_id: Callable[[], str] = new_id,
    ) -> None:
        check_choice(time_source, "time_source", ("server", "client"))
        self._ns = _keys.namespace(prefix)
        self._client_time = time_source == "client"
        self._new_id = new_id
        self.request_ttl = whole_ms(request_ttl, "request_ttl")
        """How long a caller's request id is remembered, in milliseconds."""
        self.retry_ttl = whole_ms(retry_ttl, "retry_ttl")
        """How long a generated id that needs a record keeps it, in milliseconds."""
        self.skew = 0
        self.together = False
        """Whether one script may name every subject's keys: the server holds
        them all (not a cluster). Set by the limiter; cleared on CROSSSLOT."""

    # -- the clock -------------------------------------------------------------

    def planned(self, local: int) -> tuple[int, int | str]:
        """The instant to plan for, and the client time to send ('' for the server's)."""
        if self._client_time:
            return local, local
        return local + self.skew, ""

    def observe(self, now: int, local: int) -> None:
        """Learn the server's clock from a reply to a call planned at ``local``."""
        if not self._client_time:
            # Absolute, not incremental: concurrent calls planned with an
            # older estimate must not add their corrections up.
            self.skew = now - local

    # -- planning one item -----------------------------------------------------

    def item(
        self,
        spec: Spec[Any],
        subject: str,
        cost: object,
        *,
        hold: timedelta | None = None,
        partial: bool = False,
        guard: int = 0,
    ) -> Item:
        """Validate one limit of one subject and plan its keys and arguments.

        ``guard`` marks an upstream's limit: its flags, `GUARD` and maybe
        `SLOW_START`; its decisions also read the upstream's guard (a pause,
        the outside use learned).
        """
        tag, base = self._locate(spec, subject)
        codec: Codec[Any] = codec_of(spec)
        hold_us = 0
        if hold is not None:
            if codec.held is None:
                raise InvalidInput(f"hold: {_UNHELD.get(codec.kind, 'this limit cannot hold')}")
            hold_us = check_hold(hold)
        flags = codec.flags | PARTIAL if check_flag(partial, "partial") else codec.flags
        if guard:
            if not isinstance(spec, RateLimit):
                raise InvalidInput("an upstream's requests and tokens must be RateLimits")
            flags |= GUARD | (guard & SLOW_START)
        return Item(spec, subject, tag, base, codec, codec.units(cost), flags, hold_us)

    # -- single calls ------------------------------------------------------------

    def hit(
        self,
        spec: Spec[Any],
        subject: str,
        cost: object,
        request_id: str | None,
        partial: bool,
        local: int,
    ) -> Call:
        """Plan a check-and-charge of ``cost``: reads as the item's Decision.

        Without a request id the kind's own script decides, and nothing is
        remembered: the runners never send such a call twice. With one, the
        charge is recorded under it, so sending it again replays the first.
        A charge that waits for replicas is always recorded, under a fresh
        id if the caller gave none: it can fail after it was made.
        """
        item = self.item(spec, subject, cost, partial=partial)
        if item.codec.hit is None:
            if item.codec.wait is None:
                raise InvalidInput(
                    "a Concurrency limit is taken with lease(), which can release it"
                )
            rid, ttl = self.record_ttl(request_id)
            return self.charge([item], rid, ttl, local, True)
        if request_id is not None:
            request_part(request_id)
            return self.charge([item], request_id, self.request_ttl, local, True)
        return self._single(item, local, charge=True)

    def peek(self, spec: Spec[Any], subject: str, cost: object, local: int) -> Call:
        """Plan a read-only check: would a hit of ``cost`` pass now?"""
        item = self.item(spec, subject, cost)
        if item.codec.peek is None:
            return self.check([item], local, one=True)
        return self._single(item, local, charge=False)

    def reserve(
        self,
        spec: Spec[Any],
        subject: str,
        estimate: object,
        ttl: timedelta,
        request_id: str | None,
        local: int,
    ) -> Held:
        """Plan holding ``estimate`` on a spend cap or a rate limit, under the
        reservation's id."""
        if not isinstance(spec, Spec):
            kind = type(spec).__name__
            raise InvalidInput(f"reserve takes a SpendCap or a RateLimit, got {kind}")
        codec = codec_of(spec)
        if codec.held is None:
            raise InvalidInput(f"reserve: {_UNHELD[codec.kind]}")
        # Checked here as well as by `item`, which takes None as no hold: a
        # reservation without one would be charged as a plain hit, and its
        # release would find no hold to give back.
        check_hold(ttl, "ttl")
        return self._hold(self.item(spec, subject, estimate, hold=ttl), request_id, local)

    def lease(self, spec: Concurrency, subject: str, request_id: str | None, local: int) -> Held:
        """Plan taking a lease, under the lease's id."""
        if not isinstance(spec, Concurrency):
            raise InvalidInput(f"lease takes a Concurrency limit, got {type(spec).__name__}")
        return self._hold(self.item(spec, subject, 1), request_id, local)

    def refund(
        self,
        spec: Spec[Any],
        subject: str,
        amount: object,
        request_id: str | None,
        local: int,
    ) -> Call:
        """Plan giving back ``amount`` of the current usage, never below zero.

        With a request id it is recorded like a charge, so sending it again
        never gives back twice.
        """
        if isinstance(spec, Concurrency):
            raise InvalidInput("a Concurrency limit is not refunded; release the lease")
        item = self.item(spec, subject, amount)
        rid = None if request_id is None else request_part(request_id)

        def plan(local: int) -> Call:
            t, client_now = self.planned(local)
            record = () if rid is None else (_keys.refund_record(item.base, rid),)
            fingerprint = f"refund:{item.kind}:{item.units}" if record else ""
            args = (
                client_now,
                item.units,
                self.request_ttl if record else "",
                fingerprint,
                1,
                *item.encoded(t),
            )

            def read(reply: Sequence[Any]) -> Any:
                code, now = reply[0], reply[1]
                self.observe(now, local)
                if code == REPLAN:
                    return plan(local)
                if code == REUSED:
                    raise RequestIdReused(
                        f"request_id was already used for another refund of {spec.name!r}"
                    )
                status, used, held, stop, retry_at, _ = item_reply(reply, 0)
                limit = replayed_limit(reply, 0, 1)
                overridden = limit is not None and code != _REPLAYED
                return item.codec.decision(
                    status, used, held, stop, retry_at, 0, now, limit, overridden
                )

            replay = request_id if record else None
            return Call(
                script("refund"), (*record, *item.keys(t)), args, read, bool(record), replay
            )

        return plan(local)

    def reset(self, spec: Spec[Any], subject: str, local: int) -> Call:
        """Plan forgetting ``subject``'s state under ``spec``."""
        _, base = self._locate(spec, subject)
        t, _ = self.planned(local)
        keys = codec_of(spec).reset_keys(base, t)
        return Call(script("reset"), keys, (), _discard)

    # -- per-subject overrides (atomlimit._override_plan) -------------------------

    def override_set(
        self,
        spec: Spec[Any],
        subject: str,
        limit: object,
        burst: object,
        expires: object,
        local: int,
    ) -> Call:
        """Plan storing ``subject``'s override of ``spec``."""
        _, base = self._locate(spec, subject)
        t, client_now = self.planned(local)
        return _override_plan.plan_set(spec, base, limit, burst, expires, t, client_now)

    def override_get(self, spec: Spec[Any], subject: str, local: int) -> Call:
        """Plan reading ``subject``'s override of ``spec``: an Override or None."""
        _, base = self._locate(spec, subject)
        return _override_plan.plan_get(spec, base, self.planned(local)[1])

    def override_delete(self, spec: Spec[Any], subject: str, local: int) -> Call:
        """Plan deleting ``subject``'s override of ``spec``: whether one was in force."""
        _, base = self._locate(spec, subject)
        t, client_now = self.planned(local)
        return _override_plan.plan_delete(spec, base, t, client_now)

    def override_match(self, spec: Spec[Any]) -> str:
        """The SCAN MATCH pattern of every subject's override of ``spec``."""
        self._locate(spec, "")
        return f"{self._ns}{_keys.SUBJECT_TAG}*}}{codec_of(spec).tail}:{_keys.OVERRIDE}"

    def settle(
        self, item: Item, request_id: str, actual: object, local: int, later: bool = False
    ) -> Call:
        """Plan charging a reservation's actual cost: reads as a Settlement,
        or with ``later`` as a `LaterSettlement`."""
        units = item.codec.units(actual)
        call = self._new_id()  # names this call, so a second send replays it
        if not isinstance(item.codec, Spend):
            return self._hold_outcome("settle_hold", item, request_id, (units,), call, local, later)

        def args(t: int, client_now: int | str) -> tuple[Arg, ...]:
            start, stop = item.codec.window(t)
            ttl = self._outcome_ttl(request_id)
            return (client_now, request_id, units, ttl, item.codec.limit, start, stop, call)

        return self._outcome("settle", item, request_id, args, _SETTLED, local, later)

    def release(self, item: Item, request_id: str, local: int, later: bool = False) -> Call:
        """Plan dropping a reservation's hold: reads as a Settlement, or with
        ``later`` as a `LaterSettlement`."""
        call = self._new_id()
        if not isinstance(item.codec, Spend):
            return self._hold_outcome("release_hold", item, request_id, (), call, local, later)

        def args(t: int, client_now: int | str) -> tuple[Arg, ...]:
            start, stop = item.codec.window(t)
            ttl = self._outcome_ttl(request_id)
            return (client_now, request_id, ttl, item.codec.limit, start, stop, call)

        return self._outcome("release", item, request_id, args, _RELEASED, local, later)

    def renew(self, item: Item, request_id: str, local: int) -> Call:
        """Plan extending a lease: reads as True if it was still held."""
        _, client_now = self.planned(local)
        args = (client_now, request_id, *item.codec.extras(0))
        keys = item.codec.state_keys(item.base, 0)
        return Call(script("lease_renew"), keys, args, self._held(local), True)

    def drop_lease(self, item: Item, request_id: str, local: int) -> Call:
        """Plan giving a lease back: reads as True if it was still held."""
        _, client_now = self.planned(local)
        return Call(
            script("lease_release"),
            item.codec.state_keys(item.base, 0),
            (client_now, request_id),
            self._held(local),
            True,
        )

    # -- calls over several items of one subject --------------------------------

    def charge(
        self,
        items: Sequence[Item],
        request_id: str,
        record_ttl: int | None,
        local: int,
        one: bool = False,
        later: bool = False,
    ) -> Call:
        """Plan charging every item, all or none, in one script, under ``request_id``.

        With ``record_ttl`` the charge is recorded under the id for that many
        milliseconds, so a second send replays it. Reads as Charged, or with
        ``one`` as the only item's Decision; with ``later``, an allowed
        charge's decisions are made when first read (`LaterDecisions`).
        """
        rid = request_part(request_id) if request_id else ""
        t, client_now = self.planned(local)
        record = (self._record(items, rid),) if record_ttl else ()
        fingerprint = ";".join(f"{i.kind}:{i.units}:{i.flags}" for i in items) if record else ""
        keys: list[str] = [*record]
        args: list[Arg | Packed] = [client_now, record_ttl or "", rid, fingerprint, len(items)]
        for item in items:
            # Extended a tuple at a time: a generator per argument cost more.
            item_keys, encoded = item.wire(t)
            keys += item_keys
            args += encoded
        wait = _wait(items)
        read = self._charged(items, request_id, record_ttl, local, one, rid, t, wait, later)
        replay = request_id if record else None
        return Call(script("charge"), tuple(keys), tuple(args), read, bool(record), replay, wait)

    def charge_kept(self, items: Sequence[Item], request_id: str, local: int, kept: Kept) -> Call:
        """`charge` of ``items`` under ``request_id``, keeping no record,
        encoded from what ``kept`` keeps while it holds (for a generated id,
        which stands in keys and scripts as it is).

        Every call of one shape (a model call's upstream and client: the
        same limits of the same subjects, none waiting for replicas) sends
        the same keys and arguments in a window but for its id and costs.
        """
        t, client_now = self.planned(local)
        current = kept.current
        if (
            current is None
            or client_now != ""
            or not current[0] <= t < current[1]
            or not GENERATED.fullmatch(request_id)
        ):
            call = self.charge(items, request_id, None, local, later=True)
            if (
                client_now == ""
                and call.wait is None
                and len(items) <= len(COST_SLOTS)
                and GENERATED.fullmatch(request_id)
            ):
                # Planned again with stand-ins for the id and each item's
                # cost: five arguments of the call's own, then (head, cost,
                # tail) per item.
                planned = list(call.args)
                planned[2] = ID_SLOT
                for n in range(len(items)):
                    planned[6 + 3 * n] = COST_SLOTS[n]
                lo, hi = _spanned(items, t)
                template = Template(call.script.sha_bytes, call.keys, tuple(planned))
                kept.current = (lo, hi, template)
            return call
        template = current[2]
        values = [request_id, "", *[item.units for item in items]]
        keys, args = template.filled(values)
        # Kept only for items that wait for no replicas, as these do.
        read = self._charged(items, request_id, None, local, False, request_id, t, None, True)
        return Call(script("charge"), keys, args, read, False, None, None, template.wire(values))

    def _charged(
        self,
        items: Sequence[Item],
        request_id: str,
        record_ttl: int | None,
        local: int,
        one: bool,
        rid: str,
        t: int,
        wait: Wait | None,
        later: bool = False,
    ) -> Callable[[Any], Any]:
        """How a charge planned at ``t``, waiting for ``wait``, reads its reply;
        with ``later``, an allowed charge's decisions are made when first read."""
        replay = request_id if record_ttl else None
        # A waited charge can fail after it was made: only a record makes
        # sending it again safe, and every planner gives it one.
        assert wait is None or record_ttl

        def read(outcome: Any) -> Any:
            reply = outcome if wait is None else outcome.reply
            code, now = reply[0], reply[1]
            self.observe(now, local)
            if code == REPLAN:
                return self.charge(items, request_id, record_ttl, local, one, later)
            if code == REUSED:
                names = ", ".join(repr(i.spec.name) for i in items)
                raise RequestIdReused(f"request_id was already charged for other costs ({names})")
            charged = code in _CHARGED
            if wait is not None and charged:
                # A denial wrote nothing, so only a charge must be confirmed.
                confirm(outcome, wait, replay)
            replayed = code == _REPLAYED
            if later and charged:
                # A denial's decisions are read at once, to say which limit.
                made = LaterDecisions(partial(_decisions, items, reply, now, charged, replayed))
                return Charged(charged, made, rid, t, replayed)
            decisions = _decisions(items, reply, now, charged, replayed=replayed)
            if one:
                return decisions[0]
            return Charged(charged, decisions, rid, t, replayed)

        return read

    def charge_groups(
        self, groups: Sequence[Sequence[Item]], request_id: str, record_ttl: int, local: int
    ) -> Call:
        """Plan charging the items of several subjects, all or none, in one
        script (``lua/acquire.lua``): for a server that holds every key.

        Each group's record is the one `charge` would write for it alone.
        Reads as Charged, or as None when a group's record exists already
        (an earlier send got that far): the saga, group by group, replays it.
        """
        rid = request_part(request_id)
        t, client_now = self.planned(local)
        items = [item for group in groups for item in group]
        keys: list[str] = []
        args: list[Arg] = [client_now, record_ttl, rid, len(groups)]
        for group in groups:
            keys.append(self._record(group, rid))
            args.append(";".join(f"{i.kind}:{i.units}:{i.flags}" for i in group))
            args.append(len(group))
            for item in group:
                item_keys, encoded = item.wire(t)
                keys.extend(item_keys)
                args.extend(encoded)

        def read(reply: Sequence[Any]) -> Any:
            code, now = reply[0], reply[1]
            self.observe(now, local)
            if code == REPLAN:
                return self.charge_groups(groups, request_id, record_ttl, local)
            if code == RECORDED:
                return None
            charged = code == 1
            return Charged(charged, _decisions(items, reply, now, charged), rid, t)

        return Call(script("acquire"), tuple(keys), tuple(args), read, True, request_id)

    def correct(self, item: Item, remaining: int, local: int) -> Call:
        """Plan charging an upstream's limit what its provider reports used
        beyond the fleet's count (``lua/observe.lua``): reads as the Decision
        after it, ``granted`` being the units charged."""
        t, client_now = self.planned(local)

        def read(reply: Sequence[Any]) -> Any:
            code, now = reply[0], reply[1]
            self.observe(now, local)
            if code == REPLAN:
                return self.correct(item, remaining, local)
            return _decisions([item], reply, now, True)[0]

        args = (client_now, remaining, 1, *item.encoded(t))
        # Sending it again charges nothing more: the correction is measured
        # against the count, which the first send already raised.
        return Call(script("observe"), item.keys(t), args, read, True)

    def pause(self, items: Sequence[Item], action: str, length: int, local: int) -> Call:
        """Plan pausing the upstream limits ``items`` for ``length``
        microseconds (``action`` "pause"), or clearing their pause ("clear")
        or all their guard knows ("forget"). Reads as the instant each is
        paused until, in server microseconds (0: not paused)."""
        _, client_now = self.planned(local)

        def read(reply: Sequence[Any]) -> list[int]:
            self.observe(reply[0], local)
            return [int(until) for until in reply[1:]]

        keys = tuple(_keys.guard_key(item.base) for item in items)
        # A pause only ever extends, and clearing twice clears once.
        return Call(script("pause"), keys, (client_now, action, length), read, True)

    def check(self, items: Sequence[Item], local: int, one: bool = False) -> Call:
        """Plan a read-only check of every item: reads as Charged (nothing
        charged), or with ``one`` as the only item's Decision."""
        t, client_now = self.planned(local)

        def read(reply: Sequence[Any]) -> Any:
            code, now = reply[0], reply[1]
            self.observe(now, local)
            if code == REPLAN:
                return self.check(items, local, one)
            decisions = _decisions(items, reply, now, False)
            return decisions[0] if one else Charged(code == 1, decisions, "", t)

        keys = tuple(key for item in items for key in item.keys(t))
        return Call(script("peek"), keys, (client_now, len(items), *_encode(items, t)), read)

    def undo(self, items: Sequence[Item], request_id: str, at: int, local: int) -> Call:
        """Plan taking back what a charge of ``items`` under ``request_id``,
        planned at ``at``, charged."""
        rid = request_part(request_id)
        _, client_now = self.planned(local)

        def read(reply: Sequence[Any]) -> Any:
            self.observe(reply[1], local)
            if reply[0] == REPLAN:
                # The undo is done, but the clock left the charged windows:
                # the state to report is that of the windows open now.
                return self._undone(items, request_id, at, local, reply[2] == 1)
            decisions = _decisions(items, reply, reply[1], False)
            return Charged(False, decisions, request_id, at, undone=reply[0] == 1)

        keys = (self._record(items, rid), *(k for i in items for k in i.keys(at)))
        args = (client_now, rid, len(items), *_encode(items, at))
        return Call(script("undo"), keys, args, read, True, request_id)

    def take_back(self, items: Sequence[Item], request_id: str, local: int) -> Call:
        """Plan an undo of whatever ``request_id`` charged ``items``, planned now.

        For a caller who lost track of an acquire: the charge's own instant is
        not known, so the undo plans the windows open now. A charge made in a
        window that has closed since owes nothing back, as in every undo.
        """
        return self.undo(items, request_id, self.planned(local)[0], local)

    def _undone(
        self, items: Sequence[Item], request_id: str, at: int, local: int, undone: bool
    ) -> Call:
        """A read-only check of ``items``, read as the report of an undo."""
        check = self.check(items, local)

        def read(reply: Sequence[Any]) -> Any:
            found = check.read(reply)
            if isinstance(found, Call):
                return self._undone(items, request_id, at, local, undone)
            return Charged(False, found.decisions, request_id, at, undone=undone)

        return check._replace(read=read)

    def record_ttl(self, request_id: str | None) -> tuple[str, int]:
        """The id a recorded call runs under, and how long its record lives:
        a caller's id for ``request_ttl``, a fresh one for ``retry_ttl``."""
        if request_id is None:
            return self._new_id(), self.retry_ttl
        request_part(request_id)
        return request_id, self.request_ttl

    # -- helpers -----------------------------------------------------------------

    def _single(self, item: Item, local: int, charge: bool) -> Call:
        """A hit or peek by the kind's own script (``lua/hit_<kind>.lua``)."""
        codec, units = item.codec, item.units
        t, client_now = self.planned(local)
        lua = codec.hit if charge else codec.peek
        assert lua is not None
        call_id = self._new_id() if codec.kind == SLIDING_LOG and charge else ""
        args = codec.single_args(client_now, units, item.flags, t, call_id)

        def read(reply: Any) -> Any:
            if type(reply) is int:
                return codec.fitted(reply, units, codec.window(t)[1])
            if len(reply) <= 3 and reply[0] >= 0:
                # {used, stop}: all of the cost fitted (kinds with no window),
                # and the override's limit when one was in force.
                return codec.fitted(reply[0], units, reply[1], *reply[2:])
            status = reply[0]
            if status == READ_HOLDS:
                # The spend cap holds something the kind's script cannot
                # weigh alone: the script that reads the holds decides.
                if charge:
                    return self.charge([item], "", None, local, True)
                return self.check([item], local, True)
            now = reply[1]
            self.observe(now, local)
            if status == REPLAN:
                return self._single(item, local, charge)
            used, held, stop, retry_at, grant = reply[2:7]
            limit = reply[7] if len(reply) > 7 else None
            granted = grant if charge else 0
            return codec.decision(
                status, used, held, stop, retry_at, granted, now, limit, limit is not None
            )

        return Call(lua, codec.single_keys(item.base, t), args, read)

    def _hold(self, item: Item, request_id: str | None, local: int) -> Held:
        if request_id is None:
            # Nobody can send this call again, so nothing needs remembering:
            # the hold or lease is kept under the fresh id. A hold that waits
            # for replicas is remembered, to be replayed after a failed wait.
            visible = self._new_id()
            ttl = None if item.codec.wait is None else self.retry_ttl
        else:
            visible, ttl = request_id, self.request_ttl
        rid = request_part(visible)
        return Held(self.charge([item], visible, ttl, local, one=True), item, rid)

    def _outcome(
        self,
        name: str,
        item: Item,
        rid: str,
        args: Callable[[int, int | str], tuple[Arg, ...]],
        statuses: tuple[SettleStatus, ...],
        local: int,
        later: bool = False,
    ) -> Call:
        t, client_now = self.planned(local)
        codec = item.codec

        def read(reply: Sequence[Any]) -> Any:
            code, now = reply[0], reply[1]
            self.observe(now, local)
            if code == REPLAN:
                return self._outcome(name, item, rid, args, statuses, local, later)
            if later:
                return LaterSettlement(
                    partial(_spend_settlement, codec, reply, now, statuses[code - 1])
                )
            return _spend_settlement(codec, reply, now, statuses[code - 1])

        keys = (
            *codec.state_keys(item.base, t),
            _keys.outcome_key(item.base, rid),
            _keys.override_key(item.base),
        )
        return Call(script(name), keys, args(t, client_now), read, True)

    def _hold_outcome(
        self,
        name: str,
        item: Item,
        rid: str,
        actual: tuple[int, ...],
        call: str,
        local: int,
        later: bool = False,
    ) -> Call:
        """A settle or release of a hold on a rate limit (``lua/settle_hold.lua``)."""
        t, client_now = self.planned(local)
        statuses = _SETTLED if actual else _RELEASED
        ttl = self._outcome_ttl(rid)

        def read(reply: Sequence[Any]) -> Any:
            code, now = reply[0], reply[1]
            self.observe(now, local)
            if code == REPLAN:
                return self._hold_outcome(name, item, rid, actual, call, local, later)
            if later:
                return LaterSettlement(
                    partial(_held_settlement, item, reply, now, statuses[code - 1])
                )
            return _held_settlement(item, reply, now, statuses[code - 1])

        # The reservation's id, the call's, the actual and the hold's cost
        # change between ends of one limit and subject's holds; the rest is
        # encoded once a window (`Template`).
        wires = item.codec.held_wires
        shape = (name, item.base, item.flags, item.hold, ttl)
        slotted = client_now == "" and _slotted(rid) and _slotted(call)
        kept = wires.get(shape) if slotted else None
        values = [rid, call, *actual, item.units]
        if kept is not None and kept[0] <= t < kept[1]:
            keys, args = kept[2].filled(values)
            return Call(script(name), keys, args, read, True, None, None, kept[2].wire(values))
        item_keys, encoded = item.wire(t)
        args = (client_now, rid, *actual, ttl, call, 1, *encoded)
        keys = (_keys.outcome_key(item.base, rid), *item_keys)
        if slotted:
            costs = COST_SLOTS[: len(actual) + 1]
            head, _, tail = encoded
            planned = (client_now, ID_SLOT, *costs[:-1], ttl, CALL_SLOT, 1, head, costs[-1], tail)
            named = (_keys.outcome_key(item.base, ID_SLOT), *item_keys)
            if len(wires) >= _MAX_WIRES:
                wires.clear()  # past windows and subjects gone quiet
            start, stop = item.codec.span(t)
            wires[shape] = (start, stop, Template(script(name).sha_bytes, named, planned))
        return Call(script(name), keys, args, read, True)

    def _outcome_ttl(self, request_id: str) -> int:
        # A generated id is only ever sent again by this process's own
        # retries; a caller's id may come back from anywhere for a day.
        return self.retry_ttl if request_id.startswith("@") else self.request_ttl

    def _held(self, local: int) -> Callable[[Sequence[Any]], bool]:
        def read(reply: Sequence[Any]) -> bool:
            self.observe(reply[1], local)
            return bool(reply[0] == 1)

        return read

    def _locate(self, spec: Spec[Any], subject: str) -> tuple[str, str]:
        """The subject's hash tag and the spec's base key, after checking both."""
        if not isinstance(spec, Spec):
            raise InvalidInput(f"expected a limit spec, got {type(spec).__name__}")
        if type(subject) is not str:
            raise InvalidInput(f"subject must be a str, got {type(subject).__name__}")
        if len(subject) > MAX_SUBJECT:
            raise InvalidInput(f"subject must be at most {MAX_SUBJECT} characters")
        tag = _TAGS.get(subject)
        if tag is None:
            tag = _keys.subject_tag(subject)
            if len(subject) <= _CACHED_SUBJECT:
                if len(_TAGS) >= _MAX_TAGS:
                    _TAGS.clear()
                _TAGS[subject] = tag
        return tag, _keys.limit_key(self._ns, tag, codec_of(spec).tail)

    def _record(self, items: Sequence[Item], rid: str) -> str:
        if len(items) == 1:
            return _keys.request_record(items[0].base, rid)
        return _keys.acquire_record(self._ns, items[0].tag, [i.base for i in items], rid)


def _encode(items: Sequence[Item], t: int) -> tuple[Arg, ...]:
    if len(items) == 1:
        return items[0].encoded(t)
    args: list[Arg] = []
    for item in items:
        args.extend(item.encoded(t))
    return tuple(args)


def _wait(items: Sequence[Item]) -> Wait | None:
    """What the items' charge waits for: the most replicas any asks for, as
    long as any waits."""
    if len(items) == 1:
        return items[0].codec.wait
    waits = [item.codec.wait for item in items if item.codec.wait is not None]
    if len(waits) <= 1:
        return waits[0] if waits else None
    return Wait.of(max(w.replicas for w in waits), max(w.timeout_ms for w in waits))


def confirm(outcome: Acked, wait: Wait, request_id: str | None) -> None:
    """Raise unless WAIT says enough replicas have the charge just made.

    The charge stands on the primary either way; what is unknown is whether
    it would survive a failover. Its record makes sending it again with
    ``request_id`` a replay, which waits for the replicas once more.
    """
    acked = outcome.replicas
    if type(acked) is int and acked >= wait.replicas:
        return
    if isinstance(acked, BaseException):
        found = f"WAIT was refused ({type(acked).__name__}: {acked})"
    else:
        found = f"{acked} of {wait.replicas} replicas acknowledged it within {wait.timeout_ms} ms"
    err = BackendError(
        f"charge: made on the primary, but {found}", applied="unknown", request_id=request_id
    )
    if isinstance(acked, BaseException):
        raise err from acked
    raise err


def _decisions(
    items: Sequence[Item], reply: Sequence[Any], now: int, charged: bool, replayed: bool = False
) -> list[Decision[Any]]:
    decisions = []
    count = len(items)
    for n, item in enumerate(items):
        status, used, held, stop, retry_at, grant = item_reply(reply, n)
        # A replay is the first decision: under the limit it was made with,
        # though the spec's limit may have changed since.
        # Outside a replay, a trailing limit is an override's.
        limit = replayed_limit(reply, n, count)
        overridden = limit is not None and not replayed
        decisions.append(
            item.codec.decision(
                status, used, held, stop, retry_at, grant if charged else 0, now, limit, overridden
            )
        )
    return decisions


def _discard(reply: object) -> None:
    return None


def request_part(request_id: object) -> str:
    """A request id as it stands in keys and scripts."""
    request_id = check_request_id(request_id)
    # Generated ids ("@" and 24 hex digits) stand as they are, so one handed
    # out in a BackendError works as a request_id; every other id is encoded
    # like a subject, and encoding never yields "@", so the two never meet.
    if GENERATED.fullmatch(request_id):
        return request_id
    return _keys.encode(request_id)

"""The kinds of limit, and how each travels to its scripts and back.

One table, mirroring ``lua/lib/items.lua``: for each kind, the keys it keeps,
how its arguments are encoded, which scripts decide a single hit or peek, and
how a reply becomes a [`Decision`][atomlimit.Decision]. A spec's codec is made
once, on the spec's first use, and keeps everything the spec fixes already
encoded, so a call only adds what varies.

Replies come in two shapes:

- a kind's own script (``hit_<kind>.lua``, ``peek_<kind>.lua``) answers a
  charge that fitted whole, the common case, with an integer, the units
  used after it (fixed windows and spend caps, whose window the client
  named), or ``[used, stop]`` (the other kinds); anything else with
  ``[status, now, used, held, stop, retry_at, grant]``; ``[-1, now]`` asks
  for a re-plan around the server's clock, and ``[-3]`` (spend caps) for
  the script that reads the holds;
- the scripts of several items (``charge.lua``, ``peek.lua``, ``undo.lua``,
  ``refund.lua``) answer ``[code, now]`` then six integers per item:
  ``status, used, held, stop, retry_at, grant``. A replay (code 2) of a
  recorded charge or refund adds each item's limit, in units, as it was
  when the call was first decided.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any, Final, Generic
from zoneinfo import ZoneInfo

from atomlimit import _keys
from atomlimit._inputs import check_int
from atomlimit._money import MAX_UNITS, Amount, from_units, to_units
from atomlimit._runner_steps import Wait
from atomlimit._scripts import Script, script
from atomlimit._windows import UNIT_LENGTHS, WindowPlan
from atomlimit._wire import Arg, Packed, Template
from atomlimit.decision import Decision, decided
from atomlimit.specs import Concurrency, RateLimit, Spec, SpendCap

_US = timedelta(microseconds=1)
_COSTS = 256
"""Distinct Decimal costs a spend cap's codec keeps converted."""

# What the scripts and this module must agree on, defined once on each side:
# tests/core/test_wire_codes.py reads the Lua copies and proves them equal.

FIXED_WINDOW, GCRA, SLIDING_LOG, SLIDING_COUNTER = "fw", "gc", "sl", "sw"
SPEND, RESERVATION, CONCURRENCY = "sc", "rs", "cc"
HELD_FIXED_WINDOW, HELD_GCRA, HELD_SLIDING_COUNTER = "hfw", "hgc", "hsw"
KIND_NAMES: Final = {
    FIXED_WINDOW: "fixed_window",
    GCRA: "gcra",
    SLIDING_COUNTER: "sliding_counter",
    SLIDING_LOG: "sliding_log",
    SPEND: "spend_cap",
    RESERVATION: "reservation",
    CONCURRENCY: "concurrency",
    HELD_FIXED_WINDOW: "fixed_window_hold",
    HELD_GCRA: "gcra_hold",
    HELD_SLIDING_COUNTER: "sliding_counter_hold",
}
"""Each kind's code, as items name it (``lua/lib/items.lua``) and keys hold it,
and the name a person reads. A reservation is a hold: on a spend cap an item
of its own kind kept in the cap's keys (``lib/spend.lua``); on a rate limit
a charge of the limit's own kind with a record beside it
(``lib/rate_hold.lua``)."""
PARTIAL, SHADOW, GUARD, SLOW_START = 1, 2, 4, 8
"""An item's flags (``lua/lib/reply.lua``): take what fits; count but admit;
an upstream's limit, whose guard (a pause, outside use) is its last key; and
with it, hold back half of the first window until the provider reports."""
DENIED, FITS, SHADOWED = 0, 1, 3
"""An item's status in a reply (``lua/lib/reply.lua``)."""
REPLAN, REUSED, READ_HOLDS, RECORDED = -1, -2, -3, -4
"""Reply codes of a call that did nothing: the server's clock is outside the
planned windows; the request id was used for other costs; a spend cap's
holds must be read by the script of several items; a subject of a one-script
acquire has a record already (``lua/acquire.lua``)."""
GCRA_BASE = 1_735_689_600_000_000
"""2025-01-01 in epoch microseconds: GCRA keeps its arrival time counted from
here (``lua/lib/gcra.lua``), so a float holds it to the microsecond."""


ALWAYS = (-(2**63), 2**63)
"""Every instant: the `span` of a kind whose keys and arguments never change."""
_MAX_PACKS = 64
"""Encoded runs of item arguments one codec keeps (`Codec.packed`)."""


class Codec(Generic[Amount]):
    """One spec's view of its kind: the spec's constants, encoded once."""

    __slots__ = (
        "_packs",
        "flags",
        "held_wires",
        "limit",
        "limit_value",
        "spec",
        "tail",
        "wires",
        "zero",
    )

    spec: Spec[Amount]
    limit: int
    limit_value: Amount
    zero: Amount
    kind: str
    """The scripts' name for the kind (``lua/lib/items.lua``)."""
    hit: Script | None = None
    """The kind's own script for a single hit; None: it goes through charge.lua."""
    peek: Script | None = None
    wait: Wait | None = None
    """Replicas a charge waits for (``SpendCap.wait_replicas``), if any."""
    held: str | None = None
    """The scripts' name for a hold on the kind; None: it cannot hold."""

    def __init__(self, spec: Spec[Amount], limit: int, limit_value: Amount) -> None:
        self.spec = spec
        self.tail = _keys.limit_tail(self.kind, spec.name)
        self.limit = limit
        """What ``remaining`` is measured against, in units."""
        self.limit_value = limit_value
        """``Decision.limit``."""
        self.flags = SHADOW if getattr(spec, "shadow", False) else 0
        self.zero = self.amount(0)
        self._packs: dict[tuple[Arg, ...], Packed] = {}
        self.wires: dict[tuple[Any, ...], tuple[tuple[str, ...], Packed, Packed]] = {}
        """An item's keys and encoded arguments around its cost, by base key,
        flags, hold and `era` (`atomlimit._engine.Item.wire`)."""
        self.held_wires: dict[tuple[Any, ...], tuple[int, int, Template]] = {}
        """A hold's settle and release, encoded but for their ids and costs,
        by script, base key, flags, hold and outcome TTL, with the instants
        they hold for (`atomlimit._engine.Engine.settle`)."""

    # -- what a call sends ---------------------------------------------------

    def era(self, t: int) -> int | None:
        """What of the instant ``t`` the kind's keys and arguments depend on:
        None for a kind whose keys and arguments are the same at any instant."""
        return None

    def span(self, t: int) -> tuple[int, int]:
        """The instants of ``t``'s `era`, from the first to past the last."""
        return ALWAYS

    def units(self, cost: object) -> int:
        """A cost in integer units, or InvalidInput."""
        if type(cost) is int and 0 <= cost <= MAX_UNITS:
            return cost
        return check_int(cost, "cost", 0, MAX_UNITS)

    def state_keys(self, base: str, t: int) -> tuple[str, ...]:
        """Every key the kind's state lives in, at the planned instant ``t``."""
        return (base,)

    def single_keys(self, base: str, t: int) -> tuple[str, ...]:
        """The keys of the kind's own hit and peek scripts: the state, then
        the override's hash."""
        return (*self.state_keys(base, t), _keys.override_key(base))

    def marked_keys(self, base: str, t: int) -> tuple[str, ...]:
        """Keys an override's change rewrites besides its hash: the state
        that carries its mark (a fixed window's open counters,
        ``lua/lib/fixed_window.lua``; a GCRA's TAT, ``lua/lib/gcra.lua``)."""
        return ()

    def override_args(self, limit: int, burst: int | None) -> tuple[Arg, ...]:
        """The limit, burst and interval an override stores, in units."""
        return (limit, "", "")

    def hold_keys(self, base: str, t: int) -> tuple[str, ...]:
        """The keys of a hold on the kind: its state, then the holds' record."""
        return (*self.state_keys(base, t), *_keys.hold_keys(base))

    def reset_keys(self, base: str, t: int) -> tuple[str, ...]:
        """What ``reset`` deletes: the state at ``t`` and any it could still count."""
        return (*self.state_keys(base, t), *self.hold_record(base))

    def hold_record(self, base: str) -> tuple[str, ...]:
        """The record of holds kept beside the kind's state, which a reset forgets too.

        A hold on a rate limit is charged into the state; if its record
        outlived a reset, giving the hold back later would take back charges
        made after the reset, and the limit would admit more than it allows.
        """
        return _keys.hold_keys(base) if self.held is not None else ()

    def extras(self, t: int) -> tuple[Arg, ...]:
        """The kind's own arguments, after limit, cost and flags."""
        return ()

    def item_args(self, units: int, flags: int, t: int) -> tuple[Arg, ...]:
        """The item's arguments for the scripts of several items."""
        return (self.limit, units, flags, *self.extras(t))

    def packed(self, args: tuple[Arg, ...]) -> Packed:
        """``args`` encoded, once per run of arguments that recurs.

        An item's arguments but its cost are the same on every call of the
        spec in a window (kind, counts, limit; flags, the window, the
        hold), and encoding them was most of a call's planning.
        """
        packed = self._packs.get(args)
        if packed is None:
            if len(self._packs) >= _MAX_PACKS:
                self._packs.clear()  # windows past: a few entries per window
            packed = self._packs[args] = Packed(args)
        return packed

    def single_args(
        self, client_now: int | str, units: int, flags: int, t: int, call_id: str
    ) -> tuple[Arg | Packed, ...]:
        """ARGV of the kind's own scripts: client time, cost, limit, flags, extras."""
        return (client_now, units, self.limit, flags, *self.extras(t))

    # -- what comes back -------------------------------------------------------

    def amount(self, units: int) -> Amount:
        """Units as the amount type of the spec's decisions."""
        return units  # type: ignore[return-value]

    def decision(
        self,
        status: int,
        used: int,
        held: int,
        stop: int,
        retry_at: int,
        grant: int,
        now: int,
        limit: int | None = None,
        overridden: bool = False,
    ) -> Decision[Amount]:
        """The Decision of one item's reply; ``grant`` is what this call charged.

        ``limit``, in units, is the limit a replayed charge was decided
        under, which the spec may since have changed, or the override's
        (``overridden``); None: the spec's.
        """
        retry = max(retry_at - now, 1) if status == DENIED and retry_at else None
        units = type(self).amount is _UNITS
        limit_value: Any
        if limit is None:
            limit, limit_value = self.limit, self.limit_value
        else:
            limit_value = limit if units else self.amount(limit)
        left: Any = max(limit - used - held, 0)
        spent: Any = used
        granted: Any = grant
        kept: Any = held
        if not units:
            # A spend cap's integers are units of money; a count's are the
            # amounts already.
            amount = self.amount
            left, spent, granted, kept = amount(left), amount(used), amount(grant), amount(held)
        return decided(
            status != DENIED,
            limit_value,
            spent,
            left,
            stop,
            retry,
            granted,
            kept,
            status == SHADOWED,
            self.spec,
            "override" if overridden else "spec",
        )

    def fitted(
        self, used: int, grant: int, stop: int, limit: int | None = None
    ) -> Decision[Amount]:
        """The Decision of a whole cost that fitted, answered as a bare integer;
        ``limit`` is an override's, in units, when one was in force."""
        if limit is not None:
            return self.decision(FITS, used, 0, stop, 0, grant, 0, limit, True)
        amount = self.amount
        return decided(
            True,
            self.limit_value,
            amount(used),
            amount(max(self.limit - used, 0)),
            stop,
            None,
            amount(grant),
            self.zero,
            False,
            self.spec,
        )

    def window(self, t: int) -> tuple[int, int]:
        """The planned window at ``t``; only windowed kinds have one."""
        raise NotImplementedError


_UNITS = Codec.amount
"""The amount of a codec that counts in units: the units themselves."""


class _Windowed(Codec[Amount]):
    """A kind counted per calendar or fixed window, one key per window."""

    __slots__ = ("_current", "_plan")

    def __init__(self, spec: Any, limit: int, limit_value: Any) -> None:
        super().__init__(spec, limit, limit_value)
        self._plan = WindowPlan(spec.window, ZoneInfo(spec.tz))
        # (start, stop, key suffix, packed limit/flags/start/stop), swapped
        # whole so threads never see half of one.
        self._current: tuple[int, int, str, Packed] = (0, 0, "", Packed(()))

    def _at(self, t: int) -> tuple[int, int, str, Packed]:
        current = self._current
        if current[0] <= t < current[1]:
            return current
        _, start, stop, _ = self._plan.bounds(t)
        packed = Packed((self.limit, self.flags, start, stop))
        current = (start, stop, _keys.window_suffix(start), packed)
        self._current = current
        return current

    def window(self, t: int) -> tuple[int, int]:
        start, stop, _, _ = self._at(t)
        return start, stop

    def era(self, t: int) -> int:
        # The window's start names its key and is sent with its stop.
        return self._at(t)[0]

    def span(self, t: int) -> tuple[int, int]:
        start, stop, _, _ = self._at(t)
        return start, stop

    def window_key(self, base: str, t: int) -> str:
        """The key of the window at ``t``: the base key and the window's start in ms."""
        return base + self._at(t)[2]

    def state_keys(self, base: str, t: int) -> tuple[str, ...]:
        return (self.window_key(base, t),)

    def marked_keys(self, base: str, t: int) -> tuple[str, ...]:
        first, start, stop, _ = self._plan.bounds(t)
        return tuple(_keys.window_key(base, at) for at in (first, start, stop))

    def reset_keys(self, base: str, t: int) -> tuple[str, ...]:
        # The windows before and after too: the server's clock may sit in
        # either while the client plans this one.
        first, start, stop, _ = self._plan.bounds(t)
        windows = tuple(_keys.window_key(base, at) for at in (first, start, stop))
        return windows + self.state_keys(base, t)[1:] + self.hold_record(base)

    def extras(self, t: int) -> tuple[Arg, ...]:
        start, stop, _, _ = self._at(t)
        return (start, stop)

    def single_args(
        self, client_now: int | str, units: int, flags: int, t: int, call_id: str
    ) -> tuple[Arg | Packed, ...]:
        start, stop, _, packed = self._at(t)
        if flags == self.flags:
            return (client_now, units, packed)
        return (client_now, units, self.limit, flags, start, stop)


class FixedWindow(_Windowed[int]):
    """``RateLimit(algorithm="fixed_window")``: a counter per window."""

    __slots__ = ()
    kind = FIXED_WINDOW
    held = HELD_FIXED_WINDOW
    hit = script("hit_fixed_window")
    peek = script("peek_fixed_window")

    def __init__(self, spec: Any) -> None:
        super().__init__(spec, spec.limit, spec.limit)


class Spend(_Windowed[Decimal]):
    """``SpendCap``: committed spend per window, and holds that belong to none."""

    __slots__ = ("_amounts", "_costs", "_exponent", "_places", "_subtracts")
    kind = SPEND
    held = RESERVATION
    hit: Script | None = script("hit_spend")
    peek = script("peek_spend")

    def __init__(self, spec: Any) -> None:
        self._exponent = -spec.unit.adjusted()
        # Amounts are shown with as many decimals as the limit was written
        # with, never fewer: Decimal("100.00") reports 0.37, not 0.370000.
        self._places = min(max(0, -int(spec.limit.as_tuple().exponent)), self._exponent)
        self._costs: dict[Decimal, int] = {}
        self._amounts: dict[int, Decimal] = {}
        # The limit less an amount has the digits from_units would give,
        # unless the limit is written with more decimals than are shown.
        self._subtracts = int(spec.limit.as_tuple().exponent) >= -self._places
        super().__init__(spec, to_units(spec.limit, self._exponent, "limit"), spec.limit)
        self.tail = _keys.cap_tail(self.kind, spec.name, spec.currency, self._exponent)

    def units(self, cost: object) -> int:
        # Costs repeat (a price per call, a per-token rate): converting one
        # exactly costs more than the rest of a hit's planning, so the last
        # few are kept. Only Decimals: a bool equals an int as a dict key.
        if type(cost) is Decimal:
            try:
                units = self._costs.get(cost)
            except TypeError:
                # A signalling NaN refuses to be hashed; to_units, the one
                # check of an amount, refuses it as bad input.
                units = None
            if units is None:
                units = to_units(cost, self._exponent, "cost")
                if len(self._costs) >= _COSTS:
                    self._costs.clear()
                self._costs[cost] = units
            return units
        return to_units(cost, self._exponent, "cost")

    def amount(self, units: int) -> Decimal:
        return from_units(units, self._exponent, self._places)

    def fitted(
        self, used: int, grant: int, stop: int, limit: int | None = None
    ) -> Decision[Decimal]:
        if limit is not None:
            return self.decision(FITS, used, 0, stop, 0, grant, 0, limit, True)
        # Making Decimals was most of what a spend hit cost over a count's:
        # a grant is a cost, which repeats, so the last few are kept, and
        # what remains is the limit less what is used, one subtraction.
        granted = self._amounts.get(grant)
        if granted is None:
            granted = self.amount(grant)
            if len(self._amounts) >= _COSTS:
                self._amounts.clear()
            self._amounts[grant] = granted
        spent = self.amount(used)
        if used >= self.limit:
            remaining = self.zero
        elif self._subtracts:
            remaining = self.limit_value - spent
        else:
            remaining = self.amount(self.limit - used)
        return decided(
            True,
            self.limit_value,
            spent,
            remaining,
            stop,
            None,
            granted,
            self.zero,
            False,
            self.spec,
        )

    def state_keys(self, base: str, t: int) -> tuple[str, ...]:
        return (self.window_key(base, t), *_keys.hold_keys(base))

    def hold_keys(self, base: str, t: int) -> tuple[str, ...]:
        # The cap's holds are part of its state: every charge weighs them.
        return self.state_keys(base, t)

    def hold_record(self, base: str) -> tuple[str, ...]:
        return ()  # in the state keys already

    def single_keys(self, base: str, t: int) -> tuple[str, ...]:
        return (self.window_key(base, t), _keys.override_key(base))

    def marked_keys(self, base: str, t: int) -> tuple[str, ...]:
        return ()  # a cap's scripts read the override's hash on every call


class WaitingSpend(Spend):
    """A ``SpendCap`` with ``wait_replicas``: each charge waits for replicas.

    A charge whose replicas do not confirm in time has still been made on
    the primary, so it must carry a record for the caller to send it again
    as a replay: it never runs the record-less single-hit script.
    """

    __slots__ = ("wait",)
    hit = None

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.wait = Wait.of(spec.wait_replicas, spec.wait_timeout // timedelta(milliseconds=1))


class Gcra(Codec[int]):
    """``RateLimit(algorithm="gcra")``: the theoretical arrival time."""

    __slots__ = ("_interval", "_packed")
    kind = GCRA
    held = HELD_GCRA
    hit = script("hit_gcra")
    peek = script("peek_gcra")

    def __init__(self, spec: Any) -> None:
        super().__init__(spec, spec.burst or spec.limit, spec.burst or spec.limit)
        # The emission interval, in microseconds: each unit of cost moves the
        # theoretical arrival time on by this much.
        self._interval = repr(length_us(spec) / spec.limit)
        # Burst, flags and interval follow the cost, the same on every call
        # with the spec's own flags, so they are encoded once.
        self._packed = Packed((self.limit, self.flags, self._interval))

    def extras(self, t: int) -> tuple[Arg, ...]:
        return (self._interval,)

    def override_args(self, limit: int, burst: int | None) -> tuple[Arg, ...]:
        # A burst defaults to the limit, as a spec's does.
        return (limit, burst or limit, repr(length_us(self.spec) / limit))

    def marked_keys(self, base: str, t: int) -> tuple[str, ...]:
        # The TAT carries the override's mark (lua/lib/gcra.lua).
        return self.state_keys(base, t)

    def single_args(
        self, client_now: int | str, units: int, flags: int, t: int, call_id: str
    ) -> tuple[Arg | Packed, ...]:
        if flags == self.flags:
            return (client_now, units, self._packed)
        return (client_now, units, self.limit, flags, self._interval)


class SlidingLog(Codec[int]):
    """``RateLimit(algorithm="sliding_log")``: one entry per unit admitted."""

    __slots__ = ("_length",)
    kind = SLIDING_LOG
    hit = script("hit_sliding_log")
    peek = script("peek_sliding_log")

    def __init__(self, spec: Any) -> None:
        super().__init__(spec, spec.limit, spec.limit)
        self._length = length_us(spec)

    def extras(self, t: int) -> tuple[Arg, ...]:
        return (self._length,)

    def single_args(
        self, client_now: int | str, units: int, flags: int, t: int, call_id: str
    ) -> tuple[Arg | Packed, ...]:
        # Entries are named by the call, so an undo removes exactly its own.
        return (client_now, units, self.limit, flags, self._length, call_id)


class SlidingCounter(Codec[int]):
    """``RateLimit(algorithm="sliding_counter")``: this window and the last, weighted."""

    __slots__ = ("_length",)
    kind = SLIDING_COUNTER
    held = HELD_SLIDING_COUNTER
    hit = script("hit_sliding_counter")
    peek = script("peek_sliding_counter")

    def __init__(self, spec: Any) -> None:
        super().__init__(spec, spec.limit, spec.limit)
        self._length = length_us(spec)

    def extras(self, t: int) -> tuple[Arg, ...]:
        return (self._length,)


class LeaseSet(Codec[int]):
    """``Concurrency``: a sorted set of leases, scored by expiry."""

    __slots__ = ("_lease",)
    kind = CONCURRENCY

    def __init__(self, spec: Any) -> None:
        super().__init__(spec, spec.limit, spec.limit)
        self._lease: int = spec.lease // _US

    def units(self, cost: object) -> int:
        return check_int(cost, "cost", 1, 1)

    def extras(self, t: int) -> tuple[Arg, ...]:
        return (self._lease,)


def codec_of(spec: Spec[Any]) -> Codec[Any]:
    """``spec``'s codec: made on the spec's first use, then kept with it.

    Kept in the instance's own dict, as a cached_property would be, so it
    lives and dies with the spec; pydantic compares, hashes and dumps a
    model by its fields alone, which this entry is not one of.
    """
    kept = spec.__dict__
    try:
        return kept[_CODEC]  # type: ignore[no-any-return]
    except KeyError:
        codec = kept[_CODEC] = codec_for(spec)
        return codec


def codec_for(spec: Spec[Any]) -> Codec[Any]:
    """A new codec of ``spec``'s kind."""
    if isinstance(spec, SpendCap):
        return WaitingSpend(spec) if spec.wait_replicas else Spend(spec)
    if isinstance(spec, Concurrency):
        return LeaseSet(spec)
    assert isinstance(spec, RateLimit)
    return _RATE_KINDS[spec.algorithm](spec)


_CODEC = "_codec"
_RATE_KINDS: dict[str, type[FixedWindow | Gcra | SlidingLog | SlidingCounter]] = {
    "fixed_window": FixedWindow,
    "gcra": Gcra,
    "sliding_log": SlidingLog,
    "sliding_counter": SlidingCounter,
}


GENERATED = re.compile(r"@[0-9a-f]{24}")
"""The ids made for calls that carry none (`new_id`)."""


_MADE: deque[str] = deque()
"""Ids made ahead, each of 12 random bytes. A call's acquire and its end
take one each: read one at a time, the system call behind each cost a
model call about 3 % of its client time under load. A deque's popleft is
atomic, so threads sharing the process never get the same id."""
_AHEAD = 64
os.register_at_fork(after_in_child=_MADE.clear)  # a child makes its own


def new_id() -> str:
    """A fresh id for a call that has none; ``@`` never starts an encoded one.

    As random as one read on its own: ids are made 64 at a time from the
    operating system's random source, and a forked child drops those its
    parent made.
    """
    while True:
        try:
            return _MADE.popleft()
        except IndexError:
            made = os.urandom(12 * _AHEAD).hex()
            _MADE.extend(f"@{made[i : i + 24]}" for i in range(0, 24 * _AHEAD, 24))


def item_reply(reply: Sequence[Any], index: int) -> Sequence[Any]:
    """The six integers of item ``index`` in a reply of several items."""
    first = 2 + 6 * index
    return reply[first : first + 6]


def replayed_limit(reply: Sequence[Any], index: int, count: int) -> int | None:
    """The limit item ``index`` of ``count`` was charged under, from a replay's
    reply, or None when its record is older than the limits it now keeps.

    Outside a replay, the same trailing limits say which items an override
    applied to: -1 for an item under its spec's limit (``limits_reply`` in
    ``lua/lib/items.lua``)."""
    if len(reply) != 2 + 7 * count:
        return None
    limit: int = reply[2 + 6 * count + index]
    return None if limit < 0 else limit


def length_us(spec: Any) -> int:
    """A sliding or GCRA limit's window, or a calendar unit's fixed length, in microseconds."""
    length = spec.window if isinstance(spec.window, timedelta) else UNIT_LENGTHS[spec.window]
    return length // _US

"""A budgeted model call, as plain data: what its acquire charges, and what
its end sends.

A call's acquire is one all-or-nothing acquire over the upstream's limits
(one subject for the fleet) and the client's; its end is one batch of calls
sent in one round trip: each reservation settled or released, each lease
given back, the provider's figures applied and any pause taken. The handles
in `atomlimit._async.calls` (and, generated from it, `atomlimit._sync.calls`)
only send what is planned here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any, NamedTuple

from atomlimit._acquire import Acquisition, checked_items
from atomlimit._codecs import GUARD, SLOW_START
from atomlimit._engine import Engine, Item, Kept
from atomlimit._errors import InvalidInput
from atomlimit._inputs import MAX_SUBJECT, show
from atomlimit._later import Later
from atomlimit._provider_headers import ProviderReport, Quota, read_headers
from atomlimit._runner_steps import Call
from atomlimit.decision import Decision
from atomlimit.specs import Hit
from atomlimit.upstream import MAX_PAUSE, ClientLimits, Role, Upstream

_log = logging.getLogger("atomlimit")
_US = timedelta(microseconds=1)
_GUARDED: tuple[Role, ...] = ("requests", "tokens")
"""The roles whose limits are the provider's own, which its figures and its
pauses apply to."""
_QUOTAS: dict[Quota, Role] = {"requests": "requests", "tokens": "tokens"}
"""The provider's quotas, by the role of the upstream's limits they measure."""


class Planned(NamedTuple):
    """A call's hits, in acquire order, with the role and side of each."""

    hits: Sequence[Hit[Any]]
    roles: list[Role]
    guards: list[int]
    """The guard flags of the upstream's own requests and tokens limits; 0
    for the other hits."""
    kept: Kept | None = None
    """The acquire's encoding, kept by a call's shape (`CallShapes`)."""


def plan(
    upstream: object,
    client: object,
    tokens: object,
    cost: object,
    limits: object,
    ttl: timedelta,
) -> Planned:
    """The hits of one call: the upstream's limits, then the client's."""
    if not isinstance(upstream, Upstream):
        raise InvalidInput(f"call takes an Upstream, got {type(upstream).__name__}")
    if limits is not None and (
        not isinstance(limits, ClientLimits) or isinstance(limits, Upstream)
    ):
        raise InvalidInput(f"limits must be ClientLimits or None, got {type(limits).__name__}")
    if limits is not None and (type(client) is not str or not 0 < len(client) <= MAX_SUBJECT):
        raise InvalidInput(
            f"client must be a str of 1 to {MAX_SUBJECT} characters when limits are given, "
            f"got {show(client)}"
        )
    hits: list[Hit[Any]] = []
    roles: list[Role] = []
    guards: list[int] = []
    sides: list[tuple[ClientLimits, str]] = [(upstream, upstream.name)]
    if limits is not None:
        assert isinstance(client, str)
        sides.append((limits, client))
    flags = GUARD | (SLOW_START if upstream.slow_start else 0)
    for side, subject in sides:
        for role, spec in side.limits():
            if role == "requests":
                hit: Hit[Any] = Hit(spec, subject, 1)
            elif role == "tokens":
                hit = Hit(spec, subject, tokens, hold=ttl)
            elif role == "spend":
                hit = Hit(spec, subject, cost, hold=ttl)
            else:
                hit = Hit(spec, subject)
            hits.append(hit)
            roles.append(role)
            guards.append(flags if side is upstream and role in _GUARDED else 0)
    return Planned(hits, roles, guards)


Ended = list[Any]
"""What a call's end sends back, in order: Settlements, and the corrections
(Decisions) of the provider's figures."""

Checked = tuple[list[Item], list[list[int]]]
"""A call's items, checked, and their indices grouped by subject (`checked_items`)."""


class _Shape(NamedTuple):
    """What every call of one upstream, client, limits and timeout plans
    alike: all but the tokens and cost."""

    upstream: Upstream
    limits: ClientLimits | None
    hits: Sequence[Hit[Any]]
    items: list[Item]
    groups: list[list[int]]
    roles: list[Role]
    guards: list[int]
    ttl: timedelta
    kept: Kept


class CallShapes:
    """The plans of a limiter's recent calls, kept by what each call names.

    Planning a call checks its upstream, its client and each limit of both,
    and finds every limit's keys: about a fifth of a call's work in the
    client (``bench/call_work.py``), and the same on every call of one
    upstream, client, limits and timeout. It is made once for those and
    kept; each call then checks its own tokens and cost, as planning them
    afresh would, in the same order and with the same errors.
    """

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[tuple[int, int, str | None, timedelta], _Shape] = {}

    def plan(
        self,
        engine: Engine,
        upstream: object,
        client: object,
        tokens: object,
        cost: object,
        limits: object,
        ttl: timedelta,
    ) -> tuple[Planned, Checked]:
        """The call's hits and its checked items, as `plan` then `checked_items` make them."""
        if not ((client is None or type(client) is str) and type(ttl) is timedelta):
            # Not a key a dict can take (or not a valid call): planned in full,
            # which refuses what it must.
            planned = plan(upstream, client, tokens, cost, limits, ttl)
            return planned, checked_items(engine, planned.hits, planned.guards)
        # By identity: the upstream and limits are kept in the shape, so an
        # id is not reused while its shape is known. Without limits of its
        # own the client names nothing, so every client shares one shape.
        key = (id(upstream), id(limits), client if limits is not None else None, ttl)
        shape = self._known.get(key)
        if shape is None or shape.upstream is not upstream or shape.limits is not limits:
            shape = _shaped(engine, upstream, client, limits, ttl)
            if len(self._known) >= _MAX_SHAPES:
                self._known.clear()
            self._known[key] = shape
        return _filled(shape, tokens, cost)


_MAX_SHAPES = 256
"""Call shapes a limiter keeps: an upstream per model, a client per caller
with limits of its own."""


def _shaped(
    engine: Engine, upstream: object, client: object, limits: object, ttl: timedelta
) -> _Shape:
    """A call's plan with no tokens and no cost: every check of the call but theirs."""
    planned = plan(upstream, client, 0, 0, limits, ttl)
    items, groups = checked_items(engine, planned.hits, planned.guards)
    assert isinstance(upstream, Upstream)
    assert limits is None or isinstance(limits, ClientLimits)
    return _Shape(
        upstream, limits, planned.hits, items, groups, planned.roles, planned.guards, ttl, Kept()
    )


def _made_hits(shape: _Shape, tokens: object, cost: object) -> list[Hit[Any]]:
    """A kept plan's hits with the call's tokens and cost. Made when first
    read (`Later`): only a policy deciding without the server, or an
    acquire over several subjects, reads them; a call's items carry the rest."""
    amounts = {"tokens": tokens, "spend": cost}
    return [
        Hit(hit.limit, hit.subject, amounts[role], hold=shape.ttl) if role in amounts else hit
        for hit, role in zip(shape.hits, shape.roles, strict=True)
    ]


def _filled(shape: _Shape, tokens: object, cost: object) -> tuple[Planned, Checked]:
    """``shape`` with the call's tokens and cost, each checked by its limit as
    `Engine.item` checks a cost."""
    items: list[Item] = []
    for item, role in zip(shape.items, shape.roles, strict=True):
        if role == "tokens":
            amount = tokens
        elif role == "spend":
            amount = cost
        else:
            items.append(item)
            continue
        units = item.codec.units(amount)
        items.append(
            Item(
                item.spec,
                item.subject,
                item.tag,
                item.base,
                item.codec,
                units,
                item.flags,
                item.hold,
            )
        )
    hits = Later(partial(_made_hits, shape, tokens, cost), len(shape.hits))
    planned = Planned(hits, shape.roles, shape.guards, shape.kept)
    return planned, (items, shape.groups)


@dataclass(slots=True)
class Ending:
    """What the block recorded for the call's end: actuals, reports, pauses."""

    tokens: int | None = None
    cost: Decimal | int | None = None
    reports: list[ProviderReport] | None = None
    last: ProviderReport | None = None
    """The report observed last, which a backoff reads."""
    pause: timedelta | None = None
    paused: tuple[Role, ...] = ()

    def settle(self, tokens: object, cost: object) -> None:
        # Checked when recorded, so a bad amount fails in the block, where
        # the caller can see it, and not at its end.
        if tokens is not None:
            if type(tokens) is not int or tokens < 0:
                raise InvalidInput(f"tokens must be an int of at least 0, got {show(tokens)}")
            self.tokens = tokens
        if cost is not None:
            if type(cost) is not int and not isinstance(cost, Decimal):
                raise InvalidInput(f"cost must be a Decimal or an int, got {show(cost)}")
            self.cost = cost

    def observe(self, headers: object) -> ProviderReport:
        report = self.last = read_headers(headers)
        if self.reports is None:
            self.reports = []
        if len(self.reports) < _MAX_REPORTS:
            self.reports.append(report)
        return report

    def backoff(self, retry_after: object) -> None:
        report = self.last
        if retry_after is None:
            retry_after = report.retry_after if report is not None else None
            if retry_after is None:
                raise InvalidInput(
                    "backoff: no retry_after given, and no Retry-After in the observed headers"
                )
            if retry_after > MAX_PAUSE:
                _log.debug("backoff: Retry-After of %s cut to %s", retry_after, MAX_PAUSE)
                retry_after = MAX_PAUSE
        pause = pause_length(retry_after)
        self.pause = pause if self.pause is None else max(self.pause, pause)
        self.paused = _exhausted(report)


_MAX_REPORTS = 16
"""Provider reports one call keeps: a call sees a response or a few."""


def pause_length(value: object) -> timedelta:
    """A pause's length: a timedelta or seconds, more than 0 and at most `MAX_PAUSE`."""
    if type(value) in (int, float) and not isinstance(value, bool):
        number: Any = value
        if number == number and 0 < number <= MAX_PAUSE.total_seconds():
            return timedelta(seconds=number)
    elif isinstance(value, timedelta) and timedelta(0) < value <= MAX_PAUSE:
        return value
    raise InvalidInput(
        f"a pause must be a timedelta or seconds, more than 0 and at most "
        f"{MAX_PAUSE.total_seconds():g} s, got {show(value)}"
    )


def _exhausted(report: ProviderReport | None) -> tuple[Role, ...]:
    """The roles a provider's report names as exhausted; () for all of them."""
    if report is None:
        return ()
    roles = [
        _QUOTAS[reading.quota]
        for reading in report.readings
        if reading.quota in _QUOTAS and reading.remaining == 0
    ]
    return tuple(roles)


def ending_calls(
    engine: Engine,
    found: Acquisition,
    items: Sequence[Item],
    roles: Sequence[Role],
    ending: Ending,
    settled: bool,
    local: int,
) -> list[Call]:
    """The calls a call's end sends, in one batch.

    ``settled`` says how the block's end charges holds with no recorded
    actual: True charges the estimate (the block ended normally: the
    request was made), False releases them (it raised: perhaps never sent).
    """
    calls: list[Call] = []
    role_of = {item.base: role for item, role in zip(items, roles, strict=True)}
    for item, _ in found.held:
        role = role_of[item.base]
        if not item.hold:
            calls.append(engine.drop_lease(item, found.request_id, local))
            continue
        # Each Settlement is made when the call's own is first read
        # (`AsyncModelCall.settlements`).
        actual = ending.tokens if role == "tokens" else ending.cost
        if actual is None and settled:
            actual = item.codec.amount(item.units)
        if actual is not None:
            calls.append(engine.settle(item, found.request_id, actual, local, later=True))
        else:
            calls.append(engine.release(item, found.request_id, local, later=True))
    if not ending.reports and ending.pause is None:
        return calls  # the usual end: settles and releases alone
    guarded = [
        (item, role)
        for item, role in zip(items, roles, strict=True)
        if item.flags & GUARD and role in _GUARDED
    ]
    for report in ending.reports or ():
        for reading in report.readings:
            measures = _QUOTAS.get(reading.quota)
            if measures is None or reading.remaining is None:
                continue
            for item in _measured(guarded, measures, reading.limit):
                remaining = min(reading.remaining, item.codec.limit)
                calls.append(engine.correct(_plain(engine, item), remaining, local))
    if ending.pause is not None:
        chosen = [item for item, role in guarded if not ending.paused or role in ending.paused]
        calls.append(engine.pause(chosen, "pause", ending.pause // _US, local))
    return calls


def _measured(guarded: list[tuple[Item, Role]], role: Role, limit: int | None) -> list[Item]:
    """The upstream's limits a provider's reading of ``role`` measures: the
    one whose limit it reports, or the only one of that role."""
    of_role = [item for item, r in guarded if r == role]
    if limit is not None:
        same = [item for item in of_role if item.codec.limit == limit]
        if same:
            return same
    if len(of_role) == 1:
        return of_role
    _log.debug("observe: no single %s limit matches a reported limit of %s", role, limit)
    return []


def _plain(engine: Engine, item: Item) -> Item:
    """The guarded item without its hold: a correction charges the limit itself."""
    return engine.item(item.spec, item.subject, 0, guard=item.flags & (GUARD | SLOW_START))


def denied(found: Acquisition) -> Decision[Any]:
    """The first denying decision of a denied call."""
    assert found.denied_at is not None
    return found.decisions[found.denied_at]


def pause_items(engine: Engine, upstream: object, quotas: object) -> list[Item]:
    """The upstream's limits a direct pause applies to."""
    if not isinstance(upstream, Upstream):
        raise InvalidInput(f"pause takes an Upstream, got {type(upstream).__name__}")
    roles = _GUARDED if quotas is None else _roles(quotas)
    items = [
        engine.item(spec, upstream.name, 0, guard=GUARD)
        for role, spec in upstream.limits()
        if role in roles
    ]
    if not items:
        # Refused here: a pause of nothing has no end to report.
        raise InvalidInput(f"quota {quotas!r}: this upstream has no limits of it")
    return items


def _roles(quotas: object) -> tuple[Role, ...]:
    for role in _GUARDED:
        if type(quotas) is str and quotas == role:
            return (role,)
    raise InvalidInput(f"quota must be None, 'requests' or 'tokens', got {show(quotas)}")

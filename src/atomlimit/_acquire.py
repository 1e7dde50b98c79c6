"""The acquire saga: every hit of a request, or none of them.

Hits of one subject share a hash slot and are charged by one script,
atomically. Hits of several subjects may live on several cluster nodes, so
no single script can hold them all: subjects are charged one after another,
in the order they first appear, each under a record of what it charged; if a
later subject denies, the earlier ones are undone, exactly, from those
records, before the acquire returns denied. The flow yields the calls and
the runner sends them (the runners).

A backend failure part-way is reported for the acquire as a whole: the
[`BackendError`][atomlimit.errors.BackendError] carries the acquire's request id whenever
its charges are recorded (always, across subjects), and ``applied`` says
whether any charge may still stand. With that id the caller completes the
acquire (sends it again) or takes it back (`undo`).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from functools import partial
from typing import Any, NamedTuple

from atomlimit._engine import Charged, Engine, Item, request_part
from atomlimit._errors import Applied, AtomlimitError, BackendError, InvalidInput
from atomlimit._inputs import check_hits
from atomlimit._runner_steps import Flow, Plan
from atomlimit.decision import Decision
from atomlimit.specs import Hit


class Acquisition(NamedTuple):
    """What an acquire found, before the shell wraps leases and holds."""

    allowed: bool
    decisions: Sequence[Decision[Any]]
    """A list, or for a model call's acquire a `LaterDecisions`, made when
    first read (`made_decisions`)."""
    denied_at: int | None
    """Index of the first hit, in the caller's order, whose limit said no."""
    held: list[tuple[Item, int]]
    """Items that hold something (leases, reservations) after an allowed
    acquire, each with the index of its decision."""
    request_id: str
    """The id the acquire ran under, as it names leases and holds."""
    degraded: bool = False
    """Decided without the server (the limits' failure policy): nothing is
    held there."""


def acquire(
    engine: Engine,
    hits: Sequence[Hit[Any]],
    request_id: str | None,
    guards: Sequence[int] = (),
    checked: tuple[list[Item], list[list[int]]] | None = None,
) -> Flow:
    """All the hits or none of them: yields calls, returns an Acquisition.

    ``guards`` gives the guard flags of the hits that are an upstream's
    limits, 0 for the others (`Engine.item`).
    On a server that holds every key (``engine.together``), several subjects
    are charged by one script; a server that refuses a script across hash
    slots (a cluster behind one address) turns that off for the engine, and
    the acquire goes subject by subject. ``checked`` is what `checked_items`
    made of the hits already, for a caller that checked them in advance. A
    backend failure part-way undoes what this send charged, then re-raises.
    """
    items, groups = checked if checked is not None else checked_items(engine, hits, guards)
    if unrecorded(items, groups, request_id):
        # One subject is one atomic script, and a generated id is never sent
        # twice: it only names the leases and holds taken.
        rid, ttl = engine.record_ttl(None)[0], None
    else:
        # Several subjects are undone from records; a caller's id is
        # remembered so that sending the acquire again replays it; a charge
        # that waits for replicas can fail after it was made.
        rid, ttl = engine.record_ttl(request_id)
    # The id a caller can send again: only a recorded acquire has one.
    visible = rid if ttl else None
    if len(groups) > 1 and engine.together:
        assert ttl is not None
        batches = [[items[i] for i in group] for group in groups]
        try:
            whole: Charged | None = yield Plan(partial(engine.charge_groups, batches, rid, ttl))
        except BackendError as err:
            if not _across_slots(err):
                applied = err.applied
                if applied != "no":
                    # The script may have run: each subject's record says
                    # whether, and an undo from it takes back exactly that,
                    # so no charge of a failed acquire survives.
                    try:
                        for batch in reversed(batches):
                            yield Plan(partial(engine.take_back, batch, rid))
                    except BackendError:
                        applied = "unknown"
                    else:
                        applied = "no"
                _for_the_acquire(err, visible, applied)
                raise err from err.__cause__
            engine.together = False
            whole = None
        if whole is not None:
            found: list[Decision[Any] | None] = [None] * len(items)
            _fill(found, [i for group in groups for i in group], whole)
            return _ended(items, found, whole.allowed, request_part(rid))
    decisions: list[Decision[Any] | None] = [None] * len(items)
    charged: list[tuple[list[int], int]] = []
    replayed: list[list[int]] = []
    try:
        for group in groups:
            batch = [items[i] for i in group]
            outcome: Charged = yield Plan(partial(engine.charge, batch, rid, ttl))
            _fill(decisions, group, outcome)
            if not outcome.allowed:
                break
            charged.append((group, outcome.at))
            if outcome.replayed:
                replayed.append(group)
    except AtomlimitError as err:
        # After a failure the later subjects' state is unknown: a replayed
        # charge may belong to an earlier send that went all the way, so
        # only what this send charged is taken back.
        ours = [(group, at) for group, at in charged if group not in replayed]
        yield from _undo_all(engine, items, ours, rid, decisions, visible)
        if isinstance(err, BackendError):
            # The failed subject's own charge may stand (a lost reply), or
            # not (a refusal); what this send charged before it was just
            # taken back, but replayed charges of an earlier send still stand.
            _for_the_acquire(err, visible, "unknown" if replayed else err.applied)
        raise
    if len(charged) == len(groups):
        return _ended(items, decisions, True, request_part(rid))
    # Denied: a replayed charge here was stranded by an earlier send that
    # never finished (its later subjects have no record), so it goes too.
    yield from _undo_all(engine, items, charged, rid, decisions, visible)
    try:
        for group in groups[len(charged) + 1 :]:
            batch = [items[i] for i in group]
            _fill(decisions, group, (yield Plan(partial(engine.check, batch))))
    except BackendError as err:
        # Every charge is already taken back: only the report is missing.
        _for_the_acquire(err, visible, "no")
        raise
    return _ended(items, decisions, False, request_part(rid))


def unrecorded(items: Sequence[Item], groups: Sequence[Sequence[int]], request_id: object) -> bool:
    """Whether an acquire is one script that keeps no record: one subject,
    no caller's id to replay, no wait for replicas. Its flow sends that
    script and nothing else (`charged_at_once` reads the reply)."""
    return len(groups) == 1 and request_id is None and not any(i.codec.wait for i in items)


def charged_at_once(items: list[Item], outcome: Charged) -> Acquisition:
    """The Acquisition of an `unrecorded` acquire from its one script's reply,
    as its flow ends with it.

    The script decides every item, so an allowed one's decisions are taken
    as they are, unread (a model call's are made when first read).
    """
    if outcome.allowed:
        held = [(item, n) for n, item in enumerate(items) if item.holds]
        return Acquisition(True, outcome.decisions, None, held, outcome.request_id)
    return _ended(items, outcome.decisions, False, outcome.request_id)


def _ended(
    items: list[Item], decisions: Sequence[Decision[Any] | None], allowed: bool, part: str
) -> Acquisition:
    """The Acquisition of every item decided: what it holds if allowed, else
    the first hit that said no. ``part`` is the request id as it stands in
    keys (`request_part`)."""
    done = [d for d in decisions if d is not None]
    if allowed:
        held = [(item, n) for n, item in enumerate(items) if item.holds]
        return Acquisition(True, done, None, held, part)
    denied_at = next(i for i, d in enumerate(done) if not d.allowed)
    return Acquisition(False, done, denied_at, [], part)


def undo(engine: Engine, hits: Sequence[Hit[Any]], request_id: str) -> Flow:
    """Take back what the acquire of ``hits`` under ``request_id`` charged:
    yields calls, returns whether anything was charged and is now undone.

    Every subject is undone from its record, in reverse order, whatever
    became of the acquire: stranded part-way, denied, or allowed (its
    leases and holds are dropped too). An undo deletes the record, so a
    second one finds nothing and changes nothing.
    """
    request_part(request_id)
    items, groups = checked_items(engine, hits)
    undone = False
    for group in reversed(groups):
        batch = [items[i] for i in group]
        outcome: Charged = yield Plan(partial(engine.take_back, batch, request_id))
        undone = undone or outcome.undone
    return undone


def checked_items(
    engine: Engine, hits: object, guards: Sequence[int] = ()
) -> tuple[list[Item], list[list[int]]]:
    """The items of an acquire's hits, checked, and their indices grouped by subject.

    Every refusal an acquire makes of its input is made here, before
    anything is sent.
    """
    hits = check_hits(hits)
    marks = list(guards) or [0] * len(hits)
    items = [_hit_item(engine, hit, guard) for hit, guard in zip(hits, marks, strict=True)]
    return items, _groups(items)


def _hit_item(engine: Engine, hit: Hit[Any], guard: int) -> Item:
    if not isinstance(hit, Hit):
        raise InvalidInput(f"acquire takes Hit objects, got {type(hit).__name__}")
    return engine.item(hit.limit, hit.subject, hit.cost, hold=hit.hold, guard=guard)


def _across_slots(err: BackendError) -> bool:
    """Whether the server refused a script for naming keys of several hash slots.

    redis-py raises that reply as its ClusterCrossSlotError with the
    ``CROSSSLOT`` code cut off, leaving the server's text; an older parser
    may keep the code. Both are the server's words, read without redis.
    """
    return str(err.__cause__).startswith(_CROSSSLOT)


_CROSSSLOT = ("CROSSSLOT", "Keys in request don't hash to the same slot")


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


def _undo_all(
    engine: Engine,
    items: list[Item],
    charged: list[tuple[list[int], int]],
    rid: str,
    decisions: list[Decision[Any] | None],
    visible: str | None,
) -> Generator[Plan, Any, None]:
    try:
        for group, at in reversed(charged):
            batch = [items[i] for i in group]
            outcome: Charged = yield Plan(partial(engine.undo, batch, rid, at))
            _fill(decisions, group, outcome)
    except BackendError as err:
        # The subjects not yet undone keep their charges, under records the
        # caller can complete or undo the acquire with.
        _for_the_acquire(err, visible, "unknown")
        raise


def _for_the_acquire(err: BackendError, request_id: str | None, applied: Applied) -> None:
    """Make ``err`` speak for the acquire as a whole rather than for one call."""
    err.request_id = request_id
    err.applied = applied


def _fill(decisions: list[Decision[Any] | None], group: list[int], outcome: Charged) -> None:
    for index, decision in zip(group, outcome.decisions, strict=True):
        decisions[index] = decision

"""A model call's decisions and settlements, made when first read, are the ones read at once.

A model call's acquire and end are read on every call, and most callers
never look at their decisions: the call makes them from the reply when
first read (`LaterDecisions`, `LaterSettlement`). Each test reads the same
reply both ways and compares what comes out.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from helpers import SECOND, T0
from hypothesis import given
from hypothesis import strategies as st

from atomlimit import RateLimit, SpendCap
from atomlimit._codecs import GUARD, new_id
from atomlimit._engine import Engine, Item, Kept, LaterDecisions, LaterSettlement

RPM = RateLimit(name="later-rpm", limit=500, window="minute")
TPM = RateLimit(name="later-tpm", limit=10**9, window="minute")
SPEND = SpendCap(name="later-spend", limit=Decimal("100"), currency="USD", window="day")
HOLD = timedelta(minutes=5)
NOW = T0 + 30 * SECOND


def _items(engine: Engine, tokens: int) -> list[Item]:
    return [
        engine.item(RPM, "up", 1, guard=GUARD),
        engine.item(TPM, "up", tokens, hold=HOLD, guard=GUARD),
    ]


def _reply(code: int, items: int, used: list[int], limits: list[int] | None) -> list[int]:
    """A charge's reply as the script writes it: code, now, six integers per
    item, then each item's limit while an override is in force."""
    reply = [code, NOW]
    for n in range(items):
        reply += [1, used[n], 0, T0 + 60 * SECOND, 0, used[n] // 2]
    return reply + (limits or [])


@given(
    tokens=st.integers(0, 10**9),
    used=st.lists(st.integers(0, 10**9), min_size=2, max_size=2),
    overridden=st.booleans(),
)
def test_an_acquires_decisions_made_later_are_those_made_at_once(
    tokens: int, used: list[int], overridden: bool
) -> None:
    engine = Engine()
    items = _items(engine, tokens)
    rid = new_id()
    reply = _reply(1, 2, used, [-1, 300] if overridden else None)
    later = engine.charge_kept(items, rid, NOW, Kept()).read(reply)
    at_once = engine.charge(items, rid, None, NOW).read(reply)

    assert isinstance(later.decisions, LaterDecisions)
    assert isinstance(at_once.decisions, list)
    assert later.allowed
    assert at_once.allowed
    assert later.decisions == at_once.decisions
    assert list(later.decisions) == at_once.decisions
    assert len(later.decisions) == 2
    assert later.decisions[1] == at_once.decisions[1]
    assert later.decisions[:1] == at_once.decisions[:1]
    assert repr(later.decisions) == repr(at_once.decisions)
    # Made once: every read after the first gets the same decisions.
    assert later.decisions.made() is later.decisions.made()


def test_a_denied_acquire_makes_its_decisions_at_once() -> None:
    # A denial says which limit denied, so its decisions are read anyway.
    engine = Engine()
    items = _items(engine, 10)
    reply = [0, NOW, 0, 500, 0, T0 + 60 * SECOND, T0 + 60 * SECOND, 0, 1, 7, 0, 0, 0, 0]
    denied = engine.charge_kept(items, new_id(), NOW, Kept()).read(reply)

    assert not denied.allowed
    assert isinstance(denied.decisions, list)
    assert [d.allowed for d in denied.decisions] == [False, True]


@given(actual=st.integers(0, 10**9), code=st.sampled_from([1, 2, 3, 4]))
def test_a_settlement_made_later_is_the_one_made_at_once(actual: int, code: int) -> None:
    engine = Engine()
    item = _items(engine, 1200)[1]
    rid, reply = new_id(), [code, NOW, 1, actual, 0, T0 + 60 * SECOND, 0, actual]
    later = engine.settle(item, rid, actual, NOW, later=True).read(reply)
    at_once = engine.settle(item, rid, actual, NOW).read(reply)

    assert isinstance(later, LaterSettlement)
    assert later.made() == at_once
    assert later.made() is later.made()


def test_a_spend_caps_settlement_and_a_release_made_later_are_those_made_at_once() -> None:
    engine = Engine()
    item = engine.item(SPEND, "client", Decimal("0.50"), hold=HOLD)
    rid, reply = new_id(), [1, NOW, 1, 1_900_000, 0, T0 + 86400 * SECOND, 0, 190_000]
    for later_call, at_once_call in (
        (
            engine.settle(item, rid, Decimal("0.19"), NOW, later=True),
            engine.settle(item, rid, Decimal("0.19"), NOW),
        ),
        (engine.release(item, rid, NOW, later=True), engine.release(item, rid, NOW)),
    ):
        later, at_once = later_call.read(reply), at_once_call.read(reply)
        assert isinstance(later, LaterSettlement)
        assert later.made() == at_once

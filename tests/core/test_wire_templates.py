"""Kept encodings (`Template`): a call written from one is the call planned afresh.

A model call's acquire and its settle are written from an encoding kept
per shape and window, with only the ids and costs written anew. Every test
here compares those bytes with what encoding the call's own keys and
arguments gives, which is what every other call sends.
"""

from __future__ import annotations

import functools
from datetime import timedelta

import pytest
from helpers import SECOND, T0
from hypothesis import given
from hypothesis import strategies as st

from atomlimit import RateLimit
from atomlimit._codecs import GUARD, new_id
from atomlimit._engine import Engine, Item, Kept
from atomlimit._runner_steps import Call
from atomlimit._wire import evalsha

RPM = RateLimit(name="tpl-rpm", limit=500, window="minute")
TPM = RateLimit(name="tpl-tpm", limit=10**12, window="minute")
GCRA = RateLimit(name="tpl-gcra", limit=100, window=timedelta(seconds=10), algorithm="gcra")
HOLD = timedelta(minutes=5)


def _fresh(call: Call) -> bytes:
    return evalsha(call.script.sha_bytes, call.keys, call.args)


def _items(engine: Engine, tokens: int, subject: str = "up:model") -> list[Item]:
    return [
        engine.item(RPM, subject, 1, guard=GUARD),
        engine.item(TPM, subject, tokens, hold=HOLD, guard=GUARD),
        engine.item(GCRA, subject, 1),
    ]


@given(
    tokens=st.lists(st.integers(0, 10**12), min_size=2, max_size=6),
    seconds=st.lists(st.integers(0, 200), min_size=2, max_size=6),
)
def test_an_acquire_from_its_kept_encoding_is_the_acquire_planned_afresh(
    tokens: list[int], seconds: list[int]
) -> None:
    engine, kept = Engine(), Kept()
    written = expected = 0
    previous: int | None = None
    for cost, second in zip(tokens, sorted(seconds), strict=False):
        items = _items(engine, cost)
        call = engine.charge_kept(items, new_id(), T0 + second * SECOND, kept)
        planned = engine.charge(items, call.args[2], None, T0 + second * SECOND)
        assert (call.keys, call.args) == (planned.keys, planned.args)
        if call.encoded is not None:
            written += 1
            assert call.encoded == _fresh(planned)
        # Every call after the first in a minute's window is written from it.
        expected += previous == second // 60
        previous = second // 60
    assert written == expected


def test_a_kept_acquire_holds_only_for_its_window() -> None:
    engine, kept = Engine(), Kept()
    first = engine.charge_kept(_items(engine, 5), new_id(), T0 + 10 * SECOND, kept)
    again = engine.charge_kept(_items(engine, 7), new_id(), T0 + 20 * SECOND, kept)
    later = engine.charge_kept(_items(engine, 7), new_id(), T0 + 70 * SECOND, kept)
    assert first.encoded is None  # planned, and its encoding kept
    assert again.encoded is not None
    assert again.encoded == _fresh(again)
    assert later.encoded is None  # the next minute's window: planned again
    assert later.keys != again.keys


def test_client_time_and_ids_of_another_length_are_never_written_from_a_kept_encoding() -> None:
    clocked, kept = Engine(time_source="client"), Kept()
    for second in (1, 2, 3):
        call = clocked.charge_kept(_items(clocked, 9), new_id(), T0 + second * SECOND, kept)
        assert call.encoded is None
    assert kept.current is None
    # An id that is not a generated one is encoded as a caller's would be.
    engine, kept = Engine(), Kept()
    for rid in ("@short", "@" + "z" * 24, "@" + "z" * 24):
        call = engine.charge_kept(_items(engine, 9), rid, T0, kept)
        assert call.encoded is None
        assert call.args[2] == "%40" + rid[1:]
    assert kept.current is None


@given(
    actuals=st.lists(st.integers(0, 10**12), min_size=1, max_size=4),
    estimate=st.integers(0, 10**12),
)
def test_a_settle_or_release_from_its_kept_encoding_is_the_one_planned_afresh(
    actuals: list[int], estimate: int
) -> None:
    # A spec of its own: its encodings are kept by its codec, which another
    # example's would share.
    tpm = RateLimit(name="tpl-tpm", limit=10**12, window="minute")
    again: list[str] = []  # an id to hand out again, once
    ids: list[str] = []

    def next_id() -> str:
        ids.append(again.pop() if again else new_id())
        return ids[-1]

    engine = Engine(new_id=next_id)
    kept = engine.item(tpm, "up:model", 3, hold=HOLD, guard=GUARD)
    engine.settle(kept, new_id(), 5, T0)  # keeps its encoding, with other costs
    engine.release(kept, new_id(), T0)
    item = engine.item(tpm, "up:model", estimate, hold=HOLD, guard=GUARD)
    wires = item.codec.held_wires
    for n, actual in enumerate(actuals):
        rid, at = new_id(), T0 + n * SECOND
        settle = functools.partial(engine.settle, item, rid, actual, at)
        for end in (settle, functools.partial(engine.release, item, rid, at)):
            written = end()
            assert written.encoded is not None
            # The same end planned afresh, under the same ids: no encoding kept.
            saved = dict(wires)
            wires.clear()
            again.append(ids[-1])
            fresh = end()
            wires.update(saved)
            assert fresh.encoded is None
            assert (written.keys, written.args) == (fresh.keys, fresh.args)
            assert written.encoded == _fresh(fresh)


def test_a_caller_id_settles_from_a_fresh_plan() -> None:
    engine = Engine()
    item = engine.item(TPM, "up:model", 10, hold=HOLD)
    for n in range(3):
        call = engine.settle(item, "caller-chosen-id", 4, T0 + n * SECOND)
        assert call.encoded is None


@pytest.mark.parametrize("tokens", [0, 1, 1023, 1024, 10**12])
def test_costs_of_every_length_are_written_in_place(tokens: int) -> None:
    engine, kept = Engine(), Kept()
    engine.charge_kept(_items(engine, 1), new_id(), T0, kept)
    call = engine.charge_kept(_items(engine, tokens), new_id(), T0 + SECOND, kept)
    assert call.encoded is not None
    assert call.encoded == _fresh(call)
    assert f"\r\n{tokens}\r\n".encode() in call.encoded

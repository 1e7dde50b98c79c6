"""The key schema: injective, length-capped, one cluster slot per subject."""

from __future__ import annotations

import os
from decimal import Decimal

import pytest
from conftest import Target
from helpers import T0
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from atomlimit import Limiter, RateLimit, SpendCap
from atomlimit._codecs import GENERATED, new_id
from atomlimit._engine import Engine
from atomlimit._keys import MAX_ENCODED_PART, encode, subject_tag

TRICKY = [
    "",
    ":",
    "{",
    "}",
    "{x}",
    "a}b{c",
    "a:b",
    "a",
    "b",
    "a\nb",
    "a\x00b",
    "\x00",
    "ünïcødé",
    "日本",
    "%3A",
    "!",
    "~",
    "x" * 10_000,
    "x" * 10_001,
    "y" * MAX_ENCODED_PART,
    "\ud800",  # a lone surrogate still encodes, injectively
]
SPECS = [
    RateLimit(name="n", limit=5, window="day"),
    SpendCap(name="n", limit=Decimal(5), currency="AUD", window="day"),
]


def test_tricky_subjects_encode_to_distinct_safe_parts() -> None:
    parts = [encode(subject) for subject in TRICKY]

    assert len(set(parts)) == len(TRICKY)
    for part in parts:
        assert not set(part) & set(":{}\n\x00")
        assert len(part) <= MAX_ENCODED_PART + 1 + 32


@given(st.text(), st.text())
def test_encoding_is_injective(first: str, second: str) -> None:
    if first != second:
        assert encode(first) != encode(second)


@given(st.text(max_size=300))
def test_every_key_of_a_subject_shares_one_slot(subject: str) -> None:
    engine, now = Engine(), T0
    keys = [key for spec in SPECS for key in engine.hit(spec, subject, 1, "rid", False, now).keys]
    keys += [key for spec in SPECS for key in engine.hit(spec, subject, 1, None, False, now).keys]
    keys += [key for spec in SPECS for key in engine.reset(spec, subject, now).keys]

    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert all(key.startswith("atomlimit:v1:" + subject_tag(subject) + ":") for key in keys)


def test_a_subject_cannot_pose_as_another_subject_s_key() -> None:
    engine = Engine()
    spec = SPECS[0]
    keys = {engine.peek(spec, subject, 1, T0).keys[0] for subject in TRICKY}

    assert len(keys) == len(TRICKY)


def test_empty_subject_still_has_a_non_empty_hash_tag() -> None:
    assert subject_tag("") == "{s:}"


@pytest.mark.parametrize("subject", TRICKY, ids=lambda s: repr(s)[:20])
def test_tricky_subjects_count_apart_on_a_real_server(target: Target, subject: str) -> None:
    spec = SPECS[0]
    with target.sync_client() as client:
        limiter = Limiter(client)
        limiter.hit(spec, subject, cost=2)
        limiter.hit(spec, "a", cost=1)
        mine, other = limiter.peek(spec, subject), limiter.peek(spec, "a")

    expected_other = 3 if subject == "a" else 1
    assert mine.used == (3 if subject == "a" else 2)
    assert other.used == expected_other


# -- generated ids ------------------------------------------------------------


def test_generated_ids_are_distinct_and_read_as_generated() -> None:
    made = [new_id() for _ in range(10_000)]

    assert len(set(made)) == len(made)
    assert all(GENERATED.fullmatch(made_id) for made_id in made)


def test_a_forked_child_makes_ids_its_parent_does_not() -> None:
    # Ids are made ahead, several at a time: a child that kept its parent's
    # would name its holds and leases with ids the parent also hands out.
    new_id()  # the parent has ids made ahead
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, " ".join(new_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        theirs = set(pipe.read().split())
    ours = {new_id() for _ in range(8)}

    assert len(theirs) == 8
    assert not theirs & ours

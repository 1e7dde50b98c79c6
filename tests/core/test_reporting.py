"""Decisions and denials as a log line or a response body."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from conftest import Target

from atomlimit import (
    Concurrency,
    Decision,
    Limiter,
    LimitExceeded,
    RateLimit,
    SpendCap,
)

CAP = SpendCap(name="ai", limit=Decimal("1E+2"), currency="AUD", window="day")
DAILY = RateLimit(name="daily", limit=2, window="day")


def test_as_dict_survives_json_and_keeps_money_exact(target: Target) -> None:
    with target.sync_client() as client:
        decision = Limiter(client).hit(CAP, "client-42", cost=Decimal("0.37"))

    text = json.dumps(decision.as_dict())
    back = json.loads(text)

    assert back["name"] == "ai"
    assert back["kind"] == "SpendCap"
    assert back["currency"] == "AUD"
    assert back["allowed"] is True
    # Fixed-point text, never "1E+2" nor a float.
    assert back["limit"] == "100"
    assert back["used"] == "0.37"
    assert back["remaining"] == "99.63"
    assert Decimal(back["granted"]) == Decimal("0.37")
    assert datetime.fromisoformat(back["reset_at"]) == decision.reset_at
    assert back["retry_after"] is None
    assert back["degraded"] is False
    assert back["cause"] is None


def test_as_dict_gives_retry_after_in_seconds_and_counts_as_ints(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        limiter.hit(DAILY, "s", cost=2)
        denied = limiter.hit(DAILY, "s")

    values = denied.as_dict()

    assert denied.retry_after is not None
    assert values["retry_after"] == denied.retry_after.total_seconds()
    assert isinstance(values["retry_after"], float)
    assert values["used"] == 2
    assert values["remaining"] == 0
    assert values["kind"] == "RateLimit"
    assert values["currency"] is None
    assert json.loads(json.dumps(values)) == values


def test_as_dict_of_a_hand_made_decision_names_no_limit() -> None:
    made = Decision(True, 5, 1, 4, datetime(2026, 1, 1, tzinfo=UTC), None, 1, 0)

    values = made.as_dict()

    assert values["name"] is None
    assert values["kind"] is None
    assert values["reset_at"] == "2026-01-01T00:00:00+00:00"


def test_as_dict_names_a_degraded_decisions_cause_by_type_only() -> None:
    made = Decision(
        True,
        5,
        0,
        5,
        datetime(2026, 1, 1, tzinfo=UTC),
        None,
        0,
        0,
        spec=DAILY,
        degraded=True,
        cause=ConnectionError("redis://:secret@10.0.0.1"),
    )

    values = made.as_dict()

    assert values["degraded"] is True
    assert values["cause"] == "ConnectionError"
    assert "secret" not in json.dumps(values)


def test_limit_exceeded_names_the_limit_and_carries_the_subject_out_of_the_message() -> None:
    denied = Decision(
        False, 2, 2, 0, datetime(2026, 1, 2, tzinfo=UTC), timedelta(seconds=3), 0, 0, spec=DAILY
    )

    error = LimitExceeded(denied, subject="alice@example.com")

    assert "daily" in str(error)
    assert "RateLimit" in str(error)
    assert "alice" not in str(error)
    assert error.subject == "alice@example.com"
    assert error.limit is DAILY
    assert error.decision is denied


def test_limit_exceeded_says_when_the_cost_can_never_fit() -> None:
    never = Decision(False, 2, 0, 2, datetime(2026, 1, 2, tzinfo=UTC), None, 0, 0, spec=DAILY)

    assert "can never fit" in str(LimitExceeded(never))


def test_limit_exceeded_from_a_decision_alone_still_works(target: Target) -> None:
    slots = Concurrency(name="slots", limit=1)
    with target.sync_client() as client:
        limiter = Limiter(client)
        with limiter.lease(slots, "s"), pytest.raises(LimitExceeded) as raised:
            limiter.lease(slots, "s")

    assert raised.value.limit == slots
    assert raised.value.subject is None
    assert "slots" in str(raised.value)

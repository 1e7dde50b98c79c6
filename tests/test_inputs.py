"""Bad input fails with a message naming the field, before anything is sent.

The limiter here points at a port nothing listens on: had any command been
sent, the error would be a BackendError, not InvalidInput.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import free_port

from atomlimit import AsyncLimiter, InvalidInput, Limiter, RateLimit, SpendCap

RATE = RateLimit(name="r", limit=10, window="day")
CAP = SpendCap(name="c", limit=Decimal("100.00"), currency="AUD", window="day")


@pytest.fixture
def nowhere() -> Iterator[Limiter]:
    client = redis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    with client:
        yield Limiter(client)


@pytest.mark.parametrize(
    ("kwargs", "field", "says"),
    [
        ({"name": ""}, "RateLimit.name", "at least 1 character"),
        ({"name": 7}, "RateLimit.name", "must be a str"),
        ({"limit": 0}, "RateLimit.limit", "greater than 0"),
        ({"limit": -5}, "RateLimit.limit", "greater than 0"),
        ({"limit": 2.5}, "RateLimit.limit", "valid integer"),
        ({"limit": 2**53}, "RateLimit.limit", "less than or equal"),
        ({"window": "fortnight"}, "RateLimit.window", "'fortnight'"),
        ({"window": timedelta(0)}, "RateLimit.window", "whole milliseconds, from 1 ms"),
        ({"tz": "Mars/Olympus_Mons"}, "RateLimit.tz", "unknown IANA time zone"),
        ({"window": timedelta(hours=1), "tz": "Australia/Sydney"}, "RateLimit.tz", "epoch"),
        ({"per": 5}, "RateLimit.per", "Extra inputs"),
    ],
)
def test_bad_rate_limit_spec_names_the_field(kwargs: dict[str, Any], field: str, says: str) -> None:
    spec: dict[str, Any] = {"name": "n", "limit": 10, "window": "day", **kwargs}
    with pytest.raises(InvalidInput) as caught:
        RateLimit(**spec)

    assert field in str(caught.value)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "field", "says"),
    [
        ({"limit": 100.0}, "SpendCap.limit", "not float"),
        ({"limit": Decimal("NaN")}, "SpendCap.limit", "finite"),
        ({"limit": Decimal("-1")}, "SpendCap.limit", "above 0"),
        ({"limit": "lots"}, "SpendCap.limit", "not a decimal"),
        ({"limit": Decimal("0.0000001")}, "SpendCap.limit", "finer than the unit"),
        ({"unit": Decimal("0.5")}, "SpendCap.unit", "power of ten"),
        ({"currency": "A U D"}, "SpendCap.currency", "letters"),
    ],
)
def test_bad_spend_cap_spec_names_the_field(kwargs: dict[str, Any], field: str, says: str) -> None:
    spec: dict[str, Any] = {"name": "n", "limit": Decimal(100), "currency": "AUD"}
    with pytest.raises(InvalidInput) as caught:
        SpendCap(**{**spec, "window": "day", **kwargs})

    assert field in str(caught.value)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "cost", "says"),
    [
        (CAP, 0.37, "not float"),
        (CAP, Decimal("-0.01"), "must not be negative"),
        (CAP, Decimal("NaN"), "finite"),
        (CAP, Decimal("Infinity"), "finite"),
        (CAP, Decimal("0.0000001"), "finer than the unit"),
        (CAP, "0.37", "not str"),
        (CAP, None, "not NoneType"),
        (CAP, True, "not bool"),
        (CAP, Decimal("9999999999.999999"), "exact range"),
        (RATE, -1, "between 0"),
        (RATE, 1.0, "must be an int"),
        (RATE, Decimal(1), "must be an int"),
    ],
)
def test_bad_cost_is_refused_before_sending(
    nowhere: Limiter, spec: Any, cost: object, says: str
) -> None:
    for call in (nowhere.hit, nowhere.peek):
        with pytest.raises(InvalidInput, match="cost") as caught:
            call(spec, "s", cost)  # type: ignore[operator]
        assert says in str(caught.value)


@pytest.mark.parametrize(
    ("subject", "request_id", "says"),
    [
        (42, None, "subject must be a str"),
        (None, None, "subject must be a str"),
        ("x" * 70_000, None, "at most"),
        ("s", "", "request_id"),
        ("s", 17, "request_id"),
        ("s", "r" * 2_000, "request_id"),
    ],
)
def test_bad_subject_or_request_id_is_refused_before_sending(
    nowhere: Limiter, subject: Any, request_id: Any, says: str
) -> None:
    with pytest.raises(InvalidInput, match=says):
        nowhere.hit(RATE, subject, request_id=request_id)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"prefix": "my app"}, "prefix"),
        ({"prefix": "a:b"}, "prefix"),
        ({"prefix": "{x}"}, "prefix"),
        ({"time_source": "gps"}, "time_source"),
        ({"clock": 12.0}, "clock"),
        ({"request_ttl": timedelta(0)}, "request_ttl"),
        ({"retry_ttl": 60}, "retry_ttl"),
    ],
)
def test_bad_limiter_options_name_the_option(options: dict[str, Any], says: str) -> None:
    client = redis.Redis(host="127.0.0.1", port=free_port())
    for shell in (Limiter, AsyncLimiter):
        with pytest.raises(InvalidInput, match=says):
            shell(client, **options)
    client.close()


def test_specs_are_frozen_after_validation() -> None:
    with pytest.raises(Exception, match="frozen"):
        RATE.limit = 5  # type: ignore[misc]

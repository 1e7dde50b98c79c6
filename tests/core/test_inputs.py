"""Bad input fails with a message naming the field, before anything is sent.

The limiter here points at a port nothing listens on: had any command been
sent, the error would be a BackendError, not InvalidInput.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any, NoReturn

import pytest
import redis
from pydantic import BaseModel
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Server, free_port

from atomlimit import AsyncLimiter, Concurrency, Hit, InvalidInput, Limiter, RateLimit, SpendCap
from atomlimit._codecs import codec_of
from atomlimit._inputs import (
    MAX_HITS,
    MAX_HOLD,
    MAX_VALUE,
    check_choice,
    check_flag,
    check_hits,
    check_int,
    check_request_id,
    hold_us,
    show,
)
from atomlimit._money import MAX_UNITS
from atomlimit.cache import Cache, Category
from atomlimit.compat import RedisClient
from atomlimit.sessions import SessionStore

SHORT = 400
"""No message is longer, whatever the input: none formats a value whole."""
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
        ({"window": timedelta(0)}, "RateLimit.window", "whole milliseconds, at least 1 ms"),
        ({"tz": "Mars/Olympus_Mons"}, "RateLimit.tz", "unknown IANA time zone"),
        ({"window": timedelta(hours=1), "tz": "Australia/Sydney"}, "RateLimit.tz", "epoch"),
        ({"per": 5}, "RateLimit.per", "Extra inputs"),
        ({"window": timedelta.max}, "RateLimit.window", "at most 366 days"),
        ({"window": timedelta(days=366, milliseconds=1)}, "RateLimit.window", "at most 366"),
        ({"window": timedelta(microseconds=1500)}, "RateLimit.window", "whole milliseconds"),
        ({"window": -timedelta(days=1)}, "RateLimit.window", "at least 1 ms"),
        ({"tz": "A" * 65}, "RateLimit.tz", "unknown IANA time zone"),
        ({"tz": "../../etc/localtime"}, "RateLimit.tz", "unknown IANA time zone"),
        ({"tz": "/etc/localtime"}, "RateLimit.tz", "unknown IANA time zone"),
        ({"tz": "zone.tab"}, "RateLimit.tz", "unknown IANA time zone"),
        ({"tz": 10**5000}, "RateLimit.tz", "an int of 16610 bits"),
        ({"limit": 10**5000}, "RateLimit.limit", "an int of 16610 bits"),
        ({"burst": -(10**5000), "algorithm": "gcra"}, "RateLimit.burst", "16610 bits"),
        ({"max_log": 2**53}, "RateLimit.max_log", "between 1 and 9007199254740991"),
        ({"shadow": 10**5000}, "RateLimit.shadow", "an int of 16610 bits"),
        ({"name": "n" * 1_000_000}, "RateLimit.name", "(1000000 long)"),
        ({"x" * 1_000_000: 1}, "RateLimit.'xxxx", "Extra inputs"),
    ],
)
def test_bad_rate_limit_spec_names_the_field(kwargs: dict[str, Any], field: str, says: str) -> None:
    spec: dict[str, Any] = {"name": "n", "limit": 10, "window": "day", **kwargs}
    with pytest.raises(InvalidInput) as caught:
        RateLimit(**spec)

    assert field in str(caught.value)
    assert says in str(caught.value)
    assert len(str(caught.value)) <= SHORT


def test_a_message_names_a_few_problems_and_counts_the_rest() -> None:
    fields = {f"extra_{n}": n for n in range(1_000)}
    with pytest.raises(InvalidInput) as caught:
        RateLimit(name="n", limit=10, window="day", **fields)

    assert str(caught.value).endswith("; and 995 more")
    assert len(str(caught.value)) <= SHORT


@pytest.mark.parametrize(
    "spec",
    [
        {"window": timedelta(days=366)},
        {"window": timedelta(milliseconds=1)},
        {"window": "month", "tz": "America/Argentina/ComodRivadavia"},
        {"limit": MAX_UNITS, "max_log": MAX_UNITS, "algorithm": "sliding_log", "window": "hour"},
    ],
)
def test_rate_limit_fields_at_their_bounds_are_accepted(spec: dict[str, Any]) -> None:
    built = RateLimit(**{"name": "n", "limit": 10, "window": "day", **spec})

    assert built.model_dump(include=set(spec)) == spec


@pytest.mark.parametrize(
    ("lease", "says"),
    [
        (timedelta.max, "at most 366 days"),
        (timedelta(days=366, microseconds=1), "at most 366 days"),
        (timedelta(microseconds=999), "at least 1 ms"),
        (10**5000, "an int of 16610 bits"),
    ],
    ids=["max", "366-days-and-1-us", "under-1-ms", "huge-int"],
)
def test_a_lease_beyond_its_bounds_is_refused(lease: object, says: str) -> None:
    with pytest.raises(InvalidInput, match=r"^Concurrency\.lease: ") as caught:
        Concurrency(name="c", limit=1, lease=lease)

    assert says in str(caught.value)
    assert Concurrency(name="c", limit=1, lease=timedelta(days=366)).lease.days == 366


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
        ({"limit": "1E+999999999"}, "SpendCap.limit", "exact range"),
        ({"limit": Decimal("1E+999999999")}, "SpendCap.limit", "exact range"),
        ({"limit": Decimal("1E+10000000")}, "SpendCap.limit", "exact range"),
        ({"limit": Decimal("1E-999999999")}, "SpendCap.limit", "finer than the unit"),
        ({"limit": "1" * 65}, "SpendCap.limit", "at most 64 characters"),
        ({"limit": 10**5000}, "SpendCap.limit", "an int of 16610 bits"),
        ({"limit": 2**60}, "SpendCap.limit", "exact range"),
        ({"limit": Decimal("-0")}, "SpendCap.limit", "above 0"),
        ({"limit": Decimal("sNaN")}, "SpendCap.limit", "finite"),
        ({"limit": "-sNaN"}, "SpendCap.limit", "finite"),
        ({"limit": True}, "SpendCap.limit", "not bool"),
        ({"unit": Decimal("1E+999999999")}, "SpendCap.unit", "power of ten"),
        ({"unit": Decimal("1E-999999999")}, "SpendCap.unit", "power of ten"),
        ({"unit": "1E+999999999"}, "SpendCap.unit", "power of ten"),
        ({"unit": Decimal("sNaN")}, "SpendCap.unit", "power of ten"),
        ({"unit": Decimal("-0.01")}, "SpendCap.unit", "power of ten"),
        ({"unit": Decimal("1E-19")}, "SpendCap.unit", "power of ten"),
        ({"unit": Decimal("0.011")}, "SpendCap.unit", "power of ten"),
        ({"unit": Decimal("1." + "0" * 40)}, "SpendCap.unit", "power of ten"),
        ({"currency": "A" * 1_000_000}, "SpendCap.currency", "(1000000 long)"),
    ],
)
def test_bad_spend_cap_spec_names_the_field(kwargs: dict[str, Any], field: str, says: str) -> None:
    spec: dict[str, Any] = {"name": "n", "limit": Decimal(100), "currency": "AUD"}
    with pytest.raises(InvalidInput) as caught:
        SpendCap(**{**spec, "window": "day", **kwargs})

    assert field in str(caught.value)
    assert says in str(caught.value)
    assert len(str(caught.value)) <= SHORT


@pytest.mark.parametrize(
    ("unit", "exponent"),
    [(Decimal("0.010"), 2), (Decimal("1.000"), 0), (Decimal("1E-18"), 18), (Decimal(1), 0)],
)
def test_a_unit_written_with_trailing_zeros_is_the_same_power_of_ten(
    unit: Decimal, exponent: int
) -> None:
    cap = SpendCap(name="n", limit=unit, currency="AUD", window="day", unit=unit)

    assert codec_of(cap).tail.endswith(f":AUD:{exponent}")
    assert cap.unit is unit


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


# --------------------------------------------------------------------------
# Cache, sessions and the seed's client
# --------------------------------------------------------------------------

TOO_BIG = b"x" * (MAX_VALUE + 1)
LONE_SURROGATE = "caf\udce9"


class Profile(BaseModel):
    name: str


@pytest.fixture
def nowhere_client() -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    with client:
        yield client


def test_a_cache_value_the_server_should_not_hold_is_refused_before_sending(
    nowhere_client: redis.Redis,
) -> None:
    cache = Cache(nowhere_client)
    raw = Category("raw", ttl=timedelta(days=1))
    with pytest.raises(InvalidInput, match=f"at most {MAX_VALUE} bytes, got {MAX_VALUE + 1}"):
        cache.set(raw, "k", TOO_BIG)
    with pytest.raises(InvalidInput, match="UTF-8"):
        cache.set(raw, "k", LONE_SURROGATE)
    # Text is measured in UTF-8 bytes, not characters.
    with pytest.raises(InvalidInput, match=f"got {MAX_VALUE // 2 * 2 + 2}"):
        cache.set(raw, "k", "é" * (MAX_VALUE // 2 + 1))
    with pytest.raises(InvalidInput, match="at most"):
        cache.set(
            Category("p", ttl=timedelta(days=1), model=Profile), "k", Profile(name="x" * MAX_VALUE)
        )


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"wait": timedelta(days=1, microseconds=1)}, "wait must be a timedelta from 0 to 1 day"),
        ({"wait": timedelta.max}, "wait must be a timedelta from 0 to 1 day"),
        ({"wait": -timedelta(microseconds=1)}, "wait"),
        ({"lock_ttl": timedelta(days=1, milliseconds=1)}, "lock_ttl must be a timedelta"),
        ({"lock_ttl": timedelta.max}, "from 1 ms to 1 day,"),
        ({"lock_ttl": 10**5000}, "an int of 16610 bits"),
        ({"version": 10**5000}, "version must be a str, got int"),
    ],
)
def test_cache_durations_beyond_a_day_are_refused(
    nowhere_client: redis.Redis, options: dict[str, Any], says: str
) -> None:
    with pytest.raises(InvalidInput, match=says):
        Cache(nowhere_client, **options)
    if "version" not in options:
        with pytest.raises(InvalidInput, match=says):
            Cache(nowhere_client).get_or_set(
                Category("c", ttl=timedelta(days=1)), "k", bytes, **options
            )


def test_get_or_set_refuses_a_factory_it_cannot_call_before_taking_the_lock(
    nowhere_client: redis.Redis,
) -> None:
    category = Category("c", ttl=timedelta(days=1))
    with pytest.raises(InvalidInput, match="factory must be callable, got b'value'"):
        Cache(nowhere_client).get_or_set(category, "k", b"value")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "says"),
    [(10**5000, "an int of 16610 bits"), (int, "the class int"), ("Profile", "'Profile'")],
    ids=["huge-int", "class", "name"],
)
def test_a_model_that_is_not_a_pydantic_class_is_shown_briefly(model: Any, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        Category("c", ttl=timedelta(days=1), model=model)


@pytest.mark.parametrize(
    ("ttl", "says"),
    [(timedelta(days=3651), "from 1 ms to 3650 days"), (10**5000, "an int of 16610 bits")],
    ids=["over-ten-years", "huge-int"],
)
def test_cache_and_session_ttls_above_ten_years_are_refused(ttl: Any, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        Category("c", ttl=ttl)
    with pytest.raises(InvalidInput, match=says):
        SessionStore(redis.Redis(port=free_port()), ttl=ttl)


def test_session_data_the_server_should_not_hold_is_refused_before_sending(
    nowhere_client: redis.Redis,
) -> None:
    store = SessionStore(nowhere_client)
    session_id = "a" * 43
    with pytest.raises(InvalidInput, match=f"^create: a stored value must be at most {MAX_VALUE}"):
        store.create(TOO_BIG)
    with pytest.raises(InvalidInput, match=r"^update: text must be encodable as UTF-8") as caught:
        store.update(session_id, LONE_SURROGATE)
    assert session_id not in str(caught.value)


@pytest.mark.parametrize(
    ("limit", "shown"),
    [
        (10**5000, "an int of 16610 bits"),
        (2**53, "9007199254740992"),
        (-1, "-1"),
        (True, "True"),
        ("5", "'5'"),
        (5.0, "5.0"),
    ],
    ids=["huge", "2**53", "negative", "bool", "str", "float"],
)
def test_the_seed_client_refuses_a_bad_limit_before_sending(limit: Any, shown: str) -> None:
    seed = RedisClient(f"redis://127.0.0.1:{free_port()}/0")
    for check in (seed.try_rate_limit, seed.check_rate_limit):
        with pytest.raises(InvalidInput) as caught:
            asyncio.run(check("enrichment", "acme", limit))

        assert str(caught.value) == f"limit must be an int between 0 and {MAX_UNITS}, got {shown}"


@pytest.mark.parametrize(
    "tz",
    ["A" * 65, "../../etc/localtime", "/etc/localtime", 10**5000],
    ids=["long", "relative-path", "absolute-path", "huge-int"],
)
def test_the_seed_client_refuses_a_time_zone_that_is_not_an_iana_name(tz: Any) -> None:
    with pytest.raises(InvalidInput, match=r"^tz must name an IANA time zone"):
        RedisClient(f"redis://127.0.0.1:{free_port()}/0", tz=tz)


class Float64(float):
    """A float subclass whose repr is not a number, like numpy's."""

    def __repr__(self) -> str:
        return f"Float64({float.__repr__(self)})"


async def test_the_seed_client_reads_a_float_subclass_as_the_float_it_is(server: Server) -> None:
    seed = RedisClient(server.url)
    try:
        total = await seed.record_ai_spend("client-1", Float64(0.37))
        with pytest.raises(InvalidInput, match="finer than the unit"):
            await seed.record_ai_spend("client-1", Float64(1e-300))
        with pytest.raises(InvalidInput, match="exact range"):
            await seed.record_ai_spend("client-1", Float64(1e300))
    finally:
        await seed.close()

    assert total == 0.37


# --------------------------------------------------------------------------
# Checks that the limiter's planning code calls
# --------------------------------------------------------------------------


class Loud:
    """A value whose repr, str, equality and truth all fail the test."""

    def _called(self, *args: object) -> NoReturn:
        raise AssertionError("a check used the value before knowing its type")

    __repr__ = __str__ = __eq__ = __ne__ = __bool__ = __len__ = __iter__ = _called  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]


def test_show_describes_unbounded_values_by_size_and_the_rest_by_type() -> None:
    assert show(10**5000) == "an int of 16610 bits"
    assert show(-(2**64)) == "an int of 65 bits"
    assert show(2**64 - 1) == str(2**64 - 1)
    assert show("x" * 1_000_000) == f"{'x' * 40!r}... (1000000 long)"
    assert show(Decimal("1" * 1_000)) == "1" * 40 + "... (1000 characters)"
    assert show(Decimal("1E+999999999")) == "1E+999999999"
    assert show(timedelta.max) == repr(timedelta.max)
    assert show(Loud()) == "a value of type Loud"
    assert show(Loud) == "the class Loud"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "True"),
        (1.0, "1.0"),
        (-1, "-1"),
        (MAX_UNITS + 1, str(MAX_UNITS + 1)),
        (10**5000, "an int of 16610 bits"),
        ("1", "'1'"),
        (Decimal(1), "1"),
        (Loud(), "a value of type Loud"),
    ],
    ids=["bool", "float", "negative", "above", "huge", "str", "decimal", "loud"],
)
def test_check_int_takes_only_ints_within_its_bounds(value: object, shown: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_int(value, "cost", 0, MAX_UNITS)

    assert str(caught.value) == f"cost must be an int between 0 and {MAX_UNITS}, got {shown}"
    assert check_int(MAX_UNITS, "cost", 0, MAX_UNITS) == MAX_UNITS


def test_check_int_with_one_accepted_value_names_it() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_int(2, "cost", 1, 1)

    assert str(caught.value) == "cost must be 1, got 2"
    assert check_int(1, "cost", 1, 1) == 1


@pytest.mark.parametrize("value", ["no", 1, None, Loud()], ids=["str", "int", "none", "loud"])
def test_check_flag_takes_only_bools(value: object) -> None:
    with pytest.raises(InvalidInput, match=r"^partial must be True or False, got "):
        check_flag(value, "partial")
    assert check_flag(False, "partial") is False


@pytest.mark.parametrize(
    ("value", "shown"),
    [("gps", "'gps'"), ("s" * 65_537, "(65537 long)"), (10**5000, "16610 bits"), (Loud(), "Loud")],
    ids=["unknown", "long", "huge", "loud"],
)
def test_check_choice_compares_only_text(value: object, shown: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_choice(value, "time_source", ("server", "client"))

    assert str(caught.value).startswith("time_source must be 'server' or 'client', got ")
    assert str(caught.value).endswith(shown)
    assert check_choice("client", "time_source", ("server", "client")) == "client"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("", "''"),
        ("r" * 1_025, "(1025 long)"),
        (17, "17"),
        (10**5000, "16610 bits"),
        (Loud(), "Loud"),
    ],
    ids=["empty", "long", "int", "huge", "loud"],
)
def test_check_request_id_takes_a_short_non_empty_str(value: object, shown: str) -> None:
    with pytest.raises(
        InvalidInput, match=r"^request_id must be a non-empty str of at most 1024"
    ) as caught:
        check_request_id(value)

    assert shown in str(caught.value)
    assert check_request_id("r" * 1_024) == "r" * 1_024


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "a list or tuple of Hit objects, got None"),
        ("abc", "a list or tuple of Hit objects, got 'abc'"),
        (Loud(), "a list or tuple of Hit objects, got a value of type Loud"),
        ([], "at least one Hit"),
        ([Hit(RATE, "s")] * (MAX_HITS + 1), f"at most {MAX_HITS} hits, got {MAX_HITS + 1}"),
    ],
    ids=["none", "str", "loud", "empty", "too-many"],
)
def test_check_hits_takes_a_list_or_tuple_of_at_most_max_hits(value: object, says: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(says)):
        check_hits(value)
    hits = (Hit(RATE, "s"),) * MAX_HITS
    assert check_hits(hits) is hits


@pytest.mark.parametrize(
    "value",
    [
        timedelta(days=366, microseconds=1),
        timedelta.max,
        timedelta(microseconds=999),
        timedelta(0),
        300,
        10**5000,
        Loud(),
    ],
    ids=["above", "max", "under-1-ms", "zero", "int", "huge", "loud"],
)
def test_hold_us_takes_1_ms_to_366_days(value: object) -> None:
    with pytest.raises(InvalidInput, match=r"^ttl must be a timedelta from 1 ms to 366 days, got "):
        hold_us(value, "ttl")
    assert hold_us(MAX_HOLD) == MAX_HOLD // timedelta(microseconds=1)
    assert hold_us(timedelta(milliseconds=1)) == 1_000


# Bounds checked in _inputs.py and called from the planning code
# (_engine.py, _codecs.py, limiter.py).

SLOTS = Concurrency(name="slots", limit=2)


def test_a_huge_int_cost_on_a_rate_limit_is_invalid_input(nowhere: Limiter) -> None:
    with pytest.raises(InvalidInput, match="an int of 16610 bits"):
        nowhere.hit(RATE, "s", 10**5000)


def test_a_lease_cost_other_than_1_is_invalid_input_whatever_its_type(nowhere: Limiter) -> None:
    with pytest.raises(InvalidInput, match="an int of 16610 bits"):
        nowhere.acquire([Hit(SLOTS, "s", 10**5000)])
    with pytest.raises(InvalidInput, match="a value of type Loud"):
        nowhere.acquire([Hit(SLOTS, "s", Loud())])


def test_a_request_id_that_is_not_text_is_invalid_input_whatever_it_is(nowhere: Limiter) -> None:
    with pytest.raises(InvalidInput, match="an int of 16610 bits"):
        nowhere.hit(RATE, "s", request_id=10**5000)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="a value of type Loud"):
        nowhere.hit(RATE, "s", request_id=Loud())  # type: ignore[arg-type]


def test_a_reservation_held_longer_than_366_days_is_invalid_input(nowhere: Limiter) -> None:
    with pytest.raises(InvalidInput, match="366 days"):
        nowhere.reserve(CAP, "s", Decimal(1), ttl=timedelta(days=366, milliseconds=1))
    with pytest.raises(InvalidInput, match="366 days"):
        nowhere.acquire([Hit(CAP, "s", Decimal(1), hold=timedelta.max)])


def test_partial_must_be_a_bool(nowhere: Limiter) -> None:
    with pytest.raises(InvalidInput, match="partial must be True or False, got 'no'"):
        nowhere.hit(RATE, "s", partial="no")  # type: ignore[arg-type]


def test_raise_on_deny_must_be_a_bool(nowhere: Limiter) -> None:
    with pytest.raises(InvalidInput, match="raise_on_deny must be True or False"):
        nowhere.lease(SLOTS, "s", raise_on_deny="no")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="raise_on_deny must be True or False"):
        nowhere.reservation(CAP, "s", Decimal(1), raise_on_deny="no")  # type: ignore[arg-type]


def test_acquire_takes_a_list_or_tuple_of_at_most_64_hits(nowhere: Limiter) -> None:
    with pytest.raises(InvalidInput, match="list or tuple of Hit objects, got None"):
        nowhere.acquire(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="at most 64 hits"):
        nowhere.acquire([Hit(RATE, f"s{n}") for n in range(MAX_HITS + 1)])


def test_limiter_options_of_any_type_are_refused_as_invalid_input() -> None:
    client = redis.Redis(host="127.0.0.1", port=free_port())
    with pytest.raises(InvalidInput, match="time_source"):
        Limiter(client, time_source=10**5000)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="time_source") as caught:
        Limiter(client, time_source="x" * 65_537)  # type: ignore[arg-type]
    assert len(str(caught.value)) <= SHORT
    with pytest.raises(InvalidInput, match="time_source"):
        Limiter(client, time_source=Loud())  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="clock"):
        Limiter(client, clock=Loud())  # type: ignore[arg-type]

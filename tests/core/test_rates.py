"""RateLimit.parse: rate strings build the same frozen specs as the constructor."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from conftest import Target
from hypothesis import given, settings
from hypothesis import strategies as st

from atomlimit import InvalidInput, Limiter, RateLimit
from atomlimit._rates import MAX_RATE_TEXT


@pytest.mark.parametrize(
    ("text", "limit", "window", "tz"),
    [
        ("100/minute", 100, "minute", "UTC"),
        ("100 per minute", 100, "minute", "UTC"),
        ("100 / Minute", 100, "minute", "UTC"),
        ("100/1 minute", 100, "minute", "UTC"),
        ("5/30s", 5, timedelta(seconds=30), "UTC"),
        ("5 per 30 seconds", 5, timedelta(seconds=30), "UTC"),
        ("10/2 hours", 10, timedelta(hours=2), "UTC"),
        ("7/500ms", 7, timedelta(milliseconds=500), "UTC"),
        ("3/60s", 3, timedelta(seconds=60), "UTC"),
        ("1000/day@Australia/Sydney", 1000, "day", "Australia/Sydney"),
        (" 1000 per day @ Australia/Sydney ", 1000, "day", "Australia/Sydney"),
        ("20/week", 20, "week", "UTC"),
        ("50000/month@Europe/Berlin", 50000, "month", "Europe/Berlin"),
        ("1/s", 1, "second", "UTC"),
        ("9/2w", 9, timedelta(weeks=2), "UTC"),
        ("9007199254740991/d", 2**53 - 1, "day", "UTC"),
    ],
)
def test_a_rate_string_builds_the_spec_the_constructor_builds(
    text: str, limit: int, window: Any, tz: str
) -> None:
    parsed = RateLimit.parse(text, name="api")

    assert parsed == RateLimit(name="api", limit=limit, window=window, tz=tz)


@pytest.mark.parametrize(
    ("spellings", "name"),
    [
        (["100/minute", "100 per minute", "100/1 min", "100 / MINUTES"], "100/minute"),
        (["5/30s", "5 per 30 seconds", "5/30 sec"], "5/30s"),
        (["10/2 hours", "10/120m", "10 per 7200 s"], "10/2h"),
        (
            ["1000/day@Australia/Sydney", "1000 per 1 day @ Australia/Sydney"],
            "1000/day@Australia/Sydney",
        ),
        (["4/60s", "4/60 seconds"], "4/60s"),
    ],
)
def test_spellings_of_one_rate_share_one_name(spellings: list[str], name: str) -> None:
    specs = {RateLimit.parse(text) for text in spellings}

    assert len(specs) == 1
    assert specs.pop().name == name


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 2**53 - 1),
    count=st.one_of(st.none(), st.integers(1, 52)),  # 52 weeks fit in 366 days
    unit=st.sampled_from(["ms", "s", "second", "m", "minutes", "h", "hour", "d", "days", "w"]),
    per=st.sampled_from(["/", " / ", " per "]),
)
def test_the_default_name_reads_back_as_the_same_rate(
    limit: int, count: int | None, unit: str, per: str
) -> None:
    text = f"{limit}{per}{'' if count is None else count}{unit}"

    spec = RateLimit.parse(text)

    assert RateLimit.parse(spec.name) == spec


@pytest.mark.parametrize(
    ("text", "position", "problem"),
    [
        ("", 0, "expected a limit"),
        ("abc", 0, "expected a limit"),
        ("0/minute", 0, "from 1 to"),
        ("99999999999999999/minute", 0, "from 1 to"),
        ("100", 3, "expected '/' or ' per '"),
        ("100per minute", 3, "expected '/' or ' per '"),
        ("100 minute", 4, "expected '/' or ' per '"),
        ("100/", 4, "expected a unit"),
        ("100/fortnight", 4, "expected a unit"),
        ("100/2 fortnights", 6, "expected a unit"),
        ("100/0 minutes", 4, "from 1 to"),
        ("100/minute extra", 11, "expected the end"),
        ("100/minute@Mars/Olympus", 11, "IANA time zone"),
        ("100/minute@../../etc/passwd", 11, "IANA time zone"),
        ("100/minute@", 11, "IANA time zone"),
        ("10/2 hours@UTC", 10, "takes no time zone"),
        ("10/500ms@Australia/Sydney", 8, "takes no time zone"),
        ("5/2 months", 2, "no fixed length"),
        ("1/400 days", 2, "at most 366 days"),
        ("1/99999999999999 ms", 2, "from 1 to"),
        ("5/30ß", 4, "expected a unit"),
    ],
)
def test_a_bad_rate_names_the_position_of_the_error(text: str, position: int, problem: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        RateLimit.parse(text)

    message = str(raised.value)
    assert f"at position {position}:" in message
    assert problem in message


def test_a_rate_longer_than_the_bound_is_refused_before_it_is_read() -> None:
    with pytest.raises(InvalidInput, match=f"at most {MAX_RATE_TEXT} characters"):
        RateLimit.parse("1" * 1_000_000 + "/minute")


@pytest.mark.parametrize("bad", [None, 100, b"100/minute", ["100/minute"]])
def test_a_rate_that_is_not_text_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidInput, match="must be a str"):
        RateLimit.parse(bad)


def test_other_fields_pass_through_and_are_validated_as_usual() -> None:
    smooth = RateLimit.parse("100/minute", name="api", algorithm="gcra", burst=20)

    assert smooth == RateLimit(name="api", limit=100, window="minute", algorithm="gcra", burst=20)
    with pytest.raises(InvalidInput, match="tz"):
        RateLimit.parse("100/day@Australia/Sydney", algorithm="sliding_counter")


@pytest.mark.parametrize("option", ["limit", "window", "tz", "colour"])
def test_a_field_the_rate_already_gives_or_an_unknown_one_is_refused(option: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(repr(option))):
        RateLimit.parse("100/minute", **{option: 1})


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=MAX_RATE_TEXT))
def test_any_text_gives_a_spec_or_invalid_input(text: str) -> None:
    outcome = parsed_or_refused(text)

    if isinstance(outcome, RateLimit):
        assert RateLimit.parse(outcome.name) == outcome
    else:
        assert "at position" in outcome
        assert len(outcome) < 400


def parsed_or_refused(text: str) -> RateLimit | str:
    """The spec, or the refusal's message; any other exception escapes."""
    try:
        return RateLimit.parse(text)
    except InvalidInput as err:
        return str(err)


def test_a_parsed_limit_limits(target: Target) -> None:
    spec = RateLimit.parse("2/day@Australia/Sydney")
    with target.sync_client() as client:
        limiter = Limiter(client)
        allowed = [limiter.hit(spec, "s").allowed for _ in range(3)]

    assert allowed == [True, True, False]

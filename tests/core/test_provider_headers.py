"""Reading a provider's rate-limit figures from its response headers.

The samples are the providers' own: OpenAI's table of rate-limit headers,
an Anthropic response's headers, and the examples of
draft-ietf-httpapi-ratelimit-headers-11. A fixed ``now`` stands in for the
clock. The structured-field parser is checked against http-sfv.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import http_sfv
import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from atomlimit import InvalidInput
from atomlimit._provider_headers import (
    MAX_FIELD_LENGTH,
    MAX_FIELDS,
    MAX_LIST_LENGTH,
    MAX_RESET,
    MAX_RETRY_AFTER,
    ProviderReport,
    Reading,
    _Date,
    _Display,
    _StructuredList,
    _Token,
    read_headers,
)

NOW = datetime(2025, 8, 21, 12, 40, 30, tzinfo=UTC)
LOGGER = "atomlimit.provider_headers"


def read(headers: object) -> ProviderReport:
    return read_headers(headers, now=NOW)


# --------------------------------------------------------------------------
# OpenAI
# --------------------------------------------------------------------------

OPENAI = {
    # The sample values of OpenAI's rate-limit guide, "Rate limits in headers".
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-remaining-tokens": "149984",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-reset-tokens": "6m0s",
}


def test_openai_sample_gives_a_reading_per_quota() -> None:
    report = read(OPENAI)

    assert report.readings == (
        Reading("requests", 60, 59, timedelta(seconds=1)),
        Reading("tokens", 150000, 149984, timedelta(minutes=6)),
    )
    assert report.retry_after is None


@pytest.mark.parametrize(
    ("text", "duration"),
    [
        ("6m0s", timedelta(minutes=6)),
        ("1s", timedelta(seconds=1)),
        ("20ms", timedelta(milliseconds=20)),
        ("1.5s", timedelta(seconds=1, milliseconds=500)),
        ("2h3m4.5s", timedelta(hours=2, minutes=3, seconds=4, milliseconds=500)),
        ("0s", timedelta(0)),
        ("0", timedelta(0)),
        ("1.5ms", timedelta(microseconds=1500)),
        ("500\u00b5s", timedelta(microseconds=500)),
        ("500us", timedelta(microseconds=500)),
        ("17.245ms", timedelta(microseconds=17245)),
        ("24h0m0s", MAX_RESET),
    ],
)
def test_openai_durations_read_in_every_form(text: str, duration: timedelta) -> None:
    reading = read({"x-ratelimit-reset-tokens": text}).reading("tokens")

    assert reading == Reading("tokens", None, None, duration)


def test_a_duration_finer_than_a_microsecond_rounds_up() -> None:
    # Never a reset earlier than the provider said.
    reading = read({"x-ratelimit-reset-requests": "1.0000001s"}).reading("requests")

    assert reading is not None
    assert reading.reset_after == timedelta(seconds=1, microseconds=1)


def test_remaining_without_limit_or_reset_is_still_a_reading() -> None:
    report = read({"x-ratelimit-remaining-tokens": "12"})

    assert report.readings == (Reading("tokens", None, 12, None),)
    assert report.reading("requests") is None


# --------------------------------------------------------------------------
# Anthropic
# --------------------------------------------------------------------------

ANTHROPIC = {
    # The rate-limit headers of one response of Anthropic's Messages API.
    "anthropic-ratelimit-input-tokens-limit": "80000",
    "anthropic-ratelimit-input-tokens-remaining": "80000",
    "anthropic-ratelimit-input-tokens-reset": "2025-08-21T12:40:59Z",
    "anthropic-ratelimit-output-tokens-limit": "16000",
    "anthropic-ratelimit-output-tokens-remaining": "16000",
    "anthropic-ratelimit-output-tokens-reset": "2025-08-21T12:41:00Z",
    "anthropic-ratelimit-requests-limit": "1000",
    "anthropic-ratelimit-requests-remaining": "999",
    "anthropic-ratelimit-requests-reset": "2025-08-21T12:40:59Z",
    "anthropic-ratelimit-tokens-limit": "96000",
    "anthropic-ratelimit-tokens-remaining": "96000",
    "anthropic-ratelimit-tokens-reset": "2025-08-21T12:40:59Z",
    "request-id": "req_011CSLsW7mFqvHHnzrKdKjAE",
    "via": "1.1 google",
}


def test_anthropic_sample_gives_all_four_quotas_relative_to_now() -> None:
    report = read(ANTHROPIC)

    assert report.readings == (
        Reading("requests", 1000, 999, timedelta(seconds=29)),
        Reading("tokens", 96000, 96000, timedelta(seconds=29)),
        Reading("input_tokens", 80000, 80000, timedelta(seconds=29)),
        Reading("output_tokens", 16000, 16000, timedelta(seconds=30)),
    )


def test_anthropic_retry_after_in_seconds() -> None:
    report = read({**ANTHROPIC, "retry-after": "29"})

    assert report.retry_after == timedelta(seconds=29)


@pytest.mark.parametrize(
    ("text", "after"),
    [
        ("2025-08-21T12:41:00Z", timedelta(seconds=30)),
        ("2025-08-21T12:41:00.25Z", timedelta(seconds=30, milliseconds=250)),
        ("2025-08-21T12:41:00.0000001Z", timedelta(seconds=30, microseconds=1)),
        ("2025-08-21T14:41:00+02:00", timedelta(seconds=30)),
        ("2025-08-21t12:41:00z", timedelta(seconds=30)),
        ("2025-08-21 12:41:00-00:00", timedelta(seconds=30)),
        ("2025-08-21T12:40:00Z", timedelta(0)),  # already past: the window has reset
        ("2025-08-22T12:40:30Z", MAX_RESET),
    ],
)
def test_anthropic_resets_are_rfc3339_instants(text: str, after: timedelta) -> None:
    reading = read({"anthropic-ratelimit-tokens-reset": text}).reading("tokens")

    assert reading == Reading("tokens", None, None, after)


def test_a_naive_now_is_a_mistake_in_the_calling_code() -> None:
    with pytest.raises(InvalidInput, match="aware datetime"):
        read_headers(ANTHROPIC, now=datetime(2025, 8, 21, 12, 40, 30))
    with pytest.raises(InvalidInput, match="aware datetime, got str"):
        read_headers(ANTHROPIC, now="2025-08-21T12:40:30Z")  # type: ignore[arg-type]


def test_now_defaults_to_the_clock() -> None:
    # A duration needs no clock, an instant does: both are read.
    report = read_headers({**OPENAI, "anthropic-ratelimit-requests-reset": "2000-01-01T00:00:00Z"})

    assert report.reading("tokens") == Reading("tokens", 150000, 149984, timedelta(minutes=6))
    assert report.reading("requests") == Reading("requests", None, None, timedelta(0))


# --------------------------------------------------------------------------
# The IETF fields
# --------------------------------------------------------------------------


def test_ietf_policy_and_limit_of_one_name_make_one_reading() -> None:
    # draft-11, B.2.1: the client has 99 units left for the next 50 seconds.
    report = read(
        [("RateLimit", '"fixedwindow";r=99;t=50'), ("RateLimit-Policy", '"fixedwindow";q=100;w=60')]
    )

    assert report.readings == (
        Reading("requests", 100, 99, timedelta(seconds=50), window=timedelta(seconds=60)),
    )


def test_ietf_limit_without_a_policy_counts_requests() -> None:
    # draft-11, 4.2: "RateLimit: "default";r=50;t=30"
    report = read({"RateLimit": '"default";r=50;t=30'})

    assert report.readings == (Reading("requests", None, 50, timedelta(seconds=30)),)


def test_ietf_of_several_policies_the_one_that_binds_first_is_read() -> None:
    # draft-11, B.3.1: 100 units left of the daily quota, none said of the hourly one.
    report = read(
        {
            "RateLimit-Policy": '"hour";q=1000;w=3600, "day";q=5000;w=86400',
            "RateLimit": '"day";r=100;t=36000',
        }
    )

    assert report.readings == (
        Reading("requests", 5000, 100, timedelta(hours=10), window=timedelta(days=1)),
    )


def test_ietf_without_any_r_the_smallest_quota_is_read() -> None:
    # draft-11, 3.2: two policies, and no RateLimit field.
    report = read({"RateLimit-Policy": '"permin";q=50;w=60,"perhr";q=1000;w=3600'})

    assert report.readings == (Reading("requests", 50, None, None, window=timedelta(minutes=1)),)


def test_ietf_the_least_left_binds_whichever_policy_it_is() -> None:
    report = read(
        [
            ("RateLimit-Policy", '"sliding";q=100;w=60;burst=1000'),
            ("RateLimit-Policy", '"fixed";q=5000;w=3600;burst=0'),
            ("RateLimit", '"sliding";r=50;t=44, "fixed";r=20;t=600'),
        ]
    )

    assert report.readings == (
        Reading("requests", 5000, 20, timedelta(minutes=10), window=timedelta(hours=1)),
    )


def test_ietf_token_units_map_to_token_quotas() -> None:
    report = read(
        {
            "RateLimit-Policy": (
                '"rpm";q=60;w=60, "tpm";q=90000;qu="tokens";w=60, '
                '"in";q=40000;qu="input-tokens";w=60, "out";q=8000;qu="output-tokens";w=60'
            ),
            "RateLimit": '"rpm";r=59;t=1, "tpm";r=89000;t=2, "in";r=3;t=3, "out";r=4;t=4',
        }
    )

    minute = timedelta(minutes=1)
    assert report.readings == (
        Reading("requests", 60, 59, timedelta(seconds=1), window=minute),
        Reading("tokens", 90000, 89000, timedelta(seconds=2), window=minute),
        Reading("input_tokens", 40000, 3, timedelta(seconds=3), window=minute),
        Reading("output_tokens", 8000, 4, timedelta(seconds=4), window=minute),
    )


def test_ietf_units_that_are_no_quota_here_are_left_out_with_their_limits() -> None:
    # draft-11, 3.2: a content-bytes policy with a partition key.
    report = read(
        {
            "RateLimit-Policy": '"peruser";q=65535;qu="content-bytes";w=10;pk=:sdfjLJUOUH==:',
            "RateLimit": '"peruser";r=300000000;t=60;pk=:QXBwLTk5OQ==:',
        }
    )

    assert report == ProviderReport()


def test_ietf_partition_keys_are_read_past() -> None:
    # draft-11, 4.2: "an available quota of 999 requests for a partition key"
    report = read({"RateLimit": '"default";r=999;pk=:dHJpYWwxMjEzMjM=:'})

    assert report.readings == (Reading("requests", None, 999, None),)


def test_ietf_throttled_response_with_an_http_date_retry_after() -> None:
    # draft-11, B.1.4, read at the response's own Date.
    report = read_headers(
        {"Retry-After": "Mon, 05 Aug 2019 09:27:05 GMT", "RateLimit": '"default";r=0;t=5'},
        now=datetime(2019, 8, 5, 9, 27, 0, tzinfo=UTC),
    )

    assert report.retry_after == timedelta(seconds=5)
    assert report.readings == (Reading("requests", None, 0, timedelta(seconds=5)),)


@pytest.mark.parametrize(
    "fields",
    [
        {"RateLimit": "default;r=50;t=30"},  # a Token, not a String, names the policy
        {"RateLimit": '%"default";r=50;t=30'},  # nor a Display String
        {"RateLimit": "@1;r=50;t=30"},  # nor a Date
        {"RateLimit": '"default";r=50;t=30,'},  # a trailing comma fails the whole field
        {"RateLimit": '("default");r=50'},  # an Inner List is no Item
        {"RateLimit": '"default";r=-1;t=30'},
        {"RateLimit": '"default";r=5.0;t=30'},
        {"RateLimit": '"default";r="5"'},
        {"RateLimit": '"default";R=5'},
        {"RateLimit": '"default";r=1234567890123456'},  # 16 digits: no Integer
        {"RateLimit-Policy": '"default";w=60'},  # no quota
    ],
)
def test_ietf_malformed_fields_are_ignored(
    fields: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        report = read(fields)

    assert report == ProviderReport()
    assert [record.levelno for record in caplog.records] == [logging.DEBUG]


def test_ietf_an_out_of_bounds_t_or_w_leaves_the_rest_of_the_item() -> None:
    report = read(
        {"RateLimit-Policy": '"month";q=100;w=99999999999', "RateLimit": '"month";r=7;t=172800'}
    )

    assert report.readings == (Reading("requests", 100, 7, None),)


def test_ietf_fields_longer_than_the_bound_are_ignored_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    line = ", ".join(['"p";r=1;t=1'] * 19)  # 245 characters, 4 of them joined 983
    assert len(line) <= MAX_FIELD_LENGTH
    assert 4 * len(line) + 3 <= MAX_LIST_LENGTH < 5 * len(line) + 4

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        four = read([("RateLimit", line)] * 4)
        five = read([("RateLimit", line)] * 5)

    assert four.readings == (Reading("requests", None, 1, timedelta(seconds=1)),)
    assert five == ProviderReport()
    assert f"longer than {MAX_LIST_LENGTH}" in caplog.text


def test_provider_headers_win_over_the_ietf_fields_and_readings_are_not_mixed() -> None:
    report = read(
        {
            "anthropic-ratelimit-requests-remaining": "10",
            "RateLimit-Policy": '"p";q=100;w=60',
            "RateLimit": '"p";r=5;t=9',
            "x-ratelimit-remaining-tokens": "3",
        }
    )

    assert report.readings == (
        Reading("requests", None, 10, None),
        Reading("tokens", None, 3, None),
    )


# --------------------------------------------------------------------------
# Retry-After
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "after"),
    [
        ({"Retry-After": "120"}, timedelta(minutes=2)),
        ({"Retry-After": "0"}, timedelta(0)),
        ({"Retry-After": "1.5"}, timedelta(seconds=1.5)),
        ({"Retry-After": "Thu, 21 Aug 2025 12:41:00 GMT"}, timedelta(seconds=30)),
        ({"Retry-After": "Thursday, 21-Aug-25 12:41:00 GMT"}, timedelta(seconds=30)),
        ({"Retry-After": "Thu Aug 21 12:41:00 2025"}, timedelta(seconds=30)),
        ({"Retry-After": "Thu, 21 Aug 2025 12:00:00 GMT"}, timedelta(0)),  # past
        ({"retry-after-ms": "1500"}, timedelta(milliseconds=1500)),
        ({"retry-after-ms": "0.5"}, timedelta(microseconds=500)),
        ({"retry-after-ms": "250", "retry-after": "1"}, timedelta(milliseconds=250)),
        ({"retry-after-ms": "soon", "retry-after": "1"}, timedelta(seconds=1)),
        ({"Retry-After": "86400"}, MAX_RETRY_AFTER),
    ],
)
def test_retry_after_in_every_form(fields: dict[str, str], after: timedelta) -> None:
    assert read(fields).retry_after == after


@pytest.mark.parametrize(
    "value",
    [
        "86401",
        "-1",
        "1e3",
        "NaN",
        "inf",
        "soon",
        "Fri, 22 Aug 2025 12:40:31 GMT",  # a second more than a day away
        "Thu, 32 Aug 2025 12:41:00 GMT",
        "12345678901234567",
    ],
)
def test_retry_after_out_of_bounds_or_malformed_is_ignored(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert read({"Retry-After": value}).retry_after is None

    assert len(caplog.records) == 1
    assert "retry-after" in caplog.records[0].getMessage()


# --------------------------------------------------------------------------
# Shapes of headers
# --------------------------------------------------------------------------


def test_names_are_read_without_regard_to_case() -> None:
    shouted = {name.upper(): value for name, value in OPENAI.items()}
    mixed = {name.title(): value for name, value in OPENAI.items()}

    assert read(shouted) == read(mixed) == read(OPENAI)


def test_bytes_names_and_values_read_as_text() -> None:
    pairs = [(name.encode(), value.encode()) for name, value in OPENAI.items()]

    assert read(pairs) == read(OPENAI)
    assert read(bytearray(b"x")) == ProviderReport()


def test_httpx_headers_are_read_line_by_line() -> None:
    # httpx joins repeated names with ", " in items(); each line is read instead.
    headers = httpx.Headers(
        [
            ("RateLimit-Policy", '"hour";q=1000;w=3600'),
            ("RateLimit-Policy", '"day";q=5000;w=86400'),
            ("RateLimit", '"day";r=100;t=36000'),
            ("x-ratelimit-remaining-tokens", "7"),
            ("X-Ratelimit-Remaining-Tokens", "7"),
        ]
    )

    assert read(headers).readings == (
        Reading("requests", 5000, 100, timedelta(hours=10), window=timedelta(days=1)),
        Reading("tokens", None, 7, None),
    )


def test_repeats_that_disagree_leave_the_field_unread(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        report = read(
            [
                ("x-ratelimit-remaining-tokens", "7"),
                ("x-ratelimit-remaining-tokens", "70"),
                ("x-ratelimit-limit-tokens", "100"),
            ]
        )

    assert report.readings == (Reading("tokens", 100, None, None),)
    assert "came 2 times" in caplog.text


@pytest.mark.parametrize(
    "value",
    [
        "-1",
        "+5",
        "1.5",
        "1e3",
        "NaN",
        "inf",
        "",
        "0x10",
        "\u0661\u0662",  # Arabic-Indic digits: digits to str.isdigit, not to HTTP
        str(2**53),
        "1" * (MAX_FIELD_LENGTH + 1),
    ],
)
def test_malformed_counts_are_ignored_with_a_debug_line(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        report = read({"x-ratelimit-limit-tokens": value, "x-ratelimit-remaining-tokens": "5"})

    assert report.readings == (Reading("tokens", None, 5, None),)
    assert [record.levelno for record in caplog.records] == [logging.DEBUG]
    assert "x-ratelimit-limit-tokens" in caplog.text


@pytest.mark.parametrize(
    "value",
    ["-1s", "1", "1.s", "s", "1d", "1 s", "24h0m0.000001s", "2562047h47m16.854775807s", "NaN"],
)
def test_malformed_or_too_long_durations_are_ignored(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        report = read({"x-ratelimit-reset-tokens": value})

    assert report == ProviderReport()
    assert len(caplog.records) == 1


@pytest.mark.parametrize(
    "value",
    [
        "2025-08-21",
        "2025-08-21T12:41:00",  # no offset: no instant
        "2025-02-30T12:41:00Z",
        "2025-08-21T12:41:00+24:00",
        "1755780060",
        "2025-08-22T12:40:31Z",  # a second more than a day away
        "9999-12-31T23:59:59.9999999Z",
    ],
)
def test_malformed_or_far_off_instants_are_ignored(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        report = read({"anthropic-ratelimit-tokens-reset": value})

    assert report == ProviderReport()
    assert len(caplog.records) == 1


def test_unknown_quotas_of_a_provider_are_logged_and_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        report = read(
            {"x-ratelimit-limit-images": "5", "anthropic-ratelimit-priority-remaining": "1"}
        )

    assert report == ProviderReport()
    assert "x-ratelimit-limit-images" in caplog.text
    assert "anthropic-ratelimit-priority-remaining" in caplog.text


def test_other_headers_are_not_read_or_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        report = read({"authorization": "Bearer secret", "content-type": "application/json"})

    assert report == ProviderReport()
    assert caplog.records == []


class Exploding:
    def __iter__(self) -> Any:
        yield ("x-ratelimit-remaining-tokens", "5")
        raise RuntimeError("a broken headers object")


@pytest.mark.parametrize(
    "headers",
    [None, 42, 4.5, "x-ratelimit-limit-tokens: 5", b"abc", object(), [1, 2, (1, 2, 3)]],
)
def test_what_is_not_headers_reads_as_an_empty_report(headers: object) -> None:
    assert read(headers) == ProviderReport()


def test_a_headers_object_that_fails_midway_keeps_what_was_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        report = read(Exploding())

    assert report.readings == (Reading("tokens", None, 5, None),)
    assert "RuntimeError" in caplog.text


def test_only_the_first_max_fields_pairs_are_read() -> None:
    noise = [("x-other", "1")] * (MAX_FIELDS - 1)
    last = [("x-ratelimit-remaining-tokens", "5")]
    beyond = [("x-ratelimit-remaining-requests", "6")]

    report = read(noise + last + beyond)

    assert report.readings == (Reading("tokens", None, 5, None),)


def test_a_pair_of_wrong_types_is_skipped_and_the_rest_read() -> None:
    report = read(
        [(5, "1"), ("x-ratelimit-remaining-tokens", 5), ("x-ratelimit-limit-tokens", "9")]
    )

    assert report.readings == (Reading("tokens", 9, None, None),)


# --------------------------------------------------------------------------
# The structured-field parser, against http-sfv
# --------------------------------------------------------------------------


def _theirs(text: str) -> list[tuple[object, dict[str, object]]] | None:
    members = http_sfv.List()
    try:
        members.parse(text.encode("ascii"))
    except ValueError:
        return None
    if any(not isinstance(member, http_sfv.Item) for member in members):
        return None  # an Inner List: valid in a List, not in these two fields
    return [
        (_plain(item.value), {k: _plain(v) for k, v in item.params.items()}) for item in members
    ]


def _ours(text: str) -> list[tuple[object, dict[str, object]]] | None:
    parsed = _StructuredList(text).parse()
    if parsed is None:
        return None
    return [(_plain(item), {k: _plain(v) for k, v in params.items()}) for item, params in parsed]


def _plain(value: object) -> object:
    """A bare item as a comparable pair of its kind and what both parsers agree on."""
    if isinstance(value, datetime | _Date):
        return ("date", None)  # http-sfv makes a naive datetime of it
    if isinstance(value, bool | int | Decimal):
        return (type(value).__name__, value)
    if isinstance(value, http_sfv.Token | _Token):
        return ("token", str(value))
    if isinstance(value, bytes):
        return ("bytes", None)  # http-sfv decodes the base64; no value here needs it
    if isinstance(value, http_sfv.DisplayString | _Display):
        return ("display", str(value))
    assert type(value) is str
    return ("string", value)


SF_PIECES = st.sampled_from(
    ['"day"', '"a\\"b"', "tok", "*x", ";r=", ";q=", ";qu=", ";w=", ";t=", ";pk=", ";k", ";A=",
     "1", "-5", "12.5", "1.", "1234567890123456", "?1", "?2", ":QXA=:", ":!:", "@12", "@1.5",
     '%"h%c3%a9"', '%"%C3"', "(a b)", ", ", ",", " ", "\t", '"', "\\", "=", ";"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(SF_PIECES, max_size=12).map("".join))
@example('"day";q=5000;w=86400, "hour";q=1000;w=3600')
@example('"peruser";q=65535;qu="content-bytes";w=10;pk=:sdfjLJUOUH==:')
@example('"a";x=1.5;d=@12;s=%"h%c3%a9";b=?0, tok;k')
def test_the_structured_field_parser_agrees_with_http_sfv(text: str) -> None:
    ours, theirs = _ours(text), _theirs(text)

    if ours == []:
        # An empty List is no field at all (RFC 9651 4.2); http-sfv refuses it.
        assert text.strip(" \t") == ""
    elif ours is not None:
        assert ours == theirs
    elif theirs is not None:
        # http-sfv takes a Decimal that ends in "." (RFC 9651 4.2.4 refuses it).
        assert any(piece in text for piece in ("1.", "2.", "5."))

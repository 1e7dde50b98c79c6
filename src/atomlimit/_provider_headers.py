"""A model provider's own rate-limit figures, read from its response headers.

`read_headers` turns the headers of
one response into a `ProviderReport`:
per quota, the limit, what is left and when the window resets, as the
provider reported them, and how long it asked the caller to wait. It reads:

- OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, the
  resets in OpenAI's duration format (``6m0s``, ``1s``, ``20ms``, ``1.5s``);
- Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
  {limit,remaining,reset}``, the resets as RFC 3339 instants;
- the ``RateLimit-Policy`` and ``RateLimit`` fields of
  draft-ietf-httpapi-ratelimit-headers-11;
- ``Retry-After`` (delay-seconds or an HTTP-date) and ``retry-after-ms``.

The headers come off the network, so nothing in them can make the caller's
request fail: a value that is unknown, malformed or out of bounds is left
out of the report, with a DEBUG line on the ``atomlimit.provider_headers``
logger, and the rest of the report stands. Every value is bounded before any
arithmetic (see the ``MAX_`` constants), so no header, however written, costs
more than a few microseconds to refuse.

Pure: the only clock read is ``now``'s default.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from itertools import islice
from typing import Literal, get_args

from atomlimit._errors import InvalidInput
from atomlimit._inputs import MAX_WINDOW
from atomlimit._money import MAX_UNITS

Quota = Literal["requests", "tokens", "input_tokens", "output_tokens"]
"""What a provider counts against a limit: requests, or tokens (all tokens,
the prompt's, or the completion's)."""
QUOTAS: tuple[Quota, ...] = get_args(Quota)

MAX_FIELDS = 256
"""Most header pairs examined in one call; the pairs after these are not read.
A provider's response carries a few dozen."""
MAX_FIELD_LENGTH = 256
"""Longest header value read, in characters (or bytes); a longer one is
ignored. The longest a provider sends is a ``RateLimit-Policy`` of a few
policies, well under 100."""
MAX_LIST_LENGTH = 1_024
"""Longest ``RateLimit`` or ``RateLimit-Policy`` read, its lines joined; a
longer one is ignored whole. Parsing is linear, but a List of 256 lines of
256 characters would still cost two thousand times a typical response."""
MAX_RESET = timedelta(days=1)
"""Longest ``reset_after`` taken: providers' windows are a minute to a day.
A reset further away is ignored, and a reset already past reads as zero."""
MAX_RETRY_AFTER = timedelta(days=1)
"""Longest ``retry_after`` taken; a longer wait is ignored, and an HTTP-date
already past reads as zero."""

_log = logging.getLogger("atomlimit.provider_headers")

_US_PER_SECOND = 1_000_000
_MAX_NAME = 64
"""Longer header names are none of ours: not lowered, not read."""

_OPENAI = "x-ratelimit-"
_ANTHROPIC = "anthropic-ratelimit-"
_POLICY = "ratelimit-policy"
_RATE_LIMIT = "ratelimit"
_RETRY_AFTER = "retry-after"
_RETRY_AFTER_MS = "retry-after-ms"
_OPENAI_QUOTAS: tuple[Quota, ...] = ("requests", "tokens")

_IETF_UNITS: dict[str, Quota] = {
    # The draft's default is "requests" (its section 3.1.2); its IANA table
    # registers "request", so both spellings are read.
    "requests": "requests",
    "request": "requests",
    "tokens": "tokens",
    "input-tokens": "input_tokens",
    "output-tokens": "output_tokens",
}

_COUNT = re.compile(r"[0-9]{1,16}")  # MAX_UNITS has 16 digits
_SECONDS = re.compile(r"([0-9]{1,16})(?:\.([0-9]{1,9}))?")
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:h|ms|m|s|us|\u00b5s|\u03bcs|ns))+")
_DURATION_PART = re.compile(r"([0-9]+)(?:\.([0-9]+))?(h|ms|m|s|us|\u00b5s|\u03bcs|ns)")
_NS_PER_UNIT = {
    "h": 3_600_000_000_000,
    "m": 60_000_000_000,
    "s": 1_000_000_000,
    "ms": 1_000_000,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign, as Go's Duration.String() writes it
    "\u03bcs": 1_000,  # Greek mu, which Go's parser also takes
    "ns": 1,
}
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_HTTP_DATE = re.compile(r"[A-Za-z][A-Za-z0-9 ,:\-]*")


@dataclass(frozen=True, slots=True)
class Reading:
    """One quota as the provider reported it on one response.

    Each figure is ``None`` when the provider did not report it, or reported
    it in a form that could not be read. A reading has at least one figure.
    """

    quota: Quota
    """What the figures count: ``"requests"``, ``"tokens"``, ``"input_tokens"``
    or ``"output_tokens"``."""
    limit: int | None
    """The provider's limit for the quota, between 0 and 2**53 - 1."""
    remaining: int | None
    """What the provider says is left of it, between 0 and 2**53 - 1."""
    reset_after: timedelta | None
    """Until the provider's window resets, counted from the ``now`` the headers
    were read at; between zero and `MAX_RESET`."""
    window: timedelta | None = None
    """The policy's window, where the provider states it (the ``w`` of a
    ``RateLimit-Policy``); at most a year."""


@dataclass(frozen=True, slots=True)
class ProviderReport:
    """What one response's headers said about the caller's limits.

    An empty report (no readings, no ``retry_after``) means the headers held
    nothing readable; it is not an error.
    """

    readings: tuple[Reading, ...] = ()
    """At most one `Reading` per quota,
    in the order of `QUOTAS`."""
    retry_after: timedelta | None = None
    """How long the provider asked the caller to wait before the next request,
    from ``retry-after-ms`` or else ``Retry-After``; between zero and
    `MAX_RETRY_AFTER`."""

    def reading(self, quota: Quota) -> Reading | None:
        """The reading of ``quota``, or ``None`` when the headers had none."""
        for reading in self.readings:
            if reading.quota == quota:
                return reading
        return None


def read_headers(headers: object, *, now: datetime | None = None) -> ProviderReport:
    """Read a provider's rate-limit figures from the headers of one response.

    ``headers`` is a mapping of names to values (a ``dict``, ``httpx.Headers``,
    any object with ``items()``), or an iterable of ``(name, value)`` pairs;
    names and values may be ``str`` or ``bytes``, and names are read without
    regard to case. Anything else reads as no headers.

    Where one response reports a quota in more than one format, the
    provider's own headers win over the IETF fields, Anthropic's over
    OpenAI's, and a reading is taken whole from one format, never mixed.

    Of the IETF fields, a policy is read when its quota unit (``qu``, default
    ``"requests"``) is ``"requests"``, ``"tokens"``, ``"input-tokens"`` or
    ``"output-tokens"``; a ``RateLimit`` item without a policy of its name
    counts requests. When several policies count the same quota, the one
    that binds first is read: the least ``r`` left, or without any ``r``,
    the smallest quota ``q``.

    Never raises on what the headers hold: a name, value or pair that cannot
    be read is skipped, with a DEBUG log line. Raises
    [`InvalidInput`][atomlimit.errors.InvalidInput] only when ``now`` (default:
    the local clock) is not an aware ``datetime``, a mistake in the calling
    code rather than in the response.

    >>> from datetime import datetime, timezone
    >>> report = read_headers(
    ...     {"x-ratelimit-remaining-tokens": "149984", "x-ratelimit-reset-tokens": "6m0s"},
    ...     now=datetime(2025, 1, 1, tzinfo=timezone.utc),
    ... )
    >>> tokens = report.reading("tokens")
    >>> tokens.limit, tokens.remaining, tokens.reset_after
    (None, 149984, datetime.timedelta(seconds=360))
    """
    now = _checked_now(now)
    fields = _fields(headers)
    found: dict[Quota, Reading] = {}
    for source in (_anthropic(fields, now), _openai(fields), _ietf(fields)):
        for reading in source:
            found.setdefault(reading.quota, reading)
    return ProviderReport(
        readings=tuple(found[quota] for quota in QUOTAS if quota in found),
        retry_after=_retry_after(fields, now),
    )


def _checked_now(now: object) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise InvalidInput(f"now must be an aware datetime, got {type(now).__name__}")
    return now


# --------------------------------------------------------------------------
# The caller's headers, as lowered names and bounded text values
# --------------------------------------------------------------------------


def _fields(headers: object) -> dict[str, list[str]]:
    """The values of each name this module reads, in order, from at most
    MAX_FIELDS pairs. Other names are dropped unread."""
    fields: dict[str, list[str]] = {}
    try:
        for pair in islice(_pairs(headers), MAX_FIELDS):
            named = _pair(pair)
            if named is not None:
                fields.setdefault(named[0], []).append(named[1])
    except Exception as error:
        # The headers object is the caller's (or a library's): its iteration
        # is foreign code, and a failure there must not fail the request.
        _log.debug("provider headers: reading the headers failed: %s", type(error).__name__)
    return fields


def _pairs(headers: object) -> Iterator[object]:
    if isinstance(headers, str | bytes | bytearray):
        _log.debug("provider headers: got %s, not headers", type(headers).__name__)
        return iter(())
    # httpx.Headers.items() joins repeated names with ", "; multi_items()
    # keeps each line, as the other shapes do.
    multi_items = getattr(headers, "multi_items", None)
    if callable(multi_items):
        return iter(multi_items())
    if isinstance(headers, Mapping) or callable(getattr(headers, "items", None)):
        return iter(headers.items())  # type: ignore[attr-defined]
    if isinstance(headers, Iterable):
        return iter(headers)
    _log.debug("provider headers: got %s, not headers", type(headers).__name__)
    return iter(())


def _pair(pair: object) -> tuple[str, str] | None:
    if not isinstance(pair, tuple | list) or len(pair) != 2:
        _log.debug("provider headers: skipped a %s that is no (name, value) pair", type(pair))
        return None
    name = _text(pair[0], _MAX_NAME)
    if name is None:
        return None
    name = name.lower()
    if not _is_ours(name):
        return None
    value = _text(pair[1], MAX_FIELD_LENGTH)
    if value is None:
        _log.debug("provider headers: ignored %s: not text of at most %d", name, MAX_FIELD_LENGTH)
        return None
    return name, value


def _text(value: object, longest: int) -> str | None:
    if isinstance(value, str):
        return value if len(value) <= longest else None
    if isinstance(value, bytes | bytearray):
        # Field values are ISO-8859-1 on the wire; every value read here is
        # ASCII, so the decoding only has to be total.
        return bytes(value).decode("latin-1") if len(value) <= longest else None
    return None


def _is_ours(name: str) -> bool:
    return name.startswith((_OPENAI, _ANTHROPIC)) or name in (
        _POLICY,
        _RATE_LIMIT,
        _RETRY_AFTER,
        _RETRY_AFTER_MS,
    )


def _single(fields: dict[str, list[str]], name: str) -> str | None:
    """The one value of ``name``: repeats that agree count once, repeats that
    disagree leave it unread."""
    values = fields.get(name)
    if not values:
        return None
    first = values[0].strip(" \t")
    if any(value.strip(" \t") != first for value in values[1:]):
        _log.debug("provider headers: ignored %s: it came %d times, differing", name, len(values))
        return None
    return first


# --------------------------------------------------------------------------
# Provider formats
# --------------------------------------------------------------------------


def _openai(fields: dict[str, list[str]]) -> Iterator[Reading]:
    for name in fields:
        if name.startswith(_OPENAI) and name.removeprefix(_OPENAI) not in _OPENAI_NAMES:
            _log.debug("provider headers: ignored %s: no quota atomlimit reads", name)
    for quota in _OPENAI_QUOTAS:
        reading = _reading(
            quota,
            limit=_count(fields, f"{_OPENAI}limit-{quota}"),
            remaining=_count(fields, f"{_OPENAI}remaining-{quota}"),
            reset_after=_duration(fields, f"{_OPENAI}reset-{quota}"),
        )
        if reading is not None:
            yield reading


_OPENAI_NAMES = frozenset(
    f"{part}-{quota}" for part in ("limit", "remaining", "reset") for quota in _OPENAI_QUOTAS
)


def _anthropic(fields: dict[str, list[str]], now: datetime) -> Iterator[Reading]:
    for name in fields:
        if name.startswith(_ANTHROPIC) and name.removeprefix(_ANTHROPIC) not in _ANTHROPIC_NAMES:
            _log.debug("provider headers: ignored %s: no quota atomlimit reads", name)
    for quota in QUOTAS:
        prefix = f"{_ANTHROPIC}{quota.replace('_', '-')}-"
        reading = _reading(
            quota,
            limit=_count(fields, f"{prefix}limit"),
            remaining=_count(fields, f"{prefix}remaining"),
            reset_after=_instant(fields, f"{prefix}reset", now),
        )
        if reading is not None:
            yield reading


_ANTHROPIC_NAMES = frozenset(
    f"{quota.replace('_', '-')}-{part}"
    for quota in QUOTAS
    for part in ("limit", "remaining", "reset")
)


def _reading(
    quota: Quota,
    *,
    limit: int | None,
    remaining: int | None,
    reset_after: timedelta | None,
    window: timedelta | None = None,
) -> Reading | None:
    if limit is None and remaining is None and reset_after is None:
        return None
    return Reading(quota, limit, remaining, reset_after, window)


def _count(fields: dict[str, list[str]], name: str) -> int | None:
    value = _single(fields, name)
    if value is None:
        return None
    if _COUNT.fullmatch(value) is None or int(value) > MAX_UNITS:
        _log.debug("provider headers: ignored %s: not a whole number up to %d", name, MAX_UNITS)
        return None
    return int(value)


def _duration(fields: dict[str, list[str]], name: str) -> timedelta | None:
    """OpenAI's duration, which is Go's ``time.Duration`` text: ``2h3m4.5s``,
    ``20ms``, ``0s``; unsigned, and at most MAX_RESET."""
    value = _single(fields, name)
    if value is None:
        return None
    if value == "0":  # the one unitless duration Go writes and reads
        return timedelta(0)
    if _DURATION.fullmatch(value) is None:
        _log.debug("provider headers: ignored %s: not a duration such as 6m0s", name)
        return None
    nanoseconds = 0
    for whole, fraction, unit in _DURATION_PART.findall(value):
        scale: int = 10 ** len(fraction)
        nanoseconds += (int(whole) * scale + int(fraction or 0)) * _NS_PER_UNIT[unit] // scale
    return _bounded(-(-nanoseconds // 1_000), MAX_RESET, name)


def _instant(fields: dict[str, list[str]], name: str, now: datetime) -> timedelta | None:
    """An RFC 3339 instant, as the time from ``now`` until it."""
    value = _single(fields, name)
    if value is None:
        return None
    at = _rfc3339(value)
    if at is None:
        _log.debug("provider headers: ignored %s: not an RFC 3339 instant", name)
        return None
    return _until(at, now, MAX_RESET, name)


def _rfc3339(value: str) -> datetime | None:
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    leap = second == "60"  # RFC 3339 allows a leap second; datetime does not
    try:
        offset = timedelta(0)
        if sign is not None:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            offset = -offset if sign == "-" else offset
        at = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            59 if leap else int(second),
            tzinfo=timezone(offset),
        )
        fraction = fraction or ""
        # Rounded up to the microsecond: never earlier than the provider said.
        micro = int(fraction[:6].ljust(6, "0")) + (1 if fraction[6:].strip("0") else 0)
        return at + timedelta(seconds=1 if leap else 0, microseconds=micro)
    except (ValueError, OverflowError):  # a day, hour or offset out of range
        return None


# --------------------------------------------------------------------------
# Retry-After
# --------------------------------------------------------------------------


def _retry_after(fields: dict[str, list[str]], now: datetime) -> timedelta | None:
    # retry-after-ms is the finer of the two, where a provider sends both.
    value = _single(fields, _RETRY_AFTER_MS)
    if value is not None:
        micro = _decimal_us(value, 1_000)
        if micro is not None:
            return _bounded(micro, MAX_RETRY_AFTER, _RETRY_AFTER_MS)
        _log.debug("provider headers: ignored %s: not a number of milliseconds", _RETRY_AFTER_MS)
    value = _single(fields, _RETRY_AFTER)
    if value is None:
        return None
    micro = _decimal_us(value, _US_PER_SECOND)
    if micro is not None:
        return _bounded(micro, MAX_RETRY_AFTER, _RETRY_AFTER)
    at = _http_date(value)
    if at is None:
        _log.debug("provider headers: ignored %s: neither seconds nor an HTTP-date", _RETRY_AFTER)
        return None
    return _until(at, now, MAX_RETRY_AFTER, _RETRY_AFTER)


def _decimal_us(value: str, us_per_unit: int) -> int | None:
    """Whole microseconds in an unsigned decimal number of units, rounded up.

    RFC 9110's delay-seconds is whole; a fraction is read as well, because
    OpenAI's own client reads ``retry-after`` as a float.
    """
    match = _SECONDS.fullmatch(value)
    if match is None:
        return None
    whole: str = match.group(1)
    fraction: str = match.group(2) or ""
    scale: int = 10 ** len(fraction)
    return -(-(int(whole) * scale + int(fraction or 0)) * us_per_unit // scale)


def _http_date(value: str) -> datetime | None:
    """An HTTP-date in any of RFC 9110's three forms, read as UTC."""
    if _HTTP_DATE.fullmatch(value) is None:
        return None
    try:
        at = parsedate_to_datetime(value)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _until(at: datetime, now: datetime, longest: timedelta, name: str) -> timedelta | None:
    """From ``now`` to ``at``: zero when ``at`` is past, ignored beyond ``longest``."""
    try:
        left = at - now
    except OverflowError:
        left = longest + longest
    if left > longest:
        _log.debug("provider headers: ignored %s: more than %s away", name, longest)
        return None
    return max(left, timedelta(0))


def _bounded(microseconds: int, longest: timedelta, name: str) -> timedelta | None:
    if microseconds > longest // timedelta(microseconds=1):
        _log.debug("provider headers: ignored %s: more than %s", name, longest)
        return None
    return timedelta(microseconds=microseconds)


# --------------------------------------------------------------------------
# The IETF fields: RateLimit-Policy and RateLimit
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Policy:
    quota: Quota
    limit: int | None = None
    window: timedelta | None = None
    remaining: int | None = None
    reset_after: timedelta | None = None


def _ietf(fields: dict[str, list[str]]) -> Iterator[Reading]:
    # Each policy by name; None for one whose unit is none of QUOTAS or that
    # has no quota, so that its RateLimit item is not read as requests either.
    policies: dict[str, _Policy | None] = {}
    for name, params in _members(fields, _POLICY):
        if name in policies:
            continue  # the first of a name is its policy
        unit = params.get("qu", "requests")
        quota = _IETF_UNITS.get(unit) if type(unit) is str else None
        limit = _param_count(params, "q")
        if quota is None or limit is None:
            _log.debug("provider headers: ignored a policy: it has no q, or a unit not read")
            policies[name] = None
            continue
        window = _param_seconds(params, "w", MAX_WINDOW)
        policies[name] = _Policy(quota, limit=limit, window=window or None)
    for name, params in _members(fields, _RATE_LIMIT):
        remaining = _param_count(params, "r")
        if remaining is None:
            _log.debug("provider headers: ignored a RateLimit item without a count r")
            continue
        # Without a policy of its name, an item counts the draft's default unit.
        policy = policies.setdefault(name, _Policy("requests"))
        if policy is None or policy.remaining is not None:
            continue
        policy.remaining = remaining
        policy.reset_after = _param_seconds(params, "t", MAX_RESET)
    for quota in QUOTAS:
        counting = [
            policy for policy in policies.values() if policy is not None and policy.quota == quota
        ]
        if counting:
            chosen = min(counting, key=_binding)
            yield Reading(quota, chosen.limit, chosen.remaining, chosen.reset_after, chosen.window)


def _binding(policy: _Policy) -> tuple[int, int]:
    """Policies that say what is left come first, the least left first; then
    the smallest quota. Both counts are at most MAX_UNITS."""
    if policy.remaining is not None:
        return (0, policy.remaining)
    return (1, MAX_UNITS if policy.limit is None else policy.limit)


def _param_count(params: dict[str, object], key: str) -> int | None:
    value = params.get(key)
    return value if type(value) is int and 0 <= value <= MAX_UNITS else None


def _param_seconds(params: dict[str, object], key: str, longest: timedelta) -> timedelta | None:
    value = params.get(key)
    if type(value) is int and 0 <= value <= longest // timedelta(seconds=1):
        return timedelta(seconds=value)
    return None


def _members(fields: dict[str, list[str]], field: str) -> list[tuple[str, dict[str, object]]]:
    """The Items of a List field whose value is a String, with their
    parameters. A field that is not a valid List is ignored whole, as the
    draft and RFC 9651 require; its lines are one List, joined."""
    lines = fields.get(field)
    if not lines:
        return []
    joined = ",".join(lines)
    if len(joined) > MAX_LIST_LENGTH:
        _log.debug("provider headers: ignored %s: longer than %d", field, MAX_LIST_LENGTH)
        return []
    parsed = _StructuredList(joined).parse()
    if parsed is None:
        _log.debug("provider headers: ignored %s: not a structured-field List", field)
        return []
    named = [(item, params) for item, params in parsed if type(item) is str]
    if len(named) < len(parsed):
        _log.debug(
            "provider headers: ignored %d items of %s not named by a String",
            len(parsed) - len(named),
            field,
        )
    return named


class _Token(str):
    """A structured-field Token, told apart from a String."""

    __slots__ = ()


class _Date(int):
    """A structured-field Date, told apart from an Integer."""

    __slots__ = ()


class _Display(str):
    """A structured-field Display String, told apart from a String."""

    __slots__ = ()


class _StructuredList:
    """A strict parser of RFC 9651 Lists of Items, which is all the two fields
    are. An Inner List, valid in a List but not in these fields, fails the
    field. Values are ``int``, ``Decimal``, ``str`` (String), ``_Token``,
    ``bytes``, ``bool``, ``_Date`` and ``_Display``: the subclasses keep a
    Token, Date or Display String from passing for a String or Integer."""

    __slots__ = ("at", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def parse(self) -> list[tuple[object, dict[str, object]]] | None:
        try:
            return self._list()
        except ValueError:
            return None

    def _peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def _skip(self, blanks: str) -> None:
        while self._peek() and self._peek() in blanks:
            self.at += 1

    def _list(self) -> list[tuple[object, dict[str, object]]]:
        members: list[tuple[object, dict[str, object]]] = []
        self._skip(" ")
        while self._peek():
            members.append((self._bare_item(), self._parameters()))
            self._skip(" \t")
            if not self._peek():
                break
            if self._peek() != ",":
                raise ValueError("a member is followed by no comma")
            self.at += 1
            self._skip(" \t")
            if not self._peek():
                raise ValueError("a trailing comma")
        return members

    def _parameters(self) -> dict[str, object]:
        params: dict[str, object] = {}
        while self._peek() == ";":
            self.at += 1
            self._skip(" ")
            key = self._key()
            value: object = True
            if self._peek() == "=":
                self.at += 1
                value = self._bare_item()
            params[key] = value  # a repeated key overwrites, as RFC 9651 says
        return params

    def _key(self) -> str:
        match = _SF_KEY.match(self.text, self.at)
        if match is None:
            raise ValueError("no key")
        self.at = match.end()
        return match.group()

    def _bare_item(self) -> object:
        char = self._peek()
        if char == "-" or (char.isascii() and char.isdigit()):
            return self._number()
        if char == '"':
            return self._string()
        if char == "*" or (char.isascii() and char.isalpha()):
            return self._match(_SF_TOKEN, _Token)
        if char == ":":
            return self._match(_SF_BYTES, lambda text: text[1:-1].encode("ascii"))
        if char == "?":
            return self._match(_SF_BOOLEAN, lambda text: text == "?1")
        if char == "@":
            self.at += 1
            seconds = self._number()
            if not isinstance(seconds, int):
                raise ValueError("a date that is not an Integer")
            return _Date(seconds)
        if char == "%":
            return self._match(_SF_DISPLAY, _display)
        raise ValueError("no bare item")

    def _match(self, pattern: re.Pattern[str], build: Callable[[str], object]) -> object:
        match = pattern.match(self.text, self.at)
        if match is None:
            raise ValueError("a malformed bare item")
        self.at = match.end()
        return build(match.group())

    def _number(self) -> int | Decimal:
        match = _SF_NUMBER.match(self.text, self.at)
        if match is None:
            raise ValueError("a malformed number")
        self.at = match.end()
        sign, whole, fraction = match.groups()
        if fraction is None:
            if len(whole) > 15:
                raise ValueError("an Integer of more than 15 digits")
            return -int(whole) if sign else int(whole)
        if len(whole) > 12 or not 1 <= len(fraction) <= 3:
            raise ValueError("a Decimal out of range")
        return Decimal(match.group())

    def _string(self) -> str:
        match = _SF_STRING.match(self.text, self.at)
        if match is None:
            raise ValueError("a malformed String")
        self.at = match.end()
        return re.sub(r"\\(.)", r"\1", match.group()[1:-1])


def _display(text: str) -> str:
    # %"..." with %xx escapes of UTF-8 (RFC 9651 section 4.2.10)
    raw = bytearray()
    body = text[2:-1]
    index = 0
    while index < len(body):
        if body[index] == "%":
            raw.append(int(body[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.append(ord(body[index]))
            index += 1
    return _Display(raw.decode("utf-8"))  # a UnicodeDecodeError is a ValueError: it fails


_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_NUMBER = re.compile(r"(-?)([0-9]+)(?:\.([0-9]*))?")
_SF_STRING = re.compile(r'"(?:[ !#-\[\]-~]|\\["\\])*"')
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_BYTES = re.compile(r":[A-Za-z0-9+/=]*:")
_SF_BOOLEAN = re.compile(r"\?[01]")
_SF_DISPLAY = re.compile(r'%"(?:[ !#$&-~]|%[0-9a-f]{2})*"')

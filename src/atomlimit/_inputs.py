"""Checks shared by every edge: identifiers, whole numbers, flags and durations.

Each refuses bad input with [`InvalidInput`][atomlimit.errors.InvalidInput] naming
the field and what it accepts, before anything is sent. Each decides by
magnitude first (a string's length, an int's bit length, a duration against
its maximum), so refusing a value costs no more than accepting one. Every
message shows the caller's value through `show`, which never formats
an unbounded value.

Every bound here is listed, with its reason, in docs/inputs.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel

from atomlimit._errors import InvalidInput

MAX_KEY_PART = 256
"""Longest identifier a caller puts between two ``:`` of a key (a cache key
part, a compat identifier, a cache version)."""
MAX_SUBJECT = 65_536
"""Longest subject, in characters; longer ones are hashed into the key anyway."""
MAX_REQUEST_ID = 1_024
"""Longest caller-chosen request id, in characters."""
MAX_HITS = 64
"""Most hits in one acquire: the limits one request passes, with room to spare."""
MAX_ZONE = 64
"""Longest time zone name; the longest IANA name has 32 characters."""
MAX_VALUE = 16 * 1024 * 1024
"""Largest stored cache value or session, in bytes (UTF-8 for text).

Redis takes up to 512 MB, but writing or reading a value that size stalls
the server for every client; 16 MiB is far above any cached API response.
"""

MAX_WINDOW = timedelta(days=366)
"""Longest fixed-length window: a leap year."""
MAX_LEASE = timedelta(days=366)
"""Longest Concurrency lease."""
MAX_HOLD = timedelta(days=366)
"""Longest reservation hold (``reserve(ttl=...)``, ``Hit(hold=...)``)."""
MAX_DEADLINE = timedelta(minutes=10)
"""Longest per-call deadline of an async limiter."""
MAX_TTL = timedelta(days=3650)
"""Longest a record lives: remembered request ids, cache entries, sessions.

Instants are integer microseconds since the epoch, and Lua holds them as
doubles, exact below 2**53 µs (the year 2255). Now plus this TTL, plus three
of the longest windows, ends before 2040: two centuries to spare.
"""

_MS = timedelta(milliseconds=1)
_US = timedelta(microseconds=1)
_SHOWN = 40
"""Characters of a caller's text or number that a message shows."""
_SMALL_BITS = 64

# Printable ASCII without ':', '{' or '}': the common case, checked in one go.
_PLAIN_PART = re.compile(rf"[!-9;-z|~]{{1,{MAX_KEY_PART}}}")
# IANA names: letters, digits, '_', '-', '+', separated by '/'. Checked before
# ZoneInfo reads the file system, so no name can be a path ('..', '/etc').
_ZONE = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*")


def show(value: object) -> str:
    """A caller's value, as a message may show it: short, and safe to build.

    ``str`` of an int past 4,300 digits raises, long text makes a long
    message, and the ``repr`` of an arbitrary object may be slow, huge or
    raise. So a big int is shown by its bit length, text and decimals are
    cut, and values of any other type (subclasses included, whose methods
    may be anything) by their type's name alone.
    """
    if value is None or type(value) in (bool, float, timedelta):
        return repr(value)
    if type(value) is int:
        bits = value.bit_length()
        return repr(value) if bits <= _SMALL_BITS else f"an int of {bits} bits"
    if type(value) is str or type(value) is bytes:
        if len(value) <= _SHOWN:
            return repr(value)
        return f"{value[:_SHOWN]!r}... ({len(value)} long)"
    if type(value) is Decimal:
        # Plain notation is used only when it is about as long as the digits.
        text = str(value)
        return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"
    if isinstance(value, type):
        return f"the class {value.__name__[:_SHOWN]}"
    return f"a value of type {type(value).__name__[:_SHOWN]}"


def days(span: timedelta) -> str:
    """A bound in whole days, for messages: ``"1 day"``, ``"366 days"``."""
    return "1 day" if span.days == 1 else f"{span.days} days"


def check_part(value: object, what: str) -> str:
    """``value`` if it may stand between two ``:`` of a key, else InvalidInput naming it."""
    if type(value) is not str:
        raise InvalidInput(f"{what} must be a str, got {type(value).__name__}")
    if _PLAIN_PART.fullmatch(value):
        return value
    if not value:
        raise InvalidInput(f"{what} is empty; it takes 1 to {MAX_KEY_PART} characters")
    if len(value) > MAX_KEY_PART:
        raise InvalidInput(
            f"{what} {value[:32]!r}... is {len(value)} characters long; at most {MAX_KEY_PART}"
        )
    for char in value:
        # ':' would shift every later part; '{' '}' would make a cluster hash tag.
        if char in ":{}" or char.isspace() or not char.isprintable():
            raise InvalidInput(
                f"{what} {value!r} contains {char!r}; it takes printable text without "
                "spaces, ':', '{' or '}'"
            )
    return value


def check_int(value: object, what: str, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool) from ``low`` to ``high``."""
    if type(value) is int and low <= value <= high:
        return value
    accepted = str(low) if low == high else f"an int between {low} and {high}"
    raise InvalidInput(f"{what} must be {accepted}, got {show(value)}")


def check_flag(value: object, what: str) -> bool:
    """``value`` if it is a bool: a truthy string such as ``"no"`` is a bug, not a yes."""
    if type(value) is bool:
        return value
    raise InvalidInput(f"{what} must be True or False, got {show(value)}")


def check_choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; its type is checked before any comparison."""
    if type(value) is str and value in choices:
        return value
    accepted = " or ".join(repr(choice) for choice in choices)
    raise InvalidInput(f"{what} must be {accepted}, got {show(value)}")


def check_request_id(value: object) -> str:
    """``value`` if it can name a charge: a non-empty str of at most MAX_REQUEST_ID."""
    if type(value) is str and 0 < len(value) <= MAX_REQUEST_ID:
        return value
    raise InvalidInput(
        f"request_id must be a non-empty str of at most {MAX_REQUEST_ID} characters, "
        f"got {show(value)}"
    )


def check_hits(value: object) -> Sequence[Any]:
    """``value`` if it is a list or tuple of 1 to MAX_HITS items (each checked later)."""
    if not isinstance(value, list | tuple):
        raise InvalidInput(f"acquire takes a list or tuple of Hit objects, got {show(value)}")
    if not value:
        raise InvalidInput("acquire needs at least one Hit")
    if len(value) > MAX_HITS:
        raise InvalidInput(f"acquire takes at most {MAX_HITS} hits, got {len(value)}")
    return value


def find_zone(value: str) -> ZoneInfo | None:
    """The time zone named ``value``, an IANA name such as ``"Australia/Sydney"``, or None."""
    if len(value) > MAX_ZONE or not _ZONE.fullmatch(value):
        return None
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def check_zone(value: object, what: str) -> ZoneInfo:
    """The time zone named ``value``, else InvalidInput naming ``what``."""
    zone = find_zone(value) if type(value) is str else None
    if zone is None:
        raise InvalidInput(f"{what} must name an IANA time zone, got {show(value)}")
    return zone


def check_model(value: object, what: str) -> type[BaseModel] | None:
    """``value`` if it is None or a pydantic model class."""
    if value is None or (isinstance(value, type) and issubclass(value, BaseModel)):
        return value
    raise InvalidInput(f"{what} must be a pydantic BaseModel subclass or None, got {show(value)}")


def check_value(data: str | bytes, what: str) -> str | bytes:
    """``data`` if a server may store it: at most MAX_VALUE bytes, text encodable as UTF-8.

    redis-py encodes text strictly, so a lone surrogate would fail inside
    the client as a UnicodeEncodeError rather than here as InvalidInput.
    """
    size = len(data)
    if isinstance(data, str) and not data.isascii():
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInput(
                f"{what}: text must be encodable as UTF-8 (no lone surrogates)"
            ) from None
    if size > MAX_VALUE:
        raise InvalidInput(f"{what}: a stored value must be at most {MAX_VALUE} bytes, got {size}")
    return data


def whole_ms(value: object, what: str, most: timedelta = MAX_TTL) -> int:
    """A timedelta of whole milliseconds, from 1 ms to ``most``, in milliseconds."""
    if isinstance(value, timedelta) and _MS <= value <= most and not value % _MS:
        return value // _MS
    raise InvalidInput(
        f"{what} must be a timedelta of whole milliseconds, from 1 ms to {days(most)}, "
        f"got {show(value)}"
    )


def span_us(value: object, what: str, most: timedelta) -> int:
    """A timedelta from 1 ms to ``most``, in microseconds."""
    if isinstance(value, timedelta) and _MS <= value <= most:
        return value // _US
    raise InvalidInput(f"{what} must be a timedelta from 1 ms to {days(most)}, got {show(value)}")


def check_deadline(deadline: object) -> float | None:
    """A per-call deadline in seconds, from a timedelta of 1 ms to 10 minutes, or None."""
    if deadline is None:
        return None
    if isinstance(deadline, timedelta) and _MS <= deadline <= MAX_DEADLINE:
        return deadline.total_seconds()
    raise InvalidInput(
        f"deadline must be None or a timedelta from 1 ms to 10 minutes, got {show(deadline)}"
    )


def hold_us(value: object, what: str = "hold") -> int:
    """A reservation's hold (``reserve``'s ``ttl``, a Hit's ``hold``), in microseconds."""
    return span_us(value, what, MAX_HOLD)

"""Checks shared by every edge: identifier parts and durations.

Each refuses bad input with :class:`~atomlimit.errors.InvalidInput` naming
what was wrong, before anything is sent.
"""

from __future__ import annotations

import re
from datetime import timedelta

from atomlimit.errors import InvalidInput

MAX_PART = 256
MAX_TTL = timedelta(days=3650)

# Printable ASCII without ':', '{' or '}': the common case, checked in one go.
_PLAIN_PART = re.compile(rf"[!-9;-z|~]{{1,{MAX_PART}}}")
_MS = timedelta(milliseconds=1)


def check_part(value: object, what: str) -> str:
    """``value`` if it may stand between two ``:`` of a key, else InvalidInput naming it."""
    if type(value) is not str:
        raise InvalidInput(f"{what} must be a str, got {type(value).__name__}")
    if _PLAIN_PART.fullmatch(value):
        return value
    if not value:
        raise InvalidInput(f"{what} is empty")
    if len(value) > MAX_PART:
        raise InvalidInput(
            f"{what} {value[:32]!r}... is {len(value)} characters long; at most {MAX_PART}"
        )
    for char in value:
        # ':' would shift every later part; '{' '}' would make a cluster hash tag.
        if char in ":{}" or char.isspace() or not char.isprintable():
            raise InvalidInput(f"{what} {value!r} contains {char!r}")
    return value


def whole_ms(value: object, what: str) -> int:
    """A timedelta of whole milliseconds, from 1 ms to MAX_TTL, in milliseconds."""
    if not isinstance(value, timedelta) or not _MS <= value <= MAX_TTL or value % _MS:
        raise InvalidInput(
            f"{what} must be a timedelta of whole milliseconds, from 1 ms to "
            f"{MAX_TTL.days} days, got {value!r}"
        )
    return value // _MS

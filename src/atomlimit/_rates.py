"""The rate-string grammar behind [`atomlimit.RateLimit.parse`][atomlimit.RateLimit.parse].

Close to the ``limits`` package's, with a time zone for calendar windows::

    rate   = limit ("/" | " per ") period ["@" zone]     spaces allowed around each part
    limit  = digits                                      1 to 2**53 - 1
    period = [count] unit                                "minute", "30s", "2 hours"
    unit   = ms | s, sec, second(s) | m, min, minute(s) | h, hr, hour(s)
           | d, day(s) | w, wk, week(s) | month(s)       any case
    zone   = an IANA name                                "Australia/Sydney"

A unit alone (or a count of 1) is a calendar window, aligned in ``zone``
(default UTC). A count above 1, or milliseconds, is a fixed length aligned
to the Unix epoch, which takes no zone. A month has no fixed length, so it
takes no count above 1.

Scanning is one left-to-right pass over at most `MAX_RATE_TEXT`
characters, with no backtracking; an error names the position (counted
from 0) where the text stopped making sense.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

from atomlimit._errors import InvalidInput
from atomlimit._inputs import MAX_WINDOW, find_zone, show
from atomlimit._money import MAX_UNITS
from atomlimit._windows import CalendarUnit, Window

MAX_RATE_TEXT = 128
"""Longest rate string: the longest IANA name has 32 characters."""

_MAX_DIGITS = len(str(MAX_UNITS))
_SPELLINGS: tuple[tuple[tuple[str, ...], CalendarUnit | None, timedelta], ...] = (
    (("ms", "msec", "millisecond", "milliseconds"), None, timedelta(milliseconds=1)),
    (("s", "sec", "secs", "second", "seconds"), "second", timedelta(seconds=1)),
    (("m", "min", "mins", "minute", "minutes"), "minute", timedelta(minutes=1)),
    (("h", "hr", "hrs", "hour", "hours"), "hour", timedelta(hours=1)),
    (("d", "day", "days"), "day", timedelta(days=1)),
    (("w", "wk", "wks", "week", "weeks"), "week", timedelta(weeks=1)),
    # A month's length varies; it is only ever a calendar window.
    (("month", "months"), "month", timedelta(0)),
)
_UNITS = {name: (calendar, length) for names, calendar, length in _SPELLINGS for name in names}
_SHORT = (
    ("w", timedelta(weeks=1)),
    ("d", timedelta(days=1)),
    ("h", timedelta(hours=1)),
    ("m", timedelta(minutes=1)),
    ("s", timedelta(seconds=1)),
    ("ms", timedelta(milliseconds=1)),
)


@dataclass(frozen=True, slots=True)
class Rate:
    """What a rate string says, ready to build a RateLimit."""

    limit: int
    window: Window
    tz: str
    text: str
    """The rate in its shortest spelling: ``"100/minute"``, ``"5/30s"``."""


def parse_rate(text: object) -> Rate:
    """Read ``text`` as a rate, or raise InvalidInput naming the position of the error."""
    if type(text) is not str:
        raise InvalidInput(f"a rate must be a str such as '100/minute', got {show(text)}")
    if len(text) > MAX_RATE_TEXT:
        raise InvalidInput(f"a rate has at most {MAX_RATE_TEXT} characters, got {len(text)}")
    return _Scanner(text).rate()


class _Scanner:
    __slots__ = ("at", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def rate(self) -> Rate:
        self.spaces()
        limit = self.number("a limit such as 100", 1, MAX_UNITS)
        self.separator()
        count_at = self.at
        count = self.number("", 1, 10**12) if self.peek_digit() else None
        self.spaces()
        calendar, length = self.unit()
        self.spaces()
        window = self.window(calendar, length, count, count_at)
        tz = self.zone(window)
        self.spaces()
        if self.at < len(self.text):
            self.fail("expected the end of the rate, or '@' and a time zone")
        zone_text = "" if tz == "UTC" else f"@{tz}"
        return Rate(limit, window, tz, f"{limit}/{spell_window(window)}{zone_text}")

    def window(
        self,
        calendar: CalendarUnit | None,
        length: timedelta,
        count: int | None,
        count_at: int,
    ) -> Window:
        if calendar is not None and count in (None, 1):
            return calendar
        if calendar == "month":
            self.at = count_at
            self.fail("a month has no fixed length, so it takes no count above 1")
        window = length * (count or 1)
        if window > MAX_WINDOW:
            self.at = count_at
            self.fail(f"a window is at most {MAX_WINDOW.days} days")
        return window

    def zone(self, window: Window) -> str:
        if self.at == len(self.text) or self.text[self.at] != "@":
            return "UTC"
        if isinstance(window, timedelta):
            self.fail(
                "a window of a fixed length is aligned to the Unix epoch and takes no time "
                "zone; write a calendar unit such as 'day' to use one"
            )
        self.at += 1
        self.spaces()
        start = self.at
        end = len(self.text.rstrip(" "))
        name = self.text[start:end]
        if not name or find_zone(name) is None:
            self.fail("expected an IANA time zone such as 'Australia/Sydney'")
        self.at = end
        return name

    def number(self, what: str, low: int, high: int) -> int:
        start = self.at
        while self.peek_digit():
            self.at += 1
        digits = self.text[start : self.at]
        if not digits:
            self.fail(f"expected {what}")
        # By length first, so a long run of digits costs no conversion.
        if len(digits) > _MAX_DIGITS or not low <= int(digits) <= high:
            self.at = start
            self.fail(f"expected a number from {low} to {high}")
        return int(digits)

    def separator(self) -> None:
        self.spaces()
        if self.text.startswith("/", self.at):
            self.at += 1
        elif self.text[self.at : self.at + 4].lower() == "per " and self.text[self.at - 1] == " ":
            self.at += 4
        else:
            self.fail("expected '/' or ' per '")
        self.spaces()

    def unit(self) -> tuple[CalendarUnit | None, timedelta]:
        start = self.at
        while (
            self.at < len(self.text)
            and self.text[self.at].isascii()
            and (self.text[self.at].isalpha())
        ):
            self.at += 1
        found = _UNITS.get(self.text[start : self.at].lower())
        if found is None:
            self.at = start
            self.fail("expected a unit: ms, second, minute, hour, day, week or month")
        return found

    def spaces(self) -> None:
        while self.text.startswith(" ", self.at):
            self.at += 1

    def peek_digit(self) -> bool:
        return self.at < len(self.text) and self.text[self.at] in "0123456789"

    def fail(self, problem: str) -> NoReturn:
        raise InvalidInput(f"rate {show(self.text)} at position {self.at}: {problem}")


def spell_window(window: Window) -> str:
    """``window`` as the grammar writes it: ``"minute"``, ``"30s"``, ``"15m"``."""
    if not isinstance(window, timedelta):
        return window
    # The largest unit that counts it whole, with a count above 1: a count
    # of 1 would read back as a calendar window.
    for suffix, unit in _SHORT:
        if not window % unit and (window // unit > 1 or suffix == "ms"):
            return f"{window // unit}{suffix}"
    raise AssertionError("every parsed window is whole milliseconds")

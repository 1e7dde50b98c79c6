"""What atomlimit keeps on a server, read back for an operator: keys and their values.

Every key is ``<prefix>:v1:{s:<subject>}:<kind>:<name>[:...]`` (docs/keys.md);
`parse` turns one back into its parts, and `read` says what each
holds, in the units a person reads: a count, an amount of money, leases.
`scan` walks one server with SCAN, never KEYS, and stops at a hard cap,
so a command never blocks a busy server or runs without end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import redis

from atomlimit import _keys

KINDS = {
    "fw": "fixed_window",
    "gc": "gcra",
    "sw": "sliding_counter",
    "sl": "sliding_log",
    "sc": "spend_cap",
    "cc": "concurrency",
    "acq": "acquire",
}
"""Each kind's code in keys, and the name a person reads (``Decision.spec``'s kind)."""
CODES = {name: code for code, name in KINDS.items() if code != "acq"}

SCAN_COUNT = 1_000
"""Keys SCAN looks at per call: big enough to cross a large keyspace in
few calls, small enough that each call takes the server well under a
millisecond."""
MAX_SCANS = 1_000
"""SCAN calls per server at most: about a million keys looked at, after
which a command stops and says so rather than run on."""

_GCRA_BASE = 1_735_689_600_000_000
"""2025-01-01 in epoch microseconds: GCRA keeps its TAT counted from here
(lua/lib/gcra.lua)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RECORDS = {"r": "request record", "f": "refund record", "o": "reservation outcome"}
_SPEND = re.compile(r"(\d+)(?:,(\d+),(\d+))?")


@dataclass(frozen=True, slots=True)
class Key:
    """One key, taken apart."""

    key: str
    subject: str
    """As the application passed it (percent-decoding undone)."""
    kind: str
    """The code: ``fw``, ``gc``, ``sw``, ``sl``, ``sc``, ``cc`` or ``acq``."""
    name: str
    """The limit's name; for an acquire record, the digest of its limits."""
    part: str
    """``window``, ``state``, ``holds``, ``held``, or a record's kind."""
    window_ms: int | None = None
    """A window's start, epoch milliseconds (fixed windows and spend caps)."""
    exponent: int = 0
    """A spend cap's unit is ``10**-exponent`` of its currency."""
    currency: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    """What one key holds."""

    key: Key
    usage: str
    ends: datetime | None
    """When the key expires, on the server's clock; None when it does not."""
    ttl_ms: int


def pattern(prefix: str, subject: str | None, name: str | None) -> str:
    """The SCAN MATCH pattern for a prefix, and optionally a subject and a limit name.

    Encoded identifiers hold no glob character (``*``, ``?``, ``[``, ``\\``
    are percent-encoded), so they stand in a pattern as they are.
    """
    tag = "{s:*}" if subject is None else _keys.subject_tag(subject)
    tail = ":*" if name is None else f":*:{_keys.encode(name)}*"
    return f"{_keys.namespace(prefix)}{tag}{tail}"


def parse(key: str, prefix: str) -> Key | None:
    """``key`` taken apart, or None if it is not one of atomlimit's keys under ``prefix``."""
    head = _keys.namespace(prefix) + "{s:"
    if not key.startswith(head):
        return None
    tag_end = key.find("}", len(head))
    if tag_end < 0 or key[tag_end + 1 : tag_end + 2] != ":":
        return None
    subject = _decode(key[len(head) : tag_end])
    parts = key[tag_end + 2 :].split(":")
    if len(parts) < 2 or parts[0] not in KINDS:
        return None
    kind, name, rest = parts[0], _decode(parts[1]), parts[2:]
    extra: dict[str, Any] = {}
    if kind == "sc":
        if len(rest) < 3 or not rest[1].isdigit():
            return None
        extra = {"currency": rest[0], "exponent": int(rest[1])}
        rest = rest[2:]
    if not rest:
        return Key(key, subject, kind, name, "state", **extra)
    if len(rest) == 2 and rest[0] in _RECORDS:
        return Key(key, subject, kind, name, _RECORDS[rest[0]], **extra)
    if len(rest) == 1 and rest[0] in ("holds", "held") and kind == "sc":
        return Key(key, subject, kind, name, rest[0], **extra)
    if len(rest) == 1 and rest[0].isdigit() and kind in ("fw", "sc"):
        return Key(key, subject, kind, name, "window", window_ms=int(rest[0]), **extra)
    return None


def scan(node: redis.Redis, match: str, most: int) -> tuple[list[str], bool]:
    """Up to ``most`` keys matching ``match`` on one server, and whether the scan finished."""
    found: list[str] = []
    cursor = 0
    for _ in range(MAX_SCANS):
        cursor, keys = node.scan(cursor=cursor, match=match, count=SCAN_COUNT)
        found.extend(k if isinstance(k, str) else k.decode() for k in keys)
        if len(found) >= most:
            return found[:most], cursor == 0 and len(found) == most
        if cursor == 0:
            return found, True
    return found, False


def server_now(node: redis.Redis) -> int:
    """The server's clock, epoch microseconds."""
    seconds, micros = node.time()
    return int(seconds) * 1_000_000 + int(micros)


def read(node: redis.Redis, keys: Sequence[Key]) -> list[Entry]:
    """What each key holds, read in two pipelined round trips."""
    if not keys:
        return []
    now = server_now(node)
    pipe = node.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key.key)
        _ask(pipe, key, now)
    replies = pipe.execute(raise_on_error=False)
    entries = []
    for n, key in enumerate(keys):
        ttl, value = replies[2 * n], replies[2 * n + 1]
        if isinstance(ttl, int) and ttl == -2:
            continue  # expired between the scan and the read
        ttl = ttl if isinstance(ttl, int) else -1
        ends = _EPOCH + timedelta(microseconds=now + ttl * 1000) if ttl >= 0 else None
        entries.append(Entry(key, _usage(key, value, now), ends, ttl))
    return entries


def _ask(pipe: Any, key: Key, now: int) -> None:
    if key.part in _RECORDS.values():
        # A record is packed binary, and its TTL is all an operator needs.
        pipe.exists(key.key)
    elif key.kind == "sw" and key.part == "state":
        pipe.hmget(key.key, ["w", "c", "p"])
    elif key.kind == "sl" and key.part == "state":
        pipe.zcard(key.key)
    elif (key.kind == "cc" and key.part == "state") or key.part == "holds":
        # Members are scored by expiry: the live ones end after now.
        pipe.zcount(key.key, f"({now}", "+inf")
    elif key.part == "held":
        pipe.hget(key.key, "=")
    else:
        pipe.get(key.key)


def _usage(key: Key, value: Any, now: int) -> str:
    """A key's value as a person reads it."""
    if isinstance(value, Exception):
        return f"unreadable: {value}"
    if key.part not in ("state", "window", "holds", "held"):
        return "-"
    if key.kind == "fw":
        return f"{value} used since {_ms(key.window_ms)}"
    if key.kind == "sc":
        return _spend(key, value)
    if key.kind == "gc":
        ahead = float(value) - (now - _GCRA_BASE)
        return f"busy for {ahead / 1e6:.3f} s more" if ahead > 0 else "idle"
    if key.kind == "sw":
        start, count, previous = value
        since = _EPOCH + timedelta(microseconds=int(start or 0))
        before = f"{previous or 0} in the window before"
        return f"{count or 0} used since {since:%Y-%m-%d %H:%M:%S}Z, {before}"
    if key.kind == "sl":
        return f"{value} entries (older ones go on the next hit)"
    return _many(int(value), "lease", "held")


def _spend(key: Key, value: Any) -> str:
    if key.part == "holds":
        return _many(int(value), "hold", "open")
    if key.part == "held":
        return f"{_money(int(value or 0), key)} held in all"
    match = _SPEND.fullmatch(str(value))
    if match is None:
        return f"unreadable: {value!r}"
    text = f"{_money(int(match[1]), key)} spent since {_ms(key.window_ms)}"
    if match[2] is not None:
        text += f", {_money(int(match[2]), key)} held"
    return text


def _many(count: int, thing: str, state: str) -> str:
    return f"{count} {thing}{'' if count == 1 else 's'} {state}"


def _money(units: int, key: Key) -> str:
    # Trailing zeros of the unit go, but cents stay: 1.00, 0.37, 0.123456.
    amount = Decimal(units).scaleb(-key.exponent).normalize()
    if amount.as_tuple().exponent > -2:  # type: ignore[operator]
        amount = amount.quantize(Decimal("0.01"))
    return f"{amount} {key.currency}"


def _ms(ms: int | None) -> str:
    moment = _EPOCH + timedelta(milliseconds=ms or 0)
    return f"{moment:%Y-%m-%d %H:%M:%S}Z"


def _decode(part: str) -> str:
    # A part too long for a key was hashed: its readable head is shown with
    # the digest, since the rest cannot be recovered.
    return unquote(part, errors="backslashreplace")

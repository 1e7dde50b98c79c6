"""What atomlimit keeps on a server, read back for an operator: keys and their values.

Every key is ``<prefix>:v1:{s:<subject>}:<kind>:<name>[:...]`` (docs/keys.md);
`parse` turns one back into its parts, and `read` says what each
holds, in the units a person reads: a count, an amount of money, leases.
`scan` walks one server with SCAN, never KEYS, and stops at a hard cap,
so a command never blocks a busy server or runs without end.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import redis

from atomlimit import _keys
from atomlimit._codecs import (
    CONCURRENCY,
    FIXED_WINDOW,
    GCRA,
    GCRA_BASE,
    KIND_NAMES,
    RESERVATION,
    SLIDING_COUNTER,
    SLIDING_LOG,
    SPEND,
)

KINDS = {code: name for code, name in KIND_NAMES.items() if code != RESERVATION}
"""Each kind's code in keys, and the name a person reads (``Decision.spec``'s kind)."""
CODES = {name: code for code, name in KINDS.items()}
KINDS[_keys.ACQUIRE] = "acquire"

SCAN_COUNT = 1_000
"""Keys SCAN looks at per call: big enough to cross a large keyspace in
few calls, small enough that each call takes the server well under a
millisecond."""
MAX_SCANS = 1_000
"""SCAN calls per server at most: about a million keys looked at, after
which a command stops and says so rather than run on."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RECORDS = {
    _keys.REQUEST_RECORD: "request record",
    _keys.REFUND_RECORD: "refund record",
    _keys.OUTCOME: "reservation outcome",
}
_SPEND = re.compile(r"(\d+)(?:,(\d+),(\d+))?")


@dataclass(frozen=True, slots=True)
class Key:
    """One key, taken apart."""

    key: str
    subject: str
    """As the application passed it (percent-decoding undone); a subject
    too long for a key shows its head and the digest that replaced the rest."""
    kind: str
    """The code: ``fw``, ``gc``, ``sw``, ``sl``, ``sc``, ``cc`` or ``acq``."""
    name: str
    """The limit's name; for an acquire record, the digest of its limits."""
    stored_subject: str
    """The subject as the key holds it, encoded and perhaps hashed."""
    stored_name: str
    """The name as the key holds it."""
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
    """The SCAN MATCH pattern for a prefix, and optionally a subject and a limit name."""
    return _keys.scan_pattern(prefix, subject, name)


def parse(key: str, prefix: str) -> Key | None:
    """``key`` taken apart, or None if it is not one of atomlimit's keys under ``prefix``."""
    head = _keys.namespace(prefix) + _keys.SUBJECT_TAG
    if not key.startswith(head):
        return None
    tag_end = key.find("}", len(head))
    if tag_end < 0 or key[tag_end + 1 : tag_end + 2] != ":":
        return None
    stored_subject = key[len(head) : tag_end]
    parts = key[tag_end + 2 :].split(":")
    if len(parts) < 2 or parts[0] not in KINDS:
        return None
    kind, stored_name, rest = parts[0], parts[1], parts[2:]
    extra: dict[str, Any] = {
        "subject": decode(stored_subject),
        "name": decode(stored_name),
        "stored_subject": stored_subject,
        "stored_name": stored_name,
    }
    if kind == SPEND:
        if len(rest) < 3 or not rest[1].isdigit():
            return None
        extra.update(currency=rest[0], exponent=int(rest[1]))
        rest = rest[2:]
    if not rest:
        return Key(key, kind=kind, part="state", **extra)
    if len(rest) == 2 and rest[0] in _RECORDS:
        return Key(key, kind=kind, part=_RECORDS[rest[0]], **extra)
    if len(rest) == 1 and rest[0] in (_keys.HOLDS, _keys.HELD) and kind == SPEND:
        return Key(key, kind=kind, part=rest[0], **extra)
    if len(rest) == 1 and rest[0].isdigit() and kind in (FIXED_WINDOW, SPEND):
        return Key(key, kind=kind, part="window", window_ms=int(rest[0]), **extra)
    return None


def wanted(subject: str | None, name: str | None) -> Callable[[Key], bool]:
    """Whether a key is of ``subject`` and of the limit ``name`` (None: any).

    Compared as stored, encoded by the function the limiter writes keys
    with: a part too long for a key keeps only a head and a digest, so a
    decoded key can never equal the subject or name it came from.
    """
    subject_part = None if subject is None else _keys.encode(subject)
    name_part = None if name is None else _keys.encode(name)

    def of(key: Key) -> bool:
        return (name_part is None or key.stored_name == name_part) and (
            subject_part is None or key.stored_subject == subject_part
        )

    return of


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
    elif key.kind == SLIDING_COUNTER and key.part == "state":
        pipe.hmget(key.key, ["w", "c", "p"])
    elif key.kind == SLIDING_LOG and key.part == "state":
        pipe.zcard(key.key)
    elif (key.kind == CONCURRENCY and key.part == "state") or key.part == "holds":
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
    if key.kind == FIXED_WINDOW:
        # A counter reads "<used>|o" while an override is in force (lua/lib/fixed_window.lua).
        used, mark, _ = str(value).partition("|")
        under = ", under an override" if mark else ""
        return f"{used} used since {_ms(key.window_ms)}{under}"
    if key.kind == SPEND:
        return _spend(key, value)
    if key.kind == GCRA:
        # "<TAT>|o" while an override is in force (lua/lib/gcra.lua).
        tat, mark, _ = str(value).partition("|")
        ahead = float(tat) - (now - GCRA_BASE)
        under = ", under an override" if mark else ""
        return (f"busy for {ahead / 1e6:.3f} s more" if ahead > 0 else "idle") + under
    if key.kind == SLIDING_COUNTER:
        start, count, previous = value
        since = _EPOCH + timedelta(microseconds=int(start or 0))
        before = f"{previous or 0} in the window before"
        return f"{count or 0} used since {since:%Y-%m-%d %H:%M:%S}Z, {before}"
    if key.kind == SLIDING_LOG:
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


def decode(part: str) -> str:
    # A part too long for a key was hashed: its readable head is shown with
    # the digest, since the rest cannot be recovered.
    return unquote(part, errors="backslashreplace")

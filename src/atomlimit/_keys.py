"""Every key atomlimit writes, and the one place each is spelled.

The limiter's keys (docs/keys.md) are ``<prefix>:v1:{s:<subject>}:<kind>:<name>[...]``:

- ``v1`` versions the schema, so a future layout never misreads today's keys.
- The hash tag ``{s:<subject>}`` puts every key of one subject, across all of
  its limits, in one Redis Cluster slot. That is what lets one script check
  and charge several limits of a subject atomically.
- Names, subjects and request ids are percent-encoded: the encoding never
  yields ``:``, ``{`` or ``}``, so no input can end the hash tag early, move to
  another slot, or pose as another key's separator. The ``s:`` marker keeps
  the tag non-empty for the empty subject, since Redis hashes a key with an
  empty ``{}`` as a whole.
- An encoded part longer than `MAX_ENCODED_PART` keeps a readable head and
  replaces the rest with ``!`` and a 128-bit BLAKE2b digest of the whole part.
  ``!`` never occurs in an encoded part, so hashed and plain parts cannot
  collide; two hashed parts collide only if BLAKE2b does.

The cache, the session store and the seed's client keep the seed
application's own keys, unchanged so that both run side by side during a
deploy; their formats are at the end.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from urllib.parse import quote

from atomlimit._errors import InvalidInput
from atomlimit._inputs import show

SCHEMA = "v1"
SUBJECT_TAG = "{s:"
"""How a subject's hash tag opens."""
REQUEST_RECORD, REFUND_RECORD, OUTCOME = "r", "f", "o"
"""What follows a base key to name a record: of a charge's request id, of a
refund's, and of a reservation's settle or release."""
ACQUIRE = "acq"
"""Stands for the kind in the record of a charge of several limits."""
HOLDS, HELD = "holds", "held"
"""A limit's open reservations, and their amounts."""
GUARD = "guard"
"""An upstream's guard on one of its limits: a pause, and what was learned."""
OVERRIDE = "ovr"
"""A per-subject override of a limit (``lua/lib/override.lua``)."""
MAX_ENCODED_PART = 128
"""Longest encoded part a key holds whole; a longer one is hashed."""
_HEAD = 64
_PLAIN = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_PREFIX = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def encode(part: str) -> str:
    """Encode one identifier so it cannot escape its place in a key."""
    if _PLAIN.fullmatch(part):
        return part
    raw = part.encode("utf-8", "surrogatepass")
    encoded = quote(raw, safe="")
    if len(encoded) <= MAX_ENCODED_PART:
        return encoded
    return f"{encoded[:_HEAD]}!{hashlib.blake2b(raw, digest_size=16).hexdigest()}"


def namespace(prefix: str) -> str:
    """The versioned key prefix, after checking the caller's ``prefix``."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise InvalidInput(
            f"prefix must be 1-64 characters of A-Z a-z 0-9 _ . -, got {show(prefix)}"
        )
    return f"{prefix}:{SCHEMA}:"


def subject_tag(subject: str) -> str:
    """The hash tag shared by every key of ``subject``."""
    return "{s:" + encode(subject) + "}"


def limit_tail(kind: str, name: str) -> str:
    """What follows the subject's tag in a limit's base key: ``:<kind>:<name>``."""
    return f":{kind}:{encode(name)}"


def cap_tail(kind: str, name: str, currency: str, exponent: int) -> str:
    """A spend cap's tail: its currency and unit are in it, so a total is never
    read at another scale or in another currency."""
    return f"{limit_tail(kind, name)}:{currency}:{exponent}"


def limit_key(namespace: str, tag: str, tail: str) -> str:
    """A limit's base key for one subject; its state keys extend it."""
    return namespace + tag + tail


def window_suffix(start_us: int) -> str:
    """What names a window's key after its base key: its start, in epoch ms."""
    return f":{start_us // 1000}"


def window_key(base: str, start_us: int) -> str:
    """The key of the window starting at ``start_us``."""
    return base + window_suffix(start_us)


def hold_keys(base: str) -> tuple[str, str]:
    """A spend cap's open reservations (scored by expiry) and their total."""
    return f"{base}:{HOLDS}", f"{base}:{HELD}"


def guard_key(base: str) -> str:
    """The guard an upstream keeps on one of its limits (``lua/lib/guard.lua``)."""
    return f"{base}:{GUARD}"


def override_key(base: str) -> str:
    """The override of a limit for one subject, in the subject's slot."""
    return f"{base}:{OVERRIDE}"


def request_record(base: str, request_id: str) -> str:
    """The record of a charge made under ``request_id`` (already encoded)."""
    return f"{base}:{REQUEST_RECORD}:{request_id}"


def refund_record(base: str, request_id: str) -> str:
    """The record of a refund made under ``request_id``."""
    return f"{base}:{REFUND_RECORD}:{request_id}"


def outcome_key(base: str, request_id: str) -> str:
    """How the reservation ``request_id`` ended: settled or released."""
    return f"{base}:{OUTCOME}:{request_id}"


def acquire_record(namespace: str, tag: str, bases: Sequence[str], request_id: str) -> str:
    """The record of one charge of several limits of one subject.

    A request id names one set of limits: the record is keyed by a digest
    of their base keys, in the subject's slot.
    """
    digest = hashlib.blake2b("|".join(bases).encode(), digest_size=8).hexdigest()
    return f"{namespace}{tag}:{ACQUIRE}:{digest}:{REQUEST_RECORD}:{request_id}"


def scan_pattern(prefix: str, subject: str | None, name: str | None) -> str:
    """A SCAN MATCH pattern for the keys under ``prefix``, of one subject and
    one limit name if given.

    Encoded identifiers hold no glob character (``*``, ``?``, ``[``, ``\\``
    are percent-encoded), so they stand in a pattern as they are.
    """
    tag = SUBJECT_TAG + "*}" if subject is None else subject_tag(subject)
    tail = ":*" if name is None else f":*:{encode(name)}*"
    return f"{namespace(prefix)}{tag}{tail}"


def compat_record(seed_key: str, request_id: str) -> str:
    """The record of a write of the seed's client to ``seed_key``.

    Its hash tag is the seed's key itself, wrapped in braces: a key with no
    tag hashes whole, so both land in one cluster slot. Seed keys never
    contain braces (their identifiers are checked).
    """
    return f"atomlimit:{SCHEMA}:compat:{{{seed_key}}}:{REQUEST_RECORD}:{request_id}"


# --------------------------------------------------------------------------
# The seed application's keys, kept as it wrote them
# --------------------------------------------------------------------------

LOCK_SUFFIX = "::lock"
"""Appended to a cache entry's key to name its single-flight lock. Key parts
are never empty, so no entry key contains ``::`` and no lock can pose as an
entry."""
SESSION = "session:"


def cache_key(version: str, category: str, identifier: str) -> str:
    """``<version>:<category>:<identifier>``, where the identifier's parts,
    each checked, are joined by ``:``."""
    return f"{version}:{category}:{identifier}"


def lock_key(entry: str) -> str:
    """The single-flight lock of the cache entry ``entry``."""
    return entry + LOCK_SUFFIX


def session_key(session_id: str) -> str:
    """The key of one session; the id is checked for its shape first."""
    return SESSION + session_id


def daily_count_key(resource_type: str, resource_id: str) -> str:
    """The seed's per-day counter of a resource (its ids checked)."""
    return f"ratelimit:{resource_type}:{resource_id}:daily"


def daily_spend_key(client_id: str) -> str:
    """The seed's per-day AI spend of a client (its id checked)."""
    return f"ai_spend:{client_id}:daily"

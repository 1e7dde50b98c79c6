"""The key schema.

Every key is ``<prefix>:v1:{s:<subject>}:<kind>:<name>[...]``:

- ``v1`` versions the schema, so a future layout never misreads today's keys.
- The hash tag ``{s:<subject>}`` puts every key of one subject, across all of
  its limits, in one Redis Cluster slot. That is what lets one script check
  and charge several limits of a subject atomically.
- Names, subjects and request ids are percent-encoded: the encoding never
  yields ``:``, ``{`` or ``}``, so no input can end the hash tag early, move to
  another slot, or pose as another key's separator. The ``s:`` marker keeps
  the tag non-empty for the empty subject, since Redis hashes a key with an
  empty ``{}`` as a whole.
- An encoded part longer than `MAX_PART` keeps a readable head and
  replaces the rest with ``!`` and a 128-bit BLAKE2b digest of the whole part.
  ``!`` never occurs in an encoded part, so hashed and plain parts cannot
  collide; two hashed parts collide only if BLAKE2b does.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote

from atomlimit._checks import show
from atomlimit.errors import InvalidInput

SCHEMA = "v1"
MAX_PART = 128
_HEAD = 64
_PLAIN = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_PREFIX = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def encode(part: str) -> str:
    """Encode one identifier so it cannot escape its place in a key."""
    if _PLAIN.fullmatch(part):
        return part
    raw = part.encode("utf-8", "surrogatepass")
    encoded = quote(raw, safe="")
    if len(encoded) <= MAX_PART:
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

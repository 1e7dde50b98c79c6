"""RESP encoding of the commands the runners send.

redis-py encodes every argument of every command in Python, and a decision
sends an EVALSHA of up to a dozen arguments: encoding them was the largest
client cost of a decision. Here the head of a script's command (EVALSHA, the
SHA, the key count) and the arguments a spec fixes are encoded once, and a
call encodes only what varies: its keys, the clock and the cost.
"""

from __future__ import annotations

from collections.abc import Iterable

Arg = str | int | bytes


class Packed(bytes):
    """Arguments already encoded as RESP bulk strings, ``arity`` of them."""

    arity: int

    def __new__(cls, args: Iterable[Arg]) -> Packed:
        parts = [bulk(arg) for arg in args]
        packed = super().__new__(cls, b"".join(parts))
        packed.arity = len(parts)
        return packed


def _encoded(value: Arg) -> bytes:
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, int):
        data = b"%d" % value
    else:
        data = value
    return b"$%d\r\n%b\r\n" % (len(data), data)


# The arguments nearly every call sends (no client time, a cost of 1, small
# counts) are encoded once.
_COMMON: dict[Arg, bytes] = {value: _encoded(value) for value in ("", *range(1024))}


def bulk(value: Arg) -> bytes:
    """One argument as a RESP bulk string."""
    if type(value) is not bytes:
        common = _COMMON.get(value)
        if common is not None:
            return common
    return _encoded(value)


def command(*args: Arg) -> bytes:
    """A whole command: ``command("SCRIPT", "LOAD", source)``."""
    return b"*%d\r\n%b" % (len(args), b"".join(bulk(arg) for arg in args))


_HEADS: dict[tuple[bytes, int, int], bytes] = {}
_KEYS: dict[str, bytes] = {}
"""Recent keys, encoded: a subject's keys recur on every call in a window,
and a model call names a dozen."""
_MAX_KEYS = 4096


def _key(key: str) -> bytes:
    """A key encoded, and kept for reuse unless a generated id ("@...")
    names it, which makes it one call's alone."""
    data = key.encode()
    encoded = b"$%d\r\n%b\r\n" % (len(data), data)
    if "@" not in key:
        if len(_KEYS) >= _MAX_KEYS:
            _KEYS.clear()
        _KEYS[key] = encoded
    return encoded


def evalsha(sha: bytes, keys: tuple[str, ...], args: tuple[Arg | Packed, ...]) -> bytes:
    """``EVALSHA sha len(keys) *keys *args``, with ``Packed`` runs of arguments kept whole."""
    known = _KEYS
    parts = [known.get(key) or _key(key) for key in keys]
    count = 3 + len(keys)
    common = _COMMON
    for arg in args:
        if type(arg) is Packed:
            parts.append(arg)
            count += arg.arity
        else:
            # No bytes value equals a str or an int, so the common
            # encodings are only ever found for the value they encode.
            parts.append(common.get(arg) or _encoded(arg))
            count += 1
    shape = (sha, len(keys), count)
    head = _HEADS.get(shape)
    if head is None:
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n%b" % (count, sha, bulk(len(keys)))
        _HEADS[shape] = head
    return head + b"".join(parts)

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


def bulk(value: Arg) -> bytes:
    """One argument as a RESP bulk string."""
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, int):
        data = b"%d" % value
    else:
        data = value
    return b"$%d\r\n%b\r\n" % (len(data), data)


def command(*args: Arg) -> bytes:
    """A whole command: ``command("SCRIPT", "LOAD", source)``."""
    return b"*%d\r\n%b" % (len(args), b"".join(bulk(arg) for arg in args))


def evalsha(sha: bytes, keys: tuple[str, ...], args: tuple[Arg | Packed, ...]) -> bytes:
    """``EVALSHA sha len(keys) *keys *args``, with ``Packed`` runs of arguments kept whole."""
    count = 3 + len(keys)
    parts = []
    for key in keys:
        data = key.encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    for arg in args:
        if type(arg) is Packed:
            parts.append(arg)
            count += arg.arity
        else:
            parts.append(bulk(arg))
            count += 1
    head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n$%d\r\n%d\r\n" % (
        count,
        sha,
        len(str(len(keys))),
        len(keys),
    )
    return head + b"".join(parts)

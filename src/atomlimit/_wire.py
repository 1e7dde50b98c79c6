"""RESP encoding of the commands the runners send.

redis-py encodes every argument of every command in Python, and a decision
sends an EVALSHA of up to a dozen arguments: encoding them was the largest
client cost of a decision. Here the head of a script's command (EVALSHA, the
SHA, the key count) and the arguments a spec fixes are encoded once, and a
call encodes only what varies: its keys, the clock and the cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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


class Slot(str):
    """A stand-in for a value that changes between sends of a `Template`:
    planned in its place, its encoding marks where the value goes."""

    __slots__ = ()


ID_SLOT = Slot("@" + "\x01" * 24)
"""A generated id (``@`` and 24 hex digits, `atomlimit._codecs.new_id`),
wherever it stands, keys included: its length is always the same, so only
the id itself is written in its place."""
COST_SLOTS = tuple(Slot(chr(0x10 + n)) for n in range(8))
"""Integer arguments, each encoded whole in its place, in slot order."""
CALL_SLOT = Slot("@" + "\x06" * 24)
"""A second generated id: a call's own, beside its request's."""


class Template:
    """A command planned once with `Slot` stand-ins, sent again with values
    in their places: a send encodes only those.

    A model call's acquire and its settle send a dozen keys and arguments
    each, of which only the ids and the costs change between calls of one
    upstream in one window; writing only those cut an eighth of a call's
    client-side work (``bench/call_work.py``).
    """

    __slots__ = ("_args", "_first", "_keys", "_named", "_rest", "_slotted")

    def __init__(self, sha: bytes, keys: tuple[str, ...], args: tuple[Arg | Packed, ...]) -> None:
        """``keys`` and ``args`` as planned with `ID_SLOT`, `CALL_SLOT` and
        `COST_SLOTS` (each cost once, in order) standing in for the values."""
        self._keys, self._args = keys, args
        self._named = tuple(n for n, key in enumerate(keys) if ID_SLOT in key)
        self._slotted = tuple((n, _SLOTS[a]) for n, a in enumerate(args) if type(a) is Slot)
        wire = evalsha(sha, keys, args)
        marks = [(ID_SLOT.encode(), 0), (CALL_SLOT.encode(), 1)]
        marks += [(bulk(slot), 2 + n) for n, slot in enumerate(COST_SLOTS)]
        found = sorted((at, len(mark), value) for mark, value in marks for at in _at(wire, mark))
        fixed, order, done = [], [], 0
        for at, size, value in found:
            fixed.append(wire[done:at])
            order.append(value)
            done = at + size
        fixed.append(wire[done:])
        self._first = fixed[0]
        self._rest = tuple(zip(order, fixed[1:], strict=True))

    def wire(self, values: list[Any]) -> bytes:
        """The command with ``values`` (the id, the call's id, then each
        cost) in their places."""
        common = _COMMON
        encoded = [values[0].encode(), values[1].encode()]
        for cost in values[2:]:
            data = common.get(cost)
            if data is None:
                digits = b"%d" % cost
                data = b"$%d\r\n%b\r\n" % (len(digits), digits)
            encoded.append(data)
        out = [self._first]
        for index, fixed in self._rest:
            out += (encoded[index], fixed)
        return b"".join(out)

    def filled(self, values: list[Any]) -> tuple[tuple[str, ...], tuple[Arg | Packed, ...]]:
        """The keys and arguments with ``values`` in their places, as a `Call` carries them."""
        keys = self._keys
        if self._named:
            named = list(keys)
            for n in self._named:
                named[n] = named[n].replace(ID_SLOT, values[0])
            keys = tuple(named)
        args = list(self._args)
        for n, index in self._slotted:
            args[n] = values[index]
        return keys, tuple(args)


_SLOTS: dict[str, int] = {ID_SLOT: 0, CALL_SLOT: 1, **{s: 2 + n for n, s in enumerate(COST_SLOTS)}}
"""Each slot's place among a `Template`'s values."""


def _at(data: bytes, mark: bytes) -> list[int]:
    """Where ``mark`` starts in ``data``, each time."""
    found, at = [], data.find(mark)
    while at >= 0:
        found.append(at)
        at = data.find(mark, at + len(mark))
    return found

"""The sans-I/O vocabulary: the steps an operation asks its runner to perform.

Planning code builds these as plain data and reads replies back; the runners
in the runners are the only code that touches a connection.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, NamedTuple

from atomlimit._scripts import Script
from atomlimit._wire import Arg, Packed, command


class Wait(NamedTuple):
    """Replicas that must acknowledge a call's writes before it counts as done."""

    replicas: int
    timeout_ms: int
    wire: bytes
    """``WAIT replicas timeout``, encoded: the runner writes it right after
    the script, on the same connection, so both replies come back in the
    same round trip (WAIT cannot run inside a script)."""

    @classmethod
    def of(cls, replicas: int, timeout_ms: int) -> Wait:
        return cls(replicas, timeout_ms, command("WAIT", replicas, timeout_ms))


class Acked(NamedTuple):
    """A waited call's outcome: the script's reply, then WAIT's."""

    reply: Any
    replicas: Any
    """How many replicas acknowledged in time, or the error WAIT was refused with."""


class Call(NamedTuple):
    """One script execution to send, and how to read its reply."""

    script: Script
    keys: tuple[str, ...]
    args: tuple[Arg | Packed, ...]
    read: Callable[[Any], Any]
    """Reply -> result, or a re-planned `Call`."""
    replayable: bool = False
    """A record on the server makes a second send replay the first, so the
    call may be sent again after a failure that left its outcome unknown."""
    request_id: str | None = None
    """The caller-visible id that record is kept under, if the caller may
    send the call again themselves (``request_id=``)."""
    wait: Wait | None = None
    """Send WAIT after the script; ``read`` then gets an `Acked`."""
    encoded: bytes | None = None
    """The EVALSHA of ``script``, ``keys`` and ``args``, already encoded
    (`atomlimit._wire.Template`); None: the runner encodes it."""


class Plan(NamedTuple):
    """A call planned when it is sent: the runner passes its clock's reading.

    A flow of several calls (an acquire) yields these, so each call is
    planned for the moment it goes out, not for when the flow began.
    """

    make: Callable[[int], Call]


class Command(NamedTuple):
    """One plain Redis command to send, and how to read its reply."""

    args: tuple[str | bytes | int, ...]
    """Passed to ``execute_command``; ``args[0]`` is the command's name."""
    read: Callable[[Any], Any]


class Sleep(NamedTuple):
    """Wait this long, then resume the flow with ``None``."""

    seconds: float


class Produce(NamedTuple):
    """Call the caller's factory and resume the flow with its value."""


PRODUCE = Produce()

Step = Command | Call | Plan | Sleep | Produce
Flow = Generator[Step, Any, Any]
"""Yields steps, is sent each step's result, returns the operation's result.
A step that fails is thrown into the flow, so it can release what it holds."""

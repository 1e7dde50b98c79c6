"""The sans-I/O core: every operation as plain data in, plain data out.

An operation is planned as a :class:`Call` (script, KEYS, ARGV) and its reply
is read back by the call's own ``read``. ``read`` returns the result, or a new
:class:`Call` when the server's clock fell outside the planned windows and
the call must be re-planned around it. The sync and async limiters only send
calls and feed replies back, so both share every decision rule here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Literal

from atomlimit import _keys
from atomlimit._checks import whole_ms
from atomlimit._scripts import Script, script
from atomlimit._steps import Call
from atomlimit._windows import WindowPlan
from atomlimit.errors import InvalidInput, RequestIdReused
from atomlimit.specs import Spec

TimeSource = Literal["server", "client"]
Clock = Callable[[], float]

DEFAULT_REQUEST_TTL = timedelta(days=1)
DEFAULT_RETRY_TTL = timedelta(minutes=2)

_OUTSIDE_PLAN = -1
_REUSED = -2
_MAX_SUBJECT = 65_536
_MAX_REQUEST_ID = 1_024


class Engine:
    """Plans calls and reads replies; holds no connection.

    ``skew`` is the server clock minus the local clock, in microseconds, as
    last observed. It only centres the planned windows on the server's time;
    the server's TIME alone decides which window a hit lands in.
    """

    __slots__ = ("_client_time", "_clock", "_ns", "_request_ttl", "_retry_ttl", "skew")

    def __init__(
        self,
        *,
        prefix: str = "atomlimit",
        time_source: TimeSource = "server",
        clock: Clock | None = None,
        request_ttl: timedelta = DEFAULT_REQUEST_TTL,
        retry_ttl: timedelta = DEFAULT_RETRY_TTL,
    ) -> None:
        if time_source not in ("server", "client"):
            raise InvalidInput(f"time_source must be 'server' or 'client', got {time_source!r}")
        clock = time.time if clock is None else clock
        if not callable(clock):
            raise InvalidInput(f"clock must be a callable returning epoch seconds, got {clock!r}")
        self._ns = _keys.namespace(prefix)
        self._clock = clock
        self._client_time = time_source == "client"
        self._request_ttl = whole_ms(request_ttl, "request_ttl")
        self._retry_ttl = whole_ms(retry_ttl, "retry_ttl")
        self.skew = 0

    def hit(self, spec: Spec[Any], subject: str, cost: object, request_id: str | None) -> Call:
        """Plan a check-and-charge of ``cost`` against ``spec`` for ``subject``."""
        units = spec._cost_units(cost)
        key = self._key(spec, subject)
        if request_id is None:
            # Every charge carries an id, so redis-py's transport retries can
            # re-send it safely; an id nobody will reuse needs only to outlive
            # those retries.
            rkey, ttl = f"{key}:r:@{os.urandom(12).hex()}", self._retry_ttl
        else:
            rkey, ttl = f"{key}:r:{_request_part(request_id)}", self._request_ttl
        return self._counter(script("hit"), spec, (key, rkey), units, (ttl,))

    def peek(self, spec: Spec[Any], subject: str, cost: object) -> Call:
        """Plan a read-only check: would a hit of ``cost`` pass now?"""
        units = spec._cost_units(cost)
        return self._counter(script("peek"), spec, (self._key(spec, subject),), units, ())

    def reset(self, spec: Spec[Any], subject: str) -> Call:
        """Plan forgetting ``subject``'s state under ``spec``."""
        return Call(script("reset"), (self._key(spec, subject),), (), _discard)

    def _key(self, spec: Spec[Any], subject: str) -> str:
        if type(subject) is not str:
            raise InvalidInput(f"subject must be a str, got {type(subject).__name__}")
        if len(subject) > _MAX_SUBJECT:
            raise InvalidInput(f"subject must be at most {_MAX_SUBJECT} characters")
        return self._ns + _keys.subject_tag(subject) + spec._tail

    def windowed(
        self,
        lua: Script,
        plan: WindowPlan,
        keys: Sequence[str],
        head: tuple[int | str, ...],
        tail: tuple[int | str, ...],
        finish: Callable[[int, int, Sequence[Any]], Any],
    ) -> Call:
        """Plan a script that picks its window from planned boundaries.

        ARGV is ``head``, the client time ('' for server time), the four
        boundaries, then ``tail``. The reply starts ``{status, now, ...}``;
        status -1 means the clock was outside the plan, and the call is
        re-planned around the server's time. Any other reply goes to
        ``finish(status, now, reply)``.
        """
        local = int(self._clock() * 1_000_000)
        planned = local + self.skew
        client_now: int | str = planned if self._client_time else ""
        args = (*head, client_now, *plan.bounds(planned), *tail)

        def read(reply: Sequence[Any]) -> Any:
            status, now = reply[0], reply[1]
            if not self._client_time:
                # Absolute, not incremental: concurrent calls planned with an
                # older estimate must not add their corrections up.
                self.skew = now - local
            if status == _OUTSIDE_PLAN:
                return self.windowed(lua, plan, keys, head, tail, finish)
            return finish(status, now, reply)

        return Call(lua, keys, args, read)

    def _counter(
        self,
        lua: Script,
        spec: Spec[Any],
        keys: Sequence[str],
        units: int,
        tail: tuple[int, ...],
    ) -> Call:
        def finish(status: int, now: int, reply: Sequence[int]) -> Any:
            if status == _REUSED:
                raise RequestIdReused(
                    f"request_id was already charged with another cost for {spec.name!r}"
                )
            return spec._decision(status > 0, reply[2], units, reply[3], now)

        return self.windowed(lua, spec._plan, keys, (spec._limit_units, units), tail, finish)


def _discard(reply: object) -> None:
    return None


def _request_part(request_id: object) -> str:
    if type(request_id) is not str or not 0 < len(request_id) <= _MAX_REQUEST_ID:
        raise InvalidInput(
            f"request_id must be a non-empty str of at most {_MAX_REQUEST_ID} characters, "
            f"got {request_id!r:.80}"
        )
    # Caller ids are encoded like subjects; generated ids start with "@",
    # which encoding never yields, so the two can never meet.
    return _keys.encode(request_id)

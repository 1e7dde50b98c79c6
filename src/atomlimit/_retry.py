"""What a reply asks a runner to do next: the rules both runners follow.

Pure: each rule takes a reply (or a `Lost`) and an
instant as plain values, so the sync and async runners differ only in how
they send, and the rules are tested without a server. The one piece of
state, where MOVED replies said slots went (`Moves`), is kept here too, so
both runners route by it alike.

Replies that mean "nothing ran" are handled transparently:

- NOSCRIPT: the script is loaded (once for every call that found it
  missing together) and the call sent again. A call that meets NOSCRIPT a
  second time (another client's ``SCRIPT FLUSH`` came between that load and
  its send) is sent right behind a ``SCRIPT LOAD`` of its own, in the same
  write on the same connection, which the server runs back to back; under a
  flush storm a call keeps doing so for at most `SETTLE_FOR` seconds.
- LOADING (a server still reading its data after a restart), TRYAGAIN and
  CLUSTERDOWN (a slot migrating, a failover): wait a little, send again,
  for at most `SETTLE_FOR` seconds.
- MOVED (send to the node it names from now on, `Moves`; learn the
  cluster's layout again only when that node is new to it) and ASK (send
  to the importing node after ``ASKING``), `REDIRECTS` of them at most; but
  an ASK met while a call waits out TRYAGAIN or CLUSTERDOWN belongs to the
  migration being waited out, and is followed until `SETTLE_FOR` has
  passed.

On a cluster, a call that could not reach its node at all (nothing was
written: the connection was refused) learns the layout again and is sent
to the slot's owner now, `REDIRECTS` times at most: after a failover the
slot has a new owner, and no MOVED will ever say so, since the old one is
gone. The first time at once; then after `PAUSE` each time, so that a node
that is down with no failover yet costs each call a few layout reads, not
a stream of them.

A call whose reply was lost after it was written is sent again only when a
record on the server makes the second send a replay (``Call.replayable``),
as often as the client's own retry policy allows; otherwise the caller gets
a `BackendError` that says the outcome is unknown.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any, Protocol

from atomlimit import _fitness, _redis, _wire
from atomlimit._batch import Lost, Replies
from atomlimit._errors import Applied, BackendError, UnsafeServer
from atomlimit._redis import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    TryAgainError,
)
from atomlimit._runner_steps import Acked, Call

REPLANS = 3
"""A reply outside the planned windows re-plans around the server's clock;
one re-plan always suffices unless the clock jumps again in between."""
REDIRECTS = 5
"""MOVED and ASK replies followed for one call before giving up; ASKs met
while waiting out a migration (after a TRYAGAIN or CLUSTERDOWN) count
against `SETTLE_FOR` instead."""
SETTLE_FOR = 10.0
"""Seconds a call keeps waiting out LOADING, TRYAGAIN and CLUSTERDOWN (a
restart, a slot migrating, a failover) before it fails."""
PAUSE = 0.05
"""Seconds between two sends of a call that waits one of those out."""
FIRST_RESEND_PAUSE = 0.01
LAST_RESEND_PAUSE = 1.0
ASKING = _wire.command("ASKING")
INFO = _wire.command("INFO", "memory", "replication")

FAILED = (BaseException, Lost)
UNSORTED = (BaseException, Lost, Replies)
"""Outcomes that are not one plain reply: `Attempt` sorts them out."""

_log = logging.getLogger("atomlimit")


class Moves:
    """Where MOVED replies said slots went, ahead of the layout the client learned.

    A MOVED reply names the slot's new owner. When the layout already knows
    that node, the slot is sent there from then on, and the layout is not
    learned again: redis-py 6 makes every node object anew when it learns
    the layout, and disconnects the old ones with their connections in use,
    so a migration's MOVED replies, each learning the layout, broke the
    calls in flight beside them. A node the layout does not know means the
    cluster grew: then the layout is learned again, and what was learned
    here is dropped (`forget`), since the new layout holds it. At most one
    entry per slot.
    """

    __slots__ = ("_to",)

    def __init__(self) -> None:
        self._to: dict[int, tuple[str, int]] = {}

    def follow(self, client: Any, moved: MovedError) -> bool:
        """Send ``moved``'s slot to the node it names from now on; False if
        the client's layout knows no such node (learn the layout again)."""
        if _redis.node_at(client, moved.host, moved.port) is None:
            return False
        self._to[moved.slot_id] = (moved.host, moved.port)
        return True

    def target(self, key: str, asking: tuple[str, int] | None) -> tuple[str, int] | None:
        """The node a call on ``key`` goes to when not the layout's: the one an
        ASK named, else the one a MOVED named for its slot, else None."""
        if asking is not None or not self._to:
            return asking
        return self._to.get(_redis.slot(key))

    def forget(self) -> None:
        """Drop what MOVED replies said: the layout was learned again."""
        self._to.clear()


class Next(Enum):
    """What a call's reply asks the runner to do next."""

    DONE = "done"
    LOAD = "load"
    MOVED = "moved"
    REROUTE = "reroute"
    ASK = "ask"
    WAIT = "wait"
    LOST = "lost"
    FAILED = "failed"


def classify(outcome: Any) -> Next:
    """The next step after ``outcome``: a reply, an error reply, or a `Lost`."""
    if not isinstance(outcome, FAILED):
        return Next.DONE
    if isinstance(outcome, Lost):
        return Next.LOST
    if isinstance(outcome, NoScriptError):
        return Next.LOAD
    # redis-py's MovedError is a kind of AskError: asked first, a MOVED
    # would be followed as an ASK, and every later call on the slot would
    # meet it again.
    if isinstance(outcome, MovedError):
        return Next.MOVED
    if isinstance(outcome, AskError):
        return Next.ASK
    if isinstance(outcome, TryAgainError | ClusterDownError | BusyLoadingError):
        return Next.WAIT
    return Next.FAILED


def failure(
    name: str, outcome: Any, request_id: str | None = None, written: bool = False
) -> BackendError:
    """The BackendError for a call that failed with ``outcome``, cause chained.

    ``written`` says an earlier send of the call may have reached the server.
    Only the operation's name goes in the message: a command's arguments
    hold keys, and a session's key holds its id, which must never reach an
    exception text.
    """
    cause = outcome.error if isinstance(outcome, Lost) else outcome
    applied: Applied = "unknown" if written or getattr(outcome, "written", False) else "no"
    err = BackendError(
        f"{name}: {type(cause).__name__}: {cause}", applied=applied, request_id=request_id
    )
    err.__cause__ = cause
    return err


def resend_pause(tries: int) -> float:
    """Seconds before the ``tries``-th re-send of a replayable call: doubling
    from `FIRST_RESEND_PAUSE`, at most `LAST_RESEND_PAUSE`."""
    return float(min(FIRST_RESEND_PAUSE * 2 ** max(tries - 1, 0), LAST_RESEND_PAUSE))


class Attempt:
    """One call on its way through the replies that ask for it to be sent again.

    The rules live here once; each runner performs the fix that
    `after` names (follow a MOVED, pause) and sends the call
    again, as `wire` then writes it.
    """

    __slots__ = (
        "asking",
        "call",
        "cluster",
        "deadline",
        "loading",
        "misses",
        "outcome",
        "redirects",
        "replies",
        "reroutes",
        "resends",
        "tries",
        "written",
    )

    def __init__(self, call: Call, resends: int, cluster: bool = False) -> None:
        self.call = call
        self.resends = resends
        """How often a lost reply may be sent again: the client's retries."""
        self.cluster = cluster
        """Whether a call that could not reach its node may find another
        owner of its slot (`Next.REROUTE`)."""
        self.asking: tuple[str, int] | None = None
        """Send to this node after ASKING: the slot is moving there."""
        self.loading = False
        """Load the script right before the call, in the same write."""
        self.misses = 0
        """How many replies said the server lacked the script."""
        self.replies = 1 if call.wait is None else 2
        """How many replies the wire brings back."""
        self.tries = 0
        self.redirects = 0
        self.reroutes = 0
        """How often the call was sent again after its node refused it."""
        self.deadline: float | None = None
        self.written = False
        """Some send of this call may have reached the server."""
        self.outcome: Any = None
        """The call's outcome from the last send, as `after` sorted it."""

    def wire(self) -> bytes:
        """The call's request: after ASKING when redirected, before WAIT when it waits."""
        call = self.call
        wire = call.encoded or _wire.evalsha(call.script.sha_bytes, call.keys, call.args)
        if call.wait is not None:
            wire += call.wait.wire
        if self.asking:
            wire = ASKING + wire
        if self.loading:
            # SCRIPT LOAD names no key: any node runs it, ASKING or not.
            wire = _wire.command("SCRIPT", "LOAD", call.script.source) + wire
        return wire

    def sort(self, outcome: Any) -> Any:
        """The script's own outcome among the replies its wire brought back.

        The replies of SCRIPT LOAD and ASKING are dropped (a failed load
        shows in the script's own NOSCRIPT); WAIT's goes with the script's
        in an `atomlimit._runner_steps.Acked`, unless the script failed.
        """
        if type(outcome) is not Replies:
            return outcome
        replies = outcome[self.loading + (self.asking is not None) :]
        if self.call.wait is None or isinstance(replies[0], BaseException):
            return replies[0]
        return Acked(replies[0], replies[1])

    def after(self, outcome: Any, now: float) -> Next | None:
        """The fix to make before sending again, or None when ``outcome`` is final."""
        outcome = self.outcome = self.sort(outcome)
        step = classify(outcome)
        if step is not Next.LOAD and self.asking is not None:
            # A script loaded on the node that asked for it is sent there
            # again; anything else starts from the slot's owner.
            self.asking = None
            self.replies -= 1
        if isinstance(outcome, Lost):
            self.written = self.written or outcome.written
        if step is Next.LOAD:
            self.misses += 1
        if step in (Next.LOAD, Next.WAIT):
            self.deadline = self.deadline or now + SETTLE_FOR
            return step if now < self.deadline else None
        if step in (Next.ASK, Next.MOVED):
            if step is Next.ASK and self.deadline is not None:
                # Waiting out a migration: a call that names a key the
                # source no longer has (a missing override's hash, say)
                # meets ASK from the source and TRYAGAIN from the importing
                # node, by turns, until the slot has moved. That cycle is
                # the migration itself, so it is bounded by the settling
                # time the TRYAGAIN started, not by REDIRECTS.
                if now >= self.deadline:
                    return None
            else:
                self.redirects += 1
                if self.redirects > REDIRECTS:
                    return None
            if step is Next.ASK:
                self.asking = (outcome.host, outcome.port)
                self.replies += 1
            return step
        if step is Next.LOST and self.cluster and not outcome.written:
            # Nothing reached a server, so sending again is safe whatever
            # the call; the slot may have a new owner (a failover).
            self.redirects += 1
            self.reroutes += 1
            if self.redirects > REDIRECTS:
                return None
            return Next.REROUTE
        if step is Next.LOST and self.call.replayable and self.tries < self.resends:
            self.tries += 1
            return step
        return None

    def load_first(self) -> None:
        """Send the call right behind a SCRIPT LOAD of its script from now on."""
        if not self.loading:
            self.loading = True
            self.replies += 1

    def result(self) -> Any:
        """The final outcome `after` sorted: the reply, or the BackendError
        the call ended in."""
        outcome = self.outcome
        if classify(outcome) is Next.DONE:
            return outcome
        return failure(self.call.script.name, outcome, self.call.request_id, self.written)


class Checked(Protocol):
    """Whoever keeps what a server's INFO said of it: a lane, or a runner's
    connections to one server."""

    fitness: _fitness.Fitness | None
    warned: str | None


def learn(holder: Checked, address: str, outcome: Any) -> None:
    """Keep on ``holder`` what the server's INFO reply says of it.

    A warning is logged once: again only if the server comes back with
    another (it is checked again after every connect). A lost reply leaves
    the server unchecked, and the next call asks again.
    """
    if isinstance(outcome, Lost):
        return
    fit = holder.fitness = _fitness.fitness(address, outcome)
    warning = fit.warning()
    if warning and warning != holder.warned:
        _log.warning("%s", warning)
    holder.warned = warning


def vet(fit: _fitness.Fitness, strict: bool) -> None:
    """Raise UnsafeServer when ``fit`` says a limiter must not decide there."""
    refusal = fit.refusal(strict)
    if refusal:
        raise UnsafeServer(refusal)

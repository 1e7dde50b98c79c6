"""Decisions made without the server, by each limit's failure policy.

When a call meets a backend failure (or the breaker's refusal), its limit's
``on_backend_error`` either raises the failure or makes one of these
decisions. A ``"local"`` policy's are made by the limiter's in-process
state (`atomlimit._local_limits`), which is passed in. Pure otherwise: the
failure and the instant are plain inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from atomlimit._acquire import Acquisition, checked_items
from atomlimit._codecs import PARTIAL, codec_of
from atomlimit._engine import Engine, request_part
from atomlimit._errors import BackendError
from atomlimit._local_limits import LOCAL_POLICIES, LocalItem, LocalLimits
from atomlimit.decision import Decision

if TYPE_CHECKING:
    from atomlimit.specs import Hit, Spec

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ALLOWING: Final = ("allow", "allow_unmetered_spend")
"""Policies that admit while the server cannot be asked."""


def degraded(
    spec: Spec[Any],
    cost: object,
    charge: bool,
    now_us: int,
    cause: BackendError,
    local: LocalLimits | None = None,
    subject: str | None = None,
    partial: bool = False,
) -> Decision[Any]:
    """The decision ``spec``'s policy makes without the server, or ``cause`` raised.

    A ``"local"`` policy is decided by ``local`` for ``subject`` (with
    ``charge``, what fits is charged there); without them, it denies.

    Nothing is known of the subject's usage, so ``used`` and ``held`` are
    zero. Admitted: ``remaining`` is the whole limit, and ``granted`` the
    cost of a charge (what the caller may go on to use, though nothing was
    recorded). Denied: ``remaining`` and ``granted`` are zero. A shadow limit
    still admits, marked ``shadow_denied`` when its policy denies.
    ``retry_after`` is None: nobody knows when the server is back.
    """
    policy = spec.on_backend_error
    if policy == "raise":
        raise cause
    codec = codec_of(spec)
    if policy in LOCAL_POLICIES and local is not None and subject is not None:
        item = LocalItem(codec, subject, codec.units(cost), PARTIAL if partial else 0)
        return local.decide(item, charge, now_us, cause)
    allows = policy in ALLOWING
    shadow = bool(getattr(spec, "shadow", False))
    granted = codec.amount(codec.units(cost)) if charge and (allows or shadow) else codec.zero
    return Decision(
        allowed=allows or shadow,
        limit=codec.limit_value,
        used=codec.zero,
        remaining=codec.amount(codec.limit) if allows else codec.zero,
        reset_at=_EPOCH + timedelta(microseconds=now_us),
        retry_after=None,
        granted=granted,
        held=codec.zero,
        shadow_denied=shadow and not allows,
        spec=spec,
        degraded=True,
        cause=cause,
    )


def strictest(specs: Sequence[Spec[Any]]) -> str:
    """The policy that wins among several limits: raise, then deny, then
    local (``"local"`` or ``"local_spend"``), then allow."""
    policies = {spec.on_backend_error for spec in specs}
    for policy in ("raise", "deny"):
        if policy in policies:
            return policy
    return "local" if policies.intersection(LOCAL_POLICIES) else "allow"


def degraded_many(
    hits: Sequence[Hit[Any]], now_us: int, cause: BackendError, local: LocalLimits | None = None
) -> list[Decision[Any]]:
    """``hit_many`` without the server: each hit by its own policy, or raise if
    any hit's policy raises (one failed round trip fails every hit)."""
    if strictest([hit.limit for hit in hits]) == "raise":
        raise cause
    return [degraded(hit.limit, hit.cost, True, now_us, cause, local, hit.subject) for hit in hits]


def degraded_acquisition(
    engine: Engine,
    hits: Sequence[Hit[Any]],
    now_us: int,
    cause: BackendError,
    local: LocalLimits | None = None,
) -> Acquisition:
    """``acquire`` without the server: the strictest policy among the hits wins.

    Any hit whose policy raises makes the acquire raise. Otherwise each hit
    is decided by its own policy and the acquire is allowed only if all of
    them allow; ``denied_by`` is the first that denies. Hits whose policy is
    local are decided together by ``local``, and charged there only when
    nothing denies: all of them or none, never while a ``"deny"`` hit
    denies the acquire. The hits are checked as the acquire would have
    checked them, so bad input still raises InvalidInput. What this send
    charged was already undone by the acquire (or the failure left it
    unknown, never admitted twice).
    """
    items, _ = checked_items(engine, hits)  # the refusals of a sent acquire
    policy = strictest([item.spec for item in items])
    if policy == "raise":
        raise cause
    locals_ = [n for n, i in enumerate(items) if i.spec.on_backend_error in LOCAL_POLICIES]
    decisions = [degraded(i.spec, i.codec.amount(i.units), True, now_us, cause) for i in items]
    if locals_ and local is not None:
        asked = [LocalItem(items[n].codec, items[n].subject, items[n].units) for n in locals_]
        # With a "deny" among the hits the acquire is denied whatever the
        # local state says: look, but charge nothing.
        found = local.decide_all(asked, policy == "local", now_us, cause)
        for n, decision in zip(locals_, found, strict=True):
            decisions[n] = decision
    allowed = all(d.allowed for d in decisions)
    denied_at = None if allowed else next(n for n, d in enumerate(decisions) if not d.allowed)
    held = [(i, n) for n, i in enumerate(items) if i.holds] if allowed else []
    rid = request_part(engine.record_ttl(None)[0])
    return Acquisition(allowed, decisions, denied_at, held, rid, degraded=True)

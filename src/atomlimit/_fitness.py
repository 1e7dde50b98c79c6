"""Is a server fit to keep a limiter's counts? The check a limiter makes on first use.

A limiter reads ``INFO memory replication`` from each server it decides on,
and `fitness` turns the reply into findings: a replica is refused,
and with ``strict=True`` so is a server that may evict keys. Every check is
a pure function of what the server answered, so the rules are tested with
plain values. ``atomlimit doctor`` runs these checks too, among
its own (`atomlimit.cli._findings`).

A finding's level says what the operator does next: ``ok`` nothing,
``warn`` decide whether the risk is acceptable, ``fail`` fix it before
trusting a limit, because some count can be lost or refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's verdict on one server."""

    level: Level
    check: str
    """Which check: ``server``, ``scripting``, ``acl``, ``eviction``, ..."""
    message: str
    """What was found, in one line."""
    advice: str = ""
    """What to do about it; empty when there is nothing to do."""


def evicts_keys(policy: str) -> bool:
    """Whether a ``maxmemory-policy`` can delete keys atomlimit still needs.

    Every key atomlimit writes carries a TTL, so the ``volatile-*`` policies
    can pick them as surely as ``allkeys-*``; an evicted counter starts again
    from zero, which admits requests over the limit. Only ``noeviction``
    keeps them, and a policy this code does not know is assumed to evict.
    """
    return policy.strip().lower() != "noeviction"


def check_eviction(info: Mapping[str, object]) -> Finding:
    """An evicted counter restarts from zero and over-admits; a full server refuses charges."""
    policy = str(info.get("maxmemory_policy", "?"))
    maxmemory = info_int(info.get("maxmemory"))
    if not maxmemory:
        advice = (
            "keep maxmemory-policy noeviction if you set maxmemory later"
            if evicts_keys(policy)
            else ""
        )
        return Finding("ok", "eviction", "no maxmemory set: keys are never evicted", advice)
    if evicts_keys(policy):
        return Finding(
            "fail",
            "eviction",
            f"maxmemory-policy {policy} can evict live counters, and an evicted "
            "counter admits requests over the limit",
            "set maxmemory-policy noeviction, or give atomlimit a server of its own",
        )
    return Finding(
        "warn",
        "eviction",
        f"noeviction with maxmemory {info.get('maxmemory_human', maxmemory)}: when the "
        "server is full, charges fail with an error (denials and peeks still answer)",
        "watch used_memory against maxmemory, and treat BackendError as the signal",
    )


def check_replication(info: Mapping[str, object]) -> Finding:
    """Decisions run on the primary; a failover can lose the charges not yet replicated."""
    role = str(info.get("role", "master"))
    if role in ("slave", "replica"):
        primary = f"{info.get('master_host', '?')}:{info.get('master_port', '?')}"
        return Finding(
            "fail",
            "replication",
            f"this server is a replica of {primary}: a limiter must decide on the primary",
            f"point the URL at the primary ({primary})",
        )
    replicas = info_int(info.get("connected_slaves"))
    if not replicas:
        return Finding("ok", "replication", "primary with no replicas")
    guarded = "min_slaves_good_slaves" in info
    return Finding(
        "ok",
        "replication",
        f"primary with {replicas} replica(s): a failover loses the charges not yet "
        "replicated, so the promoted replica may admit them again",
        "min-replicas-to-write is set, which narrows that window"
        if guarded
        else "set min-replicas-to-write 1 (with min-replicas-max-lag) to narrow that window",
    )


def parse_info(reply: str | bytes) -> dict[str, object]:
    """``INFO``'s text as ``field -> value``, numbers as ints (as redis-py parses it)."""
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    info: dict[str, object] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        field, value = line.split(":", 1)
        info[field] = int(value) if value.lstrip("-").isdigit() else value
    return info


@dataclass(frozen=True, slots=True)
class Fitness:
    """What a limiter learns of a server on first use, and what it makes of it."""

    address: str
    findings: tuple[Finding, ...]
    """Eviction and replication; empty when INFO was refused."""
    unread: str = ""
    """Why INFO could not be read (an ACL without +info), if it could not."""

    def refusal(self, strict: bool) -> str | None:
        """Why a limiter must not decide on this server, or None.

        A replica answers from possibly stale data, so no limiter uses one.
        With ``strict``, neither does it use a server that may evict its
        keys, nor one it could not check.
        """
        for finding in self.findings:
            if finding.check == "replication" and finding.level == "fail":
                return f"{self.address}: {finding.message}; {finding.advice}"
        if not strict:
            return None
        for finding in self.findings:
            if finding.level == "fail":
                return f"{self.address}: {finding.message}; {finding.advice} (strict=True)"
        if self.unread:
            return (
                f"{self.address}: could not check the server ({self.unread}); grant +info, "
                "or pass strict=False (strict=True)"
            )
        return None

    def warning(self) -> str | None:
        """What to log once about this server, or None."""
        for finding in self.findings:
            if finding.check == "eviction" and finding.level == "fail":
                return f"{self.address}: {finding.message}; {finding.advice}"
        if self.unread:
            return (
                f"{self.address}: could not check the eviction policy and replication "
                f"({self.unread}); grant +info so the limiter can"
            )
        return None


def fitness(address: str, reply: object) -> Fitness:
    """The limiter's view of a server from its ``INFO memory replication`` reply.

    ``reply`` is the INFO text, or the exception the server answered with.
    """
    if isinstance(reply, BaseException):
        return Fitness(address, (), f"INFO refused: {reply}")
    info = parse_info(reply)  # type: ignore[arg-type]
    return Fitness(address, (check_eviction(info), check_replication(info)))


def info_int(value: object) -> int:
    """An INFO field as an int: 0 when it is missing or not a number."""
    try:
        return int(str(value))
    except ValueError:
        return 0

"""What ``atomlimit doctor`` makes of a server's answers: one finding per check.

Every check is a pure function from what a server answered to a
`Finding`, so the rules are tested with plain
values. `atomlimit.cli._diagnose` asks the server; the checks a
limiter also makes on first use (eviction, replication) are in
`atomlimit._fitness`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from atomlimit import _scripts
from atomlimit._fitness import Finding, check_eviction, check_replication, info_int

# A command name as the scripts call it; the argument is a literal string in
# every shipped script, so a scan of the sources finds them all.
_SCRIPT_CALL = re.compile(rb"redis\.p?call\(\s*'([A-Za-z]+)'")


@dataclass(frozen=True, slots=True)
class Refused:
    """The server answered ``command`` with an error instead of a value."""

    command: str
    reason: str


@dataclass(frozen=True, slots=True)
class Answers:
    """What one server (one primary of a cluster) answered to the checks."""

    address: str
    info: Mapping[str, object] | Refused
    """``INFO``, parsed by redis-py: every default section in one reply."""
    save: str | Refused
    """The ``save`` setting (RDB save points); ``""`` means none."""
    clock: int | Refused
    """The server's TIME in microseconds, as read by the probe script."""
    user: str | Refused
    """``ACL WHOAMI``."""
    rights: Mapping[str, str] | Refused
    """Per command atomlimit sends: ``""`` if ``ACL DRYRUN`` allows it, else why not."""
    needed: tuple[str, ...]
    """The commands the limiter sends, as ``ACL DRYRUN`` was asked about them."""
    cluster_client: bool
    """Reached through a cluster client, which routes each key to its primary."""


@cache
def script_commands() -> tuple[str, ...]:
    """Every command the shipped scripts call, upper-case, sorted."""
    found: set[str] = set()
    for name in _scripts.all_names():
        found.update(m.decode().upper() for m in _SCRIPT_CALL.findall(_scripts.script(name).source))
    return tuple(sorted(found))


def required_commands(db: int = 0) -> tuple[str, ...]:
    """The commands a limiter's user must be allowed, subcommands as ``SCRIPT LOAD``.

    ``SELECT`` only matters when the URL names a database other than 0,
    because redis-py selects it on every new connection.
    """
    sent = ("EVALSHA", "SCRIPT LOAD", *(("SELECT",) if db else ()))
    return (*sent, *script_commands())


def acl_grant(commands: Sequence[str]) -> str:
    """``commands`` as ACL rules: ``+evalsha +script|load +time ...``."""
    return " ".join("+" + command.lower().replace(" ", "|") for command in commands)


def server_identity(info: Mapping[str, object]) -> str:
    """``"Redis 7.0.15"`` or ``"Valkey 9.1.2"``, from ``INFO server``."""
    name = str(info.get("server_name", "redis")).lower()
    if name == "valkey":
        return f"Valkey {info.get('valkey_version', '?')}"
    return f"{name.capitalize()} {info.get('redis_version', '?')}"


def check_server(info: Mapping[str, object]) -> Finding:
    """Name and version; Redis before 7 is untested and cannot answer ``ACL DRYRUN``."""
    identity = server_identity(info)
    major = _major(info.get("redis_version"))
    if str(info.get("server_name", "")).lower() != "valkey" and major is not None and major < 7:
        return Finding(
            "warn",
            "server",
            f"{identity}: older than Redis 7, which atomlimit is tested against",
            "upgrade to Redis 7 or later, or to Valkey",
        )
    return Finding("ok", "server", identity)


def check_scripting(clock: int | Refused) -> Finding:
    """Scripts must run through ``EVALSHA`` and read ``TIME``: every decision does both."""
    if isinstance(clock, int):
        return Finding("ok", "scripting", "Lua scripts run through EVALSHA and read TIME")
    reason = f"{clock.command} refused: {clock.reason}"
    if clock.command == "SCRIPT LOAD":
        # The probe is not preloaded, so this only says the doctor could not try.
        return Finding(
            "warn",
            "scripting",
            f"not verified: the probe script is not cached and {reason}",
            "run doctor as a user allowed SCRIPT LOAD to verify scripting and TIME",
        )
    advice = {
        "EVALSHA": "grant +evalsha: every decision is one EVALSHA",
        "TIME": "grant +time: windows follow the server's clock "
        '(or build the limiter with time_source="client")',
    }.get(clock.command, "check that the server allows Lua scripts")
    return Finding("fail", "scripting", reason, advice)


def check_rights(
    user: str | Refused, rights: Mapping[str, str] | Refused, needed: Sequence[str]
) -> Finding:
    """``ACL DRYRUN`` for each command the limiter sends, as the connected user."""
    if isinstance(user, Refused) or isinstance(rights, Refused):
        refused = user if isinstance(user, Refused) else rights
        assert isinstance(refused, Refused)
        return Finding(
            "warn",
            "acl",
            f"rights not verified: {refused.command} refused: {refused.reason}",
            f"make sure the limiter's user has {acl_grant(needed)} "
            "(verifying needs +acl|whoami +acl|dryrun)",
        )
    denied = {command: why for command, why in rights.items() if why}
    if not denied:
        return Finding(
            "ok", "acl", f"user {user!r} may run all {len(rights)} commands atomlimit sends"
        )
    names = ", ".join(denied)
    if set(denied) == {"SCRIPT LOAD"}:
        return Finding(
            "warn",
            "acl",
            f"user {user!r} may not run SCRIPT LOAD: scripts are not reloaded "
            "after a restart, failover or SCRIPT FLUSH",
            "grant +script|load, or run `atomlimit scripts load` after each of those",
        )
    return Finding(
        "fail",
        "acl",
        f"user {user!r} may not run {names}: {next(iter(denied.values()))}",
        f"grant {acl_grant(list(denied))}",
    )


def check_persistence(info: Mapping[str, object], save: str | Refused) -> Finding:
    """Without AOF or RDB snapshots, a restart forgets every count."""
    if info_int(info.get("aof_enabled")):
        return Finding("ok", "persistence", "AOF on: counts survive a restart")
    if isinstance(save, str) and save.strip():
        return Finding(
            "ok",
            "persistence",
            f"RDB snapshots (save {save.strip()}): a crash loses the counts "
            "charged since the last snapshot",
        )
    if isinstance(save, Refused) and info_int(info.get("rdb_saves")):
        return Finding("ok", "persistence", "RDB snapshots have been taken since the start")
    if isinstance(save, Refused):
        return Finding(
            "warn",
            "persistence",
            f"no AOF, and RDB save points unknown ({save.command} refused): "
            "if none are set, counts are lost on restart",
            "turn on appendonly yes, or check the save setting",
        )
    return Finding(
        "warn",
        "persistence",
        "no AOF and no RDB save points: counts are lost on restart, "
        "and every limit starts again from zero",
        "turn on appendonly yes (appendfsync everysec loses at most about a second)",
    )


def check_cluster(info: Mapping[str, object], cluster_client: bool) -> Finding:
    """A cluster node is fine through a cluster client; a plain client sees one slot range."""
    if not info_int(info.get("cluster_enabled")):
        return Finding("ok", "cluster", "standalone server")
    if cluster_client:
        return Finding("ok", "cluster", "cluster mode: every primary is checked")
    return Finding(
        "warn",
        "cluster",
        "a cluster node reached through a standalone client: only this node was "
        "checked, and keys in other slots answer MOVED",
        "use redis.RedisCluster (the atomlimit command does this itself)",
    )


def assess(answers: Answers) -> list[Finding]:
    """Every check's finding for one server, in a fixed order."""
    scripting = check_scripting(answers.clock)
    rights = check_rights(answers.user, answers.rights, answers.needed)
    info = answers.info
    if isinstance(info, Refused):
        unread = Finding(
            "warn",
            "server",
            f"{info.command} refused ({info.reason}): version, eviction, "
            "persistence, cluster and replication not checked",
            "run doctor as a user allowed INFO, or grant +info",
        )
        return [unread, scripting, rights]
    return [
        check_server(info),
        scripting,
        rights,
        check_eviction(info),
        check_persistence(info, answers.save),
        check_cluster(info, answers.cluster_client),
        check_replication(info),
    ]


def _major(version: object) -> int | None:
    head = str(version).split(".", 1)[0]
    return int(head) if head.isdigit() else None

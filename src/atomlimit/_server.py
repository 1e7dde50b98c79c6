"""Is this server fit to keep atomlimit's counts? Findings from its replies.

Every check is a pure function from what a server answered to a
`Finding`, so the rules are tested with plain values and any shell can
use them: ``atomlimit doctor`` today, the limiter on first use later.
`gather` is the one place that asks a server (sync redis-py,
standalone or cluster), and `diagnose` runs both for each primary.

A finding's level says what the operator does next: ``ok`` nothing,
``warn`` decide whether the risk is acceptable, ``fail`` fix it before
trusting a limit, because some count can be lost or refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, TypeVar

import redis
from redis.cluster import RedisCluster

from atomlimit import _scripts
from atomlimit.errors import BackendError

Level = Literal["ok", "warn", "fail"]
T = TypeVar("T")

# A command name as the scripts call it; the argument is a literal string in
# every shipped script, so a scan of the sources finds them all.
_SCRIPT_CALL = re.compile(rb"redis\.p?call\(\s*'([A-Za-z]+)'")
# redis-py strips the "ERR " prefix; DRYRUN checks arity before rights.
_ARITY = "wrong number of arguments"
_MAX_PADDING = 6


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


@dataclass(frozen=True, slots=True)
class Refused:
    """The server answered ``command`` with an error instead of a value."""

    command: str
    reason: str


@dataclass(frozen=True, slots=True)
class Replies:
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


# --------------------------------------------------------------------------
# What atomlimit needs
# --------------------------------------------------------------------------


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


def evicts_keys(policy: str) -> bool:
    """Whether a ``maxmemory-policy`` can delete keys atomlimit still needs.

    Every key atomlimit writes carries a TTL, so the ``volatile-*`` policies
    can pick them as surely as ``allkeys-*``; an evicted counter starts again
    from zero, which admits requests over the limit. Only ``noeviction``
    keeps them, and a policy this code does not know is assumed to evict.
    """
    return policy.strip().lower() != "noeviction"


# --------------------------------------------------------------------------
# The checks: pure functions of the replies
# --------------------------------------------------------------------------


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


def check_eviction(info: Mapping[str, object]) -> Finding:
    """An evicted counter restarts from zero and over-admits; a full server refuses charges."""
    policy = str(info.get("maxmemory_policy", "?"))
    maxmemory = _int(info.get("maxmemory"))
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


def check_persistence(info: Mapping[str, object], save: str | Refused) -> Finding:
    """Without AOF or RDB snapshots, a restart forgets every count."""
    if _int(info.get("aof_enabled")):
        return Finding("ok", "persistence", "AOF on: counts survive a restart")
    if isinstance(save, str) and save.strip():
        return Finding(
            "ok",
            "persistence",
            f"RDB snapshots (save {save.strip()}): a crash loses the counts "
            "charged since the last snapshot",
        )
    if isinstance(save, Refused) and _int(info.get("rdb_saves")):
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
    if not _int(info.get("cluster_enabled")):
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
    replicas = _int(info.get("connected_slaves"))
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


def assess(replies: Replies) -> list[Finding]:
    """Every check's finding for one server, in a fixed order."""
    scripting = check_scripting(replies.clock)
    rights = check_rights(replies.user, replies.rights, replies.needed)
    info = replies.info
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
        check_persistence(info, replies.save),
        check_cluster(info, replies.cluster_client),
        check_replication(info),
    ]


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _major(version: object) -> int | None:
    head = str(version).split(".", 1)[0]
    return int(head) if head.isdigit() else None


# --------------------------------------------------------------------------
# Asking a server (sync)
# --------------------------------------------------------------------------


def diagnose(
    client: redis.Redis | RedisCluster, *, db: int = 0, prefix: str = "atomlimit"
) -> list[tuple[str, list[Finding]]]:
    """Ask every primary behind ``client``; each address with its findings.

    Raises [`BackendError`][atomlimit.errors.BackendError] when a server cannot be reached;
    a refused command is a finding, not an error.
    """
    return [(replies.address, assess(replies)) for replies in gather(client, db=db, prefix=prefix)]


def gather(
    client: redis.Redis | RedisCluster, *, db: int = 0, prefix: str = "atomlimit"
) -> list[Replies]:
    """What each primary answers to the checks.

    ``db`` is the database the limiter's URL selects; ``prefix`` the
    limiter's key prefix, whose keys the ACL check asks about.
    """
    needed = required_commands(db)
    key = f"{prefix}:doctor"
    cluster = isinstance(client, RedisCluster)
    answers = []
    for where, node in primaries(client):
        try:
            answers.append(_ask(where, node, needed, key, cluster))
        except (redis.ConnectionError, redis.TimeoutError) as err:
            raise BackendError(f"{where}: {err}") from err
    return answers


def primaries(client: redis.Redis | RedisCluster) -> list[tuple[str, redis.Redis]]:
    """Each primary behind ``client`` as ``(address, client of that node alone)``.

    Scripts and server settings are per node, so a cluster is asked node by
    node; a standalone client is its own single primary.
    """
    if isinstance(client, RedisCluster):
        return [
            (f"{node.host}:{node.port}", client.get_redis_connection(node))
            for node in client.get_primaries()  # type: ignore[no-untyped-call]
        ]
    options = client.connection_pool.connection_kwargs
    if "path" in options:
        return [(str(options["path"]), client)]
    return [(f"{options.get('host', 'localhost')}:{options.get('port', 6379)}", client)]


def _ask(
    where: str, node: redis.Redis, needed: tuple[str, ...], key: str, cluster: bool
) -> Replies:
    user = _answer("ACL WHOAMI", lambda: _text(_send(node, "ACL", "WHOAMI")))
    return Replies(
        address=where,
        info=_answer("INFO", lambda: dict(_send(node, "INFO"))),
        save=_answer("CONFIG GET", lambda: _config(node, "save")),
        clock=_probe_clock(node),
        user=user,
        rights=user
        if isinstance(user, Refused)
        else _answer("ACL DRYRUN", lambda: _dry_run(node, user, needed, key)),
        needed=needed,
        cluster_client=cluster,
    )


def _answer(command: str, ask: Callable[[], T]) -> T | Refused:
    # Connection failures propagate: only a server's answer is a finding.
    try:
        return ask()
    except redis.ResponseError as err:
        return Refused(command, str(err))


def _config(node: redis.Redis, name: str) -> str:
    reply = _send(node, "CONFIG", "GET", name)
    values = {_text(k): _text(v) for k, v in dict(reply).items()}
    return values.get(name, "")


def _probe_clock(node: redis.Redis) -> int | Refused:
    probe = _scripts.script("server_probe")
    source, sha = probe.source, probe.sha
    try:
        try:
            reply = _send(node, "EVALSHA", sha, 0)
        except redis.exceptions.NoScriptError:
            try:
                _send(node, "SCRIPT", "LOAD", source)
            except redis.ResponseError as err:
                return Refused("SCRIPT LOAD", str(err))
            reply = _send(node, "EVALSHA", sha, 0)
    except redis.exceptions.NoPermissionError as err:
        return Refused("EVALSHA", str(err))
    except redis.ResponseError as err:
        # The probe calls nothing but TIME, so an error from inside it is
        # about TIME (Redis 7.0 does not name the command it refused).
        return Refused("TIME", str(err))
    seconds, micros = (int(part) for part in reply)
    return seconds * 1_000_000 + micros


def _dry_run(node: redis.Redis, user: str, needed: tuple[str, ...], key: str) -> dict[str, str]:
    """Why ``user`` may not run each command (``""`` when it may).

    ``ACL DRYRUN`` checks arity before rights, so each command is padded
    with ``key`` until its arity fits: that also checks the user's key
    patterns against a key under the limiter's prefix.
    """
    verdicts: dict[str, str] = {}
    for command in needed:
        probe = _scripts.script("server_probe").sha
        words = {"EVALSHA": ["EVALSHA", probe, "1", key], "SELECT": ["SELECT", "1"]}.get(
            command, command.split()
        )
        verdicts[command] = _dry_run_one(node, user, words, key)
    return verdicts


def _dry_run_one(node: redis.Redis, user: str, words: list[str], key: str) -> str:
    for padding in range(_MAX_PADDING + 1):
        try:
            reply = _text(_send(node, "ACL", "DRYRUN", user, *words, *[key] * padding))
        except redis.ResponseError as err:
            reason = str(err)
            if reason.startswith(_ARITY):
                continue
            if isinstance(err, redis.exceptions.NoPermissionError) or "subcommand" in reason:
                raise  # DRYRUN itself is refused, or unknown before Redis 7: rights unverified
            return reason  # renamed away or unknown: the limiter could not send it either
        return "" if reply == "OK" else reply
    return f"no arity up to {_MAX_PADDING} extra arguments fits"


def _send(node: redis.Redis, *args: object) -> Any:
    # redis-py leaves the sync execute_command unannotated.
    return node.execute_command(*args)  # type: ignore[no-untyped-call]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

"""``atomlimit doctor``'s questions to a server, asked through sync redis-py.

`gather` asks each primary (standalone or every node of a cluster)
what the checks need, and `diagnose` hands the answers to the checks
in `atomlimit.cli._findings`. A refused command is an answer; only a
server that cannot be reached is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from atomlimit import _scripts
from atomlimit._errors import BackendError
from atomlimit._fitness import Finding
from atomlimit.cli._connect import primaries
from atomlimit.cli._findings import Answers, Refused, assess, required_commands

T = TypeVar("T")

# redis-py strips the "ERR " prefix; DRYRUN checks arity before rights.
_ARITY = "wrong number of arguments"
_MAX_PADDING = 6


def diagnose(
    client: redis.Redis | RedisCluster, *, db: int = 0, prefix: str = "atomlimit"
) -> list[tuple[str, list[Finding]]]:
    """Ask every primary behind ``client``; each address with its findings.

    Raises `BackendError` when a server cannot be reached;
    a refused command is a finding, not an error.
    """
    return [(answers.address, assess(answers)) for answers in gather(client, db=db, prefix=prefix)]


def gather(
    client: redis.Redis | RedisCluster, *, db: int = 0, prefix: str = "atomlimit"
) -> list[Answers]:
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


def _ask(
    where: str, node: redis.Redis, needed: tuple[str, ...], key: str, cluster: bool
) -> Answers:
    user = _answer("ACL WHOAMI", lambda: _text(_send(node, "ACL", "WHOAMI")))
    return Answers(
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

"""The server check: each rule from plain replies, then gathered from real servers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis
from conftest import ServerPool
from servers import Cluster, Server, start_server

from atomlimit import BackendError, Limiter, RateLimit, _fitness
from atomlimit._fitness import Finding
from atomlimit.cli import _diagnose, _findings
from atomlimit.cli._findings import Refused

ROOT = Path(__file__).resolve().parents[2]

EVICTING = [
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]


@pytest.mark.parametrize("policy", EVICTING)
def test_every_policy_but_noeviction_evicts_keys_that_carry_a_ttl(policy: str) -> None:
    assert _fitness.evicts_keys(policy)
    assert not _fitness.evicts_keys("noeviction")


def test_a_policy_unknown_today_is_assumed_to_evict() -> None:
    assert _fitness.evicts_keys("allkeys-someday")


@pytest.mark.parametrize("policy", EVICTING)
def test_an_evicting_policy_with_maxmemory_fails(policy: str) -> None:
    finding = _fitness.check_eviction({"maxmemory": 10_485_760, "maxmemory_policy": policy})

    assert finding.level == "fail"
    assert policy in finding.message
    assert "noeviction" in finding.advice


def test_noeviction_with_maxmemory_warns_that_a_full_server_refuses_charges() -> None:
    finding = _fitness.check_eviction({"maxmemory": 10_485_760, "maxmemory_policy": "noeviction"})

    assert finding.level == "warn"
    assert "denials and peeks still answer" in finding.message


def test_a_full_noeviction_server_refuses_charges_but_still_denies_and_peeks(
    server_kind: str, server_pool: ServerPool
) -> None:
    # What the noeviction warning promises, shown on a server that is full.
    config = {"maxmemory-policy": "noeviction"}
    daily = RateLimit(name="daily", limit=1, window="day")
    with (
        start_server(server_pool.binary(server_kind), extra_config=config) as full,
        full.client() as client,
    ):
        limiter = Limiter(client)
        assert limiter.hit(daily, "spent").allowed
        for n in range(200):
            client.set(f"filler:{n}", "x" * 10_000)
        # Well over the cap, not hovering at it: every write is refused.
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used - 1_000_000)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("one-more", "x")

        assert not limiter.peek(daily, "spent").allowed
        assert not limiter.hit(daily, "spent").allowed
        with pytest.raises(BackendError) as refused:
            limiter.hit(daily, "fresh")
    assert isinstance(refused.value.__cause__, redis.exceptions.OutOfMemoryError)


def test_no_maxmemory_never_evicts_whatever_the_policy() -> None:
    for policy in ("noeviction", "allkeys-lru"):
        finding = _fitness.check_eviction({"maxmemory": 0, "maxmemory_policy": policy})
        assert finding.level == "ok"


def test_persistence_off_warns_and_either_aof_or_save_points_is_ok() -> None:
    off = _findings.check_persistence({"aof_enabled": 0}, "")
    aof = _findings.check_persistence({"aof_enabled": 1}, "")
    rdb = _findings.check_persistence({"aof_enabled": 0}, "3600 1 300 100")

    assert off.level == "warn"
    assert "lost on restart" in off.message
    assert (aof.level, rdb.level) == ("ok", "ok")


def test_persistence_without_config_falls_back_on_snapshots_taken() -> None:
    refused = Refused("CONFIG GET", "unknown command 'CONFIG'")

    unknown = _findings.check_persistence({"aof_enabled": 0, "rdb_saves": 0}, refused)
    snapshotted = _findings.check_persistence({"aof_enabled": 0, "rdb_saves": 3}, refused)

    assert unknown.level == "warn"
    assert "CONFIG GET refused" in unknown.message
    assert snapshotted.level == "ok"


def test_a_replica_fails_and_names_its_primary() -> None:
    info = {"role": "slave", "master_host": "10.0.0.5", "master_port": 6380}

    finding = _fitness.check_replication(info)

    assert finding.level == "fail"
    assert "10.0.0.5:6380" in finding.advice


def test_a_primary_with_replicas_is_ok_with_a_note_on_failover() -> None:
    bare = _fitness.check_replication({"role": "master", "connected_slaves": 2})
    guarded = _fitness.check_replication(
        {"role": "master", "connected_slaves": 2, "min_slaves_good_slaves": 2}
    )

    assert bare.level == guarded.level == "ok"
    assert "failover" in bare.message
    assert "set min-replicas-to-write" in bare.advice
    assert "is set" in guarded.advice


def test_a_cluster_node_through_a_plain_client_warns() -> None:
    assert _findings.check_cluster({"cluster_enabled": 1}, cluster_client=True).level == "ok"
    assert _findings.check_cluster({"cluster_enabled": 1}, cluster_client=False).level == "warn"
    assert _findings.check_cluster({"cluster_enabled": 0}, cluster_client=False).level == "ok"


def test_server_identity_tells_valkey_from_redis() -> None:
    valkey = {"server_name": "valkey", "valkey_version": "9.1.2", "redis_version": "7.2.4"}

    assert _findings.server_identity(valkey) == "Valkey 9.1.2"
    assert _findings.server_identity({"redis_version": "7.0.15"}) == "Redis 7.0.15"
    assert _findings.check_server({"redis_version": "6.2.14"}).level == "warn"


def test_scripting_fails_naming_what_was_refused_unless_doctor_could_not_try() -> None:
    evalsha = _findings.check_scripting(Refused("EVALSHA", "no permissions"))
    clock = _findings.check_scripting(Refused("TIME", "script: on @user_script:11."))
    untried = _findings.check_scripting(Refused("SCRIPT LOAD", "no permissions"))

    assert (evalsha.level, clock.level) == ("fail", "fail")
    assert "+evalsha" in evalsha.advice
    assert "+time" in clock.advice
    assert untried.level == "warn"
    assert "not verified" in untried.message


def test_rights_fail_naming_each_denied_command() -> None:
    rights = {"EVALSHA": "", "TIME": "no permissions to run the 'time' command", "GET": ""}

    finding = _findings.check_rights("limiter", rights, list(rights))

    assert finding.level == "fail"
    assert "TIME" in finding.message
    assert finding.advice == "grant +time"


def test_only_script_load_denied_warns_since_scripts_can_be_preloaded() -> None:
    rights = {"EVALSHA": "", "SCRIPT LOAD": "no permissions", "TIME": ""}

    finding = _findings.check_rights("limiter", rights, list(rights))

    assert finding.level == "warn"
    assert "atomlimit scripts load" in finding.advice


def test_rights_that_cannot_be_asked_about_warn_naming_what_to_grant() -> None:
    refused = Refused("ACL WHOAMI", "no permissions to run the 'acl|whoami' command")

    finding = _findings.check_rights(refused, refused, _findings.required_commands())

    assert finding.level == "warn"
    assert "+evalsha +script|load" in finding.advice
    assert "+time" in finding.advice


def test_refused_info_is_one_warning_and_the_other_checks_still_run() -> None:
    refused = Refused("INFO", "no permissions")
    replies = _findings.Answers(
        address="h:1",
        info=refused,
        save=refused,
        clock=1,
        user="u",
        rights={"EVALSHA": ""},
        needed=("EVALSHA",),
        cluster_client=False,
    )

    findings = _findings.assess(replies)

    assert [f.check for f in findings] == ["server", "scripting", "acl"]
    assert [f.level for f in findings] == ["warn", "ok", "ok"]


def test_required_commands_are_the_ones_the_scripts_call() -> None:
    called = {
        name
        for path in (ROOT / "lua").rglob("*.lua")
        for name in re.findall(r"redis\.p?call\('([A-Z]+)'", path.read_text())
    }

    assert set(_findings.script_commands()) == called
    assert {"EVALSHA", "SCRIPT LOAD", "TIME"} <= set(_findings.required_commands(0))
    assert "SELECT" not in _findings.required_commands(0)
    assert "SELECT" in _findings.required_commands(3)


def test_a_default_server_gathers_clean_replies(server: Server) -> None:
    with server.client() as client:
        (replies,) = _diagnose.gather(client)

    assert replies.address == f"127.0.0.1:{server.port}"
    assert isinstance(replies.clock, int)
    assert replies.user == "default"
    assert replies.rights == dict.fromkeys(_findings.required_commands(), "")
    assert replies.save == ""


def test_a_cluster_is_gathered_primary_by_primary(cluster: Cluster) -> None:
    with cluster.client() as client:
        reports = _diagnose.diagnose(client)

    assert sorted(where for where, _ in reports) == sorted(
        f"127.0.0.1:{node.port}" for node in cluster.nodes
    )
    for _, findings in reports:
        assert Finding("ok", "cluster", "cluster mode: every primary is checked") in findings

"""The command line, each command against real servers.

Commands run in-process through ``main([...])``, with their output captured;
a few run as ``python -m atomlimit`` to show the installed entry point
behaves the same.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerPool, Target
from servers import Cluster, Server, free_port, start_server

from atomlimit import (
    Concurrency,
    Hit,
    Limiter,
    LimitExceeded,
    RateLimit,
    SpendCap,
    Upstream,
    __version__,
)
from atomlimit._scripts import all_names, script
from atomlimit.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
# The rights docs/script-loading.md tells operators to grant the limiter, and
# what doctor reads besides; tests take one away to see doctor name it.
LIMITER_RIGHTS = re.findall(
    r"\+[a-z|]+",
    (ROOT / "docs" / "script-loading.md")
    .read_text()
    .split("ACL SETUSER limiter", 1)[1]
    .split("```")[0],
)
DOCTOR_RIGHTS = ["+info", "+config|get", "+acl|whoami", "+acl|dryrun"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def finding_lines(out: str, level: str, check: str) -> list[str]:
    return [line for line in out.splitlines() if line.split()[:2] == [level, check]]


@contextmanager
def acl_user(server: Server, rights: list[str]) -> Iterator[str]:
    """A user with exactly ``rights`` on ``server``; yields its URL."""
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "ops", "on", ">s3cret", "~*", "-@all", *rights)
        try:
            yield f"redis://ops:s3cret@127.0.0.1:{server.port}/0"
        finally:
            admin.execute_command("ACL", "DELUSER", "ops")


@pytest.fixture
def binary(server_kind: str, server_pool: ServerPool) -> str:
    return server_pool.binary(server_kind)


# --------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------


def test_doctor_on_a_default_server_only_warns_that_persistence_is_off(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "doctor", "--url", server.url)

    assert code == 0, out
    assert err == ""
    assert finding_lines(out, "warn", "persistence")
    for check in ("server", "scripting", "acl", "eviction", "cluster", "replication"):
        assert finding_lines(out, "ok", check), check
    assert out.rstrip().endswith("0 fail, 1 warn, 6 ok")


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_doctor_fails_on_a_policy_that_evicts_counters(
    binary: str, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {"maxmemory": "10mb", "maxmemory-policy": policy}
    with start_server(binary, extra_config=config) as evicting:
        code, out, _ = run_cli(capsys, "doctor", "--url", evicting.url)

    assert code == 1
    (line,) = finding_lines(out, "fail", "eviction")
    assert policy in line
    assert "noeviction" in out


def test_doctor_reads_the_policy_where_config_is_renamed_away(
    binary: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {"maxmemory": "10mb", "maxmemory-policy": "allkeys-lru", "rename-command": 'CONFIG ""'}
    with start_server(binary, extra_config=config) as locked_down:
        code, out, _ = run_cli(capsys, "doctor", "--url", locked_down.url)

    assert code == 1
    assert finding_lines(out, "fail", "eviction")
    (persistence,) = finding_lines(out, "warn", "persistence")
    assert "CONFIG GET refused" in persistence


def test_doctor_warns_that_noeviction_with_maxmemory_refuses_charges_when_full(
    binary: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {"maxmemory": "10mb", "maxmemory-policy": "noeviction"}
    with start_server(binary, extra_config=config) as capped:
        code, out, _ = run_cli(capsys, "doctor", "--url", capped.url)

    assert code == 0
    assert finding_lines(out, "warn", "eviction")


def test_doctor_fails_on_a_replica_and_notes_failover_on_its_primary(
    binary: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with start_server(binary) as primary:
        config = {"replicaof": f"127.0.0.1 {primary.port}"}
        with start_server(binary, extra_config=config) as replica:
            _wait_for_replicas(primary, 1)
            replica_code, replica_out, _ = run_cli(capsys, "doctor", "--url", replica.url)
            primary_code, primary_out, _ = run_cli(capsys, "doctor", "--url", primary.url)

    assert replica_code == 1
    (line,) = finding_lines(replica_out, "fail", "replication")
    assert f"replica of 127.0.0.1:{primary.port}" in line
    assert primary_code == 0
    (note,) = finding_lines(primary_out, "ok", "replication")
    assert "failover" in note
    assert "min-replicas-to-write" in primary_out


def test_doctor_names_time_when_the_user_may_not_read_the_clock(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    rights = [r for r in LIMITER_RIGHTS if r != "+time"] + DOCTOR_RIGHTS
    with acl_user(server, rights) as url:
        code, out, _ = run_cli(capsys, "doctor", "--url", url)

    assert code == 1
    (scripting,) = finding_lines(out, "fail", "scripting")
    assert "TIME refused" in scripting
    (acl,) = finding_lines(out, "fail", "acl")
    assert "'ops' may not run TIME" in acl
    assert "grant +time" in out


def test_doctor_names_evalsha_when_the_user_may_not_run_scripts(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    rights = [r for r in LIMITER_RIGHTS if r != "+evalsha"] + DOCTOR_RIGHTS
    with acl_user(server, rights) as url:
        code, out, _ = run_cli(capsys, "doctor", "--url", url)

    assert code == 1
    assert "EVALSHA refused" in finding_lines(out, "fail", "scripting")[0]
    assert "may not run EVALSHA" in finding_lines(out, "fail", "acl")[0]


def test_doctor_as_the_bare_limiter_user_cannot_verify_rights_and_says_what_to_grant(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    with acl_user(server, LIMITER_RIGHTS) as url:
        code, out, _ = run_cli(capsys, "doctor", "--url", url)

    assert code == 0
    assert finding_lines(out, "ok", "scripting")
    (acl,) = finding_lines(out, "warn", "acl")
    assert "rights not verified" in acl
    assert "+evalsha +script|load" in out
    assert finding_lines(out, "ok", "server")  # the documented rights include +info
    assert "s3cret" not in out
    assert "ops:***@" in out


def test_doctor_warns_only_when_script_load_alone_is_withheld(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    rights = [r for r in LIMITER_RIGHTS if r != "+script|load"] + DOCTOR_RIGHTS
    with server.client() as admin:
        # Loaded by an admin, as the limiter's scripts would be in such a deployment.
        admin.script_load(script("server_probe").source)
    with acl_user(server, rights) as url:
        code, out, _ = run_cli(capsys, "doctor", "--url", url)

    assert code == 0
    assert finding_lines(out, "ok", "scripting")
    assert "SCRIPT LOAD" in finding_lines(out, "warn", "acl")[0]


def test_doctor_checks_every_primary_of_a_cluster(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "doctor", "--url", cluster.nodes[0].url)

    assert code == 0
    assert "(cluster of 3 primaries)" in out.splitlines()[0]
    for node in cluster.nodes:
        assert f"\n127.0.0.1:{node.port}\n" in out
    assert len(finding_lines(out, "ok", "cluster")) == 3
    assert len(finding_lines(out, "ok", "scripting")) == 3


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:1/0", "bad URL"),
        ("redis://127.0.0.1:1/zero", "bad URL"),
        ("redis://127.0.0.1:{port}/0", "cannot reach"),
    ],
)
def test_doctor_without_a_server_to_ask_says_so_in_one_line(
    url: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "doctor", "--url", url.format(port=free_port()))

    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"atomlimit doctor: {says}")


def test_doctor_with_a_wrong_password_says_so_in_one_line(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    with acl_user(server, LIMITER_RIGHTS):
        url = f"redis://ops:wrong@127.0.0.1:{server.port}/0"
        code, out, err = run_cli(capsys, "doctor", "--url", url)

    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "authentication refused" in err
    assert "wrong" not in err


def test_doctor_takes_the_url_from_the_environment(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATOMLIMIT_URL", server.url)

    code, out, _ = run_cli(capsys, "doctor")

    assert code == 0
    assert server.url in out.splitlines()[0]


def test_doctor_runs_as_a_module_with_the_same_exit_codes(server: Server) -> None:
    reachable = _module("doctor", "--url", server.url)
    unreachable = _module("doctor", "--url", f"redis://127.0.0.1:{free_port()}/0")

    assert reachable.returncode == 0
    assert "warn  persistence" in reachable.stdout
    assert unreachable.returncode == 2
    assert unreachable.stdout == ""
    assert unreachable.stderr.count("\n") == 1
    assert "Traceback" not in unreachable.stderr


# --------------------------------------------------------------------------
# scripts load
# --------------------------------------------------------------------------


def test_scripts_load_puts_every_script_on_every_primary(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "scripts", "load", "--url", target.url)

    assert code == 0
    shas = [script(name).sha for name in all_names()]
    for name, sha in zip(all_names(), shas, strict=True):
        assert f"{name} " in out
        assert sha in out
    with target.sync_client() as client:
        if target.kind == "cluster":
            nodes = [client.get_redis_connection(node) for node in client.get_primaries()]
        else:
            nodes = [client]
        assert len(nodes) == (3 if target.kind == "cluster" else 1)
        for node in nodes:
            assert node.script_exists(*shas) == [True] * len(shas)


def test_scripts_load_refused_says_which_right_is_missing(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    rights = [r for r in LIMITER_RIGHTS if r != "+script|load"]
    with acl_user(server, rights) as url:
        code, out, err = run_cli(capsys, "scripts", "load", "--url", url)

    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "SCRIPT LOAD refused" in err
    assert "+script|load" in err


# --------------------------------------------------------------------------
# version
# --------------------------------------------------------------------------


def test_version_prints_the_package_and_with_a_url_the_server(
    server: Server, server_kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "version")
    assert code == 0
    assert out.splitlines()[0] == f"atomlimit {__version__}"

    code, out, _ = run_cli(capsys, "version", "--url", server.url)
    assert code == 0
    expected = "Valkey" if server_kind == "valkey" else "Redis"
    assert f"127.0.0.1:{server.port}: {expected} " in out


def test_version_of_a_cluster_names_every_primary(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "version", "--url", cluster.nodes[-1].url)

    assert code == 0
    assert sum(": Redis " in line for line in out.splitlines()) == 3


# --------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------


def test_demo_deletes_every_key_it_wrote_and_honours_limit(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    with server.client() as client:
        client.set("someone-elses-key", "kept")
        before = client.dbsize()

        code, out, _ = run_cli(
            capsys, "demo", "--url", server.url, "--workers", "200", "--limit", "30"
        )

        assert client.dbsize() == before
        assert client.get("someone-elses-key") == b"kept"
    assert code == 0
    rows = {line.split("  ")[0]: line.split() for line in out.splitlines() if ": " in line}
    assert rows["rate limit: atomlimit hit"][-4:-1] == ["30", "30", "0"]
    assert rows["spend cap: atomlimit hit"][-6:-1] == ["11.10", "AUD", "30", "0.00", "AUD"]
    assert "30 x 0.37 = 11.10 AUD" in out
    assert "Deleted the " in out


def test_demo_on_an_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "demo", "--url", f"redis://127.0.0.1:{free_port()}/0")

    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("atomlimit demo: cannot reach ")


def test_demo_refuses_a_cluster_node_in_one_line(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "demo", "--url", cluster.nodes[0].url)

    assert code == 2
    assert err.count("\n") == 1
    assert "needs a standalone server" in err


@pytest.mark.parametrize("option", ["--workers", "--limit"])
@pytest.mark.parametrize("value", ["0", "-3", "lots", "99999999"])
def test_demo_refuses_counts_out_of_bounds_in_one_line(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", option, value])
    err = capsys.readouterr().err

    assert exited.value.code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"atomlimit demo: argument {option}: must be a whole number from 1 to ")


# --------------------------------------------------------------------------
# help
# --------------------------------------------------------------------------

# --------------------------------------------------------------------------
# inspect and reset
# --------------------------------------------------------------------------

DAY = RateLimit(name="enrichment", limit=1000, window="day")
SMOOTH = RateLimit(name="api", limit=10, window="minute", algorithm="gcra")
LOG = RateLimit(name="login", limit=5, window="minute", algorithm="sliding_log")
COUNTER = RateLimit(name="search", limit=50, window="minute", algorithm="sliding_counter")
CAP = SpendCap(name="ai", limit=Decimal("100.00"), currency="AUD", window="day")
SLOTS = Concurrency(name="openai", limit=3)


def usage_of(out: str, subject: str, name: str, part: str) -> list[str]:
    """The rows of an inspect table for one subject, limit and part."""
    return [
        line
        for line in out.splitlines()
        if line.split()[:2] == [subject, name] and f" {part} " in line
    ]


def fill(client: Any) -> None:
    """One subject's usage of every kind, and a little of another subject's."""
    limiter = Limiter(client)
    limiter.hit(DAY, "client-42", cost=3, request_id="req-1")
    limiter.hit(SMOOTH, "client-42", cost=4)
    for _ in range(2):
        limiter.hit(LOG, "client-42")
    limiter.hit(COUNTER, "client-42", cost=7)
    limiter.hit(CAP, "client-42", cost=Decimal("0.37"))
    limiter.reserve(CAP, "client-42", Decimal("2.00"))
    limiter.lease(SLOTS, "client-42")
    limiter.hit(DAY, "other:{tenant}", cost=5)


def test_inspect_shows_usage_window_end_and_ttl_of_every_kind(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    with target.sync_client() as client:
        fill(client)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    window_end = midnight + timedelta(days=1) - timedelta(seconds=1)

    code, out, err = run_cli(capsys, "inspect", "--url", target.url, "--subject", "client-42")

    assert code == 0, err
    (day,) = usage_of(out, "client-42", "enrichment", "window")
    assert f"3 used since {midnight:%Y-%m-%d} 00:00:00Z" in day
    assert f"{window_end:%Y-%m-%d %H:%M:%S}Z" in day  # the key ends with its window
    assert usage_of(out, "client-42", "enrichment", "request record")
    assert "busy for" in usage_of(out, "client-42", "api", "state")[0]
    assert "2 entries" in usage_of(out, "client-42", "login", "state")[0]
    assert "7 used since" in usage_of(out, "client-42", "search", "state")[0]
    (cap,) = usage_of(out, "client-42", "ai", "window")
    assert "0.37 AUD spent since" in cap
    assert "2.00 AUD held" in cap
    assert "1 hold open" in usage_of(out, "client-42", "ai", "holds")[0]
    assert "1 lease held" in usage_of(out, "client-42", "openai", "state")[0]
    assert "other:{tenant}" not in out
    hours = float(day.split()[-1].removesuffix("h")) if day.endswith("h") else 0.0
    assert 0 <= hours <= 24


def test_inspect_by_name_across_subjects_decodes_each_subject(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    with target.sync_client() as client:
        fill(client)

    code, out, _ = run_cli(capsys, "inspect", "--url", target.url, "--name", "enrichment")

    assert code == 0
    assert "5 used since" in usage_of(out, "other:{tenant}", "enrichment", "window")[0]
    assert "3 used since" in usage_of(out, "client-42", "enrichment", "window")[0]
    assert " api " not in out


def test_inspect_scans_and_never_sends_keys(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    with server.client() as client:
        fill(client)
        client.config_resetstat()
        run_cli(capsys, "inspect", "--url", server.url)
        stats = client.info("commandstats")

    assert "cmdstat_scan" in stats
    assert "cmdstat_keys" not in stats


def test_inspect_stops_at_its_cap_and_says_so(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        limiter.hit_many([Hit(DAY, f"client-{n}") for n in range(300)])

    code, out, _ = run_cli(capsys, "inspect", "--url", server.url, "--max-keys", "50")

    assert code == 0
    assert out.splitlines()[0].endswith(": 50 keys")
    assert "stopped early" in out


def test_inspect_of_an_empty_server_says_so(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "inspect", "--url", server.url, "--prefix", "other-app")

    assert code == 0
    assert out.strip() == f"{server.url}: no atomlimit keys found"


def test_reset_without_yes_lists_and_deletes_nothing(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    with target.sync_client() as client:
        fill(client)
        code, out, _ = run_cli(
            capsys, "reset", "--url", target.url, "--name", "ai", "--subject", "client-42"
        )
        after = Limiter(client).peek(CAP, "client-42", cost=0)

    assert code == 0
    assert "nothing deleted: run again with --yes to delete these 3 keys" in out
    assert usage_of(out, "client-42", "ai", "holds")
    assert after.used == Decimal("0.37")
    assert after.held == Decimal("2.00")


def test_reset_with_yes_forgets_one_subject_of_one_limit_only(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    with target.sync_client() as client:
        fill(client)
        code, out, _ = run_cli(
            capsys, "reset", "--url", target.url, "--name", "ai", "--subject", "client-42", "--yes"
        )
        limiter = Limiter(client)
        cap, day = limiter.peek(CAP, "client-42", cost=0), limiter.peek(DAY, "client-42")
        replayed = limiter.hit(DAY, "client-42", cost=3, request_id="req-1")

    assert code == 0
    assert "deleted 3 keys" in out
    assert (cap.used, cap.held) == (Decimal(0), Decimal(0))
    assert day.used == 3  # another limit of the same subject is untouched
    assert replayed.used == 3  # and its request records too


def test_reset_of_one_kind_leaves_another_kind_of_the_same_name(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    fixed = RateLimit(name="shared", limit=10, window="day")
    smooth = RateLimit(name="shared", limit=10, window="minute", algorithm="gcra")
    with server.client() as client:
        limiter = Limiter(client)
        limiter.hit(fixed, "s", cost=2)
        limiter.hit(smooth, "s", cost=2)
        run_cli(
            capsys,
            "reset",
            "--url",
            server.url,
            "--name",
            "shared",
            "--subject",
            "s",
            "--kind",
            "gcra",
            "--yes",
        )
        left = limiter.peek(fixed, "s").used, limiter.peek(smooth, "s").used

    assert left == (2, 0)


def test_reset_needs_a_name_and_a_subject(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["reset", "--url", "redis://127.0.0.1:1/0", "--name", "ai"])

    assert exited.value.code == 2
    assert "--subject" in capsys.readouterr().err


# --------------------------------------------------------------------------
# pause clear
# --------------------------------------------------------------------------

RPM = RateLimit(name="gpt-rpm", limit=100, window="minute")
TPM = RateLimit(name="gpt-tpm", limit=1600, window="minute")
GPT = Upstream("openai:gpt", requests=RPM, tokens=TPM)


def paused_and_learned(client: Any) -> Limiter:
    """GPT paused for a minute, its tokens limit having learned 500 outside units."""
    limiter = Limiter(client)
    with limiter.call(GPT, tokens=100) as call:
        call.observe({"x-ratelimit-limit-tokens": "1600", "x-ratelimit-remaining-tokens": "1000"})
        call.backoff(60)
    return limiter


def is_paused(limiter: Limiter, upstream: Upstream = GPT) -> bool:
    try:
        with limiter.call(upstream, tokens=1):
            return False
    except LimitExceeded:
        return True


def learned_by(capsys: pytest.CaptureFixture[str], url: str) -> list[str]:
    """The outside use each of GPT's limits learned, as the listing shows it."""
    _, out, _ = run_cli(capsys, "pause", "clear", "--url", url, "--upstream", GPT.name)
    return re.findall(r"learned (\d+)", out)


def test_pause_clear_without_yes_lists_and_clears_nothing(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    with target.sync_client() as client:
        limiter = paused_and_learned(client)
        code, out, _ = run_cli(
            capsys, "pause", "clear", "--url", target.url, "--upstream", GPT.name
        )
        still = is_paused(limiter)

    assert code == 0
    assert "gpt-rpm (fixed_window): paused until " in out
    assert "gpt-tpm (fixed_window): paused until " in out
    assert "learned 500" in out
    assert "nothing cleared: run again with --yes to clear these 2 limits" in out
    assert still


@pytest.mark.parametrize(("forget", "learned"), [(False, 500), (True, 0)])
def test_pause_clear_with_yes_ends_the_pause_for_every_worker(
    target: Target, capsys: pytest.CaptureFixture[str], forget: bool, learned: int
) -> None:
    with target.sync_client() as client:
        limiter = paused_and_learned(client)
        argv = ["pause", "clear", "--url", target.url, "--upstream", GPT.name, "--yes"]
        code, out, _ = run_cli(capsys, *argv, *(["--forget"] if forget else []))
        paused = is_paused(limiter)
        kept = learned_by(capsys, target.url)

    assert code == 0
    assert "cleared the pause" in out
    assert not paused
    assert kept == ["0", str(learned)]  # requests, then tokens


def test_pause_clear_of_one_limit_leaves_the_others_paused(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    with server.client() as client:
        limiter = paused_and_learned(client)
        run_cli(
            capsys,
            "pause",
            "clear",
            "--url",
            server.url,
            "--upstream",
            GPT.name,
            "--name",
            "gpt-tpm",
            "--yes",
        )
        tokens = is_paused(limiter, Upstream(GPT.name, tokens=TPM))
        requests = is_paused(limiter, Upstream(GPT.name, requests=RPM))

    assert not tokens
    assert requests


def test_pause_clear_of_an_upstream_never_paused_says_so(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        capsys, "pause", "clear", "--url", server.url, "--upstream", "quiet", "--yes"
    )

    assert code == 0
    assert out.strip() == f"{server.url}: no pause or learned use kept for upstream 'quiet'"


def test_pause_clear_needs_an_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["pause", "clear", "--url", "redis://127.0.0.1:1/0"])

    assert exited.value.code == 2
    assert "--upstream" in capsys.readouterr().err


# --------------------------------------------------------------------------
# policy check
# --------------------------------------------------------------------------

POLICY = """\
[limits.api]
rate = "500/minute"
on_backend_error = "allow"

[limits.ai]
kind = "spend_cap"
limit = "100.00"
currency = "AUD"
window = "day"
tz = "Australia/Sydney"

[limits.openai]
kind = "concurrency"
limit = 10
lease = "60s"

[tiers.free]

[tiers.pro.api]
rate = "5000/minute"
"""


def test_policy_check_prints_every_limit_and_each_tiers_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(POLICY)

    code, out, err = run_cli(capsys, "policy", "check", str(path))

    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "api     rate_limit 500/minute  fixed_window  on_backend_error=allow",
        "ai      spend_cap 100.00 AUD/day@Australia/Sydney  unit=0.000001  on_backend_error=raise",
        "openai  concurrency 10 at once  lease=60s  on_backend_error=raise",
        "",
        "tier free: as [limits]",
        "",
        "tier pro: 1 changed",
        "  api     rate_limit 5000/minute  fixed_window  on_backend_error=allow",
        "",
        f"{path}: 3 limits, 2 tiers: ok",
    ]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            '[limits.api]\nlimit = 0\nwindow = "minute"\n',
            "[limits.api] limit: must be at least 1, got 0",
        ),
        ("[limits.api]\nrate = \n", "not valid TOML: Invalid value (at line 2, column 8)"),
    ],
)
def test_policy_check_of_a_bad_file_fails_with_its_message_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, said: str
) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(text)

    code, out, err = run_cli(capsys, "policy", "check", str(path))

    assert (code, out) == (1, "")
    assert err == f"atomlimit policy: {path}: {said}\n"


def test_policy_check_of_a_missing_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "policy", "check", str(tmp_path / "nope.toml"))

    assert code == 1
    assert err.startswith("atomlimit policy: ")
    assert "nope.toml: cannot read it" in err


def test_policy_check_runs_as_a_module_with_the_same_exit_codes(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(POLICY)
    bad.write_text("[limits.api]\nlimit = 0\n")

    passed, failed = _module("policy", "check", str(good)), _module("policy", "check", str(bad))

    assert (passed.returncode, failed.returncode) == (0, 1)
    assert passed.stdout.endswith(": 3 limits, 2 tiers: ok\n")
    assert "[limits.api] limit: must be at least 1" in failed.stderr


# --------------------------------------------------------------------------
# override


OVERRIDE_POLICIES = """
[limits.api]
rate = "5/hour"

[limits.ai]
kind = "spend_cap"
limit = "10.00"
currency = "USD"
window = "day"

[tiers.pro.api]
rate = "50/hour"
algorithm = "gcra"
"""
API = RateLimit(name="api", limit=5, window="hour")


@pytest.fixture
def policy_file(tmp_path: Path) -> str:
    path = tmp_path / "policies.toml"
    path.write_text(OVERRIDE_POLICIES)
    return str(path)


def _override(url: str, policies: str, action: str, *argv: str) -> list[str]:
    return ["override", action, "--url", url, "--policies", policies, *argv]


def test_override_set_without_yes_says_what_it_would_do_and_changes_nothing(
    target: Target, policy_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _override(target.url, policy_file, "set", "--name", "api", "--subject", "c-1")
    code, out, _ = run_cli(capsys, *argv, "--limit", "20")
    with target.sync_client() as client:
        decision = Limiter(client).hit(API, "c-1")

    assert code == 0
    assert "no override; the spec's limit 5 applies" in out
    assert "nothing changed: run again with --yes to set limit 20" in out
    assert decision.limit == 5
    assert decision.limit_source == "spec"


def test_override_set_with_yes_is_seen_by_the_application_and_rm_restores_the_spec(
    target: Target, policy_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    scope = ("--name", "api", "--subject", "c-2")
    set_ = _override(target.url, policy_file, "set", *scope, "--limit", "20", "--expires", "8h")
    code, out, _ = run_cli(capsys, *set_, "--yes")
    assert code == 0
    assert "set limit 20, for 8:00:00" in out
    with target.sync_client() as client:
        limiter = Limiter(client)
        raised = limiter.hit(API, "c-2")
        _, got, _ = run_cli(capsys, *_override(target.url, policy_file, "get", *scope))
        _, kept, _ = run_cli(capsys, *_override(target.url, policy_file, "rm", *scope))
        still = limiter.hit(API, "c-2")
        code, removed, _ = run_cli(
            capsys, *_override(target.url, policy_file, "rm", *scope), "--yes"
        )
        restored = limiter.hit(API, "c-2")

    assert raised.limit == 20
    assert raised.limit_source == "override"
    assert "override limit 20, until " in got
    assert "(the spec's limit: 5)" in got
    assert "nothing removed: run again with --yes to remove it" in kept
    assert still.limit == 20
    assert code == 0
    assert removed.splitlines()[-1] == "removed"
    assert restored.limit == 5
    assert restored.limit_source == "spec"


def test_override_of_a_tier_sets_that_tiers_kind_of_the_limit(
    server: Server, policy_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pro = RateLimit(name="api", limit=50, window="hour", algorithm="gcra")
    scope = ("--name", "api", "--subject", "c-3", "--tier", "pro")
    argv = _override(server.url, policy_file, "set", *scope, "--limit", "60", "--burst", "7")
    code, _, _ = run_cli(capsys, *argv, "--yes")
    with server.client() as client:
        limiter = Limiter(client)
        tiered, plain = limiter.hit(pro, "c-3"), limiter.hit(API, "c-3")

    assert code == 0
    assert tiered.limit == 7
    assert tiered.limit_source == "override"
    assert plain.limit_source == "spec"


def test_override_list_names_each_subject_with_an_override(
    server: Server, policy_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        for subject in ("b", "a c", "d"):
            limiter.overrides.set(API, subject, limit=9)
        limiter.hit(API, "plain")
    code, out, _ = run_cli(capsys, *_override(server.url, policy_file, "list", "--name", "api"))

    assert code == 0
    assert out.splitlines() == [
        f"{server.url}: 3 subjects with an override of 'api'",
        "  a c",
        "  b",
        "  d",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "api", "--limit", "0"], "limit"),
        (["--name", "api", "--limit", "lots"], "--limit must be a number"),
        (["--name", "api", "--limit", "5", "--burst", "3"], "burst"),
        (["--name", "ai", "--limit", "-1"], "limit"),
        (["--name", "ai", "--limit", "1e400"], "limit"),
        (["--name", "api", "--limit", "5", "--expires", "2020-01-01T00:00:00+00:00"], "expires"),
        (["--name", "api", "--limit", "5", "--expires", "2030-01-01T00:00:00"], "offset"),
        (["--name", "api", "--limit", "5", "--expires", "soon"], "--expires must be"),
        (["--name", "nope", "--limit", "5"], "declares no limit named 'nope'"),
        (["--name", "api", "--limit", "5", "--tier", "gold"], "gold"),
    ],
)
def test_override_set_refuses_bad_values_and_writes_nothing(
    server: Server,
    policy_file: str,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    server.flush()
    base = _override(server.url, policy_file, "set", "--subject", "c-4", *argv)
    code, out, err = run_cli(capsys, *base, "--yes")
    with server.client() as client:
        stored = client.dbsize()

    assert code == 1, out
    assert message in err
    assert stored == 0


def test_reset_keeps_an_override_and_inspect_says_the_window_is_under_it(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        limiter.overrides.set(API, "c-5", limit=9)
        limiter.hit(API, "c-5")
        _, inspected, _ = run_cli(capsys, "inspect", "--url", server.url, "--subject", "c-5")
        code, _, _ = run_cli(
            capsys, "reset", "--url", server.url, "--name", "api", "--subject", "c-5", "--yes"
        )
        after = limiter.hit(API, "c-5")

    assert "1 used since" in inspected
    assert "under an override" in inspected
    assert code == 0
    assert after.used == 1
    assert after.limit == 9
    assert after.limit_source == "override"


HELP_COMMANDS = [
    [],
    *([module.__name__.rsplit(".", 1)[1]] for module in COMMANDS),
    ["scripts", "load"],
    ["policy", "check"],
    ["override", "set"],
    ["override", "get"],
    ["override", "rm"],
    ["override", "list"],
]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "atomlimit")
def test_help_is_plain_text_with_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    out = capsys.readouterr().out

    assert exited.value.code == 0
    assert "``" not in out
    for role in (":class:", ":func:", ":mod:", ":data:", ":meth:"):
        assert role not in out
    assert "examples:" in out or command == ["scripts"]
    assert max(len(line) for line in out.splitlines()) <= 100


def _module(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atomlimit", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _wait_for_replicas(primary: Server, count: int) -> None:
    deadline = time.monotonic() + 10
    with primary.client() as client:
        while int(client.info("replication")["connected_slaves"]) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} replica(s) never connected to {primary}")
            time.sleep(0.05)


def test_inspect_shows_a_gcra_state_under_an_override_and_a_plain_one_without(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    smooth = RateLimit(name="smooth", limit=10, window="minute", algorithm="gcra")
    with server.client() as client:
        limiter = Limiter(client)
        limiter.hit(smooth, "c-6")
        limiter.hit(smooth, "c-7")
        limiter.overrides.set(smooth, "c-6", limit=20)
    _, raised, _ = run_cli(capsys, "inspect", "--url", server.url, "--subject", "c-6")
    _, plain, _ = run_cli(capsys, "inspect", "--url", server.url, "--subject", "c-7")

    assert "busy for" in raised
    assert "under an override" in raised
    assert "busy for" in plain
    assert "under an override" not in plain

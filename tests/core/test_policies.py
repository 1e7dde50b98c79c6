"""Policy files: what a good file builds, how a bad one is named, and how a reload swaps.

The specs a file builds are compared with the same specs built in code, so
the file accepts exactly what code does. Every refusal is checked by its
whole message: the file, the table and the field. The reload tests run real
threads and count what readers saw; the forced interleaving shows the naive
way to read a live set (one lookup per limit) mixing two files, and the
snapshot never doing so.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from servers import Server

from atomlimit import Concurrency, InvalidInput, Limiter, RateLimit, SpendCap
from atomlimit.policies import (
    MAX_DOTS_PER_LINE,
    MAX_FILE_BYTES,
    MAX_LIMITS,
    MAX_TIERS,
    MAX_WATCHERS,
    Policies,
    PolicySet,
    load,
    parse,
)

GOOD = """\
[defaults]
on_backend_error = "deny"

[limits.api]
rate = "500/minute"
on_backend_error = "allow"

[limits.login]
limit = 5
window = "15 minutes"
algorithm = "sliding_log"

[limits.daily]
rate = "1000/day@Australia/Sydney"

[limits.ai]
kind = "spend_cap"
limit = "100.00"
currency = "AUD"
window = "day"
tz = "Australia/Sydney"
unit = "0.01"

[limits.openai]
kind = "concurrency"
limit = 10
lease = "60s"

[tiers.free]

[tiers.pro.api]
rate = "5000/minute"
algorithm = "gcra"

[tiers.pro.ai]
limit = "1000"

[tiers.pro.login]
limit = 20
"""


def write(tmp_path: Path, text: str, name: str = "policies.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(text: str) -> str:
    with pytest.raises(InvalidInput) as refused:
        parse(text, source="policies.toml")
    return str(refused.value)


# --------------------------------------------------------------------------
# A good file
# --------------------------------------------------------------------------


def test_a_good_file_builds_the_specs_code_would_build(tmp_path: Path) -> None:
    policies = load(write(tmp_path, GOOD))

    assert dict(policies) == {
        "api": RateLimit(name="api", limit=500, window="minute", on_backend_error="allow"),
        "login": RateLimit(
            name="login",
            limit=5,
            window=timedelta(minutes=15),
            algorithm="sliding_log",
            on_backend_error="deny",
        ),
        "daily": RateLimit(
            name="daily", limit=1000, window="day", tz="Australia/Sydney", on_backend_error="deny"
        ),
        "ai": SpendCap(
            name="ai",
            limit=Decimal("100.00"),
            currency="AUD",
            window="day",
            tz="Australia/Sydney",
            unit=Decimal("0.01"),
            on_backend_error="deny",
        ),
        "openai": Concurrency(
            name="openai", limit=10, lease=timedelta(seconds=60), on_backend_error="deny"
        ),
    }
    assert list(policies) == ["api", "login", "daily", "ai", "openai"]


def test_a_tier_overrides_only_what_it_gives_and_keeps_every_name(tmp_path: Path) -> None:
    policies = load(write(tmp_path, GOOD))
    pro = policies.tier("pro")

    assert set(policies.tiers) == {"free", "pro"}
    assert dict(policies.tier("free")) == dict(policies)
    assert list(pro) == list(policies)
    assert pro["api"] == RateLimit(
        name="api", limit=5000, window="minute", algorithm="gcra", on_backend_error="allow"
    )
    # A limit alone keeps the window of [limits.login]; a decimal stays exact.
    assert pro["login"] == policies["login"].model_copy(update={"limit": 20})
    assert pro["ai"].limit == Decimal("1000")
    assert pro["ai"].tz == "Australia/Sydney"
    assert pro["openai"] is policies["openai"]


def test_each_limit_reports_its_failure_policy_with_defaults_applied(tmp_path: Path) -> None:
    policies = load(write(tmp_path, GOOD))

    assert dict(policies.failure_policies) == {
        "api": "allow",
        "login": "deny",
        "daily": "deny",
        "ai": "deny",
        "openai": "deny",
    }


def test_a_limiter_takes_the_specs_unchanged(tmp_path: Path, server: Server) -> None:
    policies = load(write(tmp_path, '[limits.api]\nrate = "2/minute"\n'))
    limiter = Limiter.from_url(server.url)
    try:
        decided = [limiter.hit(policies["api"], "client-42").allowed for _ in range(3)]
    finally:
        limiter.close()

    assert decided == [True, True, False]


def test_the_sets_are_read_only(tmp_path: Path) -> None:
    snapshot = load(write(tmp_path, GOOD)).current()

    with pytest.raises(TypeError):
        snapshot.limits["api"] = snapshot["login"]  # type: ignore[index]
    with pytest.raises(TypeError):
        snapshot.tier("pro")["api"] = snapshot["login"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        snapshot.version = 9  # type: ignore[misc]


def test_an_unknown_name_or_tier_is_a_key_error(tmp_path: Path) -> None:
    policies = load(write(tmp_path, GOOD))

    assert "nope" not in policies
    assert 3 not in policies  # type: ignore[comparison-overlap]
    with pytest.raises(KeyError):
        policies["nope"]
    with pytest.raises(KeyError, match="declares no tier 'gold'"):
        policies.tier("gold")
    with pytest.raises(KeyError):
        policies.tier(["pro"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# A bad file names its file, table and field
# --------------------------------------------------------------------------

REFUSED = {
    "a limit below one": (
        '[limits.api]\nlimit = 0\nwindow = "minute"\n',
        "policies.toml: [limits.api] limit: must be at least 1, got 0",
    ),
    "a limit that is a float": (
        '[limits.api]\nlimit = 5.5\nwindow = "minute"\n',
        "policies.toml: [limits.api] limit: must be an integer, or an amount in a string "
        'such as "100.00" (a float is not exact), got 5.5',
    ),
    "a missing window": (
        "[limits.api]\nlimit = 5\n",
        "policies.toml: [limits.api] window: is required",
    ),
    "an unknown field": (
        '[limits.api]\nrate = "5/minute"\nlimt = 3\n',
        "policies.toml: [limits.api] limt: is not a field of a rate_limit",
    ),
    "a name field": (
        '[limits.api]\nrate = "5/minute"\nname = "other"\n',
        "policies.toml: [limits.api] name: the table's key names the limit; a table takes no name",
    ),
    "an unknown kind": (
        '[limits.api]\nkind = "quota"\nrate = "5/minute"\n',
        "policies.toml: [limits.api] kind: must be one of rate_limit, spend_cap, concurrency, "
        "got 'quota'",
    ),
    "a bad rate": (
        '[limits.api]\nrate = "5/fortnight"\n',
        "policies.toml: [limits.api] rate: rate '5/fortnight' at position 2: expected a unit: "
        "ms, second, minute, hour, day, week or month",
    ),
    "a rate and a limit": (
        '[limits.api]\nrate = "5/minute"\nlimit = 6\n',
        "policies.toml: [limits.api] rate: gives limit, window and tz; drop limit or rate",
    ),
    "a rate on a spend cap": (
        '[limits.ai]\nkind = "spend_cap"\nrate = "5/minute"\ncurrency = "AUD"\n',
        "policies.toml: [limits.ai] rate: only a rate_limit takes a rate; a spend_cap takes "
        "limit and window",
    ),
    "a bad window": (
        '[limits.api]\nlimit = 5\nwindow = "fortnight"\n',
        "policies.toml: [limits.api] window: must be second, minute, hour, day, week or month, "
        'or a length such as "30s" or "15 minutes", got \'fortnight\'',
    ),
    "a window that is a number": (
        "[limits.api]\nlimit = 5\nwindow = 60\n",
        'policies.toml: [limits.api] window: must be a calendar unit such as "day" or a '
        'length such as "30s" or "15 minutes" (the zone goes in tz), got 60',
    ),
    "an unknown zone": (
        '[limits.api]\nlimit = 5\nwindow = "day"\ntz = "Mars/Olympus"\n',
        "policies.toml: [limits.api] tz: unknown IANA time zone 'Mars/Olympus'",
    ),
    "a whole-spec rule": (
        '[limits.api]\nlimit = 5\nwindow = "month"\nalgorithm = "gcra"\n',
        "policies.toml: [limits.api] window: gcra needs a fixed length, not a month",
    ),
    "an unknown algorithm": (
        '[limits.api]\nrate = "5/minute"\nalgorithm = "token_bucket"\n',
        "policies.toml: [limits.api] algorithm: must be 'fixed_window', 'gcra', 'sliding_log' "
        "or 'sliding_counter', got 'token_bucket'",
    ),
    "a string flag": (
        '[limits.api]\nrate = "5/minute"\nshadow = "yes"\n',
        "policies.toml: [limits.api] shadow: must be true or false, got 'yes'",
    ),
    "a spend cap that allows": (
        '[limits.ai]\nkind = "spend_cap"\nlimit = "10"\ncurrency = "AUD"\nwindow = "day"\n'
        'on_backend_error = "allow"\n',
        "policies.toml: [limits.ai] on_backend_error: a SpendCap that allows while the server "
        "is down",
    ),
    "a default a spend cap refuses": (
        '[defaults]\non_backend_error = "allow"\n[limits.ai]\nkind = "spend_cap"\n'
        'limit = "10"\ncurrency = "AUD"\nwindow = "day"\n',
        "(from [defaults])",
    ),
    "a unit that is a float": (
        '[limits.ai]\nkind = "spend_cap"\nlimit = "10"\ncurrency = "AUD"\nwindow = "day"\n'
        "unit = 0.01\n",
        'policies.toml: [limits.ai] unit: must be a decimal in a string, such as "0.01", got 0.01',
    ),
    "a lease of a month": (
        '[limits.slots]\nkind = "concurrency"\nlimit = 2\nlease = "month"\n',
        "policies.toml: [limits.slots] lease: a month has no fixed length, got 'month'",
    ),
    "a quoted name": (
        '[limits."a b"]\nlimit = 0\nwindow = "day"\n',
        "policies.toml: [limits.'a b'] limit: must be at least 1, got 0",
    ),
    "an unknown default": (
        '[defaults]\ntz = "UTC"\n[limits.api]\nrate = "5/minute"\n',
        "policies.toml: [defaults] tz: is not a default: [defaults] takes on_backend_error",
    ),
    "an unknown top-level key": (
        'limit = 5\n[limits.api]\nrate = "5/minute"\n',
        "policies.toml: limit: is not part of a policy file, which holds [defaults], "
        "[limits.NAME] and [tiers.TIER.NAME] tables",
    ),
    "no limits": (
        "[defaults]\n",
        "policies.toml: limits: declare at least one limit, as [limits.NAME]",
    ),
    "a limit that is not a table": (
        '[limits]\napi = "5/minute"\n',
        "policies.toml: [limits] api: must be a table such as [limits.api], got '5/minute'",
    ),
    "a tier for an undeclared limit": (
        '[limits.api]\nrate = "5/minute"\n[tiers.pro.apii]\nlimit = 9\n',
        "policies.toml: [tiers.pro.apii] names no limit of [limits]",
    ),
    "a tier of a limit that is itself wrong, once": (
        '[limits.api]\nrate = "0/minute"\n[tiers.pro.api]\nlimit = 9\n',
        "policies.toml: [limits.api] rate: rate '0/minute' at position 0: expected a number "
        "from 1 to 9007199254740991",
    ),
    "a tier that changes the kind": (
        '[limits.api]\nrate = "5/minute"\n[tiers.pro.api]\nkind = "concurrency"\n',
        "policies.toml: [tiers.pro.api] kind: a tier keeps its limit's kind, rate_limit, "
        "got 'concurrency'",
    ),
    "a tier's value that breaks an inherited rule": (
        '[limits.api]\nrate = "5/minute"\nalgorithm = "gcra"\n[tiers.pro.api]\nrate = "9/month"\n',
        "policies.toml: [tiers.pro.api] window: gcra needs a fixed length, not a month",
    ),
    "a tier that is not a table of limits": (
        '[limits.api]\nrate = "5/minute"\n[tiers]\npro = 3\n',
        "policies.toml: [tiers] pro: must be a table of limits, got 3",
    ),
    "a tier's limit that is not a table": (
        '[limits.api]\nrate = "5/minute"\n[tiers.pro]\napi = 3\n',
        "policies.toml: [tiers.pro] api: must be a table such as [tiers.pro.api], got 3",
    ),
    "malformed TOML": (
        '[limits.api]\nrate = "5/minute"\nlimit = \n',
        "policies.toml: not valid TOML: Invalid value (at line 3, column 9)",
    ),
    "a key given twice": (
        '[limits.api]\nrate = "5/minute"\nrate = "6/minute"\n',
        "policies.toml: not valid TOML: Cannot overwrite a value (at line 3, column 18)",
    ),
    "nesting past the stack": (
        "x = " + "[" * 5_000,
        "policies.toml: arrays or inline tables nested too deeply",
    ),
    "a key of many parts": (
        '[limits.api]\nrate = "5/minute"\n' + "a." * 10_000 + "b = 1\n",
        f"policies.toml: line 3 has more than {MAX_DOTS_PER_LINE} dots",
    ),
    "too many limits": (
        "[limits]\n" + "".join(f"l{i} = {{ rate = '1/day' }}\n" for i in range(MAX_LIMITS + 1)),
        f"policies.toml: [limits] declares {MAX_LIMITS + 1} limits; at most {MAX_LIMITS}",
    ),
    "too many tiers": (
        '[limits.api]\nrate = "5/minute"\n[tiers]\n'
        + "".join(f"t{i} = {{}}\n" for i in range(MAX_TIERS + 1)),
        f"policies.toml: [tiers] declares {MAX_TIERS + 1} tiers; at most {MAX_TIERS}",
    ),
    "a name too long": (
        f'[limits.{"n" * 257}]\nrate = "5/minute"\n',
        "a name has 1 to 256 characters, got 257",
    ),
    "a tier name too long": (
        f'[limits.api]\nrate = "5/minute"\n[tiers.{"t" * 257}]\n',
        "a name has 1 to 256 characters, got 257",
    ),
}


@pytest.mark.parametrize(("text", "said"), REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_file_is_refused_naming_file_table_and_field(text: str, said: str) -> None:
    message = refusal(text)

    assert said in message
    assert message.startswith("policies.toml: ")
    assert "; [" not in message  # one problem, named once
    assert len(message) < 1_000


def test_every_problem_is_named_up_to_five_then_counted() -> None:
    text = "".join(f'[limits.l{i}]\nlimit = 0\nwindow = "day"\n' for i in range(8))

    message = refusal(text)

    assert message == (
        "policies.toml: "
        + "; ".join(f"[limits.l{i}] limit: must be at least 1, got 0" for i in range(5))
        + "; and 3 more"
    )


def test_a_file_too_large_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = write(tmp_path, "# " + "x" * MAX_FILE_BYTES + "\n")

    with pytest.raises(
        InvalidInput, match=f"policies.toml: a policy file is at most {MAX_FILE_BYTES}"
    ):
        load(path)


def test_text_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policies.toml"
    path.write_bytes(b'[limits.api]\nrate = "5/minute"\n# caf\xe9\n')

    with pytest.raises(InvalidInput, match=r"policies.toml: line 3: not UTF-8 text"):
        load(path)


def test_a_missing_file_or_a_directory_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"nope.toml: cannot read it: No such file"):
        load(tmp_path / "nope.toml")
    with pytest.raises(InvalidInput, match=r": not a regular file"):
        load(tmp_path)
    with pytest.raises(InvalidInput, match=r"a policy file's path must be a str or a path"):
        load(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Reload
# --------------------------------------------------------------------------


def test_reload_puts_the_new_file_in_force_and_counts_versions(tmp_path: Path) -> None:
    path = write(tmp_path, '[limits.api]\nrate = "5/minute"\n')
    policies = load(path)
    before = policies.current()

    path.write_text('[limits.api]\nrate = "50/minute"\n[limits.new]\nrate = "1/day"\n')
    after = policies.reload()

    assert (before.version, after.version, policies.version) == (1, 2, 2)
    assert policies["api"].limit == 50
    assert "new" in policies
    assert policies.current() is after
    assert before["api"].limit == 5  # a snapshot never changes


def test_a_failed_reload_keeps_the_old_set_and_raises(tmp_path: Path) -> None:
    path = write(tmp_path, '[limits.api]\nrate = "5/minute"\n[limits.login]\nrate = "1/minute"\n')
    policies = load(path)
    before = policies.current()

    # The first limit is good and changed; the second is bad: nothing of it may land.
    path.write_text('[limits.api]\nrate = "50/minute"\n[limits.login]\nlimit = 0\nwindow = "day"\n')
    with pytest.raises(InvalidInput, match=r"\[limits.login\] limit: must be at least 1"):
        policies.reload()
    path.unlink()
    with pytest.raises(InvalidInput, match="cannot read it"):
        policies.reload()

    assert policies.current() is before
    assert policies["api"].limit == 5
    assert policies.version == 1


def test_watchers_get_each_new_set_and_a_failing_one_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, '[limits.api]\nrate = "5/minute"\n')
    policies = load(path)
    seen: list[int] = []

    def broken(new: PolicySet) -> None:
        raise RuntimeError("watcher bug")

    policies.watch(broken)
    stop = policies.watch(lambda new: seen.append(new["api"].limit))
    path.write_text('[limits.api]\nrate = "6/minute"\n')
    with caplog.at_level(logging.ERROR, logger="atomlimit"):
        policies.reload()
    path.write_text('[limits.api]\nrate = "0/minute"\n')
    with pytest.raises(InvalidInput):
        policies.reload()
    stop()
    path.write_text('[limits.api]\nrate = "7/minute"\n')
    policies.reload()

    # The broken watcher ran, and failed, on both good reloads; the other
    # still got its one new set before it stopped.
    assert seen == [6]
    failures = [record.exc_info[1] for record in caplog.records if record.exc_info]
    assert [str(failure) for failure in failures] == ["watcher bug", "watcher bug"]


def test_watch_takes_a_callable_and_a_bounded_number(tmp_path: Path) -> None:
    policies = load(write(tmp_path, '[limits.api]\nrate = "5/minute"\n'))

    with pytest.raises(InvalidInput, match="watch takes a callable"):
        policies.watch("print")  # type: ignore[arg-type]
    for _ in range(MAX_WATCHERS):
        policies.watch(lambda new: None)
    with pytest.raises(InvalidInput, match=f"at most {MAX_WATCHERS} watchers"):
        policies.watch(lambda new: None)


# --------------------------------------------------------------------------
# Reload under threads: readers never see two files at once
# --------------------------------------------------------------------------

NAMES = [f"l{i}" for i in range(50)]


def every_limit(value: int) -> str:
    """A file whose limits all say ``value``: a read that mixes files shows two values."""
    return "".join(f'[limits.{name}]\nrate = "{value}/minute"\n' for name in NAMES)


def read_live(policies: Policies, midway: Any) -> set[int]:
    """The naive read: one lookup per limit on the live object."""
    seen = set()
    for index, name in enumerate(NAMES):
        if index == len(NAMES) // 2:
            midway()
        seen.add(policies[name].limit)
    return seen


def read_snapshot(policies: Policies, midway: Any) -> set[int]:
    snapshot = policies.current()
    seen = set()
    for index, name in enumerate(NAMES):
        if index == len(NAMES) // 2:
            midway()
        seen.add(snapshot[name].limit)
    return seen


@pytest.mark.parametrize(("reader", "mixed"), [(read_live, True), (read_snapshot, False)])
def test_a_reload_midway_through_a_read_mixes_only_the_naive_reader(
    tmp_path: Path, reader: Any, mixed: bool
) -> None:
    path = write(tmp_path, every_limit(1))
    policies = load(path)
    path.write_text(every_limit(2))
    reached, reloaded = threading.Event(), threading.Event()

    def reload_when_reached() -> None:
        reached.wait()
        policies.reload()
        reloaded.set()

    def midway() -> None:
        reached.set()
        reloaded.wait()

    writer = threading.Thread(target=reload_when_reached)
    writer.start()
    seen = reader(policies, midway)
    writer.join()

    assert (len(seen) > 1) is mixed


def test_readers_in_threads_never_see_part_of_two_files(tmp_path: Path) -> None:
    path = write(tmp_path, every_limit(1))
    policies = load(path)
    reloads = 30
    readers = 4
    mixed: list[set[int]] = []
    versions_seen: list[set[int]] = [set() for _ in range(readers)]
    done = threading.Event()
    caught_up = threading.Condition()

    def read(me: int) -> None:
        while not done.is_set():
            snapshot = policies.current()
            values = {snapshot[name].limit for name in NAMES}
            if len(values) != 1 or values != {snapshot.version}:
                mixed.append(values)
            with caught_up:
                versions_seen[me].add(snapshot.version)
                caught_up.notify_all()

    def everyone_saw(version: int) -> bool:
        return all(version in seen for seen in versions_seen)

    threads = [threading.Thread(target=read, args=(me,)) for me in range(readers)]
    for thread in threads:
        thread.start()
    for version in range(2, reloads + 2):
        path.write_text(every_limit(version))
        policies.reload()
        # Every reader reads every version before the next, so each swap
        # happens while readers are reading.
        with caught_up:
            caught_up.wait_for(lambda v=version: everyone_saw(v))
    done.set()
    for thread in threads:
        thread.join()

    assert mixed == []
    assert all(seen >= set(range(2, reloads + 2)) for seen in versions_seen)
    assert policies.version == reloads + 1

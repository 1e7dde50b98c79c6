"""All-or-nothing acquire: one script per subject, and an exact undo across subjects.

Everything runs on real servers: standalone Redis and Valkey, and a
three-master Redis Cluster on which the subjects are placed on different
nodes. Script runs are counted on the servers themselves (``INFO
commandstats``, and ``SLOWLOG`` with a zero threshold to tell the scripts
apart), never by wrapping the client.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
import redis.asyncio
from conftest import Target
from helpers import START, Careless, evalsha_runs
from proxy import StallingProxy
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry
from servers import Cluster, Server, free_port

from atomlimit import (
    Acquired,
    AsyncLimiter,
    BackendError,
    Concurrency,
    Hit,
    InvalidInput,
    Limiter,
    RateLimit,
    RequestIdReused,
    Spec,
    SpendCap,
)
from atomlimit._acquire import Acquisition, acquire
from atomlimit._async import limiter as async_limiter
from atomlimit._clock import clock_reader
from atomlimit._codecs import codec_of
from atomlimit._engine import Engine
from atomlimit._runner_steps import Flow, Plan
from atomlimit._scripts import script
from atomlimit._sync_runner import SyncRunner
from atomlimit.cli.demo import _race

FIXED = RateLimit(name="per-day", limit=5, window="day")
GCRA = RateLimit(name="smooth", limit=4, window="day", algorithm="gcra")  # T = 6 h exactly
SLIDING = RateLimit(name="sliding", limit=5, window="day", algorithm="sliding_counter")
LOG = RateLimit(name="log", limit=5, window="day", algorithm="sliding_log")
CAP = SpendCap(name="spend", limit=Decimal("10.00"), currency="AUD", window="day")
BUDGET = SpendCap(name="budget", limit=Decimal("5.00"), currency="AUD", window="day")
SLOTS = Concurrency(name="slots", limit=2)
GPU = Concurrency(name="gpu", limit=1)
GLOBAL = RateLimit(name="global", limit=3, window="day")
HOLD = timedelta(minutes=5)

KINDS = ["fixed_window", "gcra", "sliding_counter", "sliding_log", "spend", "reservation", "lease"]
FILL: dict[str, Callable[[Limiter, str], object]] = {
    # Each leaves too little room for its hit in _one_of_each.
    "fixed_window": lambda limiter, s: limiter.hit(FIXED, s, 5),
    "gcra": lambda limiter, s: limiter.hit(GCRA, s, 4),
    "sliding_counter": lambda limiter, s: limiter.hit(SLIDING, s, 5),
    "sliding_log": lambda limiter, s: limiter.hit(LOG, s, 4),
    "spend": lambda limiter, s: limiter.hit(CAP, s, Decimal("9.00")),
    "reservation": lambda limiter, s: limiter.reserve(BUDGET, s, Decimal("4.00")),
    "lease": lambda limiter, s: [limiter.lease(SLOTS, s) for _ in range(2)],
}
SCRIPTS = ("charge", "undo", "peek", "acquire", "hit_fixed_window")
_NAMES = {script(name).sha: name for name in SCRIPTS}
_TAG = re.compile(r"\{s:([^}]*)\}")


def _one_of_each(subject: str) -> list[Hit[Any]]:
    """One hit per kind of limit, in the order of KINDS."""
    return [
        Hit(FIXED, subject),
        Hit(GCRA, subject),
        Hit(SLIDING, subject),
        Hit(LOG, subject, 2),
        Hit(CAP, subject, Decimal("1.25")),
        Hit(BUDGET, subject, Decimal("2.00"), hold=HOLD),
        Hit(SLOTS, subject),
    ]


def _probe_cost(spec: Spec[Any]) -> int:
    # A lease is peeked at its only cost; everything else at 0, to read usage.
    return 1 if isinstance(spec, Concurrency) else 0


def _usage(limiter: Limiter, hits: Sequence[Hit[Any]]) -> list[tuple[Any, Any]]:
    """(used, held) of each hit's limit for its subject, read without charging."""
    found = []
    for hit in hits:
        decision = limiter.peek(hit.limit, hit.subject, _probe_cost(hit.limit))
        found.append((decision.used, decision.held))
    return found


async def _async_usage(limiter: AsyncLimiter, hits: Sequence[Hit[Any]]) -> list[tuple[Any, Any]]:
    found = []
    for hit in hits:
        decision = await limiter.peek(hit.limit, hit.subject, _probe_cost(hit.limit))
        found.append((decision.used, decision.held))
    return found


def _text(value: bytes | str) -> str:
    # Request-id records are binary (MessagePack); only text is matched here.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _dump(client: Any) -> dict[str, Any]:
    """Every key and its whole value, TTLs aside: strings, hashes, sorted sets."""
    state: dict[str, Any] = {}
    for raw in client.scan_iter("*"):
        key = _text(raw)
        kind = _text(client.type(key))
        if kind == "string":
            state[key] = client.get(key)
        elif kind == "hash":
            state[key] = client.hgetall(key)
        else:
            state[key] = client.zrange(key, 0, -1, withscores=True)
    return state


def _held(client: Any) -> dict[str, list[Any]]:
    """Every sorted set: the leases and holds that exist, by id."""
    return {
        key: sorted(client.zrange(key, 0, -1))
        for key in map(_text, client.scan_iter("*"))
        if _text(client.type(key)) == "zset"
    }


def _records(client: Any, request_id: str) -> list[str]:
    return sorted(_text(key) for key in client.scan_iter(f"*:r:{request_id}"))


def _key(spec: Spec[Any], subject: str) -> str:
    return f"atomlimit:v1:{{s:{subject}}}{codec_of(spec).tail}"


def _state_key(spec: Spec[Any], subject: str) -> str:
    """The key a charge of ``spec`` writes now: for windowed kinds, the window's."""
    return codec_of(spec).state_keys(_key(spec, subject), int(time.time() * 1_000_000))[0]


def _planned(step: object, runner: SyncRunner) -> Any:
    assert isinstance(step, Plan)
    return step.make(runner.now())


def _load_scripts(client: redis.Redis) -> None:
    # Loaded up front, so no NOSCRIPT round trip muddies the counts.
    for name in SCRIPTS:
        client.script_load(script(name).source)


@contextmanager
def _script_log(servers: Sequence[Server]) -> Iterator[Callable[[], list[list[tuple[str, str]]]]]:
    """Log every command on each server; read back its script runs, oldest first.

    Each run is (script name, subject of its first key). A zero SLOWLOG
    threshold logs every command; the server's setting is restored after.
    """
    clients = [server.client() for server in servers]
    saved = [c.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"] for c in clients]

    def runs() -> list[list[tuple[str, str]]]:
        found = []
        for client in clients:
            entries = client.execute_command("SLOWLOG", "GET", 1024)
            calls = []
            for entry in reversed(entries):
                args = [_text(arg) for arg in entry[3]]
                if args[0].upper() == "EVALSHA":
                    match = _TAG.search(args[3])
                    calls.append((_NAMES[args[1]], match.group(1) if match else ""))
            found.append(calls)
        return found

    try:
        for client in clients:
            client.config_set("slowlog-log-slower-than", 0)
            client.slowlog_reset()
        yield runs
    finally:
        for client, value in zip(clients, saved, strict=True):
            client.config_set("slowlog-log-slower-than", value)
            client.close()


def _placed(clu: Cluster, stem: str, count: int) -> list[str]:
    """``count`` subjects whose keys live on nodes 0, 1, ... of the cluster, in that order.

    The slot of each subject's keys comes from ``key_slot``; the node that
    serves it from the cluster's own slot map.
    """
    with clu.nodes[0].client() as client:
        slot_map = client.execute_command("CLUSTER", "SLOTS")
    ports = [node.port for node in clu.nodes]
    owner = {}
    for first, last, primary, *_ in slot_map:
        for slot in range(first, last + 1):
            owner[slot] = ports.index(int(primary[1]))
    chosen: dict[int, str] = {}
    for n in range(1_000):
        subject = f"{stem}-{n}"
        node = owner[key_slot(_key(FIXED, subject).encode())]
        if node < count:
            chosen.setdefault(node, subject)
        if len(chosen) == count:
            break
    return [chosen[i] for i in range(count)]


def _drive(flow: Flow, runner: SyncRunner, before: Callable[[int], None]) -> tuple[Any, list[str]]:
    """Run an acquire flow by hand: ``before(n)`` runs before call ``n`` is planned."""
    names: list[str] = []
    reply: Any = None
    while True:
        before(len(names))
        try:
            step = flow.send(reply)
        except StopIteration as done:
            return done.value, names
        assert isinstance(step, Plan)
        call = step.make(runner.now())
        names.append(call.script.name)
        reply = runner.run(call)


# -- one subject: one script, all or nothing -----------------------------------


def test_one_subject_mixed_kinds_are_all_charged_in_order(target: Target) -> None:
    hits = [*_one_of_each("client-42"), Hit(GPU, "client-42")]
    with target.sync_client() as client:
        limiter = Limiter(client)
        result = limiter.acquire(hits)
        charged = _usage(limiter, hits)
        released = [lease.release() for lease in result.leases]
        settled = result.reservations[0].settle(Decimal("1.50"))
        after = _usage(limiter, hits)

    assert result.allowed
    assert bool(result) is True
    assert result.denied_by is None
    assert [d.allowed for d in result.decisions] == [True] * 8
    limits = [5, 4, 5, 5, Decimal("10.00"), Decimal("5.00"), 2, 1]
    assert [d.limit for d in result.decisions] == limits
    assert [d.granted for d in result.decisions] == [1, 1, 1, 2, Decimal("1.25"), 2, 1, 1]
    assert charged == [(1, 0), (1, 0), (1, 0), (2, 0), (Decimal("1.25"), 0), (0, 2), (1, 0), (1, 0)]
    assert [lease.decision.limit for lease in result.leases] == [2, 1]  # SLOTS, then GPU
    assert [r.decision.held for r in result.reservations] == [Decimal("2.00")]
    assert released == [True, True]
    assert (settled.status, settled.charged) == ("settled", Decimal("1.50"))
    assert after[5:] == [(Decimal("1.50"), 0), (0, 0), (0, 0)]


async def test_async_one_subject_mixed_kinds_are_all_charged_in_order(target: Target) -> None:
    hits = [*_one_of_each("client-42"), Hit(GPU, "client-42")]
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)
        result = await limiter.acquire(hits)
        charged = await _async_usage(limiter, hits)
        released = [await lease.release() for lease in result.leases]
        settled = await result.reservations[0].settle(Decimal("1.50"))
        after = await _async_usage(limiter, hits)

    assert result.allowed
    assert result.denied_by is None
    assert [d.granted for d in result.decisions] == [1, 1, 1, 2, Decimal("1.25"), 2, 1, 1]
    assert charged == [(1, 0), (1, 0), (1, 0), (2, 0), (Decimal("1.25"), 0), (0, 2), (1, 0), (1, 0)]
    assert [lease.decision.limit for lease in result.leases] == [2, 1]
    assert released == [True, True]
    assert settled.status == "settled"
    assert after[5:] == [(Decimal("1.50"), 0), (0, 0), (0, 0)]


@pytest.mark.parametrize("kind", KINDS)
def test_one_subject_denied_by_any_kind_changes_no_other_limit(target: Target, kind: str) -> None:
    hits = _one_of_each("client-42")
    denying = KINDS.index(kind)
    with target.sync_client() as client:
        limiter = Limiter(client)
        FILL[kind](limiter, "client-42")
        usage_before, state_before = _usage(limiter, hits), _dump(client)
        result = limiter.acquire(hits)
        usage_after, state_after = _usage(limiter, hits), _dump(client)

    assert not result.allowed
    assert result.denied_by is hits[denying]
    # Each decision says whether its limit alone would have let the hit through.
    assert [d.allowed for d in result.decisions] == [i != denying for i in range(len(hits))]
    assert [d.granted for d in result.decisions] == [0] * len(hits)
    assert (result.leases, result.reservations) == ((), ())
    assert usage_after == usage_before
    # Not one key, field, lease or hold was written.
    assert state_after == state_before


@pytest.mark.parametrize("kind", ["gcra", "reservation", "lease"])
async def test_async_one_subject_denied_by_any_kind_changes_no_other_limit(
    target: Target, kind: str
) -> None:
    hits = _one_of_each("client-42")
    with target.sync_client() as setup:
        FILL[kind](Limiter(setup), "client-42")
        state_before = _dump(setup)
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)
        result = await limiter.acquire(hits)
    with target.sync_client() as probe:
        state_after = _dump(probe)

    assert not result.allowed
    assert result.denied_by is hits[KINDS.index(kind)]
    assert [d.granted for d in result.decisions] == [0] * len(hits)
    assert (result.leases, result.reservations) == ((), ())
    assert state_after == state_before


def test_denied_by_is_the_first_hit_in_the_callers_order_that_said_no(target: Target) -> None:
    forward = [
        Hit(FIXED, "client-42"),
        Hit(SLOTS, "client-42"),
        Hit(GCRA, "client-42"),
        Hit(CAP, "client-42", Decimal("1.25")),
    ]
    backward = forward[::-1]
    with target.sync_client() as client:
        limiter = Limiter(client)
        FILL["lease"](limiter, "client-42")
        FILL["spend"](limiter, "client-42")
        first = limiter.acquire(forward)
        second = limiter.acquire(backward)

    assert first.denied_by is forward[1]
    assert [d.allowed for d in first.decisions] == [True, False, True, False]
    assert second.denied_by is backward[0]
    assert [d.allowed for d in second.decisions] == [False, True, False, True]


def test_denied_by_follows_the_callers_order_across_subjects(target: Target) -> None:
    # client-b's group is charged first (it appears first) and denies on its
    # cap, at index 2; the global limit at index 1 is only peeked, and says
    # no too. It comes first in the caller's order, so it is denied_by.
    hits = [
        Hit(FIXED, "client-b"),
        Hit(GLOBAL, "global"),
        Hit(CAP, "client-b", Decimal("1.25")),
    ]
    with target.sync_client() as client:
        limiter = Limiter(client)
        limiter.hit(GLOBAL, "global", 3)
        FILL["spend"](limiter, "client-b")
        result = limiter.acquire(hits)

    assert not result.allowed
    assert [d.allowed for d in result.decisions] == [True, False, False]
    assert result.denied_by is hits[1]


def test_one_subject_acquire_is_one_script_run_allowed_or_denied(server: Server) -> None:
    hits = [*_one_of_each("client-42"), Hit(GPU, "client-42")]
    with server.client() as client:
        _load_scripts(client)
        limiter = Limiter(client)
        runs = [evalsha_runs(client)]
        allowed = limiter.acquire(hits)
        runs.append(evalsha_runs(client))
        denied = limiter.acquire(hits)  # GPU's one slot is now taken
        runs.append(evalsha_runs(client))

    assert allowed.allowed
    assert not denied.allowed
    assert denied.denied_by is hits[-1]
    assert (runs[1] - runs[0], runs[2] - runs[1]) == (1, 1)


async def test_async_one_subject_acquire_is_one_script_run(server: Server) -> None:
    hits = [*_one_of_each("client-42"), Hit(GPU, "client-42")]
    with server.client() as probe:
        _load_scripts(probe)
        before = evalsha_runs(probe)
        async with server.async_client() as client:
            result = await AsyncLimiter(client).acquire(hits)
        after = evalsha_runs(probe)

    assert result.allowed
    assert after - before == 1


# -- several subjects: in order, with exact undo --------------------------------


def _prime(limiter: Limiter, subject: str) -> None:
    """Some usage of every kind, so "back to before" is not just back to zero."""
    limiter.hit(FIXED, subject, 2)
    limiter.hit(GCRA, subject)
    limiter.hit(SLIDING, subject)
    limiter.hit(LOG, subject)
    limiter.hit(CAP, subject, Decimal("3.00"))
    limiter.reserve(BUDGET, subject, Decimal("1.00"))
    limiter.lease(SLOTS, subject)


PRIMED = [(2, 0), (1, 0), (1, 0), (1, 0), (Decimal("3.00"), 0), (0, Decimal("1.00")), (1, 0)]
PRIMED_AND_CHARGED = [
    (3, 0),
    (2, 0),
    (2, 0),
    (3, 0),
    (Decimal("4.25"), 0),
    (0, Decimal("3.00")),
    (2, 0),
]


def test_denial_at_a_later_subject_undoes_earlier_subjects_exactly(target: Target) -> None:
    hits = [
        *_one_of_each("client-a"),
        Hit(FIXED, "client-b"),
        Hit(GLOBAL, "global"),
        Hit(FIXED, "client-c"),
    ]
    with target.sync_client() as client:
        limiter = Limiter(client)
        _prime(limiter, "client-a")
        limiter.hit(GLOBAL, "global", 3)
        usage_before, held_before = _usage(limiter, hits), _held(client)
        denied = limiter.acquire(hits, request_id="req-1")
        usage_after, held_after = _usage(limiter, hits), _held(client)
        records_after = _records(client, "req-1")
        # The undo deleted the records: the same id is evaluated afresh.
        limiter.reset(GLOBAL, "global")
        allowed = limiter.acquire(hits, request_id="req-1")
        usage_charged = _usage(limiter, hits)
        replayed = limiter.acquire(hits, request_id="req-1")
        usage_replayed = _usage(limiter, hits)

    assert usage_before == [*PRIMED, (0, 0), (3, 0), (0, 0)]
    assert not denied.allowed
    assert denied.denied_by is hits[8]
    assert [d.allowed for d in denied.decisions] == [True] * 8 + [False, True]
    assert [d.granted for d in denied.decisions] == [0] * 10
    assert [d.used for d in denied.decisions] == [used for used, _ in usage_before]
    assert (denied.leases, denied.reservations) == ((), ())
    assert usage_after == usage_before
    assert held_after == held_before
    assert records_after == []
    assert allowed.allowed
    assert usage_charged == [*PRIMED_AND_CHARGED, (1, 0), (1, 0), (1, 0)]
    assert replayed.allowed
    assert replayed.decisions == allowed.decisions
    assert usage_replayed == usage_charged


async def test_async_denial_at_a_later_subject_undoes_earlier_subjects_exactly(
    target: Target,
) -> None:
    hits = [*_one_of_each("client-a"), Hit(GLOBAL, "global"), Hit(FIXED, "client-c")]
    with target.sync_client() as setup:
        _prime(Limiter(setup), "client-a")
        Limiter(setup).hit(GLOBAL, "global", 3)
        held_before = _held(setup)
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)
        usage_before = await _async_usage(limiter, hits)
        denied = await limiter.acquire(hits, request_id="req-1")
        usage_after = await _async_usage(limiter, hits)
        await limiter.reset(GLOBAL, "global")
        allowed = await limiter.acquire(hits, request_id="req-1")
        usage_charged = await _async_usage(limiter, hits)
    with target.sync_client() as probe:
        held_after = _held(probe)

    assert not denied.allowed
    assert denied.denied_by is hits[7]
    assert [d.allowed for d in denied.decisions] == [True] * 7 + [False, True]
    assert usage_after == usage_before
    assert allowed.allowed
    assert usage_charged == [*PRIMED_AND_CHARGED, (1, 0), (1, 0)]
    assert len(allowed.leases) == len(allowed.reservations) == 1
    # Once allowed, exactly one more lease and one more hold exist than before.
    grown = {key: len(held_after[key]) - len(held_before.get(key, [])) for key in held_after}
    assert sorted(grown.values()) == [1, 1, 2]  # a lease, a hold, the sliding log's 2 entries


def test_subjects_are_charged_in_order_of_first_appearance_and_undone_in_reverse(
    server: Server,
) -> None:
    hits = [
        Hit(FIXED, "client-b"),
        Hit(FIXED, "client-a"),
        Hit(CAP, "client-b", Decimal("1.00")),
        Hit(GLOBAL, "global"),
        Hit(FIXED, "client-c"),
        Hit(CAP, "client-a", Decimal("1.00")),
    ]
    with server.client() as client:
        _load_scripts(client)
        limiter = Limiter(client)
        # The saga a cluster needs, shown on one server, where it is only
        # the fallback after CROSSSLOT (see the test below).
        limiter._engine.together = False
        limiter.hit(GLOBAL, "global", 3)
        with _script_log([server]) as runs:
            result = limiter.acquire(hits)
            (calls,) = runs()

    assert not result.allowed
    assert calls == [
        ("charge", "client-b"),
        ("charge", "client-a"),
        ("charge", "global"),
        ("undo", "client-a"),
        ("undo", "client-b"),
        ("peek", "client-c"),
    ]


def test_on_one_server_an_acquire_over_several_subjects_is_one_script(server: Server) -> None:
    hits = [
        Hit(FIXED, "client-b"),
        Hit(FIXED, "client-a"),
        Hit(CAP, "client-b", Decimal("1.00")),
        Hit(GLOBAL, "global"),
    ]
    with server.client() as client:
        _load_scripts(client)
        limiter = Limiter(client)
        with _script_log([server]) as runs:
            allowed = limiter.acquire(hits, request_id="one-script")
            limiter.hit(GLOBAL, "global", 2)
            denied = limiter.acquire(hits)
            (calls,) = runs()
        used = [limiter.peek(hit.limit, hit.subject, 0).used for hit in hits]
        undone = limiter.undo_acquire(hits, request_id="one-script")
        after = [limiter.peek(hit.limit, hit.subject, 0).used for hit in hits]

    assert allowed.allowed
    assert not denied.allowed
    assert [name for name, _ in calls if name != "hit_fixed_window"] == ["acquire", "acquire"]
    assert used == [1, 1, Decimal("1.00"), 3]  # the denial charged nothing
    assert undone  # each subject's record is the saga's, so undo_acquire finds it
    assert after == [0, 0, Decimal("0.00"), 2]


def test_a_window_that_closed_before_the_undo_owes_nothing_back(target: Target) -> None:
    ten = RateLimit(name="ten-seconds", limit=5, window=timedelta(seconds=10))
    cap = SpendCap(name="per-minute", limit=Decimal("10.00"), currency="AUD", window="minute")
    hits = [Hit(ten, "client-a"), Hit(cap, "client-a", Decimal("2.00")), Hit(GLOBAL, "global")]
    now = [START]
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=lambda: now[0])
        limiter.hit(GLOBAL, "global", 3)
        others = []

        def between(step: int) -> None:
            if step == 2:  # the undo is next: both of client-a's windows close first
                now[0] += 60
                others.append(limiter.hit(ten, "client-a"))
                others.append(limiter.hit(cap, "client-a", Decimal("3.00")))

        engine, runner = (
            Engine(time_source="client"),
            SyncRunner(client, clock_reader(lambda: now[0])),
        )
        found, names = _drive(acquire(engine, hits, "req-w"), runner, between)
        after = _usage(limiter, hits[:2])
        records = _records(client, "req-w")

    assert names == ["charge", "charge", "undo"]
    assert isinstance(found, Acquisition)
    assert not found.allowed
    # Charges made in the new windows by someone else are not lowered.
    assert [d.used for d in others] == [1, Decimal("3.00")]
    assert after == [(1, 0), (Decimal("3.00"), 0)]
    assert records == []


def test_an_undo_in_the_same_window_gives_back_exactly_what_was_charged(target: Target) -> None:
    # The control for the test above: with the window still open, the other
    # caller's charge and ours are both there, and only ours comes back.
    ten = RateLimit(name="ten-seconds", limit=5, window=timedelta(seconds=10))
    hits = [Hit(ten, "client-a", 2), Hit(GLOBAL, "global")]
    now = [START]
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=lambda: now[0])
        limiter.hit(GLOBAL, "global", 3)
        seen = []

        def between(step: int) -> None:
            if step == 2:
                now[0] += 1
                seen.append(limiter.hit(ten, "client-a").used)

        engine, runner = (
            Engine(time_source="client"),
            SyncRunner(client, clock_reader(lambda: now[0])),
        )
        found, names = _drive(acquire(engine, hits, "req-s"), runner, between)
        after = _usage(limiter, hits[:1])

    assert names == ["charge", "charge", "undo"]
    assert not found.allowed
    assert seen == [3]  # ours (2) and theirs (1), in flight together
    assert after == [(1, 0)]


# -- the real cluster: subjects on different nodes ------------------------------


def test_cluster_denial_on_another_node_undoes_the_first_node_exactly(cluster: Cluster) -> None:
    client_subject, global_subject, other = _placed(cluster, "node", 3)
    hits = [
        *_one_of_each(client_subject),
        Hit(GLOBAL, global_subject),
        Hit(FIXED, other),
    ]
    with cluster.client() as client:
        for node in cluster.nodes:
            with node.client() as direct:
                _load_scripts(direct)
        limiter = Limiter(client)
        _prime(limiter, client_subject)
        limiter.hit(GLOBAL, global_subject, 3)
        usage_before, held_before = _usage(limiter, hits), _held(client)
        with _script_log(cluster.nodes) as runs:
            denied = limiter.acquire(hits, request_id="req-7")
            denied_runs = runs()
        usage_after, held_after = _usage(limiter, hits), _held(client)
        records_after = _records(client, "req-7")
        limiter.reset(GLOBAL, global_subject)
        with _script_log(cluster.nodes) as runs:
            allowed = limiter.acquire(hits, request_id="req-7")
            allowed_runs = runs()
        usage_charged = _usage(limiter, hits)

    assert not denied.allowed
    assert denied.denied_by is hits[7]
    assert [d.allowed for d in denied.decisions] == [True] * 7 + [False, True]
    assert denied_runs == [
        [("charge", client_subject), ("undo", client_subject)],
        [("charge", global_subject)],
        [("peek", other)],
    ]
    assert usage_after == usage_before
    assert held_after == held_before
    assert records_after == []
    assert allowed.allowed
    assert allowed_runs == [
        [("charge", client_subject)],
        [("charge", global_subject)],
        [("charge", other)],
    ]
    assert usage_charged == [*PRIMED_AND_CHARGED, (1, 0), (1, 0)]


async def test_async_cluster_denial_on_another_node_undoes_the_first_node(
    cluster: Cluster,
) -> None:
    client_subject, global_subject = _placed(cluster, "anode", 2)
    hits = [*_one_of_each(client_subject), Hit(GLOBAL, global_subject)]
    with cluster.client() as setup:
        limiter = Limiter(setup)
        _prime(limiter, client_subject)
        limiter.hit(GLOBAL, global_subject, 3)
        held_before = _held(setup)
    client = cluster.async_client()
    try:
        alimiter = AsyncLimiter(client)
        usage_before = await _async_usage(alimiter, hits)
        denied = await alimiter.acquire(hits)
        usage_after = await _async_usage(alimiter, hits)
    finally:
        await client.aclose()
    with cluster.client() as probe:
        held_after = _held(probe)

    assert not denied.allowed
    assert denied.denied_by is hits[7]
    assert usage_after == usage_before
    assert held_after == held_before


@pytest.mark.parametrize("denied_at", [None, 1, 2, 3])
def test_cluster_round_trips_are_j_charges_j_minus_one_undos_and_k_minus_j_peeks(
    cluster: Cluster, denied_at: int | None
) -> None:
    one = RateLimit(name="one", limit=1, window="day")
    subjects = _placed(cluster, "trip", 3)
    hits = [Hit(one, subject) for subject in subjects]
    with cluster.client() as client:
        limiter = Limiter(client)
        nodes = [node.client() for node in cluster.nodes]
        try:
            for direct in nodes:
                _load_scripts(direct)
            if denied_at is not None:
                limiter.hit(one, subjects[denied_at - 1])
            before = [evalsha_runs(direct) for direct in nodes]
            with _script_log(cluster.nodes) as runs:
                result = limiter.acquire(hits)
                per_node = runs()
            after = [evalsha_runs(direct) for direct in nodes]
        finally:
            for direct in nodes:
                direct.close()

    j, k = denied_at or 3, 3
    scripts = Counter(name for calls in per_node for name, _ in calls)
    if denied_at is None:
        assert result.allowed
        assert scripts == Counter(charge=k)
    else:
        assert not result.allowed
        assert result.denied_by is hits[j - 1]
        assert scripts == Counter(charge=j, undo=j - 1, peek=k - j)
    # One node per subject, each serving only its own subject's calls.
    assert [b - a for a, b in zip(before, after, strict=True)] == [len(c) for c in per_node]
    for subject, calls in zip(subjects, per_node, strict=True):
        assert {s for _, s in calls} == {subject}


CLIENT_DAILY = RateLimit(name="client-daily", limit=1_000, window="day")
GLOBAL_DAILY = RateLimit(name="global-daily", limit=60, window="day")
CLIENT_SPEND = SpendCap(name="client-spend", limit=Decimal("1000.00"), currency="AUD", window="day")
PRICE = Decimal("0.37")
RACERS = 240


async def _cluster_race(
    cluster: Cluster, hits: list[Hit[Any]], attempt_with: Callable[[AsyncLimiter], Any]
) -> tuple[int, list[Any]]:
    """Race RACERS tasks through ``attempt_with(limiter)``; return admissions and usage."""
    for node in cluster.nodes:
        with node.client() as direct:
            _load_scripts(direct)
    client = cluster.async_client(max_connections=RACERS + 10)
    try:
        limiter = AsyncLimiter(client)
        await _async_usage(limiter, hits)  # connect to every node first
        admitted, _ = await _race(RACERS, attempt_with(limiter))
        usage = [used for used, _ in await _async_usage(limiter, hits)]
    finally:
        await client.aclose()
    return admitted, usage


async def test_cluster_race_leaves_no_charge_of_a_denied_acquire(cluster: Cluster) -> None:
    # The per-client limits are loose; the global one, on another node and
    # charged second, binds. Every denial undoes the client's charges while
    # other tasks are charging the same keys.
    client_subject, global_subject = _placed(cluster, "race", 2)
    hits = [
        Hit(CLIENT_DAILY, client_subject),
        Hit(GLOBAL_DAILY, global_subject),
        Hit(CLIENT_SPEND, client_subject, PRICE),
    ]
    results: list[Acquired[Any, Any]] = []

    def attempt_with(limiter: AsyncLimiter) -> Callable[[], Any]:
        async def attempt() -> bool:
            result = await limiter.acquire(hits)
            results.append(result)
            return result.allowed

        return attempt

    admitted, usage = await _cluster_race(cluster, hits, attempt_with)

    assert admitted == 60
    assert usage == [admitted, admitted, admitted * PRICE]
    denied = [r for r in results if not r.allowed]
    assert len(denied) == RACERS - 60
    assert all(r.denied_by is hits[1] for r in denied)
    assert all(d.granted == 0 for r in denied for d in r.decisions)


async def test_cluster_race_hitting_each_limit_in_turn_leaves_partial_charges(
    cluster: Cluster,
) -> None:
    # The same harness, the naive way: one hit per limit, stopping at the
    # first denial with no rollback. Every denied request keeps its client
    # charge, so the client's usage no longer matches what was admitted.
    client_subject, global_subject = _placed(cluster, "race", 2)
    hits = [
        Hit(CLIENT_DAILY, client_subject),
        Hit(GLOBAL_DAILY, global_subject),
        Hit(CLIENT_SPEND, client_subject, PRICE),
    ]

    def attempt_with(limiter: AsyncLimiter) -> Callable[[], Any]:
        async def attempt() -> bool:
            for hit in hits:
                if not (await limiter.hit(hit.limit, hit.subject, hit.cost)).allowed:
                    return False
            return True

        return attempt

    admitted, usage = await _cluster_race(cluster, hits, attempt_with)

    assert admitted == 60
    assert usage[0] == RACERS  # 180 partial charges left behind
    assert usage[0] != admitted


SAME_RATE = RateLimit(name="burst", limit=150, window="day")
SAME_CAP = SpendCap(name="wallet", limit=Decimal("29.60"), currency="AUD", window="day")
SAME_SLOTS = Concurrency(name="in-flight", limit=100, lease=timedelta(minutes=5))
SAME_HITS = [
    Hit(SAME_RATE, "client-42"),
    Hit(SAME_CAP, "client-42", PRICE),
    Hit(SAME_SLOTS, "client-42"),
]


async def _same_slot_race(target: Target, attempt_with: Callable[[AsyncLimiter], Any]) -> Any:
    async with target.async_client(max_connections=RACERS + 10) as client:
        limiter = AsyncLimiter(client)
        await _async_usage(limiter, SAME_HITS)
        admitted, _ = await _race(RACERS, attempt_with(limiter))
        usage = [used for used, _ in await _async_usage(limiter, SAME_HITS)]
    return admitted, usage


async def test_same_subject_race_never_leaves_a_partial_charge(target: Target) -> None:
    results: list[Acquired[Any, Any]] = []

    def attempt_with(limiter: AsyncLimiter) -> Callable[[], Any]:
        async def attempt() -> bool:
            result = await limiter.acquire(SAME_HITS)
            results.append(result)
            return result.allowed

        return attempt

    admitted, usage = await _same_slot_race(target, attempt_with)

    # The cap binds: 29.60 / 0.37 = 80. Every limit counts exactly the admitted.
    assert admitted == 80
    assert usage == [80, Decimal("29.60"), 80]
    assert sum(len(r.leases) for r in results) == 80
    assert all(r.denied_by is SAME_HITS[1] for r in results if not r.allowed)


async def test_same_subject_race_hitting_each_limit_in_turn_leaves_partial_charges(
    target: Target,
) -> None:
    def attempt_with(limiter: AsyncLimiter) -> Callable[[], Any]:
        async def attempt() -> bool:
            if not (await limiter.hit(SAME_RATE, "client-42")).allowed:
                return False
            if not (await limiter.hit(SAME_CAP, "client-42", PRICE)).allowed:
                return False
            return (await limiter.lease(SAME_SLOTS, "client-42", raise_on_deny=False)).allowed

        return attempt

    admitted, usage = await _same_slot_race(target, attempt_with)

    assert admitted == 80
    assert usage == [150, Decimal("29.60"), 80]  # 70 rate charges of denied requests remain


# -- failures part-way ---------------------------------------------------------


FAILING = [
    Hit(FIXED, "client-a"),
    Hit(CAP, "client-a", Decimal("1.25")),
    Hit(SLOTS, "client-a"),
    Hit(BUDGET, "client-a", Decimal("2.00"), hold=HOLD),
    Hit(FIXED, "client-b"),
]


def test_backend_failure_at_a_later_subject_undoes_the_earlier_and_raises(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        client.hset(_state_key(FIXED, "client-b"), "n", 1)
        with pytest.raises(BackendError) as caught:
            limiter.acquire(FAILING, request_id="req-9")
        usage_after = _usage(limiter, FAILING[:4])
        held_after, records_after = _held(client), _records(client, "req-9")
        client.delete(_state_key(FIXED, "client-b"))
        again = limiter.acquire(FAILING, request_id="req-9")
        usage_charged = _usage(limiter, FAILING)

    assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)
    assert "WRONGTYPE" in str(caught.value.__cause__)
    # One script on one server (refused whole), a charge per subject on a cluster.
    failed = "charge" if target.kind == "cluster" else "acquire"
    assert str(caught.value).startswith(f"{failed}: ResponseError")
    assert caught.value.request_id == "req-9"
    assert caught.value.applied == "no"  # refused, and client-a's charges taken back
    assert usage_after == [(0, 0), (0, 0), (0, 0), (0, 0)]
    assert held_after == {}
    assert records_after == []
    assert again.allowed
    assert usage_charged == [(1, 0), (Decimal("1.25"), 0), (1, 0), (0, 2), (1, 0)]


async def test_async_backend_failure_at_a_later_subject_undoes_the_earlier(
    target: Target,
) -> None:
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)
        await client.hset(_state_key(FIXED, "client-b"), "n", 1)
        with pytest.raises(BackendError) as caught:
            await limiter.acquire(FAILING, request_id="req-9")
        usage_after = await _async_usage(limiter, FAILING[:4])

    assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)
    assert usage_after == [(0, 0), (0, 0), (0, 0), (0, 0)]


def test_cluster_backend_failure_on_another_node_undoes_the_first_node(cluster: Cluster) -> None:
    first, second = _placed(cluster, "fail", 2)
    hits = [Hit(FIXED, first), Hit(SLOTS, first), Hit(FIXED, second)]
    with cluster.client() as client:
        for node in cluster.nodes:
            with node.client() as direct:
                _load_scripts(direct)
        limiter = Limiter(client)
        client.hset(_state_key(FIXED, second), "n", 1)
        with _script_log(cluster.nodes[:2]) as runs:
            with pytest.raises(BackendError) as caught:
                limiter.acquire(hits)
            per_node = runs()
        usage_after = _usage(limiter, hits[:2])

    assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)
    assert per_node == [[("charge", first), ("undo", first)], [("charge", second)]]
    assert usage_after == [(0, 0), (0, 0)]


def test_a_failed_undo_leaves_charges_that_a_resent_acquire_replays_and_undoes(
    server: Server,
) -> None:
    hits = [Hit(FIXED, "client-a"), Hit(SLOTS, "client-a"), Hit(GLOBAL, "global")]
    unreachable = redis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    with server.client() as client, unreachable:
        limiter = Limiter(client)
        limiter.hit(GLOBAL, "global", 3)
        live, lost = SyncRunner(client), SyncRunner(unreachable)
        flow = acquire(Engine(), hits, "req-3")
        charged = live.run(_planned(next(flow), live))
        denied = live.run(_planned(flow.send(charged), live))
        undo = _planned(flow.send(denied), lost)
        # The server goes away just as the undo is sent.
        with pytest.raises(BackendError) as failure:
            lost.run(undo)
        with pytest.raises(BackendError) as raised:
            flow.throw(failure.value)
        stranded = _usage(limiter, hits[:2])
        retried = limiter.acquire(hits, request_id="req-3")
        after_retry = _usage(limiter, hits[:2])
        limiter.reset(GLOBAL, "global")
        allowed = limiter.acquire(hits, request_id="req-3")
        final = _usage(limiter, hits)

    assert undo.script.name == "undo"
    assert raised.value.applied == "unknown"  # a charge stands, and the error says it may
    assert raised.value.request_id == "req-3"
    assert stranded == [(1, 0), (1, 0)]
    assert not retried.allowed
    assert after_retry == [(0, 0), (0, 0)]
    assert allowed.allowed
    assert final == [(1, 0), (1, 0), (1, 0)]


# -- honest errors: the acquire's id, and a stranded acquire completed or undone --

GENERATED_ID = re.compile(r"@[0-9a-f]{24}")


def test_an_error_part_way_carries_the_generated_id_and_says_nothing_stands(
    target: Target,
) -> None:
    # Several subjects are always recorded, so even without a caller's id
    # the error names one: the one the acquire's records are kept under.
    with target.sync_client() as client:
        limiter = Limiter(client)
        client.hset(_state_key(FIXED, "client-b"), "n", 1)
        with pytest.raises(BackendError) as caught:
            limiter.acquire(FAILING)
        client.delete(_state_key(FIXED, "client-b"))
        undone = limiter.undo_acquire(FAILING, request_id=caught.value.request_id or "")
        usage = _usage(limiter, FAILING[:4])

    assert caught.value.request_id is not None
    assert GENERATED_ID.fullmatch(caught.value.request_id)
    assert caught.value.applied == "no"
    assert not undone  # the acquire took its own charges back before raising
    assert usage == [(0, 0), (0, 0), (0, 0), (0, 0)]


def test_an_error_in_a_one_subject_acquire_without_an_id_names_none(target: Target) -> None:
    # One subject is one script: nothing is recorded, so there is no id to
    # complete or undo with, and none is offered.
    hits = [Hit(FIXED, "client-b"), Hit(CAP, "client-b", Decimal("1.00"))]
    with target.sync_client() as client:
        client.hset(_state_key(FIXED, "client-b"), "n", 1)
        with pytest.raises(BackendError) as caught:
            Limiter(client).acquire(hits)

    assert caught.value.request_id is None
    assert caught.value.applied == "no"


def test_undo_acquire_takes_back_an_allowed_acquire_once(target: Target) -> None:
    hits = [*_one_of_each("client-a"), Hit(GLOBAL, "global")]
    with target.sync_client() as client:
        limiter = Limiter(client)
        _prime(limiter, "client-a")
        before, held_before = _usage(limiter, hits), _held(client)
        acquired = limiter.acquire(hits, request_id="req-u")
        first = limiter.undo_acquire(hits, request_id="req-u")
        after, held_after = _usage(limiter, hits), _held(client)
        second = limiter.undo_acquire(hits, request_id="req-u")
        after_second = _usage(limiter, hits)

    assert acquired.allowed
    assert (first, second) == (True, False)
    assert after == before
    assert held_after == held_before  # its lease and hold are dropped too
    assert after_second == before


def test_a_refusal_after_a_replayed_subject_says_a_charge_may_stand(server: Server) -> None:
    # An earlier send charged client-a and died before global. Sent again,
    # client-a replays (that charge is not this send's to take back) and
    # global is refused: nothing new was charged, yet a charge stands under
    # the id, so the error cannot say "no".
    hits = [Hit(FIXED, "client-a"), Hit(GLOBAL, "global")]
    with server.client() as client:
        limiter = Limiter(client)
        runner = SyncRunner(client)
        flow = acquire(Engine(), hits, "req-r")
        runner.run(_planned(next(flow), runner))  # client-a charged; the sender dies
        flow.close()
        client.hset(_state_key(GLOBAL, "global"), "n", 1)
        with pytest.raises(BackendError) as caught:
            limiter.acquire(hits, request_id="req-r")
        standing = _usage(limiter, hits[:1])
        client.delete(_state_key(GLOBAL, "global"))
        undone = limiter.undo_acquire(hits, request_id="req-r")
        after = _usage(limiter, hits)

    assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)
    assert caught.value.applied == "unknown"
    assert caught.value.request_id == "req-r"
    assert standing == [(1, 0)]
    assert undone
    assert after == [(0, 0), (0, 0)]


def test_undo_acquire_checks_its_input_before_sending(server: Server) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        before = evalsha_runs(client)
        with pytest.raises(InvalidInput):
            limiter.undo_acquire(FAILING, request_id=None)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            limiter.undo_acquire([], request_id="req-1")
        runs = evalsha_runs(client) - before

    assert runs == 0


@contextmanager
def _stalling(cluster: Cluster, index: int) -> Iterator[tuple[StallingProxy, Any]]:
    """A stalling proxy in front of one cluster node, and the address map
    that sends a cluster client's traffic for that node through it."""
    port = cluster.nodes[index].port
    with StallingProxy("127.0.0.1", port) as proxy:

        def remap(address: tuple[str, int]) -> tuple[str, int]:
            return ("127.0.0.1", proxy.port) if address[1] == port else address

        yield proxy, remap


STRANDED = 1.0
"""How long the stalled node's reply is held: well past the socket timeout."""


def _strand(cluster: Cluster) -> tuple[list[Hit[Any]], str, Cluster]:
    """Subjects on nodes 0 and 1, and scripts loaded everywhere."""
    first, second = _placed(cluster, "strand", 2)
    for node in cluster.nodes:
        with node.client() as direct:
            _load_scripts(direct)
    return (
        [Hit(FIXED, first), Hit(SLOTS, first), Hit(CAP, second, Decimal("2.00"))],
        second,
        cluster,
    )


@pytest.mark.parametrize("finish", ["complete", "undo"])
def test_cluster_acquire_stranded_by_a_stalled_node_is_completed_or_undone_with_its_id(
    cluster: Cluster, finish: str
) -> None:
    # Node 1 runs its charge, but the reply stalls past the socket timeout:
    # the acquire takes node 0's charges back and raises. Node 1's charge
    # stands, under the record of the id the error carries; sending the
    # acquire again with that id completes it, undo_acquire takes it back.
    hits, second, _ = _strand(cluster)
    with _stalling(cluster, 1) as (proxy, remap), cluster.client() as direct:
        with cluster.client(address_remap=remap, socket_timeout=0.3) as client:
            limiter = Limiter(client)
            limiter.peek(CAP, second)  # connect through the proxy before it stalls
            proxy.stall_next_replies(1, STRANDED)
            with pytest.raises(BackendError) as caught:
                limiter.acquire(hits)
            time.sleep(STRANDED)  # the stalled reply arrives, to nobody
            stranded = _usage(Limiter(direct), hits)
            request_id = caught.value.request_id or ""
            if finish == "complete":
                result: object = limiter.acquire(hits, request_id=request_id)
                again: object = limiter.acquire(hits, request_id=request_id)
            else:
                result = limiter.undo_acquire(hits, request_id=request_id)
                again = limiter.undo_acquire(hits, request_id=request_id)
        final = _usage(Limiter(direct), hits)

    assert caught.value.applied == "unknown"
    assert GENERATED_ID.fullmatch(request_id)
    assert isinstance(caught.value.__cause__, redis.exceptions.TimeoutError)
    assert stranded == [(0, 0), (0, 0), (Decimal("2.00"), 0)]
    if finish == "complete":
        assert isinstance(result, Acquired)
        assert isinstance(again, Acquired)
        assert result.allowed
        assert again.decisions == result.decisions  # a replay, charged once
        assert final == [(1, 0), (1, 0), (Decimal("2.00"), 0)]
    else:
        assert (result, again) == (True, False)
        assert final == [(0, 0), (0, 0), (0, 0)]


def test_cluster_acquire_whose_undo_stalls_says_a_charge_may_stand(cluster: Cluster) -> None:
    # The denial comes from node 0; the undo of node 1's charge stalls. The
    # error says a charge may stand, and undo_acquire makes sure it does not.
    first, second = _placed(cluster, "unstuck", 2)
    hits = [Hit(CAP, second, Decimal("2.00")), Hit(GLOBAL, first)]
    for node in cluster.nodes:
        with node.client() as direct:
            _load_scripts(direct)
    with _stalling(cluster, 1) as (proxy, remap), cluster.client() as direct:
        Limiter(direct).hit(GLOBAL, first, 3)  # node 0 will deny
        with cluster.client(address_remap=remap, socket_timeout=0.3) as client:
            limiter = Limiter(client)
            limiter.peek(CAP, second)
            proxy.stall_next_replies(1, STRANDED, after=1)  # the charge's reply passes
            with pytest.raises(BackendError) as caught:
                limiter.acquire(hits, request_id="req-s")
            time.sleep(STRANDED)
            undone = limiter.undo_acquire(hits, request_id="req-s")
        final = _usage(Limiter(direct), hits[:1])

    assert caught.value.applied == "unknown"
    assert caught.value.request_id == "req-s"
    assert undone is False  # the stalled undo had run; nothing was left to take back
    assert final == [(0, 0)]


async def test_async_cluster_acquire_stranded_by_a_stalled_node_is_undone_with_its_id(
    cluster: Cluster,
) -> None:
    hits, second, _ = _strand(cluster)
    with _stalling(cluster, 1) as (proxy, remap), cluster.client() as direct:
        client = cluster.async_client(address_remap=remap, socket_timeout=0.3)
        try:
            limiter = AsyncLimiter(client)
            await limiter.peek(CAP, second)
            proxy.stall_next_replies(1, STRANDED)
            with pytest.raises(BackendError) as caught:
                await limiter.acquire(hits)
            await asyncio.sleep(STRANDED)
            stranded = _usage(Limiter(direct), hits)
            undone = await limiter.undo_acquire(hits, request_id=caught.value.request_id or "")
        finally:
            await client.aclose()
        final = _usage(Limiter(direct), hits)

    assert caught.value.applied == "unknown"
    assert GENERATED_ID.fullmatch(caught.value.request_id or "")
    assert stranded == [(0, 0), (0, 0), (Decimal("2.00"), 0)]
    assert undone
    assert final == [(0, 0), (0, 0), (0, 0)]


async def test_async_acquire_cut_off_between_subjects_charges_all_or_nothing(
    server: Server, stalling_proxy: StallingProxy
) -> None:
    # A caller's timeout fires while the first subject's charge is in flight:
    # the server runs it, the reply comes late. Whatever the acquire does
    # about it, it must not leave the first subject charged and not the second.
    hits = [Hit(FIXED, "client-a"), Hit(GLOBAL, "global")]
    with server.client() as direct:
        _load_scripts(direct)
    client = stalling_proxy.async_client()
    async with client:
        limiter = AsyncLimiter(client)
        await limiter.peek(FIXED, "warm-up")
        stalling_proxy.stall_next_replies(1, 0.6)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await limiter.acquire(hits)
        await asyncio.sleep(0.7)  # past the stalled reply, for anything still in flight
    with server.client() as direct:
        usage = [used for used, _ in _usage(Limiter(direct), hits)]

    assert usage in ([0, 0], [1, 1])


BLINK = RateLimit(name="blink", limit=5, window=timedelta(milliseconds=150))


def test_an_undo_planned_by_a_clock_that_stepped_back_is_replanned(server: Server) -> None:
    # The worker's clock steps back an hour (an NTP correction) just before
    # the undo is planned, and the charged window has closed by then. The
    # server's clock is outside the planned windows; like every other
    # script, the undo must have the call re-planned, not fail to parse.
    hits = [Hit(BLINK, "client-a"), Hit(GLOBAL, "global")]
    planned = 0

    def stepping_clock() -> float:
        nonlocal planned
        planned += 1
        if planned == 3:
            time.sleep(0.2)  # BLINK's window closes
        return time.time() - (3600 if planned >= 3 else 0)

    with server.client() as client:
        Limiter(client).hit(GLOBAL, "global", 3)
        result = Limiter(client, clock=stepping_clock).acquire(hits)
        after = Limiter(client).peek(BLINK, "client-a", 0)

    assert not result.allowed
    assert result.denied_by is hits[1]
    assert after.used == 0


def test_an_undone_gcra_charge_leaves_the_rate_as_it_was(target: Target) -> None:
    # T = 10 s / 3 is not a whole number of microseconds: the charge rounds
    # the theoretical arrival time up, and the undo must not round it up again.
    thirds = RateLimit(name="thirds", limit=3, window=timedelta(seconds=10), algorithm="gcra")
    hits = [Hit(thirds, "client-a"), Hit(GLOBAL, "global")]
    now = [START]
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=lambda: now[0])
        limiter.hit(GLOBAL, "global", 3)
        before = limiter.peek(thirds, "client-a", 0)
        result = limiter.acquire(hits)
        after = limiter.peek(thirds, "client-a", 0)

    assert not result.allowed
    assert (after.used, after.remaining) == (before.used, before.remaining) == (0, 3)
    assert after.reset_at == before.reset_at


# -- request ids ---------------------------------------------------------------


REPLAYED = [
    Hit(FIXED, "client-a"),
    Hit(SLOTS, "client-a"),
    Hit(CAP, "client-b", Decimal("1.25")),
    Hit(BUDGET, "client-b", Decimal("2.00"), hold=HOLD),
    Hit(GLOBAL, "global"),
]


def test_a_resent_acquire_replays_every_subject_and_charges_once(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        first = limiter.acquire(REPLAYED, request_id="req-1")
        usage_first = _usage(limiter, REPLAYED)
        second = limiter.acquire(REPLAYED, request_id="req-1")
        usage_second = _usage(limiter, REPLAYED)
        settled = second.reservations[0].settle(Decimal("1.00"))
        settled_again = first.reservations[0].settle(Decimal("1.00"))

    assert first.allowed
    assert second.allowed
    assert second.decisions == first.decisions
    assert usage_first == [(1, 0), (1, 0), (Decimal("1.25"), 0), (0, 2), (1, 0)]
    assert usage_second == usage_first
    assert [lease.id for lease in second.leases] == [lease.id for lease in first.leases]
    # Both handles name one hold: it is settled once.
    assert (settled.status, settled_again.status) == ("settled", "already_settled")


async def test_async_a_resent_acquire_replays_every_subject_and_charges_once(
    target: Target,
) -> None:
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)
        first = await limiter.acquire(REPLAYED, request_id="req-1")
        second = await limiter.acquire(REPLAYED, request_id="req-1")
        usage = await _async_usage(limiter, REPLAYED)

    assert first.allowed
    assert second.decisions == first.decisions
    assert usage == [(1, 0), (1, 0), (Decimal("1.25"), 0), (0, 2), (1, 0)]


def test_a_denied_request_id_is_evaluated_afresh_when_resent(target: Target) -> None:
    hits = [Hit(FIXED, "client-a"), Hit(CAP, "client-a", Decimal("1.25"))]
    with target.sync_client() as client:
        limiter = Limiter(client)
        FILL["spend"](limiter, "client-a")
        denied = limiter.acquire(hits, request_id="req-2")
        limiter.reset(CAP, "client-a")
        resent = limiter.acquire(hits, request_id="req-2")
        again = limiter.acquire(hits, request_id="req-2")
        usage = _usage(limiter, hits)

    assert not denied.allowed
    assert resent.allowed
    assert again.decisions == resent.decisions
    assert usage == [(1, 0), (Decimal("1.25"), 0)]


def test_a_request_id_reused_with_other_costs_is_refused_and_charges_nothing(
    target: Target,
) -> None:
    hits = [Hit(FIXED, "client-a"), Hit(CAP, "client-a", Decimal("1.25"))]
    with target.sync_client() as client:
        limiter = Limiter(client)
        limiter.acquire(hits, request_id="req-4")
        with pytest.raises(RequestIdReused):
            limiter.acquire([hits[0], Hit(CAP, "client-a", Decimal("2.00"))], request_id="req-4")
        usage = _usage(limiter, hits)

    assert usage == [(1, 0), (Decimal("1.25"), 0)]


def test_a_request_id_reused_at_a_later_subject_leaves_the_first_acquire_whole(
    target: Target,
) -> None:
    # The first subject's group matches the earlier acquire and replays; the
    # second's cost differs and is refused. The refusal must not take back
    # the earlier acquire's charge of the first subject, which was allowed
    # and is in use: its lease still held, its request still charged.
    hits = [Hit(FIXED, "client-a"), Hit(SLOTS, "client-a"), Hit(GLOBAL, "global")]
    other_costs = [hits[0], hits[1], Hit(GLOBAL, "global", 2)]
    with target.sync_client() as client:
        limiter = Limiter(client)
        first = limiter.acquire(hits, request_id="req-5")
        before = _usage(limiter, hits)
        with pytest.raises(RequestIdReused):
            limiter.acquire(other_costs, request_id="req-5")
        after = _usage(limiter, hits)
        leases = _held(client)

    assert first.allowed
    assert before == [(1, 0), (1, 0), (1, 0)]
    assert after == before
    assert leases == {_key(SLOTS, "client-a"): [b"req-5"]}


@pytest.mark.parametrize(
    ("hits", "message"),
    [
        ([], "at least one Hit"),
        ([Hit(FIXED, "a"), Hit(CAP, "a", 1), Hit(FIXED, "a", 2)], "merge the costs"),
        ([Hit(CAP, "a", 1), Hit(CAP, "a", 2, hold=HOLD)], "merge the costs"),
        ([Hit(FIXED, "a"), (FIXED, "a")], "Hit objects"),
        ([Hit(FIXED, "a"), "a"], "Hit objects"),
        ([Hit(LOG, "a", hold=HOLD)], "sliding_log RateLimit keeps one entry per unit"),
        ([Hit(SLOTS, "a", 2)], "cost must be 1"),
        ([Hit(FIXED, "a"), Hit(CAP, "b", Decimal("0.0000001"))], "cost"),
    ],
    ids=[
        "empty",
        "same-limit-twice",
        "charge-and-hold-on-one-cap",
        "tuple",
        "str",
        "hold-on-a-sliding-log",
        "lease-cost-2",
        "finer-than-the-unit",
    ],
)
def test_an_invalid_acquire_is_refused_before_anything_reaches_the_server(
    server: Server, hits: list[Any], message: str
) -> None:
    with server.client() as client:
        _load_scripts(client)
        before = evalsha_runs(client)
        with pytest.raises(InvalidInput, match=message):
            Limiter(client).acquire(hits)
        after = evalsha_runs(client)
        keys = client.dbsize()

    assert after == before
    assert keys == 0


async def test_async_an_empty_acquire_is_invalid_input() -> None:
    # Refused before any connection is made: the port has no server.
    client = redis.asyncio.Redis(
        host="127.0.0.1", port=free_port(), retry=AsyncRetry(NoBackoff(), 0)
    )
    async with client:
        with pytest.raises(InvalidInput, match="at least one Hit"):
            await AsyncLimiter(client).acquire([])


def test_one_limit_for_several_subjects_is_not_a_duplicate(target: Target) -> None:
    hits = [Hit(FIXED, "client-a"), Hit(FIXED, "client-b", 2), Hit(FIXED, "client-c", 3)]
    with target.sync_client() as client:
        limiter = Limiter(client)
        result = limiter.acquire(hits)
        usage = _usage(limiter, hits)

    assert result.allowed
    assert usage == [(1, 0), (2, 0), (3, 0)]


SWEEP_RATE = RateLimit(name="sweep-rate", limit=10**6, window="day")
SWEEP_TOKENS = RateLimit(name="sweep-tokens", limit=10**9, window="day")
SWEEP_FLIGHT = Concurrency(name="sweep-flight", limit=1000)
SWEEP = [
    Hit(SWEEP_RATE, "sweep-a"),
    Hit(SWEEP_TOKENS, "sweep-a", 100, hold=timedelta(minutes=5)),
    Hit(SWEEP_FLIGHT, "sweep-b"),
]


async def _acquires_cancelled_at_every_turn(
    limiter: AsyncLimiter, turns: int = 30
) -> tuple[int, int, int]:
    """Acquires over two subjects cancelled after 0, 1, 2, ... turns of the
    loop; those that ended first are released. Returns (tokens used, tokens
    held, leases out).

    One acquire runs whole first, so its scripts are loaded: a cancellation
    then meets the acquire itself, not a reload before it.
    """
    first = await limiter.acquire(SWEEP)
    for handle in (*first.leases, *first.reservations):
        await handle.release()
    for turn in range(turns):
        task = asyncio.ensure_future(limiter.acquire(SWEEP))
        for _ in range(turn):
            await asyncio.sleep(0)
        task.cancel()
        (found,) = await asyncio.gather(task, return_exceptions=True)
        if isinstance(found, Acquired):
            for handle in (*found.leases, *found.reservations):
                await handle.release()
    tokens = await limiter.peek(SWEEP_TOKENS, "sweep-a", 0)
    leases = (await limiter.peek(SWEEP_FLIGHT, "sweep-b", 1)).used
    return tokens.used, tokens.held, leases


async def test_async_an_acquire_cancelled_at_any_point_leaves_nothing_held(
    target: Target,
) -> None:
    # Cancelled while queued, nothing was sent; cancelled once sent (one
    # script, or subject after subject on a cluster), the acquire runs to
    # its end and then gives back what it took, before the cancellation
    # goes through. Either way no hold or lease waits for its TTL.
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)
        await limiter.hit(SWEEP_RATE, "warm-up")
        found = await _acquires_cancelled_at_every_turn(limiter)

    assert found == (0, 0, 0)


@pytest.mark.parametrize("careless", [False, True], ids=["held back", "careless"])
async def test_async_an_acquire_cancelled_on_the_wire_gives_back_what_it_took(
    stalling_proxy: StallingProxy, monkeypatch: pytest.MonkeyPatch, careless: bool
) -> None:
    # Every reply held back 20 ms: after its first turns of the loop, an
    # acquire's cancellation lands while it is on the wire. Held back, the
    # cancellation waits for the reply and the acquire gives back what it
    # took; the careless control leaves it held.
    if careless:
        monkeypatch.setattr(async_limiter, "Steadfast", Careless)
    async with AsyncLimiter.from_url(stalling_proxy.url) as limiter:
        await limiter.hit(SWEEP_RATE, "warm-up")  # the connections made and checked
        stalling_proxy.delay = 0.02
        found = await _acquires_cancelled_at_every_turn(limiter, turns=8)
        stalling_proxy.delay = 0

    if careless:
        assert found != (0, 0, 0)
    else:
        assert found == (0, 0, 0)

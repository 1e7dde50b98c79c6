"""The local fallback: ``on_backend_error="local"`` decides in-process, on a share.

While the server cannot be asked, a limit whose policy is ``"local"``
(``"local_spend"`` for a SpendCap) is decided by the limiter's in-process
state against ``floor(limit * local_share)``, with its algorithm's own
semantics on the limiter's clock. Most tests point a limiter at a loopback
port nothing listens on, with a controlled clock (``time_source="client"``),
so the instants the local limiter decides at are the test's. One test runs
the same traffic through the server and through the local limiter and finds
the same decisions; the last kills a server under load from four processes
and counts what the fleet admitted while it was gone.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
import redis
from helpers import SECOND, T0, MicroClock
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Server, free_port

from atomlimit import (
    AsyncLimiter,
    BackendError,
    Breaker,
    BreakerOpen,
    Concurrency,
    Decision,
    Hit,
    InvalidInput,
    Limiter,
    RateLimit,
    SpendCap,
)
from atomlimit._local_limits import MAX_LOCAL_SUBJECTS

NO_RETRY = Retry(NoBackoff(), 0)
QUARTER = Fraction(1, 4)


def local(name: str = "api", limit: int = 8, **fields: Any) -> RateLimit:
    fields.setdefault("window", "minute")
    fields.setdefault("local_share", QUARTER)
    fields.setdefault("on_backend_error", "local")
    return RateLimit(name=name, limit=limit, **fields)


@pytest.fixture
def clock() -> MicroClock:
    return MicroClock(T0)


@pytest.fixture
def down(clock: MicroClock) -> Iterator[Limiter]:
    """A limiter of a server that is gone, deciding on the test's clock."""
    with redis.Redis(host="127.0.0.1", port=free_port(), retry=NO_RETRY) as client:
        yield Limiter(client, time_source="client", clock=clock)


def admitted(limiter: Limiter, spec: Any, subject: str, tries: int, cost: Any = 1) -> int:
    return sum(limiter.hit(spec, subject, cost).allowed for _ in range(tries))


# --------------------------------------------------------------------------
# The setting
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "share", [Fraction(1, 8), Decimal("0.125"), "1/8", "0.125", ".125", 1, "1", Fraction(1)]
)
def test_a_share_is_a_fraction_a_decimal_text_or_one_and_kept_exactly(share: object) -> None:
    spec = local(limit=80, local_share=share)
    assert spec.local_share in (Fraction(1, 8), Fraction(1))


@pytest.mark.parametrize(
    "share",
    [0, Fraction(0), Fraction(9, 8), Decimal("1.5"), 0.125, "0.1250001", "1/0", "-1/8",
     Fraction(1, 10**6 + 1), Decimal("1E+999999"), Decimal("NaN"), 2, True, "1e-3", b"1/8"],
)  # fmt: skip
def test_a_share_outside_zero_to_one_or_not_exact_is_refused(share: object) -> None:
    with pytest.raises(InvalidInput, match=r"RateLimit\.local_share: must be"):
        local(limit=10**6, local_share=share)


def test_local_needs_a_share_and_a_share_needs_local() -> None:
    with pytest.raises(InvalidInput, match="needs the share of the limit"):
        RateLimit(name="a", limit=8, window="minute", on_backend_error="local")
    with pytest.raises(InvalidInput, match="only on_backend_error='local' uses a local_share"):
        RateLimit(name="a", limit=8, window="minute", local_share=QUARTER)


def test_a_share_that_leaves_less_than_one_unit_is_refused() -> None:
    with pytest.raises(InvalidInput, match="less than 1 unit"):
        local(limit=3, local_share=QUARTER)
    with pytest.raises(InvalidInput, match="of burst 2 leaves"):
        local(limit=100, algorithm="gcra", burst=2, window=timedelta(seconds=10))


def test_a_spend_cap_refuses_plain_local_and_names_the_word_that_consents() -> None:
    with pytest.raises(InvalidInput, match="on_backend_error='local_spend' and a local_share"):
        SpendCap(
            name="ai", limit=Decimal(100), currency="AUD", window="day",
            on_backend_error="local", local_share=QUARTER,
        )  # fmt: skip
    cap = SpendCap(
        name="ai", limit=Decimal(100), currency="AUD", window="day",
        on_backend_error="local_spend", local_share=QUARTER,
    )  # fmt: skip
    assert cap.on_backend_error == "local_spend"


def test_a_rate_limit_does_not_take_the_spend_word() -> None:
    with pytest.raises(InvalidInput, match="must be 'raise', 'deny', 'allow' or 'local'"):
        local(on_backend_error="local_spend")


@pytest.mark.parametrize("subjects", [0, -1, MAX_LOCAL_SUBJECTS + 1, 1.5, "10", True, None])
def test_local_subjects_is_bounded(subjects: object) -> None:
    refused = pytest.raises(InvalidInput, match="local_subjects must be an int from 1 to")
    with redis.Redis(host="127.0.0.1", port=free_port()) as client, refused:
        Limiter(client, local_subjects=subjects)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Each algorithm, on a controlled clock
# --------------------------------------------------------------------------


def test_fixed_window_admits_its_share_per_window_aligned_as_the_servers(
    down: Limiter, clock: MicroClock
) -> None:
    spec = local(limit=8)  # 2 per minute in this process
    clock.us = T0 + 30 * SECOND
    first = down.hit(spec, "alice")
    assert (first.allowed, first.degraded, first.limit, first.used) == (True, True, 2, 1)
    assert isinstance(first.cause, BackendError)
    assert down.hit(spec, "alice").allowed
    denied = down.hit(spec, "alice")
    assert not denied.allowed
    assert denied.degraded
    assert isinstance(denied.cause, BreakerOpen)
    assert denied.retry_after == timedelta(seconds=30)  # the minute ends at T0 + 60 s
    clock.us = T0 + 60 * SECOND - 1
    assert not down.hit(spec, "alice").allowed
    clock.us = T0 + 60 * SECOND
    assert admitted(down, spec, "alice", 5) == 2
    assert admitted(down, spec, "bob", 5) == 2  # per subject


def test_gcra_admits_its_share_of_burst_and_rate(down: Limiter, clock: MicroClock) -> None:
    spec = local(limit=8, algorithm="gcra", window=timedelta(seconds=8), local_share=Fraction(1, 2))
    # Locally: 4 per 8 s, a burst of 4, one unit every 2 s.
    assert admitted(down, spec, "a", 6) == 4
    denied = down.hit(spec, "a")
    assert denied.retry_after == timedelta(seconds=2)
    assert (denied.limit, denied.used, denied.remaining) == (4, 4, 0)
    clock.us += 2 * SECOND - 1
    assert not down.hit(spec, "a").allowed
    clock.us += 1
    assert admitted(down, spec, "a", 3) == 1
    clock.us += 8 * SECOND
    assert admitted(down, spec, "a", 6) == 4


def test_gcra_with_a_fractional_interval_admits_exactly_its_rate(
    down: Limiter, clock: MicroClock
) -> None:
    # 3 per 10 s locally: an interval of 3,333,333.3 us, kept exactly.
    spec = local(
        limit=6, algorithm="gcra", window=timedelta(seconds=10), local_share=Fraction(1, 2)
    )
    total = 0
    for _ in range(30):
        total += down.hit(spec, "a").allowed
        clock.us += SECOND
    # 30 s: the burst of 3, then one every 10/3 s over 29 s -> 8 more.
    assert total == 3 + 29 * 3 // 10


def test_sliding_log_counts_any_window_long_span(down: Limiter, clock: MicroClock) -> None:
    spec = local(limit=4, algorithm="sliding_log", window=timedelta(seconds=10),
                 local_share=Fraction(1, 2))  # fmt: skip
    assert down.hit(spec, "a").allowed
    clock.us += 5 * SECOND
    assert down.hit(spec, "a").allowed
    clock.us += SECOND
    denied = down.hit(spec, "a")
    assert not denied.allowed
    assert denied.retry_after == timedelta(seconds=4)
    clock.us += 4 * SECOND  # the first entry slides out
    assert admitted(down, spec, "a", 3) == 1


def test_sliding_counter_weighs_the_last_window(down: Limiter, clock: MicroClock) -> None:
    spec = local(limit=10, algorithm="sliding_counter", window=timedelta(seconds=10),
                 local_share=Fraction(1, 2))  # fmt: skip
    assert admitted(down, spec, "a", 7) == 5
    clock.us += 10 * SECOND  # the next window: all 5 of the last still weigh
    assert not down.hit(spec, "a").allowed
    clock.us += 5 * SECOND  # half of them now: 2.5, so 2 fit
    assert admitted(down, spec, "a", 4) == 2


def test_a_spend_cap_that_consented_spends_its_share_in_decimals(
    down: Limiter, clock: MicroClock
) -> None:
    cap = SpendCap(name="ai", limit=Decimal("10.00"), currency="AUD", window="day",
                   on_backend_error="local_spend", local_share=QUARTER)  # fmt: skip
    first = down.hit(cap, "team", Decimal("1.50"))
    assert (first.allowed, first.limit, first.used, first.granted) == (
        True, Decimal("2.50"), Decimal("1.50"), Decimal("1.50"),
    )  # fmt: skip
    assert not down.hit(cap, "team", Decimal("1.01")).allowed
    assert down.hit(cap, "team", Decimal("1.00")).remaining == Decimal("0.00")
    held = down.reserve(cap, "other", Decimal("2.00"))
    assert held.allowed
    assert held.decision.degraded
    assert not down.reserve(cap, "other", Decimal("0.60")).allowed  # the estimate counts


def test_concurrency_counts_leases_locally_until_they_end(down: Limiter, clock: MicroClock) -> None:
    slots = Concurrency(name="openai", limit=8, lease=timedelta(seconds=30),
                        on_backend_error="local", local_share=QUARTER)  # fmt: skip
    leases = [down.lease(slots, "k", raise_on_deny=False) for _ in range(3)]
    assert [lease.allowed for lease in leases] == [True, True, False]
    assert leases[2].decision.retry_after == timedelta(seconds=30)
    assert leases[0].release() is False  # a degraded handle sends nothing
    clock.us += 30 * SECOND
    assert down.lease(slots, "k", raise_on_deny=False).allowed


def test_partial_takes_what_fits_of_the_share(down: Limiter) -> None:
    spec = local(limit=20)  # 5 locally
    decision = down.hit(spec, "a", 3)
    partial = down.hit(spec, "a", 3, partial=True)
    assert (partial.allowed, partial.granted, partial.remaining) == (True, 2, 0)
    assert decision.granted == 3


def test_a_shadow_limit_counts_locally_and_admits_marked_shadow_denied(down: Limiter) -> None:
    spec = local(limit=8, shadow=True)
    decisions = [down.hit(spec, "a") for _ in range(3)]
    assert all(d.allowed for d in decisions)
    assert [d.shadow_denied for d in decisions] == [False, False, True]


def test_peek_charges_nothing_and_refund_gives_back_nothing(down: Limiter) -> None:
    spec = local(limit=8)
    assert down.peek(spec, "a").allowed
    assert down.hit(spec, "a").used == 1  # the peek charged nothing
    refund = down.refund(spec, "a", 1)
    # The refund may be of a charge the server made: giving it back here
    # would let this process admit more than its share.
    assert (refund.degraded, refund.granted, refund.used) == (True, 0, 1)
    assert admitted(down, spec, "a", 3) == 1


def test_state_is_kept_for_at_most_local_subjects(clock: MicroClock) -> None:
    with redis.Redis(host="127.0.0.1", port=free_port(), retry=NO_RETRY) as client:
        limiter = Limiter(client, time_source="client", clock=clock, local_subjects=2)
        spec = local(limit=4)  # 1 locally
        for subject in ("a", "b", "c"):
            assert limiter.hit(spec, subject).allowed
        assert not limiter.hit(spec, "c").allowed  # still known
        # "a" was the least recently used, and is forgotten: the cost of a
        # bound on memory, which the docs tell how to size.
        assert limiter.hit(spec, "a").allowed


async def test_async_limiter_decides_locally_too(clock: MicroClock) -> None:
    import redis.asyncio
    from redis.asyncio.retry import Retry as AsyncRetry

    client = redis.asyncio.Redis(
        host="127.0.0.1", port=free_port(), retry=AsyncRetry(NoBackoff(), 0)
    )
    async with AsyncLimiter(client, time_source="client", clock=clock) as limiter:
        spec = local(limit=8)
        decisions = [await limiter.hit(spec, "a") for _ in range(3)]
        many = await limiter.hit_many([Hit(spec, "b"), Hit(spec, "b"), Hit(spec, "b")])
    assert [d.allowed for d in decisions] == [True, True, False]
    assert [d.allowed for d in many] == [True, True, False]
    assert all(d.degraded for d in [*decisions, *many])
    await client.aclose()


# --------------------------------------------------------------------------
# acquire: raise > deny > local > allow
# --------------------------------------------------------------------------

ALLOW = RateLimit(name="allow", limit=8, window="minute", on_backend_error="allow")
DENY = RateLimit(name="deny", limit=8, window="minute", on_backend_error="deny")
RAISE = RateLimit(name="raise", limit=8, window="minute")


def test_acquire_with_a_raising_hit_raises(down: Limiter) -> None:
    with pytest.raises(BackendError):
        down.acquire([Hit(local(), "a"), Hit(RAISE, "a")])


def test_acquire_with_a_denying_hit_denies_and_charges_nothing_locally(down: Limiter) -> None:
    spec = local()
    found = down.acquire([Hit(spec, "a"), Hit(DENY, "a")])
    assert not found.allowed
    assert found.denied_by is not None
    assert found.denied_by.limit is DENY
    assert admitted(down, spec, "a", 5) == 2  # the whole share is still there


def test_acquire_of_local_and_allow_hits_is_decided_by_the_local_share(down: Limiter) -> None:
    spec = local()
    results = [down.acquire([Hit(ALLOW, "a"), Hit(spec, "a")]).allowed for _ in range(3)]
    assert results == [True, True, False]


def test_acquire_of_local_hits_charges_all_of_them_or_none(down: Limiter) -> None:
    small, large = local("small", limit=4), local("large", limit=40)  # 1 and 10 locally
    assert down.acquire([Hit(large, "a"), Hit(small, "a")]).allowed
    denied = down.acquire([Hit(large, "a"), Hit(small, "a")])
    assert not denied.allowed
    assert denied.denied_by is not None
    assert denied.denied_by.limit is small
    assert admitted(down, large, "a", 20) == 9  # the denied acquire took nothing


def test_hit_many_decides_local_hits_each_on_their_own(down: Limiter) -> None:
    spec = local()
    decisions = down.hit_many([Hit(spec, "a"), Hit(ALLOW, "a"), Hit(spec, "a"), Hit(spec, "a")])
    assert [d.allowed for d in decisions] == [True, True, True, False]


# --------------------------------------------------------------------------
# The same decisions as the server's, and back to the server
# --------------------------------------------------------------------------

SAME = [
    local("fw", limit=6, local_share=1),
    local("gc", limit=6, algorithm="gcra", burst=4, window=timedelta(seconds=7), local_share=1),
    local("sl", limit=6, algorithm="sliding_log", window=timedelta(seconds=7), local_share=1),
    local("sw", limit=6, algorithm="sliding_counter", window=timedelta(seconds=7), local_share=1),
    Concurrency(name="cc", limit=3, lease=timedelta(seconds=5), on_backend_error="local",
                local_share=Fraction(1)),
    SpendCap(name="sc", limit=Decimal("6.0"), currency="AUD", window=timedelta(seconds=7),
             on_backend_error="local_spend", local_share=Fraction(1)),
]  # fmt: skip


@pytest.mark.parametrize("spec", SAME, ids=lambda spec: spec.name)
def test_the_local_limiter_decides_as_the_server_does(
    server: Server, down: Limiter, clock: MicroClock, spec: Any
) -> None:
    """With a share of 1, the same traffic on the same clock gets the same decisions."""
    shuffle = random.Random(spec.name)
    with server.client() as client:
        up = Limiter(client, time_source="client", clock=clock)
        for step in range(300):
            clock.us += shuffle.choice((0, 1, 250_000, 999_999, SECOND, 3 * SECOND))
            if isinstance(spec, Concurrency):
                pair = [limiter.lease(spec, "s", raise_on_deny=False).decision
                        for limiter in (up, down)]  # fmt: skip
            else:
                units = shuffle.choice((1, 1, 2, 3))
                cost = Decimal(units) / 2 if isinstance(spec, SpendCap) else units
                pair = [limiter.hit(spec, "s", cost) for limiter in (up, down)]
            server_said, local_said = pair
            assert not server_said.degraded
            assert local_said.degraded
            assert _counts(local_said) == _counts(server_said), step
            # The server's GCRA keeps its arrival time as a float, rounded
            # up to the microsecond; the local one is exact.
            assert abs(local_said.reset_at - server_said.reset_at) <= US, step
            if server_said.retry_after is None:
                assert local_said.retry_after is None, step
            else:
                assert local_said.retry_after is not None, step
                assert abs(local_said.retry_after - server_said.retry_after) <= US, step


US = timedelta(microseconds=1)


def _counts(decision: Decision[Any]) -> tuple[Any, ...]:
    return (decision.allowed, decision.granted, decision.used, decision.remaining)


def test_decisions_go_back_to_the_server_once_the_breaker_closes(fresh_server: Server) -> None:
    spec = local(limit=400, window="day")
    with fresh_server.client(socket_connect_timeout=0.5, retry=NO_RETRY) as client:
        limiter = Limiter(client, breaker=Breaker(failures=1, cool_down=timedelta(milliseconds=1)))
        assert not limiter.hit(spec, "a").degraded
        _kill(fresh_server)
        assert limiter.hit(spec, "a").degraded
        fresh_server.restart()
        decisions = [limiter.hit(spec, "a") for _ in range(200)]
    # The probe after the cool-down closes the breaker; every call after
    # the first the server decides is the server's, counted from its own
    # count (the AOF kept the charge made before the kill), never merged
    # with the local one.
    first = next(n for n, d in enumerate(decisions) if not d.degraded)
    assert not any(d.degraded for d in decisions[first:])
    assert decisions[-1].used == 1 + len(decisions) - first


def _kill(server: Server) -> None:
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    give_up = time.monotonic() + 10
    while server.running and time.monotonic() < give_up:
        time.sleep(0.01)
    assert not server.running


# --------------------------------------------------------------------------
# An outage under load from four processes
# --------------------------------------------------------------------------

PROCESSES = 4
LIMIT = 400
SHARE = Fraction(1, PROCESSES)
LOCAL_PART = LIMIT // PROCESSES
LOCAL_SPEC = RateLimit(name="fleet-local", limit=LIMIT, window="day", on_backend_error="local",
                       local_share=SHARE)  # fmt: skip
NAIVE_SPEC = RateLimit(name="fleet-allow", limit=LIMIT, window="day", on_backend_error="allow")
OUTAGE_DENIALS = 10
"""Local denials each process must see before the server comes back: its
share is spent, and the naive limit has admitted more than the share."""
BACK = 30
"""Calls in a row each process must see the server decide before the load stops."""
GIVE_UP = 90.0

# Shared counters, per process: server decisions so far, local denials,
# server decisions in a row since the last degraded one.
_SERVED, _LOCAL_DENIED, _BACK_IN_A_ROW = range(3)


def _outage_worker(url: str, index: int, counts: Any, stop: Any, out: Any) -> None:
    """Hit both limits until told to stop; report admissions per window."""
    limiter = Limiter.from_url(
        url,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=NO_RETRY,
        breaker=Breaker(failures=1, cool_down=timedelta(milliseconds=50)),
    )
    tally: Counter[tuple[str, int, bool, bool]] = Counter()
    base = index * 3
    while not stop.is_set():
        for spec in (LOCAL_SPEC, NAIVE_SPEC):
            d = limiter.hit(spec, "fleet")
            # The UTC day the call fell in, by its end: what the limit counts by.
            window = (int(time.time()) // 86_400 + 1) * 86_400
            tally[(spec.name, window, d.degraded, d.allowed)] += 1
            if spec is not LOCAL_SPEC:
                continue
            if d.degraded:
                assert d.cause is not None
                counts[base + _BACK_IN_A_ROW] = 0
                counts[base + _LOCAL_DENIED] += not d.allowed
            else:
                counts[base + _SERVED] += 1
                counts[base + _BACK_IN_A_ROW] += 1
    limiter.close()
    out.put((index, dict(tally)))


def _wait_for(counts: Any, which: int, at_least: int, give_up: float) -> None:
    # A guard against a hung fleet, not a measure of speed: the counts decide.
    while any(counts[n * 3 + which] < at_least for n in range(PROCESSES)):
        if time.monotonic() >= give_up:
            pytest.fail(f"the fleet stopped deciding: {list(counts)}")
        time.sleep(0.01)


def test_a_fleet_admits_within_the_bound_while_the_server_is_dead(fresh_server: Server) -> None:
    """Four processes, each a share of 1/4, hammer a limit of 400 a day; the
    server is killed once the day's 400 are spent, and restarted once every
    process has spent its local share. Within the bound: at most 400 + 4 x 100
    in the window; the same load on an "allow" limit goes past it."""
    context = multiprocessing.get_context("spawn")
    counts = context.Array("q", PROCESSES * 3)
    stop, out = context.Event(), context.Queue()
    workers = [
        context.Process(target=_outage_worker, args=(fresh_server.url, n, counts, stop, out))
        for n in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    try:
        give_up = time.monotonic() + GIVE_UP
        _wait_for(counts, _SERVED, LOCAL_PART + 10, give_up)  # > 400 asked: the day is spent
        _kill(fresh_server)
        _wait_for(counts, _LOCAL_DENIED, OUTAGE_DENIALS, give_up)
        fresh_server.restart()
        _wait_for(counts, _BACK_IN_A_ROW, BACK, give_up)
    finally:
        stop.set()
        reports = dict(out.get(timeout=GIVE_UP) for _ in workers)
        for worker in workers:
            worker.join(timeout=GIVE_UP)
    _check_outage(reports)


def _check_outage(reports: dict[int, dict[tuple[str, int, bool, bool], int]]) -> None:
    fleet: Counter[tuple[str, int, bool]] = Counter()
    for index, tally in reports.items():
        local_admitted: Counter[int] = Counter()
        for (name, window, degraded, allowed), n in tally.items():
            if allowed:
                fleet[(name, window, degraded)] += n
                if name == LOCAL_SPEC.name and degraded:
                    local_admitted[window] += n
        # Each process admits at most its share in each window.
        assert all(n <= LOCAL_PART for n in local_admitted.values()), (index, local_admitted)
    windows = {window for (_, window, _) in fleet}
    bound = LIMIT + PROCESSES * LOCAL_PART  # per window the outage touched
    for window in windows:
        served = fleet[(LOCAL_SPEC.name, window, False)]
        local_admits = fleet[(LOCAL_SPEC.name, window, True)]
        naive = fleet[(NAIVE_SPEC.name, window, False)] + fleet[(NAIVE_SPEC.name, window, True)]
        print(f"window {window}: server admitted {served}, local {local_admits}, naive {naive}")
        assert served <= LIMIT
        assert served + local_admits <= bound
    # The share was spent, and the bound is tight: every process admitted
    # exactly its share while the server was gone (unless a day began).
    total_local = sum(n for (name, _, degraded), n in fleet.items()
                      if name == LOCAL_SPEC.name and degraded)  # fmt: skip
    assert total_local >= PROCESSES * LOCAL_PART
    # The same load on a limit that allows while the server is down goes
    # past the same bound: the assertion above can fail.
    naive_total = sum(n for (name, _, _), n in fleet.items() if name == NAIVE_SPEC.name)
    assert naive_total > bound * len(windows)


def test_a_limit_changed_under_the_same_name_starts_its_local_state_afresh(
    down: Limiter,
) -> None:
    before = local(limit=8, algorithm="gcra", window=timedelta(seconds=8))  # 2 at once
    after = local(limit=40, algorithm="gcra", window=timedelta(seconds=8))  # 10 at once
    assert admitted(down, before, "a", 5) == 2
    assert admitted(down, after, "a", 12) == 10
    assert admitted(down, before, "a", 5) == 0  # its own state is still there

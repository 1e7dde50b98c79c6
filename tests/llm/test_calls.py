"""Budgeted model calls: ``limiter.call(upstream, ...)`` as a block, sync and async.

The block takes an upstream's limits (one subject for the fleet) and a
client's in one all-or-nothing acquire, records what the response said,
and ends in one round trip. Everything runs on real servers (Redis,
Valkey, and the cluster where it makes sense); window rollover and what a
window learns from the provider are driven by a controlled clock
(``time_source="client"``), never by waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from conftest import Target
from helpers import Careless, Clock, evalsha_runs
from proxy import StallingProxy
from redis.crc import key_slot
from servers import Cluster, Server

from atomlimit import (
    AsyncLimiter,
    ClientLimits,
    Concurrency,
    InvalidInput,
    Limiter,
    LimitExceeded,
    RateLimit,
    Spec,
    SpendCap,
    Upstream,
)
from atomlimit import _model_call as model_call
from atomlimit._async import calls as async_calls
from atomlimit._async import limiter as async_limiter

RPM = RateLimit(name="rpm", limit=3, window="minute")
TPM = RateLimit(name="tpm", limit=1600, window="minute")
USD = SpendCap(name="usd", limit=Decimal("10.00"), currency="USD", window="day")
FLIGHT = Concurrency(name="flight", limit=2)
UPSTREAM = Upstream("openai:gpt", requests=RPM, tokens=TPM, spend=USD, in_flight=FLIGHT)

CRPM = RateLimit(name="c-rpm", limit=5, window="minute")
CTPM = RateLimit(name="c-tpm", limit=500, window="minute")
CUSD = SpendCap(name="c-usd", limit=Decimal("2.00"), currency="USD", window="day")
CFLIGHT = Concurrency(name="c-flight", limit=1)
CLIENT = ClientLimits(requests=CRPM, tokens=CTPM, spend=CUSD, in_flight=CFLIGHT)

ORDER: list[tuple[Spec[Any], str]] = [
    (RPM, UPSTREAM.name),
    (TPM, UPSTREAM.name),
    (USD, UPSTREAM.name),
    (FLIGHT, UPSTREAM.name),
    (CRPM, "client-7"),
    (CTPM, "client-7"),
    (CUSD, "client-7"),
    (CFLIGHT, "client-7"),
]
"""Every limit of a call of UPSTREAM with CLIENT for client-7, in acquire order."""

STEP = math.ceil(TPM.limit / 16)
"""What a window forgets of the outside use learned (lib/guard.lua): 100."""


class Boom(Exception):
    """Raised inside a block, as a failed provider request would be."""


def _usage(limiter: Limiter) -> list[tuple[Any, Any]]:
    """(used, held) of every limit of ORDER, read without charging."""
    found = []
    for spec, subject in ORDER:
        decision = limiter.peek(spec, subject, 1 if isinstance(spec, Concurrency) else 0)
        found.append((decision.used, decision.held))
    return found


async def _async_usage(limiter: AsyncLimiter) -> list[tuple[Any, Any]]:
    found = []
    for spec, subject in ORDER:
        decision = await limiter.peek(spec, subject, 1 if isinstance(spec, Concurrency) else 0)
        found.append((decision.used, decision.held))
    return found


def _call(limiter: Limiter, tokens: int = 300, cost: str = "0.50", **options: Any) -> Any:
    return limiter.call(
        UPSTREAM, client="client-7", tokens=tokens, cost=Decimal(cost), limits=CLIENT, **options
    )


def _async_call(
    limiter: AsyncLimiter, tokens: int = 300, cost: str = "0.50", **options: Any
) -> Any:
    return limiter.call(
        UPSTREAM, client="client-7", tokens=tokens, cost=Decimal(cost), limits=CLIENT, **options
    )


# What leaves exactly too little room for a call of 300 tokens and $0.50.
FILL: dict[str, Any] = {
    "upstream requests": lambda limiter: limiter.hit(RPM, UPSTREAM.name, 3),
    "upstream tokens": lambda limiter: limiter.hit(TPM, UPSTREAM.name, 1301),
    "upstream spend": lambda limiter: limiter.hit(USD, UPSTREAM.name, Decimal("9.51")),
    "upstream in_flight": lambda limiter: [limiter.lease(FLIGHT, UPSTREAM.name) for _ in "ab"],
    "client requests": lambda limiter: limiter.hit(CRPM, "client-7", 5),
    "client tokens": lambda limiter: limiter.hit(CTPM, "client-7", 201),
    "client spend": lambda limiter: limiter.hit(CUSD, "client-7", Decimal("1.51")),
    "client in_flight": lambda limiter: limiter.lease(CFLIGHT, "client-7"),
}
DENIER = dict(zip(FILL, [spec for spec, _ in ORDER], strict=True))


# -- entering: every limit or none ----------------------------------------------


def test_entering_charges_every_limit_of_the_upstream_and_the_client(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        with _call(limiter) as call:
            inside = _usage(limiter)
            decisions = [(d.spec, d.allowed) for d in call.decisions]

    assert decisions == [(spec, True) for spec, _ in ORDER]
    assert inside == [
        (1, 0),
        (300, 0),  # a rate limit's hold is charged into the limit itself
        (Decimal("0.00"), Decimal("0.50")),
        (1, 0),
        (1, 0),
        (300, 0),
        (Decimal("0.00"), Decimal("0.50")),
        (1, 0),
    ]


async def test_async_entering_charges_every_limit_of_the_upstream_and_the_client(
    target: Target,
) -> None:
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)
        async with _async_call(limiter) as call:
            inside = await _async_usage(limiter)
        after = await _async_usage(limiter)

    assert [d.allowed for d in call.decisions] == [True] * len(ORDER)
    assert inside[1] == (300, 0)
    assert inside[3] == (1, 0)
    assert after[3] == (0, 0)  # the lease came back
    assert after[2] == (Decimal("0.50"), Decimal("0.00"))  # no actual: the estimate


@pytest.mark.parametrize("denier", list(FILL))
def test_a_denial_names_the_denying_limit_and_charges_nothing(target: Target, denier: str) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        FILL[denier](limiter)
        before = _usage(limiter)
        with pytest.raises(LimitExceeded) as caught, _call(limiter):
            pytest.fail("a denied call's block must not run")
        after = _usage(limiter)

    assert caught.value.limit == DENIER[denier]
    assert not caught.value.decision.allowed
    assert after == before


@pytest.mark.parametrize("denier", ["upstream tokens", "client in_flight"])
async def test_async_a_denial_names_the_denying_limit_and_charges_nothing(
    target: Target, denier: str
) -> None:
    with target.sync_client() as sync_client:
        FILL[denier](Limiter(sync_client))
        before = _usage(Limiter(sync_client))
        async with target.async_client() as client:
            limiter = AsyncLimiter(client)
            with pytest.raises(LimitExceeded) as caught:
                async with _async_call(limiter):
                    pytest.fail("a denied call's block must not run")
        after = _usage(Limiter(sync_client))

    assert caught.value.limit == DENIER[denier]
    assert after == before


def test_wait_gives_up_at_its_timeout_having_charged_nothing(server: Server) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        FILL["upstream in_flight"](limiter)
        before = _usage(limiter)
        with pytest.raises(LimitExceeded), _call(limiter, wait=True, wait_timeout=0.2):
            pytest.fail("never admitted")
        after = _usage(limiter)

    assert after == before


async def test_async_wait_is_admitted_once_the_denying_lease_comes_back(server: Server) -> None:
    # A short lease, so that the retry a denial names is soon.
    single = Upstream(
        "single",
        requests=RPM,
        in_flight=Concurrency(name="one", limit=1, lease=timedelta(seconds=0.2)),
    )
    async with server.async_client() as client:
        limiter = AsyncLimiter(client)
        entered = asyncio.Event()
        leave = asyncio.Event()

        async def first() -> None:
            async with limiter.call(single):
                entered.set()
                await leave.wait()

        holder = asyncio.ensure_future(first())
        await entered.wait()
        with pytest.raises(LimitExceeded) as refused:
            async with limiter.call(single):
                pytest.fail("one call in flight at most")
        waiting = asyncio.ensure_future(_enter_waiting(limiter, single))
        await asyncio.sleep(0)
        leave.set()
        await holder
        admitted = await waiting

    assert refused.value.limit == single.in_flight[0]
    assert admitted


async def _enter_waiting(limiter: AsyncLimiter, upstream: Upstream) -> bool:
    async with limiter.call(upstream, wait=True, wait_timeout=30) as call:
        return all(d.allowed for d in call.decisions)


# -- the block's end --------------------------------------------------------------


def test_recorded_actuals_are_charged_even_past_the_limit(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        with _call(limiter, tokens=300, cost="0.50") as call:
            call.settle(tokens=2000, cost=Decimal("3.25"))
        after = _usage(limiter)

    assert [(s.status, s.charged) for s in call.settlements] == [
        ("settled", 2000),
        ("settled", Decimal("3.25")),
        ("settled", 2000),
        ("settled", Decimal("3.25")),
    ]
    assert after == [
        (1, 0),
        (2000, 0),
        (Decimal("3.25"), Decimal("0.00")),
        (0, 0),
        (1, 0),
        (2000, 0),
        (Decimal("3.25"), Decimal("0.00")),
        (0, 0),
    ]


def test_a_normal_exit_charges_the_estimate_of_what_was_not_settled(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        with _call(limiter, tokens=300, cost="0.50") as call:
            call.settle(tokens=120)
        after = _usage(limiter)

    assert [s.charged for s in call.settlements] == [120, Decimal("0.50"), 120, Decimal("0.50")]
    assert [usage[0] for usage in after] == [1, 120, Decimal("0.50"), 0, 1, 120, Decimal("0.50"), 0]


def test_a_raising_block_releases_unsettled_holds_and_keeps_the_request_counted(
    target: Target,
) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)
        call = _call(limiter, tokens=300, cost="0.50")
        with pytest.raises(Boom):
            _billed_then_failed(call)
        after = _usage(limiter)

    assert [s.status for s in call.settlements] == ["released", "settled", "released", "settled"]
    assert after == [
        (1, 0),
        (0, 0),
        (Decimal("0.10"), Decimal("0.00")),
        (0, 0),
        (1, 0),
        (0, 0),
        (Decimal("0.10"), Decimal("0.00")),
        (0, 0),
    ]


def _billed_then_failed(call: Any) -> None:
    with call:
        call.settle(cost=Decimal("0.10"))  # the provider billed, then failed
        raise Boom


async def test_async_a_raising_block_releases_holds_and_returns_leases(target: Target) -> None:
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)
        with pytest.raises(Boom):
            async with _async_call(limiter):
                raise Boom
        after = await _async_usage(limiter)

    assert [usage[0] for usage in after] == [1, 0, Decimal("0.00"), 0, 1, 0, Decimal("0.00"), 0]
    assert all(not held for _, held in after)


async def test_async_cancelled_block_releases_holds_and_returns_leases_first(
    target: Target,
) -> None:
    async with target.async_client() as client:
        # A clock that stands still: the upstream's and the client's request
        # counts are per minute, and eight reads on the server's clock could
        # straddle a minute's end (one CI run read the client's as 0).
        limiter = AsyncLimiter(client, time_source="client", clock=Clock())
        inside = asyncio.Event()

        async def stuck() -> None:
            async with _async_call(limiter):
                inside.set()
                await asyncio.Event().wait()

        task = asyncio.ensure_future(stuck())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Read at once: the end must have reached the server before the
        # cancellation did, not expire later by its TTL.
        after = await _async_usage(limiter)

    assert [usage[0] for usage in after] == [1, 0, Decimal("0.00"), 0, 1, 0, Decimal("0.00"), 0]
    assert all(not held for _, held in after)


def test_the_providers_figures_are_applied_after_the_settles(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=Clock())
        with _call(limiter, tokens=300) as call:
            call.settle(tokens=600)
            call.observe(
                {"x-ratelimit-limit-tokens": "1600", "x-ratelimit-remaining-tokens": "700"}
            )
        tokens = limiter.peek(TPM, UPSTREAM.name, 0).used

    # Settled to 600 first; then 1600 - 600 = 1000 left by the fleet's count,
    # and the provider says 700: 300 were used outside the fleet.
    assert [c.granted for c in call.corrections] == [300]
    assert tokens == 900


def test_more_room_reported_than_counted_changes_nothing_now(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=Clock())
        with _call(limiter, tokens=300) as call:
            call.observe(
                {
                    "x-ratelimit-limit-tokens": "1600",
                    "x-ratelimit-remaining-tokens": "1590",
                    "x-ratelimit-limit-requests": "3",
                    "x-ratelimit-remaining-requests": "2",
                }
            )
        used = [limiter.peek(spec, UPSTREAM.name, 0).used for spec in (RPM, TPM)]

    assert [c.granted for c in call.corrections] == [0, 0]
    assert used == [1, 300]


def test_observe_never_raises_on_bad_headers_and_reads_nothing_from_them(server: Server) -> None:
    bad: list[Any] = [
        None,
        42,
        {"x-ratelimit-remaining-tokens": "-5"},
        {"x-ratelimit-remaining-tokens": "1e400"},
        {"retry-after": "soon"},
        [("x-ratelimit-remaining-requests", "\x00")],
        {"x-ratelimit-remaining-tokens": "9" * 10_000},
    ]
    with server.client() as client:
        limiter = Limiter(client)
        with _call(limiter) as call:
            reports = [call.observe(headers) for headers in bad]
        used = limiter.peek(TPM, UPSTREAM.name, 0).used

    assert all(report.retry_after is None for report in reports)
    assert all(reading.remaining is None for r in reports for reading in r.readings)
    assert call.corrections == []
    assert used == 300


# -- pauses ------------------------------------------------------------------------


def test_backoff_denies_every_workers_call_until_the_pause_ends(target: Target) -> None:
    clock = Clock()
    with target.sync_client() as client:
        worker = Limiter(client, time_source="client", clock=clock)
        other = Limiter(client, time_source="client", clock=clock)
        with _call(worker, tokens=100) as call:
            call.backoff(30)
        before = _usage(other)
        with pytest.raises(LimitExceeded) as caught, _call(other, tokens=100):
            pytest.fail("paused")
        during = _usage(other)
        clock.advance(29)
        with pytest.raises(LimitExceeded) as later, _call(other, tokens=100):
            pytest.fail("paused")
        clock.advance(1)
        with _call(other, tokens=100) as admitted:
            pass

    assert caught.value.limit == RPM  # the first guarded limit in the acquire's order
    assert caught.value.decision.retry_after == timedelta(seconds=30)
    assert later.value.decision.retry_after == timedelta(seconds=1)
    assert during == before  # a paused call charges nothing
    assert all(d.allowed for d in admitted.decisions)


async def test_async_backoff_denies_the_next_call_for_every_worker(target: Target) -> None:
    clock = Clock()
    async with target.async_client() as client:
        limiter = AsyncLimiter(client, time_source="client", clock=clock)
        async with _async_call(limiter) as call:
            call.observe({"retry-after": "12"})
            call.backoff()
        with pytest.raises(LimitExceeded) as caught:
            async with _async_call(limiter):
                pytest.fail("paused")

    assert caught.value.decision.retry_after == timedelta(seconds=12)


def test_backoff_takes_retry_after_from_the_headers_and_cuts_it_at_an_hour(
    server: Server,
) -> None:
    clock = Clock()
    with server.client() as client:
        limiter = Limiter(client, time_source="client", clock=clock)
        with _call(limiter) as call:
            with pytest.raises(InvalidInput):
                call.backoff()  # nothing observed: no Retry-After to take
            with pytest.raises(InvalidInput):
                call.backoff(timedelta(hours=1, seconds=1))
            call.observe({"retry-after": "86400"})
            call.backoff()
        with pytest.raises(LimitExceeded) as caught, _call(limiter):
            pytest.fail("paused")

    assert caught.value.decision.retry_after == timedelta(hours=1)


def test_backoff_pauses_only_the_quota_the_headers_show_exhausted(target: Target) -> None:
    # Two views of the same upstream: same name, same limits, so same keys.
    requests_only = Upstream(UPSTREAM.name, requests=RPM)
    tokens_only = Upstream(UPSTREAM.name, tokens=TPM)
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=Clock())
        with _call(limiter) as call:
            call.observe({"x-ratelimit-remaining-tokens": "0", "retry-after": "20"})
            call.backoff()
        with limiter.call(requests_only) as by_requests:
            pass
        with pytest.raises(LimitExceeded) as caught, limiter.call(tokens_only, tokens=1):
            pytest.fail("tokens are paused")

    assert all(d.allowed for d in by_requests.decisions)
    assert caught.value.limit == TPM


def test_a_pause_only_extends_and_clear_pause_ends_it(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=Clock())
        until = limiter.pause(UPSTREAM, timedelta(seconds=60))
        kept = limiter.pause(UPSTREAM, 5)
        extended = limiter.pause(UPSTREAM, 90)
        with pytest.raises(LimitExceeded), _call(limiter):
            pytest.fail("paused")
        limiter.clear_pause(UPSTREAM)
        with _call(limiter) as call:
            pass

    assert kept == until
    assert extended - until == timedelta(seconds=30)
    assert all(d.allowed for d in call.decisions)


async def test_async_pause_by_quota_and_clear_pause(target: Target) -> None:
    async with target.async_client() as client:
        limiter = AsyncLimiter(client, time_source="client", clock=Clock())
        await limiter.pause(UPSTREAM, 60, quota="tokens")
        async with limiter.call(Upstream(UPSTREAM.name, requests=RPM)) as by_requests:
            pass
        with pytest.raises(LimitExceeded) as caught:
            async with _async_call(limiter):
                pytest.fail("tokens are paused")
        await limiter.clear_pause(UPSTREAM)
        async with _async_call(limiter) as call:
            pass

    assert all(d.allowed for d in by_requests.decisions)
    assert caught.value.limit == TPM
    assert all(d.allowed for d in call.decisions)


def test_reset_of_a_limit_does_not_clear_its_pause(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=Clock())
        limiter.pause(UPSTREAM, 60)
        for spec in (RPM, TPM):
            limiter.reset(spec, UPSTREAM.name)
        with pytest.raises(LimitExceeded), _call(limiter):
            pytest.fail("still paused")


def test_pause_refuses_bad_lengths_and_quotas_before_sending(server: Server) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        for length in (0, -1, 3601, timedelta(0), timedelta(hours=2), float("nan"), True, "5"):
            with pytest.raises(InvalidInput):
                limiter.pause(UPSTREAM, length)  # type: ignore[arg-type]
        for quota in ("spend", "in_flight", "", 1):
            with pytest.raises(InvalidInput):
                limiter.pause(UPSTREAM, 5, quota=quota)  # type: ignore[arg-type]
        written = client.dbsize()

    assert written == 0


# -- what a window learns from the provider ---------------------------------------


def _learn(limiter: Limiter, remaining: int, tokens: int = 100) -> Any:
    """One call of ``tokens`` tokens, whose response reports ``remaining`` tokens left."""
    with _call(limiter, tokens=tokens) as call:
        call.observe(
            {"x-ratelimit-limit-tokens": "1600", "x-ratelimit-remaining-tokens": str(remaining)}
        )
    return call


def _opened(limiter: Limiter) -> int:
    """What the window a call opens now held before that call's own tokens."""
    with _call(limiter, tokens=100) as call:
        tokens: int = call.decisions[1].used
    return tokens - 100


def test_outside_use_learned_in_a_window_opens_the_next_already_charged(target: Target) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=clock)
        learned = _learn(limiter, remaining=1000)  # fleet: 1500 left; 500 used outside
        clock.advance(60)
        opened = _opened(limiter)

    assert [c.granted for c in learned.corrections] == [500]
    assert opened == 500


@pytest.mark.parametrize(("spare", "forgotten"), [(40, 40), (300, STEP)])
def test_a_window_that_only_showed_spare_room_opens_the_next_with_less(
    target: Target, spare: int, forgotten: int
) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=clock)
        _learn(limiter, remaining=1000)  # 500 learned
        clock.advance(60)
        # Opens with 500, adds 100: 1000 left by the count; the provider
        # reports more, twice, the least of which is what counts.
        _learn(limiter, remaining=1000 + spare + 7)
        _learn(limiter, remaining=900 + spare)
        clock.advance(60)
        opened = _opened(limiter)

    assert opened == 500 - forgotten


def test_a_shortfall_anywhere_in_a_window_keeps_all_it_learned(target: Target) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=clock)
        _learn(limiter, remaining=1000)  # 500 learned
        clock.advance(60)
        _learn(limiter, remaining=1300)  # spare room of 300 ...
        _learn(limiter, remaining=850)  # ... then 50 short of the count's 900
        clock.advance(60)
        opened = _opened(limiter)

    assert opened == 550


@pytest.mark.parametrize("idle", [1, 3])
def test_windows_without_a_guarded_call_forget_a_sixteenth_each(target: Target, idle: int) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=clock)
        _learn(limiter, remaining=1000)  # 500 learned
        clock.advance(60 * (1 + idle))
        opened = _opened(limiter)

    assert opened == 500 - idle * STEP


@pytest.mark.parametrize(("forget", "opened"), [(False, 500), (True, 0)])
def test_clear_pause_forgets_what_was_learned_only_when_asked(
    target: Target, forget: bool, opened: int
) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=clock)
        _learn(limiter, remaining=1000)
        limiter.pause(UPSTREAM, 5)
        limiter.clear_pause(UPSTREAM, forget=forget)
        clock.advance(60)
        found = _opened(limiter)

    assert found == opened


# -- one server: one script; a server refusing it: the saga -------------------------


def _same_node_subjects(cluster: Cluster) -> tuple[int, str, str]:
    """A node and two subjects whose keys are in different slots that it owns."""
    with cluster.nodes[0].client() as client:
        slot_map = client.execute_command("CLUSTER", "SLOTS")
    ports = [node.port for node in cluster.nodes]
    owner = {
        slot: ports.index(int(primary[1]))
        for first, last, primary, *_ in slot_map
        for slot in range(first, last + 1)
    }

    def place(subject: str) -> tuple[int, int]:
        slot = key_slot(f"atomlimit:v1:{{s:{subject}}}:fw:x".encode())
        return owner[slot], slot

    node, slot = place("upstream-0")
    for n in range(1, 1_000):
        other = f"client-{n}"
        other_node, other_slot = place(other)
        if other_node == node and other_slot != slot:
            return node, "upstream-0", other
    raise AssertionError("no second subject on the same node")


def test_a_server_refusing_a_script_across_slots_falls_back_to_the_saga(
    cluster: Cluster,
) -> None:
    index, upstream_name, client_name = _same_node_subjects(cluster)
    upstream = Upstream(upstream_name, requests=RPM, tokens=TPM, in_flight=FLIGHT)
    limits = ClientLimits(tokens=CTPM)
    # A plain client on one node: it holds both subjects' slots, but the
    # node refuses one script naming keys of two slots.
    with cluster.nodes[index].client() as client:
        limiter = Limiter(client)
        with limiter.call(upstream, client=client_name, tokens=300, limits=limits) as first:
            first.settle(tokens=100)
        with limiter.call(upstream, client=client_name, tokens=300, limits=limits) as second:
            pass
        with (
            pytest.raises(LimitExceeded) as caught,
            limiter.call(upstream, client=client_name, tokens=300, limits=limits),
        ):
            pytest.fail("the client's tokens are spent")
        used = [
            limiter.peek(RPM, upstream_name, 0).used,
            limiter.peek(TPM, upstream_name, 0).used,
            limiter.peek(FLIGHT, upstream_name, 1).used,
            limiter.peek(CTPM, client_name, 0).used,
        ]

    assert all(d.allowed for d in first.decisions + second.decisions)
    assert caught.value.limit == CTPM
    assert used == [2, 400, 0, 400]  # the denial's upstream charge was undone


# -- round trips ----------------------------------------------------------------------


@contextmanager
def _counted(server: Server) -> Iterator[StallingProxy]:
    """A proxy counting round trips to ``server``.

    redis-py writes a pipeline's commands one ``sendall`` each, and the
    server may answer the first before the last has left the client. Held
    back a little, no reply reaches the client while it is still writing,
    so a batch is one exchange, and only a client that waited for a reply
    before writing again makes a second.
    """
    with StallingProxy("127.0.0.1", server.port) as proxy:
        proxy.delay = 0.05
        yield proxy


def _load(limiter: Limiter) -> None:
    # One call first: scripts loaded and the connection made, so only the
    # call under test is counted.
    with _call(limiter) as call:
        call.settle(tokens=10, cost=Decimal("0.01"))
        call.observe({"x-ratelimit-limit-tokens": "1600", "x-ratelimit-remaining-tokens": "1590"})


def test_a_call_is_planned_once_per_upstream_client_and_timeout(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = RateLimit(name="p-rpm", limit=100, window="minute")
    tokens = RateLimit(name="p-tpm", limit=10**6, window="minute")
    spend = SpendCap(name="p-usd", limit=Decimal(100), currency="USD", window="day")
    upstream = Upstream("p:model", requests=requests, tokens=tokens)
    own = ClientLimits(tokens=tokens, spend=spend)
    planned: list[int] = []
    checked = model_call.checked_items

    def counting(*args: Any) -> Any:
        planned.append(1)
        return checked(*args)

    def call(limiter: Limiter, tokens: Any, cost: Any, **options: Any) -> Any:
        return limiter.call(upstream, client="c", tokens=tokens, cost=cost, limits=own, **options)

    def used(limiter: Limiter) -> list[Any]:
        return [
            limiter.peek(tokens, "p:model", 0).used,
            limiter.peek(tokens, "c", 0).used,
            limiter.peek(spend, "c", 0).used,
        ]

    monkeypatch.setattr(model_call, "checked_items", counting)
    with server.client() as client:
        limiter = Limiter(client)
        with call(limiter, 300, Decimal("0.50")):
            pass
        with call(limiter, 100, Decimal("0.20")):
            pass
        assert len(planned) == 1
        # Each call's own tokens and cost, though its plan was kept.
        assert used(limiter) == [400, 400, Decimal("0.70")]

        # A bad amount is refused as on a first call, before anything is sent.
        fresh = Limiter(client)
        for bad in ((-1, Decimal(1)), (300, Decimal(-1)), (10**30, 0), ("300", 0), (1, 0.5)):
            with pytest.raises(InvalidInput) as kept:
                call(limiter, *bad)
            with pytest.raises(InvalidInput) as first:
                call(fresh, *bad)
            assert str(kept.value) == str(first.value)
        assert used(limiter) == [400, 400, Decimal("0.70")]

        # Another client, timeout or upstream is a plan of its own.
        with limiter.call(upstream, client="d", tokens=50, limits=own):
            pass
        assert limiter.peek(tokens, "d", 0).used == 50
        with call(limiter, 1, 0, timeout=timedelta(seconds=30)):
            pass
        with limiter.call(Upstream("p:model", requests=requests), tokens=999) as narrower:
            assert [d.spec for d in narrower.decisions] == [requests]
        assert len(planned) == 5  # the fresh limiter's first, then these three
        assert used(limiter) == [451, 401, Decimal("0.70")]

        # Plans are kept for a bounded number of shapes.
        for n in range(300):
            limiter.call(upstream, client=f"c-{n}", limits=own)
        assert len(limiter._shapes._known) <= 256


def test_an_allowed_call_is_two_round_trips_on_one_server(server: Server) -> None:
    with _counted(server) as proxy, proxy.client() as client, server.client() as direct:
        limiter = Limiter(client)
        _load(limiter)
        runs, exchanges = evalsha_runs(direct), proxy.exchanges
        with _call(limiter) as call:
            call.settle(tokens=120, cost=Decimal("0.20"))
            call.observe(
                {"x-ratelimit-limit-tokens": "1600", "x-ratelimit-remaining-tokens": "1000"}
            )
        scripts = evalsha_runs(direct) - runs
        trips = proxy.exchanges - exchanges

    # The acquire, then 4 settles, 2 leases returned and 1 correction.
    assert scripts == 1 + 4 + 2 + 1
    assert trips == 2


async def test_async_an_allowed_call_is_two_round_trips_on_one_server(server: Server) -> None:
    with _counted(server) as proxy, server.client() as direct:
        async with proxy.async_client() as client:
            limiter = AsyncLimiter(client)
            async with _async_call(limiter) as warm:
                warm.settle(tokens=10, cost=Decimal("0.01"))
                warm.observe({"x-ratelimit-remaining-tokens": "1590"})
            runs, exchanges = evalsha_runs(direct), proxy.exchanges
            async with _async_call(limiter) as call:
                call.settle(tokens=120, cost=Decimal("0.20"))
                call.observe({"x-ratelimit-remaining-tokens": "1000"})
            scripts = evalsha_runs(direct) - runs
            trips = proxy.exchanges - exchanges

    assert scripts == 1 + 4 + 2 + 1
    assert trips == 2


# -- concurrency: holds against a shared token limit ---------------------------------


_TASKS = 100
_LIMIT = 20_000
SHARED = Upstream("shared", tokens=RateLimit(name="shared-tpm", limit=_LIMIT, window="minute"))


async def _budgeted(
    limiter: AsyncLimiter, plan: list[tuple[int, int]], settled: list[int]
) -> list[int]:
    """Admit through call(); return what the limit held at each admission."""
    seen: list[int] = []

    async def one(estimate: int, actual: int) -> None:
        try:
            async with limiter.call(SHARED, tokens=estimate) as call:
                seen.append(call.decisions[0].used)  # settled + every open hold, own included
                await asyncio.sleep(0)
                call.settle(tokens=actual)
            settled.append(actual)
        except LimitExceeded:
            pass

    await asyncio.gather(*(one(estimate, actual) for estimate, actual in plan))
    return seen


async def _naive(limiter: AsyncLimiter, plan: list[tuple[int, int]]) -> list[int]:
    """Peek for room, call the provider, charge the actual afterwards."""
    seen: list[int] = []
    open_estimates = [0]

    async def one(estimate: int, actual: int) -> None:
        spec = SHARED.tokens[0]
        decision = await limiter.peek(spec, SHARED.name, estimate)
        if not decision.allowed:
            return
        open_estimates[0] += estimate
        seen.append(decision.used + open_estimates[0])  # the same figure as above
        await asyncio.sleep(0)
        await limiter.hit(spec, SHARED.name, actual)
        open_estimates[0] -= estimate

    await asyncio.gather(*(one(estimate, actual) for estimate, actual in plan))
    return seen


def _plan(seed: int) -> list[tuple[int, int]]:
    draw = random.Random(seed)
    plan = []
    for _ in range(_TASKS):
        estimate = draw.randrange(200, 800)
        plan.append((estimate, int(estimate * draw.uniform(0.3, 1.6))))
    return plan


def _never_past_the_limit(seen: list[int]) -> bool:
    """What each admission saw committed (settled and held, its own
    estimate included) was within the limit, every time."""
    return max(seen) <= _LIMIT


async def test_concurrent_calls_never_admit_past_the_token_limit(server: Server) -> None:
    plan = _plan(11)
    async with server.async_client() as client:
        limiter = AsyncLimiter(client, time_source="client", clock=Clock())
        settled: list[int] = []
        seen = await _budgeted(limiter, plan, settled)
        used = (await limiter.peek(SHARED.tokens[0], SHARED.name, 0)).used

    assert len(seen) > 10  # contended, and yet many were admitted
    assert len(seen) < _TASKS
    assert _never_past_the_limit(seen)
    assert used == sum(settled)  # each admitted call charged its actual, nothing else


async def test_peeking_then_charging_admits_past_the_token_limit(server: Server) -> None:
    plan = _plan(11)
    async with server.async_client() as client:
        limiter = AsyncLimiter(client, time_source="client", clock=Clock())
        seen = await _naive(limiter, plan)

    assert len(seen) == _TASKS  # every task peeked before any charged
    assert not _never_past_the_limit(seen)


# -- slow start ----------------------------------------------------------------------

SLOW_RPM = RateLimit(name="slow-rpm", limit=1_000, window="minute")


def _upstream(slow_start: bool = True) -> Upstream:
    # A name of its own per test: the cluster keeps its keys between tests.
    return Upstream(
        f"openai:{uuid.uuid4().hex}", requests=SLOW_RPM, tokens=TPM, slow_start=slow_start
    )


def _slow(limiter: Limiter, upstream: Upstream, tokens: int = 100) -> Any:
    with limiter.call(upstream, tokens=tokens) as call:
        pass
    return call


@pytest.mark.parametrize("slow_start", [True, False], ids=["slow-start", "control"])
def test_slow_start_holds_back_half_of_the_first_window_until_the_provider_reports(
    target: Target, slow_start: bool
) -> None:
    clock = Clock()
    upstream = _upstream(slow_start)
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=clock)
        with limiter.call(upstream, tokens=100) as first:
            pass
        refusing = pytest.raises(LimitExceeded) if slow_start else contextlib.nullcontext()
        with refusing, limiter.call(upstream, tokens=800):
            pass
        with limiter.call(upstream, tokens=100) as reporting:
            reporting.observe({"x-ratelimit-remaining-tokens": "1600"})
        after = limiter.peek(TPM, upstream.name, 0)

    held_back = TPM.limit // 2 if slow_start else 0
    assert first.decisions[1].used == held_back + 100
    # The first report gives the half back; the provider's 1600 left is more
    # than the fleet counts, so nothing is charged for it.
    assert after.used == (200 if slow_start else 1000)


def test_slow_start_is_the_first_window_only(target: Target) -> None:
    clock = Clock()
    with target.sync_client() as client:
        limiter = Limiter(client, time_source="client", clock=clock)
        upstream = _upstream()
        _slow(limiter, upstream)  # opens the first window, never reports
        clock.advance(60)
        second = _slow(limiter, upstream)

    assert second.decisions[1].used == 100


SWEPT_RPM = RateLimit(name="swept-rpm", limit=10**6, window="day")
SWEPT_TPM = RateLimit(name="swept-tpm", limit=10**9, window="day")
SWEPT_FLIGHT = Concurrency(name="swept-flight", limit=1000)
SWEPT = Upstream("swept:model", requests=SWEPT_RPM, tokens=SWEPT_TPM, in_flight=SWEPT_FLIGHT)


TURNS = 20


async def _cancelled_at_every_turn(limiter: AsyncLimiter) -> tuple[int, int, int]:
    """Calls cancelled after 0, 1, 2, ... turns of the event loop: first
    from their start (while the acquire is queued, on the wire, or in the
    block, which waits), then from the end of their block (while the end is
    queued or on the wire). Returns (tokens used, tokens held, leases out)
    once all are done."""

    async with limiter.call(SWEPT, tokens=1000) as call:
        call.settle(tokens=700)  # loads the scripts, so a cancellation meets the call itself

    async def waits() -> None:
        async with limiter.call(SWEPT, tokens=1000):
            await asyncio.Event().wait()  # cancelled here: its hold is released

    async def ends(ended: asyncio.Event) -> None:
        async with limiter.call(SWEPT, tokens=1000) as call:
            call.settle(tokens=700)
            ended.set()

    for turns in range(TURNS):
        task = asyncio.ensure_future(waits())
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    for turns in range(TURNS):
        ended = asyncio.Event()
        task = asyncio.ensure_future(ends(ended))
        await ended.wait()
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    tokens = await limiter.peek(SWEPT_TPM, SWEPT.name, 0)
    leases = (await limiter.peek(SWEPT_FLIGHT, SWEPT.name, 1)).used
    return tokens.used, tokens.held, leases


async def test_async_a_call_cancelled_at_any_point_leaves_nothing_held(server: Server) -> None:
    # Whenever the cancellation lands, the call either never reached the
    # server or ran to its end: an acquire on the wire finishes and gives
    # its hold and lease back; an end on its way is still sent. So no hold
    # and no lease is left for its TTL to clear, and exactly the calls
    # whose block ended are charged their 700.
    async with AsyncLimiter.from_url(server.url) as limiter:
        await limiter.hit(SWEPT_RPM, "warm-up")
        used, held, leases = await _cancelled_at_every_turn(limiter)

    assert (held, leases) == (0, 0)
    assert used == 700 * (TURNS + 1)  # every call whose block ended settled; no other did


async def test_async_without_holding_cancellation_back_a_cancelled_call_leaves_holds(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control: the same calls, with the runner told nothing, so a
    # cancellation gives up the call's reply or its unsent end at once.
    monkeypatch.setattr(async_limiter, "Steadfast", Careless)
    monkeypatch.setattr(async_calls, "Steadfast", Careless)
    async with AsyncLimiter.from_url(server.url) as limiter:
        await limiter.hit(SWEPT_RPM, "warm-up")
        _, held, leases = await _cancelled_at_every_turn(limiter)

    assert (held, leases) != (0, 0)

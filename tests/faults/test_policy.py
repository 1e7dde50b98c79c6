"""Failure policy: what each limit decides when the server cannot be asked.

The server is gone in these tests the plainest way: the limiter points at a
loopback port nothing listens on, so every connection is refused. Servers
that die, stall and come back under load are in tests/faults/test_outages.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis
import redis.asyncio
from conftest import ServerPool
from proxy import StallingProxy
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Server, free_port, start_server

from atomlimit import (
    AsyncLimiter,
    BackendError,
    ClientLimits,
    Concurrency,
    Hit,
    InvalidInput,
    Limiter,
    LimitExceeded,
    RateLimit,
    SpendCap,
    UnsafeServer,
    Upstream,
)
from atomlimit._codecs import codec_of
from atomlimit._scripts import all_names, script

ALLOW = RateLimit(name="allow", limit=10, window="minute", on_backend_error="allow")
DENY = RateLimit(name="deny", limit=10, window="minute", on_backend_error="deny")
RAISE = RateLimit(name="raise", limit=10, window="minute")
CAP = SpendCap(
    name="ai",
    limit=Decimal("100.00"),
    currency="AUD",
    window="day",
    on_backend_error="allow_unmetered_spend",
)
SLOTS = Concurrency(name="openai", limit=2, on_backend_error="allow")
NO_RETRY = Retry(NoBackoff(), 0)
NO_ASYNC_RETRY = AsyncRetry(NoBackoff(), 0)


def dead_client() -> redis.Redis:
    """A client of a loopback port nothing listens on: every connection is refused."""
    return redis.Redis(host="127.0.0.1", port=free_port(), retry=NO_RETRY)


def dead_async_client() -> redis.asyncio.Redis:
    return redis.asyncio.Redis(host="127.0.0.1", port=free_port(), retry=NO_ASYNC_RETRY)


@pytest.fixture
def down() -> Iterator[Limiter]:
    with dead_client() as client:
        yield Limiter(client)


# --------------------------------------------------------------------------
# The setting
# --------------------------------------------------------------------------


def test_every_spec_raises_by_default() -> None:
    specs = [
        RateLimit(name="a", limit=1, window="day"),
        SpendCap(name="a", limit=Decimal(1), currency="AUD", window="day"),
        Concurrency(name="a", limit=1),
    ]

    assert [spec.on_backend_error for spec in specs] == ["raise"] * 3


def test_a_spend_cap_refuses_allow_and_names_the_word_that_consents() -> None:
    with pytest.raises(InvalidInput) as caught:
        SpendCap(
            name="ai", limit=Decimal(1), currency="AUD", window="day", on_backend_error="allow"
        )

    message = str(caught.value)
    assert message.startswith("SpendCap.on_backend_error:")
    assert "unrecorded and uncapped" in message
    assert "on_backend_error='allow_unmetered_spend'" in message


@pytest.mark.parametrize("value", ["allow_unmetered_spend", "Allow", "", None, True, 1])
def test_a_rate_limit_takes_raise_deny_or_allow_only(value: object) -> None:
    with pytest.raises(InvalidInput, match=r"RateLimit\.on_backend_error: must be 'raise', 'deny'"):
        RateLimit(name="a", limit=1, window="day", on_backend_error=value)


def test_each_spec_takes_its_own_word_for_allow() -> None:
    cap = SpendCap(
        name="a",
        limit=Decimal(1),
        currency="AUD",
        window="day",
        on_backend_error="allow_unmetered_spend",
    )
    slots = Concurrency(name="a", limit=1, on_backend_error="allow")

    assert cap.on_backend_error == "allow_unmetered_spend"
    assert slots.on_backend_error == "allow"


# --------------------------------------------------------------------------
# raise: the default, as before
# --------------------------------------------------------------------------


def test_the_default_raises_backend_error_from_every_call(down: Limiter) -> None:
    calls = [
        lambda: down.hit(RAISE, "s"),
        lambda: down.peek(RAISE, "s"),
        lambda: down.refund(RAISE, "s", 1),
        lambda: down.reset(RAISE, "s"),
        lambda: down.acquire([Hit(RAISE, "s"), Hit(RAISE, "t")]),
        lambda: down.hit_many([Hit(RAISE, "s")]),
        lambda: down.reserve(
            SpendCap(name="c", limit=Decimal(1), currency="AUD", window="day"), "s", 1
        ),
        lambda: down.lease(Concurrency(name="c", limit=1), "s"),
    ]
    for call in calls:
        with pytest.raises(BackendError):
            call()


@pytest.mark.parametrize("own", [False, True], ids=["upstream only", "with a client's"])
def test_a_model_call_on_no_server_raises_unapplied_naming_what_to_send_again(
    down: Limiter, own: bool
) -> None:
    tokens = RateLimit(name="raise-tokens", limit=100, window="minute")
    upstream = Upstream("u", requests=RAISE, tokens=tokens)
    limits = ClientLimits(tokens=tokens) if own else None
    with (
        pytest.raises(BackendError) as failed,
        down.call(upstream, client="c", tokens=2, limits=limits),
    ):
        pass
    # Refused before it was written: nothing applied. An upstream's limits
    # alone are one script with no record, which nobody could send again;
    # with a client's they are recorded under the acquire's id.
    assert failed.value.applied == "no"
    assert (failed.value.request_id is not None) == own


def test_a_model_call_on_no_server_is_decided_locally_on_its_own_tokens(down: Limiter) -> None:
    from fractions import Fraction

    tokens = RateLimit(
        name="local-tokens", limit=100, window="minute", on_backend_error="local",
        local_share=Fraction(1, 2),
    )  # fmt: skip
    upstream = Upstream("u", tokens=tokens)
    with down.call(upstream, tokens=30) as first:
        assert first.decisions[0].degraded
        assert first.decisions[0].granted == 30
    # 30 of the local 50 are taken; the same call of 30 more no longer fits.
    with pytest.raises(LimitExceeded), down.call(upstream, tokens=30):
        pass
    with down.call(upstream, tokens=20) as last:
        assert last.decisions[0].granted == 20


async def test_async_a_model_call_on_no_server_raises_unapplied() -> None:
    async with dead_async_client() as client:
        limiter = AsyncLimiter(client)
        with pytest.raises(BackendError) as failed:
            async with limiter.call(Upstream("u", requests=RAISE), tokens=2):
                pass
        assert failed.value.applied == "no"
        assert failed.value.request_id is None


async def test_async_the_default_raises_backend_error() -> None:
    async with dead_async_client() as client:
        limiter = AsyncLimiter(client)
        with pytest.raises(BackendError):
            await limiter.hit(RAISE, "s")
        with pytest.raises(BackendError):
            await limiter.acquire([Hit(RAISE, "s")])


# --------------------------------------------------------------------------
# allow and deny
# --------------------------------------------------------------------------


def test_allow_admits_a_degraded_decision_with_its_cause(down: Limiter) -> None:
    before = datetime.now(UTC)
    decision = down.hit(ALLOW, "s", cost=3)

    assert decision.allowed
    assert decision.degraded
    assert isinstance(decision.cause, BackendError)
    assert isinstance(decision.cause.__cause__, redis.exceptions.ConnectionError)
    assert (decision.used, decision.remaining, decision.granted, decision.held) == (0, 10, 3, 0)
    assert decision.limit == 10
    assert decision.retry_after is None
    assert decision.spec is ALLOW
    assert before <= decision.reset_at <= datetime.now(UTC)


def test_deny_refuses_a_degraded_decision_that_grants_nothing(down: Limiter) -> None:
    decision = down.hit(DENY, "s", cost=3)

    assert not decision.allowed
    assert decision.degraded
    assert (decision.used, decision.remaining, decision.granted) == (0, 0, 0)
    assert decision.retry_after is None


def test_a_spend_cap_that_consented_admits_unmetered_spend_in_decimals(down: Limiter) -> None:
    decision = down.hit(CAP, "s", cost=Decimal("0.37"))

    assert decision.allowed
    assert decision.degraded
    assert decision.granted == Decimal("0.37")
    assert decision.remaining == Decimal("100.00")
    assert decision.used == Decimal(0)


def test_peek_and_refund_follow_the_policy_and_grant_nothing(down: Limiter) -> None:
    peeked = [down.peek(ALLOW, "s", 2), down.peek(DENY, "s", 2)]
    refunded = [down.refund(ALLOW, "s", 2), down.refund(DENY, "s", 2)]

    assert [d.allowed for d in peeked + refunded] == [True, False, True, False]
    assert all(d.degraded for d in peeked + refunded)
    assert all(d.granted == 0 for d in peeked + refunded)


def test_reset_always_raises_it_has_no_decision_to_make(down: Limiter) -> None:
    with pytest.raises(BackendError):
        down.reset(ALLOW, "s")


def test_a_shadow_limit_that_denies_still_admits_marked_shadow_denied(down: Limiter) -> None:
    shadow = RateLimit(name="new", limit=1, window="day", shadow=True, on_backend_error="deny")

    decision = down.hit(shadow, "s")

    assert decision.allowed
    assert decision.shadow_denied
    assert decision.degraded


def test_bad_input_is_refused_even_while_the_server_is_down(down: Limiter) -> None:
    for _ in range(3):
        down.hit(ALLOW, "s")  # the breaker is open now
    with pytest.raises(InvalidInput):
        down.hit(ALLOW, "s", cost=-1)
    with pytest.raises(InvalidInput):
        down.acquire([Hit(ALLOW, "s"), Hit(ALLOW, "s")])
    with pytest.raises(InvalidInput):
        down.acquire([])


def test_hit_many_decides_each_hit_by_its_own_policy_unless_one_raises(down: Limiter) -> None:
    down.hit(ALLOW, "s")  # the breaker opens: every hit_many below fails fast
    decisions = down.hit_many([Hit(ALLOW, "s"), Hit(DENY, "s")])
    with pytest.raises(BackendError):
        down.hit_many([Hit(ALLOW, "s"), Hit(RAISE, "s")])

    assert [(d.allowed, d.degraded) for d in decisions] == [(True, True), (False, True)]


def test_hit_many_that_reaches_a_dead_server_is_decided_by_the_policy() -> None:
    with dead_client() as client:
        limiter = Limiter(client, breaker=None)
        decisions = limiter.hit_many([Hit(ALLOW, "s"), Hit(DENY, "s")])

    assert [(d.allowed, d.degraded) for d in decisions] == [(True, True), (False, True)]


async def test_async_hit_many_that_reaches_a_dead_server_is_decided_by_the_policy() -> None:
    async with dead_async_client() as client:
        limiter = AsyncLimiter(client, breaker=None)
        decisions = await limiter.hit_many([Hit(ALLOW, "s"), Hit(DENY, "s")])

    assert [(d.allowed, d.degraded) for d in decisions] == [(True, True), (False, True)]


# --------------------------------------------------------------------------
# acquire: the strictest policy wins
# --------------------------------------------------------------------------


def test_acquire_raises_when_any_hit_raises(down: Limiter) -> None:
    with pytest.raises(BackendError):
        down.acquire([Hit(ALLOW, "s"), Hit(RAISE, "global"), Hit(DENY, "s")])


def test_acquire_is_denied_when_any_hit_denies_naming_the_first(down: Limiter) -> None:
    hits = [Hit(ALLOW, "s"), Hit(DENY, "global"), Hit(DENY, "s")]

    result = down.acquire(hits)

    assert not result.allowed
    assert result.denied_by is hits[1]
    assert [d.allowed for d in result.decisions] == [True, False, False]
    assert all(d.degraded for d in result.decisions)
    assert result.leases == ()


def test_acquire_allowed_by_every_policy_hands_out_leases_that_hold_nothing(
    down: Limiter,
) -> None:
    result = down.acquire([Hit(ALLOW, "s"), Hit(SLOTS, "s"), Hit(CAP, "s", Decimal("0.40"))])

    (lease,) = result.leases
    assert result.allowed
    assert all(d.degraded for d in result.decisions)
    assert lease.allowed
    assert lease.renew() is False
    assert lease.release() is False


class SecondReplyStalls(StallingProxy):
    """Holds back reply chunks by the delays in ``plan``, one per chunk, in order."""

    plan: list[float]

    def _reply_delay(self) -> float:
        with self._lock:
            return self.plan.pop(0) if getattr(self, "plan", None) else 0.0


def test_acquire_that_fails_part_way_undoes_what_it_charged_before_denying(
    server: Server,
) -> None:
    # Two subjects, charged one script each, as on a cluster. The first
    # charges; the second's reply is held back past the socket timeout; the
    # acquire undoes the first and the policy denies. The caller is never
    # admitted, and the first subject's charge does not survive.
    first = RateLimit(name="per-client", limit=5, window="day", on_backend_error="deny")
    shared = RateLimit(name="global", limit=5, window="day", on_backend_error="deny")
    with SecondReplyStalls("127.0.0.1", server.port) as proxy, server.client() as direct:
        for name in all_names():
            direct.script_load(script(name).source)
        client = proxy.client(socket_timeout=0.2, retry=NO_RETRY)
        with client:
            limiter = Limiter(client)
            limiter._engine.together = False  # the saga a cluster runs
            limiter.peek(first, "warm-up")  # connected, and the server checked
            proxy.plan = [0.0, 0.6]  # the first charge's reply passes, the second's stalls
            result = limiter.acquire([Hit(first, "client-42"), Hit(shared, "everyone")])
        time.sleep(0.8)  # the held-back reply reaches its end
        charged_first = Limiter(direct).peek(first, "client-42").used

    assert not result.allowed
    assert all(d.degraded for d in result.decisions)
    assert result.decisions[0].cause.applied == "unknown"
    assert charged_first == 0


def test_a_one_script_acquire_whose_reply_is_lost_is_taken_back_before_denying(
    server: Server,
) -> None:
    # On one server the two subjects are one script. Its reply is held back
    # past the socket timeout, so whether it ran is unknown: the acquire
    # undoes it from the subjects' records, and the policy denies. Nothing
    # survives, and the undo makes that certain.
    first = RateLimit(name="per-client", limit=5, window="day", on_backend_error="deny")
    shared = RateLimit(name="global", limit=5, window="day", on_backend_error="deny")
    with SecondReplyStalls("127.0.0.1", server.port) as proxy, server.client() as direct:
        for name in all_names():
            direct.script_load(script(name).source)
        client = proxy.client(socket_timeout=0.2, retry=NO_RETRY)
        with client:
            limiter = Limiter(client)
            limiter.peek(first, "warm-up")
            proxy.plan = [0.6, 0.0]  # the acquire's reply stalls, the undo's passes
            result = limiter.acquire([Hit(first, "client-42"), Hit(shared, "everyone")])
        time.sleep(0.8)
        charged = [
            Limiter(direct).peek(s, who).used
            for s, who in ((first, "client-42"), (shared, "everyone"))
        ]

    assert not result.allowed
    assert all(d.degraded for d in result.decisions)
    assert result.decisions[0].cause.applied == "no"
    assert charged == [0, 0]


# --------------------------------------------------------------------------
# Reservations and leases
# --------------------------------------------------------------------------


def test_a_degraded_reservation_holds_nothing_and_settles_without_sending(
    down: Limiter,
) -> None:
    reservation = down.reserve(CAP, "s", Decimal("2.00"))
    settled = reservation.settle(Decimal("1.23"))
    released = reservation.release()
    with down.reservation(CAP, "s", Decimal("2.00")) as r:
        r.settle_with(Decimal("1.50"))

    assert reservation.allowed
    assert reservation.decision.degraded
    assert (settled.status, settled.charged) == ("expired", Decimal(0))
    assert released.status == "expired"
    with pytest.raises(InvalidInput):
        reservation.settle(Decimal("-1"))


def test_a_denied_degraded_reservation_refuses_to_settle(down: Limiter) -> None:
    cap = SpendCap(
        name="ai", limit=Decimal(1), currency="AUD", window="day", on_backend_error="deny"
    )
    with pytest.raises(LimitExceeded) as caught:
        down.reservation(cap, "s", Decimal("0.50"))
    reservation = down.reserve(cap, "s", Decimal("0.50"))

    assert caught.value.decision.degraded
    with pytest.raises(InvalidInput):
        reservation.settle(Decimal("0.10"))


def test_a_degraded_lease_admits_by_policy_and_holds_no_slot(down: Limiter) -> None:
    with down.lease(SLOTS, "s") as lease:
        renewed = lease.renew()
    denying = Concurrency(name="openai", limit=2, on_backend_error="deny")
    with pytest.raises(LimitExceeded) as caught:
        down.lease(denying, "s")

    assert lease.allowed
    assert lease.decision.degraded
    assert renewed is False
    assert caught.value.decision.degraded


async def test_async_policies_and_degraded_handles() -> None:
    async with dead_async_client() as client:
        limiter = AsyncLimiter(client)
        allowed = await limiter.hit(ALLOW, "s")
        denied = await limiter.peek(DENY, "s")
        result = await limiter.acquire([Hit(ALLOW, "s"), Hit(SLOTS, "t")])
        async with limiter.lease(SLOTS, "s") as lease:
            renewed = await lease.renew()
        async with limiter.reservation(CAP, "s", Decimal("2")) as reservation:
            reservation.settle_with(Decimal("1"))

    assert (allowed.allowed, allowed.degraded) == (True, True)
    assert (denied.allowed, denied.degraded) == (False, True)
    assert result.allowed
    assert await result.leases[0].release() is False
    assert renewed is False
    assert reservation.decision.degraded


# --------------------------------------------------------------------------
# What the policy does not cover
# --------------------------------------------------------------------------


def test_an_error_reply_is_decided_by_the_policy_but_leaves_the_breaker_closed(
    server: Server,
) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        key = codec_of(ALLOW).window_key("atomlimit:v1:{s:bad}:fw:allow", int(time.time() * 1e6))
        client.hset(key, "n", 1)  # a wrong type at one subject's key
        degraded = [limiter.hit(ALLOW, "bad") for _ in range(10)]
        healthy = limiter.hit(RAISE, "good")

    assert all(d.allowed and d.degraded for d in degraded)
    assert isinstance(degraded[-1].cause, BackendError)
    assert isinstance(degraded[-1].cause.__cause__, redis.exceptions.ResponseError)
    assert not healthy.degraded
    assert healthy.used == 1


def test_an_unsafe_server_is_refused_whatever_the_policy(server_pool: ServerPool) -> None:
    binary = server_pool.binary("redis")
    config = {"maxmemory": "10mb", "maxmemory-policy": "allkeys-lru"}
    with start_server(binary, extra_config=config) as evicting, evicting.client() as client:
        limiter = Limiter(client, strict=True)
        with pytest.raises(UnsafeServer):
            limiter.hit(ALLOW, "s")


def test_observers_and_breakers_are_checked_when_the_limiter_is_built() -> None:
    with dead_client() as client:
        for options in (
            {"observers": [object()]},
            {"observers": "prometheus"},
            {"observers": [None] * 17},
            {"breaker": 5},
        ):
            with pytest.raises(InvalidInput):
                Limiter(client, **options)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="deadline"):
            AsyncLimiter(redis.asyncio.Redis(), deadline=0.5)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="deadline"):
            AsyncLimiter(redis.asyncio.Redis(), deadline=timedelta(hours=1))


async def test_async_deadline_fails_a_stalled_call_as_unknown_naming_its_request_id(
    server: Server, stalling_proxy: StallingProxy
) -> None:
    client = stalling_proxy.async_client(retry=NO_ASYNC_RETRY)
    async with client:
        limiter = AsyncLimiter(client, deadline=timedelta(milliseconds=100), breaker=None)
        await limiter.peek(RAISE, "warm-up")
        stalling_proxy.delay = 0.5
        with pytest.raises(BackendError) as caught:
            await limiter.hit(RAISE, "s", request_id="req-5")
        degraded = await limiter.hit(DENY, "s")
        stalling_proxy.delay = 0

    # The deadline, not the stall, ended the call: had it waited out the
    # stall, the reply would have come and the hit returned a Decision.
    assert "no reply within the limiter's deadline of 0.1 s" in str(caught.value)
    assert type(caught.value.__cause__) is TimeoutError
    assert caught.value.applied == "unknown"
    assert caught.value.request_id == "req-5"
    assert (degraded.allowed, degraded.degraded) == (False, True)

"""@limiter.limited: plain functions under Limiter, async ones under AsyncLimiter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from conftest import Target
from helpers import evalsha_runs
from servers import Server

from atomlimit import (
    AsyncLimiter,
    Concurrency,
    InvalidInput,
    Limiter,
    LimitExceeded,
    RateLimit,
    SpendCap,
)

PER_DAY = RateLimit(name="jobs", limit=2, window="day")
SHORT = RateLimit(name="short", limit=1, window=timedelta(milliseconds=200))
TOKENS = RateLimit(name="tokens", limit=100, window="day")
CAP = SpendCap(name="ai", limit=Decimal("1.00"), currency="AUD", window="day")


def test_a_denied_call_raises_and_does_not_run(target: Target) -> None:
    ran: list[int] = []
    with target.sync_client() as client:
        limiter = Limiter(client)

        @limiter.limited(PER_DAY, subject="nightly")
        def job(n: int) -> int:
            ran.append(n)
            return n * 10

        results = [job(1), job(2)]
        with pytest.raises(LimitExceeded) as raised:
            job(3)

    assert results == [10, 20]
    assert ran == [1, 2]
    assert raised.value.subject == "nightly"
    assert raised.value.limit == PER_DAY
    assert "nightly" not in str(raised.value)


def test_subject_and_cost_are_computed_from_the_arguments(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)

        @limiter.limited(
            TOKENS, subject=lambda user, tokens: user, cost=lambda user, tokens: tokens
        )
        def complete(user: str, tokens: int) -> str:
            return f"{user}:{tokens}"

        complete("alice", 60)
        complete("bob", 90)
        with pytest.raises(LimitExceeded):
            complete("alice", 50)
        left = limiter.peek(TOKENS, "alice").remaining

    assert left == 40


def test_keyword_arguments_reach_the_callables(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)

        @limiter.limited(
            CAP, subject=lambda *, account, price: account, cost=lambda **kw: kw["price"]
        )
        def buy(*, account: str, price: Decimal) -> Decimal:
            return price

        buy(account="acme", price=Decimal("0.60"))
        with pytest.raises(LimitExceeded):
            buy(account="acme", price=Decimal("0.41"))
        spent = limiter.peek(CAP, "acme", cost=0).used

    assert spent == Decimal("0.60")


def test_wait_true_sleeps_into_the_next_window_and_runs(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)

        @limiter.limited(SHORT, subject="s", wait=True, timeout=5)
        def ping() -> str:
            return "pong"

        answers = [ping(), ping()]

    assert answers == ["pong", "pong"]


def test_wait_true_gives_up_when_the_timeout_is_too_short(target: Target) -> None:
    with target.sync_client() as client:
        limiter = Limiter(client)

        @limiter.limited(PER_DAY, subject="s", wait=True, timeout=timedelta(seconds=1))
        def job() -> None:
            return None

        job()
        job()
        with pytest.raises(LimitExceeded):
            job()


def test_the_wrapper_keeps_the_functions_name_and_doc(server: Server) -> None:
    with server.client() as client:
        limiter = Limiter(client)

        @limiter.limited(PER_DAY, subject="s")
        def documented() -> None:
            """Says what it does."""

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Says what it does."


async def test_async_functions_are_limited_by_the_async_limiter(target: Target) -> None:
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)

        @limiter.limited(TOKENS, subject=lambda user, n: user, cost=lambda user, n: n)
        async def complete(user: str, n: int) -> int:
            return n

        first = await complete("alice", 70)
        with pytest.raises(LimitExceeded) as raised:
            await complete("alice", 31)

    assert first == 70
    assert raised.value.subject == "alice"


async def test_async_wait_true_sleeps_into_the_next_window(target: Target) -> None:
    async with target.async_client() as client:
        limiter = AsyncLimiter(client)

        @limiter.limited(SHORT, subject="s", wait=True, timeout=5.0)
        async def ping() -> str:
            return "pong"

        answers = [await ping(), await ping()]

    assert answers == ["pong", "pong"]


async def test_the_async_limiter_refuses_a_plain_function(server: Server) -> None:
    async with server.async_client() as client:
        limiter = AsyncLimiter(client)

        def plain() -> None:
            return None

        async def stream() -> AsyncIterator[int]:
            yield 1

        with pytest.raises(InvalidInput, match="async def"):
            limiter.limited(PER_DAY, subject="s")(plain)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="async def"):
            limiter.limited(PER_DAY, subject="s")(stream)  # type: ignore[arg-type]


def test_the_sync_limiter_refuses_an_async_function(server: Server) -> None:
    with server.client() as client:
        limiter = Limiter(client)

        async def coroutine() -> None:
            return None

        with pytest.raises(InvalidInput, match="AsyncLimiter"):
            limiter.limited(PER_DAY, subject="s")(coroutine)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"limit": Concurrency(name="c", limit=1), "subject": "s"}, "lease"),
        ({"limit": "100/minute", "subject": "s"}, "RateLimit or SpendCap"),
        ({"limit": PER_DAY, "subject": 42}, "subject must be"),
        ({"limit": PER_DAY, "subject": "s", "cost": 1.5}, "cost"),
        ({"limit": CAP, "subject": "s", "cost": 0.5}, "cost"),
        ({"limit": PER_DAY, "subject": "s", "wait": "yes"}, "wait must be"),
        ({"limit": PER_DAY, "subject": "s", "timeout": 5}, "needs wait=True"),
        ({"limit": PER_DAY, "subject": "s", "wait": True, "timeout": 90_000}, "timeout must be"),
    ],
)
def test_a_bad_configuration_is_refused_when_decorating(
    server: Server, options: dict[str, Any], message: str
) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        rest = {name: value for name, value in options.items() if name != "limit"}
        with pytest.raises(InvalidInput, match=message):
            limiter.limited(options["limit"], **rest)


def test_a_callable_subject_that_returns_no_text_sends_nothing(server: Server) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        before = evalsha_runs(client)

        @limiter.limited(PER_DAY, subject=lambda n: n)
        def job(n: int) -> int:
            return n

        with pytest.raises(InvalidInput):
            job(7)
        runs = evalsha_runs(client) - before

    assert runs == 0

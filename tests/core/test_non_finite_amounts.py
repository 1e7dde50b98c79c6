"""A SpendCap refuses every amount that is not a finite number, as bad input.

A signalling NaN raises on hashing and on comparison, so it must be
refused before anything keeps or compares it; each operation that takes an
amount is tried, and none may send a command or write a key.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import redis
from servers import Server

from atomlimit import Hit, InvalidInput, Limiter, SpendCap

CAP = SpendCap(name="ai", limit=Decimal("10.00"), currency="AUD", window="day")
NON_FINITE = [Decimal(text) for text in ("sNaN", "-sNaN", "NaN", "-NaN", "Infinity", "-Infinity")]


def settled(limiter: Limiter) -> Callable[[Decimal], Any]:
    return limiter.reserve(CAP, "s", Decimal("1.00")).settle


OPERATIONS: dict[str, Callable[[Limiter], Callable[[Decimal], Any]]] = {
    "hit": lambda limiter: lambda amount: limiter.hit(CAP, "s", amount),
    "peek": lambda limiter: lambda amount: limiter.peek(CAP, "s", amount),
    "refund": lambda limiter: lambda amount: limiter.refund(CAP, "s", amount),
    "reserve": lambda limiter: lambda amount: limiter.reserve(CAP, "s", amount),
    "settle": settled,
    "acquire": lambda limiter: lambda amount: limiter.acquire([Hit(CAP, "s", amount)]),
}


def stored(client: redis.Redis) -> dict[bytes, bytes | None]:
    return {key: client.dump(key) for key in client.scan_iter()}


@pytest.mark.parametrize("amount", NON_FINITE, ids=str)
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_non_finite_amount_is_refused_as_bad_input(
    server: Server, operation: str, amount: Decimal
) -> None:
    with server.client() as client, Limiter(client) as limiter:
        call = OPERATIONS[operation](limiter)
        before = stored(client)
        # The same amount, twice: a refusal must not be kept as an answer either.
        for _ in range(2):
            with pytest.raises(InvalidInput, match="finite amount"):
                call(amount)
        after = stored(client)

    assert after == before

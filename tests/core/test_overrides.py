"""Per-subject overrides kept on the server, read by every decision script."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from servers import Server

from atomlimit import (
    Concurrency,
    Hit,
    InvalidInput,
    Limiter,
    LimitExceeded,
    RateLimit,
    SpendCap,
)

RATES = [
    RateLimit(name="o-fw", limit=3, window="hour"),
    RateLimit(name="o-gc", limit=3, window="hour", algorithm="gcra"),
    RateLimit(name="o-sw", limit=3, window="hour", algorithm="sliding_counter"),
    RateLimit(name="o-sl", limit=3, window="hour", algorithm="sliding_log"),
]


def _admitted(limiter: Limiter, spec: Any, subject: str, tries: int = 10) -> int:
    return sum(bool(limiter.hit(spec, subject)) for _ in range(tries))


@pytest.mark.parametrize("spec", RATES, ids=lambda s: s.algorithm)
def test_override_raises_the_limit_and_another_limiter_sees_it(
    server: Server, spec: RateLimit
) -> None:
    with server.client() as a_client, server.client() as b_client:
        a, b = Limiter(a_client), Limiter(b_client)
        assert _admitted(a, spec, "raised", 2) == 2  # the window is open before the change
        a.overrides.set(spec, "raised", limit=6)
        decision = b.hit(spec, "raised")
        assert decision.allowed
        assert decision.limit == 6
        assert decision.limit_source == "override"
        # gcra measured the earlier hits in time at the old rate: 2400 s
        # ahead, which the new interval of 600 s reads as four units.
        left = 1 if spec.algorithm == "gcra" else 3
        assert decision.remaining == left
        assert _admitted(b, spec, "raised") == left
        assert _admitted(a, spec, "other") == 3  # other subjects keep the spec's limit


@pytest.mark.parametrize("spec", RATES, ids=lambda s: s.algorithm)
def test_override_lowers_the_limit_and_delete_restores_the_spec(
    server: Server, spec: RateLimit
) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        limiter.overrides.set(spec, "lowered", limit=1)
        assert _admitted(limiter, spec, "lowered") == 1
        denied = limiter.hit(spec, "lowered")
        assert not denied.allowed
        assert denied.limit == 1
        assert denied.limit_source == "override"
        assert limiter.peek(spec, "lowered").limit == 1
        assert limiter.overrides.delete(spec, "lowered") is True
        after = limiter.hit(spec, "lowered")
        assert after.limit == 3
        assert after.limit_source == "spec"
        assert limiter.overrides.get(spec, "lowered") is None


def test_fixed_window_counter_set_mid_window_is_marked_and_unmarked(server: Server) -> None:
    spec = RATES[0]
    with server.client() as client:
        limiter = Limiter(client)
        assert _admitted(limiter, spec, "mid") == 3
        limiter.overrides.set(spec, "mid", limit=5)
        assert _admitted(limiter, spec, "mid") == 2
        limiter.overrides.delete(spec, "mid")
        assert _admitted(limiter, spec, "mid") == 0
        limiter.overrides.set(spec, "mid", limit=4)
        limiter.reset(spec, "mid")  # reset forgets usage, not the override
        assert _admitted(limiter, spec, "mid") == 4


def _stored_tat(client: Any, spec: RateLimit, subject: str) -> str:
    """The raw value of ``subject``'s GCRA state: the TAT, marked or not."""
    (key,) = client.scan_iter(match=f"*{{s:{subject}}}:gc:{spec.name}")
    value: bytes = client.get(key)
    return value.decode()


def test_a_gcra_tat_keeps_the_override_mark_through_every_writer(server: Server) -> None:
    # The hit's own script reads the override's hash only when the TAT is
    # marked or missing, so a writer that dropped the mark would make the
    # next hit decide by the spec's burst of 3.
    spec = RATES[1]
    with server.client() as client:
        limiter = Limiter(client)
        assert limiter.hit(spec, "kept-mark")  # unmarked: no override yet
        assert not _stored_tat(client, spec, "kept-mark").endswith("|o")
        limiter.overrides.set(spec, "kept-mark", limit=30)  # marks the stored TAT
        assert _stored_tat(client, spec, "kept-mark").endswith("|o")
        writers = {
            "acquire": lambda: limiter.acquire(
                [Hit(spec, "kept-mark"), Hit(RATES[0], "kept-mark")]
            ),
            "reserve": lambda: limiter.reserve(spec, "kept-mark", 2, ttl=timedelta(minutes=1)),
            "refund": lambda: limiter.refund(spec, "kept-mark", 1),
        }
        for writer, write in writers.items():
            write()
            assert _stored_tat(client, spec, "kept-mark").endswith("|o"), writer
        held_again = limiter.reserve(spec, "kept-mark", 2, ttl=timedelta(minutes=1))
        held_again.settle(1)
        assert _stored_tat(client, spec, "kept-mark").endswith("|o"), "settle"
        decision = limiter.hit(spec, "kept-mark")
        assert (decision.limit, decision.limit_source) == (30, "override")
        limiter.overrides.delete(spec, "kept-mark")  # unmarks it
        assert not _stored_tat(client, spec, "kept-mark").endswith("|o")
        assert limiter.hit(spec, "kept-mark").limit_source == "spec"


def test_a_gcra_hit_drops_the_mark_of_an_override_past_its_expiry(server: Server) -> None:
    spec = RATES[1]
    with server.client() as client:
        limiter = Limiter(client, time_source="client")
        assert limiter.hit(spec, "lapsed-mark")
        limiter.overrides.set(spec, "lapsed-mark", limit=30, expires=timedelta(microseconds=1))
        assert _stored_tat(client, spec, "lapsed-mark").endswith("|o")
        decision = limiter.hit(spec, "lapsed-mark")
        assert (decision.limit, decision.limit_source) == (3, "spec")
        assert not _stored_tat(client, spec, "lapsed-mark").endswith("|o")


def test_an_override_past_its_expiry_no_longer_applies(server: Server) -> None:
    spec = RATES[0]
    with server.client() as client:
        limiter = Limiter(client, time_source="client")
        limiter.overrides.set(spec, "lapsing", limit=1, expires=timedelta(microseconds=1))
        got = limiter.overrides.get(spec, "lapsing")
        assert got is None or got.limit == 1
        assert _admitted(limiter, spec, "lapsing") == 3


def test_override_reads_back_with_its_expiry(server: Server) -> None:
    spec = RATES[1]
    with server.client() as client:
        limiter = Limiter(client)
        limiter.overrides.set(spec, "kept", limit=10, burst=4, expires=timedelta(hours=1))
        got = limiter.overrides.get(spec, "kept")
        assert got is not None
        assert got.limit == 10
        assert got.burst == 4
        assert got.expires is not None
        assert limiter.hit(spec, "kept").limit == 4  # gcra reports its burst
        assert limiter.overrides.list(spec) == ["kept"]


def test_spend_cap_override_is_a_decimal_in_its_currency(server: Server) -> None:
    cap = SpendCap(name="o-cap", limit=Decimal("1.00"), currency="USD", window="day")
    with server.client() as client:
        limiter = Limiter(client)
        assert limiter.hit(cap, "buyer", Decimal("0.60"))
        limiter.overrides.set(cap, "buyer", limit=Decimal("2.50"))
        decision = limiter.hit(cap, "buyer", Decimal("1.50"))
        assert decision.allowed
        assert decision.limit == Decimal("2.50")
        assert decision.remaining == Decimal("0.40")
        assert not limiter.hit(cap, "buyer", Decimal("0.50"))
        with pytest.raises(InvalidInput):
            limiter.overrides.set(cap, "buyer", limit=2)


def test_concurrency_override_changes_the_leases_in_flight(server: Server) -> None:
    spec = Concurrency(name="o-cc", limit=1, lease=timedelta(minutes=1))
    with server.client() as client:
        limiter = Limiter(client)
        limiter.overrides.set(spec, "busy", limit=2)
        first, second = limiter.lease(spec, "busy"), limiter.lease(spec, "busy")
        assert first.decision.allowed
        assert second.decision.allowed
        assert second.decision.limit == 2
        assert second.decision.limit_source == "override"
        with pytest.raises(LimitExceeded):
            limiter.lease(spec, "busy")


def test_headers_quote_the_override_as_the_quota(server: Server) -> None:
    spec = RATES[0]
    with server.client() as client:
        limiter = Limiter(client)
        limiter.overrides.set(spec, "quoted", limit=7)
        headers = limiter.hit(spec, "quoted").headers()
        assert ";q=7;" in headers["RateLimit-Policy"]


@pytest.mark.parametrize(
    ("limit", "burst", "expires"),
    [
        (0, None, None),
        (-1, None, None),
        (2**53, None, None),
        ("3", None, None),
        (3, 2, None),
        (3, None, timedelta(0)),
        (3, None, "tomorrow"),
    ],
)
def test_bad_overrides_are_refused_before_anything_is_sent(
    server: Server, limit: Any, burst: Any, expires: Any
) -> None:
    with server.client() as client:
        limiter = Limiter(client)
        with pytest.raises(InvalidInput):
            limiter.overrides.set(RATES[0], "bad", limit=limit, burst=burst, expires=expires)
        assert client.keys("*bad*") == []


def test_setting_an_override_forgets_that_subjects_cached_denials_only(server: Server) -> None:
    spec = RateLimit(name="o-cache-set", limit=1, window="hour")
    with server.client() as client:
        limiter = Limiter(client, deny_cache=16)
        for subject in ("raised", "other"):
            assert limiter.hit(spec, subject).allowed
            assert not limiter.hit(spec, subject).allowed
            assert limiter.hit(spec, subject).cached
        limiter.overrides.set(spec, "raised", limit=3)
        after = limiter.hit(spec, "raised")
        assert after.allowed
        assert not after.cached
        assert after.limit_source == "override"
        assert limiter.hit(spec, "other").cached  # another subject's denial still holds


def test_deleting_an_override_forgets_that_subjects_cached_denials(server: Server) -> None:
    spec = RateLimit(name="o-cache-del", limit=3, window="hour")
    with server.client() as client:
        limiter = Limiter(client, deny_cache=16)
        limiter.overrides.set(spec, "lowered", limit=1)
        assert limiter.hit(spec, "lowered").allowed
        assert not limiter.hit(spec, "lowered").allowed
        assert limiter.hit(spec, "lowered").cached
        assert limiter.overrides.delete(spec, "lowered") is True
        after = limiter.hit(spec, "lowered")
        assert after.allowed
        assert not after.cached
        assert after.limit_source == "spec"


def test_a_cached_denial_under_an_override_says_the_override_denied(server: Server) -> None:
    spec = RateLimit(name="o-cache-source", limit=5, window="hour")
    with server.client() as client:
        limiter = Limiter(client, deny_cache=16)
        limiter.overrides.set(spec, "lowered", limit=1)
        limiter.hit(spec, "lowered")
        first = limiter.hit(spec, "lowered")
        cached = limiter.hit(spec, "lowered")

    assert not first.cached
    assert cached.cached
    assert (cached.limit, cached.limit_source) == (1, "override")
    assert cached.limit_source == first.limit_source


@pytest.mark.parametrize("end", ["settle", "release"])
def test_settle_and_release_report_against_the_override_in_force(server: Server, end: str) -> None:
    cap = SpendCap(name="o-cap-end", limit=Decimal("10"), currency="USD", window="day")
    with server.client() as client:
        limiter = Limiter(client)
        limiter.overrides.set(cap, "raised", limit=Decimal("50"))
        reservation = limiter.reserve(cap, "raised", Decimal("20"))
        ended = reservation.settle(Decimal("15")) if end == "settle" else reservation.release()
        plain = limiter.reserve(cap, "plain", Decimal("2"))
        other = plain.settle(Decimal("1")) if end == "settle" else plain.release()

    assert ended.decision.limit == Decimal("50")
    assert ended.decision.limit_source == "override"
    used = Decimal("15") if end == "settle" else Decimal("0")
    assert ended.decision.remaining == Decimal("50") - used
    assert other.decision.limit == Decimal("10")
    assert other.decision.limit_source == "spec"


def test_headers_of_one_spec_quote_each_subjects_own_quota_in_any_order(server: Server) -> None:
    spec = RateLimit(name="o-quota-order", limit=3, window="hour")
    with server.client() as client:
        limiter = Limiter(client)
        limiter.overrides.set(spec, "raised", limit=7)
        quotas = [
            limiter.hit(spec, subject).headers()["RateLimit-Policy"]
            for subject in ("plain", "raised", "plain", "raised")
        ]

    assert quotas == ['"o-quota-order";q=3;w=3600', '"o-quota-order";q=7;w=3600'] * 2

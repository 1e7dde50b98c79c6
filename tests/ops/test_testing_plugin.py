"""The pytest plugin, as a user meets it: a user's test file run by pytest.

``pytester`` runs each file in a pytest of its own, in a subprocess, with
no conftest: the fixtures come from the ``pytest11`` entry point alone.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from atomlimit import InvalidInput
from atomlimit.testing import START, Clock

pytest_plugins = ["pytester"]

USER_TESTS = """
import asyncio
import gc
from datetime import timedelta

from atomlimit import AsyncLimiter, Limiter, RateLimit

SIGNUPS = RateLimit(name="signups", limit=2, window="day")
LOGIN = RateLimit(name="login", limit=3, window=timedelta(minutes=15), algorithm="sliding_log")
URLS = []


def test_a_day_passes_without_sleeping(limiter, atomlimit_clock, atomlimit_url):
    URLS.append(atomlimit_url)
    assert isinstance(limiter, Limiter)
    assert [limiter.hit(SIGNUPS, "203.0.113.9").allowed for _ in range(3)] == [True, True, False]
    atomlimit_clock.advance(timedelta(days=1))
    assert limiter.hit(SIGNUPS, "203.0.113.9").allowed


def test_each_test_starts_with_an_empty_server(limiter, atomlimit_url):
    URLS.append(atomlimit_url)
    assert limiter.peek(SIGNUPS, "203.0.113.9").used == 0


def test_a_sliding_window_slides_with_the_clock(limiter, atomlimit_clock):
    for _ in range(3):
        limiter.hit(LOGIN, "alice")
        atomlimit_clock.advance(60)
    assert not limiter.hit(LOGIN, "alice").allowed
    atomlimit_clock.advance(timedelta(minutes=13))
    assert limiter.hit(LOGIN, "alice").allowed


def test_the_async_limiter_under_asyncio_run(async_limiter, atomlimit_clock, atomlimit_url):
    URLS.append(atomlimit_url)
    assert isinstance(async_limiter, AsyncLimiter)

    async def main():
        first = [(await async_limiter.hit(SIGNUPS, "bob")).allowed for _ in range(3)]
        atomlimit_clock.advance(86_400)
        return first, (await async_limiter.hit(SIGNUPS, "bob")).allowed

    assert asyncio.run(main()) == ([True, True, False], True)


def test_nothing_was_left_open_and_one_server_served_all():
    # An AsyncLimiter left open warns when collected, and -W error makes
    # that warning fail this test.
    gc.collect()
    assert len(URLS) == 3
    assert len(set(URLS)) == 1
"""


def test_a_users_tests_get_real_limiters_and_a_clock_they_move(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)

    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-W",
        "error::ResourceWarning",
        "-W",
        "error::pytest.PytestUnraisableExceptionWarning",
    )

    result.assert_outcomes(passed=5)


def test_a_failing_user_test_reports_its_own_assertion(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
from atomlimit import RateLimit

def test_expects_too_much(limiter):
    limit = RateLimit(name="x", limit=1, window="minute")
    assert [limiter.hit(limit, "s").allowed for _ in range(2)] == [True, True]
"""
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(failed=1)
    assert "assert [True, False] == [True, True]" in result.stdout.str()


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    found = {point.name: point.value for point in entry_points(group="pytest11")}

    assert found["atomlimit"] == "atomlimit.testing"


def test_the_clock_starts_on_a_monday_at_midnight_and_moves_exactly() -> None:
    clock = Clock()
    clock.advance(0.000001)
    after_a_microsecond = int(clock() * 1_000_000)
    clock.advance(-0.000001)

    assert START.weekday() == 0
    assert clock.now == START
    assert after_a_microsecond == int(START.timestamp()) * 1_000_000 + 1


@pytest.mark.parametrize("step", [float("nan"), float("inf"), "60", None, 10**12])
def test_the_clock_refuses_steps_it_cannot_take(step: object) -> None:
    with pytest.raises(InvalidInput):
        Clock().advance(step)  # type: ignore[arg-type]

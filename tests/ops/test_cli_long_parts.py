"""``atomlimit inspect`` and ``reset`` find a subject or name too long for a key.

A part whose encoding passes 128 characters is stored as a readable head
and a digest of the whole. The commands must build that stored form the way
the limiter does, and tell apart two long subjects that share a head. Each
command runs as the installed program, against a real server.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import pytest
from servers import Server

from atomlimit import Limiter, RateLimit, SpendCap

HEAD = "tenant/" + "x" * 120
LONG = HEAD + "/alice"
TWIN = HEAD + "/bob"
"""The same head as LONG: only the digest tells them apart."""
NAME = "quota-" + "é" * 60
"""Under 256 characters, as a name must be, but 366 once percent-encoded."""
DAY = RateLimit(name="day", limit=100, window="day")
LONG_NAMED = RateLimit(name=NAME, limit=100, window="day")
CAP = SpendCap(name="ai", limit=Decimal("10.00"), currency="AUD", window="day")


def atomlimit(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "atomlimit", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def fill(limiter: Limiter) -> None:
    limiter.hit(DAY, LONG, cost=3)
    limiter.hit(CAP, LONG, cost=Decimal("0.37"), request_id="r1")
    limiter.hit(DAY, TWIN, cost=5)
    limiter.hit(LONG_NAMED, "client-42", cost=2)


def test_inspect_finds_a_long_subject_and_not_its_twin(server: Server) -> None:
    with Limiter.from_url(server.url) as limiter:
        fill(limiter)

    out = atomlimit("inspect", "--url", server.url, "--subject", LONG)

    assert "no atomlimit keys found" not in out
    assert out.splitlines()[0].endswith(": 3 keys")  # the window, the cap, its record
    assert "3 used since" in out
    assert "0.37 AUD spent" in out
    assert "5 used since" not in out


def test_inspect_finds_a_long_name(server: Server) -> None:
    with Limiter.from_url(server.url) as limiter:
        fill(limiter)

    out = atomlimit("inspect", "--url", server.url, "--name", NAME)

    assert out.splitlines()[0].endswith(": 1 key")
    assert "2 used since" in out


@pytest.mark.parametrize(
    ("spec", "subject", "left"),
    [(DAY, LONG, 5), (LONG_NAMED, "client-42", 5)],
    ids=["subject", "name"],
)
def test_reset_forgets_a_long_part_and_leaves_its_twin(
    server: Server, spec: RateLimit, subject: str, left: int
) -> None:
    with Limiter.from_url(server.url) as limiter:
        fill(limiter)
        out = atomlimit(
            "reset", "--url", server.url, "--name", spec.name, "--subject", subject, "--yes"
        )
        after = limiter.peek(spec, subject).used
        twin = limiter.peek(DAY, TWIN).used
        cap = limiter.peek(CAP, LONG, cost=0).used

    assert "deleted 1 key" in out
    assert after == 0
    assert twin == left
    assert cap == Decimal("0.37")  # another limit of the same subject is untouched

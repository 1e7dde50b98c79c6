"""``atomlimit demo`` prints the race's table; the engine rows show no overshoot."""

from __future__ import annotations

import subprocess
import sys

from servers import Server


def test_demo_shows_the_seed_overshooting_and_the_engine_exact(server: Server) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "atomlimit", "demo", "--url", server.url, "--workers", "300"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = {
        line.split("  ")[0]: line.split()
        for line in result.stdout.splitlines()
        if line.startswith(("rate limit", "spend cap"))
    }

    seed_rate = rows["rate limit: seed check, then increment"]
    engine_rate = rows["rate limit: atomlimit hit"]
    engine_spend = rows["spend cap: atomlimit hit"]
    assert int(seed_rate[-3]) > 100  # admitted, past the limit of 100
    assert engine_rate[-4:-1] == ["100", "100", "0"]  # limit, admitted, overshoot
    # The cap is 100 spends of 0.37 AUD: limit, admitted, overshoot.
    assert engine_spend[-6:-1] == ["37.00", "AUD", "100", "0.00", "AUD"]
    with server.client() as client:
        assert client.dbsize() == 0

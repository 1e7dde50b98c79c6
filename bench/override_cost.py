"""What overrides cost the server on a hit: an older script against this tree's.

Both scripts run on one throwaway server, side by side. Each row sends
EVALSHA through a pipeline (``--calls`` per row and round, in batches of
500) after ``CONFIG RESETSTAT``, then reads ``INFO commandstats``:
``usec_per_call`` of EVALSHA is the server's time per hit, the Lua and the
commands it runs, with no network or client in it. Rounds alternate which
row goes first; the medians of ``--rounds`` rounds are printed, with each
row's ratio to the baseline's hit.

Rows:

- ``baseline``: the hit script of ``--algorithm`` (``fixed_window`` or
  ``gcra``) as the git ref ``--baseline`` has it (default: the last commit
  before overrides), naming its state (and one more key, which it reads
  if it reads an override hash);
- ``no override``: this tree's script, naming the state and the subject's
  (missing) override hash; the state (a counter, a TAT) carries no mark,
  so the hash is never read;
- ``override``: this tree's script while an override is in force for the
  subject: the state carries the mark, and the hash is read on each hit.

Every hit fits (the limits are far above what a run reaches), the common
case the scripts are written for.

    python bench/override_cost.py --rounds 5 --calls 20000
    python bench/override_cost.py --rounds 5 --calls 20000 --algorithm gcra
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import time
from pathlib import Path

import redis
from server import redis_server

from atomlimit import RateLimit
from atomlimit._engine import Engine
from atomlimit._scripts import script

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = re.compile(r"^-- include: (lib/[a-z_]+\.lua)$", re.MULTILINE)
SPECS = {
    "fixed_window": RateLimit(name="bench-override", limit=10**12, window="day"),
    # One unit every 0.864 us would be finer than the client allows; a burst
    # of the whole day's units keeps every hit of a run fitting.
    "gcra": RateLimit(name="bench-override-gc", limit=10**10, window="day", algorithm="gcra"),
}
SCRIPTS = {"fixed_window": "hit_fixed_window", "gcra": "hit_gcra"}
DAY_US = 86_400_000_000
ROWS = ("baseline", "no override", "override")
BEFORE_OVERRIDES = "a32cde4"
"""The last commit whose fixed-window hit knew nothing of overrides."""


def source_at(ref: str, name: str) -> str:
    """``lua/<name>.lua`` as ``ref`` has it, includes expanded as atomlimit._scripts does."""
    included: set[str] = set()

    def read(path: str) -> str:
        shown = subprocess.run(
            ["git", "show", f"{ref}:lua/{path}"], cwd=ROOT, check=True, capture_output=True
        )
        return shown.stdout.decode()

    def expand(match: re.Match[str]) -> str:
        path = match[1]
        if path in included:
            return f"-- ({path} already included)"
        included.add(path)
        return INCLUDE.sub(expand, read(path).rstrip("\n"))

    return INCLUDE.sub(expand, read(f"{name}.lua"))


def usec_per_call(client: redis.Redis) -> float:
    stats = client.info("commandstats")
    return float(stats["cmdstat_evalsha"]["usec_per_call"])


def hit_args(spec: RateLimit) -> tuple[object, ...]:
    """The hit script's ARGV for one unit, on the server's clock."""
    if spec.algorithm == "gcra":
        return ("", 1, spec.limit, 0, repr(DAY_US / spec.limit))
    now = time.time_ns() // 1000
    start = now - now % DAY_US
    return ("", 1, spec.limit, 0, start, start + DAY_US)


def measure(
    client: redis.Redis, sha: str, keys: tuple[str, ...], spec: RateLimit, calls: int
) -> float:
    args = hit_args(spec)
    client.evalsha(sha, len(keys), *keys, *args)  # the window is open
    client.config_resetstat()
    for _ in range(calls // 500):
        pipe = client.pipeline(transaction=False)
        for _ in range(500):
            pipe.evalsha(sha, len(keys), *keys, *args)
        pipe.execute()
    return usec_per_call(client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--baseline", default=BEFORE_OVERRIDES, help="git ref of the baseline script"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--algorithm", choices=sorted(SPECS), default="fixed_window")
    args = parser.parse_args()
    spec = SPECS[args.algorithm]
    engine = Engine()
    t = time.time_ns() // 1000
    counter, ovr = engine.hit(spec, "plain", 1, None, False, t).keys
    marked_counter, marked_ovr = engine.hit(spec, "raised", 1, None, False, t).keys
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    with redis_server() as url, redis.Redis.from_url(url) as client:
        old = client.script_load(source_at(args.baseline, SCRIPTS[args.algorithm]))
        new = client.script_load(script(SCRIPTS[args.algorithm]).source)
        # State made while an override is in force is made marked; a GCRA's
        # TAT is made by the first hit, and marked by the override's set.
        setter = client.script_load(script("override").source)
        override = (spec.limit, spec.limit, repr(DAY_US / spec.limit))
        if args.algorithm == "fixed_window":
            override = (spec.limit, "", "")
        client.evalsha(new, 2, marked_counter, marked_ovr, *hit_args(spec))
        client.evalsha(setter, 2, marked_ovr, marked_counter, "", "set", *override, "")
        runs = {
            # A second key, the baseline's override hash if it reads one.
            "baseline": (old, (counter + ":old", ovr + ":old")),
            "no override": (new, (counter, ovr)),
            "override": (new, (marked_counter, marked_ovr)),
        }
        for round_ in range(args.rounds):
            order = ROWS if round_ % 2 == 0 else tuple(reversed(ROWS))
            for row in order:
                sha, keys = runs[row]
                times[row].append(measure(client, sha, keys, spec, args.calls))
        marked = client.get(marked_counter)
    if marked is None or not marked.endswith(b"|o"):
        raise SystemExit("the override row ran unmarked")
    base = statistics.median(times["baseline"])
    print(
        f"{args.algorithm}: EVALSHA usec_per_call, median of {args.rounds} rounds "
        f"of {args.calls:,} hits"
    )
    print(f"{'row':<12} {'usec/call':>10} {'ratio':>7}")
    for row in ROWS:
        median = statistics.median(times[row])
        print(f"{row:<12} {median:10.3f} {median / base:7.3f}")


if __name__ == "__main__":
    main()

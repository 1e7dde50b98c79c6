"""How long a policy file takes to load, against tomllib reading a plain file of its size.

Prints each case as a ratio to the baseline, measured side by side: a
typical file of 1,000 limits, and the inputs a hostile file would use to
make loading slow (the bounds in atomlimit.policies refuse each of them
before or while parsing). Run: PYTHONPATH=src python bench/policies.py
"""

from __future__ import annotations

import contextlib
import time
import tomllib
from collections.abc import Callable

from atomlimit import InvalidInput
from atomlimit.policies import MAX_DOTS_PER_LINE, MAX_FILE_BYTES, parse

ROUNDS = 3


def best(call: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        with contextlib.suppress(InvalidInput):
            call()
        times.append(time.perf_counter() - start)
    return min(times)


def fill(line: Callable[[int], str]) -> str:
    lines, size, index = [], 0, 0
    while size + 200 < MAX_FILE_BYTES:
        text = line(index)
        lines.append(text)
        size += len(text) + 1
        index += 1
    return "\n".join(lines) + "\n"


def main() -> None:
    flat = fill(lambda i: f"k{i} = {i}")
    typical = "".join(
        f'[limits.l{i}]\nrate = "{i + 1}/minute"\non_backend_error = "deny"\n' for i in range(1_000)
    )
    cases = {
        "1,000 limits (typical, accepted)": typical,
        "flat keys, 1 MiB (refused: not a policy)": flat,
        f"dotted keys of {MAX_DOTS_PER_LINE} parts, 1 MiB": fill(
            lambda i: "a." * MAX_DOTS_PER_LINE + f"b{i} = 1"
        ),
        "one dotted key of 20,000 parts (refused before parsing)": "a." * 20_000 + "b = 1",
        "arrays nested 100,000 deep (refused)": "x = " + "[" * 100_000,
    }
    baseline = best(lambda: tomllib.loads(flat))
    print(f"baseline: tomllib.loads of {len(flat):,} bytes of flat keys = 1.00")
    for name, text in cases.items():
        print(
            f"{best(lambda text=text: parse(text)) / baseline:8.2f}  {name} ({len(text):,} bytes)"
        )


if __name__ == "__main__":
    main()

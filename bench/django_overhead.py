"""What a limit costs a Django view: no limiter, atomlimit, django-ratelimit.

The same view (bench/django_site.py) is served by gunicorn and driven by wrk,
once per row per round, in an order that rotates from round to round so a
noisy shared machine slows all rows alike; the median of the rounds is
printed, with each row's ratio to the unlimited view and to django-ratelimit.
django-ratelimit runs on Django's own RedisCache, on the same server.
The script prints figures; it asserts nothing.

    python bench/django_overhead.py                     # 3 rounds of 10 s per row
    python bench/django_overhead.py --rounds 5 --seconds 20 --workers 4

Needs gunicorn, wrk and ``pip install 'atomlimit[bench,django]'``. Without
--url it starts its own redis-server on a free loopback port.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import httpx
from server import redis_server

HERE = Path(__file__).resolve().parent
ROWS = ["none", "atomlimit", "django-ratelimit"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def gunicorn(row: str, url: str, workers: int) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "BENCH_LIMITER": row, "ATOMLIMIT_URL": url}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent / "src")])
    command = [
        sys.executable, "-m", "gunicorn", "django_site:application",
        "--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env)
    base = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise SystemExit(f"gunicorn for {row} did not start")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def wrk(url: str, seconds: int, connections: int) -> tuple[float, int]:
    """Requests per second, and how many answers were not 2xx."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, int(bad[1]) if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a throwaway Redis server (default: start one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (apt-get install wrk)")
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(redis_server())
        rates: dict[str, list[float]] = {row: [] for row in ROWS}
        for n in range(args.rounds):
            for row in ROWS[n % len(ROWS) :] + ROWS[: n % len(ROWS)]:
                with gunicorn(row, url, args.workers) as base:
                    wrk(base, 2, args.connections)  # warm the workers' connections
                    rate, bad = wrk(base, args.seconds, args.connections)
                if bad:
                    raise SystemExit(f"{row}: {bad} answers were not 2xx")
                rates[row].append(rate)
    print(
        f"Django {version('django')}, gunicorn {version('gunicorn')} ({args.workers} workers), "
        f"django-ratelimit {version('django-ratelimit')}, wrk -c{args.connections} "
        f"{args.seconds}s, median of {args.rounds} rounds"
    )
    median = {row: statistics.median(values) for row, values in rates.items()}
    print(f"{'row':<18}{'req/s':>10}{'vs none':>10}{'vs django-ratelimit':>22}")
    for row in ROWS:
        print(
            f"{row:<18}{median[row]:>10.0f}{median[row] / median['none']:>9.2f}x"
            f"{median[row] / median['django-ratelimit']:>21.2f}x"
        )


if __name__ == "__main__":
    main()

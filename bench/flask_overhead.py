"""What a rate limiter costs a Flask route, served by gunicorn and measured by wrk.

The same route three ways, one after another against one throwaway Redis:

- ``none``: no limiter, the baseline;
- ``atomlimit``: ``atomlimit.flask.RateLimits`` with a default limit;
- ``flask-limiter``: Flask-Limiter (pinned in the ``bench`` extra) on its
  Redis storage, with the same default limit.

The limit is far above what a run can send, so nothing is denied and every
variant does the same work per request. Prints requests per second and
each as a ratio of the baseline and of Flask-Limiter; the goal is
atomlimit >= 1.0x Flask-Limiter.

    pip install -e '.[bench,flask]' gunicorn      # and wrk, e.g. apt-get install wrk
    python bench/flask_overhead.py --duration 10 --workers 2 --connections 32
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

VARIANTS = ("none", "atomlimit", "flask-limiter")
LIMIT = "100000000/hour"
"""Never reached: a denial would be cheaper than the work measured."""


def create() -> Any:
    """The application gunicorn serves, chosen by ``$BENCH_VARIANT``."""
    from flask import Flask

    variant, url = os.environ["BENCH_VARIANT"], os.environ["BENCH_URL"]
    app = Flask(__name__)

    if variant == "atomlimit":
        from atomlimit.flask import RateLimits

        app.config.update(ATOMLIMIT_URL=url, ATOMLIMIT_DEFAULT_LIMITS=[LIMIT])
        RateLimits(app)
    elif variant == "flask-limiter":
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        Limiter(get_remote_address, app=app, default_limits=[LIMIT], storage_uri=url)

    @app.get("/")
    def home() -> str:
        return "ok"

    return app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def measure(variant: str, url: str, args: argparse.Namespace) -> float:
    """Requests per second of one variant under gunicorn."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "--chdir", str(Path(__file__).parent),
        "--workers", str(args.workers), "--bind", f"127.0.0.1:{port}",
        "--log-level", "warning", "flask_overhead:create()",
    ]  # fmt: skip
    env = {**os.environ, "BENCH_VARIANT": variant, "BENCH_URL": url}
    server = subprocess.Popen(command, env=env)
    try:
        base = f"http://127.0.0.1:{port}/"
        for _ in range(300):
            try:
                urllib.request.urlopen(base).read()
                break
            except OSError:
                time.sleep(0.1)
        wrk = ["wrk", "-t", "2", "-c", str(args.connections), "-d"]
        subprocess.run([*wrk, "2s", base], capture_output=True, check=True)  # warm up
        out = subprocess.run(
            [*wrk, f"{args.duration}s", base], capture_output=True, text=True, check=True
        ).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise SystemExit(f"{variant}: {non_2xx[1]} responses were not 200; raise LIMIT")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found, out
    return float(found[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a Redis URL; default: a throwaway redis-server")
    parser.add_argument("--duration", type=int, default=10, help="seconds per variant")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="runs of the three, interleaved")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from server import redis_server

    if args.url:
        run(args.url, args)
    else:
        with redis_server() as url:
            run(url, args)


def run(url: str, args: argparse.Namespace) -> None:
    rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            rates[variant].append(measure(variant, url, args))
    best = {variant: max(found) for variant, found in rates.items()}
    print(f"gunicorn {args.workers} workers, wrk {args.connections} connections, "
          f"{args.duration} s per run, best of {args.rounds}")  # fmt: skip
    print(f"{'variant':<14} {'req/s':>9} {'vs none':>8} {'vs flask-limiter':>17}")
    for variant in VARIANTS:
        rate = best[variant]
        print(
            f"{variant:<14} {rate:>9.0f} {rate / best['none']:>7.2f}x "
            f"{rate / best['flask-limiter']:>16.2f}x"
        )


if __name__ == "__main__":
    main()

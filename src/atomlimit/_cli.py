"""Command line: ``atomlimit demo`` (also ``python -m atomlimit demo``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence

from atomlimit import _demo


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command."""
    parser = argparse.ArgumentParser(prog="atomlimit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="race the read-then-write pattern against atomlimit and print the counts"
    )
    demo.add_argument(
        "--url", help="Redis or Valkey URL; default: start an embedded Valkey on loopback"
    )
    demo.add_argument("--workers", type=int, default=1000, help="concurrent tasks (default 1000)")
    demo.add_argument("--limit", type=int, default=100, help="rate limit (default 100)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.limit < 1:
        parser.error("--workers and --limit must be at least 1")

    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(_demo.embedded_server())
        where = url if args.url else f"an embedded Valkey at {url}"
        outcomes = asyncio.run(_demo.run_races(url, args.workers, args.limit))
        print(_demo.render(outcomes, args.workers, where))
    return 0

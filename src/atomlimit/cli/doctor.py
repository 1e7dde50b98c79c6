"""``atomlimit doctor``: can this server keep atomlimit's counts exact?

The checks live in `atomlimit.cli._findings`, and the questions they
need in `atomlimit.cli._diagnose`; this module connects, runs them on
every primary and prints the findings.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from redis.cluster import RedisCluster

from atomlimit._fitness import Finding
from atomlimit.cli._commands import Commands
from atomlimit.cli._connect import add_url_argument, connect, parse_url, reported
from atomlimit.cli._diagnose import diagnose
from atomlimit.cli._exit import FAILED, OK

_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CHECK_WIDTH = len("replication")

_EPILOG = """\
checks, on every primary of a cluster:
  server       name and version (Redis or Valkey), from INFO
  scripting    a tiny script runs through EVALSHA and reads TIME
  acl          ACL DRYRUN of every command atomlimit sends, as the connected user
  eviction     maxmemory and maxmemory-policy: an evicted counter over-admits
  persistence  AOF or RDB save points: without them a restart forgets every count
  cluster      cluster mode
  replication  a replica cannot decide; a failover can lose recent charges

examples:
  atomlimit doctor --url redis://127.0.0.1:6380/0
  ATOMLIMIT_URL=redis://limiter:secret@cache:6380/2 atomlimit doctor

exit codes: 0 no check failed (warnings allowed); 1 a check failed;
2 the server could not be reached (bad URL, unreachable, authentication refused).
"""


def add_parser(commands: Commands) -> None:
    """Register ``doctor``."""
    parser = commands.add_parser(
        "doctor",
        help="check that a server can keep atomlimit's limits exact",
        description=(
            "Check a Redis or Valkey server (every primary of a cluster) for what\n"
            "atomlimit needs, and print each finding as ok, warn or fail, with advice.\n"
            "Run it with the limiter's own URL and user, so that the ACL check sees\n"
            "the limiter's rights."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_url_argument(parser, required=True)
    parser.add_argument(
        "--prefix",
        default="atomlimit",
        type=_prefix,
        help="the limiter's key prefix; the ACL check asks about a key under it "
        "(default: atomlimit)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the server at ``--url``; exit 1 if any check failed."""
    url = parse_url(args.url)
    with connect(url) as client, reported(url):
        reports = diagnose(client, db=url.db, prefix=args.prefix)
        cluster = isinstance(client, RedisCluster)
    print(render(url.shown, reports, cluster=cluster))
    failed = any(f.level == "fail" for _, findings in reports for f in findings)
    return FAILED if failed else OK


def _prefix(text: str) -> str:
    if not _PREFIX.fullmatch(text):
        raise argparse.ArgumentTypeError("must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return text


def render(shown: str, reports: Sequence[tuple[str, Sequence[Finding]]], *, cluster: bool) -> str:
    """The findings, grouped by server, then a one-line tally."""
    kind = f"cluster of {len(reports)} primaries" if cluster else "standalone"
    lines = [f"atomlimit doctor: {shown} ({kind})"]
    indent = " " * (2 + 4 + 2 + _CHECK_WIDTH + 2)
    for where, findings in reports:
        lines += ["", where]
        for finding in findings:
            lines.append(
                f"  {finding.level:<4}  {finding.check:<{_CHECK_WIDTH}}  {finding.message}"
            )
            if finding.advice:
                lines.append(f"{indent}-> {finding.advice}")
    levels = [f.level for _, findings in reports for f in findings]
    tally = ", ".join(f"{levels.count(level)} {level}" for level in ("fail", "warn", "ok"))
    lines += ["", tally]
    return "\n".join(lines)

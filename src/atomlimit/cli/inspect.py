"""``atomlimit inspect``: what the server holds for a prefix, a limit or a subject.

Read-only. Keys are found with SCAN (never KEYS, which blocks the server
while it walks every key), on every primary of a cluster, and both the keys
shown and the SCAN calls made stop at a hard cap.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from atomlimit._inputs import MAX_SUBJECT
from atomlimit.cli import _stored
from atomlimit.cli._commands import Commands
from atomlimit.cli._connect import add_url_argument, connect, parse_url, primaries, reported
from atomlimit.cli._exit import OK
from atomlimit.cli.doctor import _prefix

DEFAULT_SHOWN = 100
MAX_SHOWN = 10_000

_EPILOG = f"""\
columns:
  subject, limit, kind   as the application named them (kind as in the spec)
  part                   window (a fixed window's or a spend cap's), state,
                         holds and held (a spend cap's reservations), or a record
  usage                  what is counted there, in the limit's units or currency
  ends                   when the key expires, on the server's clock: a fixed
                         window's key ends with its window
  ttl                    the same, as time left

SCAN looks at {_stored.SCAN_COUNT:,} keys per call and stops after {_stored.MAX_SCANS:,} calls per
server, or once --max-keys keys are found; the output says when it stopped early.

examples:
  atomlimit inspect --url redis://127.0.0.1:6380/0 --subject client-42
  atomlimit inspect --url redis://127.0.0.1:6380/0 --name enrichment --max-keys 20
"""


def add_parser(commands: Commands) -> None:
    """Register ``inspect``."""
    parser = commands.add_parser(
        "inspect",
        help="show the usage, window end and TTL atomlimit keeps for limits and subjects",
        description=(
            "Show what atomlimit keeps on a server: for each key of the prefix (or of\n"
            "one limit, or one subject), the usage stored, when it ends and its TTL.\n"
            "Reads only."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_url_argument(parser, required=True)
    add_scope_arguments(parser)
    parser.add_argument(
        "--max-keys",
        type=_count,
        default=DEFAULT_SHOWN,
        help=f"most keys to show, 1 to {MAX_SHOWN:,} (default {DEFAULT_SHOWN})",
    )
    parser.set_defaults(run=run)


def add_scope_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--prefix``, ``--name`` and ``--subject``: which keys a command looks at."""
    parser.add_argument(
        "--prefix",
        default="atomlimit",
        type=_prefix,
        help="the limiter's key prefix (default: atomlimit)",
    )
    parser.add_argument("--name", required=required, type=_name, help="a limit's name")
    parser.add_argument(
        "--subject",
        required=required,
        type=_subject,
        help="a subject, as the application passes it",
    )


def run(args: argparse.Namespace) -> int:
    """Print every key found, then how the search ended."""
    url = parse_url(args.url)
    match = _stored.pattern(args.prefix, args.subject, args.name)
    wanted = _stored.wanted(args.subject, args.name)
    entries: list[_stored.Entry] = []
    complete = True
    with connect(url) as client, reported(url):
        for _, node in primaries(client):
            keys, done = _stored.scan(node, match, args.max_keys - len(entries))
            complete = complete and done
            parsed = [k for k in (_stored.parse(key, args.prefix) for key in keys) if k]
            entries.extend(_stored.read(node, [k for k in parsed if wanted(k)]))
            if len(entries) >= args.max_keys:
                complete = complete and len(entries) == args.max_keys and done
                break
    print(render(url.shown, entries))
    if not complete:
        print(
            f"\nstopped early (--max-keys {args.max_keys:,}, or {_stored.MAX_SCANS:,} SCAN calls "
            "per server): narrow it with --subject or --name"
        )
    return OK


def render(shown: str, entries: list[_stored.Entry]) -> str:
    """The entries as a table, sorted by subject, limit and part."""
    if not entries:
        return f"{shown}: no atomlimit keys found"
    rows = [("subject", "limit", "kind", "part", "usage", "ends", "ttl")]
    for entry in sorted(entries, key=lambda e: (e.key.subject, e.key.name, e.key.kind, e.key.key)):
        key = entry.key
        rows.append(
            (
                key.subject,
                key.name,
                _stored.KINDS[key.kind],
                key.part,
                entry.usage,
                _when(entry.ends),
                _ttl(entry.ttl_ms),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{shown}: {len(entries)} key{'s' if len(entries) != 1 else ''}", ""]
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}Z"


def _ttl(ms: int) -> str:
    if ms < 0:
        return "none"
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _count(text: str) -> int:
    value = int(text) if text.strip().isdigit() else 0
    if not 1 <= value <= MAX_SHOWN:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_SHOWN:,}")
    return value


def _name(text: str) -> str:
    if not 1 <= len(text) <= 256:
        raise argparse.ArgumentTypeError("must be 1 to 256 characters, as a spec's name")
    return text


def _subject(text: str) -> str:
    if len(text) > MAX_SUBJECT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SUBJECT:,} characters")
    return text

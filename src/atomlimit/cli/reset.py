"""``atomlimit reset``: forget one subject's usage of one limit, on the operator's word.

Without ``--yes`` it only lists what it would delete. With it, it deletes
every key of that limit and subject: its windows or state, a spend cap's
holds, and the records of its request ids, so a request id sent again is
decided afresh. All of a subject's keys live in one hash slot, so on a
cluster they sit on one primary and go in one DEL.
"""

from __future__ import annotations

import argparse

from atomlimit.cli import _stored
from atomlimit.cli._commands import Commands
from atomlimit.cli._connect import add_url_argument, connect, parse_url, primaries, reported
from atomlimit.cli._exit import OK
from atomlimit.cli.inspect import add_scope_arguments, render

MAX_DELETED = 100_000
"""Keys one reset deletes at most; one subject of one limit holds a handful."""

_EPILOG = """\
It deletes what the limiter's own reset() does, and more: every window kept
for the limit and subject, not only the current ones, a spend cap's holds,
and the records of request ids charged to it. Records of an acquire over
several limits are named by a digest of those limits, not by one name, and
expire by themselves.

examples:
  atomlimit reset --url redis://127.0.0.1:6380/0 --name enrichment --subject client-42
  atomlimit reset --url redis://127.0.0.1:6380/0 --name ai --subject client-42 --yes
"""


def add_parser(commands: Commands) -> None:
    """Register ``reset``."""
    parser = commands.add_parser(
        "reset",
        help="delete one subject's usage of one limit (lists it first, deletes with --yes)",
        description=(
            "Delete what atomlimit keeps for one subject under one limit, so its next\n"
            "request starts from zero. Without --yes, list the keys it would delete."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_url_argument(parser, required=True)
    add_scope_arguments(parser, required=True)
    parser.add_argument(
        "--kind",
        choices=sorted(_stored.CODES),
        metavar="KIND",
        help="only this kind of limit, when several kinds share the name: "
        + ", ".join(sorted(_stored.CODES)),
    )
    parser.add_argument("--yes", action="store_true", help="delete; without it, only list")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """List the subject's keys of the limit, and delete them with ``--yes``."""
    url = parse_url(args.url)
    match = _stored.pattern(args.prefix, args.subject, args.name)
    kind = None if args.kind is None else _stored.CODES[args.kind]
    wanted = _stored.wanted(args.subject, args.name)
    listed: list[_stored.Entry] = []
    deleted = 0
    with connect(url) as client, reported(url):
        for _, node in primaries(client):
            keys, _ = _stored.scan(node, match, MAX_DELETED)
            found = [
                key
                for key in (_stored.parse(text, args.prefix) for text in keys)
                if key is not None and wanted(key) and (kind is None or key.kind == kind)
            ]
            listed.extend(_stored.read(node, found))
            if args.yes and found:
                deleted += int(node.delete(*(key.key for key in found)))
    if not listed:
        print(f"{url.shown}: nothing stored for {args.name!r} and subject {args.subject!r}")
        return OK
    print(render(url.shown, listed))
    if args.yes:
        print(f"\ndeleted {deleted} key{'s' if deleted != 1 else ''}")
    else:
        print(f"\nnothing deleted: run again with --yes to delete these {len(listed)} keys")
    return OK

"""``atomlimit version``: this package's version, and with ``--url`` the server's."""

from __future__ import annotations

import argparse
import platform

import pydantic
import redis

from atomlimit import __version__
from atomlimit.cli._commands import Commands
from atomlimit.cli._connect import add_url_argument, connect, parse_url, primaries, reported
from atomlimit.cli._exit import OK, CommandError
from atomlimit.cli._findings import server_identity

_EPILOG = """\
examples:
  atomlimit version
  atomlimit version --url redis://127.0.0.1:6380/0
"""


def add_parser(commands: Commands) -> None:
    """Register ``version``."""
    parser = commands.add_parser(
        "version",
        help="print the versions of atomlimit, its dependencies and a server",
        description=(
            "Print the versions of atomlimit, redis-py, pydantic and Python, and with\n"
            "--url the server's (every primary's, for a cluster): what a bug report needs."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_url_argument(parser, required=False)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the versions; ask the server only when ``--url`` is given."""
    print(f"atomlimit {__version__}")
    print(
        f"redis-py {redis.__version__}, pydantic {pydantic.VERSION}, "
        f"Python {platform.python_version()}"
    )
    if args.url is None:
        return OK
    url = parse_url(args.url)
    with connect(url) as client, reported(url):
        for where, node in primaries(client):
            try:
                info = node.info("server")
            except redis.ResponseError as err:
                raise CommandError(f"{url.shown}: INFO refused on {where}: {err}") from err
            print(f"{where}: {server_identity(info)}")
    return OK

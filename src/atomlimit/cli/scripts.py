"""``atomlimit scripts load``: put every shipped script in the server's cache.

The limiter loads a script itself when ``EVALSHA`` answers ``NOSCRIPT``, which
needs ``SCRIPT LOAD``. Where the limiter's ACL user may not run it, an
operator preloads the scripts instead, as a user who may, after every
deploy, restart, failover or ``SCRIPT FLUSH``.
"""

from __future__ import annotations

import argparse

import redis

from atomlimit import _scripts
from atomlimit.cli._commands import Commands
from atomlimit.cli._connect import add_url_argument, connect, parse_url, primaries, reported
from atomlimit.cli._exit import OK, CommandError

_LOAD_EPILOG = """\
The script cache lives in memory: run this again after every deploy of a new
atomlimit version, and after a restart, a failover or SCRIPT FLUSH. The SHAs
printed are the ones the limiter sends with EVALSHA.

examples:
  atomlimit scripts load --url redis://admin:secret@cache:6380/0
  ATOMLIMIT_URL=redis://admin:secret@cache:6380/0 atomlimit scripts load

exit codes: 0 every script loaded on every primary; 1 the server refused;
2 the server could not be reached.
"""


def add_parser(commands: Commands) -> None:
    """Register ``scripts`` and its actions."""
    parser = commands.add_parser(
        "scripts",
        help="manage atomlimit's Lua scripts on a server",
        description="Manage atomlimit's Lua scripts on a server.",
        epilog='Run "atomlimit scripts ACTION --help" for an action\'s options.',
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = actions.add_parser(
        "load",
        help="preload every script (on every primary of a cluster)",
        description=(
            "Load every script atomlimit ships into the server's script cache, on\n"
            "every primary of a cluster, and print each name with its SHA1. For\n"
            "deployments whose ACL forbids SCRIPT LOAD to the limiter at runtime."
        ),
        epilog=_LOAD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_url_argument(load, required=True)
    load.set_defaults(run=run_load)


def run_load(args: argparse.Namespace) -> int:
    """Load every script on every primary; print names and SHAs."""
    url = parse_url(args.url)
    scripts = [_scripts.script(name) for name in _scripts.all_names()]
    with connect(url) as client, reported(url):
        nodes = primaries(client)
        for where, node in nodes:
            for script in scripts:
                try:
                    sha = node.script_load(script.source)
                except redis.exceptions.NoPermissionError as err:
                    raise CommandError(
                        f"{url.shown}: SCRIPT LOAD refused on {where}: {err}; "
                        "run this as a user allowed +script|load"
                    ) from err
                if sha != script.sha:
                    # SCRIPT LOAD answers the SHA1 of the text it got, so a
                    # mismatch means the bytes changed on the way.
                    raise CommandError(
                        f"{where} loaded {script.name} as {sha}, expected {script.sha}"
                    )
    width = max(len(script.name) for script in scripts)
    for script in scripts:
        print(f"{script.name:<{width}}  {script.sha}")
    servers = ", ".join(where for where, _ in nodes)
    print(f"\nloaded {len(scripts)} scripts on {servers}")
    return OK

"""The ``atomlimit`` command line (also ``python -m atomlimit``).

One module per command. Each has ``add_parser(commands)``, which registers
its sub-parser and sets ``run`` (a function from the parsed arguments to an
exit code); adding a command is a new module and one entry in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import NoReturn

import redis

from atomlimit import __version__
from atomlimit.cli import demo, doctor, inspect, override, pause, policy, reset, scripts, version
from atomlimit.cli._exit import FAILED, UNREACHABLE, CommandError, one_line

COMMANDS: tuple[ModuleType, ...] = (
    version,
    doctor,
    scripts,
    inspect,
    reset,
    override,
    pause,
    policy,
    demo,
)

_EPILOG = """\
examples:
  atomlimit doctor --url redis://127.0.0.1:6380/0
  atomlimit scripts load --url redis://limiter-admin:secret@cache:6380/0
  atomlimit inspect --url redis://127.0.0.1:6380/0 --subject client-42
  atomlimit reset --url redis://127.0.0.1:6380/0 --name ai --subject client-42 --yes
  atomlimit override set --url redis://127.0.0.1:6380/0 --policies policies.toml \\
      --name api --subject client-42 --limit 2000 --yes
  atomlimit pause clear --url redis://127.0.0.1:6380/0 --upstream openai:gpt-4.1 --yes
  atomlimit policy check policies.toml
  atomlimit demo

exit codes: 0 done; 1 a check failed or the server refused; 2 no server to ask
(bad URL, unreachable, authentication refused) or a bad command line.
Run "atomlimit COMMAND --help" for a command's options.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = _Parser(
        prog="atomlimit",
        description=(
            "Operate atomlimit: check a server, preload scripts, inspect and reset usage,\n"
            "check a policy file."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"atomlimit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default: ``sys.argv[1:]``); return its exit code."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except CommandError as err:
        return _fail(args.command, str(err), err.code)
    except KeyboardInterrupt:
        return _fail(args.command, "interrupted", 130)
    except (redis.ConnectionError, redis.TimeoutError) as err:
        return _fail(args.command, f"lost the server: {err}", UNREACHABLE)
    except Exception as err:
        # The promise is one line on stderr, never a traceback, even for a
        # failure nobody foresaw; the type name is what a bug report needs.
        return _fail(args.command, f"{type(err).__name__}: {err}", FAILED)


def _fail(command: str, message: str, code: int) -> int:
    print(f"atomlimit {command}: {one_line(message)}", file=sys.stderr)
    return code

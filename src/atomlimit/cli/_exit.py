"""Exit codes, and the one error a command raises to stop with a message.

Every command exits the same way, so scripts around the CLI can branch on
the code alone: 0 done, 1 the server answered but something is wrong, 2 there
was no server to ask (bad URL, unreachable, authentication refused) or the
command line itself was wrong, as argparse reports it.
"""

from __future__ import annotations

OK = 0
FAILED = 1
UNREACHABLE = 2


class CommandError(Exception):
    """Stop the command: print ``message`` as one line on stderr and exit with ``code``."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(one_line(message))
        self.code = code


def one_line(text: str) -> str:
    """``text`` with its whitespace runs, newlines included, made single spaces."""
    return " ".join(text.split())

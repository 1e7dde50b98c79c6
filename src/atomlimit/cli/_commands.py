"""What a command module registers itself with: the CLI's subcommand table."""

from __future__ import annotations

import argparse
from typing import Any, Protocol


class Commands(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as commands use it
    (argparse names its class privately)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...

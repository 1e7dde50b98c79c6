"""``atomlimit policy check``: validate a policy file without a server.

It reads the file as [`load`][atomlimit.policies.load] would, prints one line
per limit (and per tier that changes it), and exits 0; a bad file exits 1
with the message a reload would raise, naming the file, table and field.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from atomlimit._errors import InvalidInput
from atomlimit._rates import spell_window
from atomlimit._windows import Window
from atomlimit.cli._commands import Commands
from atomlimit.cli._exit import OK, CommandError
from atomlimit.policies import PolicySet, load
from atomlimit.specs import Concurrency, RateLimit, Spec, SpendCap

_CHECK_EPILOG = """\
Nothing is sent anywhere: the file is read and every limit built, as the
application will build it. Run it before a deploy or a reload.

examples:
  atomlimit policy check policies.toml

exit codes: 0 the file is good; 1 it is not (the message names the file,
the table and the field).
"""

_EPILOG = """\
examples:
  atomlimit policy check policies.toml
"""


def add_parser(commands: Commands) -> None:
    """Register ``policy`` and its actions."""
    parser = commands.add_parser(
        "policy",
        help="check a policy file of limits",
        description="Work with a TOML policy file of limits (docs/policies.md).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="validate a policy file and print each limit",
        description=(
            "Validate a policy file, without a server, and print each limit: its\n"
            "kind, value, window and failure policy, and what each tier changes."
        ),
        epilog=_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", metavar="FILE", help="the policy file, e.g. policies.toml")
    check.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Load the file; print a line per limit and per tier's change to it."""
    try:
        policies = load(args.file).current()
    except InvalidInput as err:
        raise CommandError(str(err)) from err
    width = max(len(name) for name in policies)
    for name, spec in policies.items():
        print(f"{name:<{width}}  {summary(spec)}")
    for tier, specs in policies.tiers.items():
        changed = [name for name in policies if specs[name] != policies[name]]
        print(f"\ntier {tier}: " + ("as [limits]" if not changed else f"{len(changed)} changed"))
        for name in changed:
            print(f"  {name:<{width}}  {summary(specs[name])}")
    print(f"\n{_counts(policies)}: ok")
    return OK


def summary(spec: Spec[Any]) -> str:
    """One line saying what ``spec`` allows: ``rate_limit 500/minute fixed_window ...``."""
    if isinstance(spec, RateLimit):
        parts = [f"rate_limit {spec.limit}/{_window(spec.window, spec.tz)}", spec.algorithm]
        if spec.burst is not None:
            parts.append(f"burst={spec.burst}")
    elif isinstance(spec, SpendCap):
        parts = [f"spend_cap {spec.limit} {spec.currency}/{_window(spec.window, spec.tz)}"]
        parts.append(f"unit={spec.unit}")
    elif isinstance(spec, Concurrency):
        parts = [f"concurrency {spec.limit} at once", f"lease={_length(spec.lease)}"]
    else:
        parts = [type(spec).__name__]
    if getattr(spec, "shadow", False):
        parts.append("shadow")
    parts.append(f"on_backend_error={spec.on_backend_error}")
    return "  ".join(parts)


def _window(window: Window, tz: str) -> str:
    return spell_window(window) if tz == "UTC" else f"{spell_window(window)}@{tz}"


def _length(length: timedelta) -> str:
    # A lease of whole milliseconds (every one a spec accepts) in the rate
    # grammar's spelling: "60s", "15m".
    return spell_window(length) if not length % timedelta(milliseconds=1) else str(length)


def _counts(policies: PolicySet) -> str:
    limits = f"{len(policies)} limit{'s' if len(policies) != 1 else ''}"
    tiers = f"{len(policies.tiers)} tier{'s' if len(policies.tiers) != 1 else ''}"
    return f"{policies.source}: {limits}, {tiers}"

"""``atomlimit override``: read and change one subject's override of a limit.

An override (docs/overrides.md) replaces a limit's ``limit`` for one
subject, on the server, for every worker at its next decision. The limit
itself comes from the application's policy file (docs/policies.md), since
setting an override needs its kind, window and units: ``--policies`` names
the file, ``--name`` the limit and ``--tier`` the plan, if any.

``get`` and ``list`` only read. ``set`` and ``rm`` follow ``reset``'s rule:
without ``--yes`` they say what they would do and change nothing.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from atomlimit import InvalidInput, Limiter, Spec, SpendCap
from atomlimit._codecs import codec_of
from atomlimit._override_plan import MAX_LISTED, Override, plan_set
from atomlimit._rates import parse_rate
from atomlimit._windows import UNIT_LENGTHS, to_us
from atomlimit.cli._commands import Commands
from atomlimit.cli._connect import add_url_argument, connect, parse_url, reported
from atomlimit.cli._exit import OK, CommandError
from atomlimit.cli.inspect import add_scope_arguments
from atomlimit.policies import load

_EPILOG = """\
The limit is read from the policy file the application loads: an override
is kept per limit kind and name, so --tier picks the plan's version of the
limit when a tier changes its algorithm. --expires takes an ISO 8601 time
with its offset, or a length from now ("8h", "90 minutes"); without it an
override holds until removed. reset keeps overrides; rm removes one.

examples:
  atomlimit override get --url redis://127.0.0.1:6380/0 --policies policies.toml \\
      --name api --subject client-42
  atomlimit override set --url redis://127.0.0.1:6380/0 --policies policies.toml \\
      --name api --subject client-42 --limit 2000 --expires 2026-12-31T00:00:00+00:00 --yes
  atomlimit override rm --url redis://127.0.0.1:6380/0 --policies policies.toml \\
      --name api --subject client-42 --yes
  atomlimit override list --url redis://127.0.0.1:6380/0 --policies policies.toml --name api
"""


def add_parser(commands: Commands) -> None:
    """Register ``override`` and its actions ``set``, ``get``, ``rm`` and ``list``."""
    parser = commands.add_parser(
        "override",
        help="read, set or remove one subject's override of a limit",
        description="Operate per-subject overrides of a limit declared in a policy file.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    helps = {
        "set": "make a limit in force for one subject (says what it would do; sets with --yes)",
        "get": "show the override in force for one subject, if any",
        "rm": "remove one subject's override (says what it would do; removes with --yes)",
        "list": "list the subjects with an override of a limit",
    }
    for action, text in helps.items():
        sub = actions.add_parser(
            action,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_url_argument(sub, required=True)
        add_scope_arguments(sub, required=action != "list")
        if action == "list":
            sub.set_defaults(subject=None)
            sub.add_argument(
                "--max",
                type=int,
                default=100,
                help=f"list at most this many subjects (default 100, at most {MAX_LISTED:,})",
            )
        sub.add_argument("--policies", required=True, help="the policy file declaring the limit")
        sub.add_argument("--tier", help="the plan whose version of the limit to use")
        if action == "set":
            sub.add_argument("--limit", required=True, help="the limit in force for the subject")
            sub.add_argument("--burst", type=int, help="a gcra limit's burst (default: --limit)")
            sub.add_argument(
                "--expires", help='when it lapses: ISO 8601 with an offset, or "8h" from now'
            )
        if action in ("set", "rm"):
            sub.add_argument("--yes", action="store_true", help="change; without it, only say")
        sub.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Do ``args.action`` on the limit named in the policy file."""
    spec = _spec(args)
    url = parse_url(args.url)
    with connect(url) as client, reported(url), Limiter(client, prefix=args.prefix) as limiter:
        try:
            return _ACTIONS[args.action](args, limiter, spec, url.shown)
        except InvalidInput as err:
            raise CommandError(str(err)) from err


def _spec(args: argparse.Namespace) -> Spec[Any]:
    try:
        policies = load(args.policies).current()
        specs = policies if args.tier is None else policies.tier(args.tier)
    except InvalidInput as err:
        raise CommandError(str(err)) from err
    if args.name not in specs:
        raise CommandError(f"{args.policies} declares no limit named {args.name!r}")
    return specs[args.name]


def _get(args: argparse.Namespace, limiter: Limiter, spec: Spec[Any], shown: str) -> int:
    found = limiter.overrides.get(spec, args.subject)
    print(f"{shown}: {_now_line(spec, args.subject, found)}")
    return OK


def _set(args: argparse.Namespace, limiter: Limiter, spec: Spec[Any], shown: str) -> int:
    limit = _limit(spec, args.limit)
    expires = _expires(args.expires)
    found = limiter.overrides.get(spec, args.subject)
    print(f"{shown}: {_now_line(spec, args.subject, found)}")
    wanted = f"limit {limit}" + ("" if args.burst is None else f", burst {args.burst}")
    wanted += f", until {expires.isoformat()}" if isinstance(expires, datetime) else ""
    wanted += f", for {expires}" if isinstance(expires, timedelta) else ""
    if not args.yes:
        # Checked now, so a refused value shows before the operator confirms.
        plan_set(spec, "", limit, args.burst, expires, _now_us(), "")
        print(f"nothing changed: run again with --yes to set {wanted}")
        return OK
    limiter.overrides.set(spec, args.subject, limit=limit, burst=args.burst, expires=expires)
    print(f"set {wanted}")
    return OK


def _rm(args: argparse.Namespace, limiter: Limiter, spec: Spec[Any], shown: str) -> int:
    found = limiter.overrides.get(spec, args.subject)
    print(f"{shown}: {_now_line(spec, args.subject, found)}")
    if found is None:
        return OK
    if not args.yes:
        print("nothing removed: run again with --yes to remove it")
        return OK
    removed = limiter.overrides.delete(spec, args.subject)
    print("removed" if removed else "it lapsed before it could be removed")
    return OK


def _list(args: argparse.Namespace, limiter: Limiter, spec: Spec[Any], shown: str) -> int:
    subjects = limiter.overrides.list(spec, count=args.max)
    count = len(subjects)
    print(f"{shown}: {count} subject{'s' if count != 1 else ''} with an override of {spec.name!r}")
    for subject in sorted(subjects):
        print(f"  {subject}")
    return OK


_ACTIONS = {"get": _get, "set": _set, "rm": _rm, "list": _list}


def _now_line(spec: Spec[Any], subject: str, found: Override | None) -> str:
    if found is None:
        own = codec_of(spec).limit_value
        return f"{spec.name!r} for {subject!r}: no override; the spec's limit {own} applies"
    burst = "" if found.burst is None else f", burst {found.burst}"
    until = "never expires" if found.expires is None else f"until {found.expires.isoformat()}"
    return (
        f"{spec.name!r} for {subject!r}: override limit {found.limit}{burst}, {until}"
        f" (the spec's limit: {codec_of(spec).limit_value})"
    )


def _limit(spec: Spec[Any], text: str) -> int | Decimal:
    try:
        return Decimal(text) if isinstance(spec, SpendCap) else int(text)
    except (ValueError, InvalidOperation) as err:
        raise CommandError(f"--limit must be a number, got {text!r}") from err


def _expires(text: str | None) -> datetime | timedelta | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        try:
            return _length(text)
        except InvalidInput as err:
            raise CommandError(
                f'--expires must be ISO 8601 with an offset or a length such as "8h", got {text!r}'
            ) from err
    if at.tzinfo is None:
        raise CommandError(f"--expires needs an offset (such as +00:00), got {text!r}")
    return at.astimezone(UTC)


def _length(text: str) -> timedelta:
    window = parse_rate("1/" + text).window
    if isinstance(window, timedelta):
        return window
    length = UNIT_LENGTHS.get(window)
    if length is None:
        raise InvalidInput(f"a month has no fixed length, got {text!r}")
    return length


def _now_us() -> int:
    return to_us(datetime.now(UTC))

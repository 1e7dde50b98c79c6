"""``atomlimit pause clear``: end an upstream's pause, on the operator's word.

A model call's ``backoff`` (or ``limiter.pause``) pauses an upstream's
requests and tokens limits for every worker; each limit keeps its pause in
a guard hash beside it (``lua/lib/guard.lua``). Without ``--yes`` this lists
the guards it found and what each holds; with it, it ends the pause, and
with ``--forget`` also drops the outside use the provider's figures taught,
as ``limiter.clear_pause(upstream, forget=...)`` does, without code and
without the application's limit specs. All of an upstream's keys live in one
hash slot, so on a cluster they sit on one primary.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime

import redis

from atomlimit import _keys
from atomlimit._windows import from_us
from atomlimit.cli import _stored
from atomlimit.cli._commands import Commands
from atomlimit.cli._connect import add_url_argument, connect, parse_url, primaries, reported
from atomlimit.cli._exit import OK
from atomlimit.cli.doctor import _prefix
from atomlimit.cli.inspect import _name, _subject

MAX_GUARDS = 1_000
"""Guards one command touches at most: an upstream has a handful."""

_EPILOG = """\
An upstream's name is the subject its limits are kept under: the name given
to Upstream(...). --name narrows it to one limit of that upstream. Each
guard is shown with when its pause ends and the outside use it learned
(units charged to the current window for use outside the fleet).

examples:
  atomlimit pause clear --url redis://127.0.0.1:6380/0 --upstream openai:gpt-4.1
  atomlimit pause clear --url redis://127.0.0.1:6380/0 --upstream openai:gpt-4.1 --yes
  atomlimit pause clear --url redis://127.0.0.1:6380/0 --upstream openai:gpt-4.1 \\
      --name openai-tpm --forget --yes
"""


@dataclass(frozen=True, slots=True)
class Guard:
    """One limit's guard: its key, the limit's kind and name, what it holds."""

    key: str
    kind: str
    name: str
    paused_until: datetime | None
    learned: int


def add_parser(commands: Commands) -> None:
    """Register ``pause`` and its one action, ``clear``."""
    parser = commands.add_parser(
        "pause",
        help="end an upstream's pause (lists it first, clears with --yes)",
        description="Operate an upstream's pause, taken by a model call's backoff.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    clear = actions.add_parser(
        "clear",
        help="end an upstream's pause (lists it first, clears with --yes)",
        description=(
            "End the pause of an upstream's requests and tokens limits, for every\n"
            "worker at once. Without --yes, list each limit's pause and what it learned."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_url_argument(clear, required=True)
    clear.add_argument(
        "--prefix",
        default="atomlimit",
        type=_prefix,
        help="the limiter's key prefix (default: atomlimit)",
    )
    clear.add_argument(
        "--upstream",
        required=True,
        type=_upstream,
        help="the upstream's name, as given to Upstream(...)",
    )
    clear.add_argument("--name", type=_name, help="only this limit of the upstream")
    clear.add_argument(
        "--forget",
        action="store_true",
        help="also forget the outside use the provider's figures taught",
    )
    clear.add_argument("--yes", action="store_true", help="clear; without it, only list")
    clear.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """List the upstream's guards, and clear them with ``--yes``."""
    upstream: str = args.upstream
    url = parse_url(args.url)
    match = _keys.scan_pattern(args.prefix, upstream, args.name)
    name_part = None if args.name is None else _keys.encode(args.name)
    found: list[Guard] = []
    with connect(url) as client, reported(url):
        for _, node in primaries(client):
            keys, _ = _stored.scan(node, match, MAX_GUARDS)
            guards = _read(node, [k for k in keys if _of(k, args.prefix, upstream, name_part)])
            found.extend(guards)
            if args.yes and guards:
                _clear(node, guards, args.forget)
    if not found:
        print(f"{url.shown}: no pause or learned use kept for upstream {upstream!r}")
        return OK
    print(_render(url.shown, upstream, found))
    if not args.yes:
        print(f"\nnothing cleared: run again with --yes to clear these {len(found)} limits")
    elif args.forget:
        print(f"\ncleared the pause and forgot what was learned, on {len(found)} limits")
    else:
        print(f"\ncleared the pause on {len(found)} limits (learned use kept)")
    return OK


def _upstream(text: str) -> str:
    # An upstream's name is the subject of its limits, and as bounded.
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return _subject(text)


def _of(key: str, prefix: str, upstream: str, name_part: str | None) -> bool:
    """Whether ``key`` is a guard of a limit of ``upstream`` (and of ``--name``)."""
    head = _keys.namespace(prefix) + _keys.subject_tag(upstream) + ":"
    if not key.startswith(head):
        return False
    parts = key[len(head) :].split(":")
    return (
        len(parts) == 3
        and parts[2] == _keys.GUARD
        and parts[0] in _stored.KINDS
        and (name_part is None or parts[1] == name_part)
    )


def _read(node: redis.Redis, keys: list[str]) -> list[Guard]:
    if not keys:
        return []
    now = _stored.server_now(node)
    pipe = node.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, ["p", "c"])
    guards = []
    for key, (paused, learned) in zip(keys, pipe.execute(), strict=True):
        kind, stored_name = key.rsplit(":", 3)[1:3]
        until = int(paused) if paused else 0
        guards.append(
            Guard(
                key,
                _stored.KINDS[kind],
                _stored.decode(stored_name),
                from_us(until) if until > now else None,
                int(learned or 0),
            )
        )
    return guards


def _clear(node: redis.Redis, guards: list[Guard], forget: bool) -> None:
    # One command per guard, each atomic; a worker's pause arriving between
    # the read and this clear is cleared too, which is what was asked.
    pipe = node.pipeline(transaction=False)
    for guard in guards:
        if forget:
            pipe.delete(guard.key)
        else:
            pipe.hdel(guard.key, "p")
    pipe.execute()


def _render(shown: str, upstream: str, guards: list[Guard]) -> str:
    lines = [f"{shown}: upstream {upstream!r}, {len(guards)} limits"]
    for guard in sorted(guards, key=lambda g: (g.name, g.kind)):
        paused = (
            "paused until " + guard.paused_until.isoformat(timespec="seconds")
            if guard.paused_until
            else "not paused"
        )
        lines.append(f"  {guard.name} ({guard.kind}): {paused}; learned {guard.learned}")
    return "\n".join(lines)

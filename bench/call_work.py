"""A model call's work in instructions, which a busy machine does not move.

bench/call_throughput.py measures a call's rate against a hit's; on a
shared machine that share moves between runs by more than most changes to
the call. Instructions counted by valgrind's callgrind do not, so this
counts them, on both sides of the wire:

- client: each row of bench/call_throughput.py (``hit``, ``call``,
  ``call+client``) run by 8 asyncio tasks in a Python process under
  callgrind, twice: ``--calls`` calls, then three times as many. The
  difference over the calls between counts only calls, not the start, the
  warm-up or the exit. (Switching instrumentation on and off around the
  calls instead counted the switch itself, whose cost moved with the
  machine by as much as a change to the call.)
- server: one call's acquire and settle, as the client wrote them to the
  lane, sent ``--replays`` times to a redis-server under callgrind, each
  with request and settle ids of its own, and one hit's script likewise.

Each row prints instructions per call and its multiple of a hit's. With
``--src`` the client and the scripts are another checkout's, for a before
and after on one machine (the command lines it writes are this tree's).

With ``--stages`` it counts instead where the server's work on a call goes:
each of the call's two scripts is sent in turn with its source cut short
after each stage (``return 1`` inserted there, loaded under its own SHA),
so each stage's row is what the script costs up to its end. A cut after
nothing is a script that only returns: the cost of the command and of
making its ``KEYS`` and ``ARGV``. The acquire's cuts run without settles,
so holds pile up as the replays go; the settle's cuts run behind whole
acquires, whose cost is taken off. Keep the default 200 replays or more:
Lua's collector works in steps that fewer replays do not average out (at
50, the acquire's stages summed to 284,000 against 325,000).

    python bench/call_work.py
    python bench/call_work.py --src ../other-checkout/src
    python bench/call_work.py --stages

It needs valgrind (Debian's package) and redis-server on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROWS = ("hit", "call", "call+client")
TASKS = 8
_ID = re.compile(rb"@[0-9a-f]{24}")
_TOTALS = re.compile(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS|([\d,]+)\s+PROGRAM TOTALS")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _instructions(out: Path) -> int:
    """The total a callgrind output file counted."""
    shown = subprocess.run(["callgrind_annotate", str(out)], capture_output=True, text=True)
    match = _TOTALS.search(shown.stdout)
    if match is None:
        raise SystemExit(f"callgrind_annotate printed no total for {out}")
    return int((match[1] or match[2]).replace(",", ""))


def _switch(pid: int, on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(pid)],
        check=True,
        capture_output=True,
    )


def _serve(port: int, *wrapper: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    argv = [*wrapper, binary, "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60  # a server under valgrind starts slowly
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("redis-server did not start")


def _stop(port: int, process: subprocess.Popen[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"SHUTDOWN NOSAVE\r\n")
    process.wait(timeout=120)


# -- inside the measured client process ------------------------------------------


def _client_inner(url: str, row: str, calls: int) -> None:
    import call_throughput

    from atomlimit import AsyncLimiter

    async def main() -> None:
        async with AsyncLimiter.from_url(url) as limiter:
            decide = call_throughput.rows(limiter)[row]
            for _ in range(30):
                await decide("warm")

            async def worker() -> None:
                for _ in range(calls // TASKS):
                    await decide("subject")

            await asyncio.gather(*(worker() for _ in range(TASKS)))

    asyncio.run(main())


def _captured(url: str, row: str) -> list[bytes]:
    """What one call of ``row`` writes, after a warm-up: what it hands its lane."""
    import call_throughput

    from atomlimit import AsyncLimiter, _batch

    wires: list[bytes] = []
    submit = _batch.Lane.submit

    def spy(lane: _batch.Lane, wire: bytes, *args: Any, **kwargs: Any) -> Any:
        wires.append(wire)
        return submit(lane, wire, *args, **kwargs)

    async def main() -> None:
        async with AsyncLimiter.from_url(url) as limiter:
            decide = call_throughput.rows(limiter)[row]
            await decide("subject")
            wires.clear()
            _batch.Lane.submit = spy  # type: ignore[method-assign]
            try:
                await decide("subject")
            finally:
                _batch.Lane.submit = submit  # type: ignore[method-assign]

    asyncio.run(main())
    return wires


# -- the rows --------------------------------------------------------------------


def client_rows(src: Path, calls: int) -> dict[str, int]:
    found = {}
    port = _free_port()
    server = _serve(port)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(ROOT / "bench")])}
    try:
        with tempfile.TemporaryDirectory(prefix="atomlimit-callgrind-") as work:
            for row in ROWS:
                counted = []
                for n in (calls, 3 * calls):
                    out = Path(work) / f"client.{row}.{n}"
                    subprocess.run(
                        [
                            "valgrind",
                            "--tool=callgrind",
                            f"--callgrind-out-file={out}",
                            sys.executable,
                            __file__,
                            "--client-row",
                            row,
                            "--url",
                            f"redis://127.0.0.1:{port}/0",
                            "--calls",
                            str(n),
                        ],
                        check=True,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    counted.append(_instructions(out))
                found[row] = (counted[1] - counted[0]) // (2 * calls)
    finally:
        _stop(port, server)
    return found


def server_rows(src: Path, replays: int) -> dict[str, int]:
    return {row: _sent(src, row, replays) for row in ("hit", "call")}


_SHA = re.compile(rb"\$40\r\n([0-9a-f]{40})\r\n")
_BEFORE = b"\0"
"""Marks a stage's anchor as the line it ends before, not after."""
ACQUIRE_STAGES = (
    ("the command, KEYS and ARGV", None),
    ("its functions made", _BEFORE + b"local run = "),
    ("the clock read", b"\nlocal remember"),
    ("items parsed (their counters read)", b"local items = parse_items(first_key, 5, run.now)"),
    ("items checked", b"local checked, all = check_items(items, run)"),
    ("items charged", b"  item_reply(reply, it.status, used, it.held, stop, 0, it.grant)\nend"),
    ("the reply", b""),
)
SETTLE_STAGES = (
    ("the command, KEYS and ARGV", None),
    ("its functions made", _BEFORE + b"local run = "),
    ("the item parsed (its counter read)", b"local items = parse_items(2, 6, run.now)"),
    (
        "the item checked (expired holds given back)",
        b"local it = kind.check(item.keys, item.args, run)",
    ),
    ("the outcome record read", b"local before, by, was, charged = outcome_read(outcome)"),
    ("the hold ended, the outcome written, the reply", b""),
)


def _cut(source: bytes, after: bytes | None) -> bytes:
    """``source`` returning right after ``after`` (None: at once; b"": whole;
    after `_BEFORE`: right before the line that starts with the rest)."""
    if after is None:
        return b"return 1"
    if not after:
        return source
    if after.startswith(_BEFORE):
        at = source.index(b"\n" + after[1:]) + 1
    else:
        at = source.index(after) + len(after)
    return source[:at] + b"\nif true then return 1 end\n" + source[at:]


class _Replanned(Exception):
    """A replay was answered "outside the planned window": a minute ended."""


def _sent(
    src: Path, row: str, replays: int, source: bytes | None = None, which: int | None = None
) -> int:
    """Server instructions per replay of what one call of ``row`` writes:
    with ``which``, only its wires up to that one, whose script is replaced
    by ``source`` (None: as it is). The call's upstream counts per minute,
    and replays under callgrind take seconds, so a run that a minute's end
    cuts across is run again."""
    for _ in range(3):
        try:
            return _sent_once(src, row, replays, source, which)
        except _Replanned:
            continue
    raise SystemExit(f"{row}: three runs in a row met a minute's end")


def _sent_once(src: Path, row: str, replays: int, source: bytes | None, which: int | None) -> int:
    sys.path[:0] = [str(src), str(ROOT / "bench")]
    from atomlimit._scripts import all_names, script

    with tempfile.TemporaryDirectory(prefix="atomlimit-callgrind-") as work:
        out = Path(work) / f"server.{row}"
        port = _free_port()
        server = _serve(
            port, "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}",
        )  # fmt: skip
        try:
            with socket.create_connection(("127.0.0.1", port)) as conn:
                for name in all_names():
                    _exchange(conn, _command(b"SCRIPT", b"LOAD", script(name).source))
                wires = _captured(f"redis://127.0.0.1:{port}/0", row)
                if which is not None:
                    wires = wires[: which + 1]
                if source is not None:
                    sha = _exchange(conn, _command(b"SCRIPT", b"LOAD", source)).split(b"\r\n")[1]
                    wires[-1] = _SHA.sub(b"$40\r\n" + sha + b"\r\n", wires[-1])
                sends = _replays(wires, replays)
                _switch(server.pid, True)
                for wire in sends:
                    reply = _exchange(conn, wire)
                    if reply.startswith(b"*2\r\n:-1\r\n"):
                        raise _Replanned
                    if reply.startswith(b"-"):
                        raise SystemExit(f"{row}: the server answered {reply[:80]!r}")
                _switch(server.pid, False)
        finally:
            _stop(port, server)
        return _instructions(out) // replays


def stages(src: Path, replays: int) -> None:
    sys.path[:0] = [str(src), str(ROOT / "bench")]
    from atomlimit._scripts import script

    acquire_alone = _sent(src, "call", replays, None, 0)
    for title, name, which, cuts in (
        ("acquire", "charge", 0, ACQUIRE_STAGES),
        ("settle", "settle_hold", 1, SETTLE_STAGES),
    ):
        print(f"{title} ({name}.lua), server instructions per call, up to the end of:")
        before, source = 0, script(name).source
        for stage, after in cuts:
            counted = _sent(src, "call", replays, _cut(source, after), which)
            if which:
                counted -= acquire_alone
            print(f"  {stage:<50} {counted:>9,} {counted - before:>+9,}")
            before = counted


def _replays(wires: list[bytes], count: int) -> list[bytes]:
    """``wires`` sent ``count`` times, each time with ids of its own."""
    ids = list(dict.fromkeys(_ID.findall(b"".join(wires))))
    sends = []
    for n in range(count):
        fresh = {old: b"@%024x" % (n * len(ids) + i + 1) for i, old in enumerate(ids)}
        sends.extend(_renamed(wire, fresh) for wire in wires)
    return sends


def _renamed(wire: bytes, fresh: dict[bytes, bytes]) -> bytes:
    return _ID.sub(lambda m: fresh[m[0]], wire)


def _command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def _exchange(conn: socket.socket, wire: bytes) -> bytes:
    """Send one command and read its whole reply (replies here are small)."""
    conn.sendall(wire)
    reply = b""
    while not _whole(reply):
        reply += conn.recv(1 << 16)
    return reply


def _whole(reply: bytes) -> bool:
    """Whether ``reply`` is one complete RESP reply (flat arrays, integers,
    simple and bulk strings: what these scripts answer)."""
    if not reply.endswith(b"\r\n"):
        return False
    lines = reply.split(b"\r\n")[:-1]
    head = lines[0]
    if head[:1] in (b"+", b"-", b":"):
        return True
    if head[:1] == b"$":
        return len(lines) >= 2
    count = int(head[1:])
    seen, i = 0, 1
    while i < len(lines) and seen < count:
        i += 2 if lines[i][:1] == b"$" else 1
        seen += 1
    return seen == count and i <= len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the atomlimit to measure")
    parser.add_argument(
        "--calls", type=int, default=400, help="client calls per row (then three times as many)"
    )
    parser.add_argument("--replays", type=int, default=200, help="server replays per row")
    parser.add_argument(
        "--stages", action="store_true", help="the server's work on a call, stage by stage"
    )
    parser.add_argument("--client-row", choices=ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_row:
        _client_inner(args.url, args.client_row, args.calls)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on PATH (Debian's package valgrind)")
    src = args.src.resolve()
    if args.stages:
        stages(src, args.replays)
        return
    client = client_rows(src, args.calls)
    server = server_rows(src, args.replays)
    print(f"instructions per call, {src}")
    print(f"{'row':<12} {'client':>10} {'x hit':>6} {'server':>10} {'x hit':>6}")
    for row in ROWS:
        on_server = server.get(row)
        shown = f"{on_server:>10,} {on_server / server['hit']:6.1f}" if on_server else ""
        print(f"{row:<12} {client[row]:>10,} {client[row] / client['hit']:6.1f} {shown}")


if __name__ == "__main__":
    main()

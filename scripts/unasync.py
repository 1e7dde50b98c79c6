#!/usr/bin/env python3
"""Generate atomlimit's sync code from its asyncio source, as httpcore does.

    python scripts/unasync.py           # rewrite src/atomlimit/_sync/ from _async/
    python scripts/unasync.py --check   # change nothing; exit 1 naming each stale file

Each ``src/atomlimit/_async/<name>.py`` becomes ``src/atomlimit/_sync/<name>.py``:
every line goes through SUBS, in order; then ruff drops the imports only the
async side used, sorts the rest and formats the file, so the file is lint-
and format-clean as generated. Its first line names its source.

The seam. Where the sync side rightly differs, the async source says so in
place, so both sides of a difference are read together:

- a line that ends in ``# unasync: async`` is left out of the sync file
  (an option only the async side has, such as ``batch=``);
- on a line of its own, ``# unasync: async`` starts lines left out of the
  sync file, up to ``# unasync: sync`` or ``# unasync: end``;
- ``# unasync: sync`` starts lines that the async source carries as
  comments and the sync file as code, uncommented and taken as written (no
  substitutions), up to ``# unasync: end``.

The marks today: the async limiter's ``batch=``, ``deadline=`` and pooled
``from_url``, the lanes it closes, the guard's deadline and its yield when
the breaker is open, the acquire that outlives a cancelled caller, and the
docstrings that differ. Three rows of SUBS also stand for a difference: an
async hold is a ``holds.Pending``, taken when awaited, where a sync one is
taken at once (``holds.taken``); and ``asynchronous=True`` tells the
decorator's checks which kind of function a shell wraps.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = ROOT / "src/atomlimit/_async", ROOT / "src/atomlimit/_sync"
HEADER = "# Generated from {} by scripts/unasync.py; do not edit.\n"

SUBS = [
    # The seam's rows (see above).
    (r"\bPending\[(\w+)\]", r"\1"),
    (r"\bPending\b", "taken"),
    (r"\basynchronous=True\b", "asynchronous=False"),
    # Modules and classes.
    (r"\batomlimit\._async", "atomlimit._sync"),  # _async.holds, and _async_runner too
    (r"\bRedisCluster as AsyncRedisCluster\b", "RedisCluster"),
    (r"\bredis\.asyncio\b", "redis"),
    (r"\bAsyncRunner\b", "SyncRunner"),
    (r"\bAsyncGuard\b", "SyncGuard"),
    (r"\bAsync([A-Z]\w*)", r"\1"),  # AsyncLimiter -> Limiter, AsyncLease -> Lease, ...
    # The language.
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"\bAwaitable\[(\w+)\]", r"\1"),
    (r"\bCoroutine\[Any, Any, (\w+)\]", r"\1"),
]
COMPILED = [(re.compile(pattern), repl) for pattern, repl in SUBS]
MARKER = re.compile(r"^\s*# unasync: (async|sync|end)$")


def unasync(text: str, where: str) -> str:
    """The sync twin of one async source file, before ruff has seen it."""
    lines: list[str] = []
    block, dropped = None, False
    for number, line in enumerate(text.splitlines(), 1):
        marker = MARKER.match(line)
        if marker:
            block = None if marker[1] == "end" else marker[1]
        elif block == "sync":
            if not line.lstrip().startswith("#"):
                sys.exit(f"{where}:{number}: a '# unasync: sync' line must be a comment")
            lines.append(re.sub(r"^(\s*)# ?", r"\1", line))
        elif block is None and line.endswith("# unasync: async"):
            dropped = True
        elif block is None:
            if dropped and line.lstrip()[:1] in ")]}" and lines[-1].endswith(","):
                # The last item went: without the trailing comma it kept,
                # ruff may join what is left onto one line.
                lines[-1] = lines[-1][:-1]
            dropped = False
            for pattern, repl in COMPILED:
                line = pattern.sub(repl, line)
            lines.append(line)
    if block is not None:
        sys.exit(f"{where}: a '# unasync: {block}' block has no '# unasync: end'")
    return "\n".join(lines) + "\n"


def ruff(args: list[str], text: str, path: Path) -> str:
    command = [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(path), "-"]
    done = subprocess.run(command, input=text, text=True, capture_output=True, check=False)
    if done.returncode:
        sys.exit(f"ruff {args[0]} refused the sync twin {path.name}:\n{done.stdout}{done.stderr}")
    return done.stdout


def generate(source: Path) -> str:
    """The sync file for ``source``, as it should be on disk."""
    where, target = source.relative_to(ROOT).as_posix(), TARGET / source.name
    text = HEADER.format(where) + unasync(source.read_text(), where)
    text = ruff(["check", "--fix", "--quiet", "--select", "F401,I,RUF100"], text, target)
    return ruff(["format", "--quiet"], text, target)


def main(check: bool) -> int:
    expected = {TARGET / path.name: generate(path) for path in sorted(SOURCE.glob("*.py"))}
    for path in TARGET.glob("*.py"):  # a generated file whose source is gone goes too
        if path not in expected and path.read_text().startswith("# Generated from "):
            expected[path] = ""
    stale = [
        path for path, text in expected.items() if not path.exists() or path.read_text() != text
    ]
    for path in stale:
        print(f"{path.relative_to(ROOT)}: {'out of date' if check else 'written'}", file=sys.stderr)
        if check:
            continue
        if expected[path]:
            TARGET.mkdir(exist_ok=True)
            path.write_text(expected[path])
        else:
            path.unlink()
    if check and stale:
        print("run `make unasync` to generate the sync code again", file=sys.stderr)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv[1:]))

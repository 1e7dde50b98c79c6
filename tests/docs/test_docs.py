"""Every Python example in the README and in docs/ runs, against a real server.

One test per page, so a page added later is covered with nothing to
register. The conventions, also in docs/contributing.md:

- A fenced block that opens with ```` ```python ```` is run; any other
  fence (``text``, ``bash``, ``pycon``, none) is shown only.
- The blocks of a page run in order, in one namespace, as one session:
  a later block may use what an earlier one defined.
- A block may ``await`` at top level; such blocks run on one event loop
  per page, so an ``AsyncLimiter`` made in one serves the next.
- Every URL ``redis://127.0.0.1:<port>/<db>`` in a block is replaced by the
  URL of the test's server before it runs, ``$ATOMLIMIT_URL`` names that
  server too, and ``sys.argv`` is the page's name alone.
- A block that cannot run on its own (it shows a pattern, or needs the
  reader's own code) is marked by an HTML comment on the line before its
  fence, invisible on the rendered page::

      <!-- fragment -->
      ```python
      ...
      ```

  ``<!-- fragment: why -->`` says why as well.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import Server

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT_MARK = "<!-- fragment"
"""``<!-- fragment -->``, or ``<!-- fragment: why -->`` to say why."""
_FENCE = re.compile(r"^(`{3,})(\S*)\s*$")
_URL = re.compile(r"redis://127\.0\.0\.1:\d+/\d+")


@dataclass(frozen=True)
class Block:
    """One fenced Python block: where it starts, and its source."""

    line: int
    source: str
    fragment: bool


def blocks(page: Path) -> list[Block]:
    """The page's Python blocks, in order, each marked if it is a fragment."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    fence: str | None = None
    start, language, body = 0, "", []
    for number, line in enumerate(lines, start=1):
        match = _FENCE.match(line.strip())
        if fence is None and match:
            fence, language, start, body = match[1], match[2], number, []
        elif fence is not None and line.strip() == fence:
            if language == "python":
                before = lines[start - 2].strip() if start >= 2 else ""
                source = textwrap.dedent("\n".join(body) + "\n")  # a block inside a list
                found.append(Block(start, source, before.startswith(FRAGMENT_MARK)))
            fence = None
        elif fence is not None:
            body.append(line)
    assert fence is None, f"{page.name}: a fence opened at line {start} is never closed"
    return found


def run_page(page: Path, url: str) -> int:
    """Run the page's blocks in order in one namespace; how many ran."""
    namespace: dict[str, Any] = {"__name__": f"docs.{page.stem}"}
    loop = asyncio.new_event_loop()
    ran = 0
    try:
        for block in blocks(page):
            if block.fragment:
                continue
            # Line numbers in a traceback point into the page itself.
            source = "\n" * (block.line) + _URL.sub(url, block.source)
            code = compile(source, str(page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)
            if inspect.iscoroutine(result):
                loop.run_until_complete(result)
            ran += 1
        for name in ("limiter", "alimiter"):
            _close(namespace.get(name), loop)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return ran


def _close(limiter: Any, loop: asyncio.AbstractEventLoop) -> None:
    close = getattr(limiter, "aclose", None) or getattr(limiter, "close", None)
    if close is None:
        return
    closing = close()
    if inspect.iscoroutine(closing):
        loop.run_until_complete(closing)


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_python_block_runs_or_is_marked_a_fragment(
    page: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [page.name])
    monkeypatch.setenv("ATOMLIMIT_URL", server.url)
    monkeypatch.chdir(ROOT)

    ran = run_page(page, server.url)

    found = blocks(page)
    assert ran == sum(not block.fragment for block in found)
    assert held_leases(server) == [], f"{page.name}: a block takes a lease it never releases"


def held_leases(server: Server) -> list[str]:
    """The Concurrency limits on the server that still hold a lease (docs/keys.md)."""
    with server.client() as client:
        return sorted(
            key.decode()
            for key in client.scan_iter(match="*}:cc:*", _type="zset")
            if client.zcard(key)
        )


def test_the_block_finder_sees_fences_fragments_and_other_languages(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n```python\nx = 1\n```\n\n<!-- fragment -->\n```python\nundefined()\n```\n\n"
        '```text\nnot python\n```\n\n````python\nshown = """\n```\n"""\ny = x + 1\n````\n'
    )

    found = blocks(page)

    assert [(b.line, b.fragment) for b in found] == [(3, False), (8, True), (16, False)]
    assert found[2].source == 'shown = """\n```\n"""\ny = x + 1\n'
    assert run_page(page, "redis://127.0.0.1:1/0") == 2


def test_a_page_that_keeps_a_lease_is_caught(tmp_path: Path, server: Server) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nfrom atomlimit import Concurrency, Limiter\n\n"
        'limiter = Limiter.from_url("redis://127.0.0.1:6380/0")\n'
        'slots = Concurrency(name="slots", limit=2)\n'
        'lease = limiter.lease(slots, "client-1")\n```\n'
    )
    run_page(page, server.url)
    kept = held_leases(server)

    page.write_text(page.read_text() + "\n```python\nlease.release()\n```\n")
    server.flush()
    run_page(page, server.url)

    assert len(kept) == 1
    assert ":cc:slots" in kept[0]
    assert held_leases(server) == []

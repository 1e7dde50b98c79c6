"""Every block of Python in the README and the web and decorator docs runs.

Blocks of one file run in order in one namespace, as a reader would type
them, with ``ATOMLIMIT_URL`` naming a real server. A block marked with an
HTML comment starting ``<!-- fragment`` just before its fence uses names it
does not define; it is compiled, so it is at least valid Python.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from servers import Server

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/web.md", "docs/decorators.md")
BLOCK = re.compile(r"(<!-- fragment[^\n]*-->\n)?```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(doc: str) -> list[tuple[bool, str, int]]:
    """(is a fragment, code, line of the fence) for each Python block of ``doc``."""
    text = (ROOT / doc).read_text()
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start(2))
        found.append((match.group(1) is not None, match.group(2), line))
    return found


@pytest.mark.parametrize("doc", DOCS)
def test_every_python_block_runs_or_is_a_marked_fragment(
    doc: str, server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATOMLIMIT_URL", server.url)
    namespace: dict[str, object] = {"__name__": "docs"}
    ran = 0
    for fragment, code, line in blocks(doc):
        compiled = compile("\n" * line + code, str(ROOT / doc), "exec")
        if not fragment:
            exec(compiled, namespace)
            ran += 1

    assert ran >= 1
    assert "Traceback" not in capsys.readouterr().out


def test_the_readme_quickstart_runs_on_its_own(server: Server) -> None:
    fragment, quickstart, _ = blocks("README.md")[0]
    namespace: dict[str, object] = {"__name__": "quickstart"}

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATOMLIMIT_URL", server.url)
        exec(compile(quickstart, "README quickstart", "exec"), namespace)

    assert not fragment
    assert "await" not in quickstart.split("async def main")[0]
    with server.client() as client:
        assert client.dbsize() > 0  # it charged the server it was given


def test_the_web_doc_denial_prints_what_it_says(
    server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATOMLIMIT_URL", server.url)
    namespace: dict[str, object] = {"__name__": "docs"}
    for fragment, code, _ in blocks("docs/web.md"):
        if not fragment:
            exec(code, namespace)

    assert "[200, 200, 200, 429]" in capsys.readouterr().out

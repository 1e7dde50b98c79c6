"""The sync code is generated from the async source, and kept so.

``scripts/unasync.py`` writes ``src/atomlimit/_sync/`` from ``_async/``;
its ``--check`` fails when a generated file is out of date, so a change to
one side only cannot land.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "unasync.py"
ASYNC = {"async", "await", "asyncio", "aclose", "Awaitable", "Coroutine"}
GENERATED = sorted((ROOT / "src" / "atomlimit" / "_sync").glob("*.py"))


def unasync(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "unasync.py"), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sync_code_is_what_the_async_source_generates() -> None:
    result = unasync(ROOT, "--check")

    assert result.returncode == 0, result.stderr


def test_the_check_fails_on_a_generated_file_edited_by_hand(tmp_path: Path) -> None:
    for part in ("scripts", "src/atomlimit/_async", "src/atomlimit/_sync"):
        shutil.copytree(ROOT / part, tmp_path / part)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)  # ruff's settings
    shutil.copy(ROOT / "src/atomlimit/__init__.py", tmp_path / "src/atomlimit")
    edited = tmp_path / "src/atomlimit/_sync/limiter.py"
    original = edited.read_text()
    edited.write_text(original.replace("time.sleep(sleep)", "time.sleep(sleep * 2)"))
    assert edited.read_text() != original

    stale = unasync(tmp_path, "--check")
    regenerated = unasync(tmp_path)

    assert stale.returncode == 1
    assert "src/atomlimit/_sync/limiter.py: out of date" in stale.stderr
    assert regenerated.returncode == 0
    assert edited.read_text() == original


def test_each_generated_file_names_its_source_and_has_no_async_left() -> None:
    assert {path.name for path in GENERATED} == {
        path.name for path in (ROOT / "src" / "atomlimit" / "_async").glob("*.py")
    }
    for path in GENERATED:
        text = path.read_text()
        source = f"src/atomlimit/_async/{path.name}"
        assert text.startswith(f"# Generated from {source} by scripts/unasync.py; do not edit.\n")
        tokens = tokenize.generate_tokens(io.StringIO(text).readline)
        left = [t.string for t in tokens if t.type == tokenize.NAME and t.string in ASYNC]
        assert left == [], path
        assert "# unasync: " not in text, path


def test_the_seam_markers_keep_one_side_each() -> None:
    source = """\
async def close(self, a: int, b: int) -> None:
    # unasync: async
    \"\"\"The async docstring.\"\"\"
    # unasync: sync
    # \"\"\"The sync docstring.\"\"\"
    # unasync: end
    await self._runner.close()  # unasync: async
    call(
        a,
        b,  # unasync: async
    )
    await self.client.aclose()
"""

    assert (
        script().unasync(source, "example.py")
        == """\
def close(self, a: int, b: int) -> None:
    \"\"\"The sync docstring.\"\"\"
    call(
        a
    )
    self.client.close()
"""
    )

"""The wheel ships the Lua files themselves, and the type marker."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_every_lua_file_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("atomlimit-*.whl")
    sources = {p.relative_to(ROOT / "lua").as_posix(): p for p in (ROOT / "lua").rglob("*.lua")}

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = {
            name.removeprefix("atomlimit/lua/"): archive.read(name)
            for name in names
            if name.startswith("atomlimit/lua/")
        }

    assert "atomlimit/py.typed" in names
    assert set(shipped) == set(sources)
    for name, path in sources.items():
        assert shipped[name] == path.read_bytes(), name

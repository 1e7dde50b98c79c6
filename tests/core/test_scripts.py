"""Lua scripts are source files: headers, includes, SHAs, nothing in Python strings."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from servers import Server

from atomlimit._scripts import _lua_dir, all_names, script

ROOT = Path(__file__).resolve().parents[2]
HEADER_FIELDS = ("KEYS", "ARGV", "Reply", "Clock", "Cost")


@pytest.mark.parametrize("name", all_names())
def test_every_script_states_its_contract_in_a_header(name: str) -> None:
    text = (ROOT / "lua" / f"{name}.lua").read_text()
    header = text.split("\n\n", 1)[0]

    for field in HEADER_FIELDS:
        assert re.search(rf"^-- {field}\b", header, re.MULTILINE), f"{name}.lua lacks {field}"


@pytest.mark.parametrize("name", all_names())
def test_includes_are_expanded_and_the_sha_matches_the_source(name: str) -> None:
    loaded = script(name)

    assert b"-- include:" not in loaded.source
    assert b"-- lazy:" not in loaded.source
    assert loaded.sha == hashlib.sha1(loaded.source).hexdigest()


@pytest.mark.parametrize("name", all_names())
def test_server_accepts_every_script_under_its_sha(server: Server, name: str) -> None:
    with server.client() as client:
        assert client.script_load(script(name).source) == script(name).sha


def test_documented_acl_names_every_command_the_scripts_call() -> None:
    called = {
        name.lower()
        for path in (ROOT / "lua").rglob("*.lua")
        for name in re.findall(r"redis\.p?call\('([A-Z]+)'", path.read_text())
    }
    docs = (ROOT / "docs" / "script-loading.md").read_text()
    block = docs.split("ACL SETUSER limiter", 1)[1].split("```", 1)[0]
    granted = set(re.findall(r"\+([a-z|]+)", block))

    assert called
    assert called <= granted, called - granted
    assert {"evalsha", "script|load"} <= granted


def test_no_lua_lives_in_python_source() -> None:
    for path in (ROOT / "src").rglob("*.py"):
        assert not re.search(r"redis\.p?call\(", path.read_text()), path


def test_scripts_are_read_from_the_lua_directory() -> None:
    assert {p.stem for p in (ROOT / "lua").glob("*.lua")} == set(all_names())
    assert Path(str(_lua_dir())).resolve() in {(ROOT / "lua").resolve(), *_shipped()}


def _shipped() -> set[Path]:
    import atomlimit

    return {Path(atomlimit.__file__).resolve().parent / "lua"}


def test_a_lazy_library_sits_inside_its_function_and_needs_its_own_includes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "base.lua").write_text("local function base() return 1 end\n")
    (tmp_path / "lib" / "kind.lua").write_text(
        "-- include: lib/base.lua\nlocal function kind() return base() end\n"
    )
    (tmp_path / "ok.lua").write_text(
        "-- include: lib/base.lua\nlocal make = function()\n  -- lazy: lib/kind.lua\n"
        "  return kind\nend\n"
    )
    (tmp_path / "bad.lua").write_text("local make = function()\n  -- lazy: lib/kind.lua\nend\n")
    monkeypatch.setattr("atomlimit._scripts._lua_dir", lambda: tmp_path)
    script.cache_clear()
    try:
        source = script("ok").source.decode()
        with pytest.raises(ValueError, match=r"lib/base\.lua, which lib/kind\.lua includes"):
            script("bad")
    finally:
        script.cache_clear()

    # The kind's function is made inside `make`, after the base it needs.
    assert source.index("local function base()") < source.index("local make = function()")
    assert source.index("local make = function()") < source.index("local function kind()")
    assert source.count("local function base()") == 1

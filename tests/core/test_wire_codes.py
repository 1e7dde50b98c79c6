"""The codes the scripts and the client share are defined once on each side, and agree.

Lua cannot import Python's table, nor Python Lua's, so each keeps one copy:
the kind codes in ``lua/lib/items.lua`` and ``atomlimit._codecs``, statuses
and flags in ``lua/lib/reply.lua``, and so on. These tests read the Lua
copies as text and hold them to the Python ones.
"""

from __future__ import annotations

import re
from pathlib import Path

from atomlimit import _codecs
from atomlimit._codecs import (
    DENIED,
    FITS,
    GCRA_BASE,
    GUARD,
    KIND_NAMES,
    PARTIAL,
    READ_HOLDS,
    RECORDED,
    REPLAN,
    RESERVATION,
    REUSED,
    SHADOW,
    SHADOWED,
    SLOW_START,
)

LUA = Path(__file__).resolve().parents[2] / "lua"
_LOCALS = re.compile(r"^local ([A-Z_][A-Z0-9_, ]*?) = ([-0-9., ]+)$", re.MULTILINE)


def _lua(name: str) -> str:
    return (LUA / name).read_text()


def _numbers(text: str) -> dict[str, float]:
    """Every ``local A, B = 1, 2`` of plain numbers in a Lua source, by name."""
    found: dict[str, float] = {}
    for names, values in _LOCALS.findall(text):
        for name, value in zip(names.split(","), values.split(","), strict=True):
            found[name.strip()] = float(value)
    return found


_BUILDER = re.compile(
    r"^  (?:if|elseif) kind == '(\w+)' then\n"
    r"    -- lazy: (lib/\w+\.lua)\n"
    r"    functions = (\w+)\((?:made\.(\w+))?\)\n",
    re.MULTILINE,
)


def _build_table() -> dict[str, tuple[str, str, str]]:
    """``lua/lib/items.lua``'s build_kind: kind code -> the library its
    branch includes lazily, the function it calls, and the kind that
    function wraps ('' for none)."""
    body = re.search(
        r"^local function build_kind\(made, kind\)\n(.*?)^end", _lua("lib/items.lua"), re.M | re.S
    )
    assert body is not None, "items.lua has no build_kind"
    builders = _BUILDER.findall(body.group(1))
    assert len(builders) == body.group(1).count("kind == '"), "a branch of another shape"
    return {code: (lib, function, wrapped) for code, lib, function, wrapped in builders}


def test_the_scripts_build_exactly_the_kinds_the_client_encodes() -> None:
    build = _build_table()

    assert set(build) == set(KIND_NAMES)
    for code, (lib, function, wrapped) in build.items():
        # Each builder makes its kind from the one library it includes.
        assert f"local function {function}(" in _lua(lib), f"{lib} defines no {function}"
        if wrapped:
            assert function == "rh_kind", code
            assert code == f"h{wrapped}", code
            assert wrapped in build, wrapped
        else:
            assert function == f"{code}_kind"


def test_every_codec_sends_a_kind_of_the_table() -> None:
    codecs = [_codecs.FixedWindow, _codecs.Spend, _codecs.Gcra, _codecs.SlidingLog]
    codecs += [_codecs.SlidingCounter, _codecs.LeaseSet]

    kinds = {codec.kind for codec in codecs}
    holds = {codec.held for codec in codecs if codec.held is not None}

    assert holds >= {RESERVATION}
    assert kinds | holds == set(KIND_NAMES)


def test_statuses_and_flags_are_the_same_on_both_sides() -> None:
    lua = _numbers(_lua("lib/reply.lua"))
    python = {"DENIED": DENIED, "FITS": FITS, "SHADOWED": SHADOWED}
    python |= {"PARTIAL": PARTIAL, "SHADOW": SHADOW, "GUARD": GUARD, "SLOW_START": SLOW_START}

    assert lua == python


def test_every_code_a_script_answers_for_doing_nothing_is_known_to_the_client() -> None:
    returned = {
        int(code)
        for path in LUA.rglob("*.lua")
        for code in re.findall(r"return \{(-\d+)", path.read_text())
    }

    assert returned == {REPLAN, REUSED, READ_HOLDS, RECORDED}


def test_gcra_counts_from_the_same_instant_everywhere() -> None:
    bases = [
        _numbers(path.read_text())["GC_BASE"]
        for path in LUA.rglob("*.lua")
        if "GC_BASE =" in path.read_text() or "GC_BASE," in path.read_text()
    ]

    assert len(bases) >= 2  # the library and the single-hit script
    assert set(bases) == {GCRA_BASE}

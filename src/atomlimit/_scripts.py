"""The script registry: Lua sources from ``lua/``, and their SHA1s.

Each operation is one file in ``lua/``. Logic shared by several operations
lives in ``lua/lib/`` and is pulled in by a line ``-- include: lib/<file>.lua``,
replaced by that file's text; a library may include others, and each file is
included once, where it is first named. The SHA of a script is the SHA1 of
the text after inclusion, which is exactly what ``SCRIPT LOAD`` returns.

A line ``-- lazy: lib/<file>.lua`` inside a function puts the library's text
there instead, so that its functions are made only when that function runs:
every ``local function`` at a script's top level is a closure the server
makes on every call, used or not (about 70 ns each), and a script of several
items would otherwise make every kind's. A lazy library already included
above is not repeated; whatever a lazy library includes must be.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache, partial
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

_INCLUDE = re.compile(r"^ *-- (include|lazy): (lib/[a-z_]+\.lua)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Script:
    """One loadable script: its name, full source and SHA1."""

    name: str
    source: bytes
    sha: str
    sha_bytes: bytes
    """The SHA as sent on the wire."""


def _lua_dir() -> Traversable:
    shipped = resources.files("atomlimit").joinpath("lua")
    if shipped.is_dir():
        return shipped
    # Running from a source checkout (an editable install): the scripts sit
    # at the repository root, two levels above this package.
    return Path(__file__).resolve().parents[2] / "lua"


@cache
def script(name: str) -> Script:
    """The script ``lua/<name>.lua`` with its includes expanded."""
    root = _lua_dir()
    text = root.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    included: set[str] = set()

    def expand(match: re.Match[str]) -> str:
        how, path = match.groups()
        if path in included:
            return f"-- ({path} already included)"
        lib = root.joinpath(path).read_text(encoding="utf-8").rstrip("\n")
        if how == "lazy":
            return _INCLUDE.sub(partial(required, path), lib)
        included.add(path)
        return _INCLUDE.sub(expand, lib)

    def required(lazy: str, match: re.Match[str]) -> str:
        path = match.group(2)
        if path not in included:
            raise ValueError(f"{name}: {path}, which {lazy} includes, must be included before it")
        return f"-- ({path} already included)"

    source = _INCLUDE.sub(expand, text).encode("utf-8")
    sha = hashlib.sha1(source).hexdigest()
    return Script(name, source, sha, sha.encode())


def all_names() -> list[str]:
    """Names of every operation script shipped, for preloading and tests."""
    return sorted(
        entry.name.removesuffix(".lua")
        for entry in _lua_dir().iterdir()
        if entry.name.endswith(".lua")
    )

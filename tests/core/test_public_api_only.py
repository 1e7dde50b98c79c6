"""atomlimit reads no private attribute of another library's objects.

A name with a leading underscore is an implementation detail of whoever
defines it: redis-py changed what its asyncio pool does between 8.1 and 8.2,
and code that read its ``_sock``, ``_writer`` or ``_backoff`` broke with it.
The rule is checked on the syntax trees of ``src/atomlimit``: an attribute
``x._name`` is allowed only when atomlimit itself defines ``_name``
somewhere (a method, a slot, an attribute it assigns, a module of its own).
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "atomlimit"

NAMED_TUPLE_API = {"_replace", "_asdict", "_fields", "_make"}
"""The standard library's namedtuple methods, public despite the underscore."""


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined(trees: list[ast.Module]) -> set[str]:
    """Every private name atomlimit defines itself."""
    names = {path.stem for path in SOURCE.rglob("*.py")}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
            ):
                names.update(c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant))
    return {name for name in names if isinstance(name, str) and _private(name)}


def foreign_private_reads(sources: dict[str, str]) -> list[str]:
    """``file:line: .name`` for each private attribute atomlimit does not define."""
    trees = {path: ast.parse(text) for path, text in sources.items()}
    own = _defined(list(trees.values())) | NAMED_TUPLE_API
    found = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            attr = None
            if isinstance(node, ast.Attribute) and _private(node.attr):
                attr = node.attr
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"getattr", "setattr", "hasattr"}
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and _private(node.args[1].value)
            ):
                attr = node.args[1].value
            if attr is not None and attr not in own:
                found.append(f"{path}:{node.lineno}: .{attr}")
    return found


def test_src_reads_no_private_attribute_of_another_library() -> None:
    sources = {str(p.relative_to(SOURCE)): p.read_text() for p in SOURCE.rglob("*.py")}

    assert foreign_private_reads(sources) == []


def test_the_check_finds_what_the_runners_used_to_read() -> None:
    # What atomlimit read of redis-py before it kept to the public API.
    old = """
def stale(connection):
    sock = getattr(connection, "_sock", None)
    return connection._writer.transport, retry._backoff
"""

    assert sorted(foreign_private_reads({"old.py": old})) == [
        "old.py:3: ._sock",
        "old.py:4: ._backoff",
        "old.py:4: ._writer",
    ]

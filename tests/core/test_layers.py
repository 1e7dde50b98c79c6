"""The module map holds: no import cycles, no import up a layer, no redis in the core.

Read from the source with :mod:`ast`, so every import counts: at module
level, inside a function, and under ``TYPE_CHECKING``. A module imports
another when it names it (``import atomlimit.x``, ``from atomlimit import x``)
or a name defined in it; ``from atomlimit import Name`` is an import of the
package itself, whose ``__init__`` re-exports the shells. Python also runs a
package's ``__init__`` before any module in it; that is not an edge here,
or every module would depend on every other.

The layers and what each holds are drawn in docs/contributing.md.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import atomlimit

PACKAGE = Path(atomlimit.__file__).resolve().parent

CORE, IO, SHELLS, INTEGRATIONS, CLI = 1, 2, 3, 4, 5
"""Layers, lowest first: a module imports its own layer and those below."""
LAYERS = {
    CORE: [
        # the public vocabulary
        "errors",
        "specs",
        "decision",
        "headers",
        "breaker",
        "observe",
        "policies",
        "upstream",
        # pure planning and its helpers
        "_errors",
        "_version",
        "_inputs",
        "_money",
        "_windows",
        "_rates",
        "_keys",
        "_wire",
        "_later",
        "_scripts",
        "_runner_steps",
        "_codecs",
        "_engine",
        "_acquire",
        "_model_call",
        "_header_fields",
        "_local_limits",
        "_degraded",
        "_circuit",
        "_reporting",
        "_fitness",
        "_stored_values",
        "_cache_plan",
        "_deny_cache",
        "_override_plan",
        "_session_plan",
        "_waiting",
        "_limited",
        "_provider_headers",
        "_web",
    ],
    IO: [
        "_failures",
        "_guard",
        "_redis",
        "_clock",
        "_retry",
        "_sync_runner",
        "_async_runner",
        "_batch",
        "_steadfast",
    ],
    SHELLS: [
        "",
        "_shell",
        "_handles",
        "_async",
        "_sync",
        "limiter",
        "holds",
        "cache",
        "sessions",
        "compat",
    ],
    INTEGRATIONS: ["asgi", "wsgi", "fastapi", "flask", "django", "celery", "testing"],
    CLI: ["__main__", "cli"],
}
"""Every module by layer, named under ``atomlimit`` (``""`` is the package).
A sub-package's modules are in its layer."""


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["atomlimit", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported(tree: ast.Module, module: str, is_package: bool) -> Iterator[str]:
    """Every module ``module`` names in an import, in or out of atomlimit."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                name = f"{base}.{alias.name}"
                yield name if name in MODULES else base


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Imports within atomlimit, and of other top-level packages, per module."""
    inside: dict[str, set[str]] = {}
    outside: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        names = set(_imported(tree, module, path.name == "__init__.py"))
        inside[module] = {_owner(name) for name in names if name.split(".")[0] == "atomlimit"}
        inside[module].discard(module)
        outside[module] = {name.split(".")[0] for name in names} - {"atomlimit"}
    return inside, outside


def _owner(name: str) -> str:
    """The module that defines ``name``, a module or a module's attribute."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


IMPORTS, FOREIGN = _graph()


def _layer(module: str) -> int | None:
    for layer, names in LAYERS.items():
        for name in names:
            full = f"atomlimit.{name}" if name else "atomlimit"
            if module == full or (name and module.startswith(full + ".")):
                return layer
    return None


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in IMPORTS[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(IMPORTS):
        if module not in index:
            visit(module)
    return found


def test_the_graph_sees_every_kind_of_import() -> None:
    # A function-level import and one under TYPE_CHECKING both count.
    assert "atomlimit._acquire" in IMPORTS["atomlimit._guard"]  # TYPE_CHECKING
    assert "atomlimit.limiter" in IMPORTS["atomlimit.testing"]
    assert "prometheus_client" in FOREIGN["atomlimit.observe"]  # inside a method


def test_no_module_imports_itself_back_through_others() -> None:
    assert _cycles() == []


def test_every_module_has_a_layer() -> None:
    assert [module for module in MODULES if _layer(module) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_points_up_a_layer(module: str) -> None:
    layer = _layer(module)
    above = {other for other in IMPORTS[module] if (_layer(other) or 0) > (layer or 0)}

    assert above == set(), f"{module} (layer {layer}) imports from higher layers"


def _reached(module: str) -> set[str]:
    seen = {module}
    todo = [module]
    while todo:
        for other in IMPORTS[todo.pop()]:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


@pytest.mark.parametrize("module", [f"atomlimit.{name}" for name in LAYERS[CORE]])
def test_the_core_imports_no_redis(module: str) -> None:
    assert module in MODULES, f"{module} is in the layer table but is no module"
    found = {other for other in _reached(module) if "redis" in FOREIGN[other]}

    assert found == set(), f"{module} reaches redis through {sorted(found)}"

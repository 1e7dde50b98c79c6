"""The API reference links every cross-reference: no Sphinx role is left in the source.

mkdocstrings resolves ``[`Breaker`][atomlimit.Breaker]`` to a link, and
``make docs`` fails when it cannot. A Sphinx role (``:class:`Breaker```)
is neither: the page shows it as literal text, and nothing notices. A name
the reference does not render (a private module, say) is written as plain
code instead: ``atomlimit._engine``.
"""

from __future__ import annotations

import re
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "atomlimit"
SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj|const|ref):`")


def sphinx_roles(text: str) -> list[tuple[int, str]]:
    """(line number, line) for every line of ``text`` that holds a Sphinx role."""
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if SPHINX_ROLE.search(line)
    ]


def test_no_docstring_in_the_package_uses_a_sphinx_role() -> None:
    files = sorted(SOURCE.rglob("*.py"))
    assert files, f"no source found under {SOURCE}"

    found = [
        f"{path.relative_to(SOURCE.parents[1])}:{number}: {line}"
        for path in files
        for number, line in sphinx_roles(path.read_text())
    ]

    assert not found, "Sphinx roles render as literal text; write [`name`][atomlimit.path]:\n" + (
        "\n".join(found)
    )


def test_the_pattern_sees_each_role_and_passes_cross_references() -> None:
    text = (
        "A :class:`~atomlimit.Breaker`, :meth:`close`, :py:func:`x`, :mod:`m`,\n"
        ":data:`D`, :attr:`a`, :exc:`E`.\n"
        "[`Breaker`][atomlimit.Breaker] and ``atomlimit._engine`` and `x: y`\n"
    )

    assert [number for number, _ in sphinx_roles(text)] == [1, 2]

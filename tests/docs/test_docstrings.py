"""Every ``>>>`` example in atomlimit's docstrings runs, against a real server.

doctest finds the examples in every module of the package, and each
docstring's examples run as one session with that module's names in scope,
as ``python -m doctest`` would run them. An example that needs a server
writes its address as ``redis://127.0.0.1:6380/0``, as the pages of docs/
do (tests/docs/test_docs.py): the test replaces every
``redis://127.0.0.1:<port>/<db>`` with its own server's URL, emptied first.

Nothing is skipped: an example that cannot run is not an example.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re

import pytest
from servers import Server

import atomlimit

URL = re.compile(r"redis://127\.0\.0\.1:\d+/\d+")
NOT_IMPORTED = {"atomlimit.__main__"}
"""Importing it runs the command line."""


def _docstrings() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    modules = [atomlimit] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(atomlimit.__path__, "atomlimit.")
        if info.name not in NOT_IMPORTED
    ]
    # The finder keeps only what each module defines, so a name re-exported
    # by another module is found once.
    found = [test for module in modules for test in finder.find(module) if test.examples]
    return sorted(found, key=lambda test: test.name)


DOCSTRINGS = _docstrings()


def _against(test: doctest.DocTest, url: str) -> doctest.DocTest:
    """``test`` with every server address in its examples pointed at ``url``."""
    examples = [
        doctest.Example(
            URL.sub(url, example.source),
            example.want,
            example.exc_msg,
            lineno=example.lineno,
            indent=example.indent,
            options=example.options,
        )
        for example in test.examples
    ]
    return doctest.DocTest(
        examples, dict(test.globs), test.name, test.filename, test.lineno, test.docstring
    )


def test_every_docstring_example_is_found_and_none_is_skipped() -> None:
    names = {test.name for test in DOCSTRINGS}
    assert {"atomlimit", "atomlimit.cache", "atomlimit.specs.RateLimit.parse"} <= names
    skipped = [
        f"{test.name}, line {example.lineno + 1}"
        for test in DOCSTRINGS
        for example in test.examples
        if example.options.get(doctest.SKIP)
    ]
    assert skipped == []


@pytest.mark.parametrize("test", DOCSTRINGS, ids=[test.name for test in DOCSTRINGS])
def test_docstring_examples_run(test: doctest.DocTest, server: Server) -> None:
    report: list[str] = []
    runner = doctest.DocTestRunner()
    result = runner.run(_against(test, server.url), out=report.append, clear_globs=True)
    assert result.attempted == len(test.examples)
    assert result.failed == 0, "".join(report)

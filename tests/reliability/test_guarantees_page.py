"""docs/guarantees.md names the tests that prove each guarantee: every one it names exists."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "guarantees.md"
# `file::test`, or `::test` for another test of the file named just before.
REFERENCE = re.compile(r"`((?:[\w/]+\.py)?)::(test_\w+)`")


def _references():
    current = None
    for line in PAGE.read_text().splitlines():
        for file, test in REFERENCE.findall(line):
            current = file or current
            yield current, test


def test_every_test_the_page_names_exists():
    references = list(_references())
    assert len(references) > 40
    missing = [
        f"{file}::{test}"
        for file, test in references
        if not re.search(rf"^def {test}\(", (REPO / "tests" / file).read_text(), re.MULTILINE)
    ]
    assert not missing, f"docs/guarantees.md names tests that do not exist: {missing}"


def test_every_reliability_test_is_on_the_page():
    named = {test for _, test in _references()}
    for path in sorted((REPO / "tests" / "reliability").glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        tests = re.findall(r"^def (test_\w+)\(", path.read_text(), re.MULTILINE)
        covered = [t for t in tests if t in named]
        assert covered, f"{path.name}: none of its tests is named in docs/guarantees.md"

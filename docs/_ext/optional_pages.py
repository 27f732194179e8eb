"""MkDocs hook: pages that may not exist yet join the nav when they do.

``mkdocs build --strict`` fails on a nav entry whose file is missing, and an existing page left out
of the nav is easy to miss. The pages below are added to the nav only if their file is in
``docs/``, at a fixed place, so the site builds with or without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (after this nav title, in this section or None for the top level) -> [(title, file)]
OPTIONAL_PAGES: list[tuple[str | None, str, list[tuple[str, str]]]] = [
    (None, "Concepts", [("Guarantees", "guarantees.md")]),
    ("Guides", "Operators", [("Configuration files", "config.md"), ("Command line", "cli.md")]),
]


def _insert_after(entries: list[Any], after: str, pages: list[dict[str, str]]) -> None:
    titles = [next(iter(entry)) if isinstance(entry, dict) else None for entry in entries]
    index = titles.index(after) + 1 if after in titles else len(entries)
    entries[index:index] = pages


def on_config(config: Any, **kwargs: Any) -> Any:
    docs = Path(config["docs_dir"])
    nav = config["nav"]
    listed = {str(value) for entry in nav for value in _files(entry)}
    for section, after, pages in OPTIONAL_PAGES:
        present = [{title: file} for title, file in pages if (docs / file).is_file() and file not in listed]
        if not present:
            continue
        _insert_after(_section(nav, section), after, present)
    return config


def _section(nav: list[Any], title: str | None) -> list[Any]:
    """The entries of the nav section ``title`` (the top level for None, or if there is none)."""
    for entry in nav:
        if title is not None and isinstance(entry, dict) and isinstance(entry.get(title), list):
            return entry[title]
    return nav


def _files(entry: Any) -> list[str]:
    if isinstance(entry, str):
        return [entry]
    if isinstance(entry, dict):
        return [file for value in entry.values() for file in _files(value)]
    if isinstance(entry, list):
        return [file for value in entry for file in _files(value)]
    return []

"""Griffe extension for the documentation site: ``Example:`` is an examples section.

datarax's Google-style docstrings head their doctests ``Example:`` (the Google style guide's
spelling). Griffe's Google parser knows only ``Examples:`` as the section whose ``>>>`` lines become
code blocks and reads ``Example:`` as an admonition of Markdown text, in which ``x[0][1]`` is a link.
This extension renames the heading before the docstring is parsed; the source is unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Reads every ``Example:`` section of a docstring as ``Examples:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE_HEADING.sub(r"\1Examples:", obj.docstring.value)

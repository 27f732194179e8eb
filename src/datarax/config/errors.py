"""``ConfigError``: a bad TOML pipeline, named by file, line and key path.

Every error a TOML pipeline can cause (malformed TOML, an unknown component or
key, a value of the wrong type, a missing field, a path outside the allowed
roots, a value a component's own validation refuses) is a ``ConfigError``, a
``ValueError`` whose message reads like a compiler's::

    pipeline.toml:12: stages[2].magnitude: expected a number, got "high" (a string)

The key path is written as in TOML with array indices in brackets, counted
from 0 (``stages[2]`` is the third ``[[stages]]`` table); the line number comes
from ``datarax.config.locations`` because ``tomllib`` reports no positions.

Example:
    >>> error = ConfigError("expected a number, got 'high' (a string)", key=("stages", 2, "magnitude"),
    ...                     line=12, file="pipeline.toml")
    >>> str(error)
    "pipeline.toml:12: stages[2].magnitude: expected a number, got 'high' (a string)"
    >>> error.key, error.line
    ('stages[2].magnitude', 12)
    >>> isinstance(error, ValueError)
    True
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

KeyPath = tuple[str | int, ...]
"""A position in a TOML document: table and key names, and indices into arrays."""

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_key(path: Sequence[str | int]) -> str:
    """Writes a key path as TOML does, with array indices in brackets.

    Example:
        >>> format_key(("source", "paths", "my image"))
        'source.paths."my image"'
        >>> format_key(("graph", "edges", 1, 0))
        'graph.edges[1][0]'
    """
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{name}" if text else name
    return text


class ConfigError(ValueError):
    """A TOML pipeline that cannot be built, with where and why.

    Args:
        reason: What is wrong: the bad value and what was expected.
        key: The key path (a tuple such as ``("stages", 2, "magnitude")``, or
            its text), or None when the error concerns the whole document.
        line: The 1-based line the key is written on, or None.
        file: The TOML file's name as the user gave it, or None.

    Attributes:
        reason: As given.
        key: The key path as text (``"stages[2].magnitude"``), or None.
        key_path: The key path as a tuple, or None.
        line: As given.
        file: As given.
    """

    def __init__(
        self,
        reason: str,
        *,
        key: Sequence[str | int] | str | None = None,
        line: int | None = None,
        file: str | None = None,
    ):
        self.reason = reason
        self.key_path: KeyPath | None = None if key is None or isinstance(key, str) else tuple(key)
        self.key = format_key(key) if self.key_path is not None else key
        self.line = line
        self.file = file
        where = ":".join(str(part) for part in (file, line) if part is not None)
        parts = [part for part in (where, self.key, reason) if part]
        super().__init__(": ".join(parts))


__all__ = ["ConfigError", "KeyPath", "format_key"]

"""Where each key of a TOML document is written: its line number.

``tomllib`` returns plain dicts and lists with no positions, so an error about
``stages[2].magnitude`` would name no line. ``KeyLines`` scans the (already
valid) TOML text once and records the line of every table header, array of
tables entry, key, inline-table key and array element. The scan understands
exactly what TOML 1.0 writes: ``[table]`` and ``[[array.of.tables]]`` headers
(a header naming an array of tables refers to its latest entry), dotted and
quoted keys, strings of all four kinds (multi-line ones included), arrays and
inline tables nested to any depth, and comments.

``line(path)`` answers for the longest recorded prefix of ``path``, so a
missing key is reported at the line of the table that lacks it, and a value
inside a one-line array at that array's line.

Example:
    >>> text = '''
    ... [pipeline]
    ... batch_size = 8
    ...
    ... [[stages]]
    ... type = "RandomFlip"
    ...
    ... [[stages]]
    ... type = "RandomBrightness"
    ... magnitude = "high"
    ... '''
    >>> lines = KeyLines(text)
    >>> lines.line(("stages", 1, "magnitude")), lines.line(("stages", 1)), lines.line(("stages", 1, "draw"))
    (10, 8, 8)
    >>> lines.line(("pipeline", "batch_size"))
    3
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence

from datarax.config.errors import KeyPath

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}\n#")


class KeyLines:
    """The line of every key path of a TOML document.

    Args:
        text: A document ``tomllib`` parses (the scan assumes valid TOML).
    """

    def __init__(self, text: str):
        self._text = text
        self._i = 0
        self._line = 1
        self._lines: dict[KeyPath, int] = {}
        self._scan()

    def line(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path``, else of its longest recorded prefix; None if none is recorded."""
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None

    # -- the scan ---------------------------------------------------------------

    def _record(self, path: KeyPath, line: int) -> None:
        self._lines.setdefault(path, line)

    def _peek(self, text: str) -> bool:
        return self._text.startswith(text, self._i)

    def _advance(self, count: int = 1) -> None:
        self._line += self._text.count("\n", self._i, self._i + count)
        self._i += count

    def _skip_blank(self, newlines: bool) -> None:
        """Skips spaces, tabs, comments and (if ``newlines``) line ends."""
        text = self._text
        while self._i < len(text):
            char = text[self._i]
            if char in " \t\r" or (newlines and char == "\n"):
                self._advance()
            elif char == "#":
                end = text.find("\n", self._i)
                self._i = len(text) if end < 0 else end
            else:
                return

    def _scan(self) -> None:
        table: KeyPath = ()
        arrays: dict[KeyPath, int] = {}  # array of tables -> index of its latest entry
        while True:
            self._skip_blank(newlines=True)
            if self._i >= len(self._text):
                return
            line = self._line
            if self._peek("["):
                is_array = self._peek("[[")
                self._advance(2 if is_array else 1)
                self._skip_blank(newlines=False)
                keys = self._key()
                self._skip_blank(newlines=False)
                self._advance(2 if is_array else 1)
                parent = self._resolve(keys[:-1], arrays)
                full = (*parent, keys[-1])
                if is_array:
                    arrays[full] = arrays.get(full, -1) + 1
                    self._record(full, line)
                    table = (*full, arrays[full])
                else:
                    table = full
                self._record(table, line)
            else:
                keys = self._key()
                self._skip_blank(newlines=False)
                self._advance()  # '='
                self._skip_blank(newlines=False)
                path = table + keys
                self._record(path, line)
                self._value(path)

    @staticmethod
    def _resolve(keys: KeyPath, arrays: dict[KeyPath, int]) -> KeyPath:
        """A header's table path: a prefix naming an array of tables means its latest entry."""
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            if path in arrays:
                path = (*path, arrays[path])
        return path

    def _key(self) -> KeyPath:
        """A (dotted) key: bare, "basic" or 'literal' parts separated by dots."""
        parts: list[str] = []
        text = self._text
        while True:
            self._skip_blank(newlines=False)
            start = self._i
            if text[start] in "\"'":
                end = self._string_end(start)
                raw = text[start:end]
                parts.append(tomllib.loads(f"k = {raw}")["k"] if raw[0] == '"' else raw[1:-1])
                self._advance(end - start)
            else:
                end = start
                while end < len(text) and text[end] in _BARE:
                    end += 1
                parts.append(text[start:end])
                self._advance(end - start)
            self._skip_blank(newlines=False)
            if not self._peek("."):
                return tuple(parts)
            self._advance()

    def _string_end(self, start: int) -> int:
        """The index just past the string starting at ``start`` (any of TOML's four kinds)."""
        text = self._text
        quote = text[start]
        if text.startswith(quote * 3, start):
            end = start + 3
            while True:
                if quote == '"' and text[end] == "\\":
                    end += 2
                elif text.startswith(quote * 3, end):
                    end += 3
                    while end < len(text) and text[end] == quote:  # up to two quotes may end the content
                        end += 1
                    return end
                else:
                    end += 1
        end = start + 1
        while text[end] != quote:
            end += 2 if quote == '"' and text[end] == "\\" else 1
        return end + 1

    def _value(self, path: KeyPath) -> None:
        text = self._text
        char = text[self._i]
        if char in "\"'":
            self._advance(self._string_end(self._i) - self._i)
        elif char == "[":
            self._advance()
            index = 0
            while True:
                self._skip_blank(newlines=True)
                if self._peek("]"):
                    self._advance()
                    return
                self._record((*path, index), self._line)
                self._value((*path, index))
                self._skip_blank(newlines=True)
                if self._peek(","):
                    self._advance()
                    index += 1
        elif char == "{":
            self._advance()
            while True:
                self._skip_blank(newlines=False)
                if self._peek("}"):
                    self._advance()
                    return
                line = self._line
                keys = self._key()
                self._skip_blank(newlines=False)
                self._advance()  # '='
                self._skip_blank(newlines=False)
                self._record(path + keys, line)
                self._value(path + keys)
                self._skip_blank(newlines=False)
                if self._peek(","):
                    self._advance()
        else:
            end = self._i
            while end < len(text) and text[end] not in _SCALAR_END:
                end += 1
            self._advance(end - self._i)


__all__ = ["KeyLines"]

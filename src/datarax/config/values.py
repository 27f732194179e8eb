"""TOML values checked against the type of the field they set.

A component's config is a frozen dataclass whose fields carry type hints
(``magnitude: float``, ``fields: tuple[str, ...]``, ``size: tuple[int, int]``).
``convert(hint, value)`` checks a value read by ``tomllib`` against such a hint
and returns it in the Python form the config expects (TOML arrays become
tuples; an integer is accepted where a float is expected), or raises
``Mismatch`` saying what was expected and what was given, and where inside
the value (``mean[1]``). The component's own validation then checks the value
itself (a range, a choice), so this module only decides types.

Only types a TOML value can have are settable: a field typed with a function,
a mapping or an array type (``batch_stats_fn``) is not a TOML key at all
(``expected`` returns None for it). TOML has no null: a field that may be None
is None by leaving it out, when that is its default.

Example:
    >>> convert(tuple[float, ...], [0.5, 1])
    (0.5, 1.0)
    >>> convert(int | None, 3)
    3
    >>> expected(tuple[int, int])
    'an array of 2 integers'
    >>> try:
    ...     convert(tuple[float, ...], [0.5, "x"])
    ... except Mismatch as error:
    ...     print(error.where, error)
    (1,) expected a number, got 'x' (a string)
"""

from __future__ import annotations

import collections.abc
import datetime
import json
import types
import typing
from typing import Any

_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


class Mismatch(TypeError):
    """A TOML value of the wrong type.

    Attributes:
        where: The path inside the value (array indices), ``()`` for the value itself.
    """

    def __init__(self, message: str, where: tuple[int, ...] = ()):
        super().__init__(message)
        self.where = where


def toml_type(value: Any) -> str:
    """The TOML name of a parsed value's type, with its article ("a string", "an array")."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return "a date-time"
    return type(value).__name__


def describe(value: Any) -> str:
    """A value and its TOML type, for messages: ``'x' (a string)``."""
    return f"{value!r} ({toml_type(value)})"


def toml_literal(value: Any) -> str:
    """A default value as TOML would write it (``None``: ``unset``, since TOML has no null).

    Example:
        >>> toml_literal(("image",)), toml_literal(False), toml_literal(None), toml_literal(0.5)
        ('["image"]', 'false', 'unset', '0.5')
    """
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    return repr(value)


def _optional_inner(hint: Any) -> Any:
    """``X`` for ``X | None``; the hint itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def expected(hint: Any) -> str | None:
    """What a TOML value for ``hint`` must be, in words; None if TOML cannot express it."""
    hint = _optional_inner(hint)
    if hint is Any:
        return "a number, string, boolean or array"
    if hint in _NAMES:
        return _NAMES[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _PLURALS:
        return f"an array of {_PLURALS[args[0]]}"
    if origin is tuple and args and Ellipsis not in args and len(set(args)) == 1 and args[0] in _PLURALS:
        return f"an array of {len(args)} {_PLURALS[args[0]]}"
    if origin is collections.abc.Sequence and len(args) == 1 and args[0] in _PLURALS:
        return f"an array of {_PLURALS[args[0]]}"
    return None


def _scalar(kind: type, value: Any, where: tuple[int, ...]) -> Any:
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, kind):
        return value
    raise Mismatch(f"expected {_NAMES[kind]}, got {describe(value)}", where)


def _any(value: Any, where: tuple[int, ...]) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return tuple(_any(item, (*where, i)) for i, item in enumerate(value))
    raise Mismatch(f"expected {expected(Any)}, got {describe(value)}", where)


def convert(hint: Any, value: Any) -> Any:
    """Checks a TOML value against a field's type hint and returns it as the config expects it.

    Args:
        hint: The field's resolved type hint (``typing.get_type_hints``).
        value: The value ``tomllib`` read.

    Returns:
        The value, with arrays as tuples and integers as floats where floats are expected.

    Raises:
        Mismatch: If the value has the wrong type (its ``where`` locates it inside an array).
        ValueError: If ``hint`` is not a type TOML can express (see ``expected``).
    """
    what = expected(hint)
    if what is None:
        raise ValueError(f"convert: {hint!r} is not a type a TOML value can have")
    hint = _optional_inner(hint)
    if hint is Any:
        return _any(value, ())
    if hint in _NAMES:
        return _scalar(hint, value, ())
    args = typing.get_args(hint)
    if not isinstance(value, list):
        raise Mismatch(f"expected {what}, got {describe(value)}")
    if Ellipsis not in args and typing.get_origin(hint) is tuple and len(value) != len(args):
        raise Mismatch(f"expected {what}, got {len(value)} items: {value!r}")
    return tuple(_scalar(args[0], item, (i,)) for i, item in enumerate(value))


__all__ = ["Mismatch", "convert", "describe", "expected", "toml_literal", "toml_type"]

"""Argument validators shared by every constructor and call in datarax.

One place decides what "a positive int" means (an ``int`` or numpy integer,
never a ``bool``) and how the error reads, so every component refuses bad
input the same way: a ``ValueError`` that names the owner, the argument, the
bad value and what was expected. Each validator returns the value in its
canonical Python type, so callers store what they checked.

Example:
    >>> positive_int("Pipeline", "batch_size", 32)
    32
    >>> positive_int("Pipeline", "batch_size", True)
    Traceback (most recent call last):
    ...
    ValueError: Pipeline: batch_size must be a positive int, got True
    >>> optional_positive_int("Pipeline", "num_epochs", None) is None
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for bools (``True`` is not a count)."""
    return not isinstance(value, bool | np.bool_) and isinstance(value, int | np.integer)


def _prefix(owner: str) -> str:
    return f"{owner}: " if owner else ""


def int_in_range(owner: str, name: str, value: Any, *, low: int, high: int | None = None, what: str) -> int:
    """Returns ``value`` as an int if ``low <= value`` (and ``value < high``), else raises.

    Args:
        owner: Who checks (class or function name) for the message.
        name: The argument's name.
        value: The value given.
        low: Smallest accepted value.
        high: Exclusive upper bound, or None.
        what: How the message describes an accepted value.

    Returns:
        ``int(value)``.

    Raises:
        ValueError: If ``value`` is not an integer in range.
    """
    if not is_int(value) or value < low or (high is not None and value >= high):
        raise ValueError(f"{_prefix(owner)}{name} must be {what}, got {value!r}")
    return int(value)


def positive_int(owner: str, name: str, value: Any) -> int:
    """An int ``>= 1`` (see ``int_in_range``)."""
    return int_in_range(owner, name, value, low=1, what="a positive int")


def non_negative_int(owner: str, name: str, value: Any) -> int:
    """An int ``>= 0`` (see ``int_in_range``)."""
    return int_in_range(owner, name, value, low=0, what="a non-negative int")


def optional_positive_int(owner: str, name: str, value: Any) -> int | None:
    """None, or an int ``>= 1``."""
    if value is None:
        return None
    return int_in_range(owner, name, value, low=1, what="a positive int or None")


def optional_non_negative_int(owner: str, name: str, value: Any) -> int | None:
    """None, or an int ``>= 0`` (e.g. an optional shard id).

    Example:
        >>> optional_non_negative_int("MetadataManager", "shard_id", 0)
        0
        >>> optional_non_negative_int("MetadataManager", "shard_id", -1)
        Traceback (most recent call last):
        ...
        ValueError: MetadataManager: shard_id must be a non-negative int or None, got -1
    """
    if value is None:
        return None
    return int_in_range(owner, name, value, low=0, what="a non-negative int or None")


def boolean(owner: str, name: str, value: Any) -> bool:
    """A Python or numpy bool (not an int standing in for one)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{_prefix(owner)}{name} must be a bool, got {value!r}")
    return bool(value)


def optional_callable(owner: str, name: str, value: Any) -> Any:
    """None, or a callable; anything else is a ``TypeError`` (a wrong kind of object, not a bad value).

    Example:
        >>> optional_callable("DefaultBatcher", "collate_fn", None) is None
        True
        >>> optional_callable("DefaultBatcher", "collate_fn", "stack")
        Traceback (most recent call last):
        ...
        TypeError: DefaultBatcher: collate_fn must be a callable or None, got 'stack' (str)
    """
    if value is not None and not callable(value):
        raise TypeError(f"{_prefix(owner)}{name} must be a callable or None, got {value!r} ({type(value).__name__})")
    return value


def optional_column_names(owner: str, name: str, value: Any) -> tuple[str, ...] | None:
    """None, or a non-empty sequence of distinct non-empty column names (the columns a source reads), as a tuple.

    Example:
        >>> optional_column_names("ParquetSource", "columns", ["image", "label"])
        ('image', 'label')
        >>> optional_column_names("ParquetSource", "columns", "image")
        Traceback (most recent call last):
        ...
        ValueError: ParquetSource: columns must be a tuple of column names or None, got 'image' (did you mean ...
    """
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        hint = f" (did you mean ({value!r},)?)" if isinstance(value, str) else ""
        raise ValueError(f"{_prefix(owner)}{name} must be a tuple of column names or None, got {value!r}{hint}")
    names = tuple(value)
    if not names:
        raise ValueError(f"{_prefix(owner)}{name} is empty; give at least one column name, or None for all")
    for item in names:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{_prefix(owner)}column names must be non-empty str, got {item!r} in {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{_prefix(owner)}{name} has repeated names: {names!r}")
    return names


__all__ = [
    "boolean",
    "int_in_range",
    "is_int",
    "non_negative_int",
    "optional_callable",
    "optional_column_names",
    "optional_non_negative_int",
    "optional_positive_int",
    "positive_int",
]

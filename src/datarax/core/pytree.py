"""Registering datarax's frozen dataclasses (``Element``, ``Batch``, metadata) as pytrees.

Every such class is registered the same way, so each of them passes through
``jax.jit``, ``jax.vmap`` and tree utilities:

* named fields are pytree *children*, with ``GetAttrKey`` paths (``.data['x']``)
  so errors and ``tree_flatten_with_path`` name them readably;
* optional *static* fields go into the treedef, wrapped so that they compare by
  value even when unhashable (a ``source_info`` dict), and equal values share a
  compilation;
* unflattening never runs ``__init__`` or ``__post_init__``. JAX rebuilds pytrees
  with arbitrary leaves (tracers without the batch axis under ``vmap``, ``None``
  or ``object()`` sentinels in tree utilities), so only the public constructor
  validates.

Example:
    >>> import dataclasses, jax
    >>> @dataclasses.dataclass(frozen=True)
    ... class Point:
    ...     x: float
    ...     label: str
    ...     def __post_init__(self):
    ...         assert self.x >= 0
    >>> register_frozen_pytree(Point, children=("x",), statics=("label",))
    >>> jax.tree.map(lambda v: -v, Point(1.0, "a"))  # no validation on unflatten
    Point(x=-1.0, label='a')
    >>> [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(Point(1.0, "a"))[0]]
    ['.x']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.tree_util import GetAttrKey


class _Static:
    """Wraps a static aux value so treedefs compare it by value, even if unhashable."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Static):
            return NotImplemented
        try:
            return bool(self.value == other.value)
        except (TypeError, ValueError):  # e.g. array-valued keys with ambiguous ==
            return self.value is other.value

    def __hash__(self) -> int:
        try:
            return hash(self.value)
        except TypeError:
            # Equal dicts have equal key sets, so this stays consistent with __eq__.
            return hash(frozenset(self.value)) if isinstance(self.value, dict) else 0


def build_without_init(cls: type, **fields: Any) -> Any:
    """Creates an instance of a frozen dataclass from field values, without ``__init__``.

    Args:
        cls: The class.
        **fields: Every field's value.

    Returns:
        The instance, unvalidated.
    """
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


def register_frozen_pytree(cls: type, children: Sequence[str], statics: Sequence[str] = ()) -> None:
    """Registers a frozen dataclass as a pytree with named children and static aux data.

    Args:
        cls: The class to register.
        children: Fields that are pytree children (traced), in flattening order.
        statics: Fields kept in the treedef (compared by value).
    """
    children, statics = tuple(children), tuple(statics)

    def flatten_with_keys(obj):
        kids = tuple((GetAttrKey(n), getattr(obj, n)) for n in children)
        return kids, tuple(_Static(getattr(obj, n)) for n in statics)

    def flatten(obj):  # key-free fast path for plain tree_flatten (e.g. jit dispatch)
        return tuple(getattr(obj, n) for n in children), tuple(_Static(getattr(obj, n)) for n in statics)

    def unflatten(aux, kids):
        return build_without_init(cls, **dict(zip(children, kids)), **{n: a.value for n, a in zip(statics, aux)})

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)


__all__ = ["build_without_init", "register_frozen_pytree"]

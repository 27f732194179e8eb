"""``Element`` and ``Batch``: thin pytree views over datarax's plain dict batch form.

A batch is a plain dict of arrays with a leading batch axis plus the reserved key ``valid_mask``
(bool, shape ``(batch_size,)``). Padding rows are marked False and hold copies of a real record.
:class:`Batch` wraps the same arrays (``to_dict``/``from_dict`` never copy them) and adds per-row
``states`` and ``metadata``; :class:`Element` is one row. Both are immutable pytrees, so they pass
through ``jax.jit`` and other transformations.

Example:
    >>> import numpy as np
    >>> elements = [Element({"x": np.full(2, i, np.float32), "y": np.int32(i)}) for i in range(3)]
    >>> batch = Batch.from_elements(elements, batch_size=4)
    >>> batch
    Batch(batch_size=4, data={'x': float32[4,2], 'y': int32[4]}, states={}, metadata=None)
    >>> batch.valid_mask.tolist(), batch["y"].tolist(), batch.num_valid
    ([True, True, True, False], [0, 1, 2, 2], 3)
    >>> plain = batch.to_dict()
    >>> sorted(plain), plain["x"] is batch.data["x"]
    (['valid_mask', 'x', 'y'], True)
    >>> Batch.from_dict(plain).get_element(1)["y"].item()
    1
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path

from datarax.core.batch_form import VALID_MASK, stack_rows
from datarax.core.pytree import register_frozen_pytree
from datarax.core.spec import spec_to_str

__all__ = ["Batch", "Element"]


def _as_dict(value: Any, owner: str, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{owner}: {field} must be a dict, got {type(value).__name__}")
    if field == "data" and VALID_MASK in value:
        raise ValueError(f"{owner}: data key {VALID_MASK!r} is reserved for the batch validity mask; rename it")
    return dict(value)


def _describe(tree: Any) -> str:
    try:
        return spec_to_str(tree)
    except Exception:  # non-array leaves, e.g. inside tree utilities: fall back to plain repr
        return repr(tree)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Element:
    """One record: a dict of arrays plus per-record state and optional metadata.

    Args:
        data: The record's arrays by key (``"valid_mask"`` is reserved).
        state: Per-record state (e.g. operator state), a dict of arrays. Defaults to empty.
        metadata: Any pytree (e.g. a ``datarax.core.metadata.Metadata``), or None.

    Raises:
        TypeError: If ``data`` or ``state`` is not a mapping.
        ValueError: If ``data`` has the reserved key ``"valid_mask"``.

    Example:
        >>> import numpy as np
        >>> e = Element({"x": np.arange(3)})
        >>> e2 = e.update_data({"y": np.float32(1.0)})
        >>> sorted(e2.keys()), sorted(e.keys())
        (['x', 'y'], ['x'])
        >>> e2["x"].tolist()
        [0, 1, 2]
    """

    data: dict[str, Any]
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    metadata: Any | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _as_dict(self.data, "Element", "data"))
        object.__setattr__(self, "state", _as_dict(self.state, "Element", "state"))

    def replace(self, **fields: Any) -> Element:
        """Returns a new element with the given ``data``, ``state`` or ``metadata`` replaced."""
        return dataclasses.replace(self, **fields)

    def update_data(self, updates: Mapping[str, Any]) -> Element:
        """Returns a new element whose data is this element's data merged with ``updates``."""
        return self.replace(data={**self.data, **updates})

    def update_state(self, updates: Mapping[str, Any]) -> Element:
        """Returns a new element whose state is this element's state merged with ``updates``."""
        return self.replace(state={**self.state, **updates})

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def keys(self):
        """Returns the keys of ``data``."""
        return self.data.keys()

    def __repr__(self) -> str:
        return (
            f"Element(data={_describe(self.data)}, state={_describe(self.state)}, metadata={_describe(self.metadata)})"
        )


def _stack_elements(
    elements: Sequence[Element], *, batch_size: int | None, valid_mask: Any, owner: str
) -> tuple[dict[str, Any], Any, dict[str, Any], Any]:
    """Stacks elements into ``(data, valid_mask, states, metadata)``; see ``Batch.from_elements``."""
    elements = list(elements)
    for i, element in enumerate(elements):
        if not isinstance(element, Element):
            raise TypeError(f"{owner}: element {i} is a {type(element).__name__}, not an Element")
    n = len(elements)
    given_mask = None
    if valid_mask is not None:
        given_mask = jnp.asarray(valid_mask)
        if given_mask.shape != (n,) or given_mask.dtype != jnp.bool_:
            raise ValueError(
                f"{owner}: valid_mask must be a bool array of shape ({n},) "
                f"(one entry per element), got {given_mask.dtype.name}{list(given_mask.shape)}"
            )
    # An Element is a pytree over (data, state, metadata), so one stack covers all three.
    stacked, mask = stack_rows(elements, batch_size=batch_size, owner=owner, what="element")
    if given_mask is not None:
        mask = jnp.concatenate([given_mask, jnp.zeros(mask.shape[0] - n, bool)])
    return stacked.data, mask, stacked.state, stacked.metadata


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Batch:
    """A batch: dicts of arrays sharing a leading batch axis, plus a validity mask.

    Arrays are stored as given (never copied or converted), so ``to_dict``/``from_dict`` round-trip
    the same array objects. Shapes are validated on construction, also under ``jax.jit``.

    ``Batch(elements)`` with a list (or tuple) of ``Element`` objects stacks them, as
    ``Batch.from_elements(elements, valid_mask=valid_mask)`` does: one row per element, data,
    state and metadata stacked, ``states`` and ``metadata`` taken from the elements.

    Args:
        data: Arrays by key, each with leading axis ``batch_size`` (``"valid_mask"`` is reserved);
            or a non-empty list of ``Element`` objects to stack.
        valid_mask: Bool array of shape ``(batch_size,)``; False marks padding rows. None means
            all rows are valid. With a list of elements: one entry per element.
        states: Per-row state, a dict of arrays with the leading batch axis. None means empty.
            Must be None with a list of elements.
        metadata: None, or a per-row pytree whose leaves have the leading batch axis. Must be
            None with a list of elements.

    Raises:
        TypeError: If ``data`` is neither a mapping nor a list of ``Element`` objects, or
            ``states`` is not a mapping.
        ValueError: If ``data`` has the key ``"valid_mask"``, a leaf is 0-d, two leaves (or a
            leaf and the mask) disagree on the batch size, the mask is not a 1-d bool array, or
            the batch size cannot be inferred (no arrays and no mask); with a list of elements,
            as ``from_elements``, or if ``states`` or ``metadata`` is also given.

    Example:
        >>> import numpy as np
        >>> b = Batch({"x": np.zeros((2, 3))}, valid_mask=np.array([True, False]))
        >>> b.batch_size, b.num_valid
        (2, 1)
        >>> Batch([Element({"x": np.float32(i)}) for i in range(3)])["x"].tolist()
        [0.0, 1.0, 2.0]
        >>> Batch({"x": np.zeros((2, 3)), "y": np.zeros(5)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Batch: data['y'] has leading dimension 5, but the batch size is 2 (from ...)
    """

    data: dict[str, Any] | Sequence[Element]
    valid_mask: Any = None
    states: dict[str, Any] | None = None
    metadata: Any | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data, list | tuple):
            if self.states is not None or self.metadata is not None:
                raise ValueError(
                    "Batch: states and metadata are stacked from the elements when data is a list of "
                    "Elements; set them on the Elements instead of passing them"
                )
            if not self.data:
                raise ValueError("Batch: data is an empty list; need at least one Element")
            data, mask, states, metadata = _stack_elements(
                self.data, batch_size=None, valid_mask=self.valid_mask, owner="Batch"
            )
            for name, value in (("data", data), ("valid_mask", mask), ("states", states), ("metadata", metadata)):
                object.__setattr__(self, name, value)
        data = _as_dict(self.data, "Batch", "data")
        states = _as_dict({} if self.states is None else self.states, "Batch", "states")
        mask, size, source = self.valid_mask, None, None
        if mask is not None:
            if not (hasattr(mask, "shape") and hasattr(mask, "dtype")):
                mask = jnp.asarray(mask)
            if len(mask.shape) != 1 or not jnp.issubdtype(mask.dtype, jnp.bool_):
                raise ValueError(
                    f"Batch: valid_mask must be a bool array of shape (batch_size,), got {mask.dtype}{list(mask.shape)}"
                )
            size, source = mask.shape[0], VALID_MASK
        for field, tree in (("data", data), ("states", states), ("metadata", self.metadata)):
            for path, leaf in tree_flatten_with_path(tree)[0]:
                name, shape = field + keystr(path), np.shape(leaf)
                if not shape:
                    raise ValueError(f"Batch: {name} is 0-d and has no leading batch axis")
                if size is None:
                    size, source = shape[0], name
                elif shape[0] != size:
                    raise ValueError(
                        f"Batch: {name} has leading dimension {shape[0]}, but the batch size is {size} (from {source})"
                    )
        if size is None:
            raise ValueError("Batch: cannot infer the batch size: valid_mask is None and there are no arrays")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "states", states)
        object.__setattr__(self, "valid_mask", jnp.ones((size,), bool) if mask is None else mask)

    @property
    def batch_size(self) -> int:
        """The length of the leading axis (padding rows included)."""
        return self.valid_mask.shape[0]

    @property
    def num_valid(self) -> Any:
        """The number of valid rows: an ``int``, or a traced int scalar under ``jax.jit``."""
        count = jnp.count_nonzero(self.valid_mask)
        try:
            return int(count)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
            return count

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def keys(self):
        """Returns the keys of ``data``."""
        return self.data.keys()

    def replace(self, **fields: Any) -> Batch:
        """Returns a new, re-validated batch with the given fields replaced."""
        return dataclasses.replace(self, **fields)

    @classmethod
    def from_elements(
        cls,
        elements: Sequence[Element],
        *,
        batch_size: int | None = None,
        valid_mask: Any = None,
    ) -> Batch:
        """Stacks elements into a batch, padding with copies of the last element.

        Args:
            elements: Elements with identical keys, shapes and dtypes (data, state and metadata).
            batch_size: The batch size; defaults to ``len(elements)``. If larger, the batch is
                padded by repeating the last element and the padding rows are marked invalid.
            valid_mask: Optional bool array with one entry per element (``len(elements)``);
                padding rows are appended as False. Defaults to all True.

        Returns:
            A ``Batch`` of JAX arrays.

        Raises:
            TypeError: If an item is not an ``Element``.
            ValueError: If ``elements`` is empty, ``batch_size < len(elements)`` (or not an
                integer), an element differs from element 0 (the message names its index and
                key), or ``valid_mask`` has the wrong shape or dtype.

        Example:
            >>> import numpy as np
            >>> b = Batch.from_elements([Element({"v": np.int32(5)})], batch_size=3)
            >>> b["v"].tolist(), b.valid_mask.tolist()
            ([5, 5, 5], [True, False, False])
        """
        elements = list(elements)
        if not elements:
            raise ValueError("Batch.from_elements: elements is empty; need at least one Element")
        data, mask, states, metadata = _stack_elements(
            elements, batch_size=batch_size, valid_mask=valid_mask, owner="Batch.from_elements"
        )
        return cls(data, valid_mask=mask, states=states, metadata=metadata)

    def to_dict(self) -> dict[str, Any]:
        """Returns the plain dict form ``{**data, "valid_mask": mask}`` (same array objects).

        ``states`` and ``metadata`` are not part of the plain form.
        """
        return {**self.data, VALID_MASK: self.valid_mask}

    @classmethod
    def from_dict(cls, batch: Mapping[str, Any], *, states: Any = None, metadata: Any = None) -> Batch:
        """Wraps a plain dict batch (which must hold ``"valid_mask"``) without copying arrays.

        Args:
            batch: ``{**data, "valid_mask": bool[batch_size]}``.
            states: Optional per-row states for the new batch.
            metadata: Optional per-row metadata for the new batch.

        Returns:
            A ``Batch`` whose arrays are the dict's own objects.

        Raises:
            ValueError: If ``"valid_mask"`` is missing, or the arrays fail ``Batch`` validation.
        """
        if not isinstance(batch, Mapping) or VALID_MASK not in batch:
            raise ValueError(
                f"Batch.from_dict: expected a dict with the reserved key {VALID_MASK!r}, "
                f"got keys {sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__}"
            )
        data = {k: v for k, v in batch.items() if k != VALID_MASK}
        return cls(data, valid_mask=batch[VALID_MASK], states=states, metadata=metadata)

    def get_element(self, index: int) -> Element:
        """Returns row ``index`` (padding rows included) as an ``Element``.

        Raises:
            IndexError: If a concrete ``index`` is outside ``[-batch_size, batch_size)``.
        """
        if isinstance(index, (int, np.integer)) and not -self.batch_size <= index < self.batch_size:
            raise IndexError(f"Batch.get_element: index {index} is out of range for batch_size {self.batch_size}")
        take = lambda tree: jax.tree.map(lambda x: x[index], tree)  # noqa: E731
        return Element(take(self.data), take(self.states), take(self.metadata))

    def to_elements(self, valid_only: bool = True) -> list[Element]:
        """Splits the batch into elements, skipping padding rows unless ``valid_only`` is False.

        Needs a concrete ``valid_mask`` (not usable inside ``jax.jit``).
        """
        mask = np.asarray(self.valid_mask)
        return [self.get_element(i) for i in range(self.batch_size) if mask[i] or not valid_only]

    def __repr__(self) -> str:
        return (
            f"Batch(batch_size={self.batch_size}, data={_describe(self.data)}, "
            f"states={_describe(self.states)}, metadata={_describe(self.metadata)})"
        )


register_frozen_pytree(Element, ("data", "state", "metadata"))
register_frozen_pytree(Batch, ("data", "valid_mask", "states", "metadata"))

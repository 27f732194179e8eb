"""``DefaultBatcher``: stacks element pytrees into batches of the one batch form.

Elements are dicts of arrays (or ``Element`` objects, whose ``data`` is
used). Every emitted batch matches ``batch_spec``: full ``batch_size`` rows
plus ``valid_mask``. With ``drop_remainder=False`` a short last batch is
padded with copies of its last real element (so no garbage or NaN reaches a
model) and the copies are marked False in ``valid_mask``.

Example:
    >>> import numpy as np
    >>> from datarax.batching import DefaultBatcher, DefaultBatcherConfig
    >>> batcher = DefaultBatcher(DefaultBatcherConfig())
    >>> elements = [{"x": np.float32(i)} for i in range(5)]
    >>> batches = list(batcher(elements, batch_size=2))
    >>> [b["x"].tolist() for b in batches]
    [[0.0, 1.0], [2.0, 3.0], [4.0, 4.0]]
    >>> batches[-1]["valid_mask"].tolist()
    [True, False]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from datarax.core.batcher import VALID_MASK, BatcherModule, validate_batch_size
from datarax.core.config import StructuralConfig
from datarax.core.element_batch import Element


@dataclasses.dataclass(frozen=True)
class DefaultBatcherConfig(StructuralConfig):
    """Configuration of ``DefaultBatcher`` (no options beyond ``StructuralConfig`` yet)."""


def _element_data(element: Any, index: int) -> Any:
    data = element.data if isinstance(element, Element) else element
    if not isinstance(data, dict):
        raise TypeError(f"DefaultBatcher: element {index} must be a dict or Element, got {type(data).__name__}")
    if VALID_MASK in data:
        raise ValueError(f"DefaultBatcher: element {index} uses the reserved key {VALID_MASK!r}")
    return data


def _leaf_signature(leaf: Any) -> tuple[tuple[int, ...], Any]:
    # np.result_type on a jax.Array is a deprecated implicit dtype conversion.
    return np.shape(leaf), (leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf))


def _stack(elements: list[Any], first_index: int) -> Any:
    treedef = jax.tree.structure(elements[0])
    shapes = [_leaf_signature(x) for x in jax.tree.leaves(elements[0])]
    for offset, element in enumerate(elements[1:], start=1):
        if jax.tree.structure(element) != treedef:
            raise ValueError(
                f"DefaultBatcher: element {first_index + offset} has structure "
                f"{jax.tree.structure(element)}, expected {treedef}"
            )
        other = [_leaf_signature(x) for x in jax.tree.leaves(element)]
        if other != shapes:
            raise ValueError(
                f"DefaultBatcher: element {first_index + offset} has leaf shapes/dtypes {other}, expected {shapes}"
            )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *elements)


class DefaultBatcher(BatcherModule):
    """Stacks consecutive elements into dict batches with a ``valid_mask``."""

    def process(
        self,
        elements: Iterable[Any],
        *args: Any,
        batch_size: int,
        drop_remainder: bool = False,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any]]:
        """Groups ``elements`` into batches.

        The arguments are validated when called, before the first batch.

        Args:
            elements: An iterable of element dicts or ``Element`` objects.
            *args: Unused.
            batch_size: Number of elements in each batch.
            drop_remainder: Drop a short last batch instead of padding it.
            **kwargs: Unused.

        Returns:
            An iterator of batch dicts (leading dimension ``batch_size``, plus
            ``valid_mask``).

        Raises:
            ValueError: If ``batch_size`` is not positive, or elements differ
                in structure, shape or dtype.
        """
        batch_size = validate_batch_size(batch_size)
        if not isinstance(drop_remainder, bool):
            raise ValueError(f"drop_remainder must be a bool, got {drop_remainder!r}")
        return self._batches(iter(elements), batch_size, drop_remainder)

    def _batches(self, elements: Iterator[Any], batch_size: int, drop_remainder: bool) -> Iterator[dict[str, Any]]:
        index = 0
        while True:
            chunk = []
            for element in elements:
                chunk.append(_element_data(element, index + len(chunk)))
                if len(chunk) == batch_size:
                    break
            if not chunk or (len(chunk) < batch_size and drop_remainder):
                return
            real = len(chunk)
            chunk.extend([chunk[-1]] * (batch_size - real))
            batch = dict(_stack(chunk, index))
            batch[VALID_MASK] = jnp.arange(batch_size) < real
            index += real
            yield batch
            if real < batch_size:
                return


__all__ = ["DefaultBatcher", "DefaultBatcherConfig"]

"""``DefaultBatcher``: stacks element pytrees into batches of the one batch form.

Elements are dicts of arrays (or ``Element`` objects, whose ``data`` is
used). Every emitted batch matches ``batch_spec``: full ``batch_size`` rows
plus ``valid_mask``. With ``drop_remainder=False`` a short last batch is
padded with copies of its last real element (so no garbage or NaN reaches a
model) and the copies are marked False in ``valid_mask``. Stacking and padding
are ``datarax.core.batch_form.stack_rows``, shared with ``Batch.from_elements``.

A ``collate_fn`` replaces that stacking for data the batch form does not fit
(ragged text, Python objects): it receives each group of elements as given and
its return value is the batch, with no padding and no ``valid_mask`` added.

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
    >>> lengths = DefaultBatcher(DefaultBatcherConfig(), collate_fn=lambda xs: [len(x) for x in xs])
    >>> list(lengths(["a", "bcd", "ef"], batch_size=2))
    [[1, 3], [2]]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flax import nnx

from datarax.core.batch_form import VALID_MASK, stack_rows, validate_batch_size
from datarax.core.batcher import BatcherModule
from datarax.core.config import StructuralConfig
from datarax.core.element_batch import Element
from datarax.core.validation import boolean, optional_callable


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


class DefaultBatcher(BatcherModule):
    """Groups consecutive elements into batches: dict batches with a ``valid_mask``, or ``collate_fn``'s.

    Args:
        config: ``DefaultBatcherConfig`` (any ``StructuralConfig`` is accepted).
        collate_fn: Optional ``collate_fn(elements) -> batch``. It is called once per batch
            with the list of that batch's elements exactly as they came in (dicts, ``Element``
            objects or anything else; nothing is checked or converted), ``batch_size`` of them
            except for a short last group, which is passed as is (not padded) unless
            ``drop_remainder=True`` drops it. Its return value is yielded as the batch,
            unchanged: no ``valid_mask`` is added, and ``batch_spec`` (which describes the
            default form) does not apply. None (the default) stacks into the batch form.
        rngs: Random number generators (required if ``config.stochastic``).
        name: Optional module name.

    Raises:
        TypeError: If ``collate_fn`` is neither None nor callable, or ``config`` is not a
            ``StructuralConfig``.

    Example:
        >>> import numpy as np
        >>> b = DefaultBatcher(DefaultBatcherConfig(), collate_fn=lambda xs: np.stack([x["t"] for x in xs]))
        >>> [a.tolist() for a in b([{"t": np.int32(i)} for i in range(3)], batch_size=2)]
        [[0, 1], [2]]
    """

    def __init__(
        self,
        config: StructuralConfig,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        collate_fn = optional_callable(type(self).__name__, "collate_fn", collate_fn)
        super().__init__(config, rngs=rngs, name=name)
        self.collate_fn = collate_fn

    def process(
        self,
        elements: Iterable[Any],
        *args: Any,
        batch_size: int,
        drop_remainder: bool = False,
        **kwargs: Any,
    ) -> Iterator[Any]:
        """Groups ``elements`` into batches.

        The arguments are validated when called, before the first batch; the
        elements are read lazily, one batch at a time.

        Args:
            elements: An iterable of element dicts or ``Element`` objects (anything
                ``collate_fn`` accepts, when one is set).
            *args: Unused.
            batch_size: Number of elements in each batch.
            drop_remainder: Drop a short last batch instead of padding it (or, with a
                ``collate_fn``, instead of collating the short group).
            **kwargs: Unused.

        Returns:
            An iterator of batch dicts (leading dimension ``batch_size``, plus
            ``valid_mask``), or of ``collate_fn``'s results.

        Raises:
            ValueError: If ``batch_size`` is not a positive int, ``drop_remainder`` is
                not a bool, or (default stacking) elements differ in structure, shape or
                dtype, or use the reserved key ``valid_mask``.
            TypeError: (default stacking) If an element is not a dict or ``Element``.
        """
        owner = type(self).__name__
        batch_size = validate_batch_size(batch_size, owner)
        drop_remainder = boolean(owner, "drop_remainder", drop_remainder)
        return self._batches(iter(elements), batch_size, drop_remainder)

    def _batches(self, elements: Iterator[Any], batch_size: int, drop_remainder: bool) -> Iterator[Any]:
        index = 0
        while True:
            chunk = []
            for element in elements:
                chunk.append(element if self.collate_fn is not None else _element_data(element, index + len(chunk)))
                if len(chunk) == batch_size:
                    break
            if not chunk or (len(chunk) < batch_size and drop_remainder):
                return
            if self.collate_fn is not None:
                yield self.collate_fn(chunk)
            else:
                stacked, mask = stack_rows(
                    chunk, batch_size=batch_size, owner=type(self).__name__, what="element", first_index=index
                )
                yield {**stacked, VALID_MASK: mask}
            index += len(chunk)
            if len(chunk) < batch_size:
                return


__all__ = ["DefaultBatcher", "DefaultBatcherConfig"]

"""Base module for batchers: grouping elements into batches.

Every batch in datarax has one form (see docs/architecture.md): a dict of
arrays with a leading batch axis plus the reserved bool key ``valid_mask``.
``BatcherModule.batch_spec`` states that form for a given element spec, so
models and operators can be checked against it before any data flows.

Example:
    >>> import jax, numpy as np
    >>> from datarax.core.batcher import BatcherModule
    >>> from datarax.core.config import StructuralConfig
    >>> spec = {"x": jax.ShapeDtypeStruct((3,), np.float32)}
    >>> out = BatcherModule(StructuralConfig()).batch_spec(spec, batch_size=4)
    >>> out["x"].shape, out["valid_mask"].shape, out["valid_mask"].dtype
    ((4, 3), (4,), dtype('bool'))
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

# VALID_MASK stays importable from here for code written before the batch form had its own
# module (datarax.core.batch_form, where new code should import it from).
from datarax.core.batch_form import VALID_MASK, batched_spec, validate_batch_size  # noqa: F401
from datarax.core.structural import StructuralModule

logger = logging.getLogger(__name__)


class BatcherModule(StructuralModule):
    """Base module for all datarax batchers.

    Args:
        config: ``StructuralConfig`` or a subclass with batcher parameters.
        rngs: Random number generators (required if ``stochastic=True``).
        name: Optional name for the batcher.
    """

    def process(
        self,
        elements: Any,
        *args: Any,
        batch_size: int,
        drop_remainder: bool = False,
        **kwargs: Any,
    ) -> list[Any] | Iterator[Any]:
        """Groups individual data elements into batches (subclasses implement).

        Args:
            elements: An iterator or list of elements.
            *args: Additional positional arguments (processor-specific).
            batch_size: Number of elements in each batch.
            drop_remainder: Whether to drop a last batch smaller than batch_size.
            **kwargs: Additional keyword arguments (processor-specific).

        Returns:
            An iterator or list of batches.

        Raises:
            ValueError: If ``batch_size`` is not positive.
            NotImplementedError: On the base class.
        """
        validate_batch_size(batch_size, type(self).__name__)
        raise NotImplementedError(f"{type(self).__name__} must implement process()")

    def batch_spec(self, element_spec: Any, *, batch_size: int) -> dict[str, Any]:
        """Returns the batched spec for ``element_spec`` at ``batch_size``.

        Prepends ``(batch_size,)`` to every ``jax.ShapeDtypeStruct`` leaf and
        adds the top-level ``valid_mask`` of shape ``(batch_size,)``, dtype bool.

        Args:
            element_spec: Dict pytree of ``jax.ShapeDtypeStruct`` for one element.
            batch_size: Number of elements per emitted batch.

        Returns:
            The batched spec under the original keys plus ``"valid_mask"``.

        Raises:
            ValueError: If ``batch_size`` is not positive or ``element_spec``
                already uses the reserved key ``valid_mask``.
            TypeError: If ``element_spec`` is not a dict.
        """
        return batched_spec(element_spec, batch_size=batch_size)


__all__ = ["BatcherModule"]

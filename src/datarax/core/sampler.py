"""Base module for samplers: which record is served at each epoch position.

A sampler is a stateless map ``(position, num_records, epoch) -> record``
that is a bijection of ``[0, num_records)`` for every epoch. It is computed for
a whole vector of positions at once, in ``jax.numpy`` inside the compiled
step (``indices_at``) and in numpy for host-side sources (``indices_at_np``);
both must agree exactly. Because nothing is materialised, any position of
any epoch is available at once, which is what makes exact resume cheap.

Example:
    >>> import numpy as np
    >>> from datarax.core.config import StructuralConfig
    >>> from datarax.core.sampler import SamplerModule
    >>> class Reversed(SamplerModule):
    ...     def indices_at(self, positions, num_records, epoch):
    ...         return num_records - 1 - positions
    >>> Reversed(StructuralConfig()).process(4).tolist()
    [3, 2, 1, 0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datarax.core.structural import StructuralModule
from datarax.core.validation import positive_int


def validate_num_records(num_records: Any, owner: str = "") -> int:
    """Returns ``num_records`` as an int, or raises ``ValueError`` unless it is a positive int."""
    return positive_int(owner, "num_records", num_records)


class SamplerModule(StructuralModule):
    """Base class for samplers (position -> record index, per epoch)."""

    def indices_at(self, positions: Any, num_records: int, epoch: Any) -> Any:
        """Record indices for epoch ``positions`` (jax.numpy; traceable). Subclasses implement.

        Args:
            positions: Integer array of positions in ``[0, num_records)``.
            num_records: Number of records (static Python int).
            epoch: Epoch number (int or traced scalar).

        Returns:
            Integer array of record indices, same shape as ``positions``.

        Raises:
            NotImplementedError: On the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement indices_at()")

    def indices_at_np(self, positions: np.ndarray, num_records: int, epoch: int) -> np.ndarray:
        """Numpy version of ``indices_at`` for host-side sources (must agree with it)."""
        return np.asarray(self.indices_at(np.asarray(positions), num_records, epoch))

    def process(self, dataset_size: int, *, epoch: int = 0) -> np.ndarray:
        """The whole order of one epoch.

        Args:
            dataset_size: Number of records.
            epoch: Epoch number.

        Returns:
            ``np.ndarray`` of record indices, a permutation of ``range(dataset_size)``.

        Raises:
            ValueError: If ``dataset_size`` is not a positive int.
        """
        n = validate_num_records(dataset_size, type(self).__name__)
        return self.indices_at_np(np.arange(n), n, int(epoch))


__all__ = ["SamplerModule", "validate_num_records"]

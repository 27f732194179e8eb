"""Base module for sharders: which part of each global batch a process computes.

The pipeline serves one global stream. With ``P`` processes, process ``i``
computes rows ``[i*B/P, (i+1)*B/P)`` of every global batch of size ``B`` and
JAX assembles the global array. ``SharderModule.local_rows`` is that rule;
subclasses decide how a local batch becomes a global array (``process``).

Example:
    >>> from datarax.core.config import StructuralConfig
    >>> from datarax.core.sharder import SharderModule
    >>> SharderModule(StructuralConfig()).local_rows(8, process_index=1, process_count=4)
    (2, 4)
"""

from __future__ import annotations

from typing import Any

from datarax.core.batch_form import validate_batch_size
from datarax.core.structural import StructuralModule
from datarax.core.validation import int_in_range, positive_int


class SharderModule(StructuralModule):
    """Base class for sharders (global batch -> per-process share -> global array)."""

    def local_rows(self, global_batch_size: int, *, process_index: int, process_count: int) -> tuple[int, int]:
        """The ``[start, stop)`` rows of each global batch that one process computes.

        Args:
            global_batch_size: Rows in each global batch.
            process_index: This process's index in ``[0, process_count)``.
            process_count: Number of processes.

        Returns:
            ``(start, stop)`` row bounds.

        Raises:
            ValueError: If the batch does not divide evenly or the index is out of range.
        """
        owner = f"{type(self).__name__}.local_rows"
        global_batch_size = validate_batch_size(global_batch_size, owner)
        process_count = positive_int(owner, "process_count", process_count)
        process_index = int_in_range(
            owner, "process_index", process_index, low=0, high=process_count, what=f"an int in [0, {process_count})"
        )
        if global_batch_size % process_count:
            raise ValueError(
                f"{owner}: global batch_size {global_batch_size} is not divisible by process_count {process_count}"
            )
        share = global_batch_size // process_count
        return process_index * share, (process_index + 1) * share

    def process(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        """Turns a local batch into a sharded global batch. Subclasses implement.

        Raises:
            NotImplementedError: On the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement process()")


__all__ = ["SharderModule"]

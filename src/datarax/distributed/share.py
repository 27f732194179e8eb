"""Which rows of each global batch this process computes.

The pipeline serves one global stream: batch ``t`` covers global positions ``[t·B, (t+1)·B)``.
With ``P`` processes, process ``i`` computes the contiguous rows ``[i·B/P, (i+1)·B/P)`` of every
global batch and JAX assembles the global array from the shares (see ``mesh.batch_sharding``).
The union of the shares is exactly the single-process batch, so the stream does not depend on
the process count; it only requires ``B`` to be a multiple of ``P``, checked when asked.

Example:
    >>> process_share(8, process_index=1, process_count=2)
    (4, 8)
    >>> [process_share(12, i, 3) for i in range(3)]
    [(0, 4), (4, 8), (8, 12)]
    >>> process_share(32)                  # one process: the whole batch
    (0, 32)
"""

from __future__ import annotations

import jax

from datarax.core.validation import int_in_range, is_int


def _int(name: str, value: object) -> int:
    if not is_int(value):
        raise TypeError(f"process_share: {name} must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


def process_share(
    global_batch_size: int, process_index: int | None = None, process_count: int | None = None
) -> tuple[int, int]:
    """The half-open row range ``(start, stop)`` of a global batch that one process computes.

    Args:
        global_batch_size: Rows in the global batch, ``B``; a positive multiple of the process count.
        process_index: The process, ``i``; None: ``jax.process_index()``.
        process_count: How many processes share the batch, ``P``; None: ``jax.process_count()``.

    Returns:
        ``(i * B // P, (i + 1) * B // P)``.

    Raises:
        TypeError: If an argument is not an int.
        ValueError: If a value is out of range, or ``B`` is not a multiple of ``P``.

    Example:
        >>> process_share(10, process_index=0, process_count=4)
        Traceback (most recent call last):
        ...
        ValueError: process_share: global_batch_size=10 is not divisible by process_count=4; expected a multiple ...
    """
    size = _int("global_batch_size", global_batch_size)
    size = int_in_range("process_share", "global_batch_size", size, low=1, what="a positive int")
    count = jax.process_count() if process_count is None else _int("process_count", process_count)
    count = int_in_range("process_share", "process_count", count, low=1, what="a positive int")
    index = jax.process_index() if process_index is None else _int("process_index", process_index)
    index = int_in_range(
        "process_share", "process_index", index, low=0, high=count, what=f"an int in [0, process_count={count})"
    )
    if size % count:
        lower, upper = (size // count) * count, (size // count + 1) * count
        examples = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"process_share: global_batch_size={size} is not divisible by process_count={count}; "
            f"expected a multiple of {count} (e.g. {examples})"
        )
    rows = size // count
    return index * rows, (index + 1) * rows


__all__ = ["process_share"]

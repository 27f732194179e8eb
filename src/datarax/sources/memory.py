"""``MemorySource``: records held in memory as a dict of equally long arrays.

The arrays are moved to the default device once, at construction, and held
as ``nnx.data`` (pytree data, not checkpoint state). ``get_batch_at`` and
``get_records`` are pure gathers, so the pipeline runs them inside its one
jitted step with a traced start or index vector.

Example:
    >>> import numpy as np
    >>> from datarax.sources import MemorySource, MemorySourceConfig
    >>> source = MemorySource(MemorySourceConfig(),
    ...                       data={"x": np.arange(10.0), "y": np.arange(10) % 2})
    >>> len(source), source[3]["x"].item()
    (10, 3.0)
    >>> source.get_batch_at(8, 4)["x"].tolist()  # wraps around the end
    [8.0, 9.0, 0.0, 1.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core.batcher import VALID_MASK
from datarax.core.config import StructuralConfig
from datarax.core.data_source import DataSourceModule


@dataclasses.dataclass(frozen=True)
class MemorySourceConfig(StructuralConfig):
    """Configuration of ``MemorySource`` (no options beyond ``StructuralConfig`` yet)."""


def _validated_columns(data: Any) -> tuple[dict[str, jax.Array], int]:
    if not isinstance(data, Mapping):
        raise TypeError(f"MemorySource: data must be a dict of arrays, got {type(data).__name__}")
    if not data:
        raise ValueError("MemorySource: data is empty; expected at least one column")
    lengths: dict[str, int] = {}
    columns: dict[str, jax.Array] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise TypeError(f"MemorySource: column names must be str, got {key!r}")
        if key == VALID_MASK:
            raise ValueError(f"MemorySource: column name {VALID_MASK!r} is reserved for batches")
        if not isinstance(value, np.ndarray | jax.Array):
            raise TypeError(f"MemorySource: column {key!r} must be a numpy or jax array, got {type(value).__name__}")
        if value.ndim == 0:
            raise ValueError(f"MemorySource: column {key!r} is a scalar; expected a leading record axis")
        # jnp.issubdtype also knows the ml_dtypes (bfloat16, float8, int4) as numbers.
        if value.dtype == object or not (
            jnp.issubdtype(value.dtype, jnp.number) or jnp.issubdtype(value.dtype, jnp.bool_)
        ):
            raise TypeError(f"MemorySource: column {key!r} has non-numeric dtype {value.dtype}")
        lengths[key] = int(value.shape[0])
        columns[key] = jnp.asarray(value)
    if len(set(lengths.values())) != 1:
        raise ValueError(f"MemorySource: columns have different lengths (ragged): {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("MemorySource: columns have zero records; expected at least one")
    # The host-to-device copy is asynchronous: finish it now, so that a caller
    # who later mutates its numpy arrays cannot change the records.
    jax.block_until_ready(columns)
    return columns, n


class MemorySource(DataSourceModule):
    """A data source over a dict of equally long in-memory arrays.

    Args:
        config: ``MemorySourceConfig``.
        data: Dict mapping column names to numpy or jax arrays that share the
            leading (record) dimension.
        rngs: Optional random number generators.
        name: Optional module name.

    Raises:
        TypeError: If ``data`` is not a dict of numeric arrays.
        ValueError: If ``data`` is empty, ragged, has zero records, a scalar
            column, or uses the reserved name ``valid_mask``.
    """

    def __init__(
        self,
        config: MemorySourceConfig,
        data: Mapping[str, Any],
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        super().__init__(config, rngs=rngs, name=name)
        columns, n = _validated_columns(data)
        self.data = nnx.data(columns)
        self.num_records = n

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, jax.Array]:
        """Returns record ``index`` (negative indices count from the end).

        Raises:
            TypeError: If ``index`` is not an int.
            IndexError: If ``index`` is out of range.
        """
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"MemorySource index must be an int, got {type(index).__name__}")
        if not -self.num_records <= index < self.num_records:
            raise IndexError(f"MemorySource index {index} out of range for {self.num_records} records")
        return {k: v[index] for k, v in self.data.items()}

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        for i in range(self.num_records):
            yield self[i]

    def get_records(self, indices: Any) -> dict[str, jax.Array]:
        """Gathers the records at ``indices`` (traceable; indices wrap modulo ``len``)."""
        indices = jnp.asarray(indices) % self.num_records
        return {k: jnp.take(v, indices, axis=0) for k, v in self.data.items()}

    def get_batch_at(self, start: int | Any, size: int, key: Any | None = None) -> dict[str, jax.Array]:
        """Returns ``size`` records from ``start``, wrapping around the end.

        Args:
            start: Starting index (Python int or traced scalar).
            size: Number of records (static Python int).
            key: Unused (the source is deterministic).

        Returns:
            Dict of arrays with leading dimension ``size``.

        Raises:
            ValueError: If ``size`` is not a positive int.
        """
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0:
            raise ValueError(f"get_batch_at: size must be a positive int, got {size!r}")
        return self.get_records(jnp.asarray(start) + jnp.arange(int(size)))

    def element_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """One record's spec: each column's shape without the record axis."""
        return {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in self.data.items()}


__all__ = ["MemorySource", "MemorySourceConfig"]

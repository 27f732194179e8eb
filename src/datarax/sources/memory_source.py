"""``MemorySource``: records held in memory as a dict of equally long arrays.

The arrays are moved to the default device once, at construction, and held
as ``nnx.data`` (pytree data, not checkpoint state). ``get_batch_at`` and
``get_records`` are pure gathers, so the pipeline runs them inside its one
jitted step with a traced start or index vector.

**64-bit columns.** JAX stores what it is configured for: unless
``jax.config.update("jax_enable_x64", True)`` is set, int64 / uint64 columns
become int32 / uint32 and float64 / complex128 columns become float32 /
complex64 on the device. Narrowing integers silently would corrupt them
(an id of ``2**40 + 5`` would come back as ``5``), so an integer column with
a value outside the 32-bit range is refused with an error naming the column
and the fix; integer columns whose values all fit are stored as 32 bits.
Floating-point narrowing rounds to the nearest float32, which is what every
JAX computation does without x64, so it is allowed; only a finite value too
large for float32 (it would become ``inf``) is refused. ``element_spec``
always reports the stored dtype. With x64 enabled nothing is narrowed.

Example:
    >>> import numpy as np
    >>> from datarax.sources import MemorySource, MemorySourceConfig
    >>> source = MemorySource(MemorySourceConfig(),
    ...                       data={"x": np.arange(10.0), "y": np.arange(10) % 2})
    >>> len(source), source[3]["x"].item()
    (10, 3.0)
    >>> source.get_batch_at(8, 4)["x"].tolist()  # wraps around the end
    [8.0, 9.0, 0.0, 1.0]
    >>> MemorySource(MemorySourceConfig(), data={"id": np.array([2**40 + 5, 3])})  # x64 off
    Traceback (most recent call last):
    ...
    ValueError: MemorySource: column 'id' (int64) holds 1099511627781, which does not fit the int32 ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.core.config import StructuralConfig
from datarax.core.data_source import DataSourceModule
from datarax.core.validation import is_int, positive_int


@dataclasses.dataclass(frozen=True)
class MemorySourceConfig(StructuralConfig):
    """Configuration of ``MemorySource`` (no options beyond ``StructuralConfig`` yet)."""


def _check_fits_stored_dtype(key: str, value: np.ndarray) -> None:
    """Refuses values that the dtype JAX stores (32 bits without x64) would wrap or overflow."""
    stored = jax.dtypes.canonicalize_dtype(value.dtype)
    if stored == value.dtype or value.size == 0:
        return
    if np.issubdtype(value.dtype, np.integer):
        limits = np.iinfo(stored)
        low, high = value.min(), value.max()
        bad = low if low < limits.min else high if high > limits.max else None
        what = f"range [{limits.min}, {limits.max}]"
    elif np.issubdtype(value.dtype, np.inexact):
        # Rounding to float32 is the documented narrowing; a finite value turning into inf is not.
        parts = (value.real, value.imag) if np.iscomplexobj(value) else (value,)
        largest = np.finfo(stored).max
        overflow = [p[np.isfinite(p) & (np.abs(p) > largest)] for p in parts]
        bad = next((o[0] for o in overflow if o.size), None)
        what = f"largest finite value {largest}"
    else:
        return
    if bad is not None:
        raise ValueError(
            f"MemorySource: column {key!r} ({value.dtype}) holds {bad.item()!r}, which does not fit the "
            f"{stored} JAX stores while 64-bit mode is off ({what}); enable it with "
            f'jax.config.update("jax_enable_x64", True) before building the source, or cast the column '
            f"to a type that fits"
        )


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
        if isinstance(value, np.ndarray):
            _check_fits_stored_dtype(key, value)
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

    Columns are stored in the dtype JAX uses for them: without
    ``jax_enable_x64``, 64-bit columns are stored in 32 bits (see the module
    docstring); integers that would not fit are refused.

    Raises:
        TypeError: If ``data`` is not a dict of numeric arrays.
        ValueError: If ``data`` is empty, ragged, has zero records, a scalar
            column, uses the reserved name ``valid_mask``, or (x64 off) has an
            integer outside the 32-bit range or a finite float beyond float32.
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
        if not is_int(index):
            raise TypeError(f"MemorySource index must be an int, got {type(index).__name__}")
        if not -self.num_records <= index < self.num_records:
            raise IndexError(f"MemorySource index {index} out of range for {self.num_records} records")
        return {k: v[index] for k, v in self.data.items()}

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        for i in range(self.num_records):
            yield self[i]

    def get_records(self, indices: Any) -> dict[str, jax.Array]:
        """Gathers the records at ``indices`` (traceable; indices wrap modulo ``len``)."""
        # Python's modulo in its cheapest form (a truncated remainder and one
        # fix-up): XLA fuses it into the gather and repeats it for every element
        # gathered, where jnp's `%` costs several more operations. The result
        # is in bounds, so the gather needs no bounds check (jnp.take's default
        # "fill" mode adds a select to every element).
        indices = jnp.asarray(indices)
        rem = jax.lax.rem(indices, jnp.asarray(self.num_records, dtype=indices.dtype))
        indices = jnp.where(rem < 0, rem + self.num_records, rem)
        return {k: v.at[indices].get(mode="promise_in_bounds") for k, v in self.data.items()}

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
        size = positive_int("MemorySource.get_batch_at", "size", size)
        return self.get_records(jnp.asarray(start) + jnp.arange(size))

    def element_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """One record's spec: each column's shape without the record axis."""
        return {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in self.data.items()}


__all__ = ["MemorySource", "MemorySourceConfig"]

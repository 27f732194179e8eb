"""``HostSourceModule``: records read on the host, from files, in batches of indices.

A device source (``MemorySource``) is gathered inside the pipeline's jitted
step. A *host source* cannot be: its records live in files (a ``.npy``
memmap, Parquet, ArrayRecord, ...) that may be larger than memory, and may
be encoded (JPEG bytes, token lists of varying length). The pipeline's host
stage (``datarax.pipeline.host_stage``) computes each batch's record indices
on the host with the same Feistel permutation, calls ``read_records`` once
per batch, runs the host operators, collates the result into one
fixed-shape numpy batch and hands it to the jitted device step.

A host source answers the questions every source answers (``__len__``,
``element_spec``) plus one:

* ``read_records(indices)``: the records at an int64 index vector, as a dict
  of columns. A column whose records share one shape is a numpy array with a
  leading axis of ``len(indices)``; a column of ``bytes`` (``BytesSpec``) or
  of arrays whose shape varies (``RaggedSpec``) is a list with one value per
  index. It must not change the source, and it is called from several threads
  at once (worker threads), so it keeps no per-call state on ``self``.

Worker *processes* (``spawn``) rebuild the source from its class and its
constructor arguments (``worker_recipe``), so a host source reopens its
files in each worker instead of pickling their contents. Everything a host
source is built from (paths, column names, a decode function) must therefore
be picklable; ``Pipeline(worker_kind="process")`` checks it at construction.

Example:
    >>> import jax, numpy as np
    >>> from datarax.core.config import StructuralConfig
    >>> class Squares(HostSourceModule):
    ...     def __init__(self, config, *, n):
    ...         super().__init__(config)
    ...         self.n = n
    ...     def __len__(self):
    ...         return self.n
    ...     def element_spec(self):
    ...         return {"x": jax.ShapeDtypeStruct((), np.int64)}
    ...     def read_records(self, indices):
    ...         return {"x": np.asarray(indices) ** 2}
    >>> from datarax.core.constructor_args import from_recipe
    >>> squares = Squares(StructuralConfig(), n=10)
    >>> squares.get_records([3, 9])["x"].tolist()
    [9, 81]
    >>> rebuilt = from_recipe(squares.worker_recipe())  # what a spawned worker does
    >>> rebuilt.read_records(np.array([4]))["x"].tolist()
    [16]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from datarax.core.batch_form import VALID_MASK
from datarax.core.config import StructuralConfig
from datarax.core.constructor_args import recipe
from datarax.core.data_source import DataSourceModule
from datarax.core.spec import BytesSpec, RaggedSpec, spec_to_str
from datarax.core.validation import boolean, optional_column_names


class HostSourceModule(DataSourceModule):
    """Base class of sources read on the host (see the module docstring).

    Subclasses define ``__len__``, ``element_spec`` and ``read_records``, and
    may define ``close`` to release file handles.
    """

    def read_records(self, indices: np.ndarray) -> dict[str, Any]:
        """Reads the records at ``indices``.

        Args:
            indices: 1-D int64 numpy array of record indices in ``[0, len(self))``.

        Returns:
            Column name to a numpy array with leading axis ``len(indices)``, or
            (for ``BytesSpec`` / ``RaggedSpec`` columns) a list of per-record values.

        Raises:
            NotImplementedError: On the base class (subclasses implement it).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement read_records(indices)")

    def get_records(self, indices: Any) -> dict[str, Any]:
        """Reads the records at ``indices`` on the host (``read_records`` with its input checked).

        Raises:
            TypeError: If ``indices`` is traced (a host source cannot be read
                inside ``jax.jit``: give it to a ``Pipeline``, whose host stage
                reads it) or is not a 1-D integer vector.
            IndexError: If an index is outside ``[0, len(self))``.
        """
        owner = type(self).__name__
        if isinstance(indices, jax.core.Tracer):
            raise TypeError(
                f"{owner} is a host source: it reads files on the host and cannot be gathered inside "
                "jax.jit; a Pipeline reads it in its host stage"
            )
        return self.read_records(check_indices(owner, indices, len(self)))

    def get_batch_at(self, start: Any, size: int, key: Any | None = None) -> dict[str, Any]:
        """The ``size`` records from ``start`` (wrapping around the end), read on the host."""
        return self.get_records((int(start) + np.arange(size)) % len(self))

    def worker_recipe(self) -> tuple[type, Any, dict[str, Any], str | None]:
        """What a worker process needs to rebuild this source: ``(class, config, arguments, name)``."""
        return recipe(self)

    def close(self) -> None:
        """Releases open files (a no-op unless a subclass holds some)."""


def check_indices(owner: str, indices: Any, num_records: int) -> np.ndarray:
    """``indices`` as a 1-D int64 numpy array within ``[0, num_records)``.

    Raises:
        TypeError: If it is not a 1-D integer vector.
        IndexError: If an index is out of range (the message quotes it).
    """
    array = np.asarray(indices)
    if array.size == 0:
        array = array.astype(np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"{owner}.read_records: indices must be a 1-D integer array, got {array.dtype}{list(array.shape)}"
        )
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= num_records):
        bad = array[(array < 0) | (array >= num_records)][0]
        raise IndexError(f"{owner}: record index {int(bad)} is outside [0, {num_records})")
    return array


def check_columns(owner: str, columns: Any, spec: Mapping[str, Any], count: int) -> None:
    """Checks what ``read_records`` returned for ``count`` indices against ``spec``.

    Raises:
        ValueError: Naming the column and what differs.
    """
    if not isinstance(columns, Mapping) or set(columns) != set(spec):
        got = sorted(columns) if isinstance(columns, Mapping) else type(columns).__name__
        raise ValueError(f"{owner}.read_records returned columns {got}; element_spec() has {sorted(spec)}")
    for name, leaf in spec.items():
        value = columns[name]
        if isinstance(leaf, BytesSpec | RaggedSpec):
            if len(value) != count:
                raise ValueError(f"{owner}.read_records: column {name!r} has {len(value)} values for {count} indices")
            continue
        shape = (count, *leaf.shape)
        if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != np.dtype(leaf.dtype):
            got = f"{value.dtype}{list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
            raise ValueError(
                f"{owner}.read_records: column {name!r} is {got}; element_spec() "
                f"{spec_to_str(leaf)} batched to {count} is {np.dtype(leaf.dtype)}{list(shape)}"
            )


def check_element_spec(owner: str, spec: Any) -> dict[str, Any]:
    """A user-given host element spec, checked: a non-empty dict of column name to a spec leaf.

    Raises:
        TypeError: If it is not a non-empty dict of ``str`` to ``jax.ShapeDtypeStruct``,
            ``BytesSpec`` or ``RaggedSpec``.
        ValueError: If it names the reserved ``valid_mask`` column.

    Example:
        >>> check_element_spec("MySource", {"jpeg": BytesSpec()})
        {'jpeg': BytesSpec()}
        >>> check_element_spec("MySource", {"valid_mask": BytesSpec()})
        Traceback (most recent call last):
        ...
        ValueError: MySource: column name 'valid_mask' is reserved for batches
    """
    if not isinstance(spec, Mapping) or not spec:
        raise TypeError(f"{owner}: element_spec must be a non-empty dict of column specs, got {spec!r}")
    for name, leaf in spec.items():
        if not isinstance(name, str):
            raise TypeError(f"{owner}: element_spec column names must be str, got {name!r}")
        if not isinstance(leaf, jax.ShapeDtypeStruct | BytesSpec | RaggedSpec):
            raise TypeError(
                f"{owner}: element_spec column {name!r} is {leaf!r}; expected a jax.ShapeDtypeStruct, "
                "a BytesSpec or a RaggedSpec"
            )
    if VALID_MASK in spec:
        raise ValueError(f"{owner}: column name {VALID_MASK!r} is reserved for batches")
    return dict(spec)


def empty_columns(spec: Mapping[str, Any], count: int) -> dict[str, Any]:
    """Columns to fill with ``count`` records of ``spec``: a list per host column, an empty array per fixed one.

    Example:
        >>> columns = empty_columns({"jpeg": BytesSpec(), "label": jax.ShapeDtypeStruct((), np.int32)}, 2)
        >>> columns["jpeg"], columns["label"].shape
        ([None, None], (2,))
    """
    return {
        name: [None] * count
        if isinstance(leaf, BytesSpec | RaggedSpec)
        else np.empty((count, *leaf.shape), dtype=leaf.dtype)
        for name, leaf in spec.items()
    }


@dataclasses.dataclass(frozen=True)
class ColumnSelectionConfig(StructuralConfig):
    """The config of a host source over a dataset library: the columns it reads, and no downloads.

    Attributes:
        columns: The columns to read, in order (a list is stored as a tuple),
            or None for every column.
        local_files_only: If True, a missing dataset raises the
            ``LocalFilesOnlyMixin`` error naming what to populate.

    Raises:
        ValueError: If ``columns`` is not None or a non-empty sequence of
            distinct non-empty names, or ``local_files_only`` is not a bool.

    Example:
        >>> ColumnSelectionConfig(columns=["image", "label"]).columns
        ('image', 'label')
    """

    columns: tuple[str, ...] | None = None
    local_files_only: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "columns", optional_column_names(name, "columns", self.columns))
        object.__setattr__(self, "local_files_only", boolean(name, "local_files_only", self.local_files_only))


__all__ = [
    "ColumnSelectionConfig",
    "HostSourceModule",
    "check_columns",
    "check_element_spec",
    "check_indices",
    "empty_columns",
]

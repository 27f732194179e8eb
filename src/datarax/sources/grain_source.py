"""``GrainSource``: any Grain random-access source (or ``grain.MapDataset``) as a datarax host source.

Grain (``pip install 'datarax[grain]'``) describes a random-access source as
an object with ``__len__`` and ``__getitem__`` (``grain.sources.RangeDataSource``,
``ArrayRecordDataSource``, a class of yours); a ``grain.MapDataset`` built on
one (``grain.MapDataset.source(src).map(decode)``) is one too. ``GrainSource``
reads such an object by index, so the pipeline's shuffle, batching, workers
and resumption apply to it unchanged; Grain's own samplers, shuffles and
loaders are not used.

**Reads.** ``read_records`` makes one batched read per call where the object
has one: ``__getitems__(indices)`` (ArrayRecord's data source and
PyTorch-style sources), else ``_getitems(indices)`` (Grain's batched read,
which every ``MapDataset`` has), else one ``__getitem__`` per index. A
``MapDataset`` whose record is missing (``None``, e.g. filtered out) cannot
be read by index and is reported with its index. Grain requires random-access
sources to be thread-safe, so every worker thread reads the same object.

**Records and spec.** A record that is a dict (any ``Mapping``) gives one
column per key; any other record (the ints of ``RangeDataSource``, an array)
is wrapped as one column named ``config.value_column`` (``"value"``), so
every Grain source can be read without a ``map`` first. Without an explicit
``element_spec``, record 0 is described: ``bytes`` become ``BytesSpec()``,
arrays and numbers ``jax.ShapeDtypeStruct`` with numpy's dtype (a Python
``int`` is ``int64``, a ``float`` ``float64``). Arrays whose shape varies need
an explicit ``RaggedSpec``. Every record read is checked against the spec; a
value is converted to the spec's dtype when numpy casts it within its kind
(``int64`` to ``int32``, ``float64`` to ``float32``), and any other misfit names
the index and the column.

**Worker processes** rebuild the source from its constructor arguments, so
the Grain object must pickle: Grain's sources do (an ``ArrayRecordDataSource``
reopens its files), and a ``MapDataset`` does when its functions are
module-level (not lambdas). ``Pipeline(worker_kind="process")`` checks this at
construction and names the argument that does not pickle.

Example:
    >>> import grain
    >>> source = GrainSource(GrainSourceConfig(), data_source=grain.sources.RangeDataSource(0, 10, 2))
    >>> len(source), source.element_spec()
    (5, {'value': ShapeDtypeStruct(shape=(), dtype=int64)})
    >>> source.get_records([4, 0, 1])["value"].tolist()
    [8, 0, 2]
    >>> squares = grain.MapDataset.range(4).map(lambda i: {"i": i, "square": float(i * i)})
    >>> GrainSource(GrainSourceConfig(), data_source=squares).get_records([3, 2])["square"].tolist()
    [9.0, 4.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.core.config import StructuralConfig
from datarax.core.extras import import_extra
from datarax.core.host_source import HostSourceModule, check_element_spec, check_indices, empty_columns
from datarax.core.spec import BytesSpec, RaggedSpec, spec_to_str
from datarax.samplers.feistel import MAX_N

_OWNER = "GrainSource"
_BYTES_LIKE = (bytes, bytearray, memoryview, np.bytes_)
_NUMERIC_KINDS = frozenset("biufc")


@dataclasses.dataclass(frozen=True)
class GrainSourceConfig(StructuralConfig):
    """Configuration of ``GrainSource``.

    Attributes:
        value_column: The column name of records that are not dicts (each
            such record ``r`` is read as ``{value_column: r}``).

    Raises:
        ValueError: If ``value_column`` is not a non-empty str or is ``"valid_mask"``.

    Example:
        >>> GrainSourceConfig(value_column="token").value_column
        'token'
    """

    value_column: str = "value"

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if not isinstance(self.value_column, str) or not self.value_column or self.value_column == VALID_MASK:
            raise ValueError(
                f"{name}: value_column must be a non-empty str other than {VALID_MASK!r}, got {self.value_column!r}"
            )


def _describe(name: str, value: Any, index: int) -> Any:
    """The spec of one value of record ``index`` (an inferred ``element_spec``)."""
    if isinstance(value, _BYTES_LIKE):
        return BytesSpec()
    array = None if isinstance(value, str) or value is None else np.asarray(value)
    if array is None or array.dtype.kind not in _NUMERIC_KINDS:
        got = type(value).__name__ if array is None else f"{type(value).__name__} of dtype {array.dtype}"
        raise ValueError(
            f"{_OWNER}: column {name!r} of record {index} is {got}; a column must hold bytes, numbers or "
            "arrays of a numeric or bool dtype (encode str to bytes)"
        )
    return jax.ShapeDtypeStruct(array.shape, array.dtype)


class GrainSource(HostSourceModule):
    """A host source reading a Grain random-access source by index (see the module docstring).

    Args:
        config: ``GrainSourceConfig``.
        data_source: Any object with ``__len__`` and ``__getitem__``: a Grain
            data source (``grain.sources.*``, a ``RandomAccessDataSource`` of
            yours) or a ``grain.MapDataset``. Must pickle for process workers.
        element_spec: One record's spec, column name to
            ``jax.ShapeDtypeStruct`` / ``BytesSpec`` / ``RaggedSpec``; None
            infers it from record 0. Record 0 is checked against it.
        rngs: Optional random number generators.
        name: Optional module name.

    Raises:
        ImportError: If ``grain`` is not installed.
        TypeError: If ``config`` is not a ``GrainSourceConfig``, ``data_source``
            has no ``__len__`` or ``__getitem__``, or ``element_spec`` has the wrong type.
        ValueError: If ``data_source`` has no records or more than ``2**31``
            (a repeated ``MapDataset``), or record 0 cannot be read, holds a
            value no column can hold, or does not fit ``element_spec``.
    """

    def __init__(
        self,
        config: GrainSourceConfig,
        *,
        data_source: Any,
        element_spec: Mapping[str, Any] | None = None,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        if not isinstance(config, GrainSourceConfig):
            raise TypeError(f"{_OWNER}: config must be a GrainSourceConfig, got {type(config).__name__}")
        super().__init__(config, rngs=rngs, name=name)
        import_extra("grain", extra="grain", owner=_OWNER)
        if not (hasattr(data_source, "__len__") and hasattr(data_source, "__getitem__")):
            raise TypeError(
                f"{_OWNER}: data_source must be a Grain random-access source (with __len__ and __getitem__) or a "
                f"grain.MapDataset, got {type(data_source).__name__}"
            )
        size = len(data_source)
        if not 1 <= size <= MAX_N:
            raise ValueError(
                f"{_OWNER}: data_source has {size} records; expected between 1 and 2**31 (a repeated "
                "MapDataset has no end: give the dataset before .repeat())"
            )
        self.num_records = int(size)
        self.value_column = config.value_column
        # A plain tuple holding the object keeps NNX from walking it as part of the module's graph.
        self._data = (data_source,)
        if element_spec is None:
            first = self._as_dict(self._fetch([0])[0], 0)
            self._spec = check_element_spec(_OWNER, {key: _describe(key, value, 0) for key, value in first.items()})
        else:
            self._spec = check_element_spec(_OWNER, element_spec)
        self.read_records(np.zeros(1, np.int64))  # record 0 fits the spec

    @property
    def data_source(self) -> Any:
        """The Grain object this source reads."""
        return self._data[0]

    def __len__(self) -> int:
        return self.num_records

    def element_spec(self) -> dict[str, Any]:
        """One record's spec: ``ShapeDtypeStruct`` per fixed-shape column, ``BytesSpec`` / ``RaggedSpec`` otherwise."""
        return dict(self._spec)

    def _fetch(self, indices: list[int]) -> list[Any]:
        """The Grain records at ``indices``: one batched read where the object has one."""
        data = self._data[0]
        try:
            if hasattr(data, "__getitems__"):
                records = list(data.__getitems__(indices))
            elif hasattr(data, "_getitems"):
                records = list(data._getitems(indices))  # noqa: SLF001 - Grain's batched read
            else:
                records = [data[index] for index in indices]
        except Exception as error:  # noqa: BLE001 - any read failure is reported with its records
            shown = indices if len(indices) <= 8 else [*indices[:8], "..."]
            raise ValueError(
                f"{_OWNER}: reading records {shown} of {type(data).__name__} failed: {type(error).__name__}: {error}"
            ) from error
        if len(records) != len(indices):
            raise ValueError(
                f"{_OWNER}: {type(data).__name__} returned {len(records)} records for {len(indices)} indices"
            )
        return records

    def _as_dict(self, record: Any, index: int) -> Mapping[str, Any]:
        if isinstance(record, Mapping):
            return record
        if record is None:
            raise ValueError(
                f"{_OWNER}: record {index} of {type(self._data[0]).__name__} is None (missing, e.g. filtered "
                "out); a source read by index needs a record at every index"
            )
        return {self.value_column: record}

    def read_records(self, indices: np.ndarray) -> dict[str, Any]:
        """Reads and checks the records at ``indices`` (see ``HostSourceModule.read_records``).

        Args:
            indices: 1-D integer array of record indices in ``[0, len(self))``.

        Returns:
            Column name to a numpy array with leading axis ``len(indices)``
            (fixed-shape columns) or a list with one value per index
            (``BytesSpec`` and ``RaggedSpec`` columns).

        Raises:
            TypeError: If ``indices`` is not a 1-D integer array.
            IndexError: If an index is out of range.
            ValueError: If a record cannot be read, is missing, or does not fit
                ``element_spec``; the message names the index and the column.
        """
        positions = check_indices(_OWNER, indices, self.num_records).tolist()
        records = self._fetch(positions)
        columns = empty_columns(self._spec, len(records))
        for row, (index, record) in enumerate(zip(positions, records, strict=True)):
            record = self._as_dict(record, index)
            if record.keys() != self._spec.keys():
                raise ValueError(
                    f"{_OWNER}: record {index} has columns {sorted(record)}; element_spec() has {sorted(self._spec)}"
                )
            for name, leaf in self._spec.items():
                columns[name][row] = self._checked(name, leaf, record[name], index)
        return columns

    def _checked(self, name: str, leaf: Any, value: Any, index: int) -> Any:
        """``value`` (converted within its kind) if it fits ``leaf``, else a ValueError naming the record and column."""
        if isinstance(leaf, BytesSpec):
            if isinstance(value, bytes):
                return value
            if isinstance(value, _BYTES_LIKE):
                return bytes(value)
            got = type(value).__name__
        elif isinstance(value, (*_BYTES_LIKE, str)) or value is None:
            got = type(value).__name__
        else:
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
            castable = array.dtype.kind in _NUMERIC_KINDS and np.can_cast(array.dtype, leaf.dtype, "same_kind")
            if isinstance(leaf, RaggedSpec):
                if castable and array.ndim == leaf.ndim:
                    return array if array.dtype == leaf.dtype else array.astype(leaf.dtype)
            elif castable and array.shape == tuple(leaf.shape):
                return array
            got = f"{array.dtype.name}[{','.join(map(str, array.shape))}]"
        raise ValueError(
            f"{_OWNER}: column {name!r} of record {index} is {got}; element_spec() says {spec_to_str(leaf)}"
        )


__all__ = ["GrainSource", "GrainSourceConfig"]

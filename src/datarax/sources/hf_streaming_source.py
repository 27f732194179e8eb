"""``HFStreamingSource``: a Hugging Face ``IterableDataset``, read in order as a stream source.

``pip install 'datarax[hf]'``. For data that ``datasets`` streams rather than
maps: an ``IterableDataset`` you built (``Dataset.to_iterable_dataset``,
``IterableDataset.from_generator``, ...), or local files streamed by a
packaged builder (``builder="parquet" | "json" | "csv" | "imagefolder"`` with
``data_files``; every file checked to exist and remote addresses refused, so
nothing is downloaded, exactly as ``HFSource``).

A pipeline reads it through a seeded shuffle buffer whose record positions
are part of the iterator state (``datarax.pipeline.stream_feed``); restoring
re-reads the buffered records with ``IterableDataset.skip``, so unlike
``datasets``' own resumable streaming (``state_dict``), which resumes the
files but starts its shuffle buffer empty, the restored stream is exactly the
one that would have followed. Do not call ``.shuffle`` on the dataset: its
shuffle draws from the epoch set by ``set_epoch``, which the pipeline does not
drive; the pipeline's buffer shuffles instead.

Columns and their specs are ``HFSource``'s (``Image`` and ``Audio`` as
encoded bytes for the host stage to decode; ``ClassLabel`` names in
``class_names``). Records are read as Arrow batches of ``read_batch_size``
rows and converted column by column, not row by row.

**Shares.** With ``process_count > 1`` the dataset is split with
``datasets.distributed.split_dataset_by_node``: by files (shards) when their
number divides by the process count, else every process reads every file
and keeps one record in ``process_count``.

Example:
    >>> import datasets
    >>> rows = datasets.Dataset.from_dict({"x": [1, 2, 3], "label": [0, 1, 0]})
    >>> source = HFStreamingSource(HFStreamingSourceConfig(columns=("x",)), dataset=rows.to_iterable_dataset())
    >>> source.element_spec()
    {'x': ShapeDtypeStruct(shape=(), dtype=int64)}
    >>> [int(r["x"]) for r in source.iter_records(1)]
    [2, 3]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from flax import nnx

from datarax.core.data_source import LocalFilesOnlyMixin
from datarax.core.extras import import_extra
from datarax.core.host_source import ColumnSelectionConfig
from datarax.core.stream_source import StreamSourceConfig, StreamSourceModule
from datarax.core.validation import positive_int
from datarax.sources.hf_source import _read_column, _selected_columns, load_local_builder

_OWNER = "HFStreamingSource"


@dataclasses.dataclass(frozen=True)
class HFStreamingSourceConfig(ColumnSelectionConfig, StreamSourceConfig):
    """Configuration of ``HFStreamingSource``.

    Attributes:
        columns: The columns to read (None: every column).
        local_files_only: A missing data file raises ``LocalFilesOnlyMixin``'s error.
        process_index: This process's share (None: ``jax.process_index()``).
        process_count: The number of shares (None: ``jax.process_count()``).
        read_batch_size: Rows per Arrow batch read from the dataset.
    """

    read_batch_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int(type(self).__name__, "read_batch_size", self.read_batch_size)


class HFStreamingSource(LocalFilesOnlyMixin, StreamSourceModule):
    """A stream source over a Hugging Face ``IterableDataset`` (see the module docstring).

    Exactly one of ``dataset`` and ``builder`` (with ``data_files``) is given.

    Args:
        config: ``HFStreamingSourceConfig``.
        dataset: A ``datasets.IterableDataset``.
        builder: A packaged builder (``"parquet"``, ``"json"``, ``"csv"``, ``"imagefolder"``).
        data_files: The builder's local files (a path or glob, a list, or a dict of split to those).
        split: The split streamed with ``builder``.
        rngs: Optional random number generators.
        name: Optional module name.

    Raises:
        ImportError: If ``datasets`` is not installed.
        TypeError: If ``dataset`` is not an ``IterableDataset`` (a ``Dataset``
            has random access: use ``HFSource``), or a column's feature cannot be read.
        ValueError: If not exactly one of them is given, ``builder`` is
            unknown, a data file is remote, a column is missing or reserved,
            or the dataset yields no rows.
        FileNotFoundError: If a data file does not exist.
    """

    def __init__(
        self,
        config: HFStreamingSourceConfig,
        *,
        dataset: Any = None,
        builder: str | None = None,
        data_files: Any = None,
        split: str = "train",
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        if not isinstance(config, HFStreamingSourceConfig):
            raise TypeError(f"{_OWNER}: config must be an HFStreamingSourceConfig, got {type(config).__name__}")
        super().__init__(config, rngs=rngs, name=name)
        datasets = import_extra("datasets", extra="hf", owner=_OWNER)
        pa = import_extra("pyarrow", extra="hf", owner=_OWNER)
        self.local_files_only = config.local_files_only
        self.read_batch_size = config.read_batch_size
        if (dataset is None) == (builder is None):
            raise ValueError(
                f"{_OWNER}: give exactly one of dataset= (a datasets.IterableDataset) or builder= with data_files=; "
                f"got {'both' if dataset is not None else 'neither'}"
            )
        if data_files is not None and builder is None:
            raise ValueError(f"{_OWNER}: data_files is only read with builder=; got data_files with dataset=")
        if not isinstance(split, str) or not split:
            raise ValueError(f"{_OWNER}: split must be a non-empty str, got {split!r}")
        if dataset is not None:
            if not isinstance(dataset, datasets.IterableDataset):
                hint = " (it has random access: use HFSource)" if isinstance(dataset, datasets.Dataset) else ""
                raise TypeError(
                    f"{_OWNER}: dataset must be a datasets.IterableDataset, got {type(dataset).__name__}{hint}"
                )
        else:
            dataset = load_local_builder(self, datasets, builder, data_files, split, owner=_OWNER, streaming=True)
        features = dataset.features
        if features is None:  # e.g. from_generator without features: the first batch's Arrow schema says
            first = next(iter(dataset.with_format("arrow").iter(batch_size=1)), None)
            if first is None:
                raise ValueError(f"{_OWNER}: the dataset yields no rows")
            features = datasets.Features.from_arrow_schema(first.schema)
        self._columns, self.class_names = _selected_columns(datasets, pa, features, config.columns, _OWNER)
        index, count = self.share
        if count > 1:
            split_by_node = import_extra("datasets.distributed", extra="hf", owner=_OWNER).split_dataset_by_node
            dataset = split_by_node(dataset, rank=index, world_size=count)
        self._dataset = dataset.select_columns(list(self.columns))

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns read, in order."""
        return tuple(column.name for column in self._columns)

    def element_spec(self) -> dict[str, Any]:
        """One record's spec (``HFSource``'s rules)."""
        return {column.name: column.spec for column in self._columns}

    def iter_records(self, start: int) -> Iterator[Mapping[str, Any]]:
        """The share's rows from position ``start`` (``IterableDataset.skip``), converted an Arrow batch at a time."""
        pa = import_extra("pyarrow", extra="hf", owner=_OWNER)
        dataset = self._dataset.skip(start) if start else self._dataset
        position = start
        for table in dataset.with_format("arrow").iter(batch_size=self.read_batch_size):
            count = table.num_rows
            where = np.arange(position, position + count)
            columns = {
                column.name: _read_column(pa, column, table.column(column.name).combine_chunks(), where)
                for column in self._columns
            }
            for row in range(count):
                yield {name: values[row] for name, values in columns.items()}
            position += count


__all__ = ["HFStreamingSource", "HFStreamingSourceConfig"]

"""``ArrayRecordSource``: records read by global index from one or many ArrayRecord files.

ArrayRecord (``pip install 'datarax[arrayrecord]'``) stores ``bytes``
records with an index, so any record can be read without reading the ones
before it. This host source treats a list of files as one sequence: record
``i`` is found by the cumulative record counts of the files, and
``read_records`` groups a batch's indices by file and reads each group with
one batched ``reader.read(positions)`` call (ArrayRecord then reads the
records in C++, without the GIL).

**Records.** By default each record is in datarax's record format
(``datarax.sources.record_format``: a dict of numeric arrays and ``bytes``,
decoded without pickle and without copying the arrays). Records in any other
encoding need a ``decode(bytes) -> dict`` function; to run in worker
processes it must be picklable (a module-level function, not a lambda).

**Spec.** Without an explicit ``element_spec``, record 0 is decoded and
described: an array becomes ``jax.ShapeDtypeStruct(shape, dtype)``, a
``bytes`` value becomes ``BytesSpec()``. Arrays whose shape varies between
records need an explicit ``RaggedSpec(dtype, ndim)``. ``read_records``
checks every record against the spec and names the file, the global index
and the column of any record that does not fit.

**Readers and threads.** Each file's reader is opened once and shared by
every thread that reads the source: the batched read is a ``const`` C++
method that reads through its own positioned reads (as Grain's
``ArrayRecordDataSource`` also relies on), so sharing one reader is safe and
avoids a file handle and an in-memory index per thread. A reader closed by
``close`` is reopened by the next read. Readers are opened with
``readahead_buffer_size:0`` (no read-ahead: the reads are random) by
default; see ``ArrayRecordSourceConfig.reader_options``.

**Missing files.** There is nothing to download: a missing file is always a
``FileNotFoundError``. With ``local_files_only=True`` it is the one that
``LocalFilesOnlyMixin`` raises for every source (naming the paths).

Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from datarax.sources.record_format import write_array_record
    >>> folder = tempfile.mkdtemp()
    >>> for shard in range(2):
    ...     _ = write_array_record(os.path.join(folder, f"train-{shard}.array_record"),
    ...         ({"x": np.full(2, 10 * shard + i, np.float32), "tag": b"r%d" % i} for i in range(3)))
    >>> source = ArrayRecordSource(ArrayRecordSourceConfig(),
    ...                            paths=os.path.join(folder, "train-*.array_record"))
    >>> len(source), source.element_spec()
    (6, {'x': ShapeDtypeStruct(shape=(2,), dtype=float32), 'tag': BytesSpec()})
    >>> batch = source.get_records([4, 0])  # record 4 is record 1 of the second file
    >>> batch["x"].tolist(), batch["tag"]
    ([[11.0, 11.0], [0.0, 0.0]], [b'r1', b'r0'])
    >>> ArrayRecordSource(ArrayRecordSourceConfig(), paths=os.path.join(folder, "missing.array_record"))
    Traceback (most recent call last):
    ...
    FileNotFoundError: ArrayRecordSource: no such file: .../missing.array_record
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from datarax.core.config import StructuralConfig
from datarax.core.data_source import LocalFilesOnlyMixin
from datarax.core.extras import import_extra
from datarax.core.host_source import HostSourceModule, check_element_spec, empty_columns
from datarax.core.spec import BytesSpec, RaggedSpec, spec_to_str
from datarax.core.validation import boolean, optional_callable
from datarax.sources.record_format import DTYPES, decode_batch, decode_record

_OWNER = "ArrayRecordSource"
_BYTES_LIKE = (bytes, bytearray, memoryview)


@dataclasses.dataclass(frozen=True)
class ArrayRecordSourceConfig(StructuralConfig):
    """Configuration of ``ArrayRecordSource``.

    Attributes:
        local_files_only: If True, a missing file raises the
            ``LocalFilesOnlyMixin`` error that lists every missing path. A
            missing file is an error either way (ArrayRecord files are never
            downloaded).
        reader_options: ArrayRecord reader options. The default
            ``readahead_buffer_size:0`` turns read-ahead off, which is what
            random access wants (read-ahead fills a 16 MB buffer per read);
            use ``""`` for ArrayRecord's defaults when reading in order.

    Raises:
        ValueError: If ``local_files_only`` is not a bool or ``reader_options`` not a str.
    """

    local_files_only: bool = False
    reader_options: str = "readahead_buffer_size:0"

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "local_files_only", boolean(name, "local_files_only", self.local_files_only))
        if not isinstance(self.reader_options, str):
            raise ValueError(f"{name}: reader_options must be a str, got {self.reader_options!r}")


def _has_glob_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _path_entries(paths: Any) -> list[str]:
    """``paths`` (one path or a list or tuple of them) as a list of str."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not isinstance(paths, list | tuple) or not paths:
        raise TypeError(f"{_OWNER}: paths must be a path, a glob pattern or a non-empty list of them, got {paths!r}")
    entries = []
    for path in paths:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"{_OWNER}: paths must hold str or os.PathLike paths, got {path!r}")
        entries.append(os.fspath(path))
    return entries


def _expand(entries: list[str]) -> tuple[list[str], list[str]]:
    """Expands glob patterns (sorted matches); returns ``(files, missing entries)``."""
    files: list[str] = []
    missing: list[str] = []
    for entry in entries:
        if os.path.exists(entry):
            matches = [entry]
        elif _has_glob_magic(entry):
            matches = sorted(glob.glob(entry))
        else:
            matches = []
        if not matches:
            missing.append(entry)
        for match in matches:
            if os.path.isdir(match):
                raise IsADirectoryError(
                    f"{_OWNER}: {match} is a directory; pass its files, e.g. {os.path.join(match, '*')!r}"
                )
        files += matches
    return files, missing


def _open_reader(module: Any, path: str, options: str) -> Any:
    """Opens one file's reader, or raises a ValueError naming the file."""
    try:
        reader = module.ArrayRecordReader(path, options)
    except ValueError as error:  # the options string
        raise ValueError(f"{_OWNER}: invalid reader_options {options!r}: {error}") from error
    except RuntimeError as error:
        raise ValueError(f"{_OWNER}: cannot open {path} as an ArrayRecord file: {error}") from error
    if not reader.ok():
        # A reader that failed to open holds its reason; closing it reports it.
        try:
            reader.close()
            reason = ""
        except RuntimeError as error:
            reason = str(error)
        raise ValueError(
            f"{_OWNER}: cannot open {path} as an ArrayRecord file (not an ArrayRecord file, or "
            f"truncated or corrupt){': ' + reason if reason else ''}"
        )
    return reader


class _Files:
    """The files of a source: their record ranges and open readers, shared by the threads that read it.

    A plain object rather than module attributes: NNX would treat the arrays,
    the readers and the lock as part of the module's graph.

    Record ``i`` of the source is record ``i - starts[f]`` of file
    ``f = searchsorted(ends, i, side="right")``.
    """

    def __init__(self, module: Any, paths: tuple[str, ...], options: str, readers: list[Any]):
        self.module = module
        self.paths = paths
        self.options = options
        self.lock = threading.Lock()
        self.readers: list[Any] = readers
        counts = np.asarray([reader.num_records() for reader in readers], dtype=np.int64)
        self.ends = np.cumsum(counts)
        self.starts = self.ends - counts

    def get(self, file: int) -> Any:
        reader = self.readers[file]
        if reader is None:
            with self.lock:
                reader = self.readers[file]
                if reader is None:
                    reader = _open_reader(self.module, self.paths[file], self.options)
                    self.readers[file] = reader
        return reader

    def close(self) -> None:
        with self.lock:
            readers, self.readers = self.readers, [None] * len(self.readers)
        _close_all(readers)


def _close_all(readers: list[Any]) -> None:
    for reader in readers:
        if reader is not None:
            # Closing a reader that failed mid-read reports that failure again: it is closed all the same.
            with contextlib.suppress(RuntimeError):
                reader.close()


def _describe(name: str, value: Any, where: str) -> Any:
    """The spec of one decoded value (record 0), for an inferred ``element_spec``."""
    if isinstance(value, _BYTES_LIKE):
        return BytesSpec()
    array = np.asarray(value)
    if array.dtype.name not in DTYPES:
        raise ValueError(
            f"{_OWNER}: column {name!r} of {where} is {type(value).__name__} of dtype {array.dtype}; "
            f"a column must hold bytes or arrays of a numeric or bool dtype ({sorted(DTYPES)})"
        )
    return jax.ShapeDtypeStruct(array.shape, array.dtype)


class ArrayRecordSource(LocalFilesOnlyMixin, HostSourceModule):
    """A host source over the records of one or many ArrayRecord files (see the module docstring).

    Args:
        config: ``ArrayRecordSourceConfig``.
        paths: A file, a glob pattern (``"data/train-*.array_record"``,
            expanded in sorted order) or a list of files and patterns. Record
            indices run through the files in this order.
        decode: ``decode(bytes) -> dict`` for records that are not in
            datarax's record format; None decodes them with ``decode_record``.
            Must be picklable (module-level) for process workers.
        element_spec: One record's spec, column name to
            ``jax.ShapeDtypeStruct`` / ``BytesSpec`` / ``RaggedSpec``; None
            infers it from record 0. Needed for arrays whose shape varies
            (``RaggedSpec``). Record 0 is checked against it.
        rngs: Optional random number generators.
        name: Optional module name.

    Raises:
        ImportError: If ``array-record`` is not installed.
        FileNotFoundError: If a file (or every match of a pattern) is missing.
        IsADirectoryError: If a path is a directory.
        TypeError: If ``paths``, ``decode`` or ``element_spec`` has the wrong type.
        ValueError: If a file cannot be opened as an ArrayRecord file (the
            message names it), the files hold no records, or record 0 cannot
            be decoded or does not fit ``element_spec``.
    """

    def __init__(
        self,
        config: ArrayRecordSourceConfig,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        decode: Callable[[bytes], Mapping[str, Any]] | None = None,
        element_spec: Mapping[str, Any] | None = None,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        if not isinstance(config, ArrayRecordSourceConfig):
            raise TypeError(f"{_OWNER}: config must be an ArrayRecordSourceConfig, got {type(config).__name__}")
        super().__init__(config, rngs=rngs, name=name)
        module = import_extra("array_record.python.array_record_module", extra="arrayrecord", owner=_OWNER)
        self.local_files_only = config.local_files_only
        self.decode = optional_callable(_OWNER, "decode", decode)
        entries = _path_entries(paths)
        files, missing = _expand(entries)
        dataset = name or os.path.basename(entries[0]) or entries[0]
        if not self._check_local_cache(files + missing, dataset_name=dataset):
            raise FileNotFoundError(f"{_OWNER}: no such file: {', '.join(missing)}")
        readers: list[Any] = []
        try:
            for path in files:
                readers.append(_open_reader(module, path, config.reader_options))
        except Exception:
            _close_all(readers)  # the files opened before the one that failed
            raise
        self.paths = tuple(files)
        self._files = _Files(module, self.paths, config.reader_options, readers)
        self.num_records = int(self._files.ends[-1])
        if self.num_records == 0:
            self._files.close()
            raise ValueError(f"{_OWNER}: the files hold no records: {list(self.paths)}")
        if element_spec is None:
            zero = np.zeros(1, np.int64)
            first = self._decoded(zero, self._raw(zero))[0]
            where = self._where(0)
            self._spec = {key: _describe(key, value, where) for key, value in first.items()}
            check_element_spec(_OWNER, self._spec)
        else:
            self._spec = check_element_spec(_OWNER, element_spec)
        self._all_fixed = not any(isinstance(leaf, BytesSpec | RaggedSpec) for leaf in self._spec.values())
        self.read_records(np.zeros(1, np.int64))  # record 0 fits the spec

    def __len__(self) -> int:
        return self.num_records

    def element_spec(self) -> dict[str, Any]:
        """One record's spec: ``ShapeDtypeStruct`` per fixed-shape column, ``BytesSpec`` / ``RaggedSpec`` otherwise."""
        return dict(self._spec)

    def _where(self, index: int) -> str:
        """Names record ``index``: its file and its position in that file."""
        file = int(np.searchsorted(self._files.ends, index, side="right"))
        return f"record {index} ({self.paths[file]}, record {index - int(self._files.starts[file])} of that file)"

    def _read_file(self, file: int, positions: list[int], indices: np.ndarray) -> list[bytes]:
        """Reads records ``positions`` of ``file``; a failure names the first record that cannot be read."""
        reader = self._files.get(file)
        try:
            return reader.read(positions)
        except RuntimeError as error:
            for position, index in zip(positions, indices.tolist()):
                try:
                    reader.read([position])
                except RuntimeError as record_error:
                    raise ValueError(f"{_OWNER}: cannot read {self._where(index)}: {record_error}") from record_error
            raise ValueError(f"{_OWNER}: cannot read records of {self.paths[file]}: {error}") from error

    def _raw(self, indices: np.ndarray) -> list[Any]:
        """The encoded records at ``indices`` (one batched read per file)."""
        raw: list[Any] = [None] * len(indices)
        if len(self.paths) == 1:
            raw = self._read_file(0, indices.tolist(), indices) if len(indices) else []
        else:
            starts = self._files.starts
            files = np.searchsorted(self._files.ends, indices, side="right")
            for file in np.unique(files).tolist():
                where = np.flatnonzero(files == file)
                chunk = indices[where]
                for slot, record in zip(where.tolist(), self._read_file(file, (chunk - starts[file]).tolist(), chunk)):
                    raw[slot] = record
        return raw

    def _decoded(self, indices: np.ndarray, raw: list[Any]) -> list[Mapping[str, Any]]:
        """Decodes the records ``raw`` read at ``indices``, one by one."""
        decode = self.decode or decode_record
        decoded = []
        for index, data in zip(indices.tolist(), raw):
            try:
                record = decode(data)
            except Exception as error:  # noqa: BLE001 - any decode failure is reported with its record
                raise ValueError(
                    f"{_OWNER}: {self._where(index)} failed to decode: {type(error).__name__}: {error}"
                ) from error
            if not isinstance(record, Mapping):
                raise ValueError(
                    f"{_OWNER}: decode returned {type(record).__name__} for {self._where(index)}; expected a dict"
                )
            decoded.append(record)
        return decoded

    def read_records(self, indices: np.ndarray) -> dict[str, Any]:
        """Reads, decodes and checks the records at ``indices`` (see ``HostSourceModule.read_records``).

        Args:
            indices: 1-D int64 array of global record indices in ``[0, len(self))``.

        Returns:
            Column name to a numpy array with leading axis ``len(indices)``
            (fixed-shape columns) or a list with one value per index
            (``BytesSpec`` and ``RaggedSpec`` columns).

        Raises:
            ValueError: If a record cannot be read or decoded, or does not fit
                ``element_spec``; the message names the file, the global index
                and (for a misfit) the column.
        """
        indices = np.asarray(indices, dtype=np.int64)
        raw = self._raw(indices)
        if self.decode is None and self._all_fixed:
            # Fixed-shape records of the built-in format share one layout: decoded as whole columns.
            try:
                batch = decode_batch(raw)
            except ValueError:
                batch = None  # decoded one by one below, which names the failing record
            if batch is not None and self._fits(batch, len(raw)):
                return batch
        records = self._decoded(indices, raw)
        columns = empty_columns(self._spec, len(records))
        for row, (index, record) in enumerate(zip(indices.tolist(), records)):
            if record.keys() != self._spec.keys():
                raise ValueError(
                    f"{_OWNER}: {self._where(index)} has columns {sorted(record)}; "
                    f"element_spec() has {sorted(self._spec)}"
                )
            for name, leaf in self._spec.items():
                columns[name][row] = self._checked(name, leaf, record[name], index)
        return columns

    def _fits(self, batch: Mapping[str, np.ndarray], count: int) -> bool:
        """Whether whole decoded columns are exactly what ``element_spec`` says."""
        return batch.keys() == self._spec.keys() and all(
            batch[name].shape == (count, *leaf.shape) and batch[name].dtype == leaf.dtype
            for name, leaf in self._spec.items()
        )

    def _checked(self, name: str, leaf: Any, value: Any, index: int) -> Any:
        """``value`` if it fits ``leaf``, else a ValueError naming the record and the column."""
        if isinstance(leaf, BytesSpec):
            if isinstance(value, bytes):
                return value
            if isinstance(value, bytearray | memoryview):
                return bytes(value)
            got = type(value).__name__
        else:
            if not isinstance(value, _BYTES_LIKE):
                array = value if isinstance(value, np.ndarray) else np.asarray(value)
                if isinstance(leaf, RaggedSpec):
                    if array.dtype == leaf.dtype and array.ndim == leaf.ndim:
                        return array
                elif array.dtype == leaf.dtype and array.shape == leaf.shape:
                    return array
                got = f"{array.dtype.name}[{','.join(map(str, array.shape))}]"
            else:
                got = type(value).__name__
        raise ValueError(
            f"{_OWNER}: column {name!r} of {self._where(index)} is {got}; element_spec() says {spec_to_str(leaf)}"
        )

    def close(self) -> None:
        """Closes the files (a later read reopens them). Call it when no read is in progress."""
        self._files.close()


__all__ = ["ArrayRecordSource", "ArrayRecordSourceConfig"]

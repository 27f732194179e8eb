"""``NumpyFileSource``: records read from ``.npy`` files, one file per column, without loading them.

Each column is one ``.npy`` file whose first axis is the record axis
(``np.save("images.npy", images)`` with ``images`` of shape ``(N, 32, 32, 3)``).
All columns share ``N``. A batch reads only its records' bytes, so the files
may be far larger than memory.

**How records are read: a memory map whose pages are released.** The header
of each file is parsed once, at construction (dtype, shape, where the data
starts), and the file is checked to be long enough. ``read_records`` gathers
the records from a read-only memory map of the file (``np.take``: on a file in
the page cache, 0.12 ms per batch of 256 ``uint8[32,32,3]`` records, against
0.75 ms for the positional reads below). Every page a map touches stays
mapped, and counts in the process's resident memory, until it is released:
iterating a 200 MB file through a plain memory map grows RSS by 200 MB even
though only one batch is ever in use (and the kernel maps far more than the
records asked for: up to megabytes around each faulting page). So a file
larger than ``max_resident_bytes`` (default 256 MiB) has its map's pages
released after every read (``madvise(MADV_DONTNEED)``): they stay in the
kernel's page cache, shared and reclaimable, and RSS stays at the batches
actually held whatever the file size. Such a file pays the page faults again
on every read (0.25 ms per random batch of 128 ``uint8[32,32,3]`` records,
still faster than positional reads); a file under the cap is never released
and is gathered at memory-map speed (0.05 ms). Where ``madvise`` is missing, the source falls back to positional reads
(``os.preadv`` straight into a numpy buffer, planned as follows), which leave
the page cache to the kernel as well. Both need no file position, so the
worker threads that call ``read_records`` at once share one map and one
descriptor.

**Which positional reads** (the fallback). ``read_records`` sorts the batch's indices and plans one
read per run of records that lie within ``4 KiB`` (about a page) of each
other: reading a small gap costs less than a system call, an in-order batch
becomes a single read, and the many small records of a label column are read
a page at a time instead of one call each. A lone record, or a run asked for
in order, is read straight into its place in the result; the other runs
(repeated records, or runs with gaps) are read into a staging buffer and
copied into place. Measured on a shared 2-core VM, page cache warm, median
per batch of 256 and column:

==========================  ================  ================  ================  ================
strategy                    uint8[32,32,3]    uint8[32,32,3]    int64 random      int64
                            random            sequential                          sequential
==========================  ================  ================  ================  ================
memory map, ``np.take``     0.12 ms           0.06 ms           0.005 ms          0.003 ms
one read per record, as     0.59 ms           0.44 ms           0.35 ms           0.32 ms
asked
sorted, nearby merged       0.75 ms           0.16 ms           0.19 ms           0.06 ms
(this source)
==========================  ================  ================  ================  ================

Sorting costs about 0.15 ms on a batch of scattered large records and saves
more on every other pattern, so it is kept. With a cold page cache the order
made no measurable difference (16-19 ms per batch of random ``uint8[32,32,3]``
records on a virtual disk, sorted or not).

The source keeps no array contents: its attributes are the paths and the
parsed headers, and the descriptors are opened again after ``close``, after
unpickling and in worker processes rebuilt from ``worker_recipe``.
Files must be C-ordered (``np.save`` of a transposed array writes a
Fortran-ordered file, whose records are not contiguous: save
``np.ascontiguousarray(array)`` instead) and hold bool or numeric dtypes;
object arrays are refused (reading them needs pickle). Big-endian files are
read and returned in native byte order. Reads use ``os.pread``, so the source
runs on POSIX systems.

Example:
    >>> import os, shutil, tempfile
    >>> import numpy as np
    >>> from datarax.core.spec import spec_to_str
    >>> folder = tempfile.mkdtemp()
    >>> np.save(os.path.join(folder, "images.npy"), np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2))
    >>> np.save(os.path.join(folder, "labels.npy"), np.array([7, 8, 9, 10, 11]))
    >>> source = NumpyFileSource(NumpyFileSourceConfig(), paths={
    ...     "image": os.path.join(folder, "images.npy"), "label": os.path.join(folder, "labels.npy")})
    >>> len(source), spec_to_str(source.element_spec())
    (5, "{'image': uint8[2,2], 'label': int64[]}")
    >>> batch = source.get_records([4, 0, 4])
    >>> batch["image"][:, 0, 0].tolist(), batch["label"].tolist()
    ([16, 0, 16], [11, 7, 11])
    >>> source.close()
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.core.config import StructuralConfig
from datarax.core.host_source import HostSourceModule, check_indices
from datarax.core.validation import positive_int

_OWNER = "NumpyFileSource"
# Records closer than this are read in one call, gap included (see "Which reads" in the module docstring).
_GAP_BYTES = 4096
_NUMERIC_KINDS = frozenset("biufc")
_CAN_RELEASE = hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap.mmap, "madvise")


def _preadv_into(fd: int, buffer: memoryview, position: int) -> int:
    """Reads up to ``len(buffer)`` bytes at ``position`` straight into ``buffer``; returns how many were read."""
    return os.preadv(fd, [buffer], position)


def _pread_copy_into(fd: int, buffer: memoryview, position: int) -> int:  # pragma: no cover - no preadv here
    """``_preadv_into`` for POSIX systems without ``preadv`` (one more copy)."""
    data = os.pread(fd, len(buffer), position)
    buffer[: len(data)] = data
    return len(data)


_pread_into = _preadv_into if hasattr(os, "preadv") else _pread_copy_into


def _constant_within(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """For each segment ``values[starts[k]:starts[k + 1]]``: whether all its values are equal."""
    return np.minimum.reduceat(values, starts) == np.maximum.reduceat(values, starts)


@dataclasses.dataclass(frozen=True)
class NumpyFileSourceConfig(StructuralConfig):
    """Configuration of ``NumpyFileSource``.

    Attributes:
        max_resident_bytes: The largest file whose memory map stays resident
            in this process (see "How records are read"): such a file is
            gathered at memory-map speed; a larger one has its pages released
            after every read, so RSS does not grow with it. A positive int.

    Example:
        >>> NumpyFileSourceConfig(max_resident_bytes=64 * 2**20).max_resident_bytes
        67108864
    """

    max_resident_bytes: int = 256 * 2**20

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int(type(self).__name__, "max_resident_bytes", self.max_resident_bytes)


def _read_header(column: str, path: str) -> tuple[int, tuple[int, ...], np.dtype, bool]:
    """Parses the ``.npy`` header of ``path``: ``(data offset, shape, dtype, fortran_order)``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the header is not a valid ``.npy`` header.
    """
    where = f"{_OWNER}: column {column!r}: {path}"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"{where} is not a file; expected a .npy file")
    with open(path, "rb") as file:
        try:
            version = np.lib.format.read_magic(file)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not one numpy writes")
            # Version 3.0 differs from 2.0 only in allowing utf-8 field names of
            # structured dtypes, which are refused below anyway.
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read(file)
        except Exception as error:  # noqa: BLE001 - numpy's parser raises ValueError, SyntaxError, TokenError, ...
            raise ValueError(f"{where} is not a valid .npy file (its header cannot be read: {error})") from error
        return file.tell(), tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran_order)


class _NpyFile:
    """One column's ``.npy`` file: its parsed header and a lazily opened read-only descriptor.

    Pickling (and ``copy.deepcopy``) keeps the path and the header, never the
    descriptor: the copy opens the file again on its first read.
    """

    def __init__(self, column: str, path: str, max_resident_bytes: int = 256 * 2**20):
        self.column = column
        self.max_resident_bytes = max_resident_bytes
        self.path = path
        self.offset, shape, file_dtype, fortran_order = _read_header(column, path)
        where = f"{_OWNER}: column {column!r}: {path}"
        if file_dtype.hasobject:
            raise TypeError(
                f"{where} holds Python objects (dtype {file_dtype}); reading them needs pickle, which "
                f"{_OWNER} never uses: save a numeric array instead"
            )
        if file_dtype.kind not in _NUMERIC_KINDS or file_dtype.fields is not None or file_dtype.subdtype is not None:
            raise TypeError(f"{where} has dtype {file_dtype}; expected a bool or numeric dtype")
        if not shape:
            raise ValueError(f"{where} holds a scalar; expected an array whose first axis is the record axis")
        if fortran_order and len(shape) > 1:
            raise ValueError(
                f"{where} is stored in Fortran order, so its records are not contiguous; save it with "
                "np.save(path, np.ascontiguousarray(array))"
            )
        self.num_records = shape[0]
        if self.num_records == 0:
            raise ValueError(f"{where} has zero records; expected at least one")
        self.record_shape = shape[1:]
        self.file_dtype = file_dtype
        # numpy writes "=" for the machine's byte order and "|" where it does not apply.
        self.dtype = file_dtype if file_dtype.byteorder in "=|" else file_dtype.newbyteorder("=")
        self.record_nbytes = int(np.prod(self.record_shape, dtype=np.int64)) * file_dtype.itemsize
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._finalizer: weakref.finalize | None = None
        self._map: np.ndarray | None = None
        self._needed = self.offset + self.num_records * self.record_nbytes
        self._descriptor()  # opens the file now, so a file too short fails at construction

    def __repr__(self) -> str:
        dims = ",".join(str(d) for d in self.record_shape)
        return f"_NpyFile({self.column!r}, {self.path!r}, {self.num_records} x {self.dtype.name}[{dims}])"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_lock", "_fd", "_finalizer", "_map"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._fd = None
        self._finalizer = None
        self._map = None

    def _descriptor(self) -> int:
        """The open descriptor, opening (and checking) the file first if needed."""
        fd = self._fd
        if fd is not None:
            return fd
        with self._lock:
            if self._fd is None:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    size = os.fstat(fd).st_size
                    needed = self.offset + self.num_records * self.record_nbytes
                    if size < needed:
                        shape = ",".join(str(d) for d in (self.num_records, *self.record_shape))
                        raise ValueError(
                            f"{_OWNER}: column {self.column!r}: {self.path} is truncated or corrupt: its header "
                            f"describes {self.file_dtype}[{shape}], {needed} bytes with the header, but the file "
                            f"has {size} bytes"
                        )
                except BaseException:
                    os.close(fd)
                    raise
                self._finalizer = weakref.finalize(self, os.close, fd)
                self._fd = fd
            return self._fd

    def close(self) -> None:
        """Closes the descriptor (the next read opens the file again)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._fd = None
            self._finalizer = None
            self._map = None

    def _read_rest(self, fd: int, buffer: memoryview, position: int, done: int) -> None:
        """Fills ``buffer[done:]`` after a short read (rare for regular files: only at their end)."""
        while done < len(buffer):
            count = _pread_into(fd, buffer[done:], position + done)
            if count == 0:
                raise OSError(
                    f"{_OWNER}: column {self.column!r}: {self.path} ended at byte {position + done}, before the "
                    "records its header describes (was it truncated after the source was built?)"
                )
            done += count

    def _read_spans(self, target: np.ndarray, rows: np.ndarray, spans: np.ndarray, first: np.ndarray) -> None:
        """Reads records ``first[k] : first[k] + spans[k]`` into ``target[rows[k] : rows[k] + spans[k]]``, in order."""
        nbytes = self.record_nbytes
        raw = memoryview(target.reshape(-1).view(np.uint8))
        fd = self._descriptor()
        read = _pread_into
        begins = (rows * nbytes).tolist()
        ends = ((rows + spans) * nbytes).tolist()
        positions = (self.offset + first * nbytes).tolist()
        for begin, end, position in zip(begins, ends, positions, strict=True):
            got = read(fd, raw[begin:end], position)
            if got != end - begin:
                self._read_rest(fd, raw[begin:end], position, got)

    def _mapped(self) -> np.ndarray | None:
        """The file as a read-only memory map (opened once), or None where pages cannot be released."""
        if not _CAN_RELEASE:
            return None
        view = self._map
        if view is None:
            self._descriptor()  # checks the length first
            with self._lock:
                if self._map is None:
                    shape = (self.num_records, *self.record_shape)
                    self._map = np.memmap(self.path, dtype=self.file_dtype, mode="r", offset=self.offset, shape=shape)
                view = self._map
        return view

    def _release(self, view: np.ndarray) -> None:
        """Drops the map's pages from this process's RSS after a read, when the file is larger than the cap."""
        if self._needed - self.offset <= self.max_resident_bytes:
            return  # the whole file fits under the cap: never released
        # How much one gather maps is up to the kernel (fault-around, large page-cache folios can map
        # megabytes around a 3 KiB record), so the pages are released after every read. They stay in
        # the page cache; a later access maps them again. Safe while other threads read: a shared
        # read-only file mapping refaults the same bytes.
        view._mmap.madvise(mmap.MADV_DONTNEED)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """The records at ``indices`` (int64, in range), as one array in the order asked."""
        # A mapped page past the end of a file truncated after construction would kill the process
        # (SIGBUS): a file that got shorter is read positionally, which reports the missing bytes.
        whole = os.fstat(self._descriptor()).st_size >= self._needed
        view = self._mapped() if whole else None
        if view is not None:
            records = np.take(view, indices, axis=0).view(np.ndarray)
            self._release(view)
            return records if records.dtype == self.dtype else records.byteswap().view(self.dtype)
        count = int(indices.size)
        records = np.empty((count, *self.record_shape), self.file_dtype)
        if count:
            self._read_records_into(records, indices)
        if records.dtype != self.dtype:  # a byte order other than the machine's
            records = records.byteswap().view(self.dtype)
        return records

    def _read_records_into(self, records: np.ndarray, indices: np.ndarray) -> None:
        """Fills ``records`` (one row per index) with the records at ``indices`` (non-empty)."""
        count = len(indices)
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        # Reads are planned in file order; a new one starts where the next record is more than _GAP_BYTES away.
        starts = np.concatenate(([0], np.flatnonzero((np.diff(ordered) - 1) * self.record_nbytes > _GAP_BYTES) + 1))
        ends = np.append(starts[1:], count)
        first = ordered[starts]
        spans = ordered[ends - 1] - first + 1
        # A read lands straight in the result when its records are consecutive, each asked once, and asked in
        # consecutive places of the result (a lone record always is; so is an in-order batch).
        steps = np.arange(count)
        direct = _constant_within(ordered - steps, starts) & _constant_within(order - steps, starts)
        # In the order of the result: on a warm page cache that measured faster than file order.
        places = order[starts[direct]]
        by_place = np.argsort(places)
        self._read_spans(records, places[by_place], spans[direct][by_place], first[direct][by_place])
        if direct.all():
            return
        # The other reads (records repeated, or with gaps between them) go through a staging buffer.
        staged = ~direct
        stage_spans = spans[staged]
        stage_rows = np.cumsum(stage_spans) - stage_spans
        stage = np.empty((int(stage_spans.sum()), *self.record_shape), self.file_dtype)
        self._read_spans(stage, stage_rows, stage_spans, first[staged])
        read_of = np.repeat(np.arange(len(starts)), ends - starts)  # the read each sorted index belongs to
        wanted = staged[read_of]
        stage_read = (np.cumsum(staged) - 1)[read_of[wanted]]
        records[order[wanted]] = stage[stage_rows[stage_read] + ordered[wanted] - first[staged][stage_read]]


def _validated_paths(paths: Any) -> dict[str, str]:
    if not isinstance(paths, Mapping):
        raise TypeError(
            f"{_OWNER}: paths must be a dict of column name to .npy path, got {type(paths).__name__} {paths!r}"
        )
    if not paths:
        raise ValueError(f"{_OWNER}: paths is empty; expected at least one column")
    checked: dict[str, str] = {}
    for column, path in paths.items():
        if not isinstance(column, str) or not column:
            raise TypeError(f"{_OWNER}: column names must be non-empty str, got {column!r}")
        if column == VALID_MASK:
            raise ValueError(f"{_OWNER}: column name {VALID_MASK!r} is reserved for batches")
        if not isinstance(path, str | os.PathLike):
            raise TypeError(
                f"{_OWNER}: the path of column {column!r} must be a str or os.PathLike, got {type(path).__name__}"
            )
        checked[column] = os.fspath(path)
    return checked


class NumpyFileSource(HostSourceModule):
    """A host source reading records from one ``.npy`` file per column (see the module docstring).

    Args:
        config: ``NumpyFileSourceConfig``.
        paths: Dict mapping column names to ``.npy`` paths (str or ``os.PathLike``).
            Every file's first axis is the record axis and has the same length.
        rngs: Optional random number generators.
        name: Optional module name.

    Raises:
        TypeError: If ``paths`` is not a dict of str names to paths, or a file
            holds Python objects or a non-numeric dtype.
        FileNotFoundError: If a file does not exist (the message names it).
        ValueError: If a file is not a valid ``.npy`` file, is truncated, is
            Fortran-ordered, holds a scalar or zero records, if two columns
            have different numbers of records (both are named), or a column is
            named ``valid_mask``.
    """

    def __init__(
        self,
        config: NumpyFileSourceConfig,
        *,
        paths: Mapping[str, str | os.PathLike],
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        super().__init__(config, rngs=rngs, name=name)
        files: list[_NpyFile] = []
        try:
            for column, path in _validated_paths(paths).items():
                files.append(_NpyFile(column, path, config.max_resident_bytes))
            first = files[0]
            for other in files[1:]:
                if other.num_records != first.num_records:
                    raise ValueError(
                        f"{_OWNER}: column {first.column!r} ({first.path}) has {first.num_records} records but "
                        f"column {other.column!r} ({other.path}) has {other.num_records}; every column needs "
                        "the same number of records"
                    )
        except BaseException:
            for file in files:
                file.close()
            raise
        # Paths and parsed headers only: static attributes, never array contents.
        self._files = tuple(files)
        self.num_records = first.num_records

    @property
    def paths(self) -> dict[str, str]:
        """Column name to the path of its ``.npy`` file."""
        return {file.column: file.path for file in self._files}

    def __len__(self) -> int:
        return self.num_records

    def element_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """One record's spec: each file's shape without the record axis, and its dtype (native byte order)."""
        return {file.column: jax.ShapeDtypeStruct(file.record_shape, file.dtype) for file in self._files}

    def read_records(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Reads the records at ``indices`` from every column's file.

        Args:
            indices: 1-D integer array of record indices in ``[0, len(self))``,
                in any order, repeats allowed.

        Returns:
            Column name to an array of shape ``(len(indices), *record_shape)``.

        Raises:
            TypeError: If ``indices`` is not a 1-D integer array.
            IndexError: If an index is out of range.
            OSError: If a file cannot be read, or ended early (it changed after construction).
        """
        indices = check_indices(_OWNER, indices, self.num_records)
        return {file.column: file.read(indices) for file in self._files}

    def close(self) -> None:
        """Closes the files' descriptors; a later read opens them again."""
        for file in self._files:
            file.close()


__all__ = ["NumpyFileSource", "NumpyFileSourceConfig"]

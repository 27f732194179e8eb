"""``HFSource``: records of a Hugging Face ``datasets.Dataset``, read by index on the host.

``pip install 'datarax[hf]'``. The dataset comes from one of three places
(exactly one is given):

* ``path``: a directory written by ``Dataset.save_to_disk`` (or
  ``DatasetDict.save_to_disk``: ``split`` picks the split), opened with
  ``datasets.load_from_disk``, i.e. memory-mapped Arrow files;
* ``builder`` + ``data_files``: ``datasets.load_dataset(builder,
  data_files=..., split=split)`` with a packaged builder (``"parquet"``,
  ``"json"``, ``"csv"`` or ``"imagefolder"``) over **local** files only. Every
  file is checked to exist before ``load_dataset`` runs and remote addresses
  (``hf://``, ``https://``, ...) are refused, so nothing is ever downloaded;
  these builders are packaged with ``datasets``, so ``load_dataset`` looks
  nothing up on the Hub either. It converts the files into its Arrow cache
  once (``~/.cache/huggingface/datasets``) and reuses it afterwards;
* ``dataset``: a ``datasets.Dataset`` object in memory (see *Worker processes*).

**Random access.** ``read_records(indices)`` takes the rows with the dataset
in Arrow format (``dataset.select_columns(columns).with_format("arrow")[indices]``,
which honours an indices mapping left by ``select`` / ``shuffle``) and turns
each Arrow column into numpy itself. Measured on 256 random rows of 50,000
(a ``uint8[3072]`` column, an ``int64`` label and a variable-length ``int32``
list; one CPU core): 1.2 ms, against 5.0 ms for
``dataset.with_format("numpy")[indices]`` and 2.6 ms for
``dataset.select(indices)``. The numpy formatter is also lossy (it returns
``int16`` and ``int32`` lists as ``int64``), where this source keeps every
dtype. Only the configured columns are ever read. Arrow tables are immutable
and reading keeps no state on the source, so several threads read at once;
but the gather and conversion mostly hold the GIL (measured on 2 cores: 64
batches of 256 rows over 8 threads took 2.7 ms a batch, one thread 1.6 ms),
so to read faster use process workers with ``path`` (or ``builder``).

**Column types.** Each selected column's *feature* decides its spec:

* ``Value`` of an integer, floating point or bool type: a fixed ``dtype[]`` column;
* ``ClassLabel``: a fixed ``int64[]`` column; the label names are in
  ``source.class_names[column]``;
* ``List`` / ``Sequence`` of fixed length (possibly nested), ``Array2D`` ...
  ``Array5D`` of fixed shape: a fixed column of that shape (``List(Value("uint8"),
  length=3072)`` is ``uint8[3072]``);
* a variable-length ``List`` / ``LargeList`` of those (or an ``ArrayND``
  whose first dimension is None): ``RaggedSpec(dtype, ndim)``, one numpy
  array per record. Only the outermost length may vary: ``List(List(Value))``
  with both lengths free is refused;
* ``Value("string")`` / ``Value("large_string")``: ``BytesSpec``, each record
  its UTF-8 bytes (as ``ParquetSource`` reads text); ``Value("binary")``:
  ``BytesSpec``;
* ``Image``: ``BytesSpec`` of the *encoded* file bytes (PNG, JPEG, ...),
  never decoded here: the Arrow rows are read as stored, which is what
  ``cast_column(column, Image(decode=False))`` gives, so decoding happens on
  the host stage with ``datarax.operators.DecodeImage`` (in worker threads or
  processes). An image stored as a file path (what ``imagefolder`` stores)
  is read from that file.
* ``Audio``: ``BytesSpec`` of the encoded file bytes (WAV, FLAC, OGG, MP3,
  ...), read the same way and for the same reasons: Hugging Face's own audio
  decoding (datasets 4+) needs torchcodec and FFmpeg, and would run on the
  reading thread; the Arrow storage (a struct of ``bytes`` and ``path``) is
  read as stored whatever the feature's ``decode`` says, and
  ``datarax.operators.DecodeAudio`` decodes on the host stage (soundfile),
  mixes to mono, resamples and crops or pads to a fixed length. A row that
  holds only a path (an in-memory dataset built from file names;
  ``save_to_disk`` embeds the bytes) is read from that local file; a remote
  address (``https://``, ``hf://``, ...) is refused, naming the record, as
  nothing is ever downloaded. The rate the feature asks for
  (``Audio(sampling_rate=16000)``; None for each file's own) is in
  ``source.audio_sampling_rates[column]``, to pass to
  ``DecodeAudioConfig(sampling_rate=...)``.

Any other feature (dicts, ``Translation``, ``Video``, timestamps, ...) raises a
``TypeError`` naming the column (leave it out with ``HFSourceConfig(columns=...)``).
Every batch is checked against the spec: a null value, or a fixed-shape
record of another shape, is a ``ValueError`` naming the column and the record.

**Worker processes.** ``Pipeline(worker_kind="process")`` rebuilds the source
in each worker from its constructor arguments (``worker_recipe``). ``path``
and ``builder`` + ``data_files`` are strings, so each worker reopens the files.
A ``Dataset`` object backed by Arrow files (what ``load_from_disk`` and
``load_dataset`` return) pickles by file reference (measured: 2 KB for a
1,000-row dataset), so it is sent as is. A ``Dataset`` held in memory
(``Dataset.from_dict``, ``from_pandas``, ...) would be copied whole into every
worker (96 KB for those 1,000 rows; gigabytes for a real dataset), so
``worker_recipe`` refuses it and ``Pipeline(worker_kind="process")`` fails at
construction saying so: save it with ``dataset.save_to_disk(folder)`` and
pass ``path=folder``, or use worker threads.

**Local files.** With ``local_files_only=True`` a missing ``path`` or data file
raises ``LocalFilesOnlyMixin``'s ``FileNotFoundError`` naming the dataset
and every missing path; with False a missing path is a ``FileNotFoundError``
naming it too (there is nothing to download either way).

Example:
    >>> import os, shutil, tempfile
    >>> import datasets
    >>> from datasets import ClassLabel, Features, List, Value
    >>> from datarax.core.spec import spec_to_str
    >>> features = Features({"tokens": List(Value("int32")), "label": ClassLabel(names=["neg", "pos"]),
    ...                      "text": Value("string")})
    >>> data = datasets.Dataset.from_dict(
    ...     {"tokens": [[1, 2, 3], [4], []], "label": [0, 1, 1], "text": ["a", "bb", "c\u00e9"]}, features=features)
    >>> folder = tempfile.mkdtemp()
    >>> data.save_to_disk(folder)  # its progress bar goes to stderr
    >>> source = HFSource(HFSourceConfig(columns=("tokens", "label")), path=folder)
    >>> len(source), spec_to_str(source.element_spec()), source.class_names
    (3, "{'label': int64[], 'tokens': int32[?]}", {'label': ('neg', 'pos')})
    >>> batch = source.get_records([2, 0])
    >>> [t.tolist() for t in batch["tokens"]], batch["label"].tolist()
    ([[], [1, 2, 3]], [1, 0])
    >>> HFSource(HFSourceConfig(columns=("text",)), dataset=data).get_records([2])["text"][0].decode()
    'c\u00e9'
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.core.data_source import LocalFilesOnlyMixin
from datarax.core.extras import import_extra
from datarax.core.host_source import ColumnSelectionConfig, HostSourceModule, check_columns, check_indices
from datarax.core.spec import BytesSpec, RaggedSpec

_OWNER = "HFSource"
BUILDERS = ("parquet", "json", "csv", "imagefolder")


@dataclasses.dataclass(frozen=True)
class HFSourceConfig(ColumnSelectionConfig):
    """Configuration of ``HFSource``.

    Attributes:
        columns: The columns to read, in order (a tuple of names; a list is
            stored as a tuple), or None for every column of the dataset.
        local_files_only: If True, a missing ``path`` or data file raises the
            ``LocalFilesOnlyMixin`` error that lists every missing path. A
            missing path is a ``FileNotFoundError`` either way (nothing is
            downloaded).

    Raises:
        ValueError: If ``columns`` is not None or a non-empty sequence of
            distinct non-empty names, or ``local_files_only`` is not a bool.
    """


# --- features -> columns ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Column:
    """One selected column: how its Arrow values are read, and its spec.

    ``kind`` is ``"fixed"`` (``shape`` is the record's shape), ``"ragged"``
    (``shape`` is the shape of one item of the outer list), ``"bytes"``, or
    ``"image"`` / ``"audio"`` (a struct of ``bytes`` and ``path``).
    """

    name: str
    kind: str
    spec: Any
    shape: tuple[int, ...] = ()
    dtype: np.dtype | None = None


def _unsupported(name: str, feature: Any, why: str = "", owner: str = _OWNER) -> TypeError:
    return TypeError(
        f"{owner}: column {name!r} has feature {feature!r}{why}, which {owner} cannot read; supported: Value of an "
        "integer, floating point, bool, string or binary type, ClassLabel, List/Sequence/LargeList and Array2D-5D "
        "of numbers (only the outermost length may vary), Image and Audio (read as encoded bytes). Leave the column "
        f"out with {owner}Config(columns=...)"
    )


def _numeric_dtype(pa: Any, value: Any) -> np.dtype | None:
    arrow_type = value.pa_type
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type):
        return np.dtype(arrow_type.to_pandas_dtype())
    return None


def _column(datasets: Any, pa: Any, name: str, feature: Any, owner: str = _OWNER) -> _Column:
    """The ``_Column`` for a feature, or a ``TypeError`` naming the column and its feature."""
    features = datasets.features
    if isinstance(feature, features.Audio):
        return _Column(name, "audio", BytesSpec())
    if isinstance(feature, features.ClassLabel):
        return _Column(name, "fixed", jax.ShapeDtypeStruct((), np.int64), (), np.dtype(np.int64))
    if isinstance(feature, features.Image):
        return _Column(name, "image", BytesSpec())
    if isinstance(feature, features.Value):
        if feature.dtype in ("string", "large_string", "binary", "large_binary"):
            return _Column(name, "bytes", BytesSpec())
        dtype = _numeric_dtype(pa, feature)
        if dtype is None:
            raise _unsupported(name, feature, owner=owner)
        return _Column(name, "fixed", jax.ShapeDtypeStruct((), dtype), (), dtype)
    # List (datasets >= 4), or Sequence (its name before 4: a class of its own, with the same fields).
    lists = tuple(kind for kind in (getattr(features, "List", None), features.Sequence) if isinstance(kind, type))
    large_list = getattr(features, "LargeList", ())
    dims: list[int] = []  # -1 where the length varies
    item = feature
    while True:
        if isinstance(item, lists):
            dims.append(item.length if item.length is not None and item.length >= 0 else -1)
            item = item.feature
        elif isinstance(item, large_list):
            dims.append(-1)
            item = item.feature
        elif isinstance(item, features.Array2D | features.Array3D | features.Array4D | features.Array5D):
            dims.extend(-1 if size is None else int(size) for size in item.shape)
            item = features.Value(item.dtype)
            break
        else:
            break
    if not dims or not isinstance(item, features.Value) or _numeric_dtype(pa, item) is None:
        raise _unsupported(name, feature, owner=owner)
    dtype = _numeric_dtype(pa, item)
    if -1 in dims[1:]:
        raise _unsupported(name, feature, " (a length other than the outermost varies)", owner)
    if dims[0] == -1:
        return _Column(name, "ragged", RaggedSpec(dtype, len(dims)), tuple(dims[1:]), dtype)
    return _Column(name, "fixed", jax.ShapeDtypeStruct(tuple(dims), dtype), tuple(dims), dtype)


# --- Arrow columns -> numpy ----------------------------------------------------------------------


def _storage(pa: Any, array: Any) -> Any:
    return array.storage if isinstance(array, pa.ExtensionArray) else array


def _bad_record(name: str, indices: np.ndarray, position: int, what: str) -> ValueError:
    return ValueError(f"{_OWNER}: column {name!r}, record {int(indices[position])}: {what}")


def _position(element: int, group: int, item_record: np.ndarray | None) -> int:
    """The batch position of element ``element`` of a level whose ``group`` elements make one item."""
    item = element // group
    return item if item_record is None else int(item_record[item])


def _check_nulls(array: Any, name: str, indices: np.ndarray, group: int, item_record: np.ndarray | None) -> None:
    """Refuses nulls in ``array`` (see ``_position`` for how an element is traced to its record)."""
    if array.null_count:
        first = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        position = _position(first, group, item_record)
        raise _bad_record(name, indices, position, f"holds a null value; {_OWNER} does not read nulls")


def _flatten_fixed(
    pa: Any, array: Any, column: _Column, indices: np.ndarray, item_record: np.ndarray | None = None
) -> np.ndarray:
    """The numbers under ``len(column.shape)`` levels of lists of the fixed lengths ``column.shape``, flat.

    ``array`` holds one element per record (``item_record`` None) or, for a
    ragged column, one per list item, ``item_record`` giving each item's
    batch position; a null or a list of the wrong length names its record.
    """
    group = 1
    for size in column.shape:
        array = _storage(pa, array)
        _check_nulls(array, column.name, indices, group, item_record)
        if not pa.types.is_fixed_size_list(array.type):
            lengths = np.diff(array.offsets.to_numpy())
            wrong = np.flatnonzero(lengths != size)
            if wrong.size:
                raise _bad_record(
                    column.name,
                    indices,
                    _position(int(wrong[0]), group, item_record),
                    f"has a list of length {int(lengths[wrong[0]])} where the spec's shape {list(column.shape)} "
                    f"needs {size}",
                )
        array = array.flatten()  # respects the array's offset
        group *= size
    array = _storage(pa, array)
    _check_nulls(array, column.name, indices, group, item_record)
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=column.dtype)


def _read_encoded(value: dict[str, Any], kind: str, name: str, indices: np.ndarray, position: int) -> bytes:
    """The bytes of an ``Image`` or ``Audio`` row (``kind``): stored ones, else those of its local file."""
    if value["bytes"] is not None:
        return value["bytes"]
    path = value["path"]
    if not path:
        raise _bad_record(name, indices, position, f"is an {kind} with neither bytes nor a path")
    if "://" in path or path.startswith("hf:"):
        raise _bad_record(
            name, indices, position, f"its {kind} is at {path!r}, not a local file; {_OWNER} downloads nothing"
        )
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise _bad_record(name, indices, position, f"its {kind} file {path} cannot be read: {error}") from error


def _read_column(pa: Any, column: _Column, array: Any, indices: np.ndarray) -> np.ndarray | list:
    """One column of a batch (an Arrow array of ``len(indices)`` rows) as the source returns it."""
    array = _storage(pa, array)
    name = column.name
    _check_nulls(array, name, indices, 1, None)
    count = len(indices)
    if column.kind == "fixed":
        return _flatten_fixed(pa, array, column, indices).reshape(count, *column.shape)
    if column.kind == "bytes":
        if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
            array = array.cast(pa.large_binary())  # UTF-8 text: the same bytes, no copy
        return array.to_pylist()
    if column.kind in ("image", "audio"):
        return [_read_encoded(value, column.kind, name, indices, i) for i, value in enumerate(array.to_pylist())]
    offsets = array.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    item_record = np.repeat(np.arange(count), np.diff(offsets))
    values = _flatten_fixed(pa, array.flatten(), column, indices, item_record).reshape(-1, *column.shape)
    return [values[start:end].copy() for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]


# --- where the dataset comes from -----------------------------------------------------------------


def _data_file_list(data_files: Any, owner: str = _OWNER) -> list[str]:
    """Every path ``data_files`` names (a path, a list of paths, or a dict of split to those)."""
    if isinstance(data_files, str | os.PathLike):
        return [os.fspath(data_files)]
    if isinstance(data_files, Mapping):
        if not data_files:
            raise ValueError(f"{owner}: data_files is an empty dict; expected split names mapped to files")
        return [path for value in data_files.values() for path in _data_file_list(value, owner)]
    if isinstance(data_files, list | tuple):
        if not data_files:
            raise ValueError(f"{owner}: data_files is an empty list; expected at least one local file")
        paths = []
        for item in data_files:
            if not isinstance(item, str | os.PathLike):
                raise TypeError(f"{owner}: data_files must hold str or os.PathLike paths, got {item!r}")
            paths.append(os.fspath(item))
        return paths
    raise TypeError(
        f"{owner}: data_files must be a path, a list of paths or a dict of split to paths, "
        f"got {type(data_files).__name__}"
    )


def _local_files(data_files: Any, owner: str = _OWNER) -> tuple[list[str], list[str]]:
    """``(found, missing)``: the local files ``data_files`` names (glob patterns expanded)."""
    found, missing = [], []
    for path in _data_file_list(data_files, owner):
        if "://" in path or path.startswith("hf:"):
            raise ValueError(f"{owner}: data_files must be local files (nothing is downloaded), got {path!r}")
        if any(c in path for c in "*?["):
            matches = sorted(glob.glob(path))
            (found.extend(matches) if matches else missing.append(path))
        elif os.path.exists(path):
            found.append(path)
        else:
            missing.append(path)
    return found, missing


def _file_backed(table_module: Any, table: Any) -> bool:
    """Whether a ``datasets`` table is memory-mapped Arrow files only (so it pickles by file reference)."""
    if isinstance(table, table_module.MemoryMappedTable):
        return True
    if isinstance(table, table_module.ConcatenationTable):
        return all(_file_backed(table_module, block) for row in table.blocks for block in row)
    return False


def _selected_columns(
    datasets: Any, pa: Any, features: Any, columns: tuple[str, ...] | None, owner: str
) -> tuple[tuple[_Column, ...], dict[str, tuple[str, ...]]]:
    """The ``_Column`` of each configured column (None: all) and the ``ClassLabel`` names, checked."""
    names = columns if columns is not None else tuple(features)
    missing = [column for column in names if column not in features]
    if missing:
        raise ValueError(f"{owner}: columns {missing} are not in the dataset; its columns are {list(features)}")
    if VALID_MASK in names:
        raise ValueError(
            f"{owner}: column name {VALID_MASK!r} is reserved for batches; leave it out with {owner}Config(columns=...)"
        )
    class_names = {
        column: tuple(features[column].names)
        for column in names
        if isinstance(features[column], datasets.features.ClassLabel)
    }
    return tuple(_column(datasets, pa, column, features[column], owner) for column in names), class_names


def load_local_builder(
    source: LocalFilesOnlyMixin,
    datasets: Any,
    builder: Any,
    data_files: Any,
    split: str,
    *,
    owner: str,
    streaming: bool,
) -> Any:
    """``datasets.load_dataset(builder, data_files=..., split=...)`` over local files only, checked first.

    Raises:
        ValueError: For an unknown builder, no or remote data files, or a failed load.
        FileNotFoundError: If a data file is missing (``source``'s ``local_files_only`` error when set).
    """
    if builder not in BUILDERS:
        raise ValueError(f"{owner}: builder must be one of {list(BUILDERS)} (local files only), got {builder!r}")
    if data_files is None:
        raise ValueError(f"{owner}: builder={builder!r} needs data_files= (local files)")
    found, missing = _local_files(data_files, owner)
    dataset_name = f"{builder}:{_data_file_list(data_files, owner)[0]}"
    if not source._check_local_cache(found + missing, dataset_name=dataset_name):
        raise FileNotFoundError(f"{owner}: data_files not found: {', '.join(missing)}")
    if isinstance(data_files, Mapping):
        data_files = {key: _data_file_list(value, owner) for key, value in data_files.items()}
    else:
        data_files = _data_file_list(data_files, owner)
    try:
        return datasets.load_dataset(builder, data_files=data_files, split=split, streaming=streaming)
    except ValueError as error:  # an unknown split, unreadable files, ...
        call = f"load_dataset({builder!r}, data_files=..., split={split!r}{', streaming=True' if streaming else ''})"
        raise ValueError(f"{owner}: {call} failed: {str(error).strip()}") from error


class HFSource(LocalFilesOnlyMixin, HostSourceModule):
    """A host source over the rows of a Hugging Face ``datasets.Dataset`` (see the module docstring).

    Exactly one of ``dataset``, ``path`` and ``builder`` (with ``data_files``) is given.

    Args:
        config: ``HFSourceConfig`` (the columns to read, ``local_files_only``).
        dataset: A ``datasets.Dataset``. One held in memory cannot go to
            worker processes: save it with ``save_to_disk`` and pass ``path``.
        path: A directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``.
        builder: A packaged builder: ``"parquet"``, ``"json"``, ``"csv"`` or ``"imagefolder"``.
        data_files: The builder's local files: a path or glob pattern, a list
            of them, or a dict of split name to those.
        split: The split to read (for ``path`` holding a ``DatasetDict``, and for ``builder``).
        rngs: Optional random number generators.
        name: Optional module name.

    Raises:
        ImportError: If ``datasets`` is not installed (``pip install 'datarax[hf]'``).
        TypeError: If the arguments have the wrong types (``dataset`` is not a
            ``datasets.Dataset``, ...), or a selected column's feature cannot be read (named).
        ValueError: If not exactly one source of data is given, ``builder`` is
            unknown, ``data_files`` is remote or missing with ``builder``,
            ``split`` is not in the dataset, a configured column is missing
            (the available ones are listed), a column is named ``valid_mask``,
            or the dataset has no rows.
        FileNotFoundError: If ``path`` or a data file does not exist.
    """

    def __init__(
        self,
        config: HFSourceConfig,
        *,
        dataset: Any = None,
        path: str | os.PathLike | None = None,
        builder: str | None = None,
        data_files: Any = None,
        split: str = "train",
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        if not isinstance(config, HFSourceConfig):
            raise TypeError(f"{_OWNER}: config must be an HFSourceConfig, got {type(config).__name__}")
        super().__init__(config, rngs=rngs, name=name)
        datasets = import_extra("datasets", extra="hf", owner=_OWNER)
        pa = import_extra("pyarrow", extra="hf", owner=_OWNER)
        self.local_files_only = config.local_files_only
        given = [
            key for key, value in (("dataset", dataset), ("path", path), ("builder", builder)) if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"{_OWNER}: give exactly one of dataset= (a datasets.Dataset), path= (a save_to_disk folder) or "
                f"builder= with data_files=; got {given or 'none'}"
            )
        if data_files is not None and builder is None:
            raise ValueError(f"{_OWNER}: data_files is only read with builder=; got data_files with {given[0]}=")
        if not isinstance(split, str) or not split:
            raise ValueError(f"{_OWNER}: split must be a non-empty str, got {split!r}")
        if dataset is not None:
            data = self._check_dataset(datasets, dataset)
        elif path is not None:
            data = self._load_from_disk(datasets, path, split)
        else:
            data = self._load_builder(datasets, builder, data_files, split)
        features = data.features
        self._columns, self.class_names = _selected_columns(datasets, pa, features, config.columns, _OWNER)
        names = tuple(column.name for column in self._columns)
        self.audio_sampling_rates = {
            column: features[column].sampling_rate
            for column in names
            if isinstance(features[column], datasets.features.Audio)
        }
        self.num_records = len(data)
        if self.num_records == 0:
            raise ValueError(f"{_OWNER}: the dataset has no rows")
        self._rows = data.select_columns(list(names)).with_format("arrow")
        self._file_backed = _file_backed(datasets.table, data.data)

    def _check_dataset(self, datasets: Any, dataset: Any) -> Any:
        if isinstance(dataset, datasets.DatasetDict):
            raise TypeError(
                f"{_OWNER}: dataset is a DatasetDict with splits {list(dataset)}; give one split, e.g. "
                f"dataset=dataset[{next(iter(dataset), 'train')!r}]"
            )
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(
                f"{_OWNER}: dataset must be a datasets.Dataset (random access; an IterableDataset has none), "
                f"got {type(dataset).__name__}"
            )
        return dataset

    def _load_from_disk(self, datasets: Any, path: Any, split: str) -> Any:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"{_OWNER}: path must be a str or os.PathLike folder, got {type(path).__name__}")
        path = os.fspath(path)
        if not self._check_local_cache([path], dataset_name=path):
            raise FileNotFoundError(f"{_OWNER}: path {path} does not exist")
        try:
            data = datasets.load_from_disk(path)
        except FileNotFoundError as error:
            raise ValueError(
                f"{_OWNER}: {path} is not a folder written by Dataset.save_to_disk: {str(error).strip()}"
            ) from error
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"{_OWNER}: split {split!r} is not in {path}; its splits are {list(data)}")
            data = data[split]
        return data

    def _load_builder(self, datasets: Any, builder: Any, data_files: Any, split: str) -> Any:
        return load_local_builder(self, datasets, builder, data_files, split, owner=_OWNER, streaming=False)

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns read, in order."""
        return tuple(column.name for column in self._columns)

    def __len__(self) -> int:
        return self.num_records

    def element_spec(self) -> dict[str, Any]:
        """One record's spec: ``jax.ShapeDtypeStruct``, ``RaggedSpec`` or ``BytesSpec`` per column."""
        return {column.name: column.spec for column in self._columns}

    def read_records(self, indices: np.ndarray) -> dict[str, np.ndarray | list]:
        """Reads the rows at ``indices``.

        Args:
            indices: 1-D integer array of row numbers in ``[0, len(self))``, in
                any order, repeats allowed.

        Returns:
            Column name to a numpy array with leading axis ``len(indices)``
            (fixed columns), or a list with one ``bytes`` / numpy array per index.

        Raises:
            TypeError: If ``indices`` is not a 1-D integer array.
            IndexError: If an index is out of range.
            ValueError: If a record holds a null, or a fixed-shape record has
                another shape (the column and record are named).
        """
        pa = import_extra("pyarrow", extra="hf", owner=_OWNER)
        indices = check_indices(_OWNER, indices, len(self))
        if not len(indices):
            return {
                column.name: np.empty((0, *column.shape), column.dtype) if column.kind == "fixed" else []
                for column in self._columns
            }
        table = self._rows[indices]
        out = {
            column.name: _read_column(pa, column, table.column(column.name).combine_chunks(), indices)
            for column in self._columns
        }
        check_columns(_OWNER, out, self.element_spec(), len(indices))
        return out

    def worker_recipe(self) -> tuple[type, Any, dict[str, Any], str | None]:
        """What a worker process rebuilds this source from; refused for a ``Dataset`` held in memory.

        Raises:
            TypeError: If the source was built from an in-memory ``datasets.Dataset``
                (it would be pickled whole into every worker process).
        """
        recipe = super().worker_recipe()
        if recipe[2].get("dataset") is not None and not self._file_backed:
            raise TypeError(
                f"{_OWNER} was built from a datasets.Dataset held in memory, which would be copied whole into "
                "every worker process; save it with dataset.save_to_disk(folder) and build "
                "HFSource(config, path=folder), or use worker_kind='thread'"
            )
        return recipe


__all__ = ["HFSource", "HFSourceConfig"]

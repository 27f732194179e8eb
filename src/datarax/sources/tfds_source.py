"""``TFDSSource``: records of a TFDS dataset prepared in a local ``data_dir``, read by index on the host.

``pip install 'datarax[tfds]'`` (``tensorflow-datasets`` and ``array-record``;
TensorFlow is not needed to read). The dataset must already be prepared, with
``file_format="array_record"``, under ``data_dir``: TFDS writes it to
``{data_dir}/{name}/{version}/`` (``{data_dir}/{name}/{config}/{version}/``
for a builder config) when ``builder.download_and_prepare()`` runs. This
source never prepares or downloads anything: it opens that folder with
``tfds.builder_from_directory`` (which rebuilds the features from the
folder's ``features.json``, so the builder's code need not be importable)
and reads it through TFDS's ArrayRecord data source
(``builder.as_data_source(split, file_format="array_record")``).
``dataset_name`` is ``"mnist"``, ``"mnist:3.0.1"``, ``"my_set/small"`` or ``"my_set/small:1.0.0"``;
without a version the highest version prepared in ``data_dir`` is read.
``data_dir=None`` means TFDS's default (``$TFDS_DATA_DIR``, else
``~/tensorflow_datasets``); remote data dirs (``gs://...``) are refused.
Preparing is TFDS's business: it needs TensorFlow only for some features
(an ``Image`` given as a numpy array, which TFDS encodes with ``tf.image``;
``Audio``; ``Video``) and for ``file_format="tfrecord"``; a builder that yields
images as encoded bytes (or file paths, or PIL images) prepares without it.

**Random access.** ``read_records(indices)`` makes one batched read of the
ArrayRecord files (the data source's ``__getitems__``) and decodes the records
with TFDS's numpy decoders. Record ``i`` is the ``i``-th record of the split
as TFDS stored it (TFDS shuffles the examples by key when it prepares a
split, so this is usually not the order the builder generated them in); the
pipeline's own shuffle, epochs, workers and resumption apply on top. ``split``
takes TFDS's split syntax (``"train"``, ``"train[:80%]"``, ``"train+test"``).
Only the configured columns are returned; the other features are left
undecoded (``tfds.decode.SkipDecoding``) where TFDS allows it (not sequences
or nested dicts) and dropped. The data source is
thread-safe (ArrayRecord readers are), so worker threads share it.

**Column types.** Each selected feature's type decides its spec:

* ``Tensor`` / ``Scalar`` of a numeric or bool dtype, and ``Sequence`` of
  those: a fixed ``dtype[shape]`` column when the shape is fully known
  (``Tensor(shape=(3,), dtype=np.float32)`` is ``float32[3]``,
  ``Sequence(Scalar(np.int32), length=4)`` is ``int32[4]``), else
  ``RaggedSpec(dtype, ndim)``, one numpy array per record
  (``Sequence(Scalar(np.int32))`` is ``int32[?]``);
* ``ClassLabel``: a fixed ``int64[]`` column; the label names are in
  ``source.class_names[column]``;
* ``Text`` (and a string ``Tensor`` of shape ``()``): ``BytesSpec``, each
  record its UTF-8 bytes;
* ``Image``: ``BytesSpec`` of the *encoded* image (PNG, JPEG, ... as TFDS
  stored it), never decoded here, as ``HFSource`` reads images: decode it on
  the host stage with ``datarax.operators.DecodeImage`` (in worker threads or
  processes).

``Audio``, ``Video``, nested ``FeaturesDict`` features and sequences of
anything else are refused with a ``TypeError`` naming the column (leave them
out with ``TFDSSourceConfig(columns=...)``). TFDS builds ``Audio`` and
``Video`` features with TensorFlow, so without it a dataset that has one
cannot be opened at all, whichever columns are read. Every batch is checked against
the spec: a record of another shape is a ``ValueError`` naming the column and
the record.

**Worker processes.** ``Pipeline(worker_kind="process")`` rebuilds the source
in each worker from its constructor arguments (``worker_recipe``): ``name``,
``data_dir`` and ``split`` are strings, so each worker reopens the files.

**Local files.** With ``local_files_only=True`` a dataset missing from
``data_dir`` raises ``LocalFilesOnlyMixin``'s ``FileNotFoundError`` naming the
dataset and the folder to populate; with False it is a ``FileNotFoundError``
naming the folder too (there is nothing to download either way: prepare the
dataset first).

Example:
    >>> import shutil, tempfile
    >>> import numpy as np
    >>> import tensorflow_datasets as tfds
    >>> from datarax.core.spec import spec_to_str
    >>> class Squares(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    ...     VERSION = tfds.core.Version("1.0.0")
    ...     def _info(self):
    ...         return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
    ...             "x": np.int64, "tokens": tfds.features.Sequence(np.int32),
    ...             "parity": tfds.features.ClassLabel(names=["even", "odd"])}))
    ...     def _split_generators(self, dl_manager):
    ...         return {"train": self._generate_examples()}
    ...     def _generate_examples(self):
    ...         for i in range(5):
    ...             yield i, {"x": i * i, "tokens": list(range(i)), "parity": i % 2}
    >>> data_dir = tempfile.mkdtemp()
    >>> Squares(data_dir=data_dir, file_format="array_record").download_and_prepare()  # progress bars go to stderr
    Downloading and preparing dataset ...
    Dataset squares downloaded and prepared to .../squares/1.0.0. Subsequent calls will reuse this data.
    >>> config = TFDSSourceConfig(columns=("x", "tokens", "parity"))
    >>> source = TFDSSource(config, dataset_name="squares", data_dir=data_dir)
    >>> len(source), spec_to_str(source.element_spec()), source.class_names
    (5, "{'parity': int64[], 'tokens': int32[?], 'x': int64[]}", {'parity': ('even', 'odd')})
    >>> batch = source.get_records(np.arange(5))
    >>> sorted(batch["x"].tolist()), all(len(t) ** 2 == x for t, x in zip(batch["tokens"], batch["x"]))
    ([0, 1, 4, 9, 16], True)
    >>> shutil.rmtree(data_dir)
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import numpy as np
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.core.data_source import LocalFilesOnlyMixin
from datarax.core.extras import import_extra
from datarax.core.host_source import ColumnSelectionConfig, HostSourceModule, check_columns, check_indices
from datarax.core.spec import BytesSpec, RaggedSpec
from datarax.samplers.feistel import MAX_N

_OWNER = "TFDSSource"
# "name", "name/config", each optionally ":major.minor.patch"; what TFDS writes under data_dir.
_NAME = re.compile(r"^(?P<folder>[A-Za-z0-9_]+(?:/[A-Za-z0-9_.\-]+)?)(?::(?P<version>\d+\.\d+\.\d+))?$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_NUMERIC_KINDS = frozenset("biuf")


@dataclasses.dataclass(frozen=True)
class TFDSSourceConfig(ColumnSelectionConfig):
    """Configuration of ``TFDSSource``.

    Attributes:
        columns: The features to read, in order (a tuple of top-level feature
            names; a list is stored as a tuple), or None for every feature,
            in sorted order.
        local_files_only: If True, a dataset missing from ``data_dir`` raises
            the ``LocalFilesOnlyMixin`` error naming the dataset and the folder
            to populate. A missing dataset is a ``FileNotFoundError`` either
            way (nothing is downloaded or prepared).

    Raises:
        ValueError: If ``columns`` is not None or a non-empty sequence of
            distinct non-empty names, or ``local_files_only`` is not a bool.

    Example:
        >>> TFDSSourceConfig(columns=["image", "label"]).columns
        ('image', 'label')
    """


# --- features -> columns ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Column:
    """One selected feature: how its decoded values are read, and its spec.

    ``kind`` is ``"fixed"`` (``shape`` is the record's shape), ``"ragged"``
    (``shape`` is the record's shape with None where it varies) or ``"bytes"``.
    """

    name: str
    kind: str
    spec: Any
    shape: tuple[int | None, ...] = ()
    dtype: np.dtype | None = None


def _unsupported(name: str, feature: Any, why: str = "") -> TypeError:
    return TypeError(
        f"{_OWNER}: column {name!r} has feature {type(feature).__name__}{why}, which {_OWNER} cannot read; "
        "supported: Tensor/Scalar of a numeric or bool dtype and Sequence of those, ClassLabel, Text, Image "
        "(read as encoded bytes). Leave the column out with TFDSSourceConfig(columns=...)"
    )


def _column(features: Any, name: str, feature: Any) -> _Column:
    """The ``_Column`` for a top-level feature, or a ``TypeError`` naming the column and its feature."""
    if isinstance(feature, features.Audio | features.Video):
        raise _unsupported(name, feature, " (audio and video are not read yet)")
    if isinstance(feature, features.ClassLabel):
        return _Column(name, "fixed", jax.ShapeDtypeStruct((), np.int64), (), np.dtype(np.int64))
    if isinstance(feature, features.Image | features.Text):
        return _Column(name, "bytes", BytesSpec())
    if isinstance(feature, features.Sequence):
        inner = feature.feature
        while isinstance(inner, features.Sequence):
            inner = inner.feature
        if not isinstance(inner, features.Tensor) or isinstance(inner, features.Text | features.Audio):
            raise _unsupported(name, feature, f" of {type(inner).__name__}")
    elif not isinstance(feature, features.Tensor):
        raise _unsupported(name, feature)
    shape, dtype = feature.shape, np.dtype(feature.np_dtype)
    if not isinstance(shape, tuple):
        raise _unsupported(name, feature)
    if dtype.kind not in _NUMERIC_KINDS:
        if shape == () and dtype.kind in "OSU":
            return _Column(name, "bytes", BytesSpec())
        raise _unsupported(name, feature, f" of dtype {dtype} and shape {list(shape)}")
    if None in shape or -1 in shape:
        shape = tuple(None if size in (None, -1) else int(size) for size in shape)
        return _Column(name, "ragged", RaggedSpec(dtype, len(shape)), shape, dtype)
    shape = tuple(int(size) for size in shape)
    return _Column(name, "fixed", jax.ShapeDtypeStruct(shape, dtype), shape, dtype)


def _bad_record(name: str, index: int, what: str) -> ValueError:
    return ValueError(f"{_OWNER}: column {name!r}, record {index}: {what}")


def _array(column: _Column, value: Any, index: int) -> np.ndarray:
    """A decoded value as an array of the column's dtype, with its shape checked against the column's."""
    array = np.asarray(value)
    if array.size == 0 and array.ndim != len(column.shape):  # an empty sequence decodes to []
        array = array.reshape(tuple(0 if size is None else size for size in column.shape))
    fits = array.ndim == len(column.shape) and all(
        want is None or got == want for got, want in zip(array.shape, column.shape, strict=True)
    )
    if not fits or (array.dtype.kind not in _NUMERIC_KINDS and array.size):
        shown = ",".join("?" if size is None else str(size) for size in column.shape)
        raise _bad_record(
            column.name, index, f"is {array.dtype.name}{list(array.shape)}; the feature is {column.dtype}[{shown}]"
        )
    return array.astype(column.dtype, copy=False)


def _bytes(column: _Column, value: Any, index: int) -> bytes:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bytes | bytearray | memoryview | np.bytes_):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise _bad_record(column.name, index, f"is {type(value).__name__}; expected bytes")


# --- where the dataset is -------------------------------------------------------------------------


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _prepared_versions(folder: str) -> list[str]:
    """The versions prepared under a dataset folder (complete ones: with a ``dataset_info.json``), lowest first."""
    if not os.path.isdir(folder):
        return []
    versions = [
        entry
        for entry in os.listdir(folder)
        if _VERSION.match(entry) and os.path.isfile(os.path.join(folder, entry, "dataset_info.json"))
    ]
    return sorted(versions, key=_version_key)


class TFDSSource(LocalFilesOnlyMixin, HostSourceModule):
    """A host source over a split of a TFDS dataset prepared in ``data_dir`` (see the module docstring).

    Args:
        config: ``TFDSSourceConfig`` (the columns to read, ``local_files_only``).
        dataset_name: The dataset: ``"name"`` or ``"name/config"``, either
            with an optional ``":1.2.3"`` version (the highest prepared one
            without it).
        data_dir: The local folder the dataset was prepared in (``str`` or
            ``os.PathLike``); None for TFDS's default (``$TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``).
        split: The split to read, in TFDS's split syntax (``"train"``,
            ``"test[:10%]"``, ``"train+test"``).
        rngs: Optional random number generators.
        name: Optional module name.

    Raises:
        ImportError: If ``tensorflow_datasets`` or ``array_record`` is not
            installed (``pip install 'datarax[tfds]'``).
        TypeError: If ``config`` is not a ``TFDSSourceConfig``, an argument has
            the wrong type, or a selected feature cannot be read (named).
        ValueError: If ``dataset_name`` is malformed, ``data_dir`` is remote, ``split``
            is not in the dataset (its splits are listed), the dataset was not
            prepared as ArrayRecord, a configured column is missing (the
            available ones are listed) or named ``valid_mask``, or the split
            has no records.
        FileNotFoundError: If the dataset is not prepared in ``data_dir`` (the
            folder to populate is named).
    """

    def __init__(
        self,
        config: TFDSSourceConfig,
        *,
        dataset_name: str,
        data_dir: str | os.PathLike | None = None,
        split: str = "train",
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        if not isinstance(config, TFDSSourceConfig):
            raise TypeError(f"{_OWNER}: config must be a TFDSSourceConfig, got {type(config).__name__}")
        super().__init__(config, rngs=rngs, name=name)
        tfds = import_extra("tensorflow_datasets", extra="tfds", owner=_OWNER)
        import_extra("array_record", extra="tfds", owner=_OWNER)
        self.local_files_only = config.local_files_only
        if not isinstance(split, str) or not split:
            raise ValueError(f"{_OWNER}: split must be a non-empty str, got {split!r}")
        version_dir = self._find(tfds, dataset_name, data_dir)
        builder = tfds.builder_from_directory(version_dir)
        info = builder.info
        if "array_record" not in {str(getattr(f, "value", f)) for f in info.available_file_formats()}:
            raise ValueError(
                f"{_OWNER}: dataset {dataset_name!r} in {version_dir} was prepared as {info.file_format.value}; "
                "random access needs ArrayRecord files: prepare it with "
                "builder = ...(data_dir=..., file_format='array_record'); builder.download_and_prepare()"
            )
        features = info.features
        if not isinstance(features, tfds.features.FeaturesDict):
            raise TypeError(
                f"{_OWNER}: dataset {dataset_name!r} has features {type(features).__name__}; expected a FeaturesDict "
                "(one column per feature)"
            )
        # Sorted: the order of a FeaturesDict rebuilt from features.json varies from process to process.
        names = config.columns if config.columns is not None else tuple(sorted(features.keys()))
        missing = [column for column in names if column not in features]
        if missing:
            raise ValueError(
                f"{_OWNER}: columns {missing} are not features of dataset {dataset_name!r}; its features are "
                f"{sorted(features.keys())}"
            )
        if VALID_MASK in names:
            raise ValueError(
                f"{_OWNER}: column name {VALID_MASK!r} is reserved for batches; leave it out with "
                "TFDSSourceConfig(columns=...)"
            )
        self._columns = tuple(_column(tfds.features, column, features[column]) for column in names)
        self.class_names = {
            column: tuple(features[column].names)
            for column in names
            if isinstance(features[column], tfds.features.ClassLabel)
        }
        # Images stay encoded, and features not read are not decoded (TFDS cannot skip decoding a sequence
        # or a nested dict: those are decoded, then dropped).
        nested = tfds.features.Sequence | tfds.features.FeaturesDict
        decoders = {
            key: tfds.decode.SkipDecoding()
            for key, feature in features.items()
            if isinstance(feature, tfds.features.Image) or (key not in names and not isinstance(feature, nested))
        }
        try:
            data = builder.as_data_source(split, decoders=decoders or None, file_format="array_record")
        except (ValueError, KeyError, AssertionError) as error:
            raise ValueError(
                f"{_OWNER}: split {split!r} cannot be read from dataset {dataset_name!r}; its splits are "
                f"{sorted(info.splits.keys())} ({str(error).strip()})"
            ) from error
        size = len(data)
        if not 1 <= size <= MAX_N:
            raise ValueError(
                f"{_OWNER}: split {split!r} of dataset {dataset_name!r} has {size} records; expected between 1 "
                "and 2**31"
            )
        self.num_records = int(size)
        self.dataset_dir = version_dir
        # A plain tuple holding the data source keeps NNX from walking it as part of the module's graph.
        self._data = (data,)
        self.read_records(np.zeros(1, np.int64))  # record 0 fits the spec

    def _find(self, tfds: Any, name: Any, data_dir: Any) -> str:
        """The folder of the prepared version of dataset ``name`` in ``data_dir`` (see the class docstring)."""
        match = _NAME.match(name) if isinstance(name, str) else None
        if match is None:
            raise ValueError(
                f"{_OWNER}: dataset_name must be a TFDS dataset name such as 'mnist', 'mnist:3.0.1' or "
                f"'my_set/config', got {name!r}"
            )
        if data_dir is None:
            data_dir = tfds.core.constants.DATA_DIR
        if not isinstance(data_dir, str | os.PathLike):
            raise TypeError(f"{_OWNER}: data_dir must be a str or os.PathLike folder, got {type(data_dir).__name__}")
        data_dir = os.path.expanduser(os.fspath(data_dir))
        if "://" in data_dir:
            raise ValueError(f"{_OWNER}: data_dir must be a local folder (nothing is downloaded), got {data_dir!r}")
        folder = os.path.join(data_dir, match["folder"])
        version = match["version"]
        if version is None:
            versions = _prepared_versions(folder)
            version_dir = os.path.join(folder, versions[-1]) if versions else folder
        else:
            version_dir = os.path.join(folder, version)
        info_file = os.path.join(version_dir, "dataset_info.json")
        if os.path.isfile(info_file):
            return version_dir
        expected = version_dir if version is not None else os.path.join(folder, "<version>")
        # The folder TFDS would write; "<version>" when none is prepared (it never exists, so it is listed).
        self._check_local_cache([os.path.join(expected, "dataset_info.json")], dataset_name=name)
        prepared = _prepared_versions(folder)
        found = f"; prepared versions there: {prepared}" if prepared else ""
        raise FileNotFoundError(
            f"{_OWNER}: dataset {name!r} is not prepared in {data_dir}: {expected} holds no dataset_info.json"
            f"{found}. {_OWNER} never downloads or prepares: run the builder's "
            "download_and_prepare(file_format='array_record') with this data_dir first"
        )

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
        """Reads and decodes the records at ``indices``.

        Args:
            indices: 1-D integer array of record numbers in ``[0, len(self))``,
                in any order, repeats allowed.

        Returns:
            Column name to a numpy array with leading axis ``len(indices)``
            (fixed columns), or a list with one ``bytes`` / numpy array per index.

        Raises:
            TypeError: If ``indices`` is not a 1-D integer array.
            IndexError: If an index is out of range.
            ValueError: If a record does not fit its column's spec (the column
                and record are named).
        """
        positions = check_indices(_OWNER, indices, self.num_records).tolist()
        records = self._data[0].__getitems__(positions) if positions else []
        out: dict[str, np.ndarray | list] = {}
        for column in self._columns:
            values = [record[column.name] for record in records]
            if column.kind == "bytes":
                out[column.name] = [_bytes(column, value, index) for value, index in zip(values, positions)]
            elif column.kind == "ragged":
                out[column.name] = [_array(column, value, index) for value, index in zip(values, positions)]
            else:
                batch = np.empty((len(values), *column.shape), column.dtype)
                for row, (value, index) in enumerate(zip(values, positions)):
                    batch[row] = _array(column, value, index)
                out[column.name] = batch
        check_columns(_OWNER, out, self.element_spec(), len(positions))
        return out


__all__ = ["TFDSSource", "TFDSSourceConfig"]

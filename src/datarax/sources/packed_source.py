"""``PackedSequenceSource``: variable-length token lists packed first-fit into fixed-length rows.

Language-model batches waste little on padding when several short sequences
share one row. This host source wraps another host source with a column of
1-D token arrays of varying length (a ``RaggedSpec`` column, as
``HFSource`` gives for a ``List(Value("int32"))`` feature) and presents
*packed rows* as its records. Row ``i`` has three ``int32[length]`` columns:

* ``tokens`` (named after ``config.field``): the tokens of the row's
  sequences one after the other, then ``pad_value``;
* ``segment_ids``: ``1, 2, ..., k`` for the row's ``k`` sequences, 0 on padding
  (so ``segment_ids > 0`` is the padding mask and ``segment_ids[i] ==
  segment_ids[j]`` the block-diagonal attention mask);
* ``positions``: ``0, 1, ...`` within each sequence, 0 on padding.

**The packing: deterministic first-fit, computed once.** At construction the
source reads the length of every record of the wrapped source (see "Cost"),
then visits the records in index order (``seed=None``) or in the order of a
fixed permutation of them (``seed`` an int: the Feistel permutation
``feistel_permute_np(arange(n), n, seed, 0)``, the one the pipeline's
shuffle uses), and puts each into the first row, lowest index first, that
still has room for it, opening a new row when none has. Records without
tokens are left out (they have nothing to pack). A record longer than
``length`` is truncated to its first ``length`` tokens (``overlong="truncate"``),
left out (``"drop"``) or refused at construction (``"error"``). Within a row
the sequences keep the order in which they were placed. Finding the first
row with room is a walk down a max-tree over the rows' free space, so the
packing costs ``O(n log n)``: about 2 s in Python for a million records of
up to 1,500 tokens in rows of 2,048, on a shared 2-core VM.

**Rows are records, so everything else comes for free.** The packing is a
pure function of the wrapped source's lengths and the config, and
``read_records(rows)`` reads exactly the constituent records from the
wrapped source (one ``read_records`` call per batch). So the pipeline
gives exact epochs over the packed rows (every token of every kept record
appears exactly once per epoch, in one row), shuffles rows with its Feistel
permutation, resumes exactly from ``get_state``, and runs with any number
of worker threads or processes, all without knowing it reads packed
sequences. The packing itself does not change from epoch to epoch (the
pipeline's shuffle only reorders rows); build the source with another
``seed`` for another packing.

**Cost.** Construction reads the whole token column once: ``n`` records
through the wrapped source's ``read_records``, in chunks of 4096, keeping
only each record's length (``int64``, 8 bytes a record). For a large dataset
that is a full pass over the data; give ``lengths=`` (e.g. ``packed.lengths``
saved from an earlier run, or a length column computed when the dataset was
written) to skip it. The packing keeps about 16 bytes per record. A worker
process rebuilds the source from ``worker_recipe``, which carries the
lengths, so workers repeat the packing but never the reading pass.

Example:
    >>> import jax, numpy as np
    >>> from datarax.core.config import StructuralConfig
    >>> from datarax.core.host_source import HostSourceModule
    >>> from datarax.core.spec import RaggedSpec
    >>> class Documents(HostSourceModule):  # record r holds r + 1 tokens, all equal to 10 * r
    ...     def __len__(self):
    ...         return 4
    ...     def element_spec(self):
    ...         return {"tokens": RaggedSpec(np.int32, 1)}
    ...     def read_records(self, indices):
    ...         return {"tokens": [np.full(r + 1, 10 * r, np.int32) for r in indices.tolist()]}
    >>> packed = PackedSequenceSource(PackedSequenceSourceConfig(length=5), source=Documents(StructuralConfig()))
    >>> len(packed), packed.lengths.tolist()  # first fit: records 0 and 1 share row 0; 2 and 3 take a row each
    (3, [1, 2, 3, 4])
    >>> row = packed.get_records([0])
    >>> row["tokens"][0].tolist(), row["segment_ids"][0].tolist(), row["positions"][0].tolist()
    ([0, 10, 10, 0, 0], [1, 2, 2, 0, 0], [0, 0, 1, 0, 0])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from datarax.core.config import StructuralConfig
from datarax.core.constructor_args import from_recipe
from datarax.core.host_source import HostSourceModule, check_indices
from datarax.core.spec import RaggedSpec, spec_to_str
from datarax.core.validation import is_int
from datarax.samplers.feistel import MAX_N, feistel_permute_np

_OWNER = "PackedSequenceSource"
_OVERLONG = ("truncate", "drop", "error")
_INT32 = np.iinfo(np.int32)
# Records per read_records call while reading the lengths at construction.
_LENGTH_CHUNK = 4096
SEGMENT_IDS = "segment_ids"
POSITIONS = "positions"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackedSequenceSourceConfig(StructuralConfig):
    """Configuration of ``PackedSequenceSource``.

    Attributes:
        length: Tokens per packed row (required), a positive int.
        field: The wrapped source's column of 1-D integer token arrays; the
            packed tokens keep this name.
        seed: None packs the records in index order; an int packs them in the
            order of the Feistel permutation of this seed (so which records
            share a row is mixed; see the module docstring).
        overlong: What happens to a record longer than ``length``:
            ``"truncate"`` (its first ``length`` tokens fill a row of their own),
            ``"drop"`` (left out) or ``"error"`` (a ``ValueError`` at construction).
        pad_value: The token id of padding, an int32.

    Raises:
        ValueError: If ``length`` is not a positive int32, ``field`` is not a
            non-empty string other than ``"segment_ids"`` and ``"positions"``,
            ``seed`` is not an int or None, ``overlong`` is not one of the three
            choices, or ``pad_value`` is not an int32.

    Example:
        >>> PackedSequenceSourceConfig(length=2048, field="input_ids", seed=3).overlong
        'truncate'
    """

    length: int
    field: str = "tokens"
    seed: int | None = None
    overlong: str = "truncate"
    pad_value: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if not is_int(self.length) or not 1 <= self.length <= _INT32.max:
            raise ValueError(f"{name}: length must be a positive int (at most 2**31 - 1), got {self.length!r}")
        object.__setattr__(self, "length", int(self.length))
        if not isinstance(self.field, str) or not self.field or self.field in (SEGMENT_IDS, POSITIONS):
            raise ValueError(
                f"{name}: field must be a non-empty string other than {SEGMENT_IDS!r} and {POSITIONS!r} "
                f"(the names of the other output columns), got {self.field!r}"
            )
        if self.seed is not None:
            if not is_int(self.seed):
                raise ValueError(f"{name}: seed must be an int or None, got {self.seed!r}")
            object.__setattr__(self, "seed", int(self.seed))
        if self.overlong not in _OVERLONG:
            raise ValueError(f"{name}: overlong must be one of {_OVERLONG}, got {self.overlong!r}")
        if not is_int(self.pad_value) or not _INT32.min <= self.pad_value <= _INT32.max:
            raise ValueError(f"{name}: pad_value must be an int32, got {self.pad_value!r}")
        object.__setattr__(self, "pad_value", int(self.pad_value))


def first_fit(lengths: Sequence[int] | np.ndarray, capacity: int) -> np.ndarray:
    """The row each item goes to when items are placed, in order, into the first row with room.

    Rows hold ``capacity`` each. A max-tree over the rows' free space finds the
    first row with room in ``O(log n)``; the tree has a leaf per item, so a
    fresh row is always available.

    Args:
        lengths: The items' sizes, each in ``[1, capacity]``.
        capacity: The size of a row.

    Returns:
        int64 row numbers, one per item; rows are numbered in the order they are opened.

    Example:
        >>> first_fit([3, 4, 2, 1, 5], capacity=5).tolist()
        [0, 1, 0, 1, 2]
    """
    sizes = [int(size) for size in np.asarray(lengths, dtype=np.int64).tolist()]
    leaves = 1
    while leaves < max(len(sizes), 1):
        leaves *= 2
    tree = [capacity] * (2 * leaves)  # tree[node]: the most free space of a row under node
    rows = np.empty(len(sizes), dtype=np.int64)
    for item, size in enumerate(sizes):
        node = 1
        while node < leaves:
            node = 2 * node if tree[2 * node] >= size else 2 * node + 1
        rows[item] = node - leaves
        tree[node] -= size
        node //= 2
        while node:
            most = max(tree[2 * node], tree[2 * node + 1])
            if tree[node] == most:
                break  # the ancestors' maxima do not change either
            tree[node] = most
            node //= 2
    return rows


class _Packing:
    """The packed rows as flat arrays (a plain object: NNX would treat arrays on the module as graph data).

    ``records[row_start[r]:row_start[r + 1]]`` are row ``r``'s records in
    order; ``lengths`` every record's token count; ``takes`` how many tokens of each are packed (all of them unless
    truncated); ``row_used[r]`` the tokens row ``r`` holds.
    """

    def __init__(self, lengths: np.ndarray, order: np.ndarray, capacity: int, overlong: str):
        self.lengths = lengths
        takes = lengths[order]
        keep = takes > 0
        if overlong == "drop":
            keep &= takes <= capacity
        order = order[keep]
        takes = np.minimum(takes[keep], capacity)
        rows = first_fit(takes, capacity)
        by_row = np.argsort(rows, kind="stable")  # rows in order, each row's records in placement order
        self.records = order[by_row].astype(np.int64)
        self.takes = takes[by_row].astype(np.int64)
        num_rows = int(rows.max()) + 1 if rows.size else 0
        counts = np.bincount(rows, minlength=num_rows)
        self.row_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.row_used = np.bincount(rows, weights=takes, minlength=num_rows).astype(np.int64)
        self.num_rows = num_rows


class _RecordLengths:
    """The lengths a ``worker_recipe`` carries: an array behind an opaque, picklable object.

    A pipeline keeps the recipe as a static attribute, where NNX refuses arrays
    (and would hash a tuple of a million ints); ``np.asarray`` reads it back.
    """

    def __init__(self, values: np.ndarray):
        self.values = values

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.values if dtype is None else self.values.astype(dtype)

    def __len__(self) -> int:
        return len(self.values)


def _is_recipe(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 4 and isinstance(value[0], type)


def _token_column(source: HostSourceModule, field: str) -> Any:
    """The wrapped source's spec of ``field``, checked to be 1-D integer tokens."""
    spec = source.element_spec()
    if field not in spec:
        raise ValueError(
            f"{_OWNER}: the source ({type(source).__name__}) has no column {field!r}; its columns are {sorted(spec)}"
        )
    leaf = spec[field]
    if isinstance(leaf, RaggedSpec):
        ok = leaf.ndim == 1 and leaf.dtype.kind in "iu"
    else:
        ok = isinstance(leaf, jax.ShapeDtypeStruct) and len(leaf.shape) == 1 and np.dtype(leaf.dtype).kind in "iu"
    if not ok:
        raise ValueError(
            f"{_OWNER}: column {field!r} of {type(source).__name__} is {spec_to_str(leaf)}; expected 1-D integer "
            "token arrays (a RaggedSpec(int, 1) column, or a fixed int[n] one)"
        )
    return leaf


class PackedSequenceSource(HostSourceModule):
    """Packed rows of a host source's variable-length token column (see the module docstring).

    Args:
        config: A ``PackedSequenceSourceConfig``.
        source: The wrapped host source (or its ``worker_recipe()``, which a
            worker process rebuilds it from); ``config.field`` must be a
            column of 1-D integer token arrays. Its other columns are not read
            into the rows.
        lengths: The token count of every record of ``source`` (before
            truncation), if known; None reads them from the source once (a
            full pass over it, see "Cost").
        rngs: Optional random number generators.
        name: Optional module name.

    Raises:
        TypeError: If ``config`` is not a ``PackedSequenceSourceConfig`` or
            ``source`` is not a host source.
        ValueError: If ``config.field`` is not a 1-D integer column of the
            source, ``lengths`` does not hold one non-negative int per record,
            the source has no tokens at all, more than ``2**31`` rows would be
            needed, or (``overlong="error"``) a record is longer than ``length``.

    Example:
        >>> import datasets, numpy as np
        >>> from datarax.sources import HFSource, HFSourceConfig
        >>> features = datasets.Features({"tokens": datasets.List(datasets.Value("int32"))})
        >>> data = datasets.Dataset.from_dict({"tokens": [[1, 2, 3], [4, 5], [6, 7, 8, 9]]}, features=features)
        >>> packed = PackedSequenceSource(PackedSequenceSourceConfig(length=6), source=HFSource(HFSourceConfig(),
        ...                               dataset=data))
        >>> rows = packed.get_records(np.arange(len(packed)))
        >>> rows["tokens"].tolist(), rows["segment_ids"].tolist()
        ([[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0]], [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
        >>> packed.fill  # share of the rows' tokens that are not padding
        0.75
    """

    def __init__(
        self,
        config: PackedSequenceSourceConfig,
        *,
        source: HostSourceModule,
        lengths: Sequence[int] | np.ndarray | None = None,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        if not isinstance(config, PackedSequenceSourceConfig):
            raise TypeError(f"{_OWNER}: config must be a PackedSequenceSourceConfig, got {type(config).__name__}")
        super().__init__(config, rngs=rngs, name=name)
        if _is_recipe(source):
            source = from_recipe(source)
        if not isinstance(source, HostSourceModule):
            raise TypeError(
                f"{_OWNER}: source must be a HostSourceModule (records read on the host), got {type(source).__name__}"
            )
        _token_column(source, config.field)
        n = len(source)
        if n > MAX_N:
            raise ValueError(f"{_OWNER}: the source has {n} records, more than 2**31")
        self.source = source
        lengths = self._checked_lengths(lengths, n) if lengths is not None else self._read_lengths(n)
        too_long = np.flatnonzero(lengths > config.length)
        if config.overlong == "error" and too_long.size:
            first = int(too_long[0])
            raise ValueError(
                f"{_OWNER}: record {first} of {type(source).__name__} has {int(lengths[first])} tokens, more "
                f"than length={config.length} ({too_long.size} records do); set overlong='truncate' or 'drop'"
            )
        order = np.arange(n, dtype=np.int64)
        if config.seed is not None and n:
            order = feistel_permute_np(order, n, config.seed, 0)
        self._packing = _Packing(lengths, order, config.length, config.overlong)
        if self._packing.num_rows == 0:
            raise ValueError(f"{_OWNER}: the source ({type(source).__name__}) holds no tokens to pack (n={n})")
        if self._packing.num_rows > MAX_N:
            raise ValueError(f"{_OWNER}: the packing needs {self._packing.num_rows} rows, more than 2**31")
        self.truncated_records = int(too_long.size) if config.overlong == "truncate" else 0
        self.dropped_records = int(too_long.size) if config.overlong == "drop" else 0

    # -- construction -----------------------------------------------------------

    def _checked_lengths(self, lengths: Any, n: int) -> np.ndarray:
        array = np.asarray(lengths)
        if array.shape != (n,) or (n and (array.dtype.kind not in "iu" or array.min() < 0)):
            raise ValueError(
                f"{_OWNER}: lengths must hold one non-negative int per record of the source ({n}), got "
                f"{array.dtype}{list(array.shape)}"
            )
        return array.astype(np.int64)

    def _read_lengths(self, n: int) -> np.ndarray:
        """Every record's token count, read from the source in chunks (see "Cost" in the module docstring)."""
        field = self.config.field
        lengths = np.empty(n, dtype=np.int64)
        for start in range(0, n, _LENGTH_CHUNK):
            indices = np.arange(start, min(start + _LENGTH_CHUNK, n), dtype=np.int64)
            column = self.source.read_records(indices)[field]
            if isinstance(column, np.ndarray) and column.ndim == 2:
                lengths[indices] = column.shape[1]
            else:
                lengths[indices] = [np.shape(value)[0] for value in column]
        return lengths

    # -- the source ---------------------------------------------------------------

    def __len__(self) -> int:
        return self._packing.num_rows

    def element_spec(self) -> dict[str, Any]:
        """One packed row: ``config.field`` (the tokens), ``segment_ids``, ``positions``, all ``int32[length]``."""
        row = jax.ShapeDtypeStruct((self.config.length,), np.int32)
        return {self.config.field: row, SEGMENT_IDS: row, POSITIONS: row}

    @property
    def lengths(self) -> np.ndarray:
        """The token count of every record of the wrapped source, before truncation (a copy, int64)."""
        return self._packing.lengths.copy()

    @property
    def fill(self) -> float:
        """The share of the rows' ``len(self) * length`` token slots that hold tokens (not padding)."""
        return float(self._packing.row_used.sum()) / (self._packing.num_rows * self.config.length)

    def row_records(self, row: int) -> list[int]:
        """The wrapped source's records packed into ``row``, in the order they appear in it."""
        index = int(check_indices(_OWNER, [row], len(self))[0])
        packing = self._packing
        return packing.records[packing.row_start[index] : packing.row_start[index + 1]].tolist()

    def read_records(self, indices: np.ndarray) -> dict[str, Any]:
        """Reads packed rows: their records from the wrapped source (one call), laid out in the rows.

        Args:
            indices: 1-D integer array of row indices in ``[0, len(self))``.

        Returns:
            ``{field, "segment_ids", "positions"}``, each ``int32[len(indices), length]``.

        Raises:
            TypeError: If ``indices`` is not a 1-D integer array.
            IndexError: If an index is out of range.
            ValueError: If a record's tokens are not the length found at
                construction (the source changed) or hold an id outside int32.
        """
        indices = check_indices(_OWNER, indices, len(self))
        config, packing = self.config, self._packing
        length, count = config.length, len(indices)
        starts = packing.row_start[indices]
        per_row = packing.row_start[indices + 1] - starts
        total = int(per_row.sum())
        # The segments of the asked rows, in row order: row_start[row] + 0, 1, ..., per_row - 1.
        first_of_row = np.cumsum(per_row) - per_row
        segment = np.repeat(starts - first_of_row, per_row) + np.arange(total, dtype=np.int64)
        records, takes = packing.records[segment], packing.takes[segment]
        column = self.source.read_records(records)[config.field]
        pieces = []
        for record, value, take in zip(records.tolist(), column, takes.tolist(), strict=True):
            value = np.asarray(value)
            if value.shape[0] != self._packing.lengths[record]:
                raise ValueError(
                    f"{_OWNER}: record {record} of {type(self.source).__name__} now has {value.shape[0]} tokens, "
                    f"but {int(self._packing.lengths[record])} when the packing was made; the source changed"
                )
            pieces.append(value[:take])
        flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
        if flat.dtype.itemsize >= 4 and flat.size and (flat.min() < _INT32.min or flat.max() > _INT32.max):
            raise ValueError(f"{_OWNER}: column {config.field!r} holds token ids outside int32")
        # Each row's tokens fill a prefix of it, so its token slots in row-major order are the pieces in order.
        filled = np.arange(length)[None, :] < packing.row_used[indices][:, None]
        tokens = np.full((count, length), config.pad_value, dtype=np.int32)
        tokens[filled] = flat
        segment_ids = np.zeros((count, length), dtype=np.int32)
        segment_ids[filled] = np.repeat(segment - np.repeat(starts, per_row) + 1, takes)
        positions = np.zeros((count, length), dtype=np.int32)
        piece_start = np.cumsum(takes) - takes
        positions[filled] = np.arange(int(takes.sum()), dtype=np.int64) - np.repeat(piece_start, takes)
        return {config.field: tokens, SEGMENT_IDS: segment_ids, POSITIONS: positions}

    def worker_recipe(self) -> tuple[type, Any, dict[str, Any], str | None]:
        """``(PackedSequenceSource, config, {source recipe, lengths}, name)``: a worker skips the reading pass."""
        arguments = {"source": self.source.worker_recipe(), "lengths": _RecordLengths(self._packing.lengths)}
        return type(self), self.config, arguments, self.name

    def close(self) -> None:
        """Closes the wrapped source's files (a later read reopens them)."""
        self.source.close()


__all__ = ["PackedSequenceSource", "PackedSequenceSourceConfig", "first_fit"]

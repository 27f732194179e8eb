"""``MixSource``: one host source drawing from several host sources in fixed proportions.

A mixture is itself a host source: index ``i`` of the mixture is a pure
function of ``i``, so the pipeline shuffles, batches, splits among workers and
resumes a mixture exactly like any other source, and the proportions hold
exactly over every epoch.

**Which source an index belongs to: a weighted interleave with exact counts.**
The weights are normalised to ``w_j`` (summing to 1). The sources are the
leaves of a balanced binary tree; each inner node splits the indices that reach
it between its two subtrees in the proportion ``p`` of the right subtree's
weight to the node's: of the node's first ``t`` indices, the right subtree
gets exactly ``floor(t * p + 1/2)`` and the left one the rest. Index ``t`` of a
node therefore goes right exactly when that count grows from ``t`` to
``t + 1``, and becomes index ``floor(t * p + 1/2)`` (right) or
``t - floor(t * p + 1/2)`` (left) of the child. Following one index from the
root to a leaf gives its source ``j`` and its *draw number* ``k``: the number
of the mixture's indices before ``i`` that belong to ``j`` (``locate`` returns
both, for a whole vector of indices at once, in numpy). Hence:

* the counts are integers and add up exactly: of the indices ``[0, i)``,
  source ``j`` gets ``c_j(i)`` and ``sum_j c_j(i) = i`` for every ``i``;
* they stay close to the weights: ``|c_j(i) - i * w_j| < 1`` for up to four
  sources (each level of the tree adds at most half a record, scaled down by
  the levels below it; for ``m`` sources the bound is ``ceil(log2(m)) / 2``);
* the sources are evenly spread along the indices (a Beatty sequence per
  node), and the pipeline's Feistel shuffle then permutes the indices anyway.

**Which record a draw reads: each source's own exact epochs.** Draw ``k`` of
source ``j`` (of ``n_j`` records) reads record
``feistel_permute_np(k % n_j, n_j, seed_j, k // n_j)``, with ``seed_j`` derived
from ``config.seed`` and ``j``. Every ``n_j`` consecutive draws of a source are
one permutation of all its records (an "own epoch" of that source), whatever
the other sources do.

**What an epoch of the mixture is.** ``len(mix)`` is ``config.length`` when
given; by default it is the smallest length at which every source has
completed at least one own epoch (``c_j(len) >= n_j`` for every ``j``; about
``max_j n_j / w_j``). One pass over the mixture then reads every record of
every source at least once; the source that sets the length reads each of its
records exactly once, and every other source makes more draws than it has
records (about ``len * w_j``): its first own epoch and part of its next ones. The indices are a
pure function, so every pass of the pipeline over the mixture reads the same
records, in a new order: the records a source repeats within one pass are the
same in every pass. To change that, set ``length`` (a longer mixture reaches
further into each source's own epochs) or ``seed``. A ``length`` shorter than
the default leaves some records of some sources out of every pass.

**Speed.** ``read_records`` makes one ``read_records`` call per source
present in the batch. Finding the sources is a few numpy operations per tree
level (0.03 ms for 256 indices); finding the records takes one Feistel
permutation per own epoch present, and one ``feistel_permute_np`` call costs
0.1 ms for one position and 0.35-1.3 ms for 256 (its cycle-walking stragglers
take several passes). So each own epoch's permutation is materialised (int32,
1.2 ms for 50,000 records) the first time it is needed and kept, as long as
all the own epochs one pass over the mixture reaches hold at most ``2**22``
records (16 MiB); larger mixtures compute the permutation per call. Measured
on a 2-core VM, batches of 256 random indices over two ``.npy`` sources of
``uint8[32,32,3]`` records (50,000 and 20,000 records, weights 0.7/0.3): 0.34 ms
per batch (2.1 ms computing the permutations per call), against 0.10 ms for
one ``NumpyFileSource`` alone.

**Sources.** Any ``HostSourceModule`` with the same ``element_spec``
(compared as ``spec_to_str`` renders them; the error names both). Device
sources (``MemorySource``) are refused: their records live on the device and
are gathered inside the compiled step; save their arrays with ``np.save`` and
read them with ``NumpyFileSource`` instead. Worker processes rebuild every
source from its own ``worker_recipe`` (reopening its files), so a mixture runs
in process workers whenever its sources do.

Example:
    >>> import os, shutil, tempfile
    >>> import numpy as np
    >>> from datarax.sources import NumpyFileSource, NumpyFileSourceConfig
    >>> folder = tempfile.mkdtemp()
    >>> def npy_source(name, values):
    ...     path = os.path.join(folder, name + ".npy")
    ...     np.save(path, np.asarray(values))
    ...     return NumpyFileSource(NumpyFileSourceConfig(), paths={"x": path})
    >>> small, large = npy_source("small", [100, 101]), npy_source("large", np.arange(6))
    >>> mix = MixSource(MixSourceConfig(weights=(1, 3)), sources=[small, large])
    >>> len(mix)  # the smallest length holding an own epoch of both sources
    8
    >>> which, draw = mix.locate(np.arange(len(mix)))
    >>> which.tolist()  # source 1 gets 3 of every 4 indices
    [1, 1, 0, 1, 1, 1, 0, 1]
    >>> sorted(mix.get_records(np.arange(len(mix)))["x"].tolist())
    [0, 1, 2, 3, 4, 5, 100, 101]
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import nnx

from datarax.core.config import StructuralConfig
from datarax.core.constructor_args import from_recipe
from datarax.core.host_source import HostSourceModule, check_indices, empty_columns
from datarax.core.spec import spec_to_str
from datarax.core.validation import is_int
from datarax.samplers.feistel import MAX_N, feistel_permute_np

_OWNER = "MixSource"
# The most record numbers a mixture keeps materialised (int32: 16 MiB); see "Speed" in the module docstring.
_CACHE_ENTRIES = 2**22


@dataclasses.dataclass(frozen=True)
class MixSourceConfig(StructuralConfig):
    """Configuration of ``MixSource``.

    Attributes:
        weights: One positive, finite weight per source, in the order of
            ``sources`` (normalised to sum to 1; stored as a tuple of floats).
        seed: Seeds each source's own permutations (an int of any size).
        length: The mixture's length (see "What an epoch of the mixture is"
            in the module docstring); None: the smallest length at which every
            source has completed one own epoch. At most ``2**31``.

    Raises:
        ValueError: If ``weights`` is empty or holds a value that is not a
            positive finite number, ``seed`` is not an int, or ``length`` is
            not a positive int at most ``2**31`` or None.

    Example:
        >>> MixSourceConfig(weights=[7, 3]).weights
        (7.0, 3.0)
    """

    weights: Sequence[float] = ()
    seed: int = 0
    length: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        weights = self.weights
        if isinstance(weights, str | bytes) or not isinstance(weights, Sequence) or not weights:
            raise ValueError(f"{name}: weights must be a non-empty sequence of positive numbers, got {weights!r}")
        checked = []
        for position, weight in enumerate(weights):
            number = None
            if not isinstance(weight, bool | np.bool_) and isinstance(weight, int | float | np.integer | np.floating):
                number = float(weight)
            if number is None or not math.isfinite(number) or number <= 0:
                raise ValueError(f"{name}: weights[{position}] is {weight!r}; expected a positive finite number")
            checked.append(number)
        object.__setattr__(self, "weights", tuple(checked))
        if not is_int(self.seed):
            raise ValueError(f"{name}: seed must be an int, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if self.length is not None:
            if not is_int(self.length) or not 1 <= self.length <= MAX_N:
                raise ValueError(f"{name}: length must be None or an int in [1, 2**31], got {self.length!r}")
            object.__setattr__(self, "length", int(self.length))


class _Interleave:
    """The balanced tree that assigns mixture indices to sources (see the module docstring).

    A plain object, not module attributes: NNX would treat its arrays as part of the module's graph.
    Inner node ``n`` sends ``floor(t * share[n] + 1/2)`` of its first ``t`` indices to ``right[n]``
    and the rest to ``left[n]``; a child ``c < 0`` is the leaf of source ``-c - 1``.
    """

    def __init__(self, weights: Sequence[float]):
        self.num_sources = len(weights)
        share: list[float] = []
        left: list[int] = []
        right: list[int] = []

        def build(sources: list[int]) -> int:
            if len(sources) == 1:
                return -sources[0] - 1
            node = len(share)
            share.append(0.0)
            left.append(0)
            right.append(0)
            half = len(sources) // 2
            total = math.fsum(weights[j] for j in sources)
            share[node] = math.fsum(weights[j] for j in sources[half:]) / total
            left[node] = build(sources[:half])
            right[node] = build(sources[half:])
            return node

        self.root = build(list(range(self.num_sources)))
        self.share = np.asarray(share, dtype=np.float64)
        self.left = np.asarray(left, dtype=np.int64)
        self.right = np.asarray(right, dtype=np.int64)

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(source, draw)`` of each index: which source it belongs to and how many of its indices come before."""
        draw = np.array(indices, dtype=np.int64, copy=True)
        node = np.full(draw.shape, self.root, dtype=np.int64)
        active = np.flatnonzero(node >= 0)
        while active.size:
            at = node[active]
            share = self.share[at]
            position = draw[active]
            before = np.floor(position * share + 0.5).astype(np.int64)
            goes_right = np.floor((position + 1) * share + 0.5).astype(np.int64) > before
            draw[active] = np.where(goes_right, before, position - before)
            child = np.where(goes_right, self.right[at], self.left[at])
            node[active] = child
            active = active[child >= 0]
        return -node - 1, draw

    def counts(self, total: int) -> np.ndarray:
        """``c_j(total)``: how many of the indices ``[0, total)`` each source gets."""
        counts = np.zeros(self.num_sources, dtype=np.int64)
        pending = [(self.root, int(total))]
        while pending:
            node, size = pending.pop()
            if node < 0:
                counts[-node - 1] = size
                continue
            to_right = int(np.floor(np.float64(size) * self.share[node] + 0.5))
            pending += [(int(self.right[node]), to_right), (int(self.left[node]), size - to_right)]
        return counts


def _source_seed(seed: int, source: int) -> int:
    """The seed of source ``source``'s own permutations, derived from the mixture's seed."""
    return int(np.random.SeedSequence([seed % 2**32, source]).generate_state(1, np.uint32)[0])


class _OwnEpochs:
    """The records read by each source's draws: ``feistel_permute_np(k % n_j, n_j, seed_j, k // n_j)``.

    With ``cached``, each own epoch's permutation is materialised once (int32) on first use and kept:
    a ``feistel_permute_np`` call for a batch costs 0.35-1.3 ms (cycle-walking stragglers take several
    passes), a gather from a kept permutation microseconds. A plain object, shared by the threads
    that read the source; copies and pickles drop the kept permutations.
    """

    def __init__(self, lengths: tuple[int, ...], seeds: tuple[int, ...], cached: bool):
        self.lengths, self.seeds, self.cached = lengths, seeds, cached
        self._lock = threading.Lock()
        self._kept: dict[tuple[int, int], np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"lengths": self.lengths, "seeds": self.seeds, "cached": self.cached}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["lengths"], state["seeds"], state["cached"])

    def _permutation(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        kept = self._kept.get(key)
        if kept is None:
            size = self.lengths[source]
            everything = np.arange(size, dtype=np.int64)
            kept = feistel_permute_np(everything, size, self.seeds[source], epoch).astype(np.int32)
            with self._lock:
                kept = self._kept.setdefault(key, kept)
        return kept

    def records(self, source: int, draws: np.ndarray) -> np.ndarray:
        """The records of ``source`` that its draws ``draws`` read (int64, shaped like ``draws``)."""
        size = self.lengths[source]
        epochs, positions = np.divmod(draws, size)
        records = np.empty_like(draws)
        for epoch in np.unique(epochs).tolist():
            where = epochs == epoch
            if self.cached:
                records[where] = self._permutation(source, epoch)[positions[where]]
            else:
                records[where] = feistel_permute_np(positions[where], size, self.seeds[source], epoch)
        return records


def _is_recipe(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 4 and isinstance(value[0], type)


def _built(position: int, value: Any) -> HostSourceModule:
    """``sources[position]`` as a host source (rebuilt from it when it is a ``worker_recipe``)."""
    if _is_recipe(value):
        value = from_recipe(value)
    if isinstance(value, HostSourceModule):
        return value
    from datarax.core.data_source import DataSourceModule

    if isinstance(value, DataSourceModule):
        raise TypeError(
            f"{_OWNER}: sources[{position}] is a {type(value).__name__}, a device source (its records are "
            "gathered inside the compiled step); MixSource mixes host sources: save its arrays with np.save "
            "and read them with NumpyFileSource"
        )
    raise TypeError(f"{_OWNER}: sources[{position}] must be a HostSourceModule, got {type(value).__name__}")


class MixSource(HostSourceModule):
    """A host source mixing several host sources in fixed proportions (see the module docstring).

    Args:
        config: ``MixSourceConfig`` (the weights, the seed, the length).
        sources: The host sources, one per weight, all with the same
            ``element_spec``; an entry may also be a source's
            ``worker_recipe()`` (what ``MixSource.worker_recipe`` holds, so a
            worker process rebuilds each source itself).
        rngs: Optional random number generators.
        name: Optional module name.

    Raises:
        TypeError: If ``config`` is not a ``MixSourceConfig``, ``sources`` is
            not a list or tuple, or an entry is not a host source (a device
            ``MemorySource`` is named as such).
        ValueError: If the number of sources differs from the number of
            weights, two sources have different element specs (both are
            named), a source has no records, or the default length exceeds
            ``2**31``.
    """

    def __init__(
        self,
        config: MixSourceConfig,
        *,
        sources: Sequence[HostSourceModule],
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        if not isinstance(config, MixSourceConfig):
            raise TypeError(f"{_OWNER}: config must be a MixSourceConfig, got {type(config).__name__}")
        super().__init__(config, rngs=rngs, name=name)
        if not isinstance(sources, list | tuple):
            raise TypeError(f"{_OWNER}: sources must be a list or tuple of host sources, got {type(sources).__name__}")
        if len(sources) != len(config.weights):
            raise ValueError(
                f"{_OWNER}: {len(sources)} sources but {len(config.weights)} weights {config.weights}; "
                "expected one weight per source"
            )
        built = [_built(position, value) for position, value in enumerate(sources)]
        spec = built[0].element_spec()
        for position, source in enumerate(built[1:], start=1):
            other = source.element_spec()
            if spec_to_str(other) != spec_to_str(spec):
                raise ValueError(
                    f"{_OWNER}: sources[{position}] ({type(source).__name__}) has element_spec "
                    f"{spec_to_str(other)} but sources[0] ({type(built[0]).__name__}) has "
                    f"{spec_to_str(spec)}; every source needs the same element_spec"
                )
        for position, source in enumerate(built):
            if len(source) < 1:
                raise ValueError(f"{_OWNER}: sources[{position}] ({type(source).__name__}) has no records")
        self.sources = nnx.List(built)
        self.source_lengths = tuple(len(source) for source in built)
        self.weights = tuple(w / math.fsum(config.weights) for w in config.weights)
        self.source_seeds = tuple(_source_seed(config.seed, j) for j in range(len(built)))
        self._interleave = _Interleave(self.weights)
        self._spec = dict(spec)
        self.num_records = config.length if config.length is not None else self._default_length()
        # Materialised when every own epoch the mixture reaches fits in _CACHE_ENTRIES record numbers.
        reached = sum(-(-int(c) // n) * n for c, n in zip(self.counts(), self.source_lengths, strict=True))
        self._own_epochs = _OwnEpochs(self.source_lengths, self.source_seeds, cached=reached <= _CACHE_ENTRIES)

    def _default_length(self) -> int:
        """The smallest length at which every source has completed one own epoch (a binary search).

        Each count ``c_j`` only grows with the length, so the lengths that hold an own epoch of
        every source are all those from the smallest one on.
        """
        lengths = np.asarray(self.source_lengths, dtype=np.int64)

        def fits(total: int) -> bool:
            return bool((self._interleave.counts(total) >= lengths).all())

        high = max(math.ceil((n + len(lengths)) / w) for n, w in zip(self.source_lengths, self.weights, strict=True))
        while not fits(high):  # not reached: each count is within a record or two of total * w_j
            high *= 2
        low = 0  # fits(0) is False: every source has at least one record
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle, high)
        if high > MAX_N:
            raise ValueError(
                f"{_OWNER}: one own epoch of every source needs a mixture of {high} records, more than "
                f"2**31; set MixSourceConfig.length"
            )
        return high

    def __len__(self) -> int:
        return self.num_records

    def element_spec(self) -> dict[str, Any]:
        """One record's spec: the sources' common ``element_spec``."""
        return dict(self._spec)

    def counts(self, total: int | None = None) -> np.ndarray:
        """How many of the mixture's first ``total`` indices (default: all) each source gets (int64, one per source)."""
        return self._interleave.counts(len(self) if total is None else total)

    def locate(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """Where the mixture's indices read: ``(source, record)``, two int64 arrays shaped like ``indices``.

        ``source[t]`` is the position in ``sources`` of index ``indices[t]``'s
        source and ``record[t]`` the record of that source it reads.

        Raises:
            TypeError: If ``indices`` is not a 1-D integer vector.
            IndexError: If an index is outside ``[0, len(self))``.
        """
        indices = check_indices(_OWNER, indices, self.num_records)
        which, draws = self._interleave.locate(indices)
        records = np.empty_like(draws)
        for j in np.unique(which).tolist():
            where = np.flatnonzero(which == j)
            records[where] = self._own_epochs.records(j, draws[where])
        return which, records

    def read_records(self, indices: np.ndarray) -> dict[str, Any]:
        """Reads the records at ``indices``: one ``read_records`` call per source, reassembled in order.

        Args:
            indices: 1-D integer array of mixture indices in ``[0, len(self))``.

        Returns:
            Column name to a numpy array with leading axis ``len(indices)``
            (fixed-shape columns) or a list with one value per index
            (``BytesSpec`` and ``RaggedSpec`` columns).

        Raises:
            TypeError: If ``indices`` is not a 1-D integer array.
            IndexError: If an index is out of range.
        """
        which, records = self.locate(indices)
        count = len(records)
        columns = empty_columns(self._spec, count)
        for j in np.unique(which).tolist():
            where = np.flatnonzero(which == j)
            part = self.sources[j].read_records(records[where])
            slots = where.tolist()
            for name, column in columns.items():
                if isinstance(column, list):
                    for slot, value in zip(slots, part[name], strict=True):
                        column[slot] = value
                else:
                    column[where] = part[name]
        return columns

    def worker_recipe(self) -> tuple[type, Any, dict[str, Any], str | None]:
        """``(MixSource, config, {"sources": each source's worker_recipe()}, name)``: each source is rebuilt itself."""
        return type(self), self.config, {"sources": [source.worker_recipe() for source in self.sources]}, self.name

    def close(self) -> None:
        """Closes every source's files (a later read reopens them)."""
        for source in self.sources:
            source.close()


__all__ = ["MixSource", "MixSourceConfig"]

"""``HostStage``: one batch of a host source, read, transformed and collated on the host.

For a host source (``datarax.core.host_source``) a batch's records cannot be
gathered inside the jitted step. The host stage computes them instead, as a
pure function of the batch's cursor ``(epoch, start)``:

    positions [start, start+B)  ->  records (the sampler's numpy Feistel, bit-identical to the device's)
    ->  source.read_records(the valid rows' records)
    ->  every host operator, record by record (a generator per record: host_rng)
    ->  one fixed-shape numpy array per column, padding rows repeating the last real row

so the batch does not depend on which worker, thread or process computes it,
or on how many there are: ``datarax.pipeline.host_pool`` runs ``compute`` for
upcoming cursors in a pool and hands the results over in stream order. The
output spec (one shape and dtype per column) is inferred from the first
record when the pipeline is built (``infer_spec``); a later record that
differs stops the stream with a ``HostStageError`` naming the record.

Any failure names what failed: the source, the record index (a failing batch
read is retried record by record to find it), the operator and the original
exception. ``HostStageError`` carries only a message, so it crosses process
boundaries intact.

Example:
    >>> import jax, numpy as np
    >>> from datarax.core.config import StructuralConfig
    >>> from datarax.core.host_source import HostSourceModule
    >>> class Squares(HostSourceModule):
    ...     def __len__(self):
    ...         return 10
    ...     def element_spec(self):
    ...         return {"x": jax.ShapeDtypeStruct((), np.int64)}
    ...     def read_records(self, indices):
    ...         return {"x": indices ** 2}
    >>> stage = HostStage(Squares(StructuralConfig()), operators=(), shuffle=False, seed=0, batch_size=4)
    >>> columns, records, valid_rows = stage.compute(0, 8)
    >>> columns["x"].tolist(), records.tolist(), valid_rows
    ([64, 81, 81, 81], [8, 9, 9, 9], 2)
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from datarax.core.host_operator import HostOperator
from datarax.core.host_source import HostSourceModule, check_columns
from datarax.pipeline.collate import HostStageError, RecordCollator, describe_error
from datarax.pipeline.records import chunk_size
from datarax.samplers.feistel import feistel_permute_np


class HostStage(RecordCollator):
    """Computes host batches of one stream (see the module docstring).

    Args:
        source: The host source.
        operators: ``(key name or None, operator)`` pairs, in order.
        shuffle: Whether epochs are Feistel permutations.
        seed: The pipeline seed (shuffle and host generators).
        batch_size: Rows per (global) batch.
        spec: The collated element spec; inferred from the first record if None.
        share: ``(first, stop)``: the rows of each batch this process
            computes (a sharded pipeline: its devices' rows); None: all.
    """

    def __init__(
        self,
        source: HostSourceModule,
        *,
        operators: Sequence[tuple[str | None, HostOperator]],
        shuffle: bool,
        seed: int,
        batch_size: int,
        spec: Mapping[str, jax.ShapeDtypeStruct] | None = None,
        share: tuple[int, int] | None = None,
    ):
        self.share = (0, batch_size) if share is None else (int(share[0]), int(share[1]))
        super().__init__(
            type(source).__name__,
            source.element_spec(),
            operators=operators,
            seed=seed,
            batch_size=self.share[1] - self.share[0],  # the rows collated here
            spec=spec,
        )
        self.global_batch_size = batch_size
        self.source = source
        self.shuffle = shuffle
        self.num_records = len(source)
        self._chunk = chunk_size(batch_size, self.num_records)
        self._chunks: dict[tuple[int, int], np.ndarray] = {}
        self._chunk_lock = threading.Lock()
        if self.spec is None:
            self.spec = self.infer_spec()

    # -- records --------------------------------------------------------------

    def records(self, epoch: int, start: int) -> tuple[np.ndarray, int]:
        """The (global) batch's record indices (padding rows repeat the last real one) and its valid rows."""
        n, size = self.num_records, self.global_batch_size
        valid_rows = min(size, n - start)
        if not self.shuffle:
            positions = np.minimum(np.arange(start, start + size, dtype=np.int64), n - 1)
            return positions, valid_rows
        offset = start % self._chunk
        chunk = self._chunk_records(epoch, start - offset)
        if offset + size <= self._chunk:
            return chunk[offset : offset + size].copy(), valid_rows
        # A filtered stream's blocks start anywhere, so one may straddle two chunks.
        following = self._chunk_records(epoch, start - offset + self._chunk)
        return np.concatenate([chunk[offset:], following[: offset + size - self._chunk]]), valid_rows

    def _chunk_records(self, epoch: int, chunk_start: int) -> np.ndarray:
        """The Feistel records of ``chunk_size(B, N)`` positions from ``chunk_start``, computed once per chunk.

        Permuting a batch's 128 positions alone cost about 0.25 ms (six numpy rounds of tiny arrays);
        a chunk of about 64K positions costs little more per call, so batches slice a cached chunk instead.
        """
        key = (epoch, chunk_start)
        with self._chunk_lock:
            cached = self._chunks.get(key)
            if cached is not None:
                return cached
        n = self.num_records
        positions = np.minimum(np.arange(chunk_start, chunk_start + self._chunk, dtype=np.int64), n - 1)
        records = np.asarray(feistel_permute_np(positions, n, self.seed, epoch), dtype=np.int64)
        with self._chunk_lock:
            self._chunks[key] = records
            while len(self._chunks) > 4:  # workers reading ahead may straddle two chunks (and two epochs)
                self._chunks.pop(next(iter(self._chunks)))
        return records

    def _read(self, indices: np.ndarray) -> dict[str, Any]:
        owner = type(self.source).__name__
        try:
            columns = self.source.read_records(indices)
            check_columns(owner, columns, self._source_spec, len(indices))
            return columns
        except Exception as error:  # noqa: BLE001 - re-raised naming the record
            failing = self._failing_record(indices) if len(indices) > 1 else int(indices[0])
            raise HostStageError(
                f"host stage: {owner} could not read record {failing}: {describe_error(error)}"
            ) from error

    def _failing_record(self, indices: np.ndarray) -> Any:
        for index in indices:
            try:
                self.source.read_records(indices[index == indices][:1])
            except Exception:  # noqa: BLE001 - looking for the record that fails
                return int(index)
        return f"among {indices[:8].tolist()}{'...' if len(indices) > 8 else ''}"

    # -- a batch --------------------------------------------------------------

    def compute(
        self, epoch: int, start: int, out: Mapping[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
        """The host batch whose first row is epoch position ``start``.

        Args:
            epoch: The epoch.
            start: Epoch position of the first row.
            out: Optional preallocated arrays (one per column of ``spec``,
                batched) to write into, e.g. views of shared memory.

        Returns:
            ``(columns, records, valid_rows)``: one ``(B, ...)`` array per
            column, the int64 record indices, and the number of real rows.

        Raises:
            HostStageError: Naming the source, record and operator that failed.
        """
        records, valid_rows = self.records(epoch, start)
        first, stop = self.share
        if (first, stop) != (0, self.global_batch_size):  # this process's rows only: it reads no other record
            last_real = records[valid_rows - 1]
            records = records[first:stop].copy()
            valid_rows = min(max(valid_rows - first, 0), stop - first)
            if not valid_rows:  # every row is padding: a copy of the epoch's last real record, as unsharded
                records[:] = last_real
                columns, records, _ = self.collate(self._read(records[:1]), records, 1, epoch=epoch, out=out)
                return columns, records, 0
        read = self._read(records[:valid_rows])
        return self.collate(read, records, valid_rows, epoch=epoch, out=out)

    def infer_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The collated element spec: what the host stage makes of record 0 (epoch 0).

        Raises:
            HostStageError: If reading or transforming record 0 fails.
            TypeError: If a column is not a numeric array (bytes left undecoded, say).
        """
        for record in range(self.num_records):  # the first record a filter keeps (record 0 without one)
            records = np.array([record], np.int64)
            read = self._read(records)
            element = {name: read[name][0] for name in read}
            if self.operators:
                element = self.transform(element, record, self.rng_states(0, records), 0)
            if element is not None:
                break
        else:
            raise HostStageError(
                f"host stage: the filters drop every one of the {self.num_records} records of "
                f"{type(self.source).__name__} (in epoch 0), so there is nothing to serve"
            )
        return self.spec_from_element(element)


def worker_recipe(stage: HostStage) -> tuple:
    """What a worker process rebuilds ``stage`` from (see ``datarax.pipeline.host_pool``), checked to pickle.

    Raises:
        TypeError: If the source or an operator cannot be sent to a worker
            process (not built through its constructor, or holding an
            argument that does not pickle, such as a lambda); the message
            names it.
    """
    parts = [("the source " + type(stage.source).__name__, stage.source)]
    parts += [(f"host_stages[{i}] ({type(op).__name__})", op) for i, (_, op) in enumerate(stage.operators)]
    recipes = []
    for what, module in parts:
        try:
            recipe = module.worker_recipe()
            pickle.dumps(recipe)
        except Exception as error:  # noqa: BLE001 - re-raised naming the part
            raise TypeError(
                f"Pipeline: worker_kind='process' rebuilds the host stage in each worker process from the "
                f"constructor arguments of its parts, but {what} cannot be sent: {type(error).__name__}: {error}. "
                "Use module-level functions (not lambdas or closures), or worker_kind='thread'"
            ) from error
        recipes.append(recipe)
    spec = tuple((name, tuple(leaf.shape), np.dtype(leaf.dtype).str) for name, leaf in stage.spec.items())
    operators = [(key, recipe) for (key, _), recipe in zip(stage.operators, recipes[1:], strict=True)]
    return recipes[0], operators, stage.shuffle, stage.seed, stage.global_batch_size, spec, stage.share


__all__ = ["HostStage", "HostStageError", "worker_recipe"]

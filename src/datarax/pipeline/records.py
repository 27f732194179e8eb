"""``RecordSchedule``: which records each batch of a stream holds.

Batch ``t`` of epoch ``e`` covers epoch positions ``[start, start + B)``;
position ``p`` holds record ``perm(seed, e)[p]`` (the sampler: the Feistel
permutation, or the identity). Positions past the end of the epoch are
clamped to the last one, so padding rows repeat the epoch's last real record.

The records are computed a *chunk* of batches at a time (about 64K positions)
by one small jitted call, and the chunk stays on the device: each batch's step
receives the chunk and its offset and slices its rows itself. So per batch
nothing is computed on the host and no index vector is transferred, and the
Feistel rounds run once per chunk instead of inside every step. Memory is
O(chunk) whatever the dataset size. ``batches`` gives the same records as
NumPy arrays (the sampler's ``indices_at_np``, bit-identical), for ``scan``.

Example:
    >>> import numpy as np
    >>> from datarax.pipeline.stream import StreamSpec
    >>> from datarax.samplers import SequentialSampler, SequentialSamplerConfig
    >>> stream = StreamSpec(num_records=10, batch_size=4, drop_remainder=False,
    ...                     shuffle=False, seed=0, fingerprint=0)
    >>> schedule = RecordSchedule(stream, SequentialSampler(SequentialSamplerConfig()))
    >>> chunk, meta = schedule.batch(0, 8)  # computed on the host here; a pipeline's on its device
    >>> meta.tolist()  # [epoch, valid rows, offset of the batch in the chunk]
    [0, 2, 8]
    >>> np.asarray(chunk)[8:12].tolist()
    [8, 9, 9, 9]
    >>> schedule.entry(0, 8)[2:]  # its valid rows and the cursor after it
    (2, (1, 0))
    >>> records, metas = schedule.batches([(0, 8)])
    >>> records.tolist(), metas.tolist()
    ([[8, 9, 9, 9]], [[0, 2]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from datarax.pipeline.stream import StreamSpec

CHUNK_POSITIONS = 65536


def chunk_size(batch_size: int, num_records: int | None = None) -> int:
    """Positions per chunk: about ``CHUNK_POSITIONS``, in whole batches, and no more than an epoch's batches.

    A smaller dataset gets a chunk of one epoch: each epoch computes its
    records once, and none past its end (a 50,000-record epoch in batches of
    128 computed 65,536 positions, 31% more than it serves).
    """
    batches = max(1, CHUNK_POSITIONS // batch_size)
    if num_records is not None:
        batches = min(batches, max(1, -(-num_records // batch_size)))
    return batches * batch_size


class RecordSchedule:
    """The record indices of the batches of ``stream``.

    Args:
        stream: The stream.
        sampler: Has ``indices_at_np(positions, num_records, epoch)``.
        compute_chunk: ``compute_chunk(epoch, chunk_start)``: the records of
            the ``chunk_size(B, N)`` positions from ``chunk_start`` (clamped to the
            last record), as an int32 device array (the pipeline's program
            computes it with the sampler's ``indices_at``). Defaults to the
            sampler's ``indices_at_np``, on the host.
    """

    def __init__(self, stream: StreamSpec, sampler: Any, compute_chunk: Callable[[int, int], Any] | None = None):
        self.stream = stream
        self._sampler = sampler
        self._chunk = chunk_size(stream.batch_size, stream.num_records)
        self._compute = compute_chunk or self._host_chunk
        self._size = stream.batch_size
        self._cached: tuple[int, int] | None = None
        self._entries: list[tuple[Any, Any, int, tuple[int, int]]] = []

    def _host_chunk(self, epoch: int, chunk_start: int) -> np.ndarray:
        n = self.stream.num_records
        positions = np.minimum(np.arange(chunk_start, chunk_start + self._chunk, dtype=np.int64), n - 1)
        return self._sampler.indices_at_np(positions, n, epoch).astype(np.int32)

    @property
    def chunk_size(self) -> int:
        """Positions per chunk (a multiple of the batch size)."""
        return self._chunk

    def _chunk_for(self, epoch: int, chunk_start: int) -> None:
        # A new array per chunk, never written: batches dispatched from
        # the previous chunk may still be reading it.
        records = self._compute(epoch, chunk_start)
        # Everything a batch of the chunk needs is made here, once per chunk, so
        # that a batch costs one lookup: on the CPU backend each microsecond of
        # Python between two batches is taken from XLA's compute threads and
        # costs several there (docs/benchmarks.md, issue 7, fourth pass).
        # Metas are read-only: the step may still be reading an earlier one.
        size, stream = self._size, self.stream
        starts = np.arange(chunk_start, min(chunk_start + self._chunk, stream.positions_per_epoch), size)
        table = np.empty((len(starts), 3), np.int32)  # one [epoch, valid rows, offset] per batch
        table[:, 0] = epoch
        table[:, 1] = np.minimum(size, stream.num_records - starts)
        table[:, 2] = starts - chunk_start
        metas = list(table)  # row views of one array, made in one call
        # A step over several devices copies a NumPy argument to each of them on every call
        # (measured on 8 CPU devices: 137 us of a 470 us batch), so there the metas are put
        # where the chunk is, in one transfer per chunk. On one device NumPy is cheaper
        # (device-resident metas measured 1.02x (W1) and 1.10x (W2) the per-batch cost).
        sharding = getattr(records, "sharding", None)
        if sharding is not None and len(sharding.device_set) > 1:
            metas = jax.device_put(metas, sharding)
        positions = starts.tolist()
        afters = [(epoch, start + size) for start in positions[:-1]] + [stream.advance(epoch, positions[-1])]
        self._entries = [
            (records, meta, rows, after) for meta, rows, after in zip(metas, table[:, 1].tolist(), afters, strict=True)
        ]
        self._cached = (epoch, chunk_start)

    def entry(self, epoch: int, start: int) -> tuple[Any, Any, int, tuple[int, int]]:
        """Everything the step needs for the batch at ``(epoch, start)``, and the cursor after it.

        Returns:
            ``(chunk, meta, valid_rows, next)``: the int32 chunk of records
            holding the batch, its int32 ``[epoch, valid rows, offset in the
            chunk]``, its real rows and the cursor of the batch after it.
        """
        offset = start % self._chunk
        if self._cached != (epoch, start - offset):
            self._chunk_for(epoch, start - offset)
        return self._entries[offset // self._size]

    def batch(self, epoch: int, start: int) -> tuple[Any, np.ndarray]:
        """The chunk holding the batch at ``(epoch, start)`` and its ``[epoch, valid rows, offset]``.

        Returns:
            ``(chunk, meta)``: the int32 chunk of records and an int32 ``(3,)``
            array; the batch's records are
            ``chunk[offset : offset + B]``.
        """
        chunk, meta, _, _ = self.entry(epoch, start)
        return chunk, meta

    def valid_rows(self, start: int) -> int:
        """Real rows of the batch whose first row is epoch position ``start``."""
        return min(self.stream.batch_size, self.stream.num_records - start)

    def batches(self, cursors: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """The records of several batches on the host: ``(L, B)`` records and ``(L, 2)`` ``[epoch, valid rows]``."""
        stream = self.stream
        size, n = stream.batch_size, stream.num_records
        records = np.empty((len(cursors), size), dtype=np.int32)
        metas = np.empty((len(cursors), 2), dtype=np.int32)
        for i, (epoch, start) in enumerate(cursors):
            positions = np.minimum(np.arange(start, start + size, dtype=np.int64), n - 1)
            records[i] = self._sampler.indices_at_np(positions, n, epoch)
            metas[i] = (epoch, min(size, n - start))
        return records, metas


__all__ = ["CHUNK_POSITIONS", "RecordSchedule", "chunk_size"]

"""Feeds: how an iterator gets the batch at a cursor, from a device source or a host source.

``PipelineIterator`` walks cursors ``(epoch, position)``; a feed turns one
into a batch. Three kinds, one interface (``run``, ``scan_inputs``, ``close``);
``run`` returns a ``Served`` (the batch, its counts, its epoch and the cursor
after it):

* ``DeviceFeed``: the source lives on the device. The records come from the
  ``RecordSchedule`` (a chunk of Feistel indices computed on the device) and
  the step gathers them itself.
* ``HostFeed``: the source is read on the host. The ``HostBatchPool`` has the
  batch's columns read, transformed and collated (ahead of time, by its
  workers); the step receives them with their record indices and runs the
  device operators.
* ``FilteredHostFeed``: a host source with a ``HostFilter``. The pool computes
  *blocks* of ``B`` examined positions (kept records packed at the front);
  the feed fills each batch with ``B`` kept records from consecutive blocks.
  The cursor after a batch is the position of the first record examined
  and not served, so a batch is a pure function of its cursor here too.

Example:
    >>> import numpy as np
    >>> from datarax import Pipeline
    >>> from datarax.sources import MemorySource, MemorySourceConfig
    >>> pipeline = Pipeline(source=MemorySource(MemorySourceConfig(), data={"x": np.arange(10)}), batch_size=4)
    >>> iterator = iter(pipeline)
    >>> type(iterator.feed).__name__
    'DeviceFeed'
    >>> served = iterator.feed.run(iterator.binding.inputs(), 0, 8, None)
    >>> served.batch["x"].tolist(), served.valid_rows, served.next
    ([8, 9, 9, 9], 2, (1, 0))
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from datarax.pipeline.binding import StepBinding
from datarax.pipeline.collate import HostStageError, dropped_by_stage, host_counts
from datarax.pipeline.host_pool import HostBatchPool
from datarax.pipeline.records import RecordSchedule
from datarax.pipeline.stream import StreamSpec


class Served(NamedTuple):
    """What a feed makes of a cursor.

    Attributes:
        batch: The batch (device arrays, with ``valid_mask``).
        increments: Counter increments of the operators counted on the device.
        valid_rows: Its real rows.
        epoch: The epoch its rows come from.
        next: The cursor after it.
        host_counts: The host operators' ``(applied, skipped)`` when a
            ``HostFilter`` dropped records while filling it (None: each
            counts ``valid_rows``).
    """

    batch: dict[str, Any]
    increments: Any
    valid_rows: int
    epoch: int
    next: tuple[int, int]
    host_counts: list[tuple[int, int]] | None = None


class DeviceFeed:
    """Batches of a device-resident source: records from a ``RecordSchedule``, gathered in the step.

    Args:
        records: The stream's record schedule.
        binding: The compiled step bound to the pipeline's state.
    """

    scannable = True  # every cursor is known in advance

    def __init__(self, records: RecordSchedule, binding: StepBinding):
        self.records = records
        self.binding = binding

    def run(self, inputs: Any, epoch: int, position: int, stop_epoch: int | None) -> Served:
        """The batch at ``(epoch, position)``.

        (An iterator without read-ahead skips this: it takes ``records.entry``
        and ``StepBinding.hand_out`` directly.)
        """
        chunk, meta, valid_rows, after = self.records.entry(epoch, position)
        batch, increments = self.binding.run(inputs, chunk, meta, valid_rows)
        return Served(batch, increments, valid_rows, epoch, after)

    def scan_inputs(self, cursors: list[tuple[int, int]]) -> tuple[Any, ...]:
        """What ``StepBinding.scan`` needs for the batches at ``cursors``: ``(records, metas)``."""
        return self.records.batches(cursors)

    def close(self) -> None:
        """Nothing to release."""


class HostFeed:
    """Batches of a host source: columns from a ``HostBatchPool``, device operators in the step.

    Args:
        pool: The host stage's pool.
        binding: The compiled step bound to the pipeline's state.
    """

    scannable = True

    def __init__(self, pool: HostBatchPool, binding: StepBinding):
        self.pool = pool
        self.binding = binding

    def run(self, inputs: Any, epoch: int, position: int, stop_epoch: int | None) -> Served:
        """The batch at ``(epoch, position)``."""
        columns, records, _ = self.pool.get(epoch, position, stop_epoch=stop_epoch)
        valid_rows = self._valid_rows(position)  # of the global batch (the pool may compute a share of it)
        meta = np.array([epoch, valid_rows], np.int32)
        batch, increments = self.binding.run_host(inputs, columns, records.astype(np.int32), meta, valid_rows)
        return Served(batch, increments, valid_rows, epoch, self.pool.stream.advance(epoch, position))

    def scan_inputs(self, cursors: list[tuple[int, int]]) -> tuple[Any, ...]:
        """``(records, metas, columns)`` of the batches at ``cursors``, stacked along a new axis."""
        records, metas, columns = [], [], []
        stop = cursors[-1][0] + 1  # read ahead no further than the scan's last epoch
        for epoch, position in cursors:
            batch_columns, batch_records, _ = self.pool.get(epoch, position, stop_epoch=stop)
            records.append(batch_records.astype(np.int32))
            metas.append((epoch, self._valid_rows(position)))
            columns.append(batch_columns)
        stacked = {name: np.stack([c[name] for c in columns]) for name in columns[0]}
        return np.stack(records), np.array(metas, np.int32), stacked

    def _valid_rows(self, position: int) -> int:
        return min(self.pool.stream.batch_size, self.pool.stream.num_records - position)

    def close(self) -> None:
        """Stops the pool's workers."""
        self.pool.close()


class FilteredHostFeed:
    """Batches of a host source with a ``HostFilter``: ``B`` kept records each (see the module docstring).

    Args:
        pool: The host stage's pool; its stream advances by ``B`` examined
            positions up to the last record (its blocks).
        binding: The compiled step bound to the pipeline's state.
        stream: The pipeline's stream (``drop_remainder`` decides the short last batch).
    """

    scannable = False  # how many records a batch examines is known only by reading them

    def __init__(self, pool: HostBatchPool, binding: StepBinding, stream: StreamSpec):
        self.pool = pool
        self.binding = binding
        self.stream = stream
        # Kept rows read past the last batch served, and where the next block starts.
        self._cursor: tuple[int, int] | None = None
        self._rows: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]] = []
        self._block: tuple[int, int] = (0, 0)
        # The examined records the filters dropped, read but not yet counted: (positions, stage codes).
        self._dropped: list[tuple[np.ndarray, np.ndarray]] = []

    def _kept_rows(self, epoch: int, start: int, stop_epoch: int | None) -> int:
        """Reads the block at ``(epoch, start)`` into the buffer; returns how many records it kept."""
        columns, records, kept = self.pool.get(epoch, start, stop_epoch=stop_epoch)
        examined, valid = self.pool.stage.records(epoch, start)
        # Records are distinct within an epoch: a kept record's offset is where it is in the block.
        kept_mask = np.isin(examined[:valid], records[:kept])
        offsets = np.flatnonzero(kept_mask)
        self._rows.append(({k: np.array(v[:kept]) for k, v in columns.items()}, records[:kept].copy(), start + offsets))
        dropped = start + np.flatnonzero(~kept_mask)
        self._dropped.append((dropped, records[kept : kept + len(dropped)].copy()))
        self._block = self.pool.stream.advance(epoch, start)
        return kept

    def run(self, inputs: Any, epoch: int, position: int, stop_epoch: int | None) -> Served | None:
        """The next ``B`` kept records from ``(epoch, position)``; None when none is left before ``stop_epoch``.

        Raises:
            HostStageError: If reading fails, or the filters drop every record of an epoch.
        """
        size = self.stream.batch_size
        if self._cursor != (epoch, position):
            self._rows, self._block, self._dropped = [], (epoch, position), []
        while True:
            held = sum(len(r) for _, r, _ in self._rows)
            while held < size and self._block[0] == epoch:
                held += self._kept_rows(*self._block, stop_epoch)
            if held >= size or (held and not self.stream.drop_remainder):
                break
            # The epoch ended with no batch left in it: the next epoch's first.
            if position == 0:  # a whole epoch read without one batch: every later one may be the same
                raise HostStageError(
                    f"host stage: the filters kept {held} of the {self.stream.num_records} records of epoch "
                    f"{epoch}, {'fewer than batch_size with drop_remainder=True' if held else 'none'}: "
                    "no batch to serve"
                )
            epoch, position, self._rows, self._dropped = epoch + 1, 0, [], []
            if stop_epoch is not None and epoch >= stop_epoch:
                self._cursor = None
                return None
        columns = {k: np.concatenate([c[k] for c, _, _ in self._rows]) for k in self._rows[0][0]}
        records = np.concatenate([r for _, r, _ in self._rows])
        positions = np.concatenate([p for _, _, p in self._rows])
        valid_rows = min(size, len(records))
        if valid_rows < len(records):  # rows left over: the next batch starts at the first of them
            self._rows = [
                ({k: v[valid_rows:] for k, v in columns.items()}, records[valid_rows:], positions[valid_rows:])
            ]
            following = (epoch, int(positions[valid_rows]))
        else:
            self._rows = []
            following = self._block if self._block[0] == epoch else (epoch + 1, 0)
        self._cursor = following
        counts = host_counts(self.pool.stage.operators, self._count_dropped(following), valid_rows)
        pad = np.full(size, valid_rows - 1)
        pad[:valid_rows] = np.arange(valid_rows)
        columns = {k: v[pad] for k, v in columns.items()}
        meta = np.array([epoch, valid_rows], np.int32)
        batch, increments = self.binding.run_host(inputs, columns, records[pad].astype(np.int32), meta, valid_rows)
        return Served(batch, increments, valid_rows, epoch, following, counts)

    def _count_dropped(self, following: tuple[int, int]) -> list[int]:
        """Per host stage, the records dropped before ``following`` (the batch's examined range); forgets them."""
        codes, left = [], []
        for positions, stage_codes in self._dropped:
            before = np.ones(len(positions), bool) if following[1] == 0 else positions < following[1]
            codes.append(stage_codes[before])
            if not before.all():
                left.append((positions[~before], stage_codes[~before]))
        self._dropped = left
        return dropped_by_stage(
            np.concatenate(codes) if codes else np.zeros(0, np.int64), len(self.pool.stage.operators)
        )

    def scan_inputs(self, cursors: list[tuple[int, int]]) -> tuple[Any, ...]:
        """Refused: a filtered stream's cursors are known only by reading (see ``HostFilter``)."""
        raise ValueError(
            "scan: a pipeline with a HostFilter cannot scan, because how many records each batch examines is "
            "known only after reading them; iterate it with next() instead"
        )

    def close(self) -> None:
        """Stops the pool's workers and forgets the rows read ahead."""
        self._cursor, self._rows, self._dropped = None, [], []
        self.pool.close()


__all__ = ["DeviceFeed", "FilteredHostFeed", "HostFeed", "Served"]

"""Feeds: how an iterator gets the batch at a cursor, from a device source or a host source.

``PipelineIterator`` walks cursors ``(epoch, position)``; a feed turns one
into a batch. Two kinds, one interface (``run``, ``scan_inputs``, ``close``):

* ``DeviceFeed``: the source lives on the device. The records come from the
  ``RecordSchedule`` (a chunk of Feistel indices computed on the device) and
  the step gathers them itself.
* ``HostFeed``: the source is read on the host. The ``HostBatchPool`` has the
  batch's columns read, transformed and collated (ahead of time, by its
  workers); the step receives them with their record indices and runs the
  device operators.

Example:
    >>> import numpy as np
    >>> from datarax import Pipeline
    >>> from datarax.sources import MemorySource, MemorySourceConfig
    >>> pipeline = Pipeline(source=MemorySource(MemorySourceConfig(), data={"x": np.arange(10)}), batch_size=4)
    >>> iterator = iter(pipeline)
    >>> type(iterator.feed).__name__
    'DeviceFeed'
    >>> batch, increments, valid_rows = iterator.feed.run(iterator.binding.inputs(), 0, 8, None)
    >>> batch["x"].tolist(), valid_rows
    ([8, 9, 9, 9], 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datarax.pipeline.binding import StepBinding
from datarax.pipeline.host_pool import HostBatchPool
from datarax.pipeline.records import RecordSchedule


class DeviceFeed:
    """Batches of a device-resident source: records from a ``RecordSchedule``, gathered in the step.

    Args:
        records: The stream's record schedule.
        binding: The compiled step bound to the pipeline's state.
    """

    def __init__(self, records: RecordSchedule, binding: StepBinding):
        self.records = records
        self.binding = binding

    def run(self, inputs: Any, epoch: int, position: int, stop_epoch: int | None) -> tuple[Any, Any, int]:
        """The batch at ``(epoch, position)``: ``(batch, counter increments, valid rows)``."""
        chunk, meta = self.records.batch(epoch, position)
        valid_rows = self.records.valid_rows(position)
        batch, increments = self.binding.run(inputs, chunk, meta, valid_rows)
        return batch, increments, valid_rows

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

    def __init__(self, pool: HostBatchPool, binding: StepBinding):
        self.pool = pool
        self.binding = binding

    def run(self, inputs: Any, epoch: int, position: int, stop_epoch: int | None) -> tuple[Any, Any, int]:
        """The batch at ``(epoch, position)``: ``(batch, counter increments, valid rows)``."""
        columns, records, valid_rows = self.pool.get(epoch, position, stop_epoch=stop_epoch)
        meta = np.array([epoch, valid_rows], np.int32)
        batch, increments = self.binding.run_host(inputs, columns, records.astype(np.int32), meta, valid_rows)
        return batch, increments, valid_rows

    def scan_inputs(self, cursors: list[tuple[int, int]]) -> tuple[Any, ...]:
        """``(records, metas, columns)`` of the batches at ``cursors``, stacked along a new axis."""
        records, metas, columns = [], [], []
        stop = cursors[-1][0] + 1  # read ahead no further than the scan's last epoch
        for epoch, position in cursors:
            batch_columns, batch_records, valid_rows = self.pool.get(epoch, position, stop_epoch=stop)
            records.append(batch_records.astype(np.int32))
            metas.append((epoch, valid_rows))
            columns.append(batch_columns)
        stacked = {name: np.stack([c[name] for c in columns]) for name in columns[0]}
        return np.stack(records), np.array(metas, np.int32), stacked

    def close(self) -> None:
        """Stops the pool's workers."""
        self.pool.close()


__all__ = ["DeviceFeed", "HostFeed"]

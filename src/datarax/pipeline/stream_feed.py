"""``StreamFeed``: batches of a stream source, shuffled through a buffer, resumable exactly.

A stream source (``datarax.core.stream_source``) is read in order, so its
batches cannot be a function of the cursor alone the way a random-access
source's are. Here an epoch is one pass over the stream:

    iter_records(0)  ->  ShuffleBuffer(seed, epoch)  ->  B records drawn
    ->  host operators and collation (``RecordCollator``: a generator per record)
    ->  the jitted device step, record identities = stream positions

and a cursor is ``(epoch, records drawn this epoch)`` plus the buffer's
state (``ShuffleBuffer.state``: records read, and the stream position held in
each slot), which the iterator state carries as ``"stream_buffer"``. After
the last batch the epoch ends and the next pass starts with a fresh buffer.

What is guaranteed, as for random-access sources: the stream of batches is a
pure function of (seed, the stream's records, batch size, buffer size, host
and device operators); it does not depend on workers, prefetch or read-ahead;
host generators and device keys are keyed by (seed, node, epoch, stream
position); restoring a state, in this or a fresh process, continues with
exactly the batches the original would have produced, buffer contents
included (they are re-read from the stream). What is not: an epoch is only
as shuffled as a buffer of ``shuffle_buffer_size`` records makes it (a record
moves at most about ``size`` times a few positions earlier than in the
stream, and arbitrarily later), not a uniform permutation; the epoch's
length is known only when the stream ends (``len(pipeline)`` raises); a
restore re-reads the stream from the oldest buffered record; and the
stream must yield the same records in the same order on every pass.

The batches are computed inline (``workers=0``) or by one background thread
(``workers >= 1``, ``read_ahead`` batches ahead), because a stream is read
in order; decoding in that thread overlaps the consumer's step.

Example:
    >>> import numpy as np
    >>> from flax import nnx
    >>> from datarax import Pipeline
    >>> from datarax.sources import IterableSource, IterableSourceConfig
    >>> def records():
    ...     return ({"x": np.int32(i)} for i in range(10))
    >>> def build():
    ...     source = IterableSource(IterableSourceConfig(), records=records)
    ...     return Pipeline(source=source, batch_size=4, shuffle=True, shuffle_buffer_size=4, rngs=nnx.Rngs(0))
    >>> it = iter(build())
    >>> first = next(it)["x"].tolist()
    >>> state = it.get_state()
    >>> rest = [b["x"][b["valid_mask"]].tolist() for b in it]
    >>> sorted(first + sum(rest, []))
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    >>> again = iter(build())
    >>> again.set_state(state)
    >>> [b["x"][b["valid_mask"]].tolist() for b in again] == rest
    True
"""

from __future__ import annotations

import collections
import queue
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from datarax.core.host_operator import HostOperator
from datarax.core.spec import is_host_spec
from datarax.core.stream_source import StreamSourceModule, element_record
from datarax.core.validation import is_int
from datarax.pipeline.binding import StepBinding
from datarax.pipeline.collate import HostStageError, RecordCollator, describe_error, dropped_by_stage, host_counts
from datarax.pipeline.feeds import Served
from datarax.pipeline.shuffle_buffer import ShuffleBuffer
from datarax.pipeline.stream import StreamSpec

_SNAPSHOTS = 512  # buffer states kept for cursors handed out or dispatched ahead


class StreamStage(RecordCollator):
    """Reads a stream source through a shuffle buffer and collates its batches.

    Args:
        source: The stream source.
        operators: ``(key name or None, operator)`` pairs, in order.
        shuffle: Whether epochs go through a shuffle buffer.
        seed: The pipeline seed.
        batch_size: Rows per batch.
        buffer_size: Slots of the shuffle buffer (ignored without shuffle: 1).
    """

    def __init__(
        self,
        source: StreamSourceModule,
        *,
        operators: Sequence[tuple[str | None, HostOperator]],
        shuffle: bool,
        seed: int,
        batch_size: int,
        buffer_size: int,
    ):
        super().__init__(
            type(source).__name__, source.element_spec(), operators=operators, seed=seed, batch_size=batch_size
        )
        self.source = source
        self.buffer_size = buffer_size if shuffle else 1
        self.spec = self.infer_spec()

    # -- reading --------------------------------------------------------------

    def reader(self, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(position, record)`` of the stream from ``start``, each record checked against the spec."""
        position = start
        try:
            for record in self.source.iter_records(start):
                yield position, element_record(self.source, record, position)
                position += 1
        except HostStageError:
            raise
        except Exception as error:  # noqa: BLE001 - re-raised naming the source and position
            raise HostStageError(
                f"host stage: {self.owner} failed reading from stream position {position}: {describe_error(error)}"
            ) from error

    def open(self, epoch: int, state: Mapping[str, Any] | None) -> ShuffleBuffer:
        """The epoch's buffer: fresh (``state`` None) or restored from a ``ShuffleBuffer.state``."""
        buffer = ShuffleBuffer(size=self.buffer_size, seed=self.seed, epoch=epoch)
        if state is None:
            buffer.start(self.reader(0))
            return buffer
        positions = state["positions"]
        try:
            buffer.restore(state, self.reader(min(positions) if positions else int(state["read"])))
        except ValueError as error:
            raise HostStageError(f"host stage: {self.owner}: {error}") from error
        return buffer

    def replay(self, epoch: int, drawn: int) -> dict[str, Any]:
        """The buffer state after ``drawn`` draws of ``epoch``, by reading the epoch again."""
        buffer = self.open(epoch, None)
        for _ in range(drawn):
            if buffer.done:
                break
            buffer.draw()
        return buffer.state()

    # -- a batch --------------------------------------------------------------

    def _columns(self, elements: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            name: [e[name] for e in elements] if is_host_spec(leaf) else np.stack([e[name] for e in elements])
            for name, leaf in self._source_spec.items()
        }

    def batch(self, buffer: ShuffleBuffer, epoch: int) -> tuple[dict[str, np.ndarray], np.ndarray, int, Any] | None:
        """The next batch drawn from ``buffer``: ``B`` kept records (fewer at the epoch's end); None if none is left.

        Returns:
            ``(columns, records, valid_rows, host_counts)``; ``host_counts``
            (see ``collate.host_counts``) is None without a filter.
        """
        size = self.batch_size
        parts: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
        kept, codes = 0, []
        while kept < size and not buffer.done:
            drawn = []
            while len(drawn) < size - kept and not buffer.done:
                drawn.append(buffer.draw())
            records = np.empty(size, np.int64)
            records[: len(drawn)] = [position for position, _ in drawn]
            records[len(drawn) :] = records[len(drawn) - 1]
            columns, records, valid_rows = self.collate(
                self._columns([element for _, element in drawn]), records, len(drawn), epoch=epoch
            )
            if not self.filtered:
                return columns, records, valid_rows, None
            parts.append(({k: np.array(v[:valid_rows]) for k, v in columns.items()}, records[:valid_rows].copy()))
            codes.append(records[valid_rows : len(drawn)].copy())
            kept += valid_rows
        if not kept:
            return None
        columns = {k: np.concatenate([c[k] for c, _ in parts]) for k in parts[0][0]}
        records = np.concatenate([r for _, r in parts])
        pad = np.minimum(np.arange(size), kept - 1)
        counts = host_counts(self.operators, dropped_by_stage(np.concatenate(codes), len(self.operators)), kept)
        return {k: v[pad] for k, v in columns.items()}, records[pad], kept, counts

    def infer_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The collated element spec: what the host operators make of the stream's first kept record (epoch 0).

        Raises:
            HostStageError: If the stream is empty, reading fails, or the filters drop every record.
            TypeError: If a column is not a numeric array.
        """
        for position, element in self.reader(0):
            if self.operators:
                element = self.transform(element, position, self.rng_states(0, np.array([position])), 0)
            if element is not None:
                return self.spec_from_element(element)
        raise HostStageError(
            f"host stage: {self.owner} yields no records{' that the filters keep' if self.filtered else ''}, "
            "so there is nothing to serve"
        )


class _Ahead:
    """Runs a batch generator in a background thread, ``depth`` items ahead; ``next`` re-raises its errors."""

    _END = object()

    def __init__(self, batches: Iterator[Any], depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batches,), name="datarax-stream", daemon=True)
        self._thread.start()

    def _run(self, batches: Iterator[Any]) -> None:
        try:
            for item in batches:
                while not self._stop.is_set():
                    try:
                        self._queue.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._put_final((self._END, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            self._put_final((None, error))

    def _put_final(self, item: tuple[Any, BaseException | None]) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __next__(self) -> Any:
        item, error = self._queue.get()
        if error is not None:
            raise error
        if item is self._END:
            raise StopIteration
        return item

    def stop(self) -> None:
        """Asks the thread to stop (it does within one batch); does not wait."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class StreamFeed:
    """Batches of a stream source (see the module docstring); keeps the buffer state of each cursor it served.

    Args:
        stage: The stream stage.
        binding: The compiled step bound to the pipeline's state.
        stream: The pipeline's stream (batch size, drop_remainder).
        workers: 0 computes batches inline; more runs one background thread.
        read_ahead: Batches the background thread computes ahead.
    """

    scannable = False  # where a batch ends is known only by reading the stream

    def __init__(self, stage: StreamStage, binding: StepBinding, stream: StreamSpec, *, workers: int, read_ahead: int):
        self.stage = stage
        self.binding = binding
        self.stream = stream
        self._workers = workers
        self._read_ahead = read_ahead
        self._batches: Any = None
        self._finalizer: weakref.finalize | None = None
        self._expected: tuple[Any, ...] | None = None
        self._snapshots: collections.OrderedDict = collections.OrderedDict()

    # -- the batches ----------------------------------------------------------

    @staticmethod
    def _generate(
        stage: StreamStage, stream: StreamSpec, epoch: int, position: int, state: Any, stop_epoch: int | None
    ) -> Iterator[tuple]:
        # A static method: the background thread runs it, and must not keep the feed alive (see _restart).
        size = stream.batch_size
        buffer = stage.open(epoch, None if position == 0 else state)
        while stop_epoch is None or epoch < stop_epoch:
            out = stage.batch(buffer, epoch)
            if out is None or (stream.drop_remainder and out[2] < size):
                if position == 0:
                    kept = 0 if out is None else out[2]
                    raise HostStageError(
                        f"host stage: epoch {epoch} of {stage.owner} has {kept} records"
                        f"{' that the filters keep' if stage.filtered else ''}, "
                        f"{'fewer than batch_size with drop_remainder=True' if kept else 'none'}: no batch to serve"
                    )
                epoch, position = epoch + 1, 0
                if stop_epoch is None or epoch < stop_epoch:
                    buffer = stage.open(epoch, None)
                continue
            columns, records, valid_rows, counts = out
            if buffer.done:
                following, following_state = (epoch + 1, 0), None
            else:
                following, following_state = (epoch, buffer.drawn), buffer.state()
            yield columns, records, valid_rows, counts, epoch, following, following_state
            epoch, position = following
            if buffer.done and (stop_epoch is None or epoch < stop_epoch):
                buffer = stage.open(epoch, None)

    def _restart(self, epoch: int, position: int, stop_epoch: int | None) -> None:
        self.close()
        state = self.state_at(epoch, position)
        batches = self._generate(self.stage, self.stream, epoch, position, state, stop_epoch)
        if self._workers == 0:
            self._batches = batches
        else:
            self._batches = _Ahead(batches, self._read_ahead)
            # An iterator dropped without close() must not leave the thread running: the thread holds the
            # stage and the stream but not this feed, so collecting the feed stops it.
            self._finalizer = weakref.finalize(self, self._batches.stop)
        self._expected = (epoch, position, stop_epoch)

    def run(self, inputs: Any, epoch: int, position: int, stop_epoch: int | None) -> Served | None:
        """The batch at ``(epoch, position)``; None when none is left before ``stop_epoch``.

        Raises:
            HostStageError: If reading or a host operator fails, or an epoch has no batch.
        """
        if self._expected != (epoch, position, stop_epoch):
            self._restart(epoch, position, stop_epoch)
        try:
            columns, records, valid_rows, counts, served_epoch, following, state = next(self._batches)
        except StopIteration:
            self._expected = None
            return None
        except BaseException:
            self.close()
            raise
        self._snapshots[following] = state
        while len(self._snapshots) > _SNAPSHOTS:
            self._snapshots.popitem(last=False)
        self._expected = (*following, stop_epoch)
        meta = np.array([served_epoch, valid_rows], np.int32)
        batch, increments = self.binding.run_host(inputs, columns, records.astype(np.int32), meta, valid_rows)
        return Served(batch, increments, valid_rows, served_epoch, following, counts)

    # -- state ------------------------------------------------------------------

    def state_at(self, epoch: int, position: int) -> dict[str, Any]:
        """The buffer state at a cursor (``ShuffleBuffer.state``); empty at an epoch's start."""
        if position == 0:
            return {"read": 0, "drawn": 0, "positions": []}
        state = self._snapshots.get((epoch, position))
        if state is None:  # not served by this feed: read the epoch again up to it
            state = self._snapshots[(epoch, position)] = self.stage.replay(epoch, position)
        return {"read": state["read"], "drawn": state["drawn"], "positions": list(state["positions"])}

    def restore(self, owner: str, epoch: int, position: int, state: Any) -> None:
        """Checks a buffer state from an iterator state and adopts it for ``(epoch, position)``.

        Raises:
            ValueError: If it is not a buffer state this pipeline could have written at that cursor.
        """
        if not isinstance(state, Mapping) or set(state) != {"read", "drawn", "positions"}:
            raise ValueError(
                f"{owner}: stream_buffer must be a dict with keys ['drawn', 'positions', 'read'], got {state!r}"
            )
        read, drawn, positions = state["read"], state["drawn"], state["positions"]
        if not is_int(drawn) or drawn != position:
            raise ValueError(f"{owner}: stream_buffer drawn must equal position {position}, got {drawn!r}")
        if not is_int(read) or read < drawn:
            raise ValueError(f"{owner}: stream_buffer read must be an int >= drawn {drawn}, got {read!r}")
        if (
            not isinstance(positions, Sequence)
            or len(positions) > self.stage.buffer_size
            or not all(is_int(p) and 0 <= p < read for p in positions)
            or len(set(positions)) != len(positions)
            or read - drawn != len(positions)
        ):
            raise ValueError(
                f"{owner}: stream_buffer positions must be {read - drawn} distinct ints in [0, {read}) "
                f"(at most shuffle_buffer_size={self.stage.buffer_size}), got {positions!r}"
            )
        self.close()
        self._snapshots[(epoch, position)] = {"read": int(read), "drawn": int(drawn), "positions": list(positions)}

    def scan_inputs(self, cursors: list[tuple[int, int]]) -> tuple[Any, ...]:
        """Refused: a stream's cursors are known only by reading it."""
        raise ValueError(
            "scan: a pipeline over a stream source cannot scan, because where each batch ends is known only after "
            "reading the stream; iterate it with next() instead"
        )

    def close(self) -> None:
        """Stops the background thread, if any."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if isinstance(self._batches, _Ahead):
            self._batches.close()
        self._batches, self._expected = None, None


__all__ = ["StreamFeed", "StreamStage"]

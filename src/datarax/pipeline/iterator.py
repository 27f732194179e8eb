"""``PipelineIterator``: the cursor over a pipeline's stream, and its tiny state.

The iterator is two integers, ``(epoch, position)``: the epoch being served
and the epoch position of the next batch's first row. It walks a
``StreamSpec`` (what the stream is) with a ``StepBinding`` (the compiled step
bound to the pipeline's live state). Everything a batch holds is a pure
function of the cursor and the pipeline's construction, so

* ``get_state`` is a small JSON-able dict that does not grow with the data;
* ``set_state`` on an identically built pipeline, in any process, continues
  with exactly the batches the original would have produced;
* prefetch cannot make resume inexact: batches are dispatched ahead (JAX runs
  them asynchronously), but the state reported is that of the last batch
  handed to the consumer, never of work done ahead.

The state also records the stream's identity (``StreamSpec.identity``: seed,
record count, batch size, shuffle, drop_remainder, fingerprint); a state from
a differently configured pipeline is refused with a ``ValueError`` that names
the first difference.

Example:
    >>> import json, numpy as np
    >>> from flax import nnx
    >>> from datarax import Pipeline
    >>> from datarax.sources import MemorySource, MemorySourceConfig
    >>> def build():
    ...     source = MemorySource(MemorySourceConfig(), data={"x": np.arange(10)})
    ...     return Pipeline(source=source, batch_size=4, rngs=nnx.Rngs(0), shuffle=True, num_epochs=2)
    >>> it = iter(build())
    >>> _ = next(it)
    >>> state = json.loads(json.dumps(it.get_state()))
    >>> rest = [b["x"].tolist() for b in it]
    >>> it2 = iter(build())
    >>> it2.set_state(state)
    >>> [b["x"].tolist() for b in it2] == rest
    True
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
from flax import nnx

from datarax.core.validation import is_int, positive_int
from datarax.pipeline.binding import StepBinding
from datarax.pipeline.feeds import DeviceFeed, FilteredHostFeed, HostFeed
from datarax.pipeline.host_allocator import tune_host_allocator
from datarax.pipeline.stream import StreamSpec
from datarax.pipeline.stream_feed import StreamFeed

STATE_VERSION = 1


class _Dispatched(NamedTuple):
    """A batch computed ahead, with what it was computed from."""

    epoch: int
    batch: dict[str, jax.Array]
    increments: Any  # counter increments of the operators counted on the device
    valid_rows: int
    inputs: list[Any]  # the live state's leaves it read (parameters included)
    next: tuple[int, int]  # the cursor after it
    host_counts: Any  # the host operators' (applied, skipped), when a filter dropped records


def _same_kind(given: Any, expected: Any) -> bool:
    """Whether a state's identity field has the kind of value ``get_state`` writes (a bool, an int, ...)."""
    if isinstance(expected, bool):
        return isinstance(given, bool)
    if is_int(expected):
        return is_int(given)
    return type(given) is type(expected)


class PipelineIterator:
    """Iterates the batches of a pipeline's stream; ``Checkpointable``.

    Created by ``iter(pipeline)``, which passes everything explicitly.

    Args:
        stream: The stream walked.
        binding: The compiled step bound to the pipeline's state.
        feed: Turns a cursor into a batch (``DeviceFeed`` or ``HostFeed``).
        first_epoch: The epoch the iterator starts at.
        num_epochs: Epochs to run (None: forever).
        prefetch: Batches dispatched ahead of the consumer.
        on_epoch: Called with an epoch when its first batch is handed out
            (the pipeline counts started epochs, so the next ``iter`` starts a
            fresh one).
        on_restore: Called with ``(epoch, started)`` by ``set_state``.
    """

    def __init__(
        self,
        *,
        stream: StreamSpec,
        binding: StepBinding,
        feed: DeviceFeed | HostFeed | FilteredHostFeed | StreamFeed,
        first_epoch: int,
        num_epochs: int | None,
        prefetch: int,
        on_epoch: Callable[[int], None],
        on_restore: Callable[[int, bool], None],
    ):
        self.stream = stream
        self._binding = binding
        self._feed = feed
        self._reported_epoch = -1
        self._prefetch = prefetch
        self._on_epoch = on_epoch
        self._on_restore = on_restore
        self._epoch, self._position = first_epoch, 0
        self._stop_epoch = None if num_epochs is None else first_epoch + num_epochs
        self._queue: collections.deque = collections.deque()
        self._dispatch = (self._epoch, self._position)
        self._deferred: BaseException | None = None  # a read-ahead failure, raised at the next request
        # Without read-ahead a device-resident source's batch needs no queue: `next` takes the
        # direct path, whose Python is a third of the queued path's (on the CPU backend every
        # microsecond of it is taken from XLA's compute threads; docs/benchmarks.md, issue 7).
        self._direct = feed if isinstance(feed, DeviceFeed) and prefetch == 0 else None
        self._direct_entry = feed.records.entry if self._direct is not None else None

    # -- the stream -----------------------------------------------------------

    def _finished(self, epoch: int) -> bool:
        return self._stop_epoch is not None and epoch >= self._stop_epoch

    @property
    def exhausted(self) -> bool:
        """True when no batch is left."""
        return self._finished(self._epoch)

    def _fill(self, depth: int, inputs: list[Any]) -> None:
        queue, stop = self._queue, self._stop_epoch
        while len(queue) < depth and (stop is None or self._dispatch[0] < stop):
            served = self._feed.run(inputs, *self._dispatch, stop)
            if served is None:  # a filtered stream ran out before stop_epoch
                self._dispatch = (stop, 0)
                break
            # The batch's counts reach the operators when it is handed out.
            queue.append(
                _Dispatched(
                    served.epoch,
                    served.batch,
                    served.increments,
                    served.valid_rows,
                    inputs,
                    served.next,
                    served.host_counts,
                )
            )
            self._dispatch = served.next

    def __iter__(self) -> PipelineIterator:
        return self

    def _epoch_handed_out(self, epoch: int, batch: dict[str, jax.Array]) -> None:
        # Once per epoch: the pipeline counts started epochs, and the host allocator is sized to
        # keep this many batches' buffers instead of faulting them in again (host_allocator).
        self._on_epoch(epoch)
        self._reported_epoch = epoch
        batch_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(batch))
        tune_host_allocator(batch_bytes, batches_held=self._prefetch + 2)

    def __next__(self) -> dict[str, jax.Array]:
        if self._direct is not None:
            # The direct path, written out here rather than in helpers: each Python frame on it
            # is paid on every batch, from the CPU that XLA's compute threads share.
            epoch = self._epoch
            if self._stop_epoch is not None and epoch >= self._stop_epoch:
                raise StopIteration
            # Nothing changes before the step has returned: a failed call leaves the cursor where it was.
            chunk, meta, valid_rows, after = self._direct_entry(epoch, self._position)
            batch = self._binding.hand_out(chunk, meta, valid_rows)
            self._epoch, self._position = after
            if epoch != self._reported_epoch:
                self._epoch_handed_out(epoch, batch)
            return batch
        if self._deferred is not None:  # the batch after the last one handed out failed while read ahead
            error, self._deferred = self._deferred, None
            self._queue.clear()
            self._dispatch = (self._epoch, self._position)
            raise error
        inputs = self._binding.inputs()
        if self._queue and self._queue[0].inputs is not inputs:
            # A parameter changed in place since the batches ahead were
            # dispatched (an optimizer step on an operator, say): they are
            # recomputed, so prefetching never changes what a batch holds.
            self._queue.clear()
            self._dispatch = (self._epoch, self._position)
        self._fill(max(1, self._prefetch), inputs)  # at least the batch handed over now
        if not self._queue:
            raise StopIteration
        head = self._queue.popleft()  # the queue starts at the consumer's cursor
        self._binding.commit(head.increments, head.valid_rows, head.host_counts)
        self._epoch, self._position = head.next
        if head.epoch != self._reported_epoch:
            self._epoch_handed_out(head.epoch, head.batch)
        if self._prefetch:
            try:
                self._fill(self._prefetch, inputs)  # keep the device busy while the consumer works
            except Exception as error:  # noqa: BLE001 - this batch is good: the error belongs to a later one
                self._deferred = error
        return head.batch

    @property
    def feed(self) -> DeviceFeed | HostFeed | FilteredHostFeed | StreamFeed:
        """How this iterator turns a cursor into a batch."""
        return self._feed

    @property
    def binding(self) -> StepBinding:
        """The compiled step, bound to the pipeline's state."""
        return self._binding

    def close(self) -> None:
        """Stops the host stage's workers, if any (also done when the iterator is garbage-collected).

        The iterator stays usable: a later ``next`` starts new workers.
        """
        self._queue.clear()
        self._deferred = None
        self._dispatch = (self._epoch, self._position)
        self._feed.close()

    def __enter__(self) -> PipelineIterator:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def epoch(self) -> int:
        """The epoch of the next batch."""
        return self._epoch

    @property
    def position(self) -> int:
        """The epoch position of the next batch's first row."""
        return self._position

    # -- checkpointing --------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """The state after the last batch handed to the consumer (JSON-serialisable).

        Returns:
            ``{"version", "epoch", "position", "stop_epoch", "seed",
            "num_records", "batch_size", "shuffle", "drop_remainder",
            "fingerprint"}``; a few hundred bytes whatever the data size. A
            pipeline over a stream source adds ``"stream_buffer"``: the
            shuffle buffer's ``{"read", "drawn", "positions"}`` (one int per
            buffered record; see ``datarax.pipeline.stream_feed``).
        """
        state = {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "position": self._position,
            "stop_epoch": self._stop_epoch,
            **self.stream.identity(),
        }
        if isinstance(self._feed, StreamFeed):
            state["stream_buffer"] = self._feed.state_at(self._epoch, self._position)
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continues from ``state`` (from ``get_state`` of an identically built pipeline).

        Args:
            state: The state dict.

        Raises:
            TypeError: If ``state`` is not a dict.
            ValueError: If its keys differ, it comes from a differently
                configured pipeline, or its cursor is out of range. The
                iterator is unchanged on failure.
        """
        owner = "PipelineIterator.set_state"
        if not isinstance(state, Mapping):
            raise TypeError(f"{owner}: state must be a dict, got {type(state).__name__}")
        expected = set(self.stream.identity()) | {"version", "epoch", "position", "stop_epoch"}
        if isinstance(self._feed, StreamFeed):
            expected.add("stream_buffer")
        if set(state) != expected:
            raise ValueError(
                f"{owner}: state keys do not match; "
                f"missing={sorted(expected - set(state))}, unexpected={sorted(set(state) - expected)}"
            )
        if not is_int(state["version"]) or state["version"] != STATE_VERSION:
            raise ValueError(f"{owner}: state version {state['version']!r} is not {STATE_VERSION}")
        for key, value in self.stream.identity().items():
            # Compared with their types: True == 1 and 4.0 == 4 in Python, but a state holding them was
            # not written by get_state (bools stay bools and ints stay ints through JSON and Orbax).
            if state[key] != value or not _same_kind(state[key], value):
                raise ValueError(
                    f"{owner}: the state comes from a differently configured pipeline: "
                    f"{key} is {state[key]!r} in the state but {value!r} here"
                )
        epoch, position, stop = state["epoch"], state["position"], state["stop_epoch"]
        size = self.stream.batch_size
        if not is_int(epoch) or epoch < 0:
            raise ValueError(f"{owner}: epoch must be an int >= 0, got {epoch!r}")
        if isinstance(self._feed, StreamFeed):  # records drawn from the stream's buffer this epoch
            if not is_int(position) or position < 0:
                raise ValueError(f"{owner}: position must be an int >= 0, got {position!r}")
        elif isinstance(self._feed, FilteredHostFeed):  # a position counts records examined: any record's
            if not is_int(position) or not 0 <= position < self.stream.num_records:
                raise ValueError(
                    f"{owner}: position must be an int in [0, {self.stream.num_records}), got {position!r}"
                )
        elif not is_int(position) or not 0 <= position < self.stream.positions_per_epoch or position % size:
            limit = self.stream.positions_per_epoch
            raise ValueError(f"{owner}: position must be a multiple of {size} in [0, {limit}), got {position!r}")
        if stop is not None and (not is_int(stop) or stop < epoch):
            raise ValueError(f"{owner}: stop_epoch must be None or an int >= epoch {epoch}, got {stop!r}")
        if isinstance(self._feed, StreamFeed):  # checked last: adopting it is the first change made
            self._feed.restore(owner, int(epoch), int(position), state["stream_buffer"])
        self._queue.clear()
        self._deferred = None
        self._epoch, self._position, self._stop_epoch = int(epoch), int(position), stop
        self._dispatch = (self._epoch, self._position)
        self._on_restore(self._epoch, self._position > 0)

    # -- many steps in one program --------------------------------------------

    def scan(
        self,
        step_fn: Callable[..., Any],
        *,
        length: int,
        modules: Sequence[nnx.Module] = (),
    ) -> Any:
        """Runs the next ``length`` batches and ``step_fn`` on each as one ``jax.lax.scan``.

        ``step_fn(batch, *modules)`` may update the modules in place (an
        optimizer step, say) and returns any pytree; the results of all steps
        are returned stacked along a new leading axis. The iterator advances by
        ``length`` batches, exactly as ``length`` calls of ``next`` would, and
        the batches are the same (the compiled step is the one ``next`` runs).

        Args:
            step_fn: The user step, traced once per ``(step_fn, length)``.
            length: Number of batches.
            modules: NNX modules ``step_fn`` reads or updates.

        Returns:
            ``step_fn``'s outputs, stacked.

        Raises:
            ValueError: If ``length`` is not a positive int or fewer than
                ``length`` batches remain.
        """
        length = positive_int("scan", "length", length)
        if not self._feed.scannable:  # its cursors are known only by reading: it refuses, saying why
            self._feed.scan_inputs([])
        modules = tuple(modules)
        schedule = self.stream.schedule(self._epoch, self._position, length)
        remaining = sum(not self._finished(epoch) for epoch, _ in schedule)
        if remaining < length:
            raise ValueError(f"scan: length={length} but only {remaining} batches remain")
        outputs = self._binding.scan(step_fn, modules, *self._feed.scan_inputs(schedule))
        self._queue.clear()
        for started in sorted({epoch for epoch, _ in schedule}):
            self._on_epoch(started)
        self._epoch, self._position = self.stream.advance(*schedule[-1])
        self._dispatch = (self._epoch, self._position)
        return outputs


__all__ = ["PipelineIterator", "STATE_VERSION"]

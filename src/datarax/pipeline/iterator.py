"""``PipelineIterator``: the cursor over a pipeline's stream, and its tiny state.

The iterator is two integers, ``(epoch, position)``: the epoch being served
and the epoch position of the next batch's first row. Everything a batch
holds is a pure function of that pair and the pipeline's construction, so

* ``get_state`` is a small JSON-able dict that does not grow with the data;
* ``set_state`` on an identically built pipeline, in any process, continues
  with exactly the batches the original would have produced;
* prefetch cannot make resume inexact: batches are dispatched ahead (JAX runs
  them asynchronously), but the state reported is that of the last batch
  handed to the consumer, never of work done ahead.

The state also records what shapes the stream (seed, record count, batch
size, shuffle, drop_remainder, and a fingerprint of the source spec and the
operator graph and seeds); a state from a differently configured pipeline is
refused with a ``ValueError`` that names the first difference.

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
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

STATE_VERSION = 1

# Jitted scan functions per pipeline and user step function.
_SCAN_FNS: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


class PipelineIterator:
    """Iterates the batches of a ``Pipeline``; ``Checkpointable``.

    Created by ``iter(pipeline)``: it starts at the pipeline's ``next_epoch``
    and runs ``num_epochs`` epochs (forever if None).

    Args:
        pipeline: The pipeline to iterate.
    """

    def __init__(self, pipeline: Any):
        self._pipeline = pipeline
        self._step, self._state = pipeline.compiled_step()
        self._epoch = int(pipeline.next_epoch.get_value())
        self._position = 0
        self._stop_epoch = None if pipeline.num_epochs is None else self._epoch + pipeline.num_epochs
        self._queue: collections.deque = collections.deque()
        self._dispatch = (self._epoch, self._position)
        self._identity_fields = self._identity()

    # -- the stream -----------------------------------------------------------

    def _advance(self, epoch: int, position: int) -> tuple[int, int]:
        position += self._pipeline.batch_size
        if position >= self._pipeline.batches_per_epoch * self._pipeline.batch_size:
            return epoch + 1, 0
        return epoch, position

    def _finished(self, epoch: int) -> bool:
        return self._stop_epoch is not None and epoch >= self._stop_epoch

    def _fill(self, depth: int) -> None:
        while len(self._queue) < depth and not self._finished(self._dispatch[0]):
            epoch, position = self._dispatch
            self._queue.append((epoch, self._step(self._state, epoch, position)))
            self._dispatch = self._advance(epoch, position)

    def _mark_started(self, epoch: int) -> None:
        # The pipeline counts epochs its iterators have started, so the next
        # iter(pipeline) begins a fresh epoch instead of repeating this one.
        if int(self._pipeline.next_epoch.get_value()) <= epoch:
            self._pipeline.next_epoch.set_value(epoch + 1)

    def __iter__(self) -> PipelineIterator:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        self._fill(max(1, self._pipeline.prefetch))  # at least the batch handed over now
        if not self._queue:
            raise StopIteration
        epoch, batch = self._queue.popleft()  # the queue starts at the consumer's cursor
        self._epoch, self._position = self._advance(self._epoch, self._position)
        self._mark_started(epoch)
        self._fill(self._pipeline.prefetch)  # keep the device busy while the consumer works
        return batch

    @property
    def epoch(self) -> int:
        """The epoch of the next batch."""
        return self._epoch

    @property
    def position(self) -> int:
        """The epoch position of the next batch's first row."""
        return self._position

    # -- checkpointing --------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        p = self._pipeline
        return {
            "seed": int(p.seed),
            "num_records": int(p.num_records),
            "batch_size": int(p.batch_size),
            "shuffle": bool(p.shuffle),
            "drop_remainder": bool(p.drop_remainder),
            "fingerprint": int(p.fingerprint()),
        }

    def get_state(self) -> dict[str, Any]:
        """The state after the last batch handed to the consumer (JSON-serialisable).

        Returns:
            ``{"version", "epoch", "position", "stop_epoch", "seed",
            "num_records", "batch_size", "shuffle", "drop_remainder",
            "fingerprint"}``; a few hundred bytes whatever the data size.
        """
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "position": self._position,
            "stop_epoch": self._stop_epoch,
            **self._identity_fields,
        }

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
        if not isinstance(state, Mapping):
            raise TypeError(f"PipelineIterator.set_state: state must be a dict, got {type(state).__name__}")
        expected = set(self.get_state())
        if set(state) != expected:
            raise ValueError(
                "PipelineIterator.set_state: state keys do not match; "
                f"missing={sorted(expected - set(state))}, unexpected={sorted(set(state) - expected)}"
            )
        if state["version"] != STATE_VERSION:
            raise ValueError(f"PipelineIterator.set_state: state version {state['version']!r} is not {STATE_VERSION}")
        for key, value in self._identity_fields.items():
            if state[key] != value:
                raise ValueError(
                    "PipelineIterator.set_state: the state comes from a differently configured pipeline: "
                    f"{key} is {state[key]!r} in the state but {value!r} here"
                )
        epoch, position, stop = state["epoch"], state["position"], state["stop_epoch"]
        limit = self._pipeline.batches_per_epoch * self._pipeline.batch_size
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"PipelineIterator.set_state: epoch must be an int >= 0, got {epoch!r}")
        if (
            isinstance(position, bool)
            or not isinstance(position, int)
            or not 0 <= position < limit
            or position % self._pipeline.batch_size
        ):
            raise ValueError(
                f"PipelineIterator.set_state: position must be a multiple of {self._pipeline.batch_size} "
                f"in [0, {limit}), got {position!r}"
            )
        if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop < epoch):
            raise ValueError(
                f"PipelineIterator.set_state: stop_epoch must be None or an int >= epoch {epoch}, got {stop!r}"
            )
        self._queue.clear()
        self._epoch, self._position, self._stop_epoch = epoch, position, stop
        self._dispatch = (epoch, position)
        if position > 0:
            self._mark_started(epoch)
        elif int(self._pipeline.next_epoch.get_value()) < epoch:
            self._pipeline.next_epoch.set_value(epoch)

    # -- many steps in one program --------------------------------------------

    def scan(
        self,
        step_fn: Callable[..., Any],
        *,
        length: int,
        modules: Sequence[nnx.Module] = (),
    ) -> Any:
        """Runs the next ``length`` batches and ``step_fn`` on each as one ``nnx.scan``.

        ``step_fn(batch, *modules)`` may update the modules in place (an
        optimizer step, say) and returns any pytree; the results of all steps
        are returned stacked along a new leading axis. The iterator advances by
        ``length`` batches, exactly as ``length`` calls of ``next`` would.

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
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise ValueError(f"scan: length must be a positive int, got {length!r}")
        modules = tuple(modules)
        epoch, position = self._epoch, self._position
        schedule = []
        for _ in range(length):
            if self._finished(epoch):
                raise ValueError(f"scan: length={length} but only {len(schedule)} batches remain")
            schedule.append((epoch, position))
            epoch, position = self._advance(epoch, position)
        epochs = np.array([e for e, _ in schedule], dtype=np.int32)
        starts = np.array([p for _, p in schedule], dtype=np.int32)
        outputs = self._scan_fn(step_fn)(self._pipeline, modules, epochs, starts)
        self._queue.clear()
        for started, _ in schedule:
            self._mark_started(started)
        self._epoch, self._position = epoch, position
        self._dispatch = (epoch, position)
        return outputs

    def _scan_fn(self, step_fn: Callable[..., Any]) -> Callable[..., Any]:
        cache = _SCAN_FNS.setdefault(self._pipeline, {})
        if step_fn not in cache:

            @nnx.jit
            def run(pipeline, modules, epochs, starts):
                @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
                def body(carry, epoch, start):
                    pipeline, modules = carry
                    out = step_fn(pipeline.compute_batch(epoch, start), *modules)
                    return (pipeline, modules), out

                _, outputs = body((pipeline, modules), epochs, starts)
                return outputs

            cache[step_fn] = run
        return cache[step_fn]


__all__ = ["PipelineIterator"]

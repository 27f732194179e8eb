"""``StepBinding``: one pipeline's live state, bound to its compiled program.

The program (``datarax.pipeline.program``) is shared by identically built
pipelines, so it holds no state; the binding holds the pipeline's. It

* passes the live state as a flat list of arrays (the cheapest form for JAX's
  dispatch), re-reading the variables' raw values on every call so that an
  in-place update (an optimizer step on an operator's parameters) is seen;
* leaves the operation counters out of the call: the step starts them at zero
  and returns increments, so no step depends on the previous one;
* commits a batch's counts when the batch is handed out: valid rows for
  ``counts_every_record`` operators, added to one integer that their
  counters fold in when read (``datarax.core.row_tally``); the step's
  increments for the others, added by one small jitted function off the
  step's path.

Example:
    >>> import numpy as np
    >>> from datarax import Pipeline
    >>> from datarax.operators import ElementOperator, ElementOperatorConfig
    >>> from datarax.sources import MemorySource, MemorySourceConfig
    >>> op = ElementOperator(ElementOperatorConfig(), fn=lambda e, k: e)
    >>> source = MemorySource(MemorySourceConfig(), data={"x": np.arange(10)})
    >>> _ = list(Pipeline(source=source, stages=[op], batch_size=4))
    >>> op.get_operation_stats()  # the padding rows of the last batch are not counted
    {'applied_count': 10, 'skipped_count': 0}
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.core.module import IterationCount
from datarax.core.row_tally import LAZY, RowTally, follow, frozen_sum, set_count
from datarax.pipeline.program import StateLayout, StepProgram
from datarax.pipeline.sharding import replicate

# The live-state check reads every variable's value on every batch; Variable.get_raw_value
# is a Python call (a frame per variable), while where flax keeps the value in a `_raw_value`
# slot (row_tally.LAZY: flax 0.12) a C-level accessor reads it (through row_tally's property
# for counts).
_get_raw = operator.attrgetter("_raw_value") if LAZY else operator.methodcaller("get_raw_value")


class StepBinding:
    """One pipeline's live state, bound to its program.

    Args:
        parts: ``(source, sampler, nodes)`` of the pipeline (``source`` None
            when the host stage reads it).
        program: The pipeline's ``StepProgram``.
        host_operators: The host stage's operators (each counts every valid row,
            unless a batch brings its own ``host_counts``: with a ``HostFilter``).
    """

    def __init__(self, parts: Any, program: StepProgram, host_operators: Sequence[Any] = ()):
        self.parts = parts
        self.program = program
        nodes, plan = parts[2], program.plan
        self._host_applied = [op._applied_count for op in host_operators]
        self._host_skipped = [op._skipped_count for op in host_operators]
        self._host_applied += [nodes[n]._applied_count for n in plan.host_counted]
        # An unfiltered batch adds its valid rows to each of them: to this one tally, which they follow.
        self._every_record = follow(self._host_applied, RowTally(self))
        # The same counters, in the same order, as the step's increments (device_counters).
        self._masks: dict[int, jax.Array] = {}
        self._device_vars = [
            var for n in plan.device_counted for _, var in nnx.to_flat_state(nnx.state(nodes[n], IterationCount))
        ]
        self._bind()

    def _bind(self) -> None:
        _, counters, fixed = nnx.split(self.parts, IterationCount, ...)
        self._fixed_entries = [v for _, v in nnx.to_flat_state(fixed)]
        self._variables = [v for v in self._fixed_entries if isinstance(v, nnx.Variable)]
        avals = tuple((tuple(np.shape(v)), str(np.asarray(v).dtype)) for v in jax.tree.leaves(counters))
        self.layout = StateLayout(jax.tree.structure(fixed), jax.tree.structure(counters), avals)
        self._step = self.program.step_for(self.layout)
        self._host_step = self.program.host_step_for(self.layout) if self.program.plan.host_input else None
        self._seen = [v.get_raw_value() for v in self._variables]
        self._leaves = self._fixed_leaves()
        self._num_fixed = len(self._leaves)

    def _fixed_leaves(self) -> list[Any]:
        values = [v.get_raw_value() if isinstance(v, nnx.Variable) else v for v in self._fixed_entries]
        leaves = jax.tree.leaves(values)
        replicated = self.program.plan.replicated
        if replicated is not None:  # a sharded step reads the state on every device: one copy each, once
            leaves = [replicate(leaf, replicated) for leaf in leaves]
        return leaves

    def inputs(self) -> list[Any]:
        """The live state's leaves (everything but the counters) to call the program with.

        The same list object as long as no variable was given a new value, so
        callers can tell cheaply (``is``) whether the state changed.
        """
        if not all(map(operator.is_, map(_get_raw, self._variables), self._seen)):
            current = list(map(_get_raw, self._variables))
            leaves = self._fixed_leaves()
            if len(leaves) != self._num_fixed:  # a variable changed structure (e.g. statistics set)
                self._bind()
            else:
                self._seen, self._leaves = current, leaves
        return self._leaves

    def run(self, inputs: Sequence[Any], chunk: Any, meta: Any, valid_rows: int) -> tuple[dict[str, jax.Array], Any]:
        """Computes one batch; returns it and its counter increments (None if all are host-counted).

        Args:
            inputs: The live state's leaves (``inputs()``).
            chunk: The records of the batch's chunk (``RecordSchedule.entry``).
            meta: int32 ``[epoch, valid rows, offset in the chunk]``.
            valid_rows: ``meta[1]`` as an int.
        """
        batch, increments = self._step(inputs, chunk, meta)
        mask = self._masks.get(valid_rows)
        batch[VALID_MASK] = mask if mask is not None else self.valid_mask(valid_rows)
        return batch, increments

    def hand_out(self, chunk: Any, meta: Any, valid_rows: int) -> dict[str, jax.Array]:
        """``run`` then ``commit``, in one call: the whole per-batch path of an iterator without read-ahead.

        The counts are committed once the step has returned, so a step that
        fails changes nothing.
        """
        # inputs(), written out: this runs on every batch, and each Python frame on it is
        # taken from XLA's compute threads on the CPU backend (docs/benchmarks.md, issue 7).
        unchanged = all(map(operator.is_, map(_get_raw, self._variables), self._seen))
        batch, increments = self._step(self._leaves if unchanged else self.inputs(), chunk, meta)
        mask = self._masks.get(valid_rows)
        batch[VALID_MASK] = mask if mask is not None else self.valid_mask(valid_rows)
        if increments is None:  # commit(None, valid_rows), written out
            self._every_record.rows += valid_rows
        else:
            self.commit(increments, valid_rows)
        return batch

    def run_host(
        self, inputs: Sequence[Any], columns: Any, records: Any, meta: Any, valid_rows: int
    ) -> tuple[dict[str, jax.Array], Any]:
        """Computes one batch of a host-read source from its collated columns (see ``run``).

        Args:
            inputs: The live state's leaves (``inputs()``).
            columns: The host stage's numpy columns.
            records: int32 record indices of the rows.
            meta: int32 ``[epoch, valid rows]``.
            valid_rows: ``meta[1]`` as an int.

        For a sharded pipeline ``columns`` and ``records`` are this process's
        rows of the global batch (``HostStage.share``), assembled here into
        global arrays (``jax.make_array_from_process_local_data``).
        """
        rows = self.program.plan.rows
        if rows is not None:
            size = self.program.plan.batch_size
            columns = {
                name: jax.make_array_from_process_local_data(rows, local, (size, *local.shape[1:]))
                for name, local in columns.items()
            }
            records = jax.make_array_from_process_local_data(rows, records, (size,))
        batch, increments = self._host_step(inputs, columns, records, meta)
        mask = self._masks.get(valid_rows)
        batch[VALID_MASK] = mask if mask is not None else self.valid_mask(valid_rows)
        return batch, increments

    def valid_mask(self, valid_rows: int) -> jax.Array:
        """The ``valid_mask`` of a batch with ``valid_rows`` real rows (one device array per count, reused)."""
        mask = self._masks.get(valid_rows)
        if mask is None:
            mask = jnp.arange(self.program.plan.batch_size) < valid_rows
            if self.program.plan.rows is not None:
                mask = jax.device_put(mask, self.program.plan.rows)
            self._masks[valid_rows] = mask
        return mask

    def records_chunk(self, epoch: int, chunk_start: int) -> jax.Array:
        """The records of the chunk of positions from ``chunk_start``, computed on the device."""
        return self.program.chunk(self.inputs(), self.layout, np.uint32(epoch), np.int32(chunk_start))

    def scan(self, step_fn: Any, modules: tuple, records: Any, metas: Any, columns: Any = None) -> Any:
        """Runs ``step_fn`` on the batches of ``records`` / ``metas`` (/ ``columns``) in one scan; commits counts."""
        modules_graphdef, module_state = nnx.split(modules)
        run = self.program.scan(step_fn, modules_graphdef)
        increments, module_state, outputs = run(self.inputs(), self.layout, module_state, records, metas, columns)
        nnx.update(modules, module_state)
        self.commit(increments, int(np.sum(metas[:, 1])))
        return outputs

    def commit(self, increments: Any, valid_rows: int, host_counts: Sequence[tuple[int, int]] | None = None) -> None:
        """Adds a handed-out batch's counts to the operators' counters.

        ``host_counts`` gives the host operators' ``(applied, skipped)`` when
        they are not ``valid_rows`` each (a ``HostFilter`` dropped records).
        """
        if host_counts is None:  # every batch of an unfiltered stream
            self._every_record.rows += valid_rows
        else:
            for i, var in enumerate(self._host_applied):
                if i < len(host_counts):
                    applied, skipped = host_counts[i]
                    set_count(var, frozen_sum(_get_raw(var), applied))
                    if skipped:
                        set_count(self._host_skipped[i], frozen_sum(_get_raw(self._host_skipped[i]), skipped))
                else:
                    set_count(var, frozen_sum(_get_raw(var), valid_rows))
        if increments is not None:
            current = list(map(_get_raw, self._device_vars))
            for var, value in zip(self._device_vars, self.program.accumulate(current, increments), strict=True):
                set_count(var, value)


__all__ = ["StepBinding"]

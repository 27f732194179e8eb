"""The compiled step: one XLA program per batch, shared by identically built pipelines.

``compute_batch`` is the whole per-batch computation, written once and used
by every path (``next``, ``scan``, a user's own ``jit``):

    positions [start, start+B) -> valid_mask, clamp -> records (sampler)
    -> source.get_records -> every node in topological order
       (vmapped, per-record keys from the node key, counting valid rows)
    -> {**sink output, "valid_mask"}

``StepProgram`` owns the jitted functions for one *plan* (the static part of
a pipeline: its NNX graph definition and a ``StepPlan``). Pipelines built the
same way have equal graph definitions and plans, so ``ProgramCache`` hands
them the same ``StepProgram`` and JAX's own cache the same executable: a
second identical ``Pipeline`` does not compile again. Everything that varies
(records, parameters, counters) is an argument, never a baked constant.

The per-batch step takes the records from the host (``RecordSchedule``)
rather than computing the Feistel permutation itself, and returns, besides
the batch, only the counter increments of operators that may skip records
(``counts_every_record`` operators are counted on the host from the number
of valid rows). It reads no counter, so consecutive steps do not depend on
each other and JAX can run them back to back. ``pipeline/binding.py`` ties a
pipeline's live state to its program.

Example:
    >>> import numpy as np
    >>> from datarax import Pipeline
    >>> from datarax.sources import MemorySource, MemorySourceConfig
    >>> def build():
    ...     source = MemorySource(MemorySourceConfig(), data={"x": np.arange(10)})
    ...     return Pipeline(source=source, batch_size=4)
    >>> a, b = build(), build()
    >>> a.program is b.program  # built identically: one program, compiled once
    True
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.core.fusion import replicated_probe
from datarax.core.module import IterationCount
from datarax.core.prng import record_keys
from datarax.pipeline.dag import SOURCE, DagGraph
from datarax.pipeline.records import chunk_size


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """The static description of a pipeline's step (hashable; part of the program's identity).

    Attributes:
        graph: The validated operator DAG.
        num_records: Records per epoch.
        batch_size: Rows per batch.
        node_keys: ``(node, raw key data)`` for every stochastic node that draws
            from the pipeline seed; its root key is ``wrap_key_data(data)``.
        own_key_salts: ``(node, salt)`` for nodes whose operator has its own
            rngs and is a clone of another node's operator: the salt is folded
            into its record keys so that the two draw differently.
        host_counted: Nodes whose operator ``counts_every_record``: the step
            does not count them, the iterator adds the valid rows on the host.
        host_input: The source is read by the host stage: the step receives
            its columns instead of gathering them.
        rows: For a sharded pipeline, the ``NamedSharding`` of every batch
            column (its leading, batch axis split over the mesh's data axes,
            the rest replicated); None: one device.
    """

    graph: DagGraph
    num_records: int
    batch_size: int
    node_keys: tuple[tuple[str, tuple[int, ...]], ...]
    own_key_salts: tuple[tuple[str, int], ...]
    host_counted: tuple[str, ...] = ()
    host_input: bool = False
    rows: Any = None

    @property
    def replicated(self) -> Any:
        """The ``NamedSharding`` of values every device holds whole (None: one device)."""
        return None if self.rows is None else jax.sharding.NamedSharding(self.rows.mesh, jax.sharding.PartitionSpec())

    def jit_options(self) -> dict[str, Any]:
        """``jax.jit`` options of the per-batch steps: batches split by rows, counter increments replicated."""
        return {} if self.rows is None else {"out_shardings": (self.rows, self.replicated)}

    @property
    def device_counted(self) -> tuple[str, ...]:
        """The nodes whose counter increments the step returns, in graph order."""
        return tuple(n for n in self.graph.order if n not in self.host_counted)


def merge_inputs(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The input of a node with several predecessors: their outputs' union (later wins)."""
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


def node_record_keys(plan: StepPlan, node: str, op: Any, epoch: Any, records: Any) -> jax.Array | None:
    """The per-record keys node ``node`` receives (None for a deterministic operator)."""
    if not op.stochastic:
        return None
    derived = dict(plan.node_keys)
    if node in derived:
        root = jax.random.wrap_key_data(jnp.asarray(derived[node], dtype=jnp.uint32))
        return record_keys(root, epoch, records)
    keys = op.record_keys(epoch, records)  # the operator's own rngs: an explicit override
    salt = dict(plan.own_key_salts).get(node)
    if salt is not None:
        keys = jax.vmap(lambda k: jax.random.fold_in(k, salt))(keys)
    return keys


def compute_batch(plan: StepPlan, source: Any, sampler: Any, nodes: Mapping[str, Any], epoch: Any, start: Any):
    """The batch whose first row is epoch position ``start`` of ``epoch`` (traceable).

    The records are computed in the graph (``sampler.indices_at``), so
    ``epoch`` and ``start`` may be traced; the iterator's step gets the same
    records from the host (``RecordSchedule``) and calls ``transform_records``.

    Args:
        plan: The static plan.
        source: The data source (``get_records``).
        sampler: Maps epoch positions to records (``indices_at``).
        nodes: Node name to operator.
        epoch: Epoch number (int or traced int32 scalar).
        start: Epoch position of the first row (int or traced).

    Returns:
        The batch dict, with ``valid_mask``.
    """
    n, size = plan.num_records, plan.batch_size
    positions = epoch_positions(start, size)
    valid = positions < np.uint32(n)
    # Padding rows copy the epoch's last real position, keys and all: real
    # values a model can safely see, masked out by valid_mask.
    records = sampler.indices_at(jnp.minimum(positions, np.uint32(n - 1)).astype(jnp.int32), n, epoch)
    return transform_records(plan, source, nodes, records, valid, epoch)


def epoch_positions(start: Any, size: int) -> jax.Array:
    """Positions ``start .. start + size - 1`` as uint32.

    An epoch has up to 2**31 records, and positions past its end (padding, a
    chunk's tail) must not wrap around as int32 would.
    """
    return jnp.asarray(start).astype(jnp.uint32) + jnp.arange(size, dtype=jnp.uint32)


def transform_records(
    plan: StepPlan,
    source: Any,
    nodes: Mapping[str, Any],
    records: Any,
    valid: Any,
    epoch: Any,
    uncounted: Sequence[str] = (),
    columns: Mapping[str, Any] | None = None,
) -> dict[str, jax.Array]:
    """Gathers ``records`` and runs every node on them: the part of a batch after the sampler.

    Args:
        plan: The static plan.
        source: The data source.
        nodes: Node name to operator.
        records: int32 ``(B,)`` record indices (padding rows repeat a real one).
        valid: bool ``(B,)``, the ``valid_mask``.
        epoch: The epoch (for record keys).
        uncounted: Nodes whose counters are left alone (counted elsewhere).
        columns: The records' columns when the host stage has read them
            (then ``source`` is not used).

    Returns:
        The batch dict, with ``valid_mask``.
    """
    values = {SOURCE: dict(columns) if columns is not None else source.get_records(records)}
    # Every node's keys are left to XLA to fuse into the loops that read them: the hash is the
    # unrolled Threefry (core/threefry), which LLVM computes once per row there. A fusion
    # boundary in front of them (a conditional, core/fusion) used to halve the CIFAR chain's step
    # when the hash was a rolled loop; measured again on 2026-12-04 it gained nothing there
    # (634 vs 639 us per batch) and cost about 11% of a W1 batch, so it was removed.
    # Fusion boundaries that operators ask for take their predicate from the epoch, which every
    # device holds: from the batch's values, a sharded step would all-reduce a value at each one.
    with replicated_probe(jnp.asarray(epoch)):
        keys = {node: node_record_keys(plan, node, nodes[node], epoch, records) for node in plan.graph.order}
        for node in plan.graph.order:
            op = nodes[node]
            inputs = merge_inputs([values[p] for p in plan.graph.inputs[node]])
            out = op.apply_batch({**inputs, VALID_MASK: valid}, keys[node], count=node not in uncounted)
            values[node] = {k: v for k, v in out.items() if k != VALID_MASK}
    return {**values[plan.graph.sink], VALID_MASK: valid}


def device_counters(nodes: Mapping[str, Any], plan: StepPlan) -> list[Any]:
    """The counters (values, or Variables outside a trace) of the device-counted nodes, in a fixed order."""
    return [leaf for node in plan.device_counted for leaf in jax.tree.leaves(nnx.state(nodes[node], IterationCount))]


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """How a pipeline's state is passed to its program (a static argument).

    Attributes:
        fixed: Tree structure of everything but the operation counters.
        counters: Tree structure of the operation counters.
        counter_avals: ``(shape, dtype)`` of each counter: the step starts
            every counter at zero, so what it returns are increments.
    """

    fixed: Any
    counters: Any
    counter_avals: tuple[tuple[tuple[int, ...], str], ...]


class StepProgram:
    """The jitted functions of one plan; shared by every pipeline built to that plan.

    Args:
        graphdef: The NNX graph definition of ``(source, sampler, nodes)``.
        plan: The ``StepPlan``.
    """

    def __init__(self, graphdef: Any, plan: StepPlan):
        self.graphdef = graphdef
        self.plan = plan
        self.trace_count = 0
        chunk_options = {} if plan.rows is None else {"out_shardings": plan.replicated}
        self.chunk = jax.jit(self._chunk, static_argnums=1, **chunk_options)
        self._steps: dict[Any, Callable[..., Any]] = {}
        self.accumulate = jax.jit(_accumulate)
        self._scans: dict[Any, Callable[..., Any]] = {}

    def _merged(self, fixed: Sequence[Any], layout: StateLayout) -> Any:
        fixed_state = jax.tree.unflatten(layout.fixed, fixed)
        zeros = [jnp.zeros(shape, dtype) for shape, dtype in layout.counter_avals]
        return nnx.merge(self.graphdef, fixed_state, jax.tree.unflatten(layout.counters, zeros))

    def _batch(self, parts: Any, records: Any, meta: Any, columns: Any = None) -> tuple[dict[str, jax.Array], Any]:
        source, _, nodes = parts
        valid = jnp.arange(self.plan.batch_size, dtype=jnp.int32) < meta[1]
        batch = transform_records(
            self.plan, source, nodes, records, valid, meta[0], self.plan.host_counted, columns=columns
        )
        increments = device_counters(nodes, self.plan)
        return batch, (jnp.stack(increments) if increments else None)

    def step_for(self, layout: StateLayout) -> Callable[..., Any]:
        """The jitted ``step(fixed, chunk, meta) -> (batch without valid_mask, increments)`` for a state layout.

        One function per layout, with the layout closed over rather than
        passed as a static argument: a static argument is hashed and compared
        on every call, which the per-batch path should not pay.
        """
        jitted = self._steps.get(layout)
        if jitted is None:

            def pipeline_step(fixed, chunk, meta):
                return self._step(fixed, layout, chunk, meta)

            jitted = self._steps[layout] = jax.jit(pipeline_step, **self.plan.jit_options())
        return jitted

    def host_step_for(self, layout: StateLayout) -> Callable[..., Any]:
        """The jitted ``step(fixed, columns, records, meta)`` of a host-read source, ``meta = [epoch, valid rows]``.

        The host stage has read and collated the records (``columns``, one
        numpy array per column); the step runs the device operators on them.
        """
        key = ("host", layout)
        jitted = self._steps.get(key)
        if jitted is None:

            def pipeline_host_step(fixed, columns, records, meta):
                self.trace_count += 1  # runs only while tracing: counts compilations
                batch, increments = self._batch(self._merged(fixed, layout), records, meta, columns)
                return {k: v for k, v in batch.items() if k != VALID_MASK}, increments

            jitted = self._steps[key] = jax.jit(pipeline_host_step, **self.plan.jit_options())
        return jitted

    def _step(self, fixed, layout, chunk, meta):
        self.trace_count += 1  # runs only while tracing: counts compilations
        # Materialised once: fused into a gather's loop, the slice (with its
        # bounds clamping) would be recomputed for every element gathered,
        # which measured 5x slower on W1.
        records = jax.lax.optimization_barrier(jax.lax.dynamic_slice_in_dim(chunk, meta[2], self.plan.batch_size))
        if self.plan.rows is not None:  # each device gathers and transforms its own rows
            records = jax.lax.with_sharding_constraint(records, self.plan.rows)
        batch, increments = self._batch(self._merged(fixed, layout), records, meta)
        # The mask is left out: it takes one of two values per stream (all
        # True, or the padded last batch's), which the binding keeps on the
        # device and attaches, rather than a new output buffer every batch.
        return {k: v for k, v in batch.items() if k != VALID_MASK}, increments

    def _chunk(self, fixed, layout, epoch, chunk_start):
        _, sampler, _ = self._merged(fixed, layout)
        n = self.plan.num_records
        size = chunk_size(self.plan.batch_size, n)
        positions = jnp.minimum(epoch_positions(chunk_start, size), np.uint32(n - 1)).astype(jnp.int32)
        return sampler.indices_at(positions, n, epoch).astype(jnp.int32)

    def scan(self, step_fn: Callable[..., Any], modules_graphdef: Any) -> Callable[..., Any]:
        """The jitted ``run(fixed, layout, module_state, records, metas[, columns])`` for ``step_fn``.

        It computes one batch per row of ``records`` / ``metas`` (and of the
        host-read ``columns``, stacked, for a host source), as the per-batch
        step does, and feeds it to ``step_fn(batch, *modules)`` inside one
        ``jax.lax.scan``, the modules' state and the counter increments being
        the carry. Returns ``(increments, module_state, outputs)``.
        """
        cache_key = (step_fn, modules_graphdef)
        if cache_key not in self._scans:

            def run(fixed, layout, module_state, records, metas, columns=None):
                def body(carry, cursor):
                    total, module_state = carry
                    modules = nnx.merge(modules_graphdef, module_state)
                    batch, increments = self._batch(self._merged(fixed, layout), *cursor)
                    out = step_fn(batch, *modules)
                    total = None if increments is None else total + increments
                    return (total, nnx.state(modules)), out

                self.trace_count += 1
                first = jax.tree.map(lambda x: x[0], (records, metas, columns))
                zero = jax.eval_shape(lambda: self._batch(self._merged(fixed, layout), *first)[1])
                start = None if zero is None else jnp.zeros(zero.shape, zero.dtype)
                xs = (records, metas, columns)
                (total, module_state), outputs = jax.lax.scan(body, (start, module_state), xs)
                return total, module_state, outputs

            self._scans[cache_key] = jax.jit(run, static_argnums=1)
        return self._scans[cache_key]


def _accumulate(counters: list[Any], increments: Any) -> list[Any]:
    return [c + increments[i].astype(c.dtype) for i, c in enumerate(counters)]


class ProgramCache:
    """Step programs keyed by (graph definition, plan), least recently used dropped first.

    Pipelines ask the cache for their program; equal keys (pipelines built the
    same way, with the same functions and configs) get the same program and
    so reuse its compiled executables.

    Args:
        capacity: Programs kept.
    """

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._programs: collections.OrderedDict[Any, StepProgram] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, graphdef: Any, plan: StepPlan) -> StepProgram:
        """The program for ``(graphdef, plan)``, created on first request.

        A graph definition with an unhashable static attribute (a list held
        by an operator, say) cannot be compared with others, so its pipeline
        gets a program of its own.
        """
        key = (graphdef, plan)
        try:
            hash(key)
        except TypeError:
            self.misses += 1
            return StepProgram(graphdef, plan)
        program = self._programs.get(key)
        if program is None:
            self.misses += 1
            program = self._programs[key] = StepProgram(graphdef, plan)
            while len(self._programs) > self.capacity:
                self._programs.popitem(last=False)
        else:
            self.hits += 1
            self._programs.move_to_end(key)
        return program

    def clear(self) -> None:
        """Forgets every program (their compiled executables go with them)."""
        self._programs.clear()

    def __len__(self) -> int:
        return len(self._programs)


# The process's programs. An object with an explicit lifetime rather than a
# cache keyed by pipeline objects: what it holds is keyed by value, so equal
# pipelines share, and `clear()` releases everything.
PROGRAMS = ProgramCache()


__all__ = [
    "PROGRAMS",
    "ProgramCache",
    "StepPlan",
    "StepProgram",
    "compute_batch",
    "transform_records",
]

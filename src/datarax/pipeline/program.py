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

``StepBinding`` ties one pipeline's live state to a program. It keeps the
pipeline's variables in a flat list and reads their raw values on every call
(so in-place parameter updates are seen), passes them as a flat list of
arrays (the cheapest form for JAX's dispatch), and writes the operation
counters the step returns back into the modules.

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
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.core.module import IterationCount
from datarax.core.prng import record_keys
from datarax.pipeline.dag import SOURCE, DagGraph


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
    """

    graph: DagGraph
    num_records: int
    batch_size: int
    node_keys: tuple[tuple[str, tuple[int, ...]], ...]
    own_key_salts: tuple[tuple[str, int], ...]


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
    positions = jnp.asarray(start, dtype=jnp.int32) + jnp.arange(size, dtype=jnp.int32)
    valid = positions < n
    # Padding rows copy the epoch's last real position, keys and all: real
    # values a model can safely see, masked out by valid_mask.
    positions = jnp.minimum(positions, n - 1)
    records = sampler.indices_at(positions, n, epoch)
    values = {SOURCE: source.get_records(records)}
    for node in plan.graph.order:
        op = nodes[node]
        inputs = merge_inputs([values[p] for p in plan.graph.inputs[node]])
        keys = node_record_keys(plan, node, op, epoch, records)
        out = op.apply_batch({**inputs, VALID_MASK: valid}, keys)
        values[node] = {k: v for k, v in out.items() if k != VALID_MASK}
    return {**values[plan.graph.sink], VALID_MASK: valid}


def _is_counter(path: tuple, value: Any) -> bool:
    return isinstance(value, IterationCount)


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
        self.step = jax.jit(self._step, static_argnums=2)
        self._scans: dict[Any, Callable[..., Any]] = {}

    def _merged(self, fixed: Sequence[Any], counters: Sequence[Any], treedefs: tuple[Any, Any]) -> Any:
        fixed_state = jax.tree.unflatten(treedefs[0], fixed)
        counter_state = jax.tree.unflatten(treedefs[1], counters)
        return nnx.merge(self.graphdef, fixed_state, counter_state)

    def _batch(self, parts: Any, epoch: Any, start: Any) -> tuple[dict[str, jax.Array], list[Any]]:
        source, sampler, nodes = parts
        batch = compute_batch(self.plan, source, sampler, nodes, epoch, start)
        return batch, jax.tree.leaves(nnx.state(parts, IterationCount))

    def _step(self, fixed, counters, treedefs, epoch, start):
        self.trace_count += 1  # runs only while tracing: counts compilations
        return self._batch(self._merged(fixed, counters, treedefs), epoch, start)

    def scan(self, step_fn: Callable[..., Any], modules_graphdef: Any) -> Callable[..., Any]:
        """The jitted ``run(fixed, counters, treedefs, module_state, epochs, starts)`` for ``step_fn``.

        It computes one batch per ``(epoch, start)`` pair and feeds it to
        ``step_fn(batch, *modules)`` inside one ``jax.lax.scan``; the pipeline's
        counters and the modules' state are the carry.
        """
        cache_key = (step_fn, modules_graphdef)
        if cache_key not in self._scans:

            def run(fixed, counters, treedefs, module_state, epochs, starts):
                def body(carry, cursor):
                    counters, module_state = carry
                    parts = self._merged(fixed, counters, treedefs)
                    modules = nnx.merge(modules_graphdef, module_state)
                    batch, counters = self._batch(parts, *cursor)
                    out = step_fn(batch, *modules)
                    return (counters, nnx.state(modules)), out

                self.trace_count += 1
                (counters, module_state), outputs = jax.lax.scan(body, (counters, module_state), (epochs, starts))
                return counters, module_state, outputs

            self._scans[cache_key] = jax.jit(run, static_argnums=2)
        return self._scans[cache_key]


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


class StepBinding:
    """One pipeline's live state, bound to its program.

    Args:
        parts: ``(source, sampler, nodes)`` of the pipeline.
        program: The pipeline's ``StepProgram``.
    """

    def __init__(self, parts: Any, program: StepProgram):
        self.parts = parts
        self.program = program
        self._bind()

    def _bind(self) -> None:
        _, counters, fixed = nnx.split(self.parts, IterationCount, ...)
        self._counter_vars = [v for _, v in nnx.to_flat_state(counters)]
        self._fixed_entries = [v for _, v in nnx.to_flat_state(fixed)]
        fixed_values = self._fixed_values()
        self.treedefs = (
            jax.tree.structure(fixed),
            jax.tree.structure(counters),
        )
        self._num_fixed = len(fixed_values)

    def _fixed_values(self) -> list[Any]:
        # Raw values, read on every call so in-place updates (an optimizer
        # step on an operator's parameters) are seen; plain data arrays are
        # held directly.
        values = [v.get_raw_value() if isinstance(v, nnx.Variable) else v for v in self._fixed_entries]
        return jax.tree.leaves(values)

    def inputs(self) -> list[Any]:
        """The live state's leaves (everything but the counters) to call the program with."""
        fixed = self._fixed_values()
        if len(fixed) != self._num_fixed:  # a variable changed structure (e.g. statistics set)
            self._bind()
            fixed = self._fixed_values()
        return fixed

    def inputs_are_current(self, inputs: Sequence[Any]) -> bool:
        """True if the live state still holds exactly ``inputs`` (JAX arrays are immutable)."""
        current = self._fixed_values()
        return len(current) == len(inputs) and all(a is b for a, b in zip(current, inputs, strict=True))

    def current_counters(self) -> list[Any]:
        """The modules' operation counters now."""
        return [v.get_raw_value() for v in self._counter_vars]

    def store_counters(self, counters: Sequence[Any]) -> None:
        """Writes the counters a program call returned back into the modules."""
        for var, value in zip(self._counter_vars, counters, strict=True):
            var.set_raw_value(value)

    def commit_counters(self, before: Sequence[Any], after: Sequence[Any]) -> None:
        """Stores the counters of a batch computed from ``before`` ahead of time.

        Normally the modules still hold ``before`` (the same arrays), and
        ``after`` is stored as it is. If the counters were changed meanwhile
        (``reset_operation_stats``, a restored checkpoint), only the batch's
        own increments are added to what they hold now.
        """
        current = self.current_counters()
        if all(c is b for c, b in zip(current, before, strict=True)):
            self.store_counters(after)
        else:
            self.store_counters([c + (a - b) for c, b, a in zip(current, before, after, strict=True)])

    def run(
        self, inputs: Sequence[Any], counters: Sequence[Any], epoch: Any, start: Any
    ) -> tuple[dict[str, jax.Array], list[Any]]:
        """Computes one batch from ``inputs`` and ``counters``; returns it with the counters after it.

        Nothing is stored: the caller commits the counters when the batch is handed out.
        """
        return self.program.step(list(inputs), list(counters), self.treedefs, epoch, start)


__all__ = ["PROGRAMS", "ProgramCache", "StepBinding", "StepPlan", "StepProgram", "compute_batch"]

"""``Pipeline``: a source, a graph of operators and a batch size, compiled as one step.

The pipeline owns the epoch order and nothing else moves: for batch ``t`` of
epoch ``e`` one jitted function computes

    positions [t*B, (t+1)*B)  ->  records (the sampler: Feistel or identity)
    ->  source.get_records  ->  every operator (vmapped, per-record keys)
    ->  {**columns, "valid_mask"}

so there is no per-element Python work and, after the first batch, no
retracing. Positions past the end of the epoch are clamped to the last one:
padding rows are copies of the epoch's last real record (keys included), and
``valid_mask`` marks them False. With ``drop_remainder=True`` the short batch
is not produced at all.

Iteration state is two integers, ``(epoch, position)``; the whole remaining
stream is a pure function of them and the pipeline's construction, which is
what makes resume exact and the state tiny (see ``PipelineIterator``).

Iterating a pipeline again continues with the next epochs, like a PyTorch
DataLoader: the pipeline counts the epochs its iterators have started
(``next_epoch``), and each new iterator starts there and runs ``num_epochs``.

Example:
    >>> import numpy as np
    >>> from flax import nnx
    >>> from datarax import Pipeline
    >>> from datarax.sources import MemorySource, MemorySourceConfig
    >>> source = MemorySource(MemorySourceConfig(), data={"x": np.arange(10)})
    >>> pipeline = Pipeline(source=source, batch_size=4, rngs=nnx.Rngs(0), shuffle=True)
    >>> batches = list(pipeline)
    >>> sorted(np.concatenate([b["x"][b["valid_mask"]] for b in batches]).tolist())
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    >>> [b["valid_mask"].sum().item() for b in batches]
    [4, 4, 2]
"""

from __future__ import annotations

import weakref
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core.batcher import VALID_MASK, batched_spec, validate_batch_size
from datarax.core.config import DataraxModuleConfig
from datarax.core.data_source import DataSourceModule
from datarax.core.module import DataraxModule, IterationCount
from datarax.core.operator import OperatorModule
from datarax.core.prng import seed_from_key, stream_root_key
from datarax.core.spec import spec_to_str
from datarax.pipeline.dag import SOURCE, DagGraph, validate_dag
from datarax.samplers import SequentialSampler, SequentialSamplerConfig, ShuffleSampler, ShuffleSamplerConfig

SHUFFLE_STREAM = "shuffle"

# Compiled step functions per pipeline. Kept outside the module: a jitted
# function is not module state, and the graph definition it closes over
# describes the module itself.
_COMPILED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _merge_inputs(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


class Pipeline(DataraxModule):
    """A compiled data pipeline: source -> operators -> batches with ``valid_mask``.

    Args:
        source: A ``DataSourceModule`` with ``len`` and ``get_records``.
        stages: Operators applied in order (a linear pipeline).
        batch_size: Rows per batch.
        rngs: Random number generators; the ``shuffle`` stream (or
            ``default``) seeds the epoch order. Required when ``shuffle``.
        shuffle: Visit records in a new Feistel permutation every epoch.
        drop_remainder: Drop each epoch's short last batch instead of padding it.
        num_epochs: Epochs each ``iter(pipeline)`` runs; None runs forever.
        prefetch: Batches dispatched ahead of the consumer (JAX runs them
            asynchronously); 0 disables it.
        name: Optional module name.

    Raises:
        TypeError: For a source, stage or rngs of the wrong type.
        ValueError: For a bad batch size, epoch count or prefetch depth, a
            shuffle without rngs, a ``drop_remainder`` pipeline that can never
            fill a batch, or stages whose specs do not chain (the message
            names the stage and the spec it was given).
    """

    def __init__(
        self,
        *,
        source: DataSourceModule,
        stages: Sequence[OperatorModule] = (),
        batch_size: int,
        rngs: nnx.Rngs | None = None,
        shuffle: bool = False,
        drop_remainder: bool = False,
        num_epochs: int | None = 1,
        prefetch: int = 2,
        name: str | None = None,
        _dag: tuple[Mapping[str, OperatorModule], DagGraph, tuple[str, ...]] | None = None,
    ):
        salted: tuple[str, ...] = ()
        if _dag is not None:  # from_dag: nodes, a validated graph, the nodes holding clones
            nodes, graph, salted = _dag
        else:
            if isinstance(stages, OperatorModule) or not isinstance(stages, Sequence):
                raise TypeError(f"Pipeline: stages must be a sequence of operators, got {type(stages).__name__}")
            nodes = {f"stage_{i}": op for i, op in enumerate(stages)}
            names = list(nodes)
            edges = list(zip([SOURCE, *names], names))  # no stages: no edges
            graph = validate_dag(names, edges, names[-1] if names else SOURCE)
        self._build(
            source=source,
            nodes=dict(nodes),
            graph=graph,
            batch_size=batch_size,
            rngs=rngs,
            shuffle=shuffle,
            drop_remainder=drop_remainder,
            num_epochs=num_epochs,
            prefetch=prefetch,
            name=name,
        )
        # A cloned operator has its original's stream key; folding the node's
        # name into its record keys gives each branch its own draws.
        self.key_salts = tuple((n, zlib.crc32(n.encode())) for n in salted)

    @classmethod
    def from_dag(
        cls,
        *,
        source: DataSourceModule,
        nodes: Mapping[str, OperatorModule],
        edges: Sequence[tuple[str, str]],
        sink: str,
        batch_size: int,
        rngs: nnx.Rngs | None = None,
        shuffle: bool = False,
        drop_remainder: bool = False,
        num_epochs: int | None = 1,
        prefetch: int = 2,
        name: str | None = None,
    ) -> Pipeline:
        """Builds a pipeline from a DAG of operators rooted at ``"source"``.

        A node with several inputs receives the union of their output dicts
        (a key produced by two inputs must have one spec; the input listed
        later in ``edges`` wins). An operator object used by several nodes is
        cloned, so every branch has its own state. The graph (names, edges,
        cycles, sink reachability) and every node's specs are checked here.

        Args:
            source: The data source.
            nodes: Mapping of node name to operator.
            edges: ``(from, to)`` pairs; ``"source"`` is the root.
            sink: The node whose output is the batch.
            batch_size: Rows per batch.
            rngs: As for ``Pipeline``.
            shuffle: As for ``Pipeline``.
            drop_remainder: As for ``Pipeline``.
            num_epochs: As for ``Pipeline``.
            prefetch: As for ``Pipeline``.
            name: Optional module name.

        Returns:
            The pipeline.

        Raises:
            TypeError: If ``nodes`` is not a mapping of operators.
            ValueError: For an invalid graph or mismatched specs.

        Example:
            >>> import numpy as np
            >>> from datarax.operators import ElementOperator, ElementOperatorConfig
            >>> from datarax.sources import MemorySource, MemorySourceConfig
            >>> src = MemorySource(MemorySourceConfig(), data={"x": np.arange(4.0)})
            >>> double = ElementOperator(ElementOperatorConfig(), fn=lambda e, k: {"y": e["x"] * 2})
            >>> p = Pipeline.from_dag(source=src, nodes={"double": double},
            ...                       edges=[("source", "double")], sink="double", batch_size=4)
            >>> next(iter(p))["y"].tolist()
            [0.0, 2.0, 4.0, 6.0]
        """
        if not isinstance(nodes, Mapping):
            raise TypeError(f"from_dag: nodes must be a mapping of name to operator, got {type(nodes).__name__}")
        graph = validate_dag(list(nodes), edges, sink)
        seen: set[int] = set()
        own_nodes = {}
        cloned = []
        for node_name, op in nodes.items():
            if id(op) in seen and isinstance(op, OperatorModule):
                op = op.clone()
                cloned.append(node_name)
            seen.add(id(op))
            own_nodes[node_name] = op
        return cls(
            source=source,
            batch_size=batch_size,
            rngs=rngs,
            shuffle=shuffle,
            drop_remainder=drop_remainder,
            num_epochs=num_epochs,
            prefetch=prefetch,
            name=name,
            _dag=(own_nodes, graph, tuple(cloned)),
        )

    def _build(
        self,
        *,
        source: DataSourceModule,
        nodes: dict[str, OperatorModule],
        graph: DagGraph,
        batch_size: int,
        rngs: nnx.Rngs | None,
        shuffle: bool,
        drop_remainder: bool,
        num_epochs: int | None,
        prefetch: int,
        name: str | None,
    ) -> None:
        if not isinstance(source, DataSourceModule):
            raise TypeError(f"Pipeline: source must be a DataSourceModule, got {type(source).__name__}")
        for node_name, op in nodes.items():
            if not isinstance(op, OperatorModule):
                raise TypeError(f"Pipeline: stage {node_name!r} must be an OperatorModule, got {type(op).__name__}")
        batch_size = validate_batch_size(batch_size)
        for flag_name, flag in (("shuffle", shuffle), ("drop_remainder", drop_remainder)):
            if not isinstance(flag, bool):
                raise ValueError(f"Pipeline: {flag_name} must be a bool, got {flag!r}")
        if num_epochs is not None and (
            isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs <= 0
        ):
            raise ValueError(f"Pipeline: num_epochs must be a positive int or None, got {num_epochs!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"Pipeline: prefetch must be a non-negative int, got {prefetch!r}")
        try:
            num_records = len(source)
        except TypeError as error:
            raise TypeError(f"Pipeline: source {type(source).__name__} must define __len__") from error
        if num_records <= 0:
            raise ValueError(f"Pipeline: source has {num_records} records; expected at least one")
        if drop_remainder and num_records < batch_size:
            raise ValueError(
                f"Pipeline: drop_remainder=True with batch_size={batch_size} but the source has only "
                f"{num_records} records, so no batch would ever be produced"
            )
        if shuffle and rngs is None:
            raise ValueError("Pipeline: shuffle=True needs rngs (the 'shuffle' or 'default' stream seeds it)")

        super().__init__(DataraxModuleConfig(), rngs=rngs, name=name)
        self.source = source
        self.nodes = nnx.Dict(nodes)
        self.graph = graph
        self.batch_size = batch_size
        self.num_records = num_records
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self.num_epochs = num_epochs
        self.prefetch = prefetch
        self.seed = seed_from_key(stream_root_key(rngs, SHUFFLE_STREAM)) if shuffle else 0
        self.sampler = (
            ShuffleSampler(ShuffleSamplerConfig(seed=self.seed))
            if shuffle
            else SequentialSampler(SequentialSamplerConfig())
        )
        self.next_epoch = nnx.Variable(0)
        self._check_specs()

    # -- construction-time checks ---------------------------------------------

    def _check_specs(self) -> dict[str, Any]:
        specs = {SOURCE: self.source.element_spec()}
        for node_name in self.graph.order:
            parts = [specs[p] for p in self.graph.inputs[node_name]]
            for key in set().union(*map(set, parts)):
                seen = {spec_to_str(p[key]) for p in parts if key in p}
                if len(seen) > 1:
                    raise ValueError(
                        f"Pipeline: node {node_name!r} receives key {key!r} with different specs {sorted(seen)}"
                    )
            spec_in = _merge_inputs(parts)
            op = self.nodes[node_name]
            try:
                spec_out = op.output_spec(spec_in)
            except Exception as error:  # noqa: BLE001 - re-raised with context
                raise ValueError(
                    f"Pipeline: stage {node_name!r} ({type(op).__name__}) cannot take the element "
                    f"{spec_to_str(spec_in)}: {type(error).__name__}: {error}"
                ) from error
            if not isinstance(spec_out, Mapping):
                raise ValueError(
                    f"Pipeline: stage {node_name!r} ({type(op).__name__}) must return a dict element, "
                    f"got {spec_to_str(spec_out)}"
                )
            if VALID_MASK in spec_out:
                raise ValueError(f"Pipeline: stage {node_name!r} outputs the reserved key {VALID_MASK!r}")
            specs[node_name] = dict(spec_out)
        return specs

    # -- shape of the stream --------------------------------------------------

    @property
    def batches_per_epoch(self) -> int:
        """Batches in one epoch (the short last one counted unless dropped)."""
        full, rest = divmod(self.num_records, self.batch_size)
        return full + (1 if rest and not self.drop_remainder else 0)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def element_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The spec of one output element (the sink's output)."""
        return dict(self._check_specs()[self.graph.sink])

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The spec of every batch: ``element_spec`` batched, plus ``valid_mask``."""
        return batched_spec(self.element_spec(), batch_size=self.batch_size)

    def fingerprint(self) -> int:
        """A 32-bit digest of what determines the stream, stored in iterator states."""
        parts = [
            type(self.source).__name__,
            spec_to_str(self.source.element_spec()),
            str(self.graph),
            str(self.key_salts),
            *(f"{n}:{type(op).__name__}:{op.stream_name}" for n, op in self.nodes.items()),
        ]
        for op in self.nodes.values():
            if op.stochastic:
                parts.append(str(np.asarray(jax.random.key_data(op.root_key())).tolist()))
        return zlib.crc32("|".join(parts).encode())

    # -- the compiled step ----------------------------------------------------

    def compute_batch(self, epoch: Any, start: Any) -> dict[str, jax.Array]:
        """Computes the batch whose first row is epoch position ``start`` (traceable).

        Args:
            epoch: Epoch number (int or traced int32 scalar).
            start: Epoch position of the batch's first row (int or traced).

        Returns:
            The batch dict with ``valid_mask``.
        """
        positions = jnp.asarray(start, dtype=jnp.int32) + jnp.arange(self.batch_size, dtype=jnp.int32)
        valid = positions < self.num_records
        positions = jnp.minimum(positions, self.num_records - 1)
        records = self.sampler.indices_at(positions, self.num_records, epoch)
        values = {SOURCE: self.source.get_records(records)}
        salts = dict(self.key_salts)
        for node_name in self.graph.order:
            op = self.nodes[node_name]
            inputs = _merge_inputs([values[p] for p in self.graph.inputs[node_name]])
            keys = op.record_keys(epoch, records)
            if keys is not None and node_name in salts:
                keys = jax.vmap(lambda k, salt=salts[node_name]: jax.random.fold_in(k, salt))(keys)
            values[node_name] = op.apply_batch(inputs, keys)
        return {**values[self.graph.sink], VALID_MASK: valid}

    def compiled_step(self) -> tuple[Callable[[Any, Any, Any], dict[str, jax.Array]], Any]:
        """The jitted ``step(state, epoch, start) -> batch`` and the state to call it with.

        The pipeline is split once. Operation counters and rng counts, which
        the step never reads, are frozen into the program; everything else
        (records, parameters, rng keys) is the live ``nnx.State`` passed on
        every call, so in-place parameter updates are seen. Keeping the
        frozen part out of the call matters for speed: each argument leaf
        costs a few microseconds of dispatch, which would otherwise grow with
        the number of operators.

        Returns:
            ``(step, state)``.
        """
        entry = _COMPILED.get(self)
        if entry is None:
            graphdef, frozen, live = nnx.split(self, nnx.Any(IterationCount, nnx.RngCount), ...)

            def step(live, epoch, start):
                return nnx.merge(graphdef, frozen, live).compute_batch(epoch, start)

            entry = (jax.jit(step), live)
            _COMPILED[self] = entry
        return entry

    # -- iteration ------------------------------------------------------------

    def __iter__(self):
        from datarax.pipeline.iterator import PipelineIterator

        return PipelineIterator(self)

    def scan(
        self,
        step_fn: Callable[..., Any],
        *,
        length: int,
        modules: Sequence[nnx.Module] = (),
        iterator: Any | None = None,
    ) -> Any:
        """Runs ``length`` steps of data + ``step_fn`` as one ``nnx.scan`` (see ``PipelineIterator.scan``).

        Without ``iterator`` the pipeline's own scan iterator is used (created
        on first call), so consecutive calls continue the stream.
        """
        if iterator is None:
            iterator = _SCAN_ITERATORS.get(self)
            if iterator is None:
                iterator = iter(self)
                _SCAN_ITERATORS[self] = iterator
        return iterator.scan(step_fn, length=length, modules=modules)


_SCAN_ITERATORS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

__all__ = ["SHUFFLE_STREAM", "Pipeline"]

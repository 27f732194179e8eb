"""``Pipeline``: a source, a graph of operators and a batch size, compiled as one step.

The pipeline owns the epoch order and nothing else moves: for batch ``t`` of
epoch ``e`` one jitted function (``datarax.pipeline.program``) computes

    positions [t*B, (t+1)*B)  ->  records (the sampler: Feistel or identity)
    ->  source.get_records  ->  every operator (vmapped, per-record keys)
    ->  {**columns, "valid_mask"}

so there is no per-element Python work and, after the first batch, no
retracing; a second pipeline built the same way reuses the compiled program.
Positions past the end of the epoch are clamped to the last one: padding rows
are copies of the epoch's last real record (keys included), and
``valid_mask`` marks them False. With ``drop_remainder=True`` the short batch
is not produced at all.

**One seed.** ``rngs`` is the pipeline's one seed (its ``default`` stream):
it seeds the shuffle and every stochastic node, whose root key is derived
from the seed and the node's name (``datarax.core.prng.node_key``), so
adding a node never changes another node's draws. An operator given its own
``rngs`` keeps them (an explicit override); children of combining operators
need none. In a linear pipeline a stage's key name is its operator's
``name``, else its ``stream_name``; repeated names get ``#1``, ``#2``, ...
in order. In a DAG it is the node's name.

**The stream.** ``pipeline.stream`` (a frozen ``StreamSpec``) is everything
an iterator needs to know: records, batch size, drop_remainder, seed,
fingerprint, how a cursor advances. Iterating a pipeline again continues
with the next epochs, like a PyTorch DataLoader: the pipeline counts the
epochs its iterators have started (``next_epoch``), each new iterator starts
there and runs ``num_epochs``, and ``Pipeline.scan`` continues the same way.

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

import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from datarax.core.batch_form import batched_spec, validate_batch_size
from datarax.core.config import DataraxModuleConfig
from datarax.core.data_source import DataSourceModule, check_source_traceable
from datarax.core.host_operator import HostOperator
from datarax.core.host_source import HostSourceModule
from datarax.core.module import DataraxModule
from datarax.core.operator import OperatorModule
from datarax.core.prng import node_key
from datarax.core.spec import spec_to_str
from datarax.core.stream_source import StreamSourceModule
from datarax.core.validation import boolean, non_negative_int, optional_positive_int, positive_int
from datarax.pipeline.binding import StepBinding
from datarax.pipeline.construction import (
    default_prefetch,
    element_specs,
    host_operators,
    host_workers,
    key_names,
    linear_graph,
    own_nodes,
    pipeline_seed_for,
    record_count,
)
from datarax.pipeline.dag import validate_dag
from datarax.pipeline.feeds import DeviceFeed, FilteredHostFeed, HostFeed
from datarax.pipeline.fingerprint import crc32_text, describe_module
from datarax.pipeline.host_pool import PROCESS, THREAD, HostBatchPool
from datarax.pipeline.host_stage import HostStage, worker_recipe
from datarax.pipeline.iterator import PipelineIterator
from datarax.pipeline.program import PROGRAMS, StepPlan, StepProgram, compute_batch
from datarax.pipeline.records import RecordSchedule
from datarax.pipeline.sharding import batch_layout
from datarax.pipeline.stream import StreamSpec
from datarax.pipeline.stream_feed import StreamFeed, StreamStage
from datarax.samplers import SequentialSampler, SequentialSamplerConfig, ShuffleSampler, ShuffleSamplerConfig

DEFAULT_SHUFFLE_BUFFER = 1024  # slots of a stream source's shuffle buffer


class Pipeline(DataraxModule):
    """A compiled data pipeline: source -> operators -> batches with ``valid_mask``.

    Give either ``stages`` (a linear pipeline) or ``nodes``, ``edges`` and
    ``sink`` (a DAG rooted at ``"source"``; see ``from_dag``).

    Args:
        source: A ``DataSourceModule`` with ``len`` and a traceable
            ``get_records`` (gathered on the device), or a ``HostSourceModule``
            (read on the host by the host stage; see below).
        host_stages: For a host source: ``HostOperator``s run on each record on
            the host, in order, before the batch goes to the device (decode,
            resize, tokenise). The last must leave fixed-shape numeric arrays.
        stages: Operators applied in order (a linear pipeline).
        nodes: For a DAG: mapping of node name to operator. An operator
            object used by several nodes is cloned, so every branch has its
            own state and its own draws.
        edges: For a DAG: ``(from, to)`` pairs; ``"source"`` is the root.
        sink: For a DAG: the node whose output is the batch.
        batch_size: Rows per batch.
        rngs: The pipeline's one seed (its ``default`` stream). Required when
            ``shuffle`` or when a stochastic node has no rngs of its own.
        shuffle: Visit records in a new Feistel permutation every epoch.
        drop_remainder: Drop each epoch's short last batch instead of padding it.
        num_epochs: Epochs each ``iter(pipeline)`` runs; None runs forever.
        prefetch: Batches dispatched ahead of the consumer (JAX runs them
            asynchronously); 0 disables it. None (the default) chooses by
            backend: 2 on accelerators, where dispatching ahead keeps the
            device busy while Python works, and 0 on CPU, where batches
            computed ahead compete with the consumer for the same cores
            (``benchmarks/run.py`` measures both).
        workers: For a host source: threads or processes running the host
            stage; 0 runs it inline. None: ``default_workers()`` (the CPUs
            this process may use, at most 16). Reads that are cheap memory
            copies with no host operators (a page-cached ``.npy`` file, cached
            Parquet row groups) measured faster inline (docs/benchmarks.md).
        worker_kind: ``"thread"`` (default; readers and decoders that release
            the GIL) or ``"process"`` (``spawn``ed processes with shared
            memory, for Python-heavy host operators; the source's and the
            operators' constructor arguments must then be picklable, their
            functions importable by a fresh interpreter: defined in a module,
            or in a script whose entry point is behind ``if __name__ == "__main__":``).
        read_ahead: Host batches in flight beyond the one requested; None:
            twice the workers.
        shuffle_buffer_size: For a stream source (``StreamSourceModule``,
            read in order): the slots of its seeded shuffle buffer (None:
            1024; see ``datarax.pipeline.stream_feed`` for what a buffer
            guarantees). Random-access sources shuffle exactly and take none.
        sharding: A ``jax.sharding.NamedSharding`` whose ``PartitionSpec``
            names the data axis first (``P("data")``): every batch is then a
            global ``jax.Array`` with its batch axis split over that axis (see
            ``datarax.pipeline.sharding``), each device computing its own
            rows; with several processes (``jax.distributed``) each process
            computes and reads only its rows. ``batch_size`` is the global
            batch size. None: one device.
        name: Optional module name.

    Raises:
        TypeError: For a source, stage or rngs of the wrong type, a source
            whose ``get_records`` cannot be traced, or (``worker_kind="process"``)
            a host stage that cannot be sent to a worker process.
        ValueError: For a bad batch size, epoch count or prefetch depth, a
            bad ``workers``, ``worker_kind`` or ``read_ahead`` (checked for
            every source, though only host sources use them), a missing
            seed, a ``drop_remainder`` pipeline that can never fill a batch,
            an invalid graph, or stages whose specs do not chain (the
            message names the stage and the spec it was given).
    """

    def __init__(
        self,
        *,
        source: DataSourceModule,
        host_stages: Sequence[HostOperator] = (),
        stages: Sequence[OperatorModule] | None = None,
        nodes: Mapping[str, OperatorModule] | None = None,
        edges: Sequence[tuple[str, str]] | None = None,
        sink: str | None = None,
        batch_size: int,
        rngs: nnx.Rngs | None = None,
        shuffle: bool = False,
        drop_remainder: bool = False,
        num_epochs: int | None = 1,
        prefetch: int | None = None,
        workers: int | None = None,
        worker_kind: str = THREAD,
        read_ahead: int | None = None,
        shuffle_buffer_size: int | None = None,
        sharding: Any = None,
        name: str | None = None,
    ):
        dag_given = [arg for arg, value in (("nodes", nodes), ("edges", edges), ("sink", sink)) if value is not None]
        if dag_given and stages is not None:
            raise ValueError(f"Pipeline: give either stages or nodes/edges/sink, got stages and {dag_given}")
        if dag_given and len(dag_given) != 3:
            missing = [arg for arg in ("nodes", "edges", "sink") if arg not in dag_given]
            raise ValueError(f"Pipeline: a DAG needs nodes, edges and sink together; missing {missing}")
        cloned: tuple[str, ...] = ()
        if dag_given:
            own, cloned = own_nodes(nodes)
            graph = validate_dag(list(own), edges, sink)
        else:
            own, graph = linear_graph(() if stages is None else stages)
        if not isinstance(source, DataSourceModule):
            raise TypeError(f"Pipeline: source must be a DataSourceModule, got {type(source).__name__}")
        for node, op in own.items():
            if not isinstance(op, OperatorModule):
                # A host operator given as a device stage is a common slip: say where it goes.
                hint = ""
                if isinstance(op, HostOperator):
                    hint = " (a HostOperator: pass it in host_stages, with a host source)"
                raise TypeError(f"Pipeline: stage {node!r} must be an OperatorModule, got {type(op).__name__}{hint}")
        batch_size = validate_batch_size(batch_size, "Pipeline")
        shuffle = boolean("Pipeline", "shuffle", shuffle)
        drop_remainder = boolean("Pipeline", "drop_remainder", drop_remainder)
        num_epochs = optional_positive_int("Pipeline", "num_epochs", num_epochs)
        prefetch = default_prefetch() if prefetch is None else non_negative_int("Pipeline", "prefetch", prefetch)
        if rngs is not None and not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"Pipeline: rngs must be an nnx.Rngs or None, got {type(rngs).__name__}")
        streamed = isinstance(source, StreamSourceModule)
        if shuffle_buffer_size is not None and not streamed:
            raise ValueError(
                f"Pipeline: shuffle_buffer_size is for stream sources, read in order; {type(source).__name__} has "
                f"random access and is shuffled exactly (Feistel), got shuffle_buffer_size={shuffle_buffer_size!r}"
            )
        if streamed:
            shuffle_buffer_size = (
                DEFAULT_SHUFFLE_BUFFER
                if shuffle_buffer_size is None
                else positive_int("Pipeline", "shuffle_buffer_size", shuffle_buffer_size)
            )
            if worker_kind == PROCESS:
                raise ValueError(
                    f"Pipeline: worker_kind='process' is for random-access host sources; the stream source "
                    f"{type(source).__name__} is read in order by one background thread (worker_kind='thread')"
                )
        rows, share = batch_layout(sharding, batch_size) if sharding is not None else (None, None)
        if sharding is not None and streamed:
            raise ValueError(
                f"Pipeline: sharding is not available for the stream source {type(source).__name__}: each process "
                "streams its own share, whose epochs end at different batches; give each process its own "
                "unsharded pipeline (process_index/process_count in the source's config) instead"
            )
        num_records = None if streamed else record_count(source, batch_size, drop_remainder)
        host = isinstance(source, HostSourceModule) or streamed
        host_ops = host_operators(host_stages, source)
        host_keys = key_names({f"host_stage_{i}": op for i, op in enumerate(host_ops)}, linear=True)
        # Checked for every source, so a bad value is refused even where it has no effect (a device source).
        checked_workers = host_workers(workers, worker_kind, read_ahead)
        if host:
            workers, worker_kind, read_ahead = checked_workers
        else:
            check_source_traceable(source, batch_size)  # fail here, not at the first batch
        derived = {
            node: key for node, key in key_names(own, linear=not dag_given).items() if not own[node].has_own_rngs
        }
        seed = pipeline_seed_for(rngs, shuffle, {**host_keys, **derived})

        super().__init__(DataraxModuleConfig(), name=name)
        self.source = source
        self.host_stages = nnx.List(host_ops)
        self.nodes = nnx.Dict(own)
        self.graph = graph
        self.num_epochs = num_epochs
        self.prefetch = prefetch
        self.sampler = (
            ShuffleSampler(ShuffleSamplerConfig(seed=seed)) if shuffle else SequentialSampler(SequentialSamplerConfig())
        )
        self.plan = StepPlan(
            graph=graph,
            num_records=0 if num_records is None else num_records,
            batch_size=batch_size,
            node_keys=tuple(
                (node, tuple(int(w) for w in np.asarray(jax.random.key_data(node_key(seed, key)))))
                for node, key in derived.items()
            ),
            own_key_salts=tuple((n, zlib.crc32(n.encode())) for n in cloned if own[n].has_own_rngs),
            host_counted=tuple(n for n in graph.order if own[n].counts_every_record),
            host_input=host,
            rows=rows,
        )
        self.sharding = sharding
        self._host_stage: HostStage | StreamStage | None = None
        self._host_pool_options: tuple[Any, ...] = ()
        self.shuffle_buffer_size = shuffle_buffer_size
        if streamed:
            operators = [(host_keys.get(f"host_stage_{i}"), op) for i, op in enumerate(host_ops)]
            self._host_stage = StreamStage(
                source,
                operators=operators,
                shuffle=shuffle,
                seed=seed,
                batch_size=batch_size,
                buffer_size=shuffle_buffer_size,
            )
            self._host_pool_options = (workers, worker_kind, read_ahead, None)
        elif host:
            operators = [(host_keys.get(f"host_stage_{i}"), op) for i, op in enumerate(host_ops)]
            self._host_stage = HostStage(
                source, operators=operators, shuffle=shuffle, seed=seed, batch_size=batch_size, share=share
            )
            if rows is not None and self._host_stage.filtered:
                raise ValueError(
                    "Pipeline: sharding is not available with a HostFilter: which records a batch holds is known only "
                    "by reading every earlier one, which a process reading only its share of each batch cannot do"
                )
            recipe = worker_recipe(self._host_stage) if worker_kind == PROCESS else None
            self._host_pool_options = (workers, worker_kind, read_ahead, recipe)
        element_specs(self._source_spec(), self.nodes, self.graph)
        self.stream = StreamSpec(
            num_records=num_records,
            batch_size=batch_size,
            drop_remainder=drop_remainder,
            shuffle=shuffle,
            seed=seed,
            fingerprint=self.fingerprint(),
        )
        self.next_epoch = nnx.Variable(0)
        self._program: StepProgram | None = None
        self._scan_iterator: PipelineIterator | None = None

    @classmethod
    def from_dag(
        cls,
        *,
        source: DataSourceModule,
        nodes: Mapping[str, OperatorModule],
        edges: Sequence[tuple[str, str]],
        sink: str,
        **kwargs: Any,
    ) -> Pipeline:
        """Builds a pipeline from a DAG of operators rooted at ``"source"``.

        A node with several inputs receives the union of their output dicts
        (a key produced by two inputs must have one spec; the input listed
        later in ``edges`` wins). The graph (names, edges, cycles, sink
        reachability) and every node's specs are checked here. The same as
        ``Pipeline(source=..., nodes=..., edges=..., sink=..., ...)``.

        Args:
            source: The data source.
            nodes: Mapping of node name to operator.
            edges: ``(from, to)`` pairs; ``"source"`` is the root.
            sink: The node whose output is the batch.
            **kwargs: ``batch_size`` and the other ``Pipeline`` arguments.

        Returns:
            The pipeline.

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
        if nodes is None or edges is None or sink is None:
            raise ValueError("from_dag: nodes, edges and sink are required")
        return cls(source=source, nodes=nodes, edges=edges, sink=sink, **kwargs)

    # -- construction-time checks ---------------------------------------------

    # -- shape of the stream --------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Rows per batch."""
        return self.plan.batch_size

    @property
    def num_records(self) -> int:
        """Records per epoch."""
        return self.plan.num_records

    @property
    def shuffle(self) -> bool:
        """Whether each epoch is a fresh permutation."""
        return self.stream.shuffle

    @property
    def drop_remainder(self) -> bool:
        """Whether each epoch's short last batch is dropped."""
        return self.stream.drop_remainder

    @property
    def seed(self) -> int:
        """The pipeline's one 32-bit seed."""
        return self.stream.seed

    @property
    def batches_per_epoch(self) -> int:
        """Batches in one epoch (the short last one counted unless dropped)."""
        return self.stream.batches_per_epoch

    def __len__(self) -> int:
        if isinstance(self._host_stage, StreamStage):
            raise TypeError(
                f"Pipeline: a pipeline over the stream source {type(self.source).__name__} has no len(): how many "
                "batches an epoch holds is known only when the stream ends"
            )
        if self._host_stage is not None and self._host_stage.filtered:
            raise TypeError(
                "Pipeline: a pipeline with a HostFilter has no len(): how many batches an epoch holds is known "
                "only after reading it"
            )
        return self.stream.batches_per_epoch

    def _source_spec(self) -> Any:
        """What the device graph receives: the source's records, or the host stage's collated output."""
        return self._host_stage.spec if self._host_stage is not None else self.source.element_spec()

    def element_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The spec of one output element (the sink's output)."""
        return dict(element_specs(self._source_spec(), self.nodes, self.graph)[self.graph.sink])

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The spec of every batch: ``element_spec`` batched, plus ``valid_mask``."""
        return batched_spec(self.element_spec(), batch_size=self.batch_size)

    def fingerprint(self) -> int:
        """A 32-bit digest of what determines the stream, stored in iterator states.

        It covers the source's class and element spec (the record count is
        a field of the state of its own), the graph, every operator's class and static configuration (functions
        included), and the keys of operators with their own rngs; see
        ``datarax.pipeline.fingerprint`` for exactly what is and is not covered.
        """
        parts = [
            type(self.source).__qualname__,
            spec_to_str(self.source.element_spec()),
            str(self.graph),
            str(self.plan.own_key_salts),
        ]
        for i, op in enumerate(self.host_stages):
            parts.append(f"host_stage_{i}={describe_module(op)}")
        if self._host_stage is not None:
            parts.append(spec_to_str(self._host_stage.spec))
        if self.shuffle_buffer_size is not None:
            parts.append(f"shuffle_buffer_size={self.shuffle_buffer_size}")
        for node, op in self.nodes.items():
            parts.append(f"{node}={describe_module(op)}")
            if op.has_own_rngs:
                parts.append(str(np.asarray(jax.random.key_data(op.root_key())).tolist()))
        return crc32_text(parts)

    # -- the compiled step ----------------------------------------------------

    def _parts(self) -> tuple[Any, Any, Any]:
        # A host source is read by the host stage, never by the step: it stays out of the program.
        return (None if self.plan.host_input else self.source, self.sampler, self.nodes)

    def compute_batch(self, epoch: Any, start: Any) -> dict[str, jax.Array]:
        """Computes the batch whose first row is epoch position ``start`` (traceable).

        Args:
            epoch: Epoch number (int or traced int32 scalar).
            start: Epoch position of the batch's first row (int or traced).

        Returns:
            The batch dict with ``valid_mask``.

        Raises:
            TypeError: For a host source, which is read on the host and cannot
                be traced (iterate the pipeline instead).
        """
        if self.plan.host_input:
            raise TypeError(
                f"Pipeline.compute_batch: the source {type(self.source).__name__} is read on the host, so a batch "
                "cannot be computed inside a trace; iterate the pipeline (or use Pipeline.scan) instead"
            )
        return compute_batch(self.plan, self.source, self.sampler, self.nodes, epoch, start)

    @property
    def program(self) -> StepProgram:
        """The compiled step this pipeline runs (shared with identically built pipelines)."""
        if self._program is None:
            graphdef, _ = nnx.split(self._parts())
            self._program = PROGRAMS.get(graphdef, self.plan)
        return self._program

    # -- iteration ------------------------------------------------------------

    def _epoch_started(self, epoch: int) -> None:
        if int(self.next_epoch.get_value()) <= epoch:
            self.next_epoch.set_value(epoch + 1)

    def _epoch_restored(self, epoch: int, started: bool) -> None:
        if started:
            self._epoch_started(epoch)
        elif int(self.next_epoch.get_value()) < epoch:
            self.next_epoch.set_value(epoch)

    def __iter__(self) -> PipelineIterator:
        binding = StepBinding(self._parts(), self.program, host_operators=list(self.host_stages))
        if isinstance(self._host_stage, StreamStage):
            workers, _, read_ahead, _ = self._host_pool_options
            feed: DeviceFeed | HostFeed | FilteredHostFeed | StreamFeed = StreamFeed(
                self._host_stage, binding, self.stream, workers=workers, read_ahead=read_ahead
            )
        elif self._host_stage is not None:
            workers, kind, read_ahead, recipe = self._host_pool_options
            # With a filter the pool computes blocks of B examined positions up to the last record.
            blocks = (
                dataclasses.replace(self.stream, drop_remainder=False) if self._host_stage.filtered else self.stream
            )
            pool = HostBatchPool(
                self._host_stage, blocks, workers=workers, kind=kind, read_ahead=read_ahead, recipe=recipe
            )
            feed = HostFeed(pool, binding)
            if self._host_stage.filtered:
                feed = FilteredHostFeed(pool, binding, self.stream)
        else:
            feed = DeviceFeed(RecordSchedule(self.stream, self.sampler, binding.records_chunk), binding)
        return PipelineIterator(
            stream=self.stream,
            binding=binding,
            feed=feed,
            first_epoch=int(self.next_epoch.get_value()),
            num_epochs=self.num_epochs,
            prefetch=self.prefetch,
            on_epoch=self._epoch_started,
            on_restore=self._epoch_restored,
        )

    @property
    def scan_iterator(self) -> PipelineIterator:
        """The iterator ``Pipeline.scan`` continues (checkpoint it like any other).

        A fresh one (``iter(self)``) replaces it once it has no batch left, so
        consecutive ``scan`` calls walk the epochs as consecutive ``for`` loops do.
        """
        if self._scan_iterator is None or self._scan_iterator.exhausted:
            self._scan_iterator = iter(self)
        return self._scan_iterator

    def scan(
        self,
        step_fn: Callable[..., Any],
        *,
        length: int,
        modules: Sequence[nnx.Module] = (),
        iterator: PipelineIterator | None = None,
    ) -> Any:
        """Runs ``length`` steps of data + ``step_fn`` as one scan (see ``PipelineIterator.scan``).

        Without ``iterator``, ``scan_iterator`` is used, so consecutive calls
        continue the stream into the next epochs.
        """
        return (iterator or self.scan_iterator).scan(step_fn, length=length, modules=modules)


__all__ = ["Pipeline"]

"""How a ``Pipeline`` is put together: its graph, key names, seed and construction-time checks.

Everything here runs once, when a pipeline is built, and either returns a
piece of the pipeline's static description or raises with a message that
names the stage and what it was given. Keeping it apart from ``Pipeline``
leaves that class with what a built pipeline does.

Example:
    >>> nodes, graph = linear_graph([])
    >>> nodes, graph.sink
    ({}, 'source')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.core.data_source import DataSourceModule
from datarax.core.host_operator import HostOperator
from datarax.core.host_source import HostSourceModule
from datarax.core.operator import OperatorModule
from datarax.core.prng import pipeline_seed
from datarax.core.spec import spec_to_str
from datarax.core.stream_source import StreamSourceModule
from datarax.core.validation import non_negative_int
from datarax.pipeline.dag import SOURCE, DagGraph, validate_dag
from datarax.pipeline.host_pool import WORKER_KINDS, default_workers
from datarax.pipeline.program import merge_inputs


def linear_graph(stages: Any) -> tuple[dict[str, Any], DagGraph]:
    if isinstance(stages, OperatorModule) or not isinstance(stages, Sequence):
        raise TypeError(f"Pipeline: stages must be a sequence of operators, got {type(stages).__name__}")
    nodes = {f"stage_{i}": op for i, op in enumerate(stages)}
    names = list(nodes)
    graph = validate_dag(names, list(zip([SOURCE, *names], names)), names[-1] if names else SOURCE)
    return nodes, graph


def own_nodes(nodes: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Nodes with every operator object used twice replaced by a clone, and the cloned nodes."""
    if not isinstance(nodes, Mapping):
        raise TypeError(f"Pipeline: nodes must be a mapping of name to operator, got {type(nodes).__name__}")
    seen: set[int] = set()
    own, cloned = {}, []
    for node, op in nodes.items():
        if id(op) in seen and isinstance(op, OperatorModule):
            op = op.clone()
            cloned.append(node)
        seen.add(id(op))
        own[node] = op
    return own, tuple(cloned)


def key_names(nodes: Mapping[str, OperatorModule], linear: bool) -> dict[str, str]:
    """The name each stochastic node's key is derived from (see the module docstring)."""
    if not linear:
        return {node: node for node, op in nodes.items() if op.stochastic}
    names: dict[str, str] = {}
    used: dict[str, int] = {}
    for node, op in nodes.items():
        if op.stochastic:
            base = op.name or op.stream_name
            count = used.get(base, 0)
            used[base] = count + 1
            names[node] = base if count == 0 else f"{base}#{count}"
    return names


def element_specs(source_spec: Any, nodes: Mapping[str, Any], graph: DagGraph) -> dict[str, Any]:
    """Every node's output element spec, checked stage by stage (``source_spec`` under ``"source"``)."""

    specs = {SOURCE: source_spec}
    for node in graph.order:
        parts = [specs[p] for p in graph.inputs[node]]
        for key in set().union(*map(set, parts)):
            seen = {spec_to_str(p[key]) for p in parts if key in p}
            if len(seen) > 1:
                raise ValueError(f"Pipeline: node {node!r} receives key {key!r} with different specs {sorted(seen)}")
        spec_in = merge_inputs(parts)
        op = nodes[node]
        try:
            spec_out = op.output_spec(spec_in)
        except Exception as error:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"Pipeline: stage {node!r} ({type(op).__name__}) cannot take the element "
                f"{spec_to_str(spec_in)}: {type(error).__name__}: {error}"
            ) from error
        if not isinstance(spec_out, Mapping):
            raise ValueError(
                f"Pipeline: stage {node!r} ({type(op).__name__}) must return a dict element, "
                f"got {spec_to_str(spec_out)}"
            )
        if VALID_MASK in spec_out:
            raise ValueError(f"Pipeline: stage {node!r} outputs the reserved key {VALID_MASK!r}")
        specs[node] = dict(spec_out)
    return specs


def host_operators(host_stages: Any, source: Any) -> list[HostOperator]:
    """The host stages, checked: a sequence of ``HostOperator``s, given only with a host source."""
    if isinstance(host_stages, HostOperator) or not isinstance(host_stages, Sequence):
        raise TypeError(f"Pipeline: host_stages must be a sequence of HostOperators, got {type(host_stages).__name__}")
    for i, op in enumerate(host_stages):
        if not isinstance(op, HostOperator):
            hint = " (a device operator: pass it in stages)" if isinstance(op, OperatorModule) else ""
            raise TypeError(f"Pipeline: host_stages[{i}] must be a HostOperator, got {type(op).__name__}{hint}")
    if host_stages and not isinstance(source, HostSourceModule | StreamSourceModule):
        raise ValueError(
            f"Pipeline: host_stages run on records read on the host, but the source {type(source).__name__} "
            "lives on the device; use device operators (stages) instead"
        )
    return list(host_stages)


def host_workers(workers: Any, worker_kind: Any, read_ahead: Any) -> tuple[int, str, int]:
    """The host stage's ``(workers, worker_kind, read_ahead)``, with the defaults filled in."""
    if worker_kind not in WORKER_KINDS:
        raise ValueError(f"Pipeline: worker_kind must be one of {list(WORKER_KINDS)}, got {worker_kind!r}")
    workers = default_workers() if workers is None else non_negative_int("Pipeline", "workers", workers)
    read_ahead = 2 * max(1, workers) if read_ahead is None else non_negative_int("Pipeline", "read_ahead", read_ahead)
    return workers, worker_kind, read_ahead


def default_prefetch() -> int:
    """The prefetch depth ``Pipeline(prefetch=None)`` uses: 0 on the CPU backend, 2 elsewhere."""
    return 0 if jax.default_backend() == "cpu" else 2


def record_count(source: DataSourceModule, batch_size: int, drop_remainder: bool) -> int:
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
    return num_records


def pipeline_seed_for(rngs: nnx.Rngs | None, shuffle: bool, key_names: Mapping[str, str]) -> int:
    if rngs is not None:
        return pipeline_seed(rngs)
    if shuffle:
        raise ValueError("Pipeline: shuffle=True needs rngs, the pipeline's seed (e.g. rngs=nnx.Rngs(0))")
    if key_names:
        node = next(iter(key_names))
        raise ValueError(
            f"Pipeline: stage {node!r} is stochastic and has no rngs of its own, so it draws from the "
            "pipeline seed: pass rngs=nnx.Rngs(seed) to the Pipeline"
        )
    return 0


__all__ = [
    "default_prefetch",
    "element_specs",
    "host_operators",
    "host_workers",
    "key_names",
    "linear_graph",
    "own_nodes",
    "pipeline_seed_for",
    "record_count",
]

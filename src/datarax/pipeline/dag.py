"""Validation of pipeline graphs: names, edges, cycles, sinks.

A pipeline is a DAG whose root is the implicit node ``"source"``. A linear
pipeline is the chain ``source -> stage_0 -> stage_1 -> ...``. Everything is
checked here, at construction, so a malformed graph never reaches the first
batch.

Example:
    >>> graph = validate_dag(["a", "b"], [("source", "a"), ("a", "b")], "b")
    >>> graph.order, graph.inputs["b"]
    (('a', 'b'), ('a',))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

SOURCE = "source"


@dataclasses.dataclass(frozen=True)
class DagGraph:
    """A validated graph.

    Hashable, so it can live in the static part of an NNX graph definition.

    Attributes:
        order: Node names in a topological order (``source`` excluded).
        node_inputs: ``(node, predecessors in edge order)`` pairs.
        sink: The node whose output is the batch.
    """

    order: tuple[str, ...]
    node_inputs: tuple[tuple[str, tuple[str, ...]], ...]
    sink: str

    @property
    def inputs(self) -> dict[str, tuple[str, ...]]:
        """For each node, the names of its predecessors in edge order."""
        return dict(self.node_inputs)


def validate_dag(names: Sequence[str], edges: Sequence[Any], sink: str) -> DagGraph:
    """Checks a node/edge description and returns its topological order.

    Args:
        names: The operator nodes' names.
        edges: ``(from, to)`` pairs; ``"source"`` is the root.
        sink: Name of the node whose output is the batch (may be ``"source"``).

    Returns:
        The validated ``DagGraph``.

    Raises:
        ValueError: For an empty, duplicate or reserved name, an edge that is
            not a pair of known names, a self-loop or cycle, a node without
            input, a sink that is unknown, or a node that does not lead to it.
    """
    names = list(names)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"from_dag: node names must be non-empty strings, got {name!r}")
        if name == SOURCE:
            raise ValueError(f"from_dag: node name {SOURCE!r} is reserved for the data source")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"from_dag: duplicate node names {duplicates}")
    known = {SOURCE, *names}
    inputs: dict[str, list[str]] = {n: [] for n in names}
    outputs: dict[str, list[str]] = {n: [] for n in known}
    for edge in edges:
        if not isinstance(edge, tuple | list) or len(edge) != 2:
            raise ValueError(f"from_dag: each edge must be a (from, to) pair, got {edge!r}")
        src, dst = edge
        unknown = [x for x in (src, dst) if x not in known]
        if unknown:
            raise ValueError(f"from_dag: edge {edge!r} names unknown node(s) {unknown}; nodes: {sorted(known)}")
        if dst == SOURCE:
            raise ValueError(f"from_dag: edge {edge!r} points into {SOURCE!r}, which has no inputs")
        if src == dst:
            raise ValueError(f"from_dag: edge {edge!r} is a self-loop")
        if src in inputs[dst]:
            raise ValueError(f"from_dag: duplicate edge {edge!r}")
        inputs[dst].append(src)
        outputs[src].append(dst)
    orphans = [n for n in names if not inputs[n]]
    if orphans:
        raise ValueError(f"from_dag: node(s) {orphans} have no incoming edge")
    if sink not in known:
        raise ValueError(f"from_dag: sink {sink!r} is not a node; nodes: {sorted(known)}")

    # Kahn's algorithm; whatever is left over lies on a cycle.
    # The source is always available, so only edges from other nodes are waited on.
    remaining = {n: sum(p != SOURCE for p in inputs[n]) for n in names}
    ready = [n for n in names if remaining[n] == 0]
    order: list[str] = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for nxt in outputs[node]:
            remaining[nxt] -= 1
            if remaining[nxt] == 0:
                ready.append(nxt)
    cyclic = sorted(n for n in names if n not in order)
    if cyclic:
        raise ValueError(f"from_dag: the graph has a cycle through {cyclic}")

    # Every node must feed the sink, or its work would be silently thrown away.
    feeding = {sink}
    for node in reversed(order):
        if any(nxt in feeding for nxt in outputs[node]):
            feeding.add(node)
    dead = [n for n in names if n not in feeding]
    if dead:
        raise ValueError(f"from_dag: node(s) {dead} do not lead to the sink {sink!r}")
    return DagGraph(order=tuple(order), node_inputs=tuple((n, tuple(v)) for n, v in inputs.items()), sink=sink)


__all__ = ["SOURCE", "DagGraph", "validate_dag"]

"""DAG pipelines: merging branches, graph validation, independent branch state, Checkpointable pipelines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from pipeline_helpers import collect, make_source

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.operators import ElementOperator, ElementOperatorConfig
from datarax.pipeline import validate_dag
from datarax.typing import Checkpointable


def _op(fn):
    return ElementOperator(ElementOperatorConfig(), fn=fn)


def _identity():
    return _op(lambda e, k: dict(e))


def _dag(nodes, edges, sink, **kwargs):
    return Pipeline.from_dag(source=make_source(10), nodes=nodes, edges=edges, sink=sink, batch_size=4, **kwargs)


def test_diamond_merges_both_branches():
    nodes = {
        "double": _op(lambda e, k: {"label": e["label"], "y": e["x"] * 2}),
        "shift": _op(lambda e, k: {"z": e["x"] + 1}),
        "merge": _op(lambda e, k: {"label": e["label"], "w": e["y"] + e["z"], "n_in": jnp.int32(len(e))}),
    }
    edges = [("source", "double"), ("source", "shift"), ("double", "merge"), ("shift", "merge")]
    pipeline = _dag(nodes, edges, "merge", num_epochs=1)
    assert set(pipeline.batch_spec()) == {"label", "w", "n_in", VALID_MASK}
    batches = collect(pipeline)
    labels = np.concatenate([b["label"][b[VALID_MASK]] for b in batches])
    w = np.concatenate([b["w"][b[VALID_MASK]] for b in batches])
    np.testing.assert_array_equal(labels, np.arange(10))
    np.testing.assert_array_equal(w, np.arange(10) / 2 * 3 + 1)  # 2x + (x + 1)
    assert all((b["n_in"] == 3).all() for b in batches)  # label, y and z arrived


def test_a_node_may_read_the_source_and_another_node():
    nodes = {
        "a": _op(lambda e, k: {"y": e["x"] * 10}),
        "m": _op(lambda e, k: {"label": e["label"], "s": e["x"] + e["y"]}),
    }
    edges = [("source", "a"), ("source", "m"), ("a", "m")]
    batch = next(iter(_dag(nodes, edges, "m")))
    np.testing.assert_array_equal(np.asarray(batch["s"]), np.arange(4) / 2 * 11)


def test_the_later_input_wins_on_a_shared_key():
    nodes = {
        "one": _op(lambda e, k: {"v": jnp.float32(1)}),
        "two": _op(lambda e, k: {"v": jnp.float32(2)}),
        "m": _identity(),
    }
    edges = [("source", "one"), ("source", "two"), ("one", "m"), ("two", "m")]
    assert np.asarray(next(iter(_dag(nodes, edges, "m")))["v"]).tolist() == [2, 2, 2, 2]


def test_a_shared_key_with_different_specs_is_refused():
    nodes = {
        "one": _op(lambda e, k: {"v": jnp.float32(1)}),
        "two": _op(lambda e, k: {"v": jnp.int32(2)}),
        "m": _identity(),
    }
    edges = [("source", "one"), ("source", "two"), ("one", "m"), ("two", "m")]
    with pytest.raises(ValueError, match="'m'.*'v'"):
        _dag(nodes, edges, "m")


def test_a_chain_dag_equals_the_linear_pipeline():
    def stages():
        return [_op(lambda e, k: {**e, "x": e["x"] + 1}), _op(lambda e, k: {**e, "x": e["x"] * 3})]

    a, b = stages()
    dag = _dag({"a": a, "b": b}, [("source", "a"), ("a", "b")], "b", shuffle=True, rngs=nnx.Rngs(0))
    linear = Pipeline(source=make_source(10), stages=stages(), batch_size=4, shuffle=True, rngs=nnx.Rngs(0))
    for x, y in zip(collect(dag), collect(linear), strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_sink_may_be_the_source():
    batch = next(iter(_dag({}, [], "source")))
    assert set(batch) == {"label", "x", VALID_MASK}


@pytest.mark.parametrize(
    "names, edges, sink, pattern",
    [
        (["a", "b"], [("source", "a"), ("source", "b"), ("b", "a")], "c", "sink 'c'"),
        (["a"], [("source", "a"), ("a", "ghost")], "a", "unknown.*ghost"),
        (["a"], [("a", "source"), ("source", "a")], "a", "into 'source'"),
        (["a"], [("source", "a"), ("a", "a")], "a", "self-loop"),
        (["a", "b", "c"], [("source", "a"), ("a", "b"), ("b", "c"), ("c", "b")], "c", "cycle"),
        (["a", "b"], [("source", "a"), ("a", "b"), ("b", "a")], "b", "cycle"),
        (["a", "b"], [("source", "a")], "a", r"\['b'\] have no incoming edge"),
        (["a", "b"], [("source", "a"), ("source", "b")], "a", r"\['b'\] do not lead to the sink"),
        (["a", "b"], [("source", "a"), ("a", "b"), ("a", "b")], "b", "duplicate edge"),
        (["a"], [("source", "a", "x")], "a", "pair"),
        (["a"], [("source", "a")], "source", "do not lead"),
    ],
    ids=[
        "unknown-sink",
        "unknown-node",
        "into-source",
        "self-loop",
        "cycle",
        "two-cycle",
        "no-input",
        "dead-branch",
        "duplicate-edge",
        "bad-edge",
        "source-sink-with-nodes",
    ],
)
def test_invalid_graphs_fail_at_construction(names, edges, sink, pattern):
    with pytest.raises(ValueError, match=pattern):
        validate_dag(names, edges, sink)
    nodes = {name: _identity() for name in names}
    with pytest.raises(ValueError, match=pattern):
        _dag(nodes, edges, sink)


def test_duplicate_and_reserved_names():
    with pytest.raises(ValueError, match=r"duplicate node names \['a'\]"):
        validate_dag(["a", "a"], [("source", "a")], "a")
    with pytest.raises(ValueError, match="reserved"):
        _dag({"source": _identity()}, [("source", "source")], "source")
    for bad in ("", 3):
        with pytest.raises(ValueError, match="non-empty strings"):
            validate_dag([bad], [], "source")
    with pytest.raises(TypeError, match="mapping"):
        Pipeline.from_dag(source=make_source(4), nodes=[_identity()], edges=[], sink="source", batch_size=2)
    with pytest.raises(TypeError, match="'a'"):
        _dag({"a": lambda e, k: e}, [("source", "a")], "a")


def test_topological_order_and_inputs():
    graph = validate_dag(["m", "b", "a"], [("a", "m"), ("source", "a"), ("source", "b"), ("b", "m")], "m")
    assert graph.order.index("a") < graph.order.index("m")
    assert graph.order.index("b") < graph.order.index("m")
    assert graph.inputs["m"] == ("a", "b")  # edge order
    same = validate_dag(["m", "b", "a"], [("a", "m"), ("source", "a"), ("source", "b"), ("b", "m")], "m")
    assert hash(graph) == hash(same)


class Offset(nnx.Module):
    def __init__(self):
        self.offset = nnx.Variable(jnp.zeros((), jnp.float32))

    def __call__(self, element, key):
        return {"y": element["x"] + self.offset[...]}


def test_one_operator_in_two_nodes_becomes_two_independent_clones():
    shared = ElementOperator(ElementOperatorConfig(), fn=Offset())
    nodes = {
        "a": shared,
        "b": shared,
        "ra": _op(lambda e, k: {"ya": e["y"]}),
        "rb": _op(lambda e, k: {"yb": e["y"]}),
        "m": _identity(),
    }
    edges = [("source", "a"), ("source", "b"), ("a", "ra"), ("b", "rb"), ("ra", "m"), ("rb", "m")]
    pipeline = _dag(nodes, edges, "m", num_epochs=None)
    a, b = pipeline.nodes["a"], pipeline.nodes["b"]
    assert a is not b
    assert a.fn is not b.fn and a.fn.offset is not b.fn.offset

    a.fn.offset.set_value(jnp.float32(100.0))
    assert float(b.fn.offset[...]) == 0.0
    batch = next(iter(pipeline))
    np.testing.assert_array_equal(np.asarray(batch["ya"]), np.arange(4) / 2 + 100)
    np.testing.assert_array_equal(np.asarray(batch["yb"]), np.arange(4) / 2)

    state = pipeline.get_state()
    assert float(state["nodes"]["a"]["fn"]["offset"]) == 100.0
    assert float(state["nodes"]["b"]["fn"]["offset"]) == 0.0


def test_a_stochastic_operator_in_two_nodes_draws_independently_per_branch():
    noise = ElementOperator(
        ElementOperatorConfig(stochastic=True, stream_name="augment"),
        fn=lambda e, k: {"v": e["x"] + jax.random.uniform(k, ())},
        rngs=nnx.Rngs(augment=5),
    )
    nodes = {
        "view1": noise,
        "view2": noise,
        "r1": _op(lambda e, k: {"v1": e["v"]}),
        "r2": _op(lambda e, k: {"v2": e["v"]}),
        "m": _identity(),
    }
    edges = [("source", "view1"), ("source", "view2"), ("view1", "r1"), ("view2", "r2"), ("r1", "m"), ("r2", "m")]
    batch = next(iter(_dag(nodes, edges, "m")))
    v1, v2 = np.asarray(batch["v1"]), np.asarray(batch["v2"])
    assert not np.any(v1 == v2)
    # The first use keeps the operator's own record keys; the clone folds in its node name.
    records = jnp.arange(4)
    expected_v1 = np.arange(4) / 2 + np.asarray(
        jax.vmap(lambda k: jax.random.uniform(k, ()))(noise.record_keys(0, records))
    )
    np.testing.assert_allclose(v1, expected_v1, rtol=1e-6)
    # Rebuilding gives the same draws: the salt is a pure function of the node name.
    again = next(iter(_dag(nodes, edges, "m")))
    np.testing.assert_array_equal(np.asarray(again["v2"]), v2)


def test_the_pipeline_module_is_checkpointable():
    def build():
        nodes = {"a": ElementOperator(ElementOperatorConfig(), fn=Offset()), "m": _identity()}
        return _dag(nodes, [("source", "a"), ("source", "m"), ("a", "m")], "m", shuffle=True, rngs=nnx.Rngs(8))

    pipeline = build()
    assert isinstance(pipeline, Checkpointable)
    pipeline.nodes["a"].fn.offset.set_value(jnp.float32(0.25))
    first_epoch = collect(pipeline)
    assert int(pipeline.next_epoch.get_value()) == 1
    second_epoch = collect(pipeline)

    state = pipeline.get_state()
    assert state["next_epoch"] == 2
    fresh = build()
    fresh.set_state(state)
    assert int(fresh.next_epoch.get_value()) == 2
    assert float(fresh.nodes["a"].fn.offset[...]) == 0.25

    # Back to epoch 1 through the same interface: the restored pipeline repeats epoch 1 exactly.
    fresh.set_state({**state, "next_epoch": 1})
    for got, want in zip(collect(fresh), second_epoch, strict=True):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert [b["label"].tolist() for b in first_epoch] != [b["label"].tolist() for b in second_epoch]

    with pytest.raises(ValueError, match="unexpected"):
        fresh.set_state({**state, "extra": 1})
    with pytest.raises(ValueError, match="missing"):
        fresh.set_state({k: v for k, v in state.items() if k != "next_epoch"})
    with pytest.raises(TypeError):
        fresh.set_state([1, 2])
    assert int(fresh.next_epoch.get_value()) == 2

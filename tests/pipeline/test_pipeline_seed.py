"""One seed: the pipeline's ``rngs`` seed the shuffle and every stochastic node, keyed by its name.

Record ``r`` of epoch ``e`` at a node whose key name is ``name`` sees
``fold_in(fold_in(node_key(seed, name), e), r)``. The tests recompute every expected draw from
``node_key`` and ``record_keys`` and compare it with what the batches hold, record by record.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from pipeline_helpers import collect, expected_noise, make_source, noise_op, valid_labels

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.core.prng import node_key, record_keys
from datarax.operators import (
    CompositeOperator,
    CompositeOperatorConfig,
    ElementOperator,
    ElementOperatorConfig,
    ProbabilisticOperator,
    ProbabilisticOperatorConfig,
    SelectorOperator,
    SelectorOperatorConfig,
)

N, B, EPOCHS = 10, 4, 2


def draw_u(element, key):
    return {**element, "u": jax.random.uniform(key, ())}


def draw_v(element, key):
    return {**element, "v": jax.random.uniform(key, ())}


def draw_w(element, key):
    return {**element, "w": jax.random.uniform(key, ())}


def shift(element, key):
    return {**element, "x": element["x"] + 1}


def stochastic(fn, stream="augment", name=None, rngs=None):
    return ElementOperator(ElementOperatorConfig(stochastic=True, stream_name=stream), fn=fn, name=name, rngs=rngs)


def deterministic(fn=shift):
    return ElementOperator(ElementOperatorConfig(), fn=fn)


def run(stages, seed=7, shuffle=True, n=N, **kwargs):
    kwargs.setdefault("num_epochs", EPOCHS)
    pipeline = Pipeline(
        source=make_source(n), stages=stages, batch_size=B, rngs=nnx.Rngs(seed), shuffle=shuffle, **kwargs
    )
    return collect(pipeline), len(pipeline)


def by_record(batches, per_epoch, column):
    """``{(epoch, record): value}`` over the valid rows (each record exactly once per epoch)."""
    out = {}
    for t, batch in enumerate(batches):
        mask = batch[VALID_MASK]
        for label, value in zip(batch["label"][mask], batch[column][mask], strict=True):
            assert (t // per_epoch, int(label)) not in out
            out[(t // per_epoch, int(label))] = value
    return out


def contract_draws(seed, key_name, epoch, n=N, fold=None):
    """``uniform`` of the record keys the contract promises (optionally folded once more)."""
    keys = record_keys(node_key(seed, key_name), epoch, jnp.arange(n))
    if fold is not None:
        keys = jax.vmap(lambda k: jax.random.fold_in(k, fold))(keys)
    return np.asarray(jax.vmap(lambda k: jax.random.uniform(k, ()))(keys))


def assert_contract(batches, per_epoch, column, seed, key_name, n=N, fold=None):
    got = by_record(batches, per_epoch, column)
    assert len(got) == EPOCHS * n
    for epoch in range(EPOCHS):
        want = contract_draws(seed, key_name, epoch, n, fold)
        values = np.array([got[(epoch, r)] for r in range(n)])
        assert values.tobytes() == want.tobytes(), (column, key_name, epoch, values, want)


# -- golden values -------------------------------------------------------------


def test_golden_node_keys():
    assert np.asarray(jax.random.key_data(node_key(0, "augment"))).tolist() == [1344629774, 4219992126]
    assert np.asarray(jax.random.key_data(node_key(12345, "flip"))).tolist() == [66838643, 2835416986]


@pytest.mark.parametrize("shuffle", [False, True])
def test_golden_draw_of_record_3_in_epoch_1(shuffle):
    batches, per_epoch = run([stochastic(draw_u)], seed=7, shuffle=shuffle)
    assert per_epoch == 3 and len(batches) == 6
    if not shuffle:  # epoch 1's first batch holds records 0..3 in order
        assert batches[3]["label"].tolist() == [0, 1, 2, 3]
        assert batches[3]["u"][3] == np.float32(0.8964285850524902)
    # Where the shuffle puts the record changes nothing it sees.
    assert by_record(batches, per_epoch, "u")[(1, 3)] == np.float32(0.8964285850524902)


# -- the contract --------------------------------------------------------------


def test_batch_values_are_the_promised_draws():
    # An unnamed stage draws from its stream_name, a named one from its name.
    stages = [stochastic(draw_u), stochastic(draw_v, name="flip"), deterministic()]
    batches, per_epoch = run(stages, seed=12345)
    assert_contract(batches, per_epoch, "u", 12345, "augment")
    assert_contract(batches, per_epoch, "v", 12345, "flip")
    # Every record draws anew in every epoch.
    u = by_record(batches, per_epoch, "u")
    assert all(u[(0, r)] != u[(1, r)] for r in range(N))


@pytest.mark.parametrize(
    "around",
    [
        pytest.param(lambda a: [stochastic(draw_v, stream="noise"), a], id="stochastic-before"),
        pytest.param(lambda a: [a, stochastic(draw_v, stream="noise")], id="stochastic-after"),
        pytest.param(lambda a: [stochastic(draw_v, name="other"), a], id="named-stochastic-before"),
        pytest.param(lambda a: [deterministic(), a], id="deterministic-before"),
        pytest.param(lambda a: [a, deterministic()], id="deterministic-after"),
        pytest.param(
            lambda a: [deterministic(), stochastic(draw_v, stream="noise"), a, stochastic(draw_w, stream="crop")],
            id="several",
        ),
    ],
)
def test_adding_a_node_does_not_change_another_nodes_draws(around):
    base, per_epoch = run([stochastic(draw_u)])
    batches, per_epoch2 = run(around(stochastic(draw_u)))
    assert per_epoch2 == per_epoch
    assert valid_labels(batches) == valid_labels(base)  # the shuffle does not move either
    want = by_record(base, per_epoch, "u")
    got = by_record(batches, per_epoch, "u")
    assert {k: v.tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in want.items()}
    assert_contract(batches, per_epoch, "u", 7, "augment")


def test_in_a_dag_the_key_name_is_the_node_name():
    def dag(nodes, edges, sink):
        pipeline = Pipeline(
            source=make_source(N),
            nodes=nodes,
            edges=edges,
            sink=sink,
            batch_size=B,
            rngs=nnx.Rngs(3),
            shuffle=True,
            num_epochs=EPOCHS,
        )
        return collect(pipeline), len(pipeline)

    # The operator's stream name ("augment") and name ("ignored") do not matter in a DAG.
    alone, per_epoch = dag({"jitter": stochastic(draw_u, name="ignored")}, [("source", "jitter")], "jitter")
    assert_contract(alone, per_epoch, "u", 3, "jitter")
    nodes = {"noise": stochastic(draw_v), "jitter": stochastic(draw_u), "tail": deterministic()}
    edges = [("source", "noise"), ("noise", "jitter"), ("jitter", "tail")]
    grown, _ = dag(nodes, edges, "tail")
    assert_contract(grown, per_epoch, "u", 3, "jitter")
    assert_contract(grown, per_epoch, "v", 3, "noise")


@pytest.mark.parametrize(
    ("stages", "names"),
    [
        pytest.param(
            lambda: [stochastic(draw_u), stochastic(draw_v), stochastic(draw_w)],
            ["augment", "augment#1", "augment#2"],
            id="same-stream-name",
        ),
        pytest.param(
            lambda: [stochastic(draw_u, name="flip"), deterministic(), stochastic(draw_v, stream="x", name="flip")],
            ["flip", "flip#1"],
            id="same-operator-name",
        ),
        pytest.param(
            lambda: [stochastic(draw_u, name="augment"), stochastic(draw_v)],
            ["augment", "augment#1"],
            id="a-name-equal-to-a-stream-name",
        ),
    ],
)
def test_repeated_key_names_are_numbered_and_draw_differently(stages, names):
    batches, per_epoch = run(stages())
    columns = ["u", "v", "w"][: len(names)]
    for column, name in zip(columns, names, strict=True):
        assert_contract(batches, per_epoch, column, 7, name)
    first = by_record(batches, per_epoch, columns[0])
    for column in columns[1:]:
        other = by_record(batches, per_epoch, column)
        assert all(first[k] != other[k] for k in first)


# -- an operator's own rngs ----------------------------------------------------


def test_an_operator_with_its_own_rngs_keeps_them():
    op = noise_op(3)  # own rngs: augment stream seeded 3
    batches, per_epoch = run([op], seed=7)
    other_seed, _ = run([noise_op(3)], seed=8)
    noise = {k: v - np.float32(k[1] / 2) for k, v in by_record(batches, per_epoch, "x").items()}
    for epoch in range(EPOCHS):
        want = expected_noise(op, epoch, N)  # from op.record_keys, not from the pipeline seed
        got = np.array([noise[(epoch, r)] for r in range(N)], dtype=np.float32)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
        derived = contract_draws(7, "augment", epoch)
        assert np.all(np.abs(got - derived) > 1e-4)
    # The pipeline seed moves the shuffle but not what the operator draws.
    assert valid_labels(other_seed) != valid_labels(batches)
    assert by_record(other_seed, per_epoch, "x") == by_record(batches, per_epoch, "x")
    assert int(op.rngs["augment"].count.get_value()) == 0  # read, never advanced


# -- errors --------------------------------------------------------------------


def test_a_stochastic_stage_without_any_rngs_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"'stage_1'.*pass rngs=nnx\.Rngs\(seed\) to the Pipeline"):
        Pipeline(source=make_source(N), stages=[deterministic(), stochastic(draw_u)], batch_size=B)
    with pytest.raises(ValueError, match=r"'jitter'.*to the Pipeline"):
        Pipeline(
            source=make_source(N),
            nodes={"jitter": stochastic(draw_u)},
            edges=[("source", "jitter")],
            sink="jitter",
            batch_size=B,
        )
    # A stage with its own rngs needs no pipeline seed.
    batch = next(iter(Pipeline(source=make_source(N), stages=[noise_op(3)], batch_size=B)))
    assert batch["x"].shape == (B,)


@pytest.mark.parametrize("shuffle", [False, True])
def test_rngs_without_a_default_stream_is_refused(shuffle):
    with pytest.raises(ValueError, match=r"'default' stream.*\['shuffle'\]"):
        Pipeline(
            source=make_source(N),
            stages=[stochastic(draw_u)],
            batch_size=B,
            rngs=nnx.Rngs(shuffle=3),
            shuffle=shuffle,
        )


# -- combining operators -------------------------------------------------------


def negate(element, key):
    return {**element, "x": -element["x"] - 1}


def pick_first(element, key):
    return {**element, "w": jax.random.uniform(key, ())}


def pick_second(element, key):
    return {**element, "w": jax.random.uniform(key, ()) + 1}


def _combining_stages():
    """A composite, a probabilistic and a selector operator; no operator anywhere has rngs."""
    composite = CompositeOperator(
        CompositeOperatorConfig(stochastic=True, stream_name="combo"),
        [stochastic(draw_u, stream="child"), deterministic(), stochastic(draw_v, stream="child")],
    )
    coin = ProbabilisticOperator(
        ProbabilisticOperatorConfig(probability=0.5, stochastic=True, stream_name="coin"),
        ElementOperator(ElementOperatorConfig(), fn=negate),
    )
    selector = SelectorOperator(
        SelectorOperatorConfig(weights=(1, 3), stochastic=True, stream_name="pick"),
        [stochastic(pick_first, stream="child"), stochastic(pick_second, stream="child")],
    )
    return [composite, coin, selector]


def test_children_of_combining_operators_need_no_rngs_and_draw_from_the_parent_key():
    stages = _combining_stages()
    assert all(op.rngs is None for stage in stages for op in stage.counted_operators())
    batches, per_epoch = run(stages, seed=5)
    # Composite child i draws from fold_in(record key, i).
    assert_contract(batches, per_epoch, "u", 5, "combo", fold=0)
    assert_contract(batches, per_epoch, "v", 5, "combo", fold=2)
    # The coin applies its child where uniform(fold_in(record key, 0)) < p.
    x = by_record(batches, per_epoch, "x")
    for epoch in range(EPOCHS):
        hit = contract_draws(5, "coin", epoch, fold=0) < 0.5
        got = np.array([x[(epoch, r)] < 0 for r in range(N)])
        np.testing.assert_array_equal(got, hit)
    assert 0 < sum(v < 0 for v in x.values()) < EPOCHS * N
    # The selector picks categorical(fold_in(k, 0)) and runs the child with fold_in(k, 1).
    w = by_record(batches, per_epoch, "w")
    logits = jnp.log(jnp.array([0.25, 0.75], dtype=jnp.float32))
    for epoch in range(EPOCHS):
        keys = record_keys(node_key(5, "pick"), epoch, jnp.arange(N))
        chosen = np.asarray(jax.vmap(lambda k: jax.random.categorical(jax.random.fold_in(k, 0), logits))(keys))
        run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        want = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, ()))(run_keys)) + chosen.astype(np.float32)
        got = np.array([w[(epoch, r)] for r in range(N)])
        assert got.tobytes() == want.tobytes()


def test_a_pipeline_of_combining_operators_without_rngs_is_reproducible():
    first, _ = run(_combining_stages(), seed=5, prefetch=0)
    second, _ = run(_combining_stages(), seed=5, prefetch=3)
    assert len(first) == len(second) == EPOCHS * 3
    for a, b in zip(first, second, strict=True):
        assert set(a) == set(b)
        for key in a:
            assert a[key].tobytes() == b[key].tobytes(), key
    reseeded, _ = run(_combining_stages(), seed=6)
    assert any(a["u"].tobytes() != b["u"].tobytes() for a, b in zip(first, reseeded, strict=True))


# -- the seed itself -----------------------------------------------------------


def test_another_pipeline_seed_changes_the_draws_and_the_shuffle():
    seven, per_epoch = run([stochastic(draw_u)], seed=7)
    eight, _ = run([stochastic(draw_u)], seed=8)
    assert valid_labels(seven) != valid_labels(eight)
    assert sorted(valid_labels(eight)) == sorted(valid_labels(seven))
    u7, u8 = by_record(seven, per_epoch, "u"), by_record(eight, per_epoch, "u")
    assert all(u7[k] != u8[k] for k in u7)
    assert_contract(eight, per_epoch, "u", 8, "augment")


@pytest.mark.parametrize("seed", [0, 7, 12345, 2**31, 2**32 - 1])
def test_rngs_seed_s_is_pipeline_seed_s(seed):
    pipeline = Pipeline(
        source=make_source(N), stages=[stochastic(draw_u)], batch_size=B, rngs=nnx.Rngs(seed), shuffle=True
    )
    assert pipeline.seed == seed
    assert pipeline.stream.seed == seed
    assert iter(pipeline).get_state()["seed"] == seed
    # Other streams next to "default" do not change the seed.
    assert Pipeline(source=make_source(N), batch_size=B, rngs=nnx.Rngs(default=seed, shuffle=1)).seed == seed

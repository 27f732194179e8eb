"""Tests for datarax.operators.composite: sequential, parallel, branch and weighted composition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.core.config import OperatorConfig
from datarax.operators import (
    STRATEGIES,
    CompositeOperator,
    CompositeOperatorConfig,
    ElementOperator,
    ElementOperatorConfig,
)

SDS = jax.ShapeDtypeStruct
DET = ElementOperatorConfig()


def _op(fn, name=None):
    return ElementOperator(DET, lambda e, k: fn(e), name=name)


def _noise_op(seed=0, name=None):
    """Stochastic child: adds one uniform draw to x."""
    return ElementOperator(
        ElementOperatorConfig(stochastic=True, stream_name="augment"),
        lambda e, k: {**e, "x": e["x"] + jax.random.uniform(k, ())},
        rngs=nnx.Rngs(augment=seed),
        name=name,
    )


def _config(strategy="sequential", **kwargs):
    return CompositeOperatorConfig(strategy=strategy, **kwargs)


def _stochastic_config(strategy="sequential", **kwargs):
    return CompositeOperatorConfig(strategy=strategy, stochastic=True, stream_name="augment", **kwargs)


ADD1 = _op(lambda e: {**e, "x": e["x"] + 1}, name="add1")
DOUBLE = _op(lambda e: {**e, "x": e["x"] * 2}, name="double")


def _batch(n=4):
    return {
        "x": jnp.arange(n * 2, dtype=jnp.float32).reshape(n, 2),
        "label": jnp.arange(n, dtype=jnp.int32),
        VALID_MASK: jnp.arange(n) < n - 1,
    }


class LearnableScale(nnx.Module):
    def __init__(self, value):
        self.scale = nnx.Param(jnp.array(value))

    def __call__(self, element, key):
        return {**element, "x": element["x"] * self.scale[...]}


# --- config --------------------------------------------------------------------------------------


def test_strategies_are_the_four_documented():
    assert STRATEGIES == ("sequential", "parallel", "branch", "weighted")
    for strategy in STRATEGIES:
        assert _config(strategy).strategy == strategy


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "random"}, "strategy must be one of.*got 'random'"),
        ({"weights": (1.0, 0.0)}, r"weights must all be finite positive.*\(1.0, 0.0\)"),
        ({"weights": (1.0, -2.0)}, "weights must all be finite positive"),
        ({"weights": (float("nan"),)}, "weights must all be finite positive"),
        ({"weights": (True, 1.0)}, "weights must all be finite positive"),
        ({"weights": ()}, r"weights must be None or a non-empty tuple.*\(\)"),
        ({"weights": "12"}, "weights must be None or a non-empty tuple.*'12'"),
        ({"strategy": "sequential", "weights": (1.0, 2.0)}, "weights=.*only used by strategy="),
        ({"learnable_weights": 1}, "learnable_weights must be a bool, got 1"),
        ({"strategy": "parallel", "learnable_weights": True}, "learnable_weights=True is only"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompositeOperatorConfig(**{"strategy": "weighted", **kwargs})


def test_config_normalises_weights_to_floats():
    assert _config("weighted", weights=[1, 2]).weights == (1.0, 2.0)


# --- construction --------------------------------------------------------------------------------


def test_operators_must_be_a_non_empty_sequence_of_operators():
    with pytest.raises(ValueError, match="at least one"):
        CompositeOperator(_config(), [])
    with pytest.raises(TypeError, match=r"operators\[1\] must be an OperatorModule"):
        CompositeOperator(_config(), [ADD1, lambda e, k: e])
    with pytest.raises(TypeError, match="sequence of OperatorModule"):
        CompositeOperator(_config(), ADD1)


def test_config_type_is_checked():
    with pytest.raises(TypeError, match="CompositeOperatorConfig"):
        CompositeOperator(OperatorConfig(), [ADD1])


def test_stochastic_child_requires_a_stochastic_composite():
    noisy = r"operators\[1\] \(ElementOperator\('noisy'\)\) is stochastic"
    with pytest.raises(ValueError, match=noisy):
        CompositeOperator(_config(), [ADD1, _noise_op(name="noisy")])
    # Configured stochastic, it needs no rngs: a pipeline gives it keys from the pipeline seed.
    composite = CompositeOperator(_stochastic_config(), [_noise_op()])
    with pytest.raises(ValueError, match="has no rngs of its own"):
        composite.record_keys(0, jnp.arange(2))


def test_weight_count_must_match_operators():
    with pytest.raises(ValueError, match=r"weights has 3 entries.*2 operators"):
        CompositeOperator(_config("weighted", weights=(1, 2, 3)), [ADD1, DOUBLE])


def test_branch_condition_checks():
    is_even = lambda e: e["label"] % 2 == 0  # noqa: E731
    with pytest.raises(ValueError, match="needs conditions"):
        CompositeOperator(_config("branch"), [ADD1, DOUBLE])
    with pytest.raises(ValueError, match="2 conditions.*or 1.*got 3"):
        CompositeOperator(_config("branch"), [ADD1, DOUBLE], conditions=[is_even] * 3)
    with pytest.raises(ValueError, match="got 0"):
        CompositeOperator(_config("branch"), [ADD1], conditions=[])
    with pytest.raises(TypeError, match=r"conditions\[1\] must be callable"):
        CompositeOperator(_config("branch"), [ADD1, DOUBLE], conditions=[is_even, True])
    with pytest.raises(ValueError, match="conditions are only used by strategy='branch'"):
        CompositeOperator(_config("parallel"), [ADD1, DOUBLE], conditions=[is_even, is_even])


def test_children_live_in_an_nnx_list_and_their_params_are_state():
    children = [ElementOperator(DET, LearnableScale(v)) for v in (2.0, 3.0)]
    op = CompositeOperator(_config(), children)
    assert isinstance(op.operators, nnx.List)
    params = nnx.state(op, nnx.Param)
    assert sorted(float(p) for p in jax.tree.leaves(params)) == [2.0, 3.0]


# --- sequential ----------------------------------------------------------------------------------


def test_sequential_chains_in_order_and_passes_valid_mask():
    batch = _batch()
    out = CompositeOperator(_config(), [ADD1, DOUBLE])(batch)
    np.testing.assert_array_equal(out["x"], (batch["x"] + 1) * 2)
    np.testing.assert_array_equal(out["label"], batch["label"])
    assert out[VALID_MASK] is batch[VALID_MASK]
    reverse = CompositeOperator(_config(), [DOUBLE, ADD1]).apply_batch(batch)
    np.testing.assert_array_equal(reverse["x"], batch["x"] * 2 + 1)


def test_sequential_child_i_gets_fold_in_of_the_record_key():
    op = CompositeOperator(_stochastic_config(), [_noise_op(1), ADD1, _noise_op(2)], rngs=nnx.Rngs(augment=0))
    batch = _batch()
    keys = op.record_keys(0, jnp.arange(4))
    out = op(batch, keys)
    for r in range(4):
        first = jax.random.uniform(jax.random.fold_in(keys[r], 0), ())
        third = jax.random.uniform(jax.random.fold_in(keys[r], 2), ())
        np.testing.assert_allclose(out["x"][r], batch["x"][r] + first + 1 + third, rtol=1e-6)


def test_children_draw_from_the_composite_key_not_their_own_rngs():
    batch = _batch()
    a = CompositeOperator(_stochastic_config(), [_noise_op(1)], rngs=nnx.Rngs(augment=7))
    b = CompositeOperator(_stochastic_config(), [_noise_op(99)], rngs=nnx.Rngs(augment=7))
    keys = a.record_keys(0, jnp.arange(4))
    np.testing.assert_array_equal(a(batch, keys)["x"], b(batch, keys)["x"])


def test_record_output_does_not_depend_on_batch_composition():
    op = CompositeOperator(_stochastic_config(), [_noise_op(), DOUBLE], rngs=nnx.Rngs(augment=3))
    batch = _batch(8)
    full = op(batch, op.record_keys(1, jnp.arange(8)))
    alone = op({k: v[5:6] for k, v in batch.items()}, op.record_keys(1, jnp.array([5])))
    np.testing.assert_array_equal(alone["x"][0], full["x"][5])


def test_different_epochs_draw_differently():
    coin = ElementOperator(
        ElementOperatorConfig(stochastic=True, stream_name="augment"),
        lambda e, k: {"flip": jax.random.uniform(k, ()) < 0.5},
        rngs=nnx.Rngs(augment=0),
    )
    op = CompositeOperator(_stochastic_config(), [coin], rngs=nnx.Rngs(augment=3))
    batch = {"x": jnp.zeros(256)}
    e0 = np.asarray(op(batch, op.record_keys(0, jnp.arange(256)))["flip"])
    e1 = np.asarray(op(batch, op.record_keys(1, jnp.arange(256)))["flip"])
    assert 80 < int(np.sum(e0 != e1)) < 176


# --- parallel ------------------------------------------------------------------------------------


def test_parallel_gives_every_child_the_same_input_and_merges_later_wins():
    double_x = _op(lambda e: {"x": e["x"] * 2, "doubled": e["x"] * 2})
    plus_x = _op(lambda e: {"x": e["x"] + 10, "label": e["label"]})
    batch = _batch()
    out = CompositeOperator(_config("parallel"), [double_x, plus_x])(batch)
    assert set(out) == {"x", "doubled", "label", VALID_MASK}
    np.testing.assert_array_equal(out["doubled"], batch["x"] * 2)  # saw the original x
    np.testing.assert_array_equal(out["x"], batch["x"] + 10)  # the later child wins
    np.testing.assert_array_equal(out["label"], batch["label"])
    assert out[VALID_MASK] is batch[VALID_MASK]


def test_parallel_shared_key_with_different_spec_is_value_error_at_output_spec():
    to_int = _op(lambda e: {"x": e["x"].astype(jnp.int32)}, name="to_int")
    op = CompositeOperator(_config("parallel"), [ADD1, to_int], name="par")
    expected = r"par.*disagree on key 'x'.*operators\[1\].*to_int.*operators\[0\]"
    with pytest.raises(ValueError, match=expected):
        op.output_spec({"x": SDS((2,), jnp.float32), "label": SDS((), jnp.int32)})


# --- branch --------------------------------------------------------------------------------------


def test_branch_first_true_condition_wins_and_identity_is_the_default():
    conditions = [lambda e: e["label"] < 2, lambda e: e["label"] < 3]
    op = CompositeOperator(_config("branch"), [ADD1, DOUBLE], conditions=conditions)
    batch = _batch()
    out = op(batch)
    x = batch["x"]
    expected = jnp.stack([x[0] + 1, x[1] + 1, x[2] * 2, x[3]])
    np.testing.assert_array_equal(out["x"], expected)
    assert out[VALID_MASK] is batch[VALID_MASK]


def test_branch_with_one_condition_fewer_uses_the_last_operator_as_default():
    negate = _op(lambda e: {**e, "x": -e["x"]})
    op = CompositeOperator(
        _config("branch"),
        [ADD1, DOUBLE, negate],
        conditions=[lambda e: e["label"] == 0, lambda e: e["label"] == 1],
    )
    batch = _batch()
    x = batch["x"]
    np.testing.assert_array_equal(op(batch)["x"], jnp.stack([x[0] + 1, x[1] * 2, -x[2], -x[3]]))


def test_branch_spec_mismatch_is_value_error_naming_the_branch():
    to_int = _op(lambda e: {**e, "x": e["x"].astype(jnp.int32)}, name="to_int")
    op = CompositeOperator(_config("branch"), [ADD1, to_int], conditions=[lambda e: e["label"] > 0], name="br")
    spec = {"x": SDS((2,), jnp.float32), "label": SDS((), jnp.int32)}
    expected = r"br.*branches.*branch 1 \(operators\[1\] \(ElementOperator\('to_int'\)\)\)"
    with pytest.raises(ValueError, match=expected):
        op.output_spec(spec)


def test_branch_identity_default_requires_children_to_keep_the_spec():
    adds_key = _op(lambda e: {**e, "extra": e["x"]})
    op = CompositeOperator(_config("branch"), [adds_key], conditions=[lambda e: e["label"] > 0])
    with pytest.raises(ValueError, match="branch 1 \\(the identity default\\)"):
        op.output_spec({"x": SDS((2,), jnp.float32), "label": SDS((), jnp.int32)})


def test_branch_condition_must_return_a_scalar():
    op = CompositeOperator(_config("branch"), [ADD1], conditions=[lambda e: e["x"] > 0])
    with pytest.raises(ValueError, match=r"conditions\[0\] must return a scalar bool.*\(2,\)"):
        op.output_spec({"x": SDS((2,), jnp.float32)})


def test_stochastic_branch_child_keys():
    op = CompositeOperator(
        _stochastic_config("branch"),
        [ADD1, _noise_op()],
        conditions=[lambda e: e["label"] == 0],
        rngs=nnx.Rngs(augment=1),
    )
    batch = _batch()
    keys = op.record_keys(0, jnp.arange(4))
    out = op(batch, keys)
    np.testing.assert_array_equal(out["x"][0], batch["x"][0] + 1)
    for r in range(1, 4):
        noise = jax.random.uniform(jax.random.fold_in(keys[r], 1), ())
        np.testing.assert_allclose(out["x"][r], batch["x"][r] + noise, rtol=1e-6)


# --- weighted ------------------------------------------------------------------------------------


def test_weighted_equal_weights_by_default():
    batch = {"x": _batch()["x"], VALID_MASK: _batch()[VALID_MASK]}
    out = CompositeOperator(_config("weighted"), [ADD1, DOUBLE])(batch)
    np.testing.assert_allclose(out["x"], 0.5 * (batch["x"] + 1) + 0.5 * (batch["x"] * 2))
    assert out[VALID_MASK] is batch[VALID_MASK]


def test_weighted_normalises_given_weights():
    batch = {"x": jnp.ones((2, 3), jnp.float16)}
    op = CompositeOperator(_config("weighted", weights=(1, 3)), [ADD1, DOUBLE])
    out = op(batch)
    assert out["x"].dtype == jnp.float16
    np.testing.assert_allclose(out["x"], jnp.full((2, 3), 0.25 * 2 + 0.75 * 2))
    np.testing.assert_allclose(op.mixing_weights(), [0.25, 0.75])


def test_weighted_needs_floating_leaves():
    op = CompositeOperator(_config("weighted"), [ADD1, DOUBLE], name="mix")
    with pytest.raises(ValueError, match=r"mix.*floating.*\['label'\].*int32"):
        op.output_spec({"x": SDS((2,), jnp.float32), "label": SDS((), jnp.int32)})


def test_weighted_spec_mismatch_is_value_error():
    crop = _op(lambda e: {"x": e["x"][:1]}, name="crop")
    op = CompositeOperator(_config("weighted"), [ADD1, crop], name="mix")
    expected = r"mix.*operators\[1\] \(ElementOperator\('crop'\)\) differs"
    with pytest.raises(ValueError, match=expected):
        op.output_spec({"x": SDS((2,), jnp.float32)})


def test_learnable_weights_are_a_param_initialised_to_the_normalised_weights():
    config = _config("weighted", weights=(1, 3), learnable_weights=True)
    op = CompositeOperator(config, [ADD1, DOUBLE])
    assert isinstance(op.weight_logits, nnx.Param)
    np.testing.assert_allclose(op.mixing_weights(), [0.25, 0.75], rtol=1e-6)


def test_learnable_weights_get_gradients_and_train():
    op = CompositeOperator(_config("weighted", learnable_weights=True), [ADD1, DOUBLE])
    batch = {"x": jnp.full((4, 2), 3.0)}  # ADD1 -> 4, DOUBLE -> 6

    def loss(op):
        return jnp.mean((op(batch)["x"] - 6.0) ** 2)  # best with all weight on DOUBLE

    grads = nnx.grad(loss)(op)
    g = np.asarray(grads["weight_logits"][...])
    assert g[0] > 0 > g[1]

    @nnx.jit
    def step(op):
        value, grads = nnx.value_and_grad(loss)(op)
        op.weight_logits[...] = op.weight_logits[...] - 1.0 * grads["weight_logits"][...]
        return value

    first = float(step(op))
    for _ in range(5):
        last = float(step(op))
    assert last < first
    assert float(op.mixing_weights()[1]) > 0.5


def test_gradients_reach_child_params_through_the_composite():
    op = CompositeOperator(
        _config("weighted", weights=(1, 1)),
        [ElementOperator(DET, LearnableScale(2.0)), ElementOperator(DET, LearnableScale(3.0))],
    )
    batch = {"x": jnp.ones((3, 2))}
    grads = nnx.grad(lambda o: jnp.sum(o(batch)["x"]))(op)
    # out = 0.5 * s0 * x + 0.5 * s1 * x, so each d/ds = 0.5 * sum(x) = 3.
    for i in range(2):
        np.testing.assert_allclose(float(grads["operators"][i]["fn"]["scale"][...]), 3.0)


# --- transformations -----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_under_jax_jit_and_nnx_jit(strategy):
    conditions = [lambda e: e["label"] % 2 == 0] if strategy == "branch" else None
    op = CompositeOperator(
        _stochastic_config(strategy),
        [_noise_op(), DOUBLE],
        conditions=conditions,
        rngs=nnx.Rngs(augment=4),
    )
    batch = _batch()
    if strategy == "weighted":  # mixes floating leaves only
        batch = {"x": batch["x"], VALID_MASK: batch[VALID_MASK]}
    eager = op(batch, op.record_keys(2, jnp.arange(4)))
    jitted = jax.jit(lambda b, e, r: op(b, op.record_keys(e, r)))(batch, 2, jnp.arange(4))
    nnx_jitted = nnx.jit(lambda o, b, e, r: o(b, o.record_keys(e, r)))(op, batch, jnp.int32(2), jnp.arange(4))
    for out in (jitted, nnx_jitted):
        np.testing.assert_allclose(out["x"], eager["x"], rtol=1e-6)
        np.testing.assert_array_equal(out[VALID_MASK], batch[VALID_MASK])

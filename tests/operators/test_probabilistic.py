"""Tests for datarax.operators.probabilistic: a child applied with probability p per record."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.operators import (
    ElementOperator,
    ElementOperatorConfig,
    ProbabilisticOperator,
    ProbabilisticOperatorConfig,
)

SDS = jax.ShapeDtypeStruct
NEGATE = ElementOperator(ElementOperatorConfig(), lambda e, k: {**e, "x": -e["x"]}, name="negate")


def _config(p, stochastic=True):
    if stochastic:
        return ProbabilisticOperatorConfig(probability=p, stochastic=True, stream_name="augment")
    return ProbabilisticOperatorConfig(probability=p)


def _op(p, child=NEGATE, seed=0, **kwargs):
    return ProbabilisticOperator(_config(p), child, rngs=nnx.Rngs(augment=seed), **kwargs)


def _noise_child(seed=0):
    return ElementOperator(
        ElementOperatorConfig(stochastic=True, stream_name="augment"),
        lambda e, k: {**e, "x": e["x"] + jax.random.uniform(k, ())},
        rngs=nnx.Rngs(augment=seed),
    )


def _applied(op, n, epoch=0):
    """Which of records 0..n-1 the operator transforms (x = 1 becomes -1)."""
    out = op({"x": jnp.ones(n)}, op.record_keys(epoch, jnp.arange(n)))
    return np.asarray(out["x"] < 0)


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_config_rejects_bad_probability(p):
    expected = r"probability must be a number in \[0, 1\], got " + re.escape(repr(p))
    with pytest.raises(ValueError, match=expected):
        _config(p)


def test_fractional_probability_must_be_stochastic():
    with pytest.raises(ValueError, match="probability=0.5 needs a random draw.*stochastic=True"):
        _config(0.5, stochastic=False)


@pytest.mark.parametrize("p", [0, 1, 0.0, 1.0])
def test_probability_zero_or_one_may_be_deterministic(p):
    config = _config(p, stochastic=False)
    assert config.probability == float(p)
    assert isinstance(config.probability, float)


def test_stochastic_child_requires_a_stochastic_wrapper():
    with pytest.raises(ValueError, match="operator.*is stochastic"):
        ProbabilisticOperator(_config(1, stochastic=False), _noise_child())


def test_child_must_be_an_operator():
    with pytest.raises(TypeError, match="operator must be an OperatorModule"):
        ProbabilisticOperator(_config(0.5), lambda e, k: e, rngs=nnx.Rngs(augment=0))


# --- rate ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_empirical_rate_is_close_to_p(p):
    n = 4000
    count = int(_applied(_op(p, seed=11), n).sum())
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) < 5 * sigma, (count, n * p)


def test_p_zero_never_and_p_one_always():
    assert not _applied(_op(0.0), 4000).any()
    assert _applied(_op(1.0), 4000).all()


def test_deterministic_p_zero_and_one():
    batch = {"x": jnp.ones(5), VALID_MASK: jnp.ones(5, bool)}
    never = ProbabilisticOperator(_config(0, stochastic=False), NEGATE)
    always = ProbabilisticOperator(_config(1, stochastic=False), NEGATE)
    np.testing.assert_array_equal(never(batch)["x"], jnp.ones(5))
    np.testing.assert_array_equal(always(batch)["x"], -jnp.ones(5))
    assert always(batch)[VALID_MASK] is batch[VALID_MASK]


def test_decision_is_uniform_of_fold_in_zero_and_child_key_is_fold_in_one():
    op = _op(0.5, child=_noise_child(), seed=3)
    batch = {"x": jnp.zeros(64), VALID_MASK: jnp.arange(64) < 60}
    keys = op.record_keys(0, jnp.arange(64))
    out = op(batch, keys)
    assert out[VALID_MASK] is batch[VALID_MASK]
    for r in range(64):
        applied = float(jax.random.uniform(jax.random.fold_in(keys[r], 0), ())) < 0.5
        noise = float(jax.random.uniform(jax.random.fold_in(keys[r], 1), ()))
        assert float(out["x"][r]) == pytest.approx(noise if applied else 0.0)


# --- seed contract -------------------------------------------------------------------------------


def test_record_output_does_not_depend_on_batch_composition():
    op = _op(0.5, child=_noise_child(), seed=5)
    x = jnp.arange(8, dtype=jnp.float32)
    full = op({"x": x}, op.record_keys(3, jnp.arange(8)))
    alone = op({"x": x[5:6]}, op.record_keys(3, jnp.array([5])))
    np.testing.assert_array_equal(alone["x"][0], full["x"][5])


def test_different_epochs_flip_different_records():
    op = _op(0.5, seed=6)
    e0, e1 = _applied(op, 256, epoch=0), _applied(op, 256, epoch=1)
    np.testing.assert_array_equal(_applied(op, 256, epoch=0), e0)
    assert 80 < int(np.sum(e0 != e1)) < 176


# --- spec ----------------------------------------------------------------------------------------


def test_child_changing_the_spec_is_value_error_at_output_spec():
    cast = ElementOperator(ElementOperatorConfig(), lambda e, k: {"x": e["x"].astype(jnp.int32)}, name="cast")
    op = _op(0.5, child=cast, name="maybe_cast")
    expected = r"maybe_cast.*ElementOperator\('cast'\).*keep the element spec"
    with pytest.raises(ValueError, match=expected):
        op.output_spec({"x": SDS((3,), jnp.float32)})
    deterministic = ProbabilisticOperator(_config(0, stochastic=False), cast)
    with pytest.raises(ValueError, match="keep the element spec"):
        deterministic.output_spec({"x": SDS((3,), jnp.float32)})


def test_output_spec_equals_input_spec():
    spec = {"x": SDS((3,), jnp.float32), "y": SDS((), jnp.int32)}
    assert _op(0.5).output_spec(spec) == spec


def test_stochastic_apply_without_key_is_value_error():
    with pytest.raises(ValueError, match="key"):
        _op(0.5).apply({"x": jnp.ones(2)})


# --- transformations -----------------------------------------------------------------------------


def test_under_jax_jit_and_nnx_jit():
    op = _op(0.5, child=_noise_child(), seed=8)
    batch = {"x": jnp.zeros(16), VALID_MASK: jnp.arange(16) < 10}
    eager = op(batch, op.record_keys(1, jnp.arange(16)))
    jitted = jax.jit(lambda b, e, r: op(b, op.record_keys(e, r)))(batch, 1, jnp.arange(16))
    nnx_jitted = nnx.jit(lambda o, b, e, r: o(b, o.record_keys(e, r)))(op, batch, jnp.int32(1), jnp.arange(16))
    for out in (jitted, nnx_jitted):
        np.testing.assert_allclose(out["x"], eager["x"], rtol=1e-6)
        np.testing.assert_array_equal(out[VALID_MASK], batch[VALID_MASK])


class LearnableScale(nnx.Module):
    def __init__(self):
        self.scale = nnx.Param(jnp.array(2.0))

    def __call__(self, element, key):
        return {**element, "x": element["x"] * self.scale[...]}


def test_gradient_reaches_the_child_only_through_applied_records():
    child = ElementOperator(ElementOperatorConfig(), LearnableScale())
    op = _op(0.5, child=child, seed=2)
    batch = {"x": jnp.ones(200)}
    keys = op.record_keys(0, jnp.arange(200))
    applied = _applied(_op(0.5, seed=2), 200)
    grads = nnx.grad(lambda o: jnp.sum(o(batch, keys)["x"]))(op)
    # Each applied record contributes d(scale * 1)/d(scale) = 1; skipped records contribute 0.
    assert float(grads["operator"]["fn"]["scale"][...]) == pytest.approx(float(applied.sum()))
    assert 0 < applied.sum() < 200

"""Tests for datarax.operators.selector: one randomly chosen child per record."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.operators import (
    ElementOperator,
    ElementOperatorConfig,
    SelectorOperator,
    SelectorOperatorConfig,
)

SDS = jax.ShapeDtypeStruct


def _writes(i, name=None):
    """Child that records which branch ran in key ``chosen``."""
    return ElementOperator(ElementOperatorConfig(), lambda e, k: {**e, "chosen": jnp.int32(i)}, name=name)


def _config(weights=None):
    return SelectorOperatorConfig(weights=weights, stochastic=True, stream_name="augment")


def _op(children, weights=None, seed=0, **kwargs):
    return SelectorOperator(_config(weights), children, rngs=nnx.Rngs(augment=seed), **kwargs)


def _chosen(op, n, epoch=0):
    out = op({"x": jnp.zeros(n)}, op.record_keys(epoch, jnp.arange(n)))
    return np.asarray(out["chosen"])


def _noise_child(seed=0):
    return ElementOperator(
        ElementOperatorConfig(stochastic=True, stream_name="augment"),
        lambda e, k: {**e, "x": e["x"] + jax.random.uniform(k, ()), "chosen": jnp.int32(1)},
        rngs=nnx.Rngs(augment=seed),
    )


# --- config --------------------------------------------------------------------------------------


def test_config_must_be_stochastic():
    with pytest.raises(ValueError, match="stochastic=True.*got stochastic=False"):
        SelectorOperatorConfig()


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ((1.0, 0.0), r"weights must all be finite positive numbers, got \(1.0, 0.0\)"),
        ((-1.0,), "weights must all be finite positive"),
        ((float("inf"),), "weights must all be finite positive"),
        ((), r"weights must be None or a non-empty tuple.*\(\)"),
        (2.0, "weights must be None or a non-empty tuple.*2.0"),
    ],
)
def test_config_rejects_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        _config(weights)


def test_config_stores_weights_as_float_tuple():
    assert _config([1, 2]).weights == (1.0, 2.0)


# --- construction --------------------------------------------------------------------------------


def test_weight_count_must_match_operators():
    with pytest.raises(ValueError, match=r"weights has 2 entries.*3 operators"):
        _op([_writes(0), _writes(1), _writes(2)], weights=(1, 2))


def test_operators_must_be_non_empty_operators():
    with pytest.raises(ValueError, match="at least one"):
        _op([])
    with pytest.raises(TypeError, match=r"operators\[0\] must be an OperatorModule"):
        _op([lambda e, k: e])


def test_children_live_in_an_nnx_list():
    assert isinstance(_op([_writes(0), _writes(1)]).operators, nnx.List)


# --- selection -----------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [(1.0, 2.0, 5.0), None])
def test_empirical_frequencies_match_weights(weights):
    n = 4000
    op = _op([_writes(i) for i in range(3)], weights=weights, seed=21)
    counts = np.bincount(_chosen(op, n), minlength=3)
    probs = np.full(3, 1 / 3) if weights is None else np.asarray(weights) / sum(weights)
    for count, p in zip(counts, probs, strict=True):
        assert abs(count - n * p) < 5 * math.sqrt(n * p * (1 - p)), (counts, probs)


def test_choice_is_categorical_on_fold_in_zero_and_child_gets_fold_in_one():
    op = _op([_writes(0), _noise_child()], weights=(1, 1), seed=4)
    batch = {"x": jnp.zeros(32), VALID_MASK: jnp.arange(32) < 30}
    keys = op.record_keys(0, jnp.arange(32))
    out = op(batch, keys)
    assert out[VALID_MASK] is batch[VALID_MASK]
    logits = jnp.log(jnp.array([0.5, 0.5]))
    for r in range(32):
        index = int(jax.random.categorical(jax.random.fold_in(keys[r], 0), logits))
        assert int(out["chosen"][r]) == index
        noise = float(jax.random.uniform(jax.random.fold_in(keys[r], 1), ()))
        assert float(out["x"][r]) == pytest.approx(noise if index == 1 else 0.0)


def test_record_choice_does_not_depend_on_batch_composition():
    op = _op([_writes(0), _noise_child(), _writes(2)], seed=5)
    x = jnp.arange(8, dtype=jnp.float32)
    full = op({"x": x}, op.record_keys(2, jnp.arange(8)))
    alone = op({"x": x[5:6]}, op.record_keys(2, jnp.array([5])))
    np.testing.assert_array_equal(alone["chosen"][0], full["chosen"][5])
    np.testing.assert_array_equal(alone["x"][0], full["x"][5])


def test_different_epochs_choose_differently():
    op = _op([_writes(0), _writes(1)], seed=6)
    e0, e1 = _chosen(op, 256, epoch=0), _chosen(op, 256, epoch=1)
    np.testing.assert_array_equal(_chosen(op, 256, epoch=0), e0)
    assert 80 < int(np.sum(e0 != e1)) < 176


# --- spec ----------------------------------------------------------------------------------------


def test_children_with_different_specs_are_value_error_at_output_spec():
    to_half = ElementOperator(ElementOperatorConfig(), lambda e, k: {**e, "chosen": jnp.float16(1)}, name="half")
    op = _op([_writes(0), to_half], name="sel")
    expected = r"sel.*operators\[1\] \(ElementOperator\('half'\)\) differs"
    with pytest.raises(ValueError, match=expected):
        op.output_spec({"x": SDS((), jnp.float32)})


def test_children_may_change_the_input_spec_together():
    op = _op([_writes(0), _writes(1)])
    assert op.output_spec({"x": SDS((), jnp.float32)}) == {
        "x": SDS((), jnp.float32),
        "chosen": SDS((), jnp.int32),
    }


# --- transformations -----------------------------------------------------------------------------


def test_under_jax_jit_and_nnx_jit():
    op = _op([_writes(0), _noise_child()], seed=8)
    batch = {"x": jnp.zeros(16), VALID_MASK: jnp.arange(16) < 10}
    eager = op(batch, op.record_keys(1, jnp.arange(16)))
    jitted = jax.jit(lambda b, e, r: op(b, op.record_keys(e, r)))(batch, 1, jnp.arange(16))
    nnx_jitted = nnx.jit(lambda o, b, e, r: o(b, o.record_keys(e, r)))(op, batch, jnp.int32(1), jnp.arange(16))
    for out in (jitted, nnx_jitted):
        np.testing.assert_array_equal(out["chosen"], eager["chosen"])
        np.testing.assert_allclose(out["x"], eager["x"], rtol=1e-6)
        np.testing.assert_array_equal(out[VALID_MASK], batch[VALID_MASK])


def test_stochastic_apply_without_key_is_value_error():
    with pytest.raises(ValueError, match="key"):
        _op([_writes(0)]).apply({"x": jnp.zeros(())})

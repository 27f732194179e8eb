"""Tests for datarax.operators.element: ElementOperator wraps a per-record function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.core.config import OperatorConfig
from datarax.operators import ElementOperator, ElementOperatorConfig

SDS = jax.ShapeDtypeStruct


def _stochastic():
    return ElementOperatorConfig(stochastic=True, stream_name="augment")


def _batch(n=4):
    return {
        "x": jnp.arange(n * 3, dtype=jnp.float32).reshape(n, 3),
        "label": jnp.arange(n, dtype=jnp.int32),
        VALID_MASK: jnp.arange(n) < n - 1,
    }


def _affine(element, key):
    assert key is None
    return {**element, "x": element["x"] * 2 + 1}


def _noise(element, key):
    return {**element, "x": element["x"] + jax.random.uniform(key, element["x"].shape)}


def _coin(element, key):
    return {**element, "flip": jax.random.uniform(key, ()) < 0.5}


class LearnableScale(nnx.Module):
    """A callable module with a parameter, used as ``fn``."""

    def __init__(self):
        self.scale = nnx.Param(jnp.array(3.0))

    def __call__(self, element, key):
        return {**element, "x": element["x"] * self.scale[...]}


# --- construction --------------------------------------------------------------------------------


def test_config_has_only_operator_fields():
    assert ElementOperatorConfig().stochastic is False
    with pytest.raises(ValueError, match="stream_name"):
        ElementOperatorConfig(stochastic=True)
    with pytest.raises(ValueError, match="stream_name='x'"):
        ElementOperatorConfig(stream_name="x")


def test_fn_must_be_callable():
    with pytest.raises(TypeError, match="fn must be callable, got 3"):
        ElementOperator(ElementOperatorConfig(), 3)


def test_config_type_is_checked():
    with pytest.raises(TypeError, match="ElementOperatorConfig"):
        ElementOperator(OperatorConfig(), _affine)


def test_stochastic_needs_no_rngs_but_alone_it_needs_keys():
    op = ElementOperator(_stochastic(), _noise)  # in a pipeline, keys come from the pipeline seed
    assert op.stochastic and not op.has_own_rngs
    with pytest.raises(ValueError, match="has no rngs of its own"):
        op.record_keys(0, jnp.arange(2))
    with pytest.raises(ValueError, match="needs per-row keys"):
        op({"x": jnp.zeros(2)})


# --- deterministic -------------------------------------------------------------------------------


def test_deterministic_call_and_apply_batch_pass_valid_mask_through():
    op = ElementOperator(ElementOperatorConfig(), _affine)
    batch = _batch()
    for out in (op(batch), op.apply_batch(batch)):
        np.testing.assert_array_equal(out["x"], batch["x"] * 2 + 1)
        np.testing.assert_array_equal(out["label"], batch["label"])
        assert out[VALID_MASK] is batch[VALID_MASK]


def test_deterministic_ignores_a_given_key():
    op = ElementOperator(ElementOperatorConfig(), _affine)  # _affine asserts key is None
    out = op.apply({"x": jnp.ones(3)}, jax.random.key(0))
    np.testing.assert_array_equal(out["x"], 3 * jnp.ones(3))


def test_fn_returning_non_dict_is_type_error_naming_the_operator():
    op = ElementOperator(ElementOperatorConfig(), lambda e, k: e["x"], name="bad_fn")
    with pytest.raises(TypeError, match="bad_fn.*must return a dict"):
        op.output_spec({"x": SDS((3,), jnp.float32)})
    with pytest.raises(TypeError, match="bad_fn"):
        op(_batch())


def test_fn_mutating_its_element_does_not_touch_the_callers_dict():
    def mutate(element, key):
        element["extra"] = element["x"]
        return element

    op = ElementOperator(ElementOperatorConfig(), mutate)
    element = {"x": jnp.ones(2)}
    out = op.apply(element)
    assert set(out) == {"x", "extra"}
    assert set(element) == {"x"}


def test_output_spec_follows_fn():
    op = ElementOperator(ElementOperatorConfig(), lambda e, k: {"img": e["img"][:2].astype(jnp.uint8)})
    assert op.output_spec({"img": SDS((4, 5), jnp.float32)}) == {"img": SDS((2, 5), jnp.uint8)}


# --- stochastic ----------------------------------------------------------------------------------


def test_stochastic_each_row_uses_its_record_key():
    op = ElementOperator(_stochastic(), _noise, rngs=nnx.Rngs(augment=1))
    batch = _batch()
    keys = op.record_keys(0, jnp.arange(4))
    out = op(batch, keys)
    assert out[VALID_MASK] is batch[VALID_MASK]
    for i in range(4):
        expected = batch["x"][i] + jax.random.uniform(keys[i], (3,))
        np.testing.assert_allclose(out["x"][i], expected)


def test_stochastic_apply_without_key_is_value_error():
    op = ElementOperator(_stochastic(), _noise, rngs=nnx.Rngs(augment=1), name="noisy")
    with pytest.raises(ValueError, match="noisy.*key"):
        op.apply({"x": jnp.ones(3)})


def test_record_output_does_not_depend_on_batch_composition():
    op = ElementOperator(_stochastic(), _noise, rngs=nnx.Rngs(augment=3))
    x = jnp.zeros((8, 3), jnp.float32)
    full = op({"x": x}, op.record_keys(2, jnp.arange(8)))
    alone = op({"x": x[5:6]}, op.record_keys(2, jnp.array([5])))
    np.testing.assert_array_equal(alone["x"][0], full["x"][5])


def test_different_epochs_draw_differently():
    op = ElementOperator(_stochastic(), _coin, rngs=nnx.Rngs(augment=4))
    batch = {"x": jnp.zeros((256, 1))}
    e0 = np.asarray(op(batch, op.record_keys(0, jnp.arange(256)))["flip"])
    e1 = np.asarray(op(batch, op.record_keys(1, jnp.arange(256)))["flip"])
    again = np.asarray(op(batch, op.record_keys(0, jnp.arange(256)))["flip"])
    np.testing.assert_array_equal(e0, again)
    # Independent fair coins disagree on about half the records (128 +- 8).
    assert 80 < int(np.sum(e0 != e1)) < 176
    assert 80 < int(e0.sum()) < 176


# --- transformations -----------------------------------------------------------------------------


def test_under_jax_jit():
    op = ElementOperator(_stochastic(), _noise, rngs=nnx.Rngs(augment=2))
    batch = _batch()
    step = jax.jit(lambda b, epoch, rec: op(b, op.record_keys(epoch, rec)))
    jitted = step(batch, 1, jnp.arange(4))
    eager = op(batch, op.record_keys(1, jnp.arange(4)))
    np.testing.assert_allclose(jitted["x"], eager["x"], rtol=1e-6)
    np.testing.assert_array_equal(jitted[VALID_MASK], batch[VALID_MASK])


def test_under_nnx_jit_with_the_operator_as_argument():
    @nnx.jit
    def step(op, batch, epoch, records):
        return op(batch, op.record_keys(epoch, records))

    op = ElementOperator(_stochastic(), _noise, rngs=nnx.Rngs(augment=2))
    batch = _batch()
    jitted = step(op, batch, jnp.int32(3), jnp.arange(4))
    eager = op(batch, op.record_keys(3, jnp.arange(4)))
    np.testing.assert_allclose(jitted["x"], eager["x"], rtol=1e-6)
    np.testing.assert_array_equal(jitted[VALID_MASK], batch[VALID_MASK])


# --- gradients -----------------------------------------------------------------------------------


def test_module_fn_is_a_submodule_and_gradients_reach_its_param():
    op = ElementOperator(ElementOperatorConfig(), LearnableScale())
    assert len(jax.tree.leaves(nnx.state(op, nnx.Param))) == 1
    batch = _batch(3)

    def loss(op, batch):
        out = op.apply_batch(batch)
        mask = out[VALID_MASK].astype(jnp.float32)
        return jnp.sum(jnp.sum(out["x"], axis=1) * mask)

    grads = nnx.grad(loss)(op, batch)
    # d/d(scale) sum(scale * x over valid rows) = sum of the valid rows of x.
    np.testing.assert_allclose(float(grads["fn"]["scale"][...]), float(jnp.sum(batch["x"][:2])))


def test_training_step_updates_the_param_under_nnx_jit():
    op = ElementOperator(ElementOperatorConfig(), LearnableScale())
    batch = {"x": jnp.ones((2, 2), jnp.float32)}

    @nnx.jit
    def train_step(op, batch):
        def loss(op):
            return jnp.mean((op.apply_batch(batch)["x"] - 1.0) ** 2)

        value, grads = nnx.value_and_grad(loss)(op)
        op.fn.scale[...] = op.fn.scale[...] - 0.1 * grads["fn"]["scale"][...]
        return value

    first = float(train_step(op, batch))
    second = float(train_step(op, batch))
    assert second < first
    assert float(op.fn.scale[...]) < 3.0

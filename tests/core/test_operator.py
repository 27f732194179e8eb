"""Tests for datarax.core.operator: per-element operators applied to whole batches."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import datarax.core.operator as operator_module
from datarax.core.batch_form import VALID_MASK
from datarax.core.config import OperatorConfig, StructuralConfig
from datarax.core.operator import OperatorModule
from datarax.core.prng import record_keys, stream_root_key

SDS = jax.ShapeDtypeStruct


class Affine(OperatorModule):
    """Deterministic: x -> 2x + 1, and adds a derived key."""

    def apply(self, element, key=None):
        assert key is None
        return {"x": element["x"] * 2 + 1, "sum": jnp.sum(element["x"])}


class AddNoise(OperatorModule):
    """Stochastic: adds one uniform draw per record to x (same draw for all its entries)."""

    def apply(self, element, key=None):
        noise = jax.random.uniform(key, ())
        return {"x": element["x"] + noise, "noise": noise}


class ToUint8Crop(OperatorModule):
    """Deterministic: changes dtype and shape."""

    def apply(self, element, key=None):
        return {"img": element["img"][:2, :2].astype(jnp.uint8)}


class RandomCrop(OperatorModule):
    """Stochastic: changes shape (random 2-long window) and dtype."""

    def apply(self, element, key=None):
        start = jax.random.randint(key, (), 0, element["x"].shape[0] - 1)
        return {"x": jax.lax.dynamic_slice_in_dim(element["x"], start, 2).astype(jnp.float16)}


class Scale(OperatorModule):
    """An operator with a learnable parameter."""

    def __init__(self, config, *, rngs=None, name=None):
        super().__init__(config, rngs=rngs, name=name)
        self.scale = nnx.Param(jnp.array(3.0))

    def apply(self, element, key=None):
        return {"x": element["x"] * self.scale[...]}


def _stochastic_config():
    return OperatorConfig(stochastic=True, stream_name="augment")


def _batch(n=4, width=3):
    return {
        "x": jnp.arange(n * width, dtype=jnp.float32).reshape(n, width),
        VALID_MASK: jnp.arange(n) < n - 1,
    }


# --- construction --------------------------------------------------------------------------------


def test_abstract_apply_raises_not_implemented():
    op = OperatorModule(OperatorConfig())
    with pytest.raises(NotImplementedError, match="apply"):
        op.apply({"x": jnp.zeros(3)})
    with pytest.raises(NotImplementedError):
        op({"x": jnp.zeros((2, 3))})


def test_structural_config_is_type_error():
    with pytest.raises(TypeError, match="OperatorConfig"):
        Affine(StructuralConfig())


def test_stochastic_without_rngs_is_built_and_rngs_without_the_stream_are_refused():
    op = AddNoise(_stochastic_config())  # draws from the pipeline seed in a pipeline
    assert op.stochastic and not op.has_own_rngs
    with pytest.raises(ValueError, match="has no rngs of its own"):
        op.root_key()
    with pytest.raises(ValueError, match=r"requires rng stream\(s\) \['augment'\]"):
        AddNoise(_stochastic_config(), rngs=nnx.Rngs(other=0))


def test_stochastic_with_stream_or_default_is_built():
    assert AddNoise(_stochastic_config(), rngs=nnx.Rngs(augment=0)).stochastic is True
    # A missing named stream falls back to "default", as nnx.Rngs does.
    assert AddNoise(_stochastic_config(), rngs=nnx.Rngs(0)).stream_name == "augment"


def test_stochastic_with_unrelated_stream_is_value_error():
    with pytest.raises(ValueError, match="augment"):
        AddNoise(_stochastic_config(), rngs=nnx.Rngs(dropout=0))


def test_deterministic_operator_has_no_keys():
    op = Affine(OperatorConfig())
    assert op.stochastic is False
    assert op.record_keys(0, jnp.arange(3)) is None


# --- deterministic apply -------------------------------------------------------------------------


def test_deterministic_call_and_apply_batch_pass_valid_mask_through():
    op = Affine(OperatorConfig())
    batch = _batch()
    for out in (op(batch), op.apply_batch(batch)):
        assert set(out) == {"x", "sum", VALID_MASK}
        np.testing.assert_array_equal(out["x"], batch["x"] * 2 + 1)
        np.testing.assert_array_equal(out["sum"], batch["x"].sum(axis=1))
        assert out[VALID_MASK] is batch[VALID_MASK]


def test_apply_batch_without_valid_mask_adds_none():
    out = Affine(OperatorConfig()).apply_batch({"x": jnp.ones((2, 3))})
    assert set(out) == {"x", "sum"}


def test_apply_batch_does_not_mutate_input():
    batch = _batch()
    before = dict(batch)
    Affine(OperatorConfig())(batch)
    assert batch.keys() == before.keys()
    assert all(batch[k] is before[k] for k in batch)


def test_apply_batch_matches_per_element_apply():
    op = Affine(OperatorConfig())
    batch = _batch(5)
    out = op(batch)
    for i in range(5):
        row = op.apply({"x": batch["x"][i]})
        np.testing.assert_array_equal(out["x"][i], row["x"])
        np.testing.assert_array_equal(out["sum"][i], row["sum"])


# --- stochastic apply ----------------------------------------------------------------------------


def test_stochastic_apply_batch_needs_keys():
    op = AddNoise(_stochastic_config(), rngs=nnx.Rngs(augment=0))
    with pytest.raises(ValueError, match="keys"):
        op.apply_batch(_batch())
    with pytest.raises(ValueError, match="keys"):
        op(_batch())


def test_stochastic_apply_uses_one_key_per_row():
    op = AddNoise(_stochastic_config(), rngs=nnx.Rngs(augment=1))
    batch = _batch(4)
    keys = op.record_keys(0, jnp.arange(4))
    out = op(batch, keys)
    assert out[VALID_MASK] is batch[VALID_MASK]
    for i in range(4):
        expected = jax.random.uniform(keys[i], ())
        np.testing.assert_allclose(out["noise"][i], expected)
        np.testing.assert_allclose(out["x"][i], batch["x"][i] + expected)
    # Different rows draw different values.
    assert len(set(np.asarray(out["noise"]).tolist())) == 4


def test_record_draw_does_not_depend_on_batch_composition():
    op = AddNoise(_stochastic_config(), rngs=nnx.Rngs(augment=5))
    x = jnp.zeros((6, 2), jnp.float32)
    full = op({"x": x}, op.record_keys(2, jnp.arange(6)))
    part = op({"x": x[jnp.array([4, 1])]}, op.record_keys(2, jnp.array([4, 1])))
    np.testing.assert_array_equal(part["noise"], full["noise"][jnp.array([4, 1])])


# --- record_keys ---------------------------------------------------------------------------------


def _key_data(keys):
    return np.asarray(jax.random.key_data(keys))


def test_record_keys_same_record_same_epoch_same_key_regardless_of_neighbours():
    op = AddNoise(_stochastic_config(), rngs=nnx.Rngs(augment=11))
    a = _key_data(op.record_keys(3, jnp.array([7, 2, 9])))
    b = _key_data(op.record_keys(3, jnp.array([9, 100, 7])))
    c = _key_data(op.record_keys(3, jnp.array([2])))
    np.testing.assert_array_equal(a[0], b[2])  # record 7
    np.testing.assert_array_equal(a[2], b[0])  # record 9
    np.testing.assert_array_equal(a[1], c[0])  # record 2
    assert not np.array_equal(a[0], a[1])


def test_record_keys_differ_across_epochs():
    op = AddNoise(_stochastic_config(), rngs=nnx.Rngs(augment=11))
    e0 = _key_data(op.record_keys(0, jnp.arange(8)))
    e1 = _key_data(op.record_keys(1, jnp.arange(8)))
    for i in range(8):
        assert not np.array_equal(e0[i], e1[i])


def test_record_keys_follow_the_stream_root_and_do_not_advance_it():
    rngs = nnx.Rngs(augment=4)
    op = AddNoise(_stochastic_config(), rngs=rngs)
    count_before = int(rngs["augment"].count[...])
    keys = op.record_keys(2, jnp.array([0, 5]))
    assert int(rngs["augment"].count[...]) == count_before
    expected = record_keys(stream_root_key(nnx.Rngs(augment=4), "augment"), 2, jnp.array([0, 5]))
    np.testing.assert_array_equal(_key_data(keys), _key_data(expected))
    # Asking twice gives the same keys (nothing stateful is consumed).
    np.testing.assert_array_equal(_key_data(op.record_keys(2, jnp.array([0, 5]))), _key_data(keys))


def test_record_keys_depend_on_stream_seed():
    a = AddNoise(_stochastic_config(), rngs=nnx.Rngs(augment=1)).record_keys(0, jnp.arange(3))
    b = AddNoise(_stochastic_config(), rngs=nnx.Rngs(augment=2)).record_keys(0, jnp.arange(3))
    assert not np.array_equal(_key_data(a), _key_data(b))


# --- output_spec ---------------------------------------------------------------------------------


def test_output_spec_deterministic_changes_dtype_and_shape():
    op = ToUint8Crop(OperatorConfig())
    out = op.output_spec({"img": SDS((4, 4, 3), jnp.float32)})
    assert out == {"img": SDS((2, 2, 3), jnp.uint8)}


def test_output_spec_deterministic_adds_keys():
    out = Affine(OperatorConfig()).output_spec({"x": SDS((3,), jnp.int32)})
    assert out == {"x": SDS((3,), jnp.int32), "sum": SDS((), jnp.int32)}


def test_output_spec_stochastic():
    op = RandomCrop(_stochastic_config(), rngs=nnx.Rngs(augment=0))
    out = op.output_spec({"x": SDS((5,), jnp.float32)})
    assert out == {"x": SDS((2,), jnp.float16)}
    noise = AddNoise(_stochastic_config(), rngs=nnx.Rngs(augment=0))
    assert noise.output_spec({"x": SDS((3,), jnp.float32)}) == {
        "x": SDS((3,), jnp.float32),
        "noise": SDS((), jnp.float32),
    }


def test_output_spec_matches_actual_output():
    op = RandomCrop(_stochastic_config(), rngs=nnx.Rngs(augment=0))
    batch = {"x": jnp.ones((4, 6), jnp.float32)}
    out = op(batch, op.record_keys(0, jnp.arange(4)))
    spec = op.output_spec({"x": SDS((6,), jnp.float32)})
    assert out["x"].shape == (4, *spec["x"].shape)
    assert out["x"].dtype == spec["x"].dtype


def test_output_spec_propagates_shape_errors():
    class NeedsMatrix(OperatorModule):
        def apply(self, element, key=None):
            return {"y": element["x"] @ element["x"]}

    with pytest.raises(TypeError):
        NeedsMatrix(OperatorConfig()).output_spec({"x": SDS((2, 3), jnp.float32)})


# --- transformations -----------------------------------------------------------------------------


def test_apply_batch_under_jax_jit():
    op = Affine(OperatorConfig())
    batch = _batch()
    out = jax.jit(op.apply_batch)(batch)
    np.testing.assert_array_equal(out["x"], batch["x"] * 2 + 1)
    np.testing.assert_array_equal(out[VALID_MASK], batch[VALID_MASK])

    noisy = AddNoise(_stochastic_config(), rngs=nnx.Rngs(augment=3))
    step = jax.jit(lambda b, epoch, rec: noisy(b, noisy.record_keys(epoch, rec)))
    jitted = step(batch, 1, jnp.arange(4))
    eager = noisy(batch, noisy.record_keys(1, jnp.arange(4)))
    np.testing.assert_allclose(jitted["x"], eager["x"], rtol=1e-6)


def test_apply_batch_under_nnx_jit():
    @nnx.jit
    def step(op, batch, epoch, records):
        return op(batch, op.record_keys(epoch, records))

    op = AddNoise(_stochastic_config(), rngs=nnx.Rngs(augment=3))
    batch = _batch()
    jitted = step(op, batch, jnp.int32(1), jnp.arange(4))
    eager = op(batch, op.record_keys(1, jnp.arange(4)))
    np.testing.assert_allclose(jitted["x"], eager["x"], rtol=1e-6)
    np.testing.assert_array_equal(jitted[VALID_MASK], batch[VALID_MASK])
    # The traced epoch gives the same keys as a Python int epoch.
    again = step(op, batch, jnp.int32(1), jnp.arange(4))
    np.testing.assert_array_equal(again["x"], jitted["x"])

    det = nnx.jit(lambda op, b: op(b))(Affine(OperatorConfig()), batch)
    np.testing.assert_array_equal(det["x"], batch["x"] * 2 + 1)


def test_gradient_flows_to_operator_parameter():
    op = Scale(OperatorConfig())
    batch = _batch(3)

    def loss(op, batch):
        out = op.apply_batch(batch)
        mask = out[VALID_MASK].astype(jnp.float32)
        return jnp.sum(jnp.sum(out["x"], axis=1) * mask)

    grads = nnx.grad(loss)(op, batch)
    # d/d(scale) of sum(scale * x over valid rows) = sum of valid x.
    expected = float(jnp.sum(batch["x"][:2]))
    np.testing.assert_allclose(float(grads["scale"][...]), expected)


def test_gradient_step_updates_the_parameter_under_nnx_jit():
    op = Scale(OperatorConfig())
    batch = {"x": jnp.ones((2, 2), jnp.float32)}

    @nnx.jit
    def train_step(op, batch):
        def loss(op):
            return jnp.mean((op.apply_batch(batch)["x"] - 1.0) ** 2)

        value, grads = nnx.value_and_grad(loss)(op)
        op.scale[...] = op.scale[...] - 0.1 * grads["scale"][...]
        return value

    first = float(train_step(op, batch))
    second = float(train_step(op, batch))
    assert second < first
    assert float(op.scale[...]) < 3.0


def test_doctests():
    result = doctest.testmod(operator_module)
    assert result.attempted > 0
    assert result.failed == 0

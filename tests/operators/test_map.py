"""Tests for datarax.operators.map: MapOperator applies a leaf function to chosen keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from datarax.core.batch_form import VALID_MASK
from datarax.operators import MapOperator, MapOperatorConfig

SDS = jax.ShapeDtypeStruct


def _stochastic(subtree=None):
    return MapOperatorConfig(subtree=subtree, stochastic=True, stream_name="augment")


def _add_noise(leaf, key):
    return leaf + jax.random.uniform(key, leaf.shape)


def _batch(n=4):
    return {
        "image": jnp.arange(n * 4, dtype=jnp.float32).reshape(n, 2, 2),
        "mask": jnp.ones((n, 3), jnp.float32),
        "label": jnp.arange(n, dtype=jnp.int32),
        VALID_MASK: jnp.arange(n) < n - 1,
    }


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subtree", "match"),
    [
        ("image", "subtree must be None or a non-empty tuple.*'image'"),
        ((), r"subtree must be None or a non-empty tuple.*\(\)"),
        (("image", ""), r"non-empty strings, got \('image', ''\)"),
        (("image", 3), r"non-empty strings, got \('image', 3\)"),
        (("a", "a"), r"unique, got \('a', 'a'\)"),
        (5, "subtree.*got 5"),
    ],
)
def test_config_rejects_bad_subtree(subtree, match):
    with pytest.raises(ValueError, match=match):
        MapOperatorConfig(subtree=subtree)


def test_config_stores_subtree_as_tuple():
    config = MapOperatorConfig(subtree=["image", "mask"])
    assert config.subtree == ("image", "mask")
    hash(config)  # configs are static graph attributes, so they must hash


def test_fn_must_be_callable():
    with pytest.raises(TypeError, match="fn must be callable"):
        MapOperator(MapOperatorConfig(), "double")


# --- deterministic -------------------------------------------------------------------------------


def test_all_leaves_by_default_including_nested():
    op = MapOperator(MapOperatorConfig(), lambda leaf: leaf * 2)
    batch = {
        "a": jnp.ones((2, 3)),
        "nested": {"b": jnp.full((2,), 5)},
        VALID_MASK: jnp.ones(2, bool),
    }
    out = op(batch)
    np.testing.assert_array_equal(out["a"], 2 * jnp.ones((2, 3)))
    np.testing.assert_array_equal(out["nested"]["b"], jnp.full((2,), 10))
    assert out[VALID_MASK] is batch[VALID_MASK]


def test_subtree_selects_keys_and_others_pass_through():
    op = MapOperator(MapOperatorConfig(subtree=("image",)), lambda leaf: -leaf)
    batch = _batch()
    for out in (op(batch), op.apply_batch(batch)):
        np.testing.assert_array_equal(out["image"], -batch["image"])
        np.testing.assert_array_equal(out["mask"], batch["mask"])
        np.testing.assert_array_equal(out["label"], batch["label"])
        assert out[VALID_MASK] is batch[VALID_MASK]


def test_fn_may_change_shape_and_dtype():
    op = MapOperator(MapOperatorConfig(subtree=("image",)), lambda leaf: leaf[0].astype(jnp.uint8))
    spec = op.output_spec({"image": SDS((2, 2), jnp.float32), "label": SDS((), jnp.int32)})
    assert spec == {"image": SDS((2,), jnp.uint8), "label": SDS((), jnp.int32)}


def test_missing_subtree_key_is_value_error_at_output_spec():
    op = MapOperator(MapOperatorConfig(subtree=("image", "depth")), lambda leaf: leaf, name="m")
    with pytest.raises(ValueError, match=r"m.*\['depth'\].*not in the element"):
        op.output_spec({"image": SDS((2,), jnp.float32)})
    with pytest.raises(ValueError, match="depth"):
        op({"image": jnp.ones((2, 2))})


# --- stochastic ----------------------------------------------------------------------------------


def test_leaf_i_gets_fold_in_of_the_record_key():
    op = MapOperator(_stochastic(), _add_noise, rngs=nnx.Rngs(augment=0))
    batch = {"a": jnp.zeros((3, 2)), "b": jnp.zeros((3, 2))}
    keys = op.record_keys(0, jnp.arange(3))
    out = op(batch, keys)
    for r in range(3):
        for i, name in enumerate(("a", "b")):  # leaves in sorted-key order
            expected = jax.random.uniform(jax.random.fold_in(keys[r], i), (2,))
            np.testing.assert_allclose(out[name][r], expected)
    assert not np.allclose(out["a"], out["b"])


def test_leaf_key_does_not_depend_on_subtree_choice():
    batch = {"a": jnp.zeros((3, 2)), "b": jnp.zeros((3, 2))}
    all_leaves = MapOperator(_stochastic(), _add_noise, rngs=nnx.Rngs(augment=0))
    only_b = MapOperator(_stochastic(("b",)), _add_noise, rngs=nnx.Rngs(augment=0))
    keys = all_leaves.record_keys(0, jnp.arange(3))
    full, part = all_leaves(batch, keys), only_b(batch, keys)
    np.testing.assert_array_equal(part["b"], full["b"])
    np.testing.assert_array_equal(part["a"], batch["a"])


def test_record_output_does_not_depend_on_batch_composition():
    op = MapOperator(_stochastic(("image",)), _add_noise, rngs=nnx.Rngs(augment=9))
    batch = _batch(8)
    full = op(batch, op.record_keys(4, jnp.arange(8)))
    alone = op({k: v[5:6] for k, v in batch.items()}, op.record_keys(4, jnp.array([5])))
    np.testing.assert_array_equal(alone["image"][0], full["image"][5])
    np.testing.assert_array_equal(alone["label"][0], full["label"][5])


def test_different_epochs_draw_differently():
    op = MapOperator(_stochastic(), lambda leaf, key: jax.random.uniform(key, ()) < 0.5, rngs=nnx.Rngs(augment=2))
    batch = {"flip": jnp.zeros(256)}
    e0 = np.asarray(op(batch, op.record_keys(0, jnp.arange(256)))["flip"])
    e1 = np.asarray(op(batch, op.record_keys(1, jnp.arange(256)))["flip"])
    assert 80 < int(np.sum(e0 != e1)) < 176


def test_stochastic_apply_without_key_is_value_error():
    op = MapOperator(_stochastic(), _add_noise, rngs=nnx.Rngs(augment=0))
    with pytest.raises(ValueError, match="key"):
        op.apply({"a": jnp.zeros(2)})


# --- transformations and gradients ---------------------------------------------------------------


def test_under_jax_jit_and_nnx_jit():
    op = MapOperator(_stochastic(("image",)), _add_noise, rngs=nnx.Rngs(augment=5))
    batch = _batch()
    eager = op(batch, op.record_keys(2, jnp.arange(4)))
    jitted = jax.jit(lambda b, e, r: op(b, op.record_keys(e, r)))(batch, 2, jnp.arange(4))
    nnx_jitted = nnx.jit(lambda o, b, e, r: o(b, o.record_keys(e, r)))(op, batch, jnp.int32(2), jnp.arange(4))
    for out in (jitted, nnx_jitted):
        np.testing.assert_allclose(out["image"], eager["image"], rtol=1e-6)
        np.testing.assert_array_equal(out[VALID_MASK], batch[VALID_MASK])


class Shift(nnx.Module):
    def __init__(self):
        self.shift = nnx.Param(jnp.array(0.5))

    def __call__(self, leaf):
        return leaf + self.shift[...]


def test_gradient_reaches_a_module_fn():
    op = MapOperator(MapOperatorConfig(subtree=("image",)), Shift())
    batch = _batch(3)
    grads = nnx.grad(lambda o: jnp.sum(o(batch)["image"]))(op)
    # Every image entry gets + shift: d/d(shift) = number of image entries.
    assert float(grads["fn"]["shift"][...]) == pytest.approx(3 * 2 * 2)

"""Tests for datarax.core.prng: the seed contract."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import datarax.core.prng as prng_module
from datarax.core.prng import record_keys, seed_from_key, stream_root_key


def _data(keys):
    return np.asarray(jax.random.key_data(keys))


# --- stream_root_key -----------------------------------------------------------------------------


def test_stream_root_key_named_stream():
    rngs = nnx.Rngs(augment=7, default=1)
    key = stream_root_key(rngs, "augment")
    assert jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    assert key.shape == ()
    np.testing.assert_array_equal(_data(key), _data(jax.random.key(7)))


def test_stream_root_key_falls_back_to_default():
    rngs = nnx.Rngs(3)
    key = stream_root_key(rngs, "augment")
    np.testing.assert_array_equal(_data(key), _data(jax.random.key(3)))
    np.testing.assert_array_equal(_data(key), _data(stream_root_key(rngs, "default")))


def test_stream_root_key_prefers_named_stream_over_default():
    rngs = nnx.Rngs(default=0, augment=9)
    assert not np.array_equal(_data(stream_root_key(rngs, "augment")), _data(stream_root_key(rngs, "default")))


def test_stream_root_key_missing_stream_and_no_default_is_value_error():
    with pytest.raises(ValueError) as info:
        stream_root_key(nnx.Rngs(dropout=0), "augment")
    message = str(info.value)
    assert "augment" in message
    assert "dropout" in message
    assert "default" in message


def test_stream_root_key_does_not_advance_the_stream():
    rngs = nnx.Rngs(augment=5)
    before = int(rngs["augment"].count[...])
    first = stream_root_key(rngs, "augment")
    second = stream_root_key(rngs, "augment")
    assert int(rngs["augment"].count[...]) == before
    np.testing.assert_array_equal(_data(first), _data(second))
    # Drawing from the stream does advance it, and does not change the root key.
    rngs.augment()
    assert int(rngs["augment"].count[...]) == before + 1
    np.testing.assert_array_equal(_data(stream_root_key(rngs, "augment")), _data(first))


def test_stream_root_key_fallback_does_not_advance_default():
    rngs = nnx.Rngs(0)
    before = int(rngs["default"].count[...])
    stream_root_key(rngs, "shuffle")
    assert int(rngs["default"].count[...]) == before


# --- record_keys ---------------------------------------------------------------------------------


def test_record_keys_formula():
    root = jax.random.key(42)
    keys = record_keys(root, 3, jnp.array([0, 9, 4]))
    assert keys.shape == (3,)
    for i, r in enumerate([0, 9, 4]):
        expected = jax.random.fold_in(jax.random.fold_in(root, 3), r)
        np.testing.assert_array_equal(_data(keys[i]), _data(expected))


def test_record_keys_deterministic():
    root = jax.random.key(1)
    np.testing.assert_array_equal(
        _data(record_keys(root, 2, jnp.arange(5))), _data(record_keys(root, 2, jnp.arange(5)))
    )


def test_record_keys_are_per_record_and_independent_of_the_vector():
    root = jax.random.key(1)
    full = _data(record_keys(root, 0, jnp.arange(10)))
    assert len({tuple(k) for k in full}) == 10  # every record its own key
    subset = _data(record_keys(root, 0, np.array([8, 2, 8])))
    np.testing.assert_array_equal(subset[0], full[8])
    np.testing.assert_array_equal(subset[1], full[2])
    np.testing.assert_array_equal(subset[2], full[8])


def test_record_keys_depend_on_epoch_and_root():
    root = jax.random.key(1)
    e0 = _data(record_keys(root, 0, jnp.arange(4)))
    e1 = _data(record_keys(root, 1, jnp.arange(4)))
    other = _data(record_keys(jax.random.key(2), 0, jnp.arange(4)))
    for i in range(4):
        assert not np.array_equal(e0[i], e1[i])
        assert not np.array_equal(e0[i], other[i])


def test_record_keys_accepts_raw_uint32_root():
    typed = jax.random.key(5)
    raw = jax.random.key_data(typed)
    a = record_keys(typed, 1, jnp.arange(3))
    b = record_keys(raw, 1, jnp.arange(3))
    np.testing.assert_array_equal(_data(a), np.asarray(b))


def test_record_keys_under_jit_with_traced_epoch_and_records():
    root = jax.random.key(8)
    jitted = jax.jit(record_keys)(root, jnp.int32(4), jnp.array([1, 6]))
    np.testing.assert_array_equal(_data(jitted), _data(record_keys(root, 4, [1, 6])))


def test_record_keys_accept_int64_like_numpy_indices():
    root = jax.random.key(0)
    a = record_keys(root, np.int64(2), np.array([3, 4], np.int64))
    b = record_keys(root, 2, jnp.array([3, 4], jnp.int32))
    np.testing.assert_array_equal(_data(a), _data(b))


# --- seed_from_key -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 42, 12345, 2**31 - 1, 2**31, 2**32 - 1])
def test_seed_from_key_inverts_key(seed):
    assert seed_from_key(jax.random.key(seed)) == seed


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_seed_from_key_inverts_key_property(seed):
    out = seed_from_key(jax.random.key(seed))
    assert type(out) is int
    assert out == seed


def test_seed_from_key_raw_and_typed_agree():
    key = jax.random.key(77)
    assert seed_from_key(jax.random.key_data(key)) == seed_from_key(key) == 77


def test_seed_from_key_in_range_and_distinct_for_derived_keys():
    base = jax.random.key(3)
    seeds = [seed_from_key(jax.random.fold_in(base, i)) for i in range(20)]
    assert all(0 <= s < 2**32 for s in seeds)
    assert len(set(seeds)) == 20


def test_doctests():
    result = doctest.testmod(prng_module)
    assert result.attempted > 0
    assert result.failed == 0

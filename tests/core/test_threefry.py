"""datarax.core.threefry returns jax.random's bits exactly, without a rolled loop on the CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datarax.core import threefry
from datarax.core.prng import record_keys


def _keys(n: int, seed: int = 0) -> jax.Array:
    return jax.random.split(jax.random.key(seed), n)


def _data(key):
    return np.asarray(jax.random.key_data(key))


def test_hash_matches_jax_primitive_on_random_words():
    rng = np.random.default_rng(0)
    k1, k2, x1, x2 = (rng.integers(0, 2**32, size=257, dtype=np.uint32) for _ in range(4))
    ours = threefry.threefry2x32(k1, k2, x1, x2)
    from jax._src.random.threefry2x32 import threefry2x32_p  # the primitive jax.random binds

    theirs = jax.vmap(lambda a, b, c, d: tuple(threefry2x32_p.bind(a, b, c, d)))(k1, k2, x1, x2)
    np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(theirs[0]))
    np.testing.assert_array_equal(np.asarray(ours[1]), np.asarray(theirs[1]))


@pytest.mark.parametrize("data", [0, 1, 7, 2**31, 2**32 - 1])
def test_fold_in_scalar_matches_jax(data):
    key = jax.random.key(42)
    np.testing.assert_array_equal(
        _data(threefry.fold_in(key, np.uint32(data))), _data(jax.random.fold_in(key, np.uint32(data)))
    )


def test_fold_in_vector_of_data_and_of_keys_matches_vmapped_jax():
    keys = _keys(300)
    data = (np.arange(300, dtype=np.uint64) * 2654435761 % 2**32).astype(np.uint32)
    expected = jax.vmap(jax.random.fold_in)(keys, data)
    np.testing.assert_array_equal(_data(threefry.fold_in(keys, data)), _data(expected))
    one = jax.random.key(5)
    np.testing.assert_array_equal(
        _data(threefry.fold_in(one, data)), _data(jax.vmap(lambda d: jax.random.fold_in(one, d))(data))
    )


def test_uniform_matches_jax():
    keys = _keys(2000, seed=3)
    np.testing.assert_array_equal(
        np.asarray(threefry.uniform(keys)), np.asarray(jax.vmap(lambda k: jax.random.uniform(k))(keys))
    )


@pytest.mark.parametrize("p", [0.0, 1e-6, 0.25, 0.5, 0.999, 1.0])
def test_bernoulli_matches_jax(p):
    keys = _keys(2000, seed=1)
    ours = np.asarray(threefry.bernoulli(keys, p))
    theirs = np.asarray(jax.vmap(lambda k: jax.random.bernoulli(k, p))(keys))
    np.testing.assert_array_equal(ours, theirs)
    assert ours.dtype == np.bool_ and ours.shape == (2000,)


def test_other_key_implementations_fall_back_to_jax_random():
    key = jax.random.key(3, impl="rbg")
    assert not threefry._fast(key)
    np.testing.assert_array_equal(_data(threefry.fold_in(key, 9)), _data(jax.random.fold_in(key, 9)))
    assert bool(threefry.bernoulli(key, 0.5)) == bool(jax.random.bernoulli(key, 0.5))
    assert float(threefry.uniform(key)) == float(jax.random.uniform(key))


def test_record_keys_are_the_documented_fold_ins():
    root = jax.random.key(11)
    records = jnp.array([0, 3, 49_999, 3], dtype=jnp.int32)
    expected = [jax.random.fold_in(jax.random.fold_in(root, 4), r) for r in [0, 3, 49_999, 3]]
    np.testing.assert_array_equal(_data(record_keys(root, 4, records)), np.stack([_data(k) for k in expected]))


def test_compiled_record_keys_and_coins_have_no_loop_on_cpu():
    # The reason this module exists: jax.random's CPU lowering is a rolled `while`.
    def coins(root, epoch, records):
        return threefry.bernoulli(record_keys(root, epoch, records), 0.5)

    hlo = jax.jit(coins).lower(jax.random.key(0), 1, jnp.arange(128)).compile().as_text()
    assert " while(" not in hlo
    reference = jax.jit(lambda k: jax.random.bernoulli(k, 0.5, (128,))).lower(jax.random.key(0)).compile().as_text()
    if jax.default_backend() == "cpu":
        assert " while(" in reference  # what it replaces (if JAX ever unrolls, this says so)

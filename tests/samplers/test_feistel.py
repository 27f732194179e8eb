"""Tests for datarax's Feistel shuffle (NumPy and JAX implementations)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datarax.samplers.feistel import (
    feistel_permutation_np,
    feistel_permute,
    feistel_permute_np,
)

SIZES = [1, 2, 3, 5, 7, 8, 100, 1000, 4097, 65537]


@pytest.mark.parametrize("n", SIZES)
def test_is_permutation_for_listed_sizes(n):
    for seed, epoch in [(0, 0), (42, 3), (2**40 + 1, 7)]:
        perm = feistel_permutation_np(n, seed, epoch)
        assert perm.shape == (n,) and perm.dtype == np.int64
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5000),
    seed=st.integers(-(2**70), 2**70),
    epoch=st.integers(0, 2**40),
)
def test_is_permutation_property(n, seed, epoch):
    perm = feistel_permutation_np(n, seed, epoch)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))


def test_seed_reduction_mod_2_32():
    n = 257
    base = feistel_permutation_np(n, 5, 1)
    np.testing.assert_array_equal(feistel_permutation_np(n, 5 + 3 * 2**32, 1), base)
    np.testing.assert_array_equal(feistel_permutation_np(n, np.uint32(5), np.uint32(1)), base)
    np.testing.assert_array_equal(feistel_permutation_np(n, -1, 1), feistel_permutation_np(n, np.uint32(2**32 - 1), 1))


@pytest.mark.parametrize("n", SIZES)
def test_numpy_and_jax_agree(n):
    for seed, epoch in [(0, 0), (42, 3), (-7, 2**33 + 9)]:
        expected = feistel_permutation_np(n, seed, epoch)
        got = feistel_permute(jnp.arange(n), n, seed, epoch)
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(got), expected)


def test_numpy_and_jax_agree_under_jit_with_traced_keys_and_subsets():
    n = 4097
    fn = jax.jit(feistel_permute, static_argnums=1)
    rng = np.random.default_rng(0)
    full = {}
    for seed, epoch in [(0, 0), (123, 1), (2**32 - 1, 2**31 + 5)]:
        full[seed, epoch] = feistel_permutation_np(n, seed, epoch)
        pos = rng.choice(n, size=300, replace=False)  # arbitrary order, a subset
        pos2d = rng.integers(0, n, size=(4, 7))  # repeats and a 2-D shape
        for p in (pos, pos2d):
            got = fn(jnp.asarray(p, dtype=jnp.int32), n, jnp.uint32(seed), jnp.uint32(epoch))
            np.testing.assert_array_equal(np.asarray(got), full[seed, epoch][p])
            np.testing.assert_array_equal(feistel_permute_np(p, n, seed, epoch), full[seed, epoch][p])


def test_extreme_n_agrees_on_sampled_positions():
    for n in (2**31, 2**31 - 1, 2**30 + 1):
        pos = np.array([0, 1, n // 3, n // 2, n - 2, n - 1], dtype=np.int64)
        host = feistel_permute_np(pos, n, 9, 4)
        assert ((host >= 0) & (host < n)).all() and len(set(host.tolist())) == len(pos)
        dev = feistel_permute(jnp.asarray(pos, dtype=jnp.int32), n, 9, 4)
        np.testing.assert_array_equal(np.asarray(dev), host)


def test_seeds_and_epochs_change_the_permutation():
    for n in (10, 11, 100, 1000, 4097):
        perms = {(s, e): tuple(feistel_permutation_np(n, s, e).tolist()) for s in range(4) for e in range(4)}
        assert len(set(perms.values())) == len(perms), n


def test_golden_outputs():
    np.testing.assert_array_equal(feistel_permutation_np(10, 0, 0), [2, 3, 6, 5, 8, 4, 0, 7, 9, 1])
    np.testing.assert_array_equal(
        feistel_permutation_np(1000, 42, 3)[:16],
        [588, 967, 713, 730, 697, 809, 747, 997, 665, 188, 362, 812, 377, 816, 744, 33],
    )
    np.testing.assert_array_equal(
        np.asarray(feistel_permute(jnp.arange(16), 1000, 42, 3))[:16],
        feistel_permutation_np(1000, 42, 3)[:16],
    )


def test_quality_far_from_identity_and_epochs_uncorrelated():
    n = 10_000
    idx = np.arange(n)
    perms = [feistel_permutation_np(n, 1234, e) for e in range(4)]
    for perm in perms:
        assert np.mean(perm == idx) < 0.01
        # a uniform random permutation has mean |p(i) - i| ~ n / 3
        assert np.mean(np.abs(perm - idx)) > 0.28 * n
        # values are ranks, so Pearson on them is Spearman's rho
        assert abs(np.corrcoef(perm, idx)[0, 1]) < 0.05
    for a, b in zip(perms, perms[1:]):
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.05
        assert np.mean(a == b) < 0.01


@pytest.mark.parametrize("bad", [0, -1, -(2**40), 2**31 + 1, 2**40, 10.0, "10", True, None])
def test_invalid_n_raises(bad):
    expected = r"^{}: n must be an int in \[1, 2\*\*31\], got " + re.escape(repr(bad)) + "$"
    with pytest.raises(ValueError, match=expected.format("feistel_permutation_np")):
        feistel_permutation_np(bad, 0, 0)
    with pytest.raises(ValueError, match=expected.format("feistel_permute_np")):
        feistel_permute_np(np.arange(1), bad, 0, 0)
    with pytest.raises(ValueError, match=expected.format("feistel_permute")):
        feistel_permute(jnp.arange(1), bad, 0, 0)


@pytest.mark.parametrize("pos", [[0, 10], [-1, 3], [[0], [10]]])
def test_positions_out_of_range_raise(pos):
    with pytest.raises(ValueError, match="positions"):
        feistel_permute_np(np.array(pos), 10, 0, 0)


def test_bad_positions_dtype_and_bad_seed_raise():
    with pytest.raises(ValueError, match="positions"):
        feistel_permute_np(np.array([0.0, 1.0]), 10, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        feistel_permute_np(np.arange(3), 10, 1.5, 0)
    with pytest.raises(ValueError, match="epoch"):
        feistel_permute(jnp.arange(3), 10, 0, jnp.arange(2))


def test_empty_positions():
    assert feistel_permute_np(np.array([], dtype=np.int64), 10, 0, 0).shape == (0,)
    assert feistel_permute(jnp.zeros((0,), jnp.int32), 10, 0, 0).shape == (0,)


def test_no_retracing_for_new_seed_or_epoch():
    traces = []

    @jax.jit
    def shuffled(positions, seed, epoch):
        traces.append(1)
        return feistel_permute(positions, 1000, seed, epoch)

    pos = jnp.arange(1000)
    outs = []
    for seed, epoch in [(0, 0), (1, 0), (1, 1), (2**32 - 1, 77)]:
        out = shuffled(pos, jnp.uint32(seed), jnp.uint32(epoch))
        np.testing.assert_array_equal(np.asarray(out), feistel_permutation_np(1000, seed, epoch))
        outs.append(tuple(np.asarray(out).tolist()))
    assert len(traces) == 1
    assert len(set(outs)) == 4

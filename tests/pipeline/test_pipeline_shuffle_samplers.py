"""The samplers behind the pipeline's epoch order, and a golden pin of a pipeline's shuffle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline_helpers import collect, make_source, valid_labels

from datarax import Pipeline
from datarax.samplers import (
    SequentialSampler,
    SequentialSamplerConfig,
    ShuffleSampler,
    ShuffleSamplerConfig,
)

# First two epochs of Pipeline(N=20, batch_size=8, shuffle=True, rngs=nnx.Rngs(0)).
# Computed once and pasted: a change here means every user's data order changed.
GOLDEN_EPOCH_0 = [13, 15, 18, 0, 7, 5, 10, 8, 1, 3, 4, 14, 19, 11, 2, 6, 17, 12, 9, 16]
GOLDEN_EPOCH_1 = [0, 4, 7, 1, 10, 16, 19, 9, 8, 3, 5, 6, 14, 2, 17, 15, 12, 18, 13, 11]


def test_sequential_sampler_is_the_identity_every_epoch():
    sampler = SequentialSampler(SequentialSamplerConfig())
    for epoch in (0, 1, 5):
        assert sampler.process(7, epoch=epoch).tolist() == list(range(7))
    positions = np.array([4, 0, 2])
    np.testing.assert_array_equal(np.asarray(sampler.indices_at(positions, 5, 3)), positions)
    np.testing.assert_array_equal(sampler.indices_at_np(positions, 5, 3), positions)


@pytest.mark.parametrize("n", [1, 2, 3, 17, 64, 65, 1000])
def test_shuffle_sampler_gives_permutations(n):
    sampler = ShuffleSampler(ShuffleSamplerConfig(seed=123))
    orders = [sampler.process(n, epoch=e) for e in range(3)]
    for order in orders:
        assert order.shape == (n,)
        assert sorted(order.tolist()) == list(range(n))
    if n >= 17:
        assert orders[0].tolist() != orders[1].tolist() != orders[2].tolist()
        other_seed = ShuffleSampler(ShuffleSamplerConfig(seed=124)).process(n, epoch=0)
        assert other_seed.tolist() != orders[0].tolist()
        assert orders[0].tolist() != list(range(n))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1), epoch=st.integers(0, 10_000))
def test_shuffle_sampler_permutation_property(n, seed, epoch):
    sampler = ShuffleSampler(ShuffleSamplerConfig(seed=seed))
    order = sampler.process(n, epoch=epoch)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    # Random access agrees with the materialised order.
    positions = np.arange(n)[::7]
    np.testing.assert_array_equal(sampler.indices_at_np(positions, n, epoch), order[positions])


@pytest.mark.parametrize("n", [1, 65])
def test_indices_at_jitted_with_traced_epoch_matches_numpy(n):
    sampler = ShuffleSampler(ShuffleSamplerConfig(seed=99))
    traces = []

    @jax.jit
    def order(positions, epoch):
        traces.append(1)
        return sampler.indices_at(positions, n, epoch)

    positions = jnp.arange(n, dtype=jnp.int32)
    for epoch in (0, 1, 2, 77):
        got = np.asarray(order(positions, jnp.asarray(epoch, dtype=jnp.int32)))
        np.testing.assert_array_equal(got, sampler.indices_at_np(np.arange(n), n, epoch))
    assert len(traces) == 1  # the epoch is traced, not baked in
    # Any subset of positions maps to the same records as in the whole order.
    subset = np.array([n - 1, 0, n // 2])
    np.testing.assert_array_equal(
        np.asarray(sampler.indices_at(jnp.asarray(subset), n, 2)), sampler.indices_at_np(subset, n, 2)
    )


def test_sampler_config_validation():
    for bad in (-1, 2**32, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            ShuffleSamplerConfig(seed=bad)
    with pytest.raises(TypeError):
        ShuffleSampler(SequentialSamplerConfig())
    with pytest.raises(ValueError, match="0"):
        ShuffleSampler(ShuffleSamplerConfig()).process(0)


def test_golden_pipeline_shuffle():
    pipeline = Pipeline(source=make_source(20), batch_size=8, shuffle=True, rngs=nnx.Rngs(0), num_epochs=2)
    batches = collect(pipeline)
    assert len(batches) == 6
    assert valid_labels(batches[:3]) == GOLDEN_EPOCH_0
    assert valid_labels(batches[3:]) == GOLDEN_EPOCH_1
    sampler = ShuffleSampler(ShuffleSamplerConfig(seed=pipeline.seed))
    assert sampler.process(20, epoch=0).tolist() == GOLDEN_EPOCH_0
    assert sampler.process(20, epoch=1).tolist() == GOLDEN_EPOCH_1

"""Tests for datarax.samplers.samplers: the sampler configs' validation."""

import re

import numpy as np
import pytest

from datarax.samplers import SequentialSampler, SequentialSamplerConfig, ShuffleSampler, ShuffleSamplerConfig


def test_numpy_seed_is_accepted_and_stored_as_int():
    config = ShuffleSamplerConfig(seed=np.uint32(7))
    assert config.seed == 7 and type(config.seed) is int
    assert hash(config) == hash(ShuffleSamplerConfig(seed=7))
    np.testing.assert_array_equal(
        ShuffleSampler(config).process(20), ShuffleSampler(ShuffleSamplerConfig(seed=7)).process(20)
    )


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, True, "3", None])
def test_bad_seed_names_config_argument_value_and_range(bad):
    expected = rf"^ShuffleSamplerConfig: seed must be an int in \[0, 2\*\*32\), got {re.escape(repr(bad))}$"
    with pytest.raises(ValueError, match=expected):
        ShuffleSamplerConfig(seed=bad)


@pytest.mark.parametrize("bad", [0, -3, True, 2.0])
def test_process_names_the_sampler_and_num_records(bad):
    with pytest.raises(ValueError, match=rf"^SequentialSampler: num_records must be a positive int, got {bad!r}$"):
        SequentialSampler(SequentialSamplerConfig()).process(bad)

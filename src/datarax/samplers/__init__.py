"""Samplers: the order in which an epoch visits records."""

from datarax.samplers.feistel import feistel_permutation_np, feistel_permute, feistel_permute_np
from datarax.samplers.samplers import (
    SequentialSampler,
    SequentialSamplerConfig,
    ShuffleSampler,
    ShuffleSamplerConfig,
)

__all__ = [
    "SequentialSampler",
    "SequentialSamplerConfig",
    "ShuffleSampler",
    "ShuffleSamplerConfig",
    "feistel_permutation_np",
    "feistel_permute",
    "feistel_permute_np",
]

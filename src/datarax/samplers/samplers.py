"""The two epoch orders: ``SequentialSampler`` and ``ShuffleSampler``.

Both are stateless maps from epoch positions to record indices (see
``datarax.core.sampler``). ``ShuffleSampler`` is the Feistel permutation of
``datarax.samplers.feistel``: a new order every epoch that depends only on
``(seed, epoch)``, computed per position in O(1) memory, identically in
numpy and ``jax.numpy``.

Example:
    >>> from datarax.samplers import ShuffleSampler, ShuffleSamplerConfig
    >>> sampler = ShuffleSampler(ShuffleSamplerConfig(seed=0))
    >>> sampler.process(10, epoch=0).tolist()
    [2, 3, 6, 5, 8, 4, 0, 7, 9, 1]
    >>> sorted(sampler.process(10, epoch=1).tolist()) == list(range(10))
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from datarax.core.config import StructuralConfig
from datarax.core.sampler import SamplerModule
from datarax.core.validation import int_in_range
from datarax.samplers.feistel import feistel_permute, feistel_permute_np


@dataclasses.dataclass(frozen=True)
class SequentialSamplerConfig(StructuralConfig):
    """Configuration of ``SequentialSampler`` (no options)."""


class SequentialSampler(SamplerModule):
    """Serves records in storage order, every epoch."""

    def indices_at(self, positions: Any, num_records: int, epoch: Any) -> Any:
        """Returns ``positions`` unchanged (as int32)."""
        return jnp.asarray(positions, dtype=jnp.int32)

    def indices_at_np(self, positions: np.ndarray, num_records: int, epoch: int) -> np.ndarray:
        """Returns ``positions`` unchanged (as int64)."""
        return np.asarray(positions, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class ShuffleSamplerConfig(StructuralConfig):
    """Configuration of ``ShuffleSampler``.

    Attributes:
        seed: Shuffle seed; every ``(seed, epoch)`` gives its own permutation.
            A non-negative int below ``2**32``.
    """

    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        seed = int_in_range(type(self).__name__, "seed", self.seed, low=0, high=2**32, what="an int in [0, 2**32)")
        object.__setattr__(self, "seed", seed)


class ShuffleSampler(SamplerModule):
    """A fresh Feistel permutation of the records every epoch."""

    def __init__(self, config: ShuffleSamplerConfig, *, rngs=None, name: str | None = None):
        if not isinstance(config, ShuffleSamplerConfig):
            raise TypeError(f"ShuffleSampler: config must be a ShuffleSamplerConfig, got {type(config).__name__}")
        super().__init__(config, rngs=rngs, name=name)

    @property
    def seed(self) -> int:
        return self.config.seed

    def indices_at(self, positions: Any, num_records: int, epoch: Any) -> Any:
        """Feistel permutation of ``positions`` (jax.numpy; traceable)."""
        return feistel_permute(jnp.asarray(positions), num_records, np.uint32(self.seed), epoch)

    def indices_at_np(self, positions: np.ndarray, num_records: int, epoch: int) -> np.ndarray:
        """Feistel permutation of ``positions`` (numpy; identical to ``indices_at``)."""
        return feistel_permute_np(np.asarray(positions), num_records, self.seed, epoch)


__all__ = [
    "SequentialSampler",
    "SequentialSamplerConfig",
    "ShuffleSampler",
    "ShuffleSamplerConfig",
]

"""Image operators, written per element and tuned for XLA.

``RandomFlip`` mirrors chosen arrays of a record along one axis with
probability ``p``, deciding per record from the record's key (so whether
record ``r`` of epoch ``e`` is flipped depends only on the seed, the node, the
epoch and ``r``). It is written as the pipeline wants every operator: for one
element, with a scalar coin and ``jnp.where`` between the array and its
mirror. Under ``vmap`` that becomes a per-row select that XLA:CPU fuses with
the gather and the dtype conversion around it; measured against the
alternatives a person might write (a batched ``where`` over a flipped copy, a
``take_along_axis`` with a per-row column index, either with the coins behind
an ``optimization_barrier``), it was the fastest (``benchmarks/engine.py``
keeps the strongest of them as the reference loop).

Counting: a flip is the operator's random outcome, not a skip, so every valid
record counts as applied (the pipeline then counts on the host, for free).

Example:
    >>> import jax, jax.numpy as jnp
    >>> flip = RandomFlip(RandomFlipConfig(probability=1.0, stochastic=False))
    >>> image = jnp.arange(6).reshape(1, 3, 2)  # H=1, W=3, C=2
    >>> flip.apply({"image": image})["image"][0, :, 0].tolist()
    [4, 2, 0]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from datarax.core import threefry
from datarax.core.config import OperatorConfig
from datarax.core.operator import OperatorModule
from datarax.core.validation import is_int
from datarax.operators._checks import label, record_key, require_config, require_element


@dataclasses.dataclass(frozen=True)
class RandomFlipConfig(OperatorConfig):
    """Configuration of ``RandomFlip``.

    Attributes:
        fields: The element keys whose arrays are flipped (all with the same coin).
        axis: The axis of each array to mirror, counted in one element (no batch
            axis): ``-2`` is the width of an ``(H, W, C)`` image (a horizontal
            flip), ``-3`` its height.
        probability: Chance in ``[0, 1]`` that a record is flipped.
        stochastic: True unless ``probability`` is 0 or 1.
        stream_name: The stream the per-record coin is named after (``"flip"``
            when stochastic and not given; None when deterministic).

    Raises:
        ValueError: If a field is not a non-empty string, ``axis`` is not an
            int, ``probability`` is not in ``[0, 1]``, or a probability strictly
            between 0 and 1 is configured deterministic.

    Example:
        >>> RandomFlipConfig(fields=["image", "mask"]).fields
        ('image', 'mask')
    """

    fields: tuple[str, ...] = ("image",)
    axis: int = -2
    probability: float = 0.5
    stochastic: bool = True
    stream_name: str | None = None

    def __post_init__(self) -> None:
        if self.stochastic is True and self.stream_name is None:
            object.__setattr__(self, "stream_name", "flip")
        super().__post_init__()
        name = type(self).__name__
        fields = self.fields
        if isinstance(fields, str) or not isinstance(fields, Sequence) or not fields:
            raise ValueError(f"{name}: fields must be a non-empty sequence of element keys, got {fields!r}")
        if not all(isinstance(f, str) and f for f in fields) or len(set(fields)) != len(fields):
            raise ValueError(f"{name}: fields must be unique non-empty strings, got {fields!r}")
        object.__setattr__(self, "fields", tuple(fields))
        if not is_int(self.axis):
            raise ValueError(f"{name}: axis must be an int, got {self.axis!r}")
        object.__setattr__(self, "axis", int(self.axis))
        p = self.probability
        if isinstance(p, bool) or not isinstance(p, Real) or not math.isfinite(p) or not 0 <= p <= 1:
            raise ValueError(f"{name}: probability must be a number in [0, 1], got {p!r}")
        object.__setattr__(self, "probability", float(p))
        if not self.stochastic and p not in (0, 1):
            raise ValueError(
                f"{name}: probability={p!r} needs a coin per record, so set stochastic=True and a stream_name"
            )


class RandomFlip(OperatorModule):
    """Mirrors ``config.fields`` along ``config.axis`` with probability ``config.probability``.

    Args:
        config: A ``RandomFlipConfig``.
        rngs: Optional own random number generators (an override of the pipeline seed).
        name: Optional operator name (its key name in a linear pipeline).

    Raises:
        TypeError: If ``config`` is not a ``RandomFlipConfig``.

    Example:
        >>> import numpy as np
        >>> from flax import nnx
        >>> from datarax import Pipeline
        >>> from datarax.sources import MemorySource, MemorySourceConfig
        >>> images = np.arange(8 * 2 * 3 * 1).reshape(8, 2, 3, 1)
        >>> source = MemorySource(MemorySourceConfig(), data={"image": images})
        >>> pipeline = Pipeline(source=source, stages=[RandomFlip(RandomFlipConfig())],
        ...                     batch_size=8, rngs=nnx.Rngs(0))
        >>> batch = np.asarray(next(iter(pipeline))["image"])
        >>> flipped = (batch == images[:, :, ::-1]).all(axis=(1, 2, 3))
        >>> bool(((batch == images).all(axis=(1, 2, 3)) | flipped).all())  # each image kept or mirrored
        True
    """

    def __init__(self, config: RandomFlipConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, RandomFlipConfig)
        super().__init__(config, rngs=rngs, name=name)

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Flips the configured arrays of one element, or returns them unchanged.

        Raises:
            ValueError: If a field is missing or ``axis`` is out of range for it
                (while tracing, so at pipeline construction).
        """
        key = record_key(self, key)
        require_element(self, element)
        p = self.config.probability
        # The coin goes behind an optimization barrier so that a backend which keeps
        # barriers computes its hash once per record rather than inside the select, for
        # every pixel. XLA:CPU drops barriers before fusion and fuses the hash into the
        # pixel loop; measured there, a separate coin fusion was no faster
        # (docs/benchmarks.md, issue 7 sixth pass).
        flip = (p == 1) if key is None else jax.lax.optimization_barrier(threefry.bernoulli(key, p))
        out = dict(element)
        for field in self.config.fields:
            if field not in element:
                raise ValueError(f"{label(self)}: field {field!r} is not in the element (keys: {sorted(element)})")
            x = jnp.asarray(element[field])
            if not -x.ndim <= self.config.axis < x.ndim:
                raise ValueError(
                    f"{label(self)}: axis {self.config.axis} is out of range for field {field!r} of shape {x.shape}"
                )
            out[field] = jnp.where(flip, jnp.flip(x, self.config.axis), x)
        return out


__all__ = ["RandomFlip", "RandomFlipConfig"]

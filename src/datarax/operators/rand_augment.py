"""RandAugment: apply ``num_ops`` operators chosen at random per record, each at a fixed magnitude.

``RandAugment`` holds a list of child operators (any ``OperatorModule``: the photometric operators
of ``image_color``, ``RandomFlip``, geometry operators, your own). For record key ``k`` it runs
``num_ops`` steps; step ``j`` picks child ``i = floor(n * uniform(fold_in(k, 2 j)))`` uniformly
with replacement (as torchvision's ``RandAugment``) and runs it on the previous step's output with
the key ``fold_in(k, 2 j + 1)``, through ``jax.lax.switch``, so only the chosen child's output is
used. The choices depend only on (seed, node, epoch, record), never on the batch.

Since each step's output is the next step's input, every child must keep the element spec
exactly (same keys, shapes and dtypes); this is checked while tracing, so ``output_spec`` fails at
pipeline construction naming the child.

``rand_augment_operators(magnitude, num_levels=10)`` builds the standard photometric list at one
magnitude ``M`` out of ``num_levels``: identity, horizontal flip, brightness, contrast, colour
(saturation), hue and blur, each at the strength ``M / num_levels`` of its maximum, with a random
sign (``draw="sign"``) for the signed ones.

Speed. ``jax.vmap`` turns a ``switch`` on a per-row index into a select over every branch's
output, so a vmapped RandAugment computes all candidates for every row and step, and XLA:CPU
fuses (recomputes) earlier steps into later ones: measured on CPU (128 images of 32 x 32 x 3
uint8, the 7 standard operators), 25 / 200 / 740 ms per batch for N = 1 / 2 / 3. ``apply_batch``
(what the pipeline calls) therefore maps the rows with ``jax.lax.map``: each row's ``switch`` is a
real conditional running only the chosen operator, 3 / 6 / 10 ms for the same batches (128 x 128
pixels: 53 / 98 / 147 ms against 0.44 / 3.1 / 10.7 s). Nested inside another combining operator,
RandAugment is vmapped by its parent and pays the first cost.

Counting. ``RandAugment`` applies to every valid record; each child counts the records it was
chosen for at least once (a child chosen twice for one record counts it once).

Differentiability: as differentiable as the chosen children (w.r.t. the image and any learnable
magnitudes); the choice itself is not.

Example:
    >>> import jax, jax.numpy as jnp
    >>> ops = rand_augment_operators(magnitude=5)
    >>> augment = RandAugment(RandAugmentConfig(num_ops=2), ops)
    >>> image = jnp.full((8, 8, 3), 128, dtype=jnp.uint8)
    >>> augment.apply({"image": image}, jax.random.key(0))["image"].dtype
    dtype('uint8')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core import threefry
from datarax.core.batch_form import VALID_MASK
from datarax.core.config import OperatorConfig
from datarax.core.operator import OperatorModule
from datarax.core.validation import is_int, positive_int
from datarax.operators._checks import (
    check_same_specs,
    child_operators,
    chosen_child_flags,
    counted_subtree,
    label,
    own_flags,
    record_key,
    require_config,
    require_element,
    unreached_flags,
)
from datarax.operators.element import ElementOperator, ElementOperatorConfig
from datarax.operators.image import RandomFlip, RandomFlipConfig
from datarax.operators.image_color import (
    GaussianBlur,
    GaussianBlurConfig,
    RandomBrightness,
    RandomBrightnessConfig,
    RandomContrast,
    RandomContrastConfig,
    RandomHue,
    RandomHueConfig,
    RandomSaturation,
    RandomSaturationConfig,
)


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig(OperatorConfig):
    """Configuration of ``RandAugment``; it must be stochastic.

    Attributes:
        num_ops: How many operators are applied to each record, one after another (``N``).
        stochastic: Must be True.
        stream_name: Default ``"rand_augment"``.

    Raises:
        ValueError: If ``num_ops`` is not a positive int or the config is deterministic.

    Example:
        >>> RandAugmentConfig(num_ops=3).stream_name
        'rand_augment'
    """

    num_ops: int = 2
    stochastic: bool = True
    stream_name: str | None = None

    def __post_init__(self) -> None:
        if self.stochastic is True and self.stream_name is None:
            object.__setattr__(self, "stream_name", "rand_augment")
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "num_ops", positive_int(name, "num_ops", self.num_ops))
        if not self.stochastic:
            raise ValueError(
                f"{name}: RandAugment draws its operators per record, so it needs stochastic=True, "
                f"got stochastic={self.stochastic!r}"
            )


class RandAugment(OperatorModule):
    """Applies ``config.num_ops`` of ``operators``, each chosen uniformly per record.

    Args:
        config: A ``RandAugmentConfig``.
        operators: The candidate operators (at least one), held in an ``nnx.List`` (their
            parameters, e.g. learnable magnitudes, belong to this module). Each must keep the
            element spec. Inside ``RandAugment`` they draw from its record key, not their own rngs.
        rngs: Optional own random number generators (an override of the pipeline seed).
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` has the wrong type or ``operators`` is not a sequence of
            ``OperatorModule``.
        ValueError: If ``operators`` is empty.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from datarax.operators.element import ElementOperator, ElementOperatorConfig
        >>> add = [ElementOperator(ElementOperatorConfig(), lambda e, k, d=d: {"x": e["x"] + d}) for d in (1, 10)]
        >>> augment = RandAugment(RandAugmentConfig(num_ops=2), add)
        >>> out = augment.apply_batch({"x": jnp.zeros(1000, jnp.int32)}, jax.random.split(jax.random.key(0), 1000))
        >>> sorted(set(out["x"].tolist()))  # two steps: 1+1, 1+10 (either order), 10+10
        [2, 11, 20]
    """

    def __init__(
        self,
        config: RandAugmentConfig,
        operators: Sequence[OperatorModule],
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        require_config(self, config, RandAugmentConfig)
        children = child_operators(self, operators, stochastic=config.stochastic)
        super().__init__(config, rngs=rngs, name=name)
        self.operators = nnx.List(children)

    def counted_operators(self) -> list[OperatorModule]:
        """This operator, then each child's counted operators in order."""
        return counted_subtree(self, self.operators)

    def apply_batch(
        self, batch: Mapping[str, Any], keys: jax.Array | None = None, *, count: bool = True
    ) -> dict[str, Any]:
        """``apply`` on every row, one row at a time (``jax.lax.map``), so each row runs only its chosen operators.

        Same results and counting as ``OperatorModule.apply_batch`` (which maps ``apply`` with
        ``jax.vmap``); see the module docstring for why rows are not vmapped here.

        Args:
            batch: Dict of arrays with a leading batch axis; ``valid_mask`` passes through.
            keys: One key per row.
            count: False leaves the counters alone.

        Returns:
            The transformed batch dict.

        Raises:
            ValueError: If ``keys`` is None.
        """
        if keys is None:
            raise ValueError(f"{label(self)} is stochastic: apply_batch needs per-row keys")
        data = {k: v for k, v in batch.items() if k != VALID_MASK}
        out, flags = jax.lax.map(lambda row: self.apply_counted(*row), (data, keys))
        if count:
            self._count(flags, batch.get(VALID_MASK))
        if VALID_MASK in batch:
            out = {**out, VALID_MASK: batch[VALID_MASK]}
        return out

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Runs ``num_ops`` randomly chosen children on one element.

        Args:
            element: Dict of arrays for one record.
            key: The record's key.

        Returns:
            The element after the chosen children.

        Raises:
            ValueError: If a child changes the element spec, or ``key`` is None.
        """
        return self.apply_counted(element, key)[0]

    def apply_counted(self, element: dict[str, Any], key: jax.Array | None = None) -> tuple[dict[str, Any], Any]:
        """``apply`` plus counting flags: every record counts here; a child counts the records it ran on."""
        key = record_key(self, key)
        require_element(self, element)
        element = dict(element)
        children = list(self.operators)

        def branch(i: int):
            def run(e, k):
                out, flags = children[i].apply_counted(e, k if children[i].stochastic else None)
                return dict(out), chosen_child_flags(children, i, flags)

            return run

        branches = [branch(i) for i in range(len(children))]
        specs = [("the input element", element)]
        specs += [
            (f"operators[{i}] ({label(child)})", jax.eval_shape(fn, element, key)[0])
            for i, (child, fn) in enumerate(zip(children, branches, strict=True))
        ]
        check_same_specs(self, specs, "operators (and the input, since each step feeds the next)")
        n = len(children)
        flags = unreached_flags(children)
        for step in range(self.config.num_ops):
            u = jax.lax.optimization_barrier(threefry.uniform(threefry.fold_in(key, 2 * step)))
            index = jnp.minimum(jnp.floor(u * np.float32(n)).astype(jnp.int32), n - 1)
            element, step_flags = jax.lax.switch(index, branches, element, threefry.fold_in(key, 2 * step + 1))
            # Vmapped, the switch is a select over all branches; the barrier keeps XLA from fusing
            # a step into the next one's consumers (it halved the vmapped cost at N = 2).
            element = jax.lax.optimization_barrier(element)
            flags = flags | step_flags
        return element, jnp.concatenate([own_flags(True), flags])


def _identity(element: dict[str, Any], key: jax.Array | None) -> dict[str, Any]:
    return dict(element)


def rand_augment_operators(
    magnitude: float, num_levels: int = 10, *, fields: Sequence[str] = ("image",)
) -> list[OperatorModule]:
    """The standard photometric RandAugment list at magnitude ``magnitude`` out of ``num_levels``.

    With ``f = magnitude / num_levels`` in ``[0, 1]``: identity; a horizontal flip; brightness,
    contrast and colour (saturation) factors ``1 +/- 0.9 f`` (torchvision's RandAugment range);
    a hue shift of ``+/- 0.1 f`` turns (signs drawn per record, ``draw="sign"``); and a Gaussian
    blur (kernel 5, sigma ``0.1 + 1.9 f``; needs images of at least 3 x 3 pixels). Geometric
    operators (rotate, shear, translate) are not included here: add them to the returned list.

    Args:
        magnitude: ``M``, a number in ``[0, num_levels]``.
        num_levels: The number of magnitude levels (a positive int).
        fields: The element keys of the images to augment.

    Returns:
        A list of ``OperatorModule`` for ``RandAugment``, all keeping the element spec.

    Raises:
        ValueError: If ``num_levels`` is not a positive int or ``magnitude`` is out of range.

    Example:
        >>> [type(op).__name__ for op in rand_augment_operators(9)][:3]
        ['ElementOperator', 'RandomFlip', 'RandomBrightness']
    """
    num_levels = positive_int("rand_augment_operators", "num_levels", num_levels)
    m = magnitude
    if (
        isinstance(m, bool | np.bool_)
        or not (isinstance(m, Real) or is_int(m))
        or not math.isfinite(m)
        or not 0 <= m <= num_levels
    ):
        raise ValueError(f"rand_augment_operators: magnitude must be a number in [0, {num_levels}], got {magnitude!r}")
    f = float(m) / num_levels
    fields = tuple(fields) if not isinstance(fields, str) else fields
    signed = {"fields": fields, "draw": "sign"}
    return [
        ElementOperator(ElementOperatorConfig(), _identity, name="identity"),
        RandomFlip(RandomFlipConfig(fields=fields, probability=1.0, stochastic=False)),
        RandomBrightness(RandomBrightnessConfig(magnitude=0.9 * f, **signed)),
        RandomContrast(RandomContrastConfig(magnitude=0.9 * f, **signed)),
        RandomSaturation(RandomSaturationConfig(magnitude=0.9 * f, **signed)),
        RandomHue(RandomHueConfig(magnitude=0.1 * f, **signed)),
        GaussianBlur(GaussianBlurConfig(fields=fields, kernel_size=5, sigma=0.1 + 1.9 * f, stochastic=False)),
    ]


__all__ = ["RandAugment", "RandAugmentConfig", "rand_augment_operators"]

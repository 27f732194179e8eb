"""ProbabilisticOperator: apply a child operator to each record with probability ``p``.

The decision is part of the record's randomness: with the record key ``k``, the operator draws
``u = uniform(fold_in(k, 0))`` and runs the child with ``fold_in(k, 1)`` when ``u < p``, otherwise
it passes the element through. So whether record ``r`` of epoch ``e`` is transformed depends only
on (stream seed, epoch, record), never on the batch it travels in; a new epoch draws anew.

Because the two outcomes are merged by ``jax.lax.cond`` (a select under ``vmap``), the child must
keep the element spec exactly (same keys, shapes, dtypes). This is checked while tracing, so
``output_spec`` raises ValueError at pipeline construction.

Counting. ``apply`` stays pure; ``apply_batch`` (what the pipeline runs) adds the valid records
drawn below ``p`` to ``_applied_count`` and the others to ``_skipped_count``, and the child counts
only the records it was applied to.

``p = 0`` and ``p = 1`` need no draw, so the operator may then be deterministic
(``stochastic=False``), as long as the child is deterministic too.
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Real
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from datarax.core import threefry
from datarax.core.config import OperatorConfig
from datarax.core.operator import OperatorModule
from datarax.core.spec import spec_mismatches, spec_of
from datarax.operators._checks import (
    check_child,
    counted_subtree,
    label,
    own_flags,
    record_key,
    require_config,
    require_element,
    unreached_flags,
)


@dataclasses.dataclass(frozen=True)
class ProbabilisticOperatorConfig(OperatorConfig):
    """Configuration of a ``ProbabilisticOperator``.

    Attributes:
        probability: Chance in ``[0, 1]`` that a record is transformed.

    Raises:
        ValueError: If ``probability`` is not a number in ``[0, 1]``, or it is strictly between 0
            and 1 and ``stochastic`` is False.

    Example:
        >>> config = ProbabilisticOperatorConfig(probability=1, stochastic=True, stream_name="aug")
        >>> config.probability
        1.0
    """

    probability: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        p = self.probability
        is_number = isinstance(p, Real) and not isinstance(p, bool)
        if not is_number or not math.isfinite(p) or not 0 <= p <= 1:
            raise ValueError(f"{name}: probability must be a number in [0, 1], got {p!r}")
        object.__setattr__(self, "probability", float(p))
        if not self.stochastic and p not in (0, 1):
            raise ValueError(
                f"{name}: probability={p!r} needs a random draw per record, so set "
                "stochastic=True and a stream_name (only probability 0 or 1 may be deterministic)"
            )


class ProbabilisticOperator(OperatorModule):
    """Applies ``operator`` to a record with probability ``config.probability``.

    Args:
        config: A ``ProbabilisticOperatorConfig``.
        operator: The child operator; it must keep the element spec. Inside this operator it
            draws from ``fold_in(record_key, 1)``, not from its own ``rngs``.
        rngs: Random number generators; required when ``config.stochastic``.
        name: Optional operator name (used in error messages).

    Raises:
        TypeError: If ``config`` or ``operator`` has the wrong type.
        ValueError: If ``operator`` is stochastic but this operator is not.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from datarax.operators.element import ElementOperator, ElementOperatorConfig
        >>> flip = ElementOperator(ElementOperatorConfig(), lambda e, k: {"x": e["x"][::-1]})
        >>> config = ProbabilisticOperatorConfig(probability=1.0, stochastic=True,
        ...                                      stream_name="aug")
        >>> op = ProbabilisticOperator(config, flip, rngs=nnx.Rngs(aug=0))
        >>> op({"x": jnp.array([[1, 2]])}, op.record_keys(0, jnp.arange(1)))["x"].tolist()
        [[2, 1]]
    """

    def __init__(
        self,
        config: ProbabilisticOperatorConfig,
        operator: OperatorModule,
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        require_config(self, config, ProbabilisticOperatorConfig)
        check_child(self, operator, "operator", stochastic=config.stochastic)
        super().__init__(config, rngs=rngs, name=name)
        self.operator = operator

    def counted_operators(self) -> list[OperatorModule]:
        """This operator, then its child's counted operators."""
        return counted_subtree(self, [self.operator])

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Transforms one element with probability ``p``, else returns it unchanged.

        Args:
            element: Dict of arrays for one record.
            key: The record's key (required when stochastic, ignored otherwise).

        Returns:
            The child's output or the unchanged element.

        Raises:
            ValueError: If the child changes the element spec, or the operator is stochastic and
                ``key`` is None.
        """
        return self.apply_counted(element, key)[0]

    def apply_counted(self, element: dict[str, Any], key: jax.Array | None = None) -> tuple[dict[str, Any], Any]:
        """``apply`` plus counting flags: applied where the draw fell below ``p``, skipped elsewhere."""
        key = record_key(self, key)
        require_element(self, element)
        element = dict(element)
        child = self.operator
        child_key = jax.random.fold_in(key, 1) if child.stochastic else None

        def transform(e):
            return child.apply_counted(e, child_key)

        def skip(e):
            return dict(e), unreached_flags([child])

        problems = spec_mismatches(jax.eval_shape(transform, element)[0], spec_of(element))
        if problems:
            raise ValueError(
                f"{label(self)}: its operator ({label(child)}) must keep the element spec, "
                "since records it skips pass through unchanged:\n  " + "\n  ".join(problems)
            )
        p = self.config.probability
        if key is None:  # deterministic: p is 0 or 1
            apply_it = p == 1
            out, flags = transform(element) if apply_it else skip(element)
        else:
            apply_it = threefry.uniform(threefry.fold_in(key, 0)) < p
            out, flags = jax.lax.cond(apply_it, transform, skip, element)
        return out, jnp.concatenate([own_flags(apply_it), flags])


__all__ = ["ProbabilisticOperator", "ProbabilisticOperatorConfig"]

"""SelectorOperator: run one randomly chosen child operator per record.

With the record key ``k``, the operator picks child ``i`` with probability ``weights[i]``
(normalised to sum 1; None: uniform) by ``jax.random.categorical(fold_in(k, 0), log(weights))``
and runs it with ``fold_in(k, 1)`` through ``jax.lax.switch``. The choice therefore depends only
on (stream seed, epoch, record), never on the batch, and a new epoch chooses anew.

``lax.switch`` needs every branch to return the same structure, so all children must produce the
same element spec; this is checked while tracing, hence by ``output_spec`` at pipeline
construction (ValueError naming the disagreeing children). The children may change the input's
spec, as long as they all change it the same way.

Counting. The selector applies to every valid record (``_applied_count``); each child counts
the records chosen for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from datarax.core.config import OperatorConfig
from datarax.core.operator import OperatorModule
from datarax.operators._checks import (
    check_same_specs,
    check_weight_count,
    child_operators,
    chosen_child_flags,
    counted_subtree,
    label,
    normalised_weights,
    own_flags,
    record_key,
    require_config,
    require_element,
)


@dataclasses.dataclass(frozen=True)
class SelectorOperatorConfig(OperatorConfig):
    """Configuration of a ``SelectorOperator``; it must be stochastic.

    Attributes:
        weights: Selection weights, one positive number per child (normalised to sum 1); None
            selects uniformly.

    Raises:
        ValueError: If ``stochastic`` is False, or ``weights`` is not a non-empty sequence of
            finite positive numbers.

    Example:
        >>> SelectorOperatorConfig(weights=[1, 1, 2], stochastic=True, stream_name="aug").weights
        (1.0, 1.0, 2.0)
    """

    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if not self.stochastic:
            raise ValueError(
                f"{name}: a selector draws a choice per record, so it needs stochastic=True and "
                f"a stream_name, got stochastic={self.stochastic!r}"
            )
        object.__setattr__(self, "weights", normalised_weights(name, self.weights))


class SelectorOperator(OperatorModule):
    """Applies one of ``operators``, chosen at random per record.

    Args:
        config: A ``SelectorOperatorConfig``.
        operators: The candidate children (at least one), held in an ``nnx.List``. Inside this
            operator they draw from ``fold_in(record_key, 1)``, not from their own ``rngs``.
        rngs: Random number generators holding ``config.stream_name`` (or ``default``).
        name: Optional operator name (used in error messages).

    Raises:
        TypeError: If ``config`` has the wrong type or ``operators`` is not a sequence of
            ``OperatorModule``.
        ValueError: If ``operators`` is empty, or ``config.weights`` does not have one entry per
            operator.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from datarax.operators.element import ElementOperator, ElementOperatorConfig
        >>> neg = ElementOperator(ElementOperatorConfig(), lambda e, k: {"x": -e["x"]})
        >>> same = ElementOperator(ElementOperatorConfig(), lambda e, k: dict(e))
        >>> config = SelectorOperatorConfig(weights=(1, 1), stochastic=True, stream_name="aug")
        >>> op = SelectorOperator(config, [neg, same], rngs=nnx.Rngs(aug=0))
        >>> out = op({"x": jnp.ones(1000)}, op.record_keys(0, jnp.arange(1000)))
        >>> bool(jnp.all(jnp.abs(out["x"]) == 1)), 400 < int(jnp.sum(out["x"] < 0)) < 600
        (True, True)
    """

    def __init__(
        self,
        config: SelectorOperatorConfig,
        operators: Sequence[OperatorModule],
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        require_config(self, config, SelectorOperatorConfig)
        children = child_operators(self, operators, stochastic=config.stochastic)
        weights = check_weight_count(self, config.weights, len(children))
        super().__init__(config, rngs=rngs, name=name)
        self.operators = nnx.List(children)
        self.weights = weights

    def counted_operators(self) -> list[OperatorModule]:
        """This operator, then each child's counted operators in order."""
        return counted_subtree(self, self.operators)

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Runs the child chosen for this record.

        Args:
            element: Dict of arrays for one record.
            key: The record's key.

        Returns:
            The chosen child's output.

        Raises:
            ValueError: If the children disagree on the output spec, or ``key`` is None.
        """
        return self.apply_counted(element, key)[0]

    def apply_counted(self, element: dict[str, Any], key: jax.Array | None = None) -> tuple[dict[str, Any], Any]:
        """``apply`` plus counting flags: the selector applies to every record, only the chosen child counts it."""
        key = record_key(self, key)
        require_element(self, element)
        element = dict(element)
        run_key = jax.random.fold_in(key, 1)
        children = list(self.operators)

        def branch(i: int):
            def run(e):
                out, flags = children[i].apply_counted(e, run_key if children[i].stochastic else None)
                return out, chosen_child_flags(children, i, flags)

            return run

        branches = [branch(i) for i in range(len(children))]
        specs = [
            (f"operators[{i}] ({label(child)})", jax.eval_shape(fn, element)[0])
            for i, (child, fn) in enumerate(zip(children, branches, strict=True))
        ]
        check_same_specs(self, specs, "operators")
        logits = jnp.log(jnp.asarray(self.weights, dtype=jnp.float32))
        index = jax.random.categorical(jax.random.fold_in(key, 0), logits)
        out, flags = jax.lax.switch(index, branches, element)
        return out, jnp.concatenate([own_flags(True), flags])


__all__ = ["SelectorOperator", "SelectorOperatorConfig"]

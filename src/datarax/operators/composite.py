"""CompositeOperator: several operators combined into one, by one of four strategies.

* ``"sequential"``: the children run as a chain, each on the previous one's output.
* ``"parallel"``: every child gets the same input; the outputs are merged by dict union in child
  order, so when two children produce the same key the later child's value wins. Keys of the
  input that no child returns are dropped. Children producing the same key must agree on its
  shape and dtype (checked while tracing, hence by ``output_spec``).
* ``"branch"``: ``conditions[i](element)`` (a scalar bool) selects child ``i``; the first true
  condition wins. With one condition per child, an element no condition selects passes through
  unchanged; with one condition fewer than children, the last child is the default. The choice is
  a ``jax.lax.switch`` on an index computed from the conditions, so every branch (the identity
  included) must produce the same element spec.
* ``"weighted"``: every child gets the same input and the output is the weighted sum of their
  outputs, leaf by leaf; all children must produce the same spec of floating leaves. Fixed weights
  are normalised to sum 1 (None: equal). With ``learnable_weights=True`` the operator holds
  ``weight_logits``, an ``nnx.Param`` initialised to the log of the normalised weights, and mixes
  with ``softmax(weight_logits)``: the mixture stays positive and normalised whatever the
  optimizer does, and gradients reach the logits.

Randomness. A composite is stochastic exactly when its config says so, and it must be if any child
is. Inside a composite, child ``i`` receives ``fold_in(record_key, i)``: its randomness derives
from the composite's record key, so children need no ``rngs`` of their own (any they have are not
used). Deterministic children get None.

Counting. A composite applies to every valid record it sees, except that a ``"branch"`` composite
with an identity default skips the records no condition selects; every child counts the records
that reached it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from datarax.core.config import OperatorConfig
from datarax.core.operator import OperatorModule
from datarax.core.spec import spec_mismatches, spec_of
from datarax.operators._checks import (
    check_same_specs,
    check_weight_count,
    child_key,
    child_operators,
    chosen_child_flags,
    counted_subtree,
    label,
    normalised_weights,
    own_flags,
    record_key,
    require_callable,
    require_config,
    require_element,
    unreached_flags,
)

STRATEGIES = ("sequential", "parallel", "branch", "weighted")


@dataclasses.dataclass(frozen=True)
class CompositeOperatorConfig(OperatorConfig):
    """Configuration of a ``CompositeOperator``.

    Attributes:
        strategy: One of ``"sequential"``, ``"parallel"``, ``"branch"``, ``"weighted"``.
        weights: For ``"weighted"`` only: one positive weight per child (normalised to sum 1);
            None means equal weights.
        learnable_weights: For ``"weighted"`` only: hold the weights as an ``nnx.Param``
            (softmax over logits) so gradients reach them.

    Raises:
        ValueError: If ``strategy`` is unknown, ``weights`` is not a non-empty sequence of finite
            positive numbers, ``learnable_weights`` is not a bool, or ``weights`` /
            ``learnable_weights`` are set with a strategy other than ``"weighted"``.

    Example:
        >>> CompositeOperatorConfig(strategy="weighted", weights=[1, 3]).weights
        (1.0, 3.0)
    """

    strategy: str = "sequential"
    weights: tuple[float, ...] | None = None
    learnable_weights: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if self.strategy not in STRATEGIES:
            raise ValueError(f"{name}: strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        object.__setattr__(self, "weights", normalised_weights(name, self.weights))
        if not isinstance(self.learnable_weights, bool):
            raise ValueError(f"{name}: learnable_weights must be a bool, got {self.learnable_weights!r}")
        if self.strategy != "weighted":
            if self.weights is not None:
                raise ValueError(
                    f"{name}: weights={self.weights!r} is only used by strategy='weighted', "
                    f"got strategy={self.strategy!r}"
                )
            if self.learnable_weights:
                raise ValueError(
                    f"{name}: learnable_weights=True is only used by strategy='weighted', "
                    f"got strategy={self.strategy!r}"
                )


class CompositeOperator(OperatorModule):
    """Combines child operators into one operator (see the module docstring for strategies).

    Args:
        config: A ``CompositeOperatorConfig``.
        operators: The children, in order (at least one). They are held in an ``nnx.List``, so
            their parameters and state belong to this module.
        conditions: For ``"branch"`` only: one callable ``element -> scalar bool`` per child, or
            one fewer (the last child is then the default).
        rngs: Random number generators; required when ``config.stochastic``.
        name: Optional operator name (used in error messages).

    Raises:
        TypeError: If ``config`` has the wrong type, ``operators`` is not a sequence of
            ``OperatorModule``, or a condition is not callable.
        ValueError: If ``operators`` is empty, a child is stochastic but the composite is not,
            ``conditions`` is missing, superfluous or of the wrong length, or ``config.weights``
            does not have one entry per child.

    Example:
        >>> import jax.numpy as jnp
        >>> from datarax.operators.element import ElementOperator, ElementOperatorConfig
        >>> add = ElementOperator(ElementOperatorConfig(), lambda e, k: {"x": e["x"] + 1})
        >>> double = ElementOperator(ElementOperatorConfig(), lambda e, k: {"x": e["x"] * 2})
        >>> chain = CompositeOperator(CompositeOperatorConfig(), [add, double])
        >>> chain({"x": jnp.array([1, 2])})["x"].tolist()
        [4, 6]
        >>> mix = CompositeOperator(CompositeOperatorConfig(strategy="weighted", weights=(1, 3)),
        ...                         [add, double])
        >>> mix({"x": jnp.array([1.0, 2.0])})["x"].tolist()
        [2.0, 3.75]
    """

    def __init__(
        self,
        config: CompositeOperatorConfig,
        operators: Sequence[OperatorModule],
        *,
        conditions: Sequence[Callable[[dict[str, Any]], Any]] | None = None,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        require_config(self, config, CompositeOperatorConfig)
        children = child_operators(self, operators, stochastic=config.stochastic)
        owner = type(self).__name__
        if config.strategy == "branch":
            if conditions is None or not isinstance(conditions, Sequence):
                raise ValueError(
                    f"{owner}: strategy='branch' needs conditions, one callable per operator "
                    f"(or one fewer for a default operator), got {conditions!r}"
                )
            if len(conditions) not in (len(children), len(children) - 1) or not conditions:
                raise ValueError(
                    f"{owner}: strategy='branch' with {len(children)} operators needs "
                    f"{len(children)} conditions (identity default) or {len(children) - 1} "
                    f"(last operator is the default), got {len(conditions)}"
                )
            for i, condition in enumerate(conditions):
                require_callable(owner, f"conditions[{i}]", condition)
            conditions = tuple(conditions)
        elif conditions is not None:
            raise ValueError(
                f"{owner}: conditions are only used by strategy='branch', got strategy={config.strategy!r}"
            )
        weights = None
        if config.strategy == "weighted":
            weights = check_weight_count(self, config.weights, len(children))
        super().__init__(config, rngs=rngs, name=name)
        self.operators = nnx.List(children)
        self.conditions = conditions
        self.weights = None if config.learnable_weights else weights
        if config.learnable_weights:
            self.weight_logits = nnx.Param(jnp.log(jnp.asarray(weights, dtype=jnp.float32)))

    def mixing_weights(self) -> jax.Array | None:
        """The weights a ``"weighted"`` composite mixes with (sum 1); None for other strategies."""
        if self.config.strategy != "weighted":
            return None
        if self.config.learnable_weights:
            return jax.nn.softmax(self.weight_logits[...])
        return jnp.asarray(self.weights, dtype=jnp.float32)

    def counted_operators(self) -> list[OperatorModule]:
        """This operator, then each child's counted operators in order."""
        return counted_subtree(self, self.operators)

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Runs the children on one element according to ``config.strategy``.

        Args:
            element: Dict of arrays for one record.
            key: The record's key (required when stochastic, ignored otherwise).

        Returns:
            The combined output element.

        Raises:
            ValueError: If children (parallel: on shared keys; branch/weighted: on their whole
                output) disagree on shapes or dtypes, a weighted output leaf is not floating, a
                condition does not return a scalar, or the operator is stochastic and ``key`` is
                None.
        """
        return self.apply_counted(element, key)[0]

    def apply_counted(self, element: dict[str, Any], key: jax.Array | None = None) -> tuple[dict[str, Any], Any]:
        """``apply`` plus counting flags (a branch composite skips records that take the identity default)."""
        key = record_key(self, key)
        require_element(self, element)
        element = dict(element)
        strategy = self.config.strategy
        if strategy == "branch":
            return self._branch(element, key)
        flags = []
        if strategy == "sequential":
            for i, child in enumerate(self.operators):
                element, child_flags = child.apply_counted(element, child_key(key, i, child))
                flags.append(child_flags)
            out = element
        else:
            outputs = []
            for i, child in enumerate(self.operators):
                child_out, child_flags = child.apply_counted(element, child_key(key, i, child))
                outputs.append((i, child_out))
                flags.append(child_flags)
            out = self._merge(outputs) if strategy == "parallel" else self._mix(outputs)
        return out, jnp.concatenate([own_flags(True), *flags])

    def _child_name(self, i: int) -> str:
        return f"operators[{i}] ({label(self.operators[i])})"

    def _merge(self, outputs: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        producer: dict[str, int] = {}
        for i, out in outputs:
            for k, value in out.items():
                if k in merged:
                    problems = spec_mismatches(value, spec_of(merged[k]))
                    if problems:
                        raise ValueError(
                            f"{label(self)}: parallel children disagree on key {k!r}: "
                            f"{self._child_name(i)} differs from {self._child_name(producer[k])}:"
                            "\n  " + "\n  ".join(problems)
                        )
                merged[k] = value
                producer[k] = i
        return merged

    def _mix(self, outputs: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        check_same_specs(self, [(self._child_name(i), out) for i, out in outputs], "operators")
        for path, leaf in jax.tree_util.tree_flatten_with_path(outputs[0][1])[0]:
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ValueError(
                    f"{label(self)}: strategy='weighted' needs floating outputs, but leaf "
                    f"{jax.tree_util.keystr(path)} has dtype {leaf.dtype}"
                )
        weights = self.mixing_weights()

        def weighted_sum(*leaves):
            return sum(weights[i].astype(leaf.dtype) * leaf for i, leaf in enumerate(leaves))

        return jax.tree.map(weighted_sum, *(out for _, out in outputs))

    def _branch(self, element: dict[str, Any], key: jax.Array | None) -> tuple[dict[str, Any], Any]:
        children = list(self.operators)

        def child_branch(i: int):
            def run(e):
                out, flags = children[i].apply_counted(e, child_key(key, i, children[i]))
                return out, jnp.concatenate([own_flags(True), chosen_child_flags(children, i, flags)])

            return run

        def identity(e):
            return dict(e), jnp.concatenate([own_flags(False), unreached_flags(children)])

        branches = [child_branch(i) for i in range(len(children))]
        names = [self._child_name(i) for i in range(len(children))]
        if len(self.conditions) == len(children):
            branches.append(identity)
            names.append("the identity default")
        flags = []
        for i, condition in enumerate(self.conditions):
            flag = jnp.asarray(condition(element))
            if flag.shape != ():
                raise ValueError(f"{label(self)}: conditions[{i}] must return a scalar bool, got shape {flag.shape}")
            flags.append(flag.astype(bool))
        flags = jnp.stack(flags)
        default = len(self.conditions)
        index = jnp.where(jnp.any(flags), jnp.argmax(flags), default)
        specs = [(f"branch {b} ({names[b]})", jax.eval_shape(fn, element)[0]) for b, fn in enumerate(branches)]
        check_same_specs(self, specs, "branches")
        return jax.lax.switch(index, branches, element)


__all__ = ["STRATEGIES", "CompositeOperator", "CompositeOperatorConfig"]

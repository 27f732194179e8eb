"""MapOperator: one function applied to every array (leaf) of chosen element keys.

Where ``ElementOperator`` sees the whole record, ``MapOperator`` sees one leaf at a time:
``fn(leaf)`` when deterministic, ``fn(leaf, key)`` when stochastic. ``subtree`` names the
top-level keys whose leaves are transformed (None: all of them); every other key passes through.

Randomness. Leaves are numbered in the element's flattening order (``jax.tree.leaves`` of the
whole element: dict keys sorted, nested containers depth first), and leaf ``i`` receives
``fold_in(record_key, i)``. The numbering covers every leaf, transformed or not, so the key a leaf
sees does not change when ``subtree`` selects more or fewer keys; two leaves of one record never
share a key.

A ``subtree`` key missing from the element raises ValueError while ``apply`` is traced, i.e. when
the pipeline derives ``output_spec`` at construction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from datarax.core.config import OperatorConfig
from datarax.core.operator import OperatorModule
from datarax.operators._checks import (
    label,
    record_key,
    require_callable,
    require_config,
    require_element,
)


@dataclasses.dataclass(frozen=True)
class MapOperatorConfig(OperatorConfig):
    """Configuration of a ``MapOperator``.

    Attributes:
        subtree: The top-level element keys whose leaves ``fn`` transforms, as a tuple of unique
            non-empty strings (a list is accepted and stored as a tuple); None transforms every
            leaf.

    Raises:
        ValueError: If ``subtree`` is not None or a non-empty sequence of unique non-empty strings.

    Example:
        >>> MapOperatorConfig(subtree=["image"]).subtree
        ('image',)
    """

    subtree: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        subtree = self.subtree
        if subtree is None:
            return
        if isinstance(subtree, str | bytes) or not isinstance(subtree, Sequence) or not subtree:
            raise ValueError(f"{name}: subtree must be None or a non-empty tuple of key names, got {subtree!r}")
        if not all(isinstance(k, str) and k for k in subtree):
            raise ValueError(f"{name}: subtree entries must be non-empty strings, got {subtree!r}")
        if len(set(subtree)) != len(subtree):
            raise ValueError(f"{name}: subtree entries must be unique, got {subtree!r}")
        object.__setattr__(self, "subtree", tuple(subtree))


class MapOperator(OperatorModule):
    """Applies ``fn`` to every leaf of the selected keys of each record.

    Args:
        config: A ``MapOperatorConfig``.
        fn: ``fn(leaf) -> leaf`` when deterministic, ``fn(leaf, key) -> leaf`` when stochastic.
            It may change a leaf's shape or dtype. An ``nnx.Module`` is kept as a submodule.
        rngs: Random number generators; required when ``config.stochastic``.
        name: Optional operator name (used in error messages).

    Raises:
        TypeError: If ``config`` is not a ``MapOperatorConfig`` or ``fn`` is not callable.
        ValueError: If the operator is stochastic and ``rngs`` lacks its stream.

    Example:
        >>> import jax.numpy as jnp
        >>> op = MapOperator(MapOperatorConfig(subtree=("x",)), lambda leaf: leaf * 10)
        >>> out = op({"x": jnp.array([1, 2]), "y": jnp.array([1, 2])})
        >>> out["x"].tolist(), out["y"].tolist()
        ([10, 20], [1, 2])
    """

    def __init__(
        self,
        config: MapOperatorConfig,
        fn: Callable[..., Any],
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        require_config(self, config, MapOperatorConfig)
        require_callable(type(self).__name__, "fn", fn)
        super().__init__(config, rngs=rngs, name=name)
        self.fn = fn

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Transforms the selected leaves of one element.

        Args:
            element: Dict of arrays for one record.
            key: The record's key (required when stochastic, ignored otherwise).

        Returns:
            The element with the selected leaves replaced by ``fn``'s results.

        Raises:
            ValueError: If a ``subtree`` key is missing from the element, or the operator is
                stochastic and ``key`` is None.
        """
        key = record_key(self, key)
        require_element(self, element)
        element = dict(element)
        subtree = self.config.subtree
        if subtree is not None:
            missing = [k for k in subtree if k not in element]
            if missing:
                raise ValueError(
                    f"{label(self)}: subtree key(s) {missing} are not in the element (keys: {sorted(element)})"
                )
        selected = set(element) if subtree is None else set(subtree)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(element)
        out = []
        for i, (path, leaf) in enumerate(leaves):
            if path[0].key not in selected:
                out.append(leaf)
            elif key is None:
                out.append(self.fn(leaf))
            else:
                out.append(self.fn(leaf, jax.random.fold_in(key, i)))
        return jax.tree_util.tree_unflatten(treedef, out)


__all__ = ["MapOperator", "MapOperatorConfig"]

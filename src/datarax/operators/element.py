"""ElementOperator: a whole-element transform from a user function.

The quickest way to turn per-record code into a datarax operator: give a function
``fn(element, key) -> element`` and the operator inherits batching (``vmap``), spec inference and
the seed contract from ``OperatorModule``. ``key`` is the record's key for a stochastic operator
and None for a deterministic one, so ``fn`` never touches a stateful generator.

``fn`` may be an ``nnx.Module`` with a ``__call__(element, key)``: it is then stored as a
submodule, its parameters are part of the operator's state, and gradients taken with respect to
the operator reach them. A plain function (or a closure) is a static attribute; arrays it closes
over are constants of the traced program, not state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import nnx

from datarax.core.config import OperatorConfig
from datarax.core.operator import OperatorModule
from datarax.operators._checks import label, record_key, require_callable, require_config


@dataclasses.dataclass(frozen=True)
class ElementOperatorConfig(OperatorConfig):
    """Configuration of an ``ElementOperator`` (only the ``OperatorConfig`` fields).

    Example:
        >>> ElementOperatorConfig(stochastic=True, stream_name="augment").stochastic
        True
    """


class ElementOperator(OperatorModule):
    """Applies ``fn(element, key) -> element`` to every record.

    Args:
        config: An ``ElementOperatorConfig``.
        fn: Callable taking one element (dict of arrays, no batch axis) and the record's key
            (None when deterministic) and returning the new element dict. An ``nnx.Module``
            is kept as a submodule, so its parameters receive gradients.
        rngs: Random number generators; required when ``config.stochastic``.
        name: Optional operator name (used in error messages).

    Raises:
        TypeError: If ``config`` is not an ``ElementOperatorConfig`` or ``fn`` is not callable.
        ValueError: If the operator is stochastic and ``rngs`` lacks its stream.

    Example:
        >>> import jax.numpy as jnp
        >>> op = ElementOperator(ElementOperatorConfig(), lambda e, key: {"x": e["x"] + 1})
        >>> op({"x": jnp.array([1, 2]), "valid_mask": jnp.array([True, False])})["x"].tolist()
        [2, 3]
    """

    def __init__(
        self,
        config: ElementOperatorConfig,
        fn: Callable[[dict[str, Any], jax.Array | None], dict[str, Any]],
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        require_config(self, config, ElementOperatorConfig)
        require_callable(type(self).__name__, "fn", fn)
        super().__init__(config, rngs=rngs, name=name)
        self.fn = fn

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Calls ``fn`` on one element.

        Args:
            element: Dict of arrays for one record.
            key: The record's key (required when stochastic, ignored otherwise).

        Returns:
            The element dict returned by ``fn``.

        Raises:
            TypeError: If ``fn`` returns something other than a dict.
            ValueError: If the operator is stochastic and ``key`` is None.
        """
        key = record_key(self, key)
        out = self.fn(dict(element), key)
        if not isinstance(out, Mapping):
            raise TypeError(f"{label(self)}: fn must return a dict of arrays, got {type(out).__name__}")
        return dict(out)


__all__ = ["ElementOperator", "ElementOperatorConfig"]

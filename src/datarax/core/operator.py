"""Base module for operators: per-element transforms applied to whole batches.

An operator is written for ONE element (a dict of arrays without the batch
axis) as a pure function ``apply(element, key) -> element``. The batch form is
derived, never hand-written: ``apply_batch`` maps ``apply`` over the leading
axis with ``jax.vmap``, so the pipeline fuses every stage into one XLA
program. Randomness arrives as one key per record (see ``datarax.core.prng``),
so a record's draw does not depend on the batch it travels in.

``output_spec`` derives the output element spec with ``jax.eval_shape``; the
pipeline chains it stage by stage at construction, so a shape or dtype
mismatch fails before the first batch.

Example:
    >>> import jax.numpy as jnp
    >>> from datarax.core.config import OperatorConfig
    >>> from datarax.core.operator import OperatorModule
    >>> class Double(OperatorModule):
    ...     def apply(self, element, key=None):
    ...         return {"x": element["x"] * 2}
    >>> op = Double(OperatorConfig())
    >>> op({"x": jnp.arange(3), "valid_mask": jnp.ones(3, bool)})["x"].tolist()
    [0, 2, 4]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from datarax.core.batcher import VALID_MASK
from datarax.core.config import OperatorConfig
from datarax.core.module import DataraxModule, check_stream_available
from datarax.core.prng import record_keys, stream_root_key


class OperatorModule(DataraxModule):
    """Base class for datarax operators.

    Args:
        config: ``OperatorConfig`` (or subclass), already validated.
        rngs: Random number generators (required if ``config.stochastic``).
        name: Optional module name.

    Raises:
        TypeError: If ``config`` is not an ``OperatorConfig``.
        ValueError: If ``stochastic=True`` but ``rngs`` is None or lacks the stream.
    """

    def __init__(
        self,
        config: OperatorConfig,
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        if not isinstance(config, OperatorConfig):
            raise TypeError(f"{type(self).__name__}: config must be an OperatorConfig, got {type(config).__name__}")
        if config.stochastic:
            check_stream_available(type(self).__name__, config.stream_name, rngs)
        super().__init__(config, rngs=rngs, name=name)
        self.stochastic = config.stochastic
        self.stream_name = config.stream_name

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Transforms one element (no batch axis). Subclasses implement this.

        Args:
            element: Dict of arrays for one record.
            key: The record's PRNG key (None for deterministic operators).

        Returns:
            The transformed element dict.

        Raises:
            NotImplementedError: On the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement apply()")

    def root_key(self) -> jax.Array:
        """The root key of this operator's stream (read, never advanced)."""
        return stream_root_key(self.rngs, self.stream_name)

    def record_keys(self, epoch: Any, records: Any) -> jax.Array | None:
        """Per-record keys for ``records`` in ``epoch``; None if deterministic."""
        if not self.stochastic:
            return None
        return record_keys(self.root_key(), epoch, records)

    def apply_batch(self, batch: Mapping[str, Any], keys: jax.Array | None = None) -> dict[str, Any]:
        """Applies ``apply`` to every row of ``batch`` with ``jax.vmap``.

        Args:
            batch: Dict of arrays with a leading batch axis; a ``valid_mask``
                entry is passed through untouched.
            keys: One key per row (required when stochastic).

        Returns:
            The transformed batch dict (with ``valid_mask`` if given).

        Raises:
            ValueError: If the operator is stochastic and ``keys`` is None.
        """
        data = {k: v for k, v in batch.items() if k != VALID_MASK}
        if self.stochastic:
            if keys is None:
                raise ValueError(f"{type(self).__name__} is stochastic: apply_batch needs per-row keys")
            out = jax.vmap(self.apply)(data, keys)
        else:
            out = jax.vmap(lambda element: self.apply(element, None))(data)
        if VALID_MASK in batch:
            out = {**out, VALID_MASK: batch[VALID_MASK]}
        return out

    def output_spec(self, input_spec: Any) -> Any:
        """The element spec this operator produces for ``input_spec`` (via ``jax.eval_shape``).

        Args:
            input_spec: Pytree of ``jax.ShapeDtypeStruct`` for one element.

        Returns:
            Pytree of ``jax.ShapeDtypeStruct`` for one output element.
        """
        key_spec = jax.eval_shape(lambda: jax.random.key(0)) if self.stochastic else None
        return jax.eval_shape(lambda e, k: self.apply(e, k), input_spec, key_spec)

    def __call__(self, batch: Mapping[str, Any], keys: jax.Array | None = None) -> dict[str, Any]:
        """Delegates to ``apply_batch``."""
        return self.apply_batch(batch, keys)


__all__ = ["OperatorModule"]

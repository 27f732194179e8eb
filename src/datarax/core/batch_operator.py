"""Batch operators: transforms of a whole batch (mixup, cutmix), not of one element.

Every other operator is written for one element and ``vmap``ped; a batch
operator needs the batch itself (a row is mixed with another row). It is an
``OperatorModule`` so a pipeline takes it wherever it takes an operator
(``stages``, DAG nodes): the compiled step calls ``apply_batch(batch, keys)``
on every node, and a batch operator overrides exactly that, implementing
``transform_batch(data, valid, key)`` instead of ``apply``.

Randomness: the pipeline still hands the node one key per row (derived from
the seed, the node, the epoch and the row's record). The operator derives ONE
key per batch from them: ``fold_in(keys[first valid row], BATCH_KEY_SALT)``.
The first valid row of a batch is the batch's first epoch position (padding
rows only ever trail), so the batch key depends only on the seed, the node,
the epoch and that record, and a resumed iterator (whose batches are pure
functions of its cursor) sees the same batch keys, so the same mixes. What a
record sees does depend on the batch it travels in (which rows it is mixed
with): unlike per-element operators, a batch operator's output changes with
the batch size and the shuffle.

A batch operator has no per-element form: ``apply`` raises ``TypeError``
rather than silently treating one element as a batch of one (which would mix
each record with itself, a no-op). So it cannot be a child of a combining
operator (``CompositeOperator``, ``ProbabilisticOperator``, ...): those are written per
element; construction fails with that message.

``valid_mask`` is passed to ``transform_batch`` (all True when the batch has
none): padding rows must come out unchanged and must never influence a real
row. Counting: every valid row counts as applied (the operator's random
outcome, as for ``RandomFlip``), so the pipeline counts it on the host.

``output_spec`` traces ``apply_batch`` on a batch of ``SPEC_ROWS`` rows and
drops the batch axis, so the pipeline's stage-by-stage spec check at
construction works as for any operator (the output spec of a batch operator
must not depend on the batch size).

Example:
    >>> import jax.numpy as jnp
    >>> from datarax.core.config import OperatorConfig
    >>> class Reverse(BatchOperator):  # the valid rows, in reverse order
    ...     def transform_batch(self, data, valid, key=None):
    ...         order = jnp.argsort(~valid, stable=True)  # valid rows first
    ...         n = jnp.sum(valid)
    ...         rows = jnp.arange(valid.shape[0])
    ...         source = jnp.where(rows < n, order[jnp.clip(n - 1 - rows, 0)], order)
    ...         partner = jnp.zeros_like(rows).at[order].set(source)
    ...         return {k: v[partner] for k, v in data.items()}
    >>> op = Reverse(OperatorConfig())
    >>> op({"x": jnp.arange(4), "valid_mask": jnp.array([True, True, True, False])})["x"].tolist()
    [2, 1, 0, 3]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from datarax.core.batch_form import VALID_MASK
from datarax.core.operator import OperatorModule
from datarax.core.spec import add_leading_dim, element_spec_of_batch

# Folded into the first valid row's key to make the batch key: the batch key
# is then never equal to a record key the node hands out.
BATCH_KEY_SALT = 0x62617463  # b"batc"

# Rows of the batch ``output_spec`` traces (more than one, so a partner exists).
SPEC_ROWS = 2


class BatchOperator(OperatorModule):
    """Base class for operators that transform a whole batch (see the module docstring).

    Subclasses implement ``transform_batch``; ``apply_batch`` (what the
    pipeline calls) validates the batch, derives the batch key, calls it and
    counts the valid rows.

    Args:
        config: ``OperatorConfig`` (or subclass), already validated.
        rngs: Optional own random number generators (an override of the pipeline seed).
        name: Optional module name.
    """

    def transform_batch(self, data: dict[str, jax.Array], valid: jax.Array, key: jax.Array | None) -> dict[str, Any]:
        """Transforms one batch. Subclasses implement this.

        Args:
            data: Dict of arrays sharing a leading batch axis (no ``valid_mask``).
            valid: bool ``(B,)``: False for padding rows, which must come out
                unchanged and must not influence the valid rows.
            key: The batch key (None for a deterministic operator).

        Returns:
            The transformed batch dict (no ``valid_mask``), same leading size.

        Raises:
            NotImplementedError: On the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement transform_batch()")

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Refuses: a batch operator has no per-element form.

        Raises:
            TypeError: Always; use ``apply_batch`` or a pipeline stage.
        """
        raise TypeError(
            f"{type(self).__name__} is a batch operator: it transforms whole batches and has no per-element "
            "apply(); use it as a pipeline stage (or call apply_batch), not inside a per-element operator "
            "such as CompositeOperator or ProbabilisticOperator"
        )

    def batch_key(self, keys: jax.Array | None, valid: Any) -> jax.Array | None:
        """The batch's key: ``fold_in(keys[first valid row], BATCH_KEY_SALT)``; None if deterministic.

        Args:
            keys: The rows' keys ``(B,)`` (typed or raw uint32 keys).
            valid: bool ``(B,)``.

        Raises:
            ValueError: If the operator is stochastic and ``keys`` is None.
        """
        if not self.stochastic:
            return None
        if keys is None:
            raise ValueError(f"{type(self).__name__} is stochastic: apply_batch needs per-row keys")
        first = jnp.argmax(jnp.asarray(valid, dtype=bool))  # 0 when no row is valid
        return jax.random.fold_in(keys[first], BATCH_KEY_SALT)

    def apply_batch(
        self, batch: Mapping[str, Any], keys: jax.Array | None = None, *, count: bool = True
    ) -> dict[str, Any]:
        """Applies ``transform_batch`` to ``batch`` with its batch key, counting valid rows.

        Args:
            batch: Dict of arrays with a leading batch axis; an optional
                ``valid_mask`` (all rows valid when absent) is passed through.
            keys: One key per row (required when stochastic); the batch key is
                derived from them (``batch_key``).
            count: False leaves the counters alone (the pipeline counts the
                valid rows on the host).

        Returns:
            The transformed batch dict (with ``valid_mask`` if given).

        Raises:
            TypeError: If ``batch`` is not a dict of arrays.
            ValueError: If the operator is stochastic and ``keys`` is None, the
                arrays disagree on the batch size, or ``keys`` has another.
        """
        if not isinstance(batch, Mapping):
            raise TypeError(f"{type(self).__name__}: batch must be a dict of arrays, got {type(batch).__name__}")
        data = {k: v for k, v in batch.items() if k != VALID_MASK}
        try:
            element_spec_of_batch(data)  # a 0-d leaf or unequal batch sizes: the message names the leaves
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}: the batch's arrays must share a leading axis: {error}") from error
        leaves = jax.tree.leaves(data)
        if not leaves:
            raise ValueError(f"{type(self).__name__}: the batch holds no arrays (keys: {sorted(batch)})")
        rows = jnp.shape(leaves[0])[0]
        valid = batch.get(VALID_MASK)
        valid = jnp.ones(rows, dtype=bool) if valid is None else jnp.asarray(valid, dtype=bool)
        if valid.shape != (rows,):
            raise ValueError(f"{type(self).__name__}: valid_mask must have shape ({rows},), got {valid.shape}")
        if keys is not None and self.stochastic and jnp.shape(keys)[0] != rows:
            raise ValueError(f"{type(self).__name__}: got {jnp.shape(keys)[0]} keys for a batch of {rows} rows")
        out = dict(self.transform_batch(data, valid, self.batch_key(keys, valid)))
        if count:
            self._count(jnp.broadcast_to(jnp.array([[True, False]]), (rows, 1, 2)), valid)
        if VALID_MASK in batch:
            out[VALID_MASK] = batch[VALID_MASK]
        return out

    def output_spec(self, input_spec: Any) -> Any:
        """The element spec this operator produces for ``input_spec`` (``apply_batch`` on ``SPEC_ROWS`` rows).

        Args:
            input_spec: Dict of ``jax.ShapeDtypeStruct`` for one element.

        Returns:
            Dict of ``jax.ShapeDtypeStruct`` for one output element.

        Raises:
            ValueError: If an output array lost its batch axis or changed its length.
        """
        batch_spec = {**add_leading_dim(input_spec, SPEC_ROWS), VALID_MASK: jax.ShapeDtypeStruct((SPEC_ROWS,), bool)}
        keys_spec = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), SPEC_ROWS)) if self.stochastic else None
        out = jax.eval_shape(lambda b, k: self.apply_batch(b, k, count=False), batch_spec, keys_spec)
        out = {k: v for k, v in out.items() if k != VALID_MASK}
        for path, leaf in jax.tree_util.tree_leaves_with_path(out):
            if not leaf.shape or leaf.shape[0] != SPEC_ROWS:
                raise ValueError(
                    f"{type(self).__name__}: transform_batch must keep the batch axis, but output "
                    f"{jax.tree_util.keystr(path)} has shape {leaf.shape} for a batch of {SPEC_ROWS} rows"
                )
        return element_spec_of_batch(out)


__all__ = ["BATCH_KEY_SALT", "SPEC_ROWS", "BatchOperator"]

"""Base module for operators: per-element transforms applied to whole batches.

An operator is written for ONE element (a dict of arrays without the batch
axis) as a pure function ``apply(element, key) -> element``. The batch form is
derived, never hand-written: ``apply_batch`` maps ``apply`` over the leading
axis with ``jax.vmap``, so the pipeline fuses every stage into one XLA
program. Randomness arrives as one key per record (see ``datarax.core.prng``),
so a record's draw does not depend on the batch it travels in. A stochastic
operator needs no ``rngs``: a pipeline derives its keys from the pipeline
seed and the node's name; ``rngs`` given to the operator override that.

``apply_batch`` also counts: every operator has ``_applied_count`` and
``_skipped_count`` (``IterationCount``), and after a batch they have grown by
the valid rows the operator transformed and passed through unchanged.

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
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from flax.errors import TraceContextError

from datarax.core.batch_form import VALID_MASK
from datarax.core.config import OperatorConfig
from datarax.core.fusion import materialize
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
        ValueError: If ``rngs`` is given to a stochastic operator but lacks its stream.
    """

    # True for an operator whose output values each read several input values (a mean, the
    # other channels, neighbours): ``apply_batch`` then makes its input batch a fusion boundary
    # (``datarax.core.fusion.materialize``) so XLA computes the operators before it once.
    materializes_input: ClassVar[bool] = False

    def __init__(
        self,
        config: OperatorConfig,
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        if not isinstance(config, OperatorConfig):
            raise TypeError(f"{type(self).__name__}: config must be an OperatorConfig, got {type(config).__name__}")
        # A stochastic operator needs no rngs of its own: in a pipeline it draws
        # from the pipeline seed, inside a combining operator from its parent's
        # record key. Rngs given here are an explicit override and must serve the stream.
        if config.stochastic and rngs is not None:
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

    @property
    def has_own_rngs(self) -> bool:
        """True when this stochastic operator was given ``rngs`` (its keys then override the pipeline seed)."""
        return self.stochastic and self.rngs is not None

    def root_key(self) -> jax.Array:
        """The root key of this operator's own stream (read, never advanced).

        Raises:
            ValueError: If the operator has no ``rngs`` of its own (it then
                draws from the pipeline seed, or its parent's record key).
        """
        if self.rngs is None:
            raise ValueError(
                f"{type(self).__name__} has no rngs of its own: in a Pipeline it draws from the pipeline seed; "
                "to use it alone, build it with rngs=nnx.Rngs(...) or pass per-record keys to apply_batch"
            )
        return stream_root_key(self.rngs, self.stream_name)

    def record_keys(self, epoch: Any, records: Any) -> jax.Array | None:
        """Per-record keys for ``records`` in ``epoch`` from this operator's own rngs; None if deterministic."""
        if not self.stochastic:
            return None
        return record_keys(self.root_key(), epoch, records)

    # -- operation counters ---------------------------------------------------

    def counted_operators(self) -> list[OperatorModule]:
        """The operators whose counters ``apply_batch`` updates: this one, then its children's, depth first."""
        return [self]

    def apply_counted(self, element: dict[str, Any], key: jax.Array | None = None) -> tuple[dict[str, Any], Any]:
        """``apply`` plus what happened to this record at every counted operator.

        Returns ``(output, flags)`` with ``flags`` a bool array of shape
        ``(len(counted_operators()), 2)``: ``[i, 0]`` is True if operator ``i``
        transformed the record, ``[i, 1]`` if it saw the record and let it
        pass unchanged, both False if the record never reached it (an
        unchosen branch). Operators that always transform (the default)
        report ``[True, False]``; operators that may skip override this.
        """
        return self.apply(element, key), jnp.array([[True, False]])

    @property
    def counts_every_record(self) -> bool:
        """True if this operator transforms every record it sees and counts no children.

        Its counters then follow from the number of valid rows alone, which
        the pipeline knows on the host, so its compiled step computes nothing
        for them.
        """
        return type(self).apply_counted is OperatorModule.apply_counted

    def apply_batch(
        self, batch: Mapping[str, Any], keys: jax.Array | None = None, *, count: bool = True
    ) -> dict[str, Any]:
        """Applies ``apply`` to every row of ``batch`` with ``jax.vmap``, counting valid rows.

        Every counted operator's ``_applied_count`` / ``_skipped_count`` grows
        by the valid rows it transformed / passed through (rows whose
        ``valid_mask`` is False are never counted). The counters are updated
        eagerly and under ``nnx.jit``, ``nnx.scan`` and ``nnx.vmap``; under a
        plain ``jax.jit`` that closes over the operator JAX has nowhere to put
        new counter values, so they are left unchanged there.

        Args:
            batch: Dict of arrays with a leading batch axis; a ``valid_mask``
                entry is passed through untouched.
            keys: One key per row (required when stochastic).
            count: False leaves the counters alone (a caller that counts
                the rows itself, as the pipeline does for
                ``counts_every_record`` operators).

        Returns:
            The transformed batch dict (with ``valid_mask`` if given).

        Raises:
            ValueError: If the operator is stochastic and ``keys`` is None.
        """
        data = {k: v for k, v in batch.items() if k != VALID_MASK}
        if self.materializes_input:
            data = materialize(data)
        if self.stochastic:
            if keys is None:
                raise ValueError(f"{type(self).__name__} is stochastic: apply_batch needs per-row keys")
            out, flags = jax.vmap(self.apply_counted)(data, keys)
        else:
            out, flags = jax.vmap(lambda element: self.apply_counted(element, None))(data)
        if count:
            self._count(flags, batch.get(VALID_MASK))
        if VALID_MASK in batch:
            out = {**out, VALID_MASK: batch[VALID_MASK]}
        return out

    def _count(self, flags: jax.Array, valid: Any) -> None:
        if valid is not None:
            flags = flags & jnp.asarray(valid, dtype=bool)[:, None, None]
        totals = jnp.sum(flags, axis=0, dtype=jnp.int32)
        try:
            for i, op in enumerate(self.counted_operators()):
                op._applied_count[...] += totals[i, 0]
                op._skipped_count[...] += totals[i, 1]
        except TraceContextError:
            pass  # a plain jax.jit over a closed-over operator: see apply_batch

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

"""``RecordMetadata`` and ``MetadataManager``: per-record bookkeeping kept by a source.

A source that wants to stamp each record it serves with its position, epoch,
step and an RNG key composes a ``MetadataManager`` (rather than inheriting
from it). The manager keeps its running counters in an ``nnx.Variable``, so
they are module state: visible to ``nnx.state``, checkpointable, and updated
in place through ``nnx.jit``. Each record gets a ``RecordMetadata``, a light
pytree whose numbers and key are traced and whose ``record_key`` and
``source_info`` are static. (``datarax.core.metadata.Metadata`` is the richer,
jit-friendly form whose record key is traced too.)

Example:
    >>> manager = MetadataManager(initial_step=10)
    >>> first = manager.create_metadata("img_0")
    >>> second = manager.create_metadata("img_1")
    >>> (first.index, first.global_step), (second.index, second.global_step)
    ((0, 10), (1, 11))
    >>> manager.next_epoch()
    >>> manager.state.get_value()["epoch"]
    1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flax import nnx
from jax import Array

from datarax.core.pytree import register_frozen_pytree
from datarax.core.validation import boolean, non_negative_int, optional_non_negative_int


@dataclass(frozen=True, eq=False)
class RecordMetadata:
    """Metadata about one record, as produced by ``MetadataManager``.

    Numeric fields and ``rng_key`` are pytree children; ``record_key`` and
    ``source_info`` are static aux data, so ``record_key`` must be hashable
    (or comparable) and distinct keys give distinct treedefs.

    Args:
        index: Position of the record in the stream.
        record_key: Identifier of the record in its source.
        rng_key: Per-record RNG key, or None.
        epoch: Epoch the record belongs to.
        global_step: Global step at which the record was produced.
        batch_idx: Batch index when batches are tracked, else None.
        shard_id: Shard that produced the record, or None.
        source_info: Static description of the source, or None.
    """

    index: int
    record_key: Any
    rng_key: Array | None = None
    epoch: int = 0
    global_step: int = 0
    batch_idx: int | None = None
    shard_id: int | None = None
    source_info: dict[str, Any] | None = None


register_frozen_pytree(
    RecordMetadata,
    children=("index", "rng_key", "epoch", "global_step", "batch_idx", "shard_id"),
    statics=("record_key", "source_info"),
)


class MetadataManager(nnx.Module):
    """Stateful generator of ``RecordMetadata`` for a stream of records.

    Counters live in ``self.state`` (an ``nnx.Variable`` holding a dict), so
    they are module state: visible to ``nnx.state``, checkpointable, and
    updated in place through ``nnx.jit``.

    Args:
        rngs: Source of per-record RNG keys. Keys are drawn from the
            ``metadata`` stream, which falls back to ``default`` when absent.
            If None, records get ``rng_key=None``.
        initial_epoch: Starting epoch.
        initial_step: Starting global step.
        track_batches: Whether to track ``batch_idx`` (None otherwise).
        shard_id: Shard id stamped on every record.

    Raises:
        ValueError: If ``initial_epoch`` or ``initial_step`` is not a non-negative
            int, ``shard_id`` is neither None nor one, or ``track_batches`` is not a bool.
        TypeError: If ``rngs`` is neither None nor an ``nnx.Rngs``.
    """

    def __init__(
        self,
        *,
        rngs: nnx.Rngs | None = None,
        initial_epoch: int = 0,
        initial_step: int = 0,
        track_batches: bool = False,
        shard_id: int | None = None,
    ):
        owner = type(self).__name__
        initial_epoch = non_negative_int(owner, "initial_epoch", initial_epoch)
        initial_step = non_negative_int(owner, "initial_step", initial_step)
        shard_id = optional_non_negative_int(owner, "shard_id", shard_id)
        track_batches = boolean(owner, "track_batches", track_batches)
        if rngs is not None and not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"{owner}: rngs must be an nnx.Rngs or None, got {type(rngs).__name__}")
        self.rngs = rngs
        self.track_batches = track_batches
        self.shard_id = shard_id
        batch_idx = 0 if track_batches else None
        counters = {"global_step": initial_step, "epoch": initial_epoch, "index": 0, "batch_idx": batch_idx}
        self.state = nnx.Variable(counters)

    def _update(self, **changes: Any) -> None:
        self.state.set_value({**self.state.get_value(), **changes})

    def create_metadata(self, record_key: Any, source_info: dict[str, Any] | None = None) -> RecordMetadata:
        """Creates metadata for the next record, then advances ``index`` and ``global_step``.

        Args:
            record_key: Identifier of the record in its source.
            source_info: Static description of the source, or None.

        Returns:
            The ``RecordMetadata`` reflecting the state before the update.
        """
        s = self.state.get_value()
        rng_key = None if self.rngs is None else self.rngs.metadata()
        md = RecordMetadata(
            s["index"], record_key, rng_key, s["epoch"], s["global_step"], s["batch_idx"], self.shard_id, source_info
        )
        self._update(index=s["index"] + 1, global_step=s["global_step"] + 1)
        return md

    def next_epoch(self) -> None:
        """Advances the epoch and resets ``batch_idx`` to 0 when batches are tracked."""
        s = self.state.get_value()
        self._update(epoch=s["epoch"] + 1, batch_idx=0 if self.track_batches else None)

    def next_batch(self) -> None:
        """Advances ``batch_idx`` by one; a no-op when batches are not tracked."""
        if self.track_batches:
            self._update(batch_idx=self.state.get_value()["batch_idx"] + 1)


__all__ = ["MetadataManager", "RecordMetadata"]

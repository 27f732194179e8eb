"""``StreamSpec``: a frozen description of the stream a pipeline serves.

An iterator walks a stream; this is everything it needs to know about it,
written down once, immutable and hashable:

* its shape: ``num_records`` per epoch, ``batch_size``, ``drop_remainder``;
* its identity: the 32-bit ``seed`` of the shuffle and of every stochastic
  node, ``shuffle``, and a ``fingerprint`` of what else changes the stream;
* how a cursor advances: a cursor is ``(epoch, position)``, the epoch being
  served and the epoch position of the next batch's first row.

Nothing here reads or mutates a pipeline, so host sources and per-process
shares can extend the same description (more fields, the same cursor rules),
and an iterator state is checked against it field by field.

Example:
    >>> stream = StreamSpec(num_records=10, batch_size=4, drop_remainder=False,
    ...                     shuffle=True, seed=0, fingerprint=0)
    >>> stream.batches_per_epoch
    3
    >>> stream.advance(0, 4), stream.advance(0, 8)
    ((0, 8), (1, 0))
    >>> stream.schedule(0, 8, 2)
    [(0, 8), (1, 0)]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """What one pipeline stream is, and how a cursor moves through it.

    Attributes:
        num_records: Records per epoch.
        batch_size: Rows per batch.
        drop_remainder: Whether each epoch's short last batch is dropped.
        shuffle: Whether each epoch is a fresh Feistel permutation.
        seed: The pipeline's 32-bit seed (0 when neither shuffle nor any
            stochastic node needs one).
        fingerprint: A 32-bit digest of what else determines the batches
            (see ``Pipeline.fingerprint``).
    """

    num_records: int
    batch_size: int
    drop_remainder: bool
    shuffle: bool
    seed: int
    fingerprint: int

    @functools.cached_property
    def batches_per_epoch(self) -> int:
        """Batches in one epoch (the short last one counted unless dropped)."""
        full, rest = divmod(self.num_records, self.batch_size)
        return full + (1 if rest and not self.drop_remainder else 0)

    @functools.cached_property
    def positions_per_epoch(self) -> int:
        """The first epoch position that starts no batch (a multiple of ``batch_size``)."""
        return self.batches_per_epoch * self.batch_size

    def advance(self, epoch: int, position: int) -> tuple[int, int]:
        """The cursor after the batch at ``(epoch, position)``."""
        position += self.batch_size
        if position >= self.positions_per_epoch:
            return epoch + 1, 0
        return epoch, position

    def schedule(self, epoch: int, position: int, length: int) -> list[tuple[int, int]]:
        """The cursors of the ``length`` batches starting at ``(epoch, position)``."""
        cursors = []
        for _ in range(length):
            cursors.append((epoch, position))
            epoch, position = self.advance(epoch, position)
        return cursors

    def identity(self) -> dict[str, Any]:
        """The fields an iterator state records so that it is only restored into this stream."""
        return {
            "seed": self.seed,
            "num_records": self.num_records,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_remainder": self.drop_remainder,
            "fingerprint": self.fingerprint,
        }


__all__ = ["StreamSpec"]

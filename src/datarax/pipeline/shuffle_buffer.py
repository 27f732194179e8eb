"""``ShuffleBuffer``: a seeded shuffle of a stream, whose state is a list of record positions.

A stream has no random access, so it cannot be permuted exactly; the usual
answer is a buffer: hold ``size`` records, hand out a random one, put the
next record of the stream in its slot. This one is seeded and counter-based:
the slot handed out ``k``-th in epoch ``e`` is a hash of ``(seed, e, k)``
(splitmix64, ``datarax.core.prng``), never the draw of a stateful generator,
so the output is a pure function of the seed, the epoch and the stream.

Its state is ``{"read": r, "positions": [...]}``: how many records of the
epoch it has read, and the stream position of the record in each slot, in
slot order. A restored buffer re-reads those records from the stream
(``iter_records(min(positions))``, keeping the positions it holds) instead
of storing them, so the state is a few kilobytes whatever the records are,
and the shuffle continues exactly, buffer contents included. The cost of a
restore is reading the stream from the oldest record still buffered.

When the stream ends, the buffer drains: each draw takes a random slot and
the last slot moves into it. A buffer of size 1 is the stream in order.

Example:
    >>> buffer = ShuffleBuffer(size=3, seed=0, epoch=0)
    >>> buffer.start(iter([(p, f"r{p}") for p in range(6)]))
    >>> drawn = [buffer.draw() for _ in range(6)]
    >>> sorted(p for p, _ in drawn), buffer.done
    ([0, 1, 2, 3, 4, 5], True)
    >>> again = ShuffleBuffer(size=3, seed=0, epoch=0)
    >>> again.start(iter([(p, f"r{p}") for p in range(6)]))
    >>> [again.draw() for _ in range(2)] == drawn[:2]
    True
    >>> state = again.state()
    >>> restored = ShuffleBuffer(size=3, seed=0, epoch=0)
    >>> restored.restore(state, iter([(p, f"r{p}") for p in range(min(state["positions"]), 6)]))
    >>> [restored.draw() for _ in range(4)] == drawn[2:]
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from datarax.core.prng import _mix64

_BLOCK = 1024  # draws hashed at once


class ShuffleBuffer:
    """A seeded random-replacement buffer (see the module docstring).

    Args:
        size: Slots (1: the stream in order).
        seed: The pipeline's 32-bit seed.
        epoch: The epoch (each epoch draws differently).
    """

    def __init__(self, *, size: int, seed: int, epoch: int):
        self.size = size
        self._salt = np.uint64(((seed & 0xFFFFFFFF) << 32) | (epoch & 0xFFFFFFFF))
        self._positions: list[int] = []
        self._records: list[Any] = []
        self._reader: Iterator[tuple[int, Any]] = iter(())
        self._exhausted = False
        self.read = 0  # records of the epoch read so far
        self.drawn = 0  # records handed out so far
        self._block = -1
        self._hashes = np.empty(0, np.uint64)

    def start(self, reader: Iterator[tuple[int, Any]]) -> None:
        """Fills the buffer from the epoch's first record; ``reader`` yields ``(position, record)`` in order."""
        self._reader = reader
        self._fill()

    def _next(self) -> tuple[int, Any] | None:
        if self._exhausted:
            return None
        item = next(self._reader, None)
        if item is None:
            self._exhausted = True
            return None
        self.read += 1
        return item

    def _fill(self) -> None:
        while len(self._positions) < self.size:
            item = self._next()
            if item is None:
                return
            self._positions.append(item[0])
            self._records.append(item[1])

    def _slot(self) -> int:
        count = len(self._positions)
        if count == 1:
            return 0
        block, offset = divmod(self.drawn, _BLOCK)
        if block != self._block:
            counters = np.arange(block * _BLOCK, (block + 1) * _BLOCK, dtype=np.uint64)
            with np.errstate(over="ignore"):
                self._hashes = _mix64(_mix64(counters) + self._salt)
            self._block = block
        return int((int(self._hashes[offset]) >> 32) * count >> 32)

    @property
    def done(self) -> bool:
        """True when the epoch's records are all handed out."""
        return not self._positions

    def draw(self) -> tuple[int, Any]:
        """Hands out one ``(position, record)`` and refills its slot from the stream (or drains)."""
        slot = self._slot()
        drawn = (self._positions[slot], self._records[slot])
        item = self._next()
        if item is not None:
            self._positions[slot], self._records[slot] = item
        else:  # the stream has ended: the last slot moves into this one
            last_position, last_record = self._positions.pop(), self._records.pop()
            if slot < len(self._positions):
                self._positions[slot], self._records[slot] = last_position, last_record
        self.drawn += 1
        return drawn

    def state(self) -> dict[str, Any]:
        """``{"read", "drawn", "positions"}``: JSON-able; the records are not in it."""
        return {"read": self.read, "drawn": self.drawn, "positions": list(self._positions)}

    def restore(self, state: Mapping[str, Any], reader: Iterator[tuple[int, Any]]) -> None:
        """Continues from ``state``; ``reader`` yields ``(position, record)`` from ``min(positions)`` (or ``read``).

        Raises:
            ValueError: If the stream ends before every buffered position is re-read, or before
                the ``read`` records the state says it had (or, for a draining buffer, goes on after them).
        """
        positions = [int(p) for p in state["positions"]]
        slots = {position: slot for slot, position in enumerate(positions)}
        records: list[Any] = [None] * len(positions)
        self._reader, self.read, self.drawn = reader, int(state["read"]), int(state["drawn"])
        missing, short = len(positions), False
        if missing:
            for position, record in reader:
                slot = slots.get(position)
                if slot is not None:
                    records[slot] = record
                    missing -= 1
                if position + 1 >= self.read:
                    break
            else:  # the stream ended before the last record the state had read
                short = True
        if missing:
            raise ValueError(
                f"ShuffleBuffer: the stream ended before re-reading {missing} of the {len(positions)} buffered "
                f"records (positions up to {self.read - 1}); the stream must yield the same records every pass"
            )
        if short:
            raise ValueError(
                f"ShuffleBuffer: the state says the stream has {self.read} records, but it ended before that; "
                "the stream must yield the same records every pass"
            )
        self._positions, self._records, self._exhausted = positions, records, False
        if len(positions) < self.size:  # a draining buffer: the stream ended at `read`
            if next(reader, None) is not None:
                raise ValueError(
                    f"ShuffleBuffer: the state says the stream ended after {self.read} records, but it has more; "
                    "the stream must yield the same records every pass"
                )
            self._exhausted = True


__all__ = ["ShuffleBuffer"]

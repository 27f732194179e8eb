"""``CountLadder``: operation counters advanced per batch from counts made ahead, in one go.

Every batch an iterator hands out adds its valid rows to the ``_applied_count``
of each operator that counts every record. Done the plain way (read the count,
add, make a new 0-d array, store it), that is a few Python steps and one new
array per counter per batch, run between two compiled steps, when the
interpreter's data has just been pushed out of the caches by the step's
output; measured on W1 (two counters, batch 128) it was about 8% of a batch.

A ladder makes the next ``rungs`` counts of every counter at once, as read-only
0-d views of one ``int32`` array (about 0.1 µs each), and a batch then only
checks that each counter still holds the array it was given last (by
identity: anything that changed a count, ``reset_operation_stats``,
``set_state``, ``nnx.update``, another iterator, replaced it) and stores the
next rung. Read-only is what makes the views safe to make ahead and to share
between counters: nothing can change one in place, and an ``IterationCount``
reads out (``counter[...]``) a copy the caller may change, and writes by
replacing its array.

Example:
    >>> import numpy as np
    >>> from datarax.core.module import IterationCount
    >>> a, b = IterationCount(np.array(0, np.int32)), IterationCount(np.array(5, np.int32))
    >>> ladder = CountLadder([a, b])
    >>> for _ in range(3):
    ...     ladder.add(128)
    >>> int(a[...]), int(b[...])
    (384, 389)
    >>> a[...] = 0  # a count changed outside the ladder is read again
    >>> ladder.add(128)
    >>> int(a[...]), int(b[...])
    (128, 517)
"""

from __future__ import annotations

import operator
import types
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import nnx

# Variable.set_raw_value checks the JAX trace level on every call (a few
# microseconds, paid per counter per batch); the iterator runs outside any
# trace, so where flax keeps the value in a `_raw_value` slot (flax 0.12) the
# slot is read and written directly (C-level accessors), and through the
# public methods otherwise.
_RAW_SLOT = getattr(nnx.Variable, "_raw_value", None)
if isinstance(_RAW_SLOT, types.MemberDescriptorType):
    get_raw = operator.attrgetter("_raw_value")
    set_raw = _RAW_SLOT.__set__
else:
    get_raw = operator.methodcaller("get_raw_value")
    set_raw = nnx.Variable.set_raw_value

#: Counts made ahead per counter: the ladder is rebuilt every ``RUNGS`` batches.
RUNGS = 64
_RUNG_INDEX = [(k, Ellipsis) for k in range(RUNGS)]  # ``values[k, ...]`` is a 0-d view
_INT32 = np.dtype(np.int32)  # an instance: np.array converts a type object on every call


def frozen_counts(start: int, step: int, rungs: int = RUNGS) -> list[np.ndarray]:
    """Read-only 0-d ``int32`` arrays ``start + step``, ``start + 2 * step``, ... (``rungs`` of them).

    Counts wrap as JAX's int32 arithmetic does.

    Example:
        >>> [int(c) for c in frozen_counts(2**31 - 2, 1, 3)]
        [2147483647, -2147483648, -2147483647]
    """
    values = np.arange(1, rungs + 1, dtype=np.int64) * step + start
    values = ((values + 2**31) % 2**32 - 2**31).astype(np.int32)
    values.flags.writeable = False
    return list(map(values.__getitem__, _RUNG_INDEX[:rungs]))


def frozen_sum(value: Any, rows: int) -> np.ndarray:
    """``value + rows`` as one read-only 0-d ``int32`` array (int32 wrapping)."""
    total = np.array((int(value) + rows + 2**31) % 2**32 - 2**31, _INT32)
    total.flags.writeable = False
    return total


class CountLadder:
    """Adds a batch's rows to several ``IterationCount`` variables, from counts made ahead.

    Args:
        counters: The variables, each advanced by the same rows per batch.
    """

    def __init__(self, counters: Sequence[nnx.Variable]):
        self.counters = list(counters)
        self._held: tuple[Any, ...] = ()  # what each counter held after the last add
        self._rungs: list[tuple[np.ndarray, ...]] = []
        self._next = 0
        self._step = 0

    def add(self, rows: int) -> None:
        """Adds ``rows`` to every counter."""
        counters = self.counters
        if not counters:
            return
        held = list(map(get_raw, counters))
        if rows == self._step and self._next < len(self._rungs) and not any(map(operator.is_not, held, self._held)):
            rung = self._rungs[self._next]
            self._next += 1
        else:
            rung = self._climb(held, rows)
        list(map(set_raw, counters, rung))
        self._held = rung

    def _climb(self, held: list[Any], rows: int) -> tuple[np.ndarray, ...]:
        # Counters at the same count share their arrays (read-only, so safe to share).
        ladders: dict[int, list[np.ndarray]] = {}
        columns = []
        for value in held:
            start = int(value)
            if start not in ladders:
                ladders[start] = frozen_counts(start, rows)
            columns.append(ladders[start])
        self._rungs = list(zip(*columns, strict=True))
        self._step = rows
        self._next = 1
        return self._rungs[0]


__all__ = ["RUNGS", "CountLadder", "frozen_counts", "frozen_sum", "get_raw", "set_raw"]

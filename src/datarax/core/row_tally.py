"""``RowTally``: rows handed out, added to operation counters when the counters are read.

Every batch a pipeline hands out adds its valid rows to the ``_applied_count``
of each operator that counts every record. Writing those counters on every
batch (read each, check it, store the next count) was measured at 3-4% of a W1
batch on the CPU backend, although it is about a microsecond of Python: what
runs between two compiled steps is taken from XLA's threads
(docs/benchmarks.md, issue 7, seventh pass). So a batch adds its rows to one
integer, its iterator's tally, and an ``IterationCount`` that follows the
tally adds the rows it has not seen yet when it is read, by anything:
``counter[...]``, ``get_operation_stats``, ``nnx.state``, a checkpoint.

What a reader sees is exactly what writing on every batch would give:

* a count is still a value: tallied rows are folded into a new read-only
  0-d ``int32`` array (wrapping as JAX's int32 does), so a count read or
  saved earlier never changes;
* writing a count (``counter[...] = 0``, ``reset_operation_stats``,
  ``nnx.update``, restoring a checkpoint) supersedes the rows tallied before
  it;
* copies (``nnx.clone``, ``copy.deepcopy``, pickling, a variable JAX
  rebuilt) hold the count as read and follow no tally (``nnx.state`` is not
  a copy: in flax 0.12 it holds the live variables);
* a counter may follow several tallies (two live iterators of one pipeline,
  one operator in two pipelines); a tally whose owner is gone has its rows
  folded in and is dropped.

Example:
    >>> import numpy as np
    >>> from datarax.core.module import IterationCount
    >>> owner = object.__new__(type("Owner", (), {}))  # what keeps the tally counting (an iterator's binding)
    >>> count = IterationCount(np.array(5, np.int32))
    >>> tally = RowTally(owner)
    >>> _ = follow([count], tally)
    >>> for _ in range(3):
    ...     tally.rows += 128
    >>> int(count[...])
    389
    >>> count[...] = 0  # a write supersedes the rows tallied before it
    >>> tally.rows += 2
    >>> int(count[...])
    2
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

# The lazy counts shadow the slot flax keeps a variable's value in (flax 0.12:
# every read and write of a value, flax's own included, goes through it); where
# flax keeps it elsewhere, a tally writes its counters on every batch instead.
_VALUE_SLOT = nnx.Variable.__dict__.get("_raw_value")
LAZY = isinstance(_VALUE_SLOT, types.MemberDescriptorType)
_INT32 = np.dtype(np.int32)  # an instance: np.array converts a type object on every call


def frozen_sum(value: Any, rows: int) -> Any:
    """``value + rows`` as one read-only 0-d ``int32`` array (int32 wrapping); traced values are added as such.

    Example:
        >>> int(frozen_sum(np.array(2**31 - 1, np.int32), 1))
        -2147483648
    """
    if isinstance(value, jax.core.Tracer):
        return value + rows
    total = np.array((int(value) + rows + 2**31) % 2**32 - 2**31, _INT32)
    total.flags.writeable = False
    return total


class RowTally:
    """Rows handed out by one owner (an iterator's ``StepBinding``); only grows.

    Args:
        owner: What adds to ``rows``. The tally is held weakly through it:
            once the owner is gone, counters fold its rows in and drop it.

    Attributes:
        rows: Rows handed out so far. A batch adds to it; nothing else writes it.
    """

    __slots__ = ("rows", "_owner", "__weakref__")

    def __init__(self, owner: Any):
        self.rows = 0
        self._owner = weakref.ref(owner)

    @property
    def open(self) -> bool:
        """Whether rows may still be added (the owner is alive)."""
        return self._owner() is not None


class _EagerTally:
    """A tally that writes its counters on every addition: where flax's value slot is not there to shadow."""

    def __init__(self, counters: Sequence[nnx.Variable]):
        self._counters = list(counters)
        self._rows = 0

    @property
    def rows(self) -> int:
        return self._rows

    @rows.setter
    def rows(self, rows: int) -> None:
        added, self._rows = rows - self._rows, rows
        for counter in self._counters:
            counter.set_raw_value(frozen_sum(counter.get_raw_value(), added))


def install(count_type: type) -> None:
    """Makes ``count_type``'s value fold in the rows of the tallies it follows when read.

    ``count_type`` is a subclass of ``nnx.Variable`` with a ``_tallies`` slot
    (``IterationCount``). Called once, where the type is defined; does nothing
    where flax's value slot is not there to shadow (``LAZY`` is False).
    """
    if not LAZY:
        return
    links_slot = count_type.__dict__["_tallies"]
    get_value, set_value = _VALUE_SLOT.__get__, _VALUE_SLOT.__set__
    get_links, set_links = links_slot.__get__, links_slot.__set__

    def read(variable: Any) -> Any:
        value = get_value(variable)
        try:
            links = get_links(variable)
        except AttributeError:  # made without __init__ (a copy, unflattened by JAX): follows nothing
            return value
        if links:
            pending = 0
            for link in links:
                rows = link[0].rows
                pending += rows - link[1]
                link[1] = rows
            if pending:
                value = frozen_sum(value, pending)
                set_value(variable, value)
            if not all(link[0].open for link in links):
                set_links(variable, [link for link in links if link[0].open])
        return value

    def write(variable: Any, value: Any) -> None:
        set_value(variable, value)
        try:
            links = get_links(variable)
        except AttributeError:
            return
        for link in links:  # the rows tallied so far are superseded by this value
            link[1] = link[0].rows

    count_type._raw_value = property(read, write, doc="The count, with the rows of the tallies it follows.")
    count_type._links_slot = links_slot


def set_count(counter: nnx.Variable, value: Any) -> None:
    """Writes a count as ``counter.set_raw_value(value)`` does, without its trace-level check (a few µs).

    The iterator that calls it runs outside any trace.
    """
    if LAZY:
        type(counter)._raw_value.__set__(counter, value)
    else:
        counter.set_raw_value(value)


def follow(counters: Sequence[nnx.Variable], tally: RowTally) -> RowTally | _EagerTally:
    """Makes each counter count ``tally``'s rows from now on; returns what a batch adds its rows to.

    A counter listed twice counts the rows twice (an operator used twice).
    Where counts cannot be lazy (``LAZY`` is False) the returned tally
    writes ``counters`` on every addition.
    """
    if not LAZY:
        return _EagerTally(counters)
    for counter in counters:
        links_slot = type(counter)._links_slot
        counter.get_raw_value()  # folds what the counter's other tallies added so far, drops closed ones
        try:
            links = links_slot.__get__(counter)
        except AttributeError:
            links = []
            links_slot.__set__(counter, links)
        links.append([tally, tally.rows])
    return tally


__all__ = ["LAZY", "RowTally", "follow", "frozen_sum", "install", "set_count"]

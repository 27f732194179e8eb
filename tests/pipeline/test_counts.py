"""Counts made ahead (``datarax.pipeline.counts``) and the value semantics of ``IterationCount``.

A ladder's counts must equal the plain count after every batch, whatever changed a counter in
between; a count read or saved earlier must never change afterwards.
"""

import numpy as np
import pytest

from datarax import Pipeline
from datarax.core.module import IterationCount
from datarax.operators import ElementOperator, ElementOperatorConfig
from datarax.pipeline.counts import RUNGS, CountLadder, frozen_counts, frozen_sum
from datarax.sources import MemorySource, MemorySourceConfig


def test_frozen_counts_are_read_only_int32_and_wrap_like_int32():
    counts = frozen_counts(10, 3, 4)
    assert [int(c) for c in counts] == [13, 16, 19, 22]
    assert all(c.shape == () and c.dtype == np.int32 and not c.flags.writeable for c in counts)
    assert int(frozen_sum(np.array(2**31 - 1, np.int32), 1)) == -(2**31)


def test_a_ladder_matches_the_plain_count_over_many_rungs_and_a_partial_batch():
    a, b = IterationCount(np.array(0, np.int32)), IterationCount(np.array(7, np.int32))
    ladder = CountLadder([a, b])
    steps = [128] * (2 * RUNGS + 5) + [3] + [128] * 4
    for rows in steps:
        ladder.add(rows)
    assert int(a[...]) == sum(steps) and int(b[...]) == 7 + sum(steps)


def test_counters_at_the_same_count_share_read_only_arrays():
    a, b = IterationCount(np.array(0, np.int32)), IterationCount(np.array(0, np.int32))
    ladder = CountLadder([a, b])
    ladder.add(4)
    assert a.get_raw_value() is b.get_raw_value()
    with pytest.raises(ValueError, match="read-only"):
        a.get_raw_value()[...] = 99


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.__setitem__(..., 100),
        lambda c: c.set_value(np.array(100, np.int32)),
        lambda c: c.set_raw_value(np.array(100, np.int32)),
    ],
    ids=["setitem", "set_value", "set_raw_value"],
)
def test_a_count_changed_between_batches_is_read_again(change):
    a, b = IterationCount(np.array(0, np.int32)), IterationCount(np.array(0, np.int32))
    ladder = CountLadder([a, b])
    ladder.add(5)
    change(a)
    ladder.add(5)
    assert (int(a[...]), int(b[...])) == (105, 10)


def test_iteration_count_reads_copies_and_writes_by_replacing():
    count = IterationCount(np.array(3, np.int32))
    saved = count.get_raw_value()
    read = count[...]
    read += 40  # the caller's copy
    count[...] += 2
    assert (int(count[...]), int(saved), int(read)) == (5, 3, 43)


def make_pipeline():
    data = {"x": np.arange(50, dtype=np.int32)}
    ops = [ElementOperator(ElementOperatorConfig(), fn=lambda e, k: e) for _ in range(2)]
    return Pipeline(source=MemorySource(MemorySourceConfig(), data=data), stages=ops, batch_size=4), ops


def test_a_pipeline_state_taken_mid_epoch_keeps_its_counts():
    pipeline, ops = make_pipeline()
    iterator = iter(pipeline)
    for _ in range(3):
        next(iterator)
    saved = [op._applied_count.get_raw_value() for op in ops]
    state = ops[0].get_state()
    counts = [int(c) for c in saved]
    for _ in range(5):
        next(iterator)
    assert [int(c) for c in saved] == counts == [12, 12]
    assert int(np.asarray(state["_applied_count"])) == 12
    assert ops[0].get_operation_stats()["applied_count"] == 32


def test_two_iterators_and_a_reset_between_batches_count_exactly():
    pipeline, ops = make_pipeline()
    first, second = iter(pipeline), iter(pipeline)
    for _ in range(3):
        next(first)
        next(second)
    assert [op.get_operation_stats()["applied_count"] for op in ops] == [24, 24]
    ops[1].reset_operation_stats()
    ops[0]._applied_count[...] += 1000
    next(first)
    assert [op.get_operation_stats()["applied_count"] for op in ops] == [1028, 4]
    rest = sum(1 for _ in first)  # to the end of the epoch: 50 records, the last batch has 2
    assert rest == 13 - 4
    assert [op.get_operation_stats()["applied_count"] for op in ops] == [1028 + 34, 4 + 34]  # 8 x 4 + 2 rows

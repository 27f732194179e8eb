"""Operation counts folded in when read (``datarax.core.row_tally``) and the value semantics of ``IterationCount``.

A counter that follows tallies must read, at every moment and through every way of reading a
variable (its value, ``nnx.state``, copies, checkpoints, transforms), exactly what writing the
count on every batch would give, whatever changed the counter in between; a count read or saved
earlier must never change afterwards.
"""

import copy
import gc
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from datarax import Pipeline
from datarax.core import row_tally
from datarax.core.module import IterationCount
from datarax.core.row_tally import RowTally, follow, frozen_sum
from datarax.operators import ElementOperator, ElementOperatorConfig
from datarax.sources import MemorySource, MemorySourceConfig


class Owner:
    """Stands for an iterator's binding: what keeps a tally counting."""


def counting(*starts):
    owner = Owner()
    counters = [IterationCount(np.array(s, np.int32)) for s in starts]
    tally = follow(counters, RowTally(owner))
    return owner, tally, counters


def test_lazy_counts_are_in_use_with_this_flax():
    assert row_tally.LAZY  # otherwise every test below exercises the eager fallback only
    assert isinstance(IterationCount.__dict__["_raw_value"], property)


def test_frozen_sum_is_read_only_int32_and_wraps_like_int32():
    total = frozen_sum(np.array(2**31 - 1, np.int32), 1)
    assert int(total) == -(2**31) and total.dtype == np.int32 and total.shape == ()
    with pytest.raises(ValueError, match="read-only"):
        total[...] = 0


def test_a_followed_count_equals_the_plain_count_after_every_batch():
    _, tally, (a, b) = counting(0, 7)
    plain = 0
    for rows in [128] * 150 + [3] + [128] * 4:
        tally.rows += rows
        plain += rows
        assert (int(a[...]), int(b[...])) == (plain, 7 + plain)


def test_folded_counts_are_read_only_values_and_earlier_reads_never_change():
    _, tally, (count,) = counting(3)
    tally.rows += 10
    saved = count.get_raw_value()
    read = count[...]
    read += 40  # the caller's copy
    tally.rows += 5
    assert (int(saved), int(read), int(count[...])) == (13, 53, 18)
    with pytest.raises(ValueError, match="read-only"):
        count.get_raw_value()[...] = 99


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.__setitem__(..., 100),
        lambda c: c.set_value(np.array(100, np.int32)),
        lambda c: c.set_raw_value(np.array(100, np.int32)),
        lambda c: nnx.update(nnx.Dict(c=c), nnx.State({"c": nnx.Variable(np.array(100, np.int32))})),
    ],
    ids=["setitem", "set_value", "set_raw_value", "nnx.update"],
)
def test_a_write_supersedes_the_rows_tallied_before_it(change):
    _, tally, (a, b) = counting(0, 0)
    tally.rows += 5
    change(a)
    tally.rows += 5
    assert (int(a[...]), int(b[...])) == (105, 10)


def test_copies_hold_the_count_as_read_and_follow_nothing():
    _, tally, (count,) = counting(0)
    tally.rows += 4
    holder = nnx.Dict(c=count)
    copies = {
        "deepcopy": copy.deepcopy(count),
        "pickle": pickle.loads(pickle.dumps(count)),
        "nnx.clone": nnx.clone(holder)["c"],
    }
    live = nnx.state(holder)["c"]  # flax 0.12: the state of a module holds its live variables
    tally.rows += 6
    assert {name: int(c[...]) for name, c in copies.items()} == dict.fromkeys(copies, 4)
    assert int(count[...]) == int(live[...]) == 10


def test_a_counter_follows_several_tallies_and_folds_a_closed_one_in():
    first_owner, first, (count,) = counting(0)
    second_owner = Owner()
    second = follow([count], RowTally(second_owner))
    first.rows += 3
    second.rows += 4
    assert int(count[...]) == 7
    first.rows += 10  # not read before its owner goes: still counted
    del first_owner
    gc.collect()
    assert not first.open
    second.rows += 1
    assert int(count[...]) == 18
    assert len(IterationCount._links_slot.__get__(count)) == 1  # the closed tally is dropped


def test_a_count_read_inside_jit_and_written_by_an_nnx_jit_step():
    _, tally, (count,) = counting(0)
    holder = nnx.Dict(c=count)
    tally.rows += 6

    @nnx.jit
    def double(h):
        h["c"][...] = h["c"][...] * 2

    double(holder)
    assert int(count[...]) == 12
    tally.rows += 1
    assert int(jax.jit(lambda x: x + 1)(count[...])) == 14


def test_the_eager_fallback_counts_the_same():
    counters = [IterationCount(np.array(s, np.int32)) for s in (0, 9)]
    eager = row_tally._EagerTally(counters)
    for rows in (4, 4, 2):
        eager.rows += rows
    assert [int(c[...]) for c in counters] == [10, 19]


def make_pipeline(ops=None, n=50):
    data = {"x": np.arange(n, dtype=np.int32)}
    ops = ops or [ElementOperator(ElementOperatorConfig(), fn=lambda e, k: e) for _ in range(2)]
    return Pipeline(source=MemorySource(MemorySourceConfig(), data=data), stages=ops, batch_size=4), ops


def test_a_pipeline_state_taken_mid_epoch_keeps_its_counts():
    pipeline, ops = make_pipeline()
    iterator = iter(pipeline)
    for _ in range(3):
        next(iterator)
    saved = [op._applied_count.get_raw_value() for op in ops]
    state = ops[0].get_state()
    for _ in range(5):
        next(iterator)
    assert [int(c) for c in saved] == [12, 12]
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


def test_one_operator_in_two_pipelines_and_a_dropped_iterator_count_every_row():
    op = ElementOperator(ElementOperatorConfig(), fn=lambda e, k: e)
    small, _ = make_pipeline([op], n=10)
    large, _ = make_pipeline([op], n=30)
    it_small, it_large = iter(small), iter(large)
    next(it_small)
    next(it_large)
    next(it_large)
    del it_small  # its rows are kept when its tally closes
    gc.collect()
    assert op.get_operation_stats()["applied_count"] == 12
    assert sum(1 for _ in iter(small)) == 3
    assert op.get_operation_stats()["applied_count"] == 22


def test_counts_round_trip_an_orbax_checkpoint_mid_epoch(tmp_path):
    pipeline, ops = make_pipeline()
    iterator = iter(pipeline)
    for _ in range(5):
        next(iterator)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ops", nnx.state(nnx.List(ops)))
    for _ in range(2):
        next(iterator)
    restored_pipeline, restored_ops = make_pipeline()
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "ops", nnx.state(nnx.List(restored_ops)))
    nnx.update(nnx.List(restored_ops), restored)
    assert [op.get_operation_stats()["applied_count"] for op in restored_ops] == [20, 20]
    assert [op.get_operation_stats()["applied_count"] for op in ops] == [28, 28]
    restored_iterator = iter(restored_pipeline)
    next(restored_iterator)
    assert [op.get_operation_stats()["applied_count"] for op in restored_ops] == [24, 24]


def test_a_count_held_as_a_jax_array_is_folded_to_the_same_value():
    owner = Owner()
    count = IterationCount(jnp.array(5, jnp.int32))
    tally = follow([count], RowTally(owner))
    tally.rows += 2
    assert int(count[...]) == 7

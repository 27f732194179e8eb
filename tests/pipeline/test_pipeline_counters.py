"""Operation counters: every operator counts the valid records it transformed and passed through.

Each counted operator leaves a visible mark in its own column, so the expected counts are read off
the batches' valid rows; the probabilistic and selector counts are also recomputed from the seed
contract (``node_key`` + ``record_keys``). Padding rows (``valid_mask`` False) are never counted,
and the counts are the same whatever path computed the batches: iteration with or without
prefetch, ``Pipeline.scan``, ``nnx.jit``, ``nnx.vmap``, and a checkpoint restored mid-epoch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from pipeline_helpers import collect, to_numpy

from datarax import Pipeline
from datarax.checkpoint import OrbaxCheckpointHandler
from datarax.core.batch_form import VALID_MASK
from datarax.core.module import IterationCount
from datarax.core.prng import node_key, record_keys
from datarax.operators import (
    CompositeOperator,
    CompositeOperatorConfig,
    ElementOperator,
    ElementOperatorConfig,
    ProbabilisticOperator,
    ProbabilisticOperatorConfig,
    SelectorOperator,
    SelectorOperatorConfig,
)
from datarax.sources import MemorySource, MemorySourceConfig

N, B, EPOCHS = 13, 4, 2  # 4 batches per epoch; the last one has 1 valid row and 3 padding rows
SEED, P, WEIGHTS = 5, 0.4, (1.0, 2.0, 1.0)


def make_marked_source(n=N):
    """``label`` = index; ``seen``/``coin``/``pick``/``branch`` = 0, set by the operators under test."""
    label = np.arange(n, dtype=np.int32)
    zeros = np.zeros(n, dtype=np.int32)
    data = {"label": label, "seen": zeros, "coin": zeros, "pick": zeros, "branch": zeros}
    return MemorySource(MemorySourceConfig(), data=data)


def see(element, key):
    return {**element, "seen": element["seen"] + 1}


def flip_coin(element, key):
    return {**element, "coin": jnp.int32(1)}


def pick_1(element, key):
    return {**element, "pick": jnp.int32(1)}


def pick_2(element, key):
    return {**element, "pick": jnp.int32(2)}


def pick_3(element, key):
    return {**element, "pick": jnp.int32(3)}


def branch_1(element, key):
    return {**element, "branch": jnp.int32(1)}


def branch_2(element, key):
    return {**element, "branch": jnp.int32(2)}


def label_mod_3_is_0(element):
    return element["label"] % 3 == 0


def label_mod_3_is_1(element):
    return element["label"] % 3 == 1


def _op(fn):
    return ElementOperator(ElementOperatorConfig(), fn=fn)


class Ops:
    """The operators of one pipeline, by role."""

    def __init__(self):
        self.element = _op(see)
        self.coin_child = _op(flip_coin)
        self.coin = ProbabilisticOperator(
            ProbabilisticOperatorConfig(probability=P, stochastic=True, stream_name="coin"), self.coin_child
        )
        self.pick_children = [_op(pick_1), _op(pick_2), _op(pick_3)]
        self.selector = SelectorOperator(
            SelectorOperatorConfig(weights=WEIGHTS, stochastic=True, stream_name="pick"), self.pick_children
        )
        self.branch_children = [_op(branch_1), _op(branch_2)]
        self.branch = CompositeOperator(
            CompositeOperatorConfig(strategy="branch"),
            self.branch_children,
            conditions=[label_mod_3_is_0, label_mod_3_is_1],  # one per child: the identity is the default
        )

    def stages(self):
        return [self.element, self.coin, self.selector, self.branch]

    def named(self):
        ops = {"element": self.element, "coin": self.coin, "coin_child": self.coin_child}
        ops.update({"selector": self.selector, "branch": self.branch})
        ops.update({f"pick_{i + 1}": op for i, op in enumerate(self.pick_children)})
        ops.update({f"branch_{i + 1}": op for i, op in enumerate(self.branch_children)})
        return ops

    def counts(self):
        return {name: op.get_operation_stats() for name, op in self.named().items()}


def build(prefetch=2, num_epochs=EPOCHS, n=N):
    ops = Ops()
    pipeline = Pipeline(
        source=make_marked_source(n),
        stages=ops.stages(),
        batch_size=B,
        rngs=nnx.Rngs(SEED),
        shuffle=True,
        num_epochs=num_epochs,
        prefetch=prefetch,
    )
    return ops, pipeline


def stats(applied, skipped=0):
    return {"applied_count": int(applied), "skipped_count": int(skipped)}


def counts_from_batches(batches, valid_only=True):
    """The counts every operator should report, read off the marks in the batches' rows."""
    rows = {k: [] for k in ("seen", "coin", "pick", "branch")}
    for batch in batches:
        keep = np.asarray(batch[VALID_MASK]) if valid_only else np.ones_like(batch[VALID_MASK])
        for key in rows:
            rows[key].append(np.asarray(batch[key])[keep])
    seen, coin, pick, branch = (np.concatenate(rows[k]) for k in ("seen", "coin", "pick", "branch"))
    total = len(seen)
    assert np.all(seen == 1)  # every row went through the element operator exactly once
    return {
        "element": stats(total),
        "coin": stats(np.sum(coin == 1), np.sum(coin == 0)),
        "coin_child": stats(np.sum(coin == 1)),
        "selector": stats(total),
        "pick_1": stats(np.sum(pick == 1)),
        "pick_2": stats(np.sum(pick == 2)),
        "pick_3": stats(np.sum(pick == 3)),
        "branch": stats(np.sum(branch > 0), np.sum(branch == 0)),
        "branch_1": stats(np.sum(branch == 1)),
        "branch_2": stats(np.sum(branch == 2)),
    }


def counts_from_draws(epochs=range(EPOCHS)):
    """The coin and selector counts recomputed from the seed contract alone."""
    coin_hits, picks = 0, np.zeros(3, dtype=int)
    logits = jnp.log(jnp.asarray(WEIGHTS, dtype=jnp.float32) / sum(WEIGHTS))
    for epoch in epochs:
        coin_keys = record_keys(node_key(SEED, "coin"), epoch, jnp.arange(N))
        u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), ()))(coin_keys)
        coin_hits += int(jnp.sum(u < P))
        pick_keys = record_keys(node_key(SEED, "pick"), epoch, jnp.arange(N))
        chosen = jax.vmap(lambda k: jax.random.categorical(jax.random.fold_in(k, 0), logits))(pick_keys)
        picks += np.bincount(np.asarray(chosen), minlength=3)
    total = N * len(epochs)
    return {
        "coin": stats(coin_hits, total - coin_hits),
        "coin_child": stats(coin_hits),
        "pick_1": stats(picks[0]),
        "pick_2": stats(picks[1]),
        "pick_3": stats(picks[2]),
    }


def assert_counts(ops, want):
    got = ops.counts()
    assert got == want, {k: (got[k], want[k]) for k in want if got[k] != want[k]}


@pytest.fixture(scope="module")
def reference():
    ops, pipeline = build(prefetch=0)
    batches = collect(pipeline)
    assert len(batches) == EPOCHS * 4
    return ops.counts(), batches


# -- (a) plain iteration -------------------------------------------------------


@pytest.mark.parametrize("prefetch", [0, 3])
def test_iteration_counts_valid_records(reference, prefetch):
    want, ref_batches = reference
    ops, pipeline = build(prefetch=prefetch)
    batches = collect(pipeline)
    assert_counts(ops, counts_from_batches(batches))
    assert ops.counts() == want  # the same counts whatever the prefetch depth
    draws = counts_from_draws()
    assert {k: want[k] for k in draws} == draws
    # Every counter saw work, and the sums hold.
    total = EPOCHS * N
    assert want["element"] == want["selector"] == stats(total)
    assert sum(want["coin"].values()) == total
    assert 0 < want["coin"]["applied_count"] < total
    assert sum(want[f"pick_{i}"]["applied_count"] for i in (1, 2, 3)) == total
    assert all(want[f"pick_{i}"]["applied_count"] > 0 for i in (1, 2, 3))
    assert want["branch"]["applied_count"] == sum(want[f"branch_{i}"]["applied_count"] for i in (1, 2))
    assert want["branch"]["skipped_count"] == EPOCHS * sum(r % 3 == 2 for r in range(N))  # no condition holds


def test_padding_rows_are_never_counted(reference):
    want, batches = reference
    assert [int(b[VALID_MASK].sum()) for b in batches] == [4, 4, 4, 1] * EPOCHS
    with_padding = counts_from_batches(batches, valid_only=False)
    assert with_padding["element"] == stats(EPOCHS * 4 * B)  # 32 rows were computed ...
    assert want["element"] == stats(EPOCHS * N)  # ... 26 were counted
    assert want == counts_from_batches(batches)


def test_a_whole_epoch_of_padding_free_batches_counts_every_row():
    # drop_remainder: no padding rows, 3 full batches per epoch, the last record of each epoch dropped.
    ops = Ops()
    pipeline = Pipeline(
        source=make_marked_source(),
        stages=ops.stages(),
        batch_size=B,
        rngs=nnx.Rngs(SEED),
        shuffle=True,
        drop_remainder=True,
        num_epochs=1,
    )
    batches = collect(pipeline)
    assert len(batches) == 3 and all(b[VALID_MASK].all() for b in batches)
    assert_counts(ops, counts_from_batches(batches))
    assert ops.counts()["element"] == stats(12)


# -- (b) scan ------------------------------------------------------------------


def test_scan_counts_like_iteration(reference):
    want, ref_batches = reference
    ops, pipeline = build()
    first = pipeline.scan(lambda batch: batch, length=3)  # ends inside epoch 0
    rest = pipeline.scan(lambda batch: batch, length=5)  # crosses into epoch 1 and ends it
    batches = [
        to_numpy(jax.tree.map(lambda a, t=t: a[t], out)) for out in (first, rest) for t in range(len(out["label"]))
    ]
    for got, ref in zip(batches, ref_batches, strict=True):
        np.testing.assert_array_equal(got["label"], ref["label"])
    assert_counts(ops, want)
    assert_counts(ops, counts_from_batches(batches))


def test_scan_continues_the_counts_of_iteration(reference):
    want, _ = reference
    ops, pipeline = build(prefetch=2)
    iterator = iter(pipeline)
    for _ in range(3):
        next(iterator)
    pipeline.scan(lambda batch: batch["label"], length=5, iterator=iterator)
    assert iterator.exhausted
    assert_counts(ops, want)


# -- (c) nnx.jit ---------------------------------------------------------------


def _raw_batch(n=6, valid=4):
    """``n`` records of the marked source as one batch, the last ``n - valid`` rows padding."""
    label = jnp.arange(n, dtype=jnp.int32)
    zeros = jnp.zeros(n, dtype=jnp.int32)
    return {"label": label, "seen": zeros, "coin": zeros, "pick": zeros, "branch": zeros, VALID_MASK: label < valid}


def test_apply_batch_under_nnx_jit_counts():
    ops = Ops()
    batch = _raw_batch()
    keys = record_keys(node_key(SEED, "coin"), 0, batch["label"])

    @nnx.jit
    def apply(op, batch, keys):
        return op.apply_batch(batch, keys)

    out = apply(ops.coin, batch, keys)
    hits = int(np.sum(np.asarray(out["coin"])[:4] == 1))
    draws = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), ()))(keys)
    assert hits == int(jnp.sum(draws[:4] < P))
    assert ops.coin.get_operation_stats() == stats(hits, 4 - hits)
    assert ops.coin_child.get_operation_stats() == stats(hits)
    apply(ops.coin, batch, keys)  # the compiled call counts again
    assert ops.coin.get_operation_stats() == stats(2 * hits, 2 * (4 - hits))

    # Eagerly, the same.
    eager = Ops()
    eager.coin.apply_batch(batch, keys)
    assert eager.coin.get_operation_stats() == stats(hits, 4 - hits)


def test_compute_batch_under_nnx_jit_counts_like_iteration(reference):
    want, ref_batches = reference
    ops, pipeline = build()
    compute = nnx.jit(lambda p, epoch, start: p.compute_batch(epoch, start))
    batches = [to_numpy(compute(pipeline, jnp.int32(t // 4), jnp.int32(B * (t % 4)))) for t in range(EPOCHS * 4)]
    for got, ref in zip(batches, ref_batches, strict=True):
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key])
    assert_counts(ops, want)


def test_plain_jax_jit_over_a_closed_over_operator_leaves_counters_unchanged():
    ops = Ops()
    out = jax.jit(lambda batch: ops.element.apply_batch(batch))(_raw_batch())
    assert np.asarray(out["seen"]).tolist() == [1] * 6
    assert ops.element.get_operation_stats() == stats(0)  # documented: nowhere to put them


# -- (d) nnx.vmap --------------------------------------------------------------


def test_per_shard_counters_under_nnx_vmap_sum_to_the_total():
    shards, rows = 3, 4
    batch = _raw_batch(shards * rows, valid=10)  # shard 2 holds 2 padding rows
    keys = record_keys(node_key(SEED, "coin"), 0, batch["label"])
    whole = Ops()
    whole_out = whole.coin.apply_batch(batch, keys)

    ops = Ops()
    for op in ops.coin.counted_operators():  # one counter per shard
        op._applied_count.set_value(jnp.zeros((shards,), jnp.int32))
        op._skipped_count.set_value(jnp.zeros((shards,), jnp.int32))
    counters_per_shard = nnx.StateAxes({IterationCount: 0, ...: None})

    @nnx.vmap(in_axes=(counters_per_shard, 0, 0))
    def apply(op, batch, keys):
        return op.apply_batch(batch, keys)

    stacked = jax.tree.map(lambda a: a.reshape(shards, rows, *a.shape[1:]), batch)
    out = apply(ops.coin, stacked, keys.reshape(shards, rows))
    np.testing.assert_array_equal(np.asarray(out["coin"]).reshape(-1), np.asarray(whole_out["coin"]))

    coin = np.asarray(out["coin"])
    valid = np.asarray(stacked[VALID_MASK])
    applied = np.sum((coin == 1) & valid, axis=1)
    skipped = np.sum((coin == 0) & valid, axis=1)
    np.testing.assert_array_equal(np.asarray(ops.coin._applied_count[...]), applied)
    np.testing.assert_array_equal(np.asarray(ops.coin._skipped_count[...]), skipped)
    np.testing.assert_array_equal(np.asarray(ops.coin_child._applied_count[...]), applied)
    assert applied.sum() + skipped.sum() == 10
    assert int(ops.coin._applied_count[...].sum()) == whole.coin.get_operation_stats()["applied_count"]
    assert int(ops.coin._skipped_count[...].sum()) == whole.coin.get_operation_stats()["skipped_count"]


# -- (e) counters are state ----------------------------------------------------


def test_counters_are_module_state_and_survive_orbax(tmp_path, reference):
    want, _ = reference
    ops, pipeline = build()
    collect(pipeline)
    state = ops.coin.get_state()
    assert int(state["_applied_count"]) == want["coin"]["applied_count"]
    assert int(state["_skipped_count"]) == want["coin"]["skipped_count"]
    assert int(state["operator"]["_applied_count"]) == want["coin_child"]["applied_count"]
    assert (
        int(pipeline.get_state()["nodes"]["stage_2"]["operators"]["1"]["_applied_count"])
        == (want["pick_2"]["applied_count"])
    )

    # The datarax handler, on the whole pipeline.
    with OrbaxCheckpointHandler(tmp_path / "handler") as handler:
        handler.save(1, pipeline)
        handler.wait_until_finished()
        fresh_ops, fresh = build()
        assert fresh_ops.counts()["element"] == stats(0)
        assert handler.restore(fresh) == 1
    assert_counts(fresh_ops, want)

    # Orbax directly, on one operator's NNX state.
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "direct", nnx.state(ops.selector))
    checkpointer.wait_until_finished()
    target = Ops()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(target.selector))
    nnx.update(target.selector, checkpointer.restore(tmp_path / "direct", abstract))
    assert target.selector.get_operation_stats() == want["selector"]
    for i in (1, 2, 3):
        assert target.pick_children[i - 1].get_operation_stats() == want[f"pick_{i}"]


# -- (f) resume ----------------------------------------------------------------


def test_counts_saved_mid_epoch_continue_after_restore(tmp_path, reference):
    want, ref_batches = reference
    ops, pipeline = build(prefetch=3)
    iterator = iter(pipeline)
    head = [to_numpy(next(iterator)) for _ in range(6)]  # into epoch 1; 3 more batches dispatched ahead
    assert iterator.get_state()["epoch"] == 1 and iterator.get_state()["position"] == 8
    # What has been handed out is counted, not what was computed ahead.
    assert_counts(ops, counts_from_batches(head))
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(6, {"pipeline": pipeline, "iterator": iterator})
        handler.wait_until_finished()
        fresh_ops, fresh = build(prefetch=3)
        fresh_iterator = iter(fresh)
        handler.restore({"pipeline": fresh, "iterator": fresh_iterator})
    assert_counts(fresh_ops, counts_from_batches(head))
    rest = collect(fresh_iterator)
    assert len(rest) == 2
    for got, ref in zip(rest, ref_batches[6:], strict=True):
        np.testing.assert_array_equal(got["label"], ref["label"])
    assert_counts(fresh_ops, want)  # the resumed run counts exactly as the uninterrupted one


# -- (g) reset -----------------------------------------------------------------


def test_reset_zeroes_the_counters_and_counting_starts_again(reference):
    want, _ = reference
    ops, pipeline = build(num_epochs=1)
    collect(pipeline)
    for op in ops.named().values():
        op.reset_operation_stats()
    assert all(c == stats(0) for c in ops.counts().values())
    second = collect(pipeline)  # the next iterator runs epoch 1
    assert_counts(ops, counts_from_batches(second))
    draws = counts_from_draws(epochs=[1])
    assert {k: ops.counts()[k] for k in draws} == draws


@pytest.mark.parametrize("prefetch", [0, 3])
def test_reset_in_the_middle_of_an_iterator_counts_from_zero(prefetch):
    ops, pipeline = build(prefetch=prefetch, num_epochs=1)
    iterator = iter(pipeline)
    next(iterator)
    for op in ops.named().values():
        op.reset_operation_stats()
    rest = collect(iterator)
    assert len(rest) == 3
    # Only the batches handed out after the reset are counted.
    assert_counts(ops, counts_from_batches(rest))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_two_iterators_of_one_pipeline_both_count(prefetch):
    ops, pipeline = build(prefetch=prefetch, num_epochs=1)
    first, second = iter(pipeline), iter(pipeline)
    batches = []
    for _ in range(4):
        batches.append(to_numpy(next(first)))
        batches.append(to_numpy(next(second)))
    assert_counts(ops, counts_from_batches(batches))


def test_a_state_taken_after_a_pipeline_run_is_not_changed_by_counting_outside_it():
    # The pipeline commits its counts as NumPy arrays, which counting outside it adds into in
    # place (`counter[...] += n`); a state taken before keeps its numbers (get_state copies them).
    flip = ElementOperator(
        ElementOperatorConfig(stochastic=True, stream_name="flip"), fn=lambda e, k: {**e, "x": e["x"][::-1]}
    )
    source = MemorySource(MemorySourceConfig(), data={"x": np.zeros((8, 3), np.float32)})
    list(Pipeline(source=source, stages=[flip], batch_size=4, rngs=nnx.Rngs(0)))
    state = flip.get_state()
    assert int(state["_applied_count"]) == 8
    batch = {"x": jnp.zeros((4, 3)), VALID_MASK: jnp.array([True, True, True, False])}
    flip.apply_batch(batch, keys=jax.random.split(jax.random.key(0), 4))
    assert flip.get_operation_stats()["applied_count"] == 11
    assert int(state["_applied_count"]) == 8, "the earlier state changed"
    flip.set_state(state)
    assert flip.get_operation_stats()["applied_count"] == 8

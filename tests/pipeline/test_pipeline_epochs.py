"""Exact epochs: every record once per epoch, order a function of (seed, epoch), padding, streaming."""

import itertools
import math

import numpy as np
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pipeline_helpers import collect, make_source, valid_labels

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.samplers import feistel_permutation_np


def _check_batch_spec(pipeline, batch):
    spec = pipeline.batch_spec()
    assert set(batch) == set(spec)
    for key, s in spec.items():
        assert batch[key].shape == s.shape, key
        assert batch[key].dtype == s.dtype, key


def _epoch_order(pipeline, epoch):
    if pipeline.shuffle:
        return feistel_permutation_np(pipeline.num_records, pipeline.seed, epoch).tolist()
    return list(range(pipeline.num_records))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 200),
    batch_size=st.integers(1, 64),
    num_epochs=st.integers(1, 3),
    shuffle=st.booleans(),
    drop_remainder=st.booleans(),
)
def test_every_epoch_serves_every_record_once(n, batch_size, num_epochs, shuffle, drop_remainder):
    drop_remainder = drop_remainder and n >= batch_size  # otherwise a construction error (tested elsewhere)
    pipeline = Pipeline(
        source=make_source(n),
        batch_size=batch_size,
        shuffle=shuffle,
        rngs=nnx.Rngs(7),
        drop_remainder=drop_remainder,
        num_epochs=num_epochs,
        prefetch=1,
    )
    per_epoch = n // batch_size if drop_remainder else math.ceil(n / batch_size)
    assert len(pipeline) == per_epoch
    batches = collect(pipeline)
    assert len(batches) == num_epochs * per_epoch

    orders = []
    for epoch in range(num_epochs):
        epoch_batches = batches[epoch * per_epoch : (epoch + 1) * per_epoch]
        for batch in epoch_batches:
            _check_batch_spec(pipeline, batch)
            # Every row, padding included, holds a real record's values.
            assert np.all((batch["label"] >= 0) & (batch["label"] < n))
            np.testing.assert_array_equal(batch["x"], batch["label"].astype(np.float32) / 2)
        order = valid_labels(epoch_batches)
        expected = _epoch_order(pipeline, epoch)
        if drop_remainder:
            assert order == expected[: per_epoch * batch_size]
            assert all(b[VALID_MASK].all() for b in epoch_batches)
        else:
            assert order == expected
            assert sorted(order) == list(range(n))
            rest = n % batch_size
            last = epoch_batches[-1]
            if rest:
                assert last[VALID_MASK].tolist() == [True] * rest + [False] * (batch_size - rest)
                # Padding rows copy the epoch's last real row.
                assert np.all(last["label"][rest:] == order[-1])
                assert np.all(last["x"][rest:] == last["x"][rest - 1])
            else:
                assert last[VALID_MASK].all()
            assert all(b[VALID_MASK].all() for b in epoch_batches[:-1])
        orders.append(order)
    if shuffle and n >= 10:
        assert all(a != b for a, b in itertools.combinations(orders, 2))


def test_drop_remainder_drops_only_the_short_batch():
    pipeline = Pipeline(source=make_source(10), batch_size=4, drop_remainder=True, num_epochs=2)
    batches = collect(pipeline)
    assert len(pipeline) == 2
    assert [b["label"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2
    assert all(b[VALID_MASK].all() for b in batches)


def test_reiterating_gives_new_epochs_and_new_pipelines_start_at_epoch_zero():
    def build():
        return Pipeline(source=make_source(37), batch_size=8, shuffle=True, rngs=nnx.Rngs(3), num_epochs=1)

    pipeline = build()
    epochs = []
    for _ in range(3):
        batches = [b for b in pipeline]
        assert len(batches) == len(pipeline) == 5
        epochs.append(valid_labels(batches))
    for epoch, order in enumerate(epochs):
        assert sorted(order) == list(range(37))  # a full epoch, never empty
        assert order == feistel_permutation_np(37, pipeline.seed, epoch).tolist()
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]  # never a silent repeat
    assert int(pipeline.next_epoch.get_value()) == 3

    fresh = build()  # the same seed, built anew: epoch 0 again
    assert int(fresh.next_epoch.get_value()) == 0
    assert valid_labels(collect(fresh)) == epochs[0]


def test_a_partly_consumed_iterator_counts_as_a_started_epoch():
    pipeline = Pipeline(source=make_source(12), batch_size=4, shuffle=True, rngs=nnx.Rngs(0))
    first = next(iter(pipeline))
    second_epoch = valid_labels(collect(pipeline))
    assert second_epoch == feistel_permutation_np(12, pipeline.seed, 1).tolist()
    assert first["label"].tolist() == feistel_permutation_np(12, pipeline.seed, 0)[:4].tolist()


def test_unseen_iterators_do_not_skip_epochs():
    pipeline = Pipeline(source=make_source(6), batch_size=3, num_epochs=1)
    iter(pipeline)  # never advanced: no epoch started
    assert valid_labels(collect(pipeline)) == list(range(6))
    assert int(pipeline.next_epoch.get_value()) == 1


def test_num_epochs_none_streams_forever():
    pipeline = Pipeline(source=make_source(11), batch_size=4, shuffle=True, rngs=nnx.Rngs(1), num_epochs=None)
    iterator = iter(pipeline)
    per_epoch = len(pipeline)
    assert per_epoch == 3
    batches = collect(itertools.islice(iterator, 5 * per_epoch))
    assert len(batches) == 5 * per_epoch
    orders = [valid_labels(batches[e * per_epoch : (e + 1) * per_epoch]) for e in range(5)]
    for epoch, order in enumerate(orders):
        assert order == feistel_permutation_np(11, pipeline.seed, epoch).tolist()
    assert len({tuple(o) for o in orders}) == 5
    assert iterator.epoch == 5 and iterator.position == 0
    nxt = next(iterator)  # still going
    assert nxt["label"][:4].tolist() == feistel_permutation_np(11, pipeline.seed, 5)[:4].tolist()


def test_a_different_seed_gives_a_different_order():
    def first_epoch(seed):
        p = Pipeline(source=make_source(30), batch_size=30, shuffle=True, rngs=nnx.Rngs(seed), prefetch=0)
        return valid_labels(collect(p))

    a, b = first_epoch(5), first_epoch(6)
    assert sorted(a) == sorted(b) == list(range(30))
    assert a != b


def test_batch_spec_and_len():
    pipeline = Pipeline(source=make_source(9), batch_size=4, shuffle=True, rngs=nnx.Rngs(0), num_epochs=2)
    spec = pipeline.batch_spec()
    assert {k: (v.shape, np.dtype(v.dtype)) for k, v in spec.items()} == {
        "label": ((4,), np.dtype(np.int32)),
        "x": ((4,), np.dtype(np.float32)),
        VALID_MASK: ((4,), np.dtype(bool)),
    }
    assert pipeline.element_spec()["x"].shape == ()
    batches = collect(pipeline)
    assert len(batches) == 2 * len(pipeline) == 6
    for batch in batches:
        _check_batch_spec(pipeline, batch)

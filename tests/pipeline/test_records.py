"""RecordSchedule: which records each batch holds, computed a chunk of batches at a time.

Batch ``(epoch, start)`` holds ``perm(seed, epoch)[min(start + i, n - 1)]`` for ``i < B`` (the
Feistel permutation, or the identity): padding rows repeat the epoch's last record. The schedule is
checked against ``feistel_permute_np`` both with its host default and with a real pipeline's device
chunk, over several epochs and several chunks, and the pipeline's stream against the schedule.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from pipeline_helpers import collect, make_source

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.core.config import StructuralConfig
from datarax.core.data_source import DataSourceModule
from datarax.pipeline.binding import StepBinding
from datarax.pipeline.records import CHUNK_POSITIONS, RecordSchedule, chunk_size
from datarax.pipeline.stream import StreamSpec
from datarax.samplers import SequentialSampler, SequentialSamplerConfig, ShuffleSampler, ShuffleSamplerConfig
from datarax.samplers.feistel import feistel_permute_np

SEED = 29
EPOCHS = 3


def _expected(n, batch_size, seed, shuffle, epoch, start):
    positions = np.minimum(np.arange(start, start + batch_size, dtype=np.int64), n - 1)
    return feistel_permute_np(positions, n, seed, epoch) if shuffle else positions


def _stream(n, batch_size, shuffle, seed=SEED, drop_remainder=False):
    return StreamSpec(
        num_records=n,
        batch_size=batch_size,
        drop_remainder=drop_remainder,
        shuffle=shuffle,
        seed=seed,
        fingerprint=0,
    )


def _sampler(shuffle, seed=SEED):
    return ShuffleSampler(ShuffleSamplerConfig(seed=seed)) if shuffle else SequentialSampler(SequentialSamplerConfig())


def _pipeline(n, batch_size, shuffle, seed=SEED, **kwargs):
    return Pipeline(
        source=make_source(n),
        batch_size=batch_size,
        rngs=nnx.Rngs(seed),
        shuffle=shuffle,
        num_epochs=EPOCHS,
        **kwargs,
    )


def _check_schedule(schedule, epochs=EPOCHS, device=False):
    """Every batch of ``epochs`` epochs: records, meta, padding, and ``batches`` for the same cursors."""
    stream = schedule.stream
    n, size, chunk = stream.num_records, stream.batch_size, schedule.chunk_size
    cursors = stream.schedule(0, 0, epochs * stream.batches_per_epoch)
    assert cursors[-1][0] == epochs - 1 and stream.advance(*cursors[-1]) == (epochs, 0)
    rows, host_view, seen = [], None, None
    # The records of every position of each epoch, padding positions clamped: one Feistel call per epoch.
    clamped = np.minimum(np.arange(stream.positions_per_epoch, dtype=np.int64), n - 1)
    epoch_records = [
        feistel_permute_np(clamped, n, stream.seed, epoch) if stream.shuffle else clamped for epoch in range(epochs)
    ]
    for epoch, start in cursors:
        records, meta = schedule.batch(epoch, start)
        assert records.shape == (chunk,) and records.dtype == np.int32
        assert isinstance(records, jax.Array) == device
        if records is not seen:  # one host copy per chunk
            seen, host_view = records, np.asarray(records)
        valid = min(size, n - start)
        assert meta.dtype == np.int32 and meta.tolist() == [epoch, valid, start % chunk]
        # entry: the same chunk and meta, with the valid rows and the cursor after the batch.
        entry_records, entry_meta, entry_rows, after = schedule.entry(epoch, start)
        assert entry_records is records and entry_meta is meta
        assert entry_rows == valid and after == stream.advance(epoch, start)
        got = host_view[meta[2] : meta[2] + size]
        want = epoch_records[epoch][start : start + size]
        np.testing.assert_array_equal(got, want, err_msg=f"batch at {(epoch, start)}")
        if valid < size:  # padding rows repeat the epoch's last record
            assert np.all(got[valid:] == epoch_records[epoch][n - 1])
        rows.append(got)
    records, metas = schedule.batches(cursors)
    assert records.shape == (len(cursors), size) and records.dtype == np.int32
    assert metas.shape == (len(cursors), 2) and metas.dtype == np.int32
    np.testing.assert_array_equal(records, np.stack(rows))
    np.testing.assert_array_equal(metas, [[e, min(size, n - s)] for e, s in cursors])
    return cursors, rows


CASES = [
    pytest.param(140037, 100, id="n=140037,B=100"),  # chunk 65500: three chunks per epoch, a short last batch
    pytest.param(140000, 100, id="n=140000,B=100"),  # no short batch, the last chunk partly past the end
    pytest.param(10, 4, id="n=10,B=4"),  # one chunk per epoch
    pytest.param(3, 8, id="n=3,B=8"),  # fewer records than one batch
    pytest.param(150001, 70000, id="n=150001,B=70000"),  # batches bigger than CHUNK_POSITIONS
]


# --- chunk_size ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_size", "expected"),
    [(1, 65536), (3, 65535), (4, 65536), (100, 65500), (1000, 65000), (65535, 65535), (65536, 65536), (65537, 65537)],
)
def test_chunk_size_is_whole_batches_near_chunk_positions(batch_size, expected):
    assert CHUNK_POSITIONS == 65536
    assert chunk_size(batch_size) == expected
    assert expected % batch_size == 0
    assert max(batch_size, CHUNK_POSITIONS - batch_size + 1) <= expected <= max(batch_size, CHUNK_POSITIONS)


@pytest.mark.parametrize(
    ("batch_size", "num_records", "expected"),
    [
        (128, 50000, 50048),  # W1: one epoch's 391 batches, not 512
        (100, 140037, 65500),  # several chunks per epoch: as without a record count
        (4, 10, 12),
        (8, 3, 8),  # one batch, however few records
        (70000, 150001, 70000),
    ],
)
def test_a_chunk_holds_no_more_than_an_epochs_batches(batch_size, num_records, expected):
    assert chunk_size(batch_size, num_records) == expected
    assert chunk_size(batch_size, num_records) <= chunk_size(batch_size)


@pytest.mark.parametrize("batch_size", [1, 7, 100, 70000])
@pytest.mark.parametrize("n", [100, 200000])
def test_schedule_chunk_size_follows_the_batch_size_and_the_records(batch_size, n):
    schedule = RecordSchedule(_stream(n, batch_size, False), _sampler(False))
    assert schedule.chunk_size == chunk_size(batch_size, n)


# --- the records of every batch ------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "sequential"])
@pytest.mark.parametrize(("n", "batch_size"), CASES)
def test_host_schedule_matches_feistel(n, batch_size, shuffle):
    _check_schedule(RecordSchedule(_stream(n, batch_size, shuffle), _sampler(shuffle)))


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "sequential"])
@pytest.mark.parametrize(("n", "batch_size"), CASES[:3])
def test_pipeline_device_schedule_matches_feistel(n, batch_size, shuffle):
    pipeline = _pipeline(n, batch_size, shuffle)
    iterator = iter(pipeline)
    schedule = iterator.feed.records
    assert schedule.stream is pipeline.stream
    assert schedule.chunk_size == chunk_size(batch_size, n)
    if shuffle:
        assert pipeline.stream.seed == SEED
    _check_schedule(schedule, device=True)


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "sequential"])
def test_drop_remainder_schedule_has_only_full_batches(shuffle):
    pipeline = _pipeline(40037, 100, shuffle, drop_remainder=True)
    assert pipeline.batches_per_epoch == 400
    cursors, rows = _check_schedule(iter(pipeline).feed.records, epochs=2, device=True)
    assert len(cursors) == 800 and cursors[399] == (0, 39900) and cursors[400] == (1, 0)
    for epoch in range(2):
        served = np.concatenate(rows[400 * epoch : 400 * (epoch + 1)])
        assert len(np.unique(served)) == 40000  # no record twice, 37 left out


def test_device_chunks_equal_host_chunks():
    pipeline = _pipeline(140037, 100, True)
    device = RecordSchedule(
        pipeline.stream, pipeline.sampler, StepBinding(pipeline._parts(), pipeline.program).records_chunk
    )
    host = RecordSchedule(pipeline.stream, pipeline.sampler)
    for epoch in range(2):
        for start in (0, 65500, 131000):
            a, meta = device.batch(epoch, start)
            b, host_meta = host.batch(epoch, start)
            np.testing.assert_array_equal(meta, host_meta)
            np.testing.assert_array_equal(np.asarray(a), b)


def test_every_epoch_serves_every_record_once():
    n, size = 40037, 100
    schedule = RecordSchedule(_stream(n, size, True), _sampler(True))
    orders = []
    for epoch in range(2):
        rows = [schedule.batch(epoch, s) for s in range(0, n, size)]
        order = np.concatenate([np.asarray(c)[m[2] : m[2] + m[1]] for c, m in rows])
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
        orders.append(order)
    assert np.mean(orders[0] == orders[1]) < 0.01  # a new epoch is a new order


def test_batches_in_any_order_equal_batch():
    n, size = 40037, 100
    schedule = RecordSchedule(_stream(n, size, True), _sampler(True))
    rng = np.random.default_rng(0)
    cursors = [(int(e), int(s)) for e, s in zip(rng.integers(0, 5, 50), rng.integers(0, 401, 50) * size, strict=True)]
    cursors += [(7, 40000), (0, 0), (7, 40000)]
    records, metas = schedule.batches(cursors)
    for i, (epoch, start) in enumerate(cursors):
        chunk, meta = schedule.batch(epoch, start)
        np.testing.assert_array_equal(records[i], np.asarray(chunk)[meta[2] : meta[2] + size])
        np.testing.assert_array_equal(metas[i], meta[:2])
    assert metas[-1].tolist() == [7, 37]


def test_batches_of_no_cursors_is_empty():
    records, metas = RecordSchedule(_stream(10, 4, True), _sampler(True)).batches([])
    assert records.shape == (0, 4) and metas.shape == (0, 2)


def test_seeds_give_different_orders():
    stream_a, stream_b = _stream(1000, 100, True, seed=1), _stream(1000, 100, True, seed=2)
    a = np.asarray(RecordSchedule(stream_a, _sampler(True, seed=1)).batch(0, 0)[0])
    b = np.asarray(RecordSchedule(stream_b, _sampler(True, seed=2)).batch(0, 0)[0])
    np.testing.assert_array_equal(a[:1000], feistel_permute_np(np.arange(1000), 1000, 1, 0))
    assert np.mean(a[:1000] == b[:1000]) < 0.05


# --- chunk caching -------------------------------------------------------------------------------


def _counting_schedule(pipeline):
    binding = StepBinding(pipeline._parts(), pipeline.program)
    calls = []

    def compute(epoch, chunk_start):
        calls.append((epoch, chunk_start))
        return binding.records_chunk(epoch, chunk_start)

    return RecordSchedule(pipeline.stream, pipeline.sampler, compute), calls


def test_chunk_is_computed_once_and_recomputed_at_chunk_and_epoch_boundaries():
    pipeline = _pipeline(140037, 100, True)
    schedule, calls = _counting_schedule(pipeline)
    cursors = pipeline.stream.schedule(0, 0, 2 * 1401)
    chunks = [schedule.batch(epoch, start)[0] for epoch, start in cursors]
    assert calls == [(0, 0), (0, 65500), (0, 131000), (1, 0), (1, 65500), (1, 131000)]
    # Batches 0..654 of an epoch share the first chunk, 655..1309 the second, 1310..1400 the third.
    for epoch in range(2):
        first = 1401 * epoch
        for lo, hi in ((0, 655), (655, 1310), (1310, 1401)):
            assert all(c is chunks[first + lo] for c in chunks[first + lo : first + hi])
        assert chunks[first + 654] is not chunks[first + 655]
        assert chunks[first + 1309] is not chunks[first + 1310]
    # The epoch boundary recomputes even though the chunk starts at position 0 again.
    assert chunks[1400] is not chunks[1401]
    assert not np.array_equal(np.asarray(chunks[0]), np.asarray(chunks[1401]))
    # The same chunk asked for again (same or another batch in it) is the same array, not recomputed.
    again = schedule.batch(1, 131100)[0]
    assert again is chunks[-1] and schedule.batch(1, 140000)[0] is again and len(calls) == 6
    # Going back to an earlier chunk computes it anew, with the same records.
    back = schedule.batch(0, 0)[0]
    assert calls[-1] == (0, 0) and len(calls) == 7
    np.testing.assert_array_equal(np.asarray(back), np.asarray(chunks[0]))


def test_small_epochs_compute_one_chunk_each():
    pipeline = _pipeline(10, 4, True)
    schedule, calls = _counting_schedule(pipeline)
    chunks = [schedule.batch(e, s)[0] for e, s in pipeline.stream.schedule(0, 0, EPOCHS * 3)]
    assert calls == [(0, 0), (1, 0), (2, 0)]
    for epoch in range(EPOCHS):
        assert chunks[3 * epoch] is chunks[3 * epoch + 1] is chunks[3 * epoch + 2]


def test_host_chunk_is_cached_too():
    schedule = RecordSchedule(_stream(10, 4, True), _sampler(True))
    first, meta = schedule.batch(0, 0)
    assert isinstance(first, np.ndarray)
    assert schedule.batch(0, 4)[0] is first and schedule.batch(0, 8)[0] is first
    assert schedule.batch(1, 0)[0] is not first
    assert meta.tolist() == [0, 4, 0]


def test_iterator_uses_the_schedule_chunk_by_chunk():
    pipeline = _pipeline(140037, 100, False, prefetch=0)
    iterator = iter(pipeline)
    seen = []
    for _ in range(660):
        next(iterator)
        seen.append(iterator.feed.records._cached)
    assert seen[0] == (0, 0) and seen[654] == (0, 0) and seen[655] == (0, 65500) and seen[-1] == (0, 65500)


# --- the pipeline stream is these records --------------------------------------------------------


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "sequential"])
@pytest.mark.parametrize(
    ("n", "batch_size"),
    [
        pytest.param(140037, 1000, id="n=140037,B=1000"),  # chunk 65000: three chunks per epoch
        pytest.param(10, 4, id="n=10,B=4"),
    ],
)
def test_pipeline_stream_is_the_concatenation_of_the_schedule(n, batch_size, shuffle):
    pipeline = _pipeline(n, batch_size, shuffle)
    batches = collect(pipeline)
    stream = pipeline.stream
    cursors = stream.schedule(0, 0, EPOCHS * stream.batches_per_epoch)
    assert len(batches) == len(cursors)
    host = RecordSchedule(stream, pipeline.sampler)
    records, metas = host.batches(cursors)
    for batch, (epoch, start), want, meta in zip(batches, cursors, records, metas, strict=True):
        np.testing.assert_array_equal(batch["label"], want, err_msg=f"batch at {(epoch, start)}")
        np.testing.assert_array_equal(batch["x"], want.astype(np.float32) / 2)
        np.testing.assert_array_equal(batch[VALID_MASK], np.arange(batch_size) < meta[1])
        np.testing.assert_array_equal(want, _expected(n, batch_size, stream.seed, shuffle, epoch, start))
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels, np.concatenate(records))


def test_scan_batches_equal_iterated_batches_across_chunks():
    pipeline = _pipeline(140037, 1000, True)
    want = collect(pipeline)[:70]  # the first chunk is batches 0..64
    scanned = _pipeline(140037, 1000, True)
    out = scanned.scan(lambda batch: (batch["label"], batch[VALID_MASK]), length=70)
    np.testing.assert_array_equal(np.asarray(out[0]), np.stack([b["label"] for b in want]))
    np.testing.assert_array_equal(np.asarray(out[1]), np.stack([b[VALID_MASK] for b in want]))


# --- the largest epochs --------------------------------------------------------------------------


class CountingSource(DataSourceModule):
    """``n`` virtual records whose only column ``label`` is the record index (no storage)."""

    def __init__(self, n):
        super().__init__(StructuralConfig())
        self.n = n

    def __len__(self):
        return self.n

    def element_spec(self):
        return {"label": jax.ShapeDtypeStruct((), jnp.int32)}

    def get_records(self, indices):
        return {"label": jnp.asarray(indices).astype(jnp.int32)}


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "sequential"])
def test_device_chunk_of_the_last_batch_of_a_2_31_record_epoch(shuffle):
    # The last chunk of an epoch of 2**31 - 1 records reaches positions past 2**31 - 1; they are
    # padding positions and must be clamped to the last record like every other padding row.
    n, size = 2**31 - 1, 100
    pipeline = Pipeline(source=CountingSource(n), batch_size=size, rngs=nnx.Rngs(SEED), shuffle=shuffle)
    last = (pipeline.batches_per_epoch - 1) * size
    assert last == 2147483600
    device = RecordSchedule(
        pipeline.stream, pipeline.sampler, StepBinding(pipeline._parts(), pipeline.program).records_chunk
    )
    chunk, meta = device.batch(0, last)
    assert meta.tolist() == [0, 47, last % 65500]
    got = np.asarray(chunk)[meta[2] : meta[2] + size]
    np.testing.assert_array_equal(got, _expected(n, size, pipeline.stream.seed, shuffle, 0, last))
    host_chunk, _ = RecordSchedule(pipeline.stream, pipeline.sampler).batch(0, last)
    np.testing.assert_array_equal(np.asarray(chunk), host_chunk)


def test_iterated_last_batch_of_a_2_31_record_epoch_equals_scan():
    # What a user sees of the same defect: the iterator (device chunk) and Pipeline.scan (host
    # records) disagree on the padding rows of the last batch, which should repeat the last record.
    n, size = 2**31 - 1, 100
    pipeline = Pipeline(source=CountingSource(n), batch_size=size)
    iterator = iter(pipeline)
    state = {**iterator.get_state(), "position": 2147483600}
    iterator.set_state(state)
    batch = next(iterator)
    pipeline.scan_iterator.set_state(state)
    scanned = np.asarray(pipeline.scan(lambda b: b["label"], length=1))[0]
    want = np.minimum(np.arange(2147483600, 2147483700), n - 1)
    np.testing.assert_array_equal(scanned, want)
    np.testing.assert_array_equal(np.asarray(batch[VALID_MASK]), np.arange(size) < 47)
    np.testing.assert_array_equal(np.asarray(batch["label"]), want)


def test_compute_batch_of_the_last_batch_of_a_2_31_record_epoch():
    # Pipeline.compute_batch (the traceable form of a batch) has the same int32 positions: past
    # 2**31 - 1 they wrap negative, so the padding rows there are also marked valid.
    n, size = 2**31 - 1, 100
    batch = Pipeline(source=CountingSource(n), batch_size=size).compute_batch(0, 2147483600)
    np.testing.assert_array_equal(np.asarray(batch[VALID_MASK]), np.arange(size) < 47)
    np.testing.assert_array_equal(np.asarray(batch["label"]), np.minimum(np.arange(2147483600, 2147483700), n - 1))

"""Prefetch: the pipeline's own dispatch-ahead and ``prefetch_to_device``; neither changes the stream or the state."""

import threading

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from pipeline_helpers import assert_streams_equal, collect, make_source, noise_op, to_numpy

from datarax import Pipeline
from datarax.pipeline import prefetch_to_device

N, B = 21, 8  # 3 batches per epoch, the last one padded


def _build(prefetch=2, num_epochs=2):
    return Pipeline(
        source=make_source(N),
        stages=[noise_op(1)],
        batch_size=B,
        shuffle=True,
        rngs=nnx.Rngs(9),
        num_epochs=num_epochs,
        prefetch=prefetch,
    )


@pytest.fixture(scope="module")
def pipeline():
    """One compiled pipeline; tests get independent iterators over its first two epochs."""
    return _build()


@pytest.fixture(scope="module")
def start_state(pipeline):
    return iter(pipeline).get_state()


@pytest.fixture(scope="module")
def reference(pipeline, start_state):
    iterator = iter(pipeline)
    iterator.set_state(start_state)
    batches, states = [], [iterator.get_state()]
    for batch in iterator:
        batches.append(to_numpy(batch))
        states.append(iterator.get_state())
    assert len(batches) == 6
    return batches, states


def _fresh(pipeline, state):
    iterator = iter(pipeline)
    iterator.set_state(state)
    return iterator


def test_pipeline_prefetch_depths_give_identical_streams_and_states(reference):
    batches, states = reference
    for depth in (0, 1, 4):
        iterator = iter(_build(prefetch=depth))
        for t, want in enumerate(batches):
            assert_streams_equal([to_numpy(next(iterator))], [want])
            state = iterator.get_state()
            assert state == states[t + 1]
            # position n*B within the epoch, whatever is dispatched ahead
            assert state["epoch"] * 3 * B + state["position"] == (t + 1) * B
        with pytest.raises(StopIteration):
            next(iterator)


def test_prefetch_to_device_keeps_stream_and_reports_the_consumers_state(pipeline, start_state, reference):
    batches, states = reference
    wrapped = prefetch_to_device(_fresh(pipeline, start_state), size=2)
    try:
        assert wrapped.get_state() == states[0]
        got = []
        for t, batch in enumerate(wrapped):
            got.append(to_numpy(batch))
            assert wrapped.get_state() == states[t + 1]
        assert_streams_equal(got, batches)
        with pytest.raises(StopIteration):
            next(wrapped)
    finally:
        wrapped.close()


def test_resume_from_a_prefetcher_state_is_exact(pipeline, start_state, reference):
    batches, _ = reference
    wrapped = prefetch_to_device(_fresh(pipeline, start_state), size=3)
    try:
        for _ in range(2):
            next(wrapped)
        state = wrapped.get_state()  # the worker thread has run ahead by now
    finally:
        wrapped.close()
    assert state["position"] == 2 * B
    assert_streams_equal(collect(_fresh(pipeline, state)), batches[2:])
    again = _fresh(_build(), state)  # an identically built pipeline
    assert_streams_equal(collect(again), batches[2:])


def test_set_state_on_a_prefetcher_mid_stream(pipeline, start_state, reference):
    batches, states = reference
    wrapped = prefetch_to_device(_fresh(pipeline, start_state), size=2)
    try:
        for _ in range(4):
            next(wrapped)
        wrapped.set_state(states[1])  # back to after the first batch
        assert wrapped.get_state() == states[1]
        assert_streams_equal(collect(wrapped), batches[1:])
        wrapped.set_state(states[5])  # after the end: rewinding works too
        assert_streams_equal(collect(wrapped), batches[5:])
        # A bad state is refused and prefetching continues where the consumer was.
        wrapped.set_state(states[3])
        assert_streams_equal([to_numpy(next(wrapped))], [batches[3]])
        with pytest.raises(ValueError):
            wrapped.set_state({**states[3], "batch_size": 3})
        assert wrapped.get_state() == states[4]
        assert_streams_equal(collect(wrapped), batches[4:])
    finally:
        wrapped.close()


def test_prefetch_to_device_with_a_named_sharding(pipeline, start_state, reference):
    batches, states = reference
    devices = jax.devices()
    assert len(devices) == 8
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    wrapped = prefetch_to_device(_fresh(pipeline, start_state), size=2, sharding=sharding)
    try:
        got = []
        for batch in wrapped:
            for value in batch.values():
                assert value.sharding == sharding
                assert len(value.addressable_shards) == 8
                assert value.addressable_shards[0].data.shape == (B // 8,)
            got.append(to_numpy(batch))
        assert_streams_equal(got, batches)
        assert wrapped.get_state() == states[-1]
    finally:
        wrapped.close()


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_prefetch_to_device_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="size"):
        prefetch_to_device(iter([{"x": np.zeros(2)}]), size=size)


def test_prefetch_to_device_propagates_errors_of_the_wrapped_iterator():
    def source():
        yield {"x": np.arange(2)}
        yield {"x": np.arange(2) + 2}
        raise RuntimeError("disk on fire")

    wrapped = prefetch_to_device(source(), size=4)
    assert next(wrapped)["x"].tolist() == [0, 1]
    assert next(wrapped)["x"].tolist() == [2, 3]
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(wrapped)
    with pytest.raises(StopIteration):
        next(wrapped)
    with pytest.raises(TypeError, match="Checkpointable"):
        wrapped.get_state()
    wrapped.close()


def test_close_stops_the_worker_thread():
    def endless():
        i = 0
        while True:
            yield {"x": np.asarray(i)}
            i += 1

    before = {t.ident for t in threading.enumerate()}
    wrapped = prefetch_to_device(endless(), size=2)
    assert int(next(wrapped)["x"]) == 0
    assert int(next(wrapped)["x"]) == 1
    wrapped.close()
    assert {t.ident for t in threading.enumerate() if t.name == "datarax-prefetch"} <= before
    with pytest.raises(StopIteration):
        next(wrapped)


@pytest.mark.parametrize(
    ("iterator", "shown"),
    [
        (42, "int 42"),
        (None, "NoneType None"),
        (3.5, "float 3.5"),
        ("batches", "str 'batches'"),
        ({"x": np.zeros(2)}, "dict {'x': array"),
    ],
)
def test_prefetch_to_device_rejects_a_non_iterator_at_the_call(iterator, shown):
    before = {t.ident for t in threading.enumerate() if t.name == "datarax-prefetch"}
    with pytest.raises(TypeError) as info:
        prefetch_to_device(iterator)
    message = str(info.value)
    assert message.startswith("prefetch_to_device: iterator must be an iterator or iterable of batches")
    assert f"got {shown}" in message
    assert {t.ident for t in threading.enumerate() if t.name == "datarax-prefetch"} == before, "no thread started"


def test_prefetch_to_device_accepts_iterables_such_as_a_pipeline_or_a_list():
    pipeline = _build(num_epochs=1)
    wrapped = prefetch_to_device(pipeline, size=1)
    try:
        assert_streams_equal(collect(wrapped), collect(iter(_build(num_epochs=1))))
        assert wrapped.get_state()["epoch"] == 1  # a pipeline's iterator is Checkpointable, and so the result
    finally:
        wrapped.close()
    wrapped = prefetch_to_device([{"x": np.arange(2)}, {"x": np.arange(2) + 2}])
    assert [b["x"].tolist() for b in wrapped] == [[0, 1], [2, 3]]
    wrapped.close()


@pytest.mark.parametrize("sharding", ["cpu", 0, [], PartitionSpec("data"), {"x": "cpu"}])
def test_prefetch_to_device_rejects_a_sharding_that_is_not_a_placement(sharding):
    with pytest.raises(TypeError, match=r"prefetch_to_device: sharding must be None, a jax.sharding.Sharding, a jax"):
        prefetch_to_device(iter([{"x": np.zeros(2)}]), sharding=sharding)


def test_prefetch_to_device_places_on_a_device_or_a_pytree_of_placements():
    device = jax.devices()[3]
    wrapped = prefetch_to_device(iter([{"x": np.arange(2), "y": np.ones(2)}]), sharding=device)
    assert next(wrapped)["x"].devices() == {device}
    wrapped.close()
    per_key = {"x": jax.devices()[1], "y": jax.sharding.SingleDeviceSharding(jax.devices()[2])}
    wrapped = prefetch_to_device(iter([{"x": np.arange(2), "y": np.ones(2)}]), sharding=per_key)
    batch = next(wrapped)
    assert batch["x"].devices() == {jax.devices()[1]} and batch["y"].devices() == {jax.devices()[2]}
    wrapped.close()


def test_a_refused_call_consumes_nothing_from_the_iterator():
    batches = iter([{"x": np.arange(2)}, {"x": np.arange(2) + 2}])
    for bad in ({"size": 0}, {"sharding": "gpu"}):
        with pytest.raises((TypeError, ValueError)):
            prefetch_to_device(batches, **bad)
    assert next(batches)["x"].tolist() == [0, 1]


def test_the_default_prefetch_depends_on_the_backend():
    from datarax.pipeline.construction import default_prefetch

    pipeline = Pipeline(source=make_source(10), batch_size=4)
    assert pipeline.prefetch == default_prefetch()
    assert default_prefetch() == (0 if jax.default_backend() == "cpu" else 2)


# --- prefetch=0: the direct path (no read-ahead queue) ---------------------------------------------


def test_without_prefetch_a_device_source_takes_the_direct_path(reference, pipeline, start_state):
    direct = _fresh(_build(prefetch=0), start_state)
    assert direct._direct is direct.feed  # the queue is not used
    batches, states = reference
    got = []
    for i, batch in enumerate(direct):
        got.append(to_numpy(batch))
        assert direct.get_state() == states[i + 1]
        assert not direct._queue
    assert_streams_equal(got, batches)


def test_a_failed_direct_call_changes_nothing():
    # A step that fails (here: the compiled step raising once) leaves the cursor, the counters and the
    # epochs started as they were, and the next call serves the batch that failed.
    failing, reference = _build(prefetch=0), _build(prefetch=0)
    it, ref = iter(failing), iter(reference)
    next(it), next(ref)
    op = next(iter(failing.nodes.values()))  # the one operator
    state, counts = it.get_state(), op.get_operation_stats()
    step = it.binding._step

    def broken(*args):
        it.binding._step = step
        raise RuntimeError("device step failed")

    it.binding._step = broken
    with pytest.raises(RuntimeError, match="device step failed"):
        next(it)
    assert it.get_state() == state and op.get_operation_stats() == counts
    assert_streams_equal([to_numpy(b) for b in it], [to_numpy(b) for b in ref])

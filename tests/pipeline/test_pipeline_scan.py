"""``Pipeline.scan``: data and a user step as one ``nnx.scan``, continuing the pipeline's stream."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from pipeline_helpers import collect, make_source, noise_op

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK

N, B = 11, 4  # 3 batches per epoch, the last one padded


def _build(num_epochs=2):
    return Pipeline(
        source=make_source(N),
        stages=[noise_op(7)],
        batch_size=B,
        shuffle=True,
        rngs=nnx.Rngs(4),
        num_epochs=num_epochs,
    )


class RunningSum(nnx.Module):
    def __init__(self):
        self.total = nnx.Variable(jnp.zeros((), jnp.float32))
        self.steps = nnx.Variable(jnp.zeros((), jnp.int32))


def train_step(batch, acc):
    masked = jnp.sum(jnp.where(batch[VALID_MASK], batch["x"], 0.0))
    acc.total[...] = acc.total[...] + masked
    acc.steps[...] = acc.steps[...] + 1
    return {"sum": masked, "label": batch["label"], "x": batch["x"], "mask": batch[VALID_MASK]}


def _expected(batch):
    return np.sum(np.where(batch[VALID_MASK], batch["x"], 0.0), dtype=np.float32)


@pytest.fixture(scope="module")
def plain_batches():
    batches = collect(_build())
    assert len(batches) == 6
    return batches


def test_scan_equals_plain_iteration_and_continues_the_stream(plain_batches):
    pipeline = _build()
    acc = RunningSum()
    # Three calls of one length (compiled once): the second one crosses the epoch boundary.
    calls = [pipeline.scan(train_step, length=2, modules=(acc,)) for _ in range(3)]
    assert calls[0]["label"].shape == (2, B) and calls[0]["sum"].shape == (2,)
    outputs = {k: np.concatenate([np.asarray(c[k]) for c in calls]) for k in calls[0]}
    for t in range(6):
        np.testing.assert_array_equal(outputs["label"][t], plain_batches[t]["label"])
        np.testing.assert_array_equal(outputs["x"][t], plain_batches[t]["x"])
        np.testing.assert_array_equal(outputs["mask"][t], plain_batches[t][VALID_MASK])
        np.testing.assert_allclose(outputs["sum"][t], _expected(plain_batches[t]), rtol=1e-6)
    # The module was updated in place by every step.
    assert int(acc.steps[...]) == 6
    np.testing.assert_allclose(float(acc.total[...]), outputs["sum"].sum(), rtol=1e-5)
    assert int(pipeline.next_epoch.get_value()) == 2

    # The scan iterator (num_epochs=2) is spent: scanning on continues into the next epochs
    # with a fresh iterator, exactly as a second `for batch in pipeline` loop would.
    more = pipeline.scan(train_step, length=len(pipeline), modules=(acc,))
    second_loop = collect(_build_after_two_epochs())
    for t in range(len(pipeline)):
        np.testing.assert_array_equal(np.asarray(more["label"][t]), second_loop[t]["label"])
    assert int(acc.steps[...]) == 6 + len(pipeline)
    assert pipeline.scan_iterator.epoch == 3 and pipeline.scan_iterator.position == 0


def _build_after_two_epochs():
    pipeline = _build()
    collect(pipeline)  # the first loop: epochs 0 and 1
    return pipeline


def test_scan_continues_into_the_next_epoch_like_a_second_for_loop():
    loops = _build(num_epochs=1)
    first, second = collect(loops), collect(loops)
    pipeline = _build(num_epochs=1)
    a = pipeline.scan(lambda batch: batch["label"], length=len(pipeline))
    b = pipeline.scan(lambda batch: batch["label"], length=len(pipeline))
    for t in range(len(pipeline)):
        np.testing.assert_array_equal(np.asarray(a[t]), first[t]["label"])
        np.testing.assert_array_equal(np.asarray(b[t]), second[t]["label"])
    # The scan iterator is reachable and checkpointable like any other.
    state = pipeline.scan_iterator.get_state()
    assert (state["epoch"], state["position"]) == (2, 0)
    assert int(pipeline.next_epoch.get_value()) == 2


def test_scan_iterator_state_restores_into_a_fresh_pipeline():
    pipeline = _build(num_epochs=None)
    pipeline.scan(lambda batch: batch["label"], length=4)
    state = json.loads(json.dumps(pipeline.scan_iterator.get_state()))
    want = pipeline.scan(lambda batch: batch["label"], length=3)
    fresh = _build(num_epochs=None)
    fresh.scan_iterator.set_state(state)
    got = fresh.scan(lambda batch: batch["label"], length=3)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_scan_past_the_end_of_a_single_epoch_raises():
    pipeline = _build(num_epochs=1)
    acc = RunningSum()
    with pytest.raises(ValueError, match="length=4 but only 3 batches remain"):
        pipeline.scan(train_step, length=4, modules=(acc,))
    assert int(acc.steps[...]) == 0
    assert int(pipeline.next_epoch.get_value()) == 0  # nothing was started


@pytest.mark.parametrize("length", [0, -1, 1.5, True])
def test_scan_rejects_bad_lengths(length):
    with pytest.raises(ValueError, match="length"):
        _build().scan(train_step, length=length)


def test_scan_on_an_explicit_iterator_mixes_with_next(plain_batches):
    pipeline = _build()
    iterator = iter(pipeline)
    np.testing.assert_array_equal(np.asarray(next(iterator)["label"]), plain_batches[0]["label"])
    out = pipeline.scan(lambda batch: batch["label"], length=3, iterator=iterator)
    for t in range(3):
        np.testing.assert_array_equal(np.asarray(out[t]), plain_batches[1 + t]["label"])
    assert (iterator.epoch, iterator.position) == (1, 4)
    assert iterator.get_state()["position"] == 4
    rest = collect(iterator)
    for got, want in zip(rest, plain_batches[4:], strict=True):
        np.testing.assert_array_equal(got["x"], want["x"])


def test_scan_traces_the_step_once_per_length():
    pipeline = _build(num_epochs=None)
    traces = []

    def step(batch):
        traces.append(1)
        return jnp.sum(batch["x"])

    for _ in range(4):
        pipeline.scan(step, length=3)
    assert len(traces) == 1

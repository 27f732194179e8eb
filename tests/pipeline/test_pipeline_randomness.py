"""Record-keyed randomness: what record r sees in epoch e depends only on (stream seed, e, r)."""

import json

import numpy as np
import pytest
from flax import nnx
from pipeline_helpers import collect, expected_noise, make_source, noise_op, to_numpy

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK

N = 40
EPOCHS = 2


def _draws(batches, per_epoch):
    """{(epoch, record): noise} for the valid rows of a stream."""
    out = {}
    for t, batch in enumerate(batches):
        epoch = t // per_epoch
        noise = batch["x"] - batch["label"].astype(np.float32) / 2
        for label, value in zip(batch["label"][batch[VALID_MASK]], noise[batch[VALID_MASK]], strict=True):
            assert (epoch, int(label)) not in out
            out[(epoch, int(label))] = float(value)
    assert len(out) == EPOCHS * N
    return out


def _run(batch_size=7, shuffle=True, prefetch=2, stream_seed=3):
    op = noise_op(stream_seed)
    pipeline = Pipeline(
        source=make_source(N),
        stages=[op],
        batch_size=batch_size,
        shuffle=shuffle,
        rngs=nnx.Rngs(1),
        num_epochs=EPOCHS,
        prefetch=prefetch,
    )
    iterator = iter(pipeline)
    batches, states = [], []
    for batch in iterator:
        batches.append(to_numpy(batch))
        states.append(iterator.get_state())
    return op, pipeline, batches, _draws(batches, len(pipeline)), states


@pytest.fixture(scope="module")
def reference():
    return _run()


def test_draws_follow_the_seed_contract(reference):
    op, _, _, draws, _ = reference
    for epoch in range(EPOCHS):
        want = expected_noise(op, epoch, N)
        got = np.array([draws[(epoch, r)] for r in range(N)], dtype=np.float32)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)  # x/2 + u - x/2 rounds
    epoch0 = np.array([draws[(0, r)] for r in range(N)])
    epoch1 = np.array([draws[(1, r)] for r in range(N)])
    assert np.all(epoch0 != epoch1)  # a new epoch is a new draw for every record
    assert np.all((epoch0 >= 0) & (epoch0 < 1))


@pytest.mark.parametrize(
    "variant",
    [
        {"batch_size": 1},
        {"batch_size": 32},
        {"shuffle": False},
        {"prefetch": 0},
        {"prefetch": 4},
        {"prefetch": 1, "batch_size": 7, "shuffle": False},
    ],
    ids=lambda v: ",".join(f"{k}={w}" for k, w in v.items()),
)
def test_draws_do_not_depend_on_batching_order_or_prefetch(reference, variant):
    want = reference[3]
    got = _run(**variant)[3]
    assert got == want  # bit-identical floats, record by record


def test_padding_rows_copy_the_last_real_row_including_its_draw(reference):
    _, pipeline, batches, _, _ = reference
    per_epoch = len(pipeline)
    assert N % 7 == 5
    for epoch in range(EPOCHS):
        last = batches[(epoch + 1) * per_epoch - 1]
        assert last[VALID_MASK].tolist() == [True] * 5 + [False] * 2
        assert np.all(last["x"][5:] == last["x"][4])
        assert np.all(last["label"][5:] == last["label"][4])


def test_different_stream_seeds_draw_differently(reference):
    want = reference[3]
    other = _run(stream_seed=4)[3]
    assert set(other) == set(want)
    assert all(other[k] != want[k] for k in want)


def test_draws_survive_resume(reference):
    _, _, batches, _, states = reference
    state = states[7]  # after 8 batches: inside the second epoch
    assert state["epoch"] == 1
    resumed = iter(
        Pipeline(
            source=make_source(N),
            stages=[noise_op(3)],
            batch_size=7,
            shuffle=True,
            rngs=nnx.Rngs(1),
            num_epochs=EPOCHS,
        )
    )
    resumed.set_state(json.loads(json.dumps(state)))
    rest = collect(resumed)
    assert len(rest) == len(batches) - 8
    for got, want in zip(rest, batches[8:], strict=True):
        for key in want:
            assert got[key].tobytes() == want[key].tobytes()


def test_the_operator_never_advances_its_rng_stream(reference):
    op, pipeline, _, _, _ = reference
    assert int(op.rngs[op.stream_name].count.get_value()) == 0
    assert int(pipeline.next_epoch.get_value()) == EPOCHS

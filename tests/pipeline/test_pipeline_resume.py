"""Exact resume: a tiny JSON state restores the remaining stream bit for bit, even in a fresh process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flax import nnx
from pipeline_helpers import (
    assert_streams_equal,
    build_resume_pipeline,
    checksum,
    collect,
    make_source,
    to_numpy,
)

from datarax import Pipeline
from datarax.checkpoint import OrbaxCheckpointHandler
from datarax.core.batch_form import VALID_MASK
from datarax.typing import Checkpointable

HERE = Path(__file__).resolve().parent
STATE_KEYS = {
    "version",
    "epoch",
    "position",
    "stop_epoch",
    "seed",
    "num_records",
    "batch_size",
    "shuffle",
    "drop_remainder",
    "fingerprint",
}


@pytest.fixture(scope="module")
def run():
    """The reference 2-epoch run (23 records, batches of 5: 5 batches per epoch, the 5th padded)."""
    iterator = iter(build_resume_pipeline())
    assert isinstance(iterator, Checkpointable)
    batches, states = [], [iterator.get_state()]
    for batch in iterator:
        batches.append(to_numpy(batch))
        states.append(iterator.get_state())
    assert len(batches) == 10
    assert batches[4][VALID_MASK].tolist() == [True, True, True, False, False]
    return batches, states


@pytest.fixture(scope="module")
def twin():
    """An identically built pipeline (compiled once, iterated many times)."""
    return build_resume_pipeline()


def _restored(pipeline, state):
    iterator = iter(pipeline)
    iterator.set_state(json.loads(json.dumps(state)))
    return iterator


def test_state_is_small_json_and_independent_of_the_data_size(run):
    _, states = run
    for state in states:
        assert set(state) == STATE_KEYS
        assert len(json.dumps(state)) < 1024
    assert [s["position"] for s in states] == [0, 5, 10, 15, 20, 0, 5, 10, 15, 20, 0]
    assert [s["epoch"] for s in states] == [0] * 5 + [1] * 5 + [2]

    small = iter(Pipeline(source=make_source(100), batch_size=10, shuffle=True, rngs=nnx.Rngs(0)))
    large = iter(Pipeline(source=make_source(100_000), batch_size=10, shuffle=True, rngs=nnx.Rngs(0)))
    a, b = json.dumps(small.get_state()), json.dumps(large.get_state())
    assert len(a) < 1024 and len(b) < 1024
    assert abs(len(a) - len(b)) <= 3  # only the digits of num_records differ
    assert {k: v for k, v in small.get_state().items() if k != "num_records"} == {
        k: v for k, v in large.get_state().items() if k != "num_records"
    }


def test_resume_is_exact_from_every_step(run, twin):
    batches, states = run
    for k, state in enumerate(states):
        iterator = _restored(twin, state)
        assert iterator.get_state() == state
        rest = []
        for batch in iterator:
            rest.append(to_numpy(batch))
            assert iterator.get_state() == states[k + len(rest)]
        assert_streams_equal(rest, batches[k:])


def test_resume_in_a_fresh_process(run, twin):
    batches, states = run
    state = states[4]  # the padded batch and the epoch boundary are still ahead
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from pipeline_helpers import build_resume_pipeline, checksum\n"
        "iterator = iter(build_resume_pipeline())\n"
        "iterator.set_state(json.loads(sys.argv[1]))\n"
        "print('CHECKSUM', checksum(iterator))\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(state)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("CHECKSUM ")]
    assert line, done.stdout
    assert line[-1].split(" ", 1)[1] == checksum(batches[4:])
    assert checksum(batches[4:]).startswith("6:")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"batch_size": 4}, "batch_size"),
        ({"rngs": nnx.Rngs(12)}, "seed"),
        ({"n": 24}, "num_records"),
        ({"shuffle": False}, None),
        ({"stream_seed": 4}, "fingerprint"),
        ({"drop_remainder": True}, "drop_remainder"),
    ],
    ids=["batch_size", "seed", "n", "shuffle", "stage_seed", "drop_remainder"],
)
def test_states_of_differently_built_pipelines_are_refused(run, change, field):
    _, states = run
    other = build_resume_pipeline(**change)
    iterator = iter(other)
    before = iterator.get_state()
    with pytest.raises(ValueError, match=field or "differently configured") as info:
        iterator.set_state(states[3])
    assert "differently configured" in str(info.value)
    assert iterator.get_state() == before


def test_a_refused_state_leaves_a_running_iterator_unchanged(run, twin):
    batches, states = run
    iterator = _restored(twin, states[2])
    assert_streams_equal([to_numpy(next(iterator))], [batches[2]])
    foreign = iter(build_resume_pipeline(stream_seed=5)).get_state()
    with pytest.raises(ValueError, match="fingerprint"):
        iterator.set_state(foreign)
    assert iterator.get_state() == states[3]
    assert_streams_equal(collect(iterator), batches[3:])


def _malformed(state):
    yield "missing key", {k: v for k, v in state.items() if k != "epoch"}, ValueError, "missing"
    yield "extra key", {**state, "cursor": 1}, ValueError, "unexpected"
    yield "position not a multiple", {**state, "position": 3}, ValueError, "position"
    yield "position past the epoch", {**state, "position": 25}, ValueError, "position"
    yield "negative position", {**state, "position": -5}, ValueError, "position"
    yield "negative epoch", {**state, "epoch": -1}, ValueError, "epoch"
    yield "bool epoch", {**state, "epoch": True}, ValueError, "epoch"
    yield "float position", {**state, "position": 5.0}, ValueError, "position"
    yield "stop before epoch", {**state, "epoch": 1, "stop_epoch": 0}, ValueError, "stop_epoch"
    yield "version", {**state, "version": 99}, ValueError, "version"
    yield "not a dict", list(state.items()), TypeError, "dict"
    yield "None", None, TypeError, "dict"


def test_malformed_states_are_refused(run, twin):
    _, states = run
    iterator = _restored(twin, states[1])
    before = iterator.get_state()
    for name, bad, error, pattern in _malformed(states[6]):
        with pytest.raises(error, match=pattern):
            iterator.set_state(bad)
        assert iterator.get_state() == before, name


def test_a_finished_state_resumes_to_an_empty_stream(run, twin):
    _, states = run
    assert collect(_restored(twin, states[-1])) == []


def test_orbax_checkpoint_of_iterator_and_pipeline(run, tmp_path):
    batches, states = run
    pipeline = build_resume_pipeline()
    iterator = iter(pipeline)
    with OrbaxCheckpointHandler(tmp_path / "ckpt", max_to_keep=2) as handler:
        for step in range(1, 4):
            next(iterator)
            handler.save(step, {"data": iterator, "pipeline": pipeline})
        handler.wait_until_finished()
        assert handler.all_steps() == [2, 3]
        assert (tmp_path / "ckpt" / "3").is_dir() and not (tmp_path / "ckpt" / "1").exists()

        restored_pipeline = build_resume_pipeline()
        restored = iter(restored_pipeline)
        assert handler.restore({"data": restored, "pipeline": restored_pipeline}) == 3
        assert restored.get_state() == states[3]
        assert int(restored_pipeline.next_epoch.get_value()) == 1
        assert_streams_equal(collect(restored), batches[3:])

        older = iter(build_resume_pipeline())
        handler.restore({"data": older}, step=2)
        assert older.get_state() == states[2]
        assert_streams_equal(collect(older), batches[2:])

        # A checkpoint of another pipeline's iterator is refused and changes nothing.
        stranger = iter(build_resume_pipeline(batch_size=4))
        before = stranger.get_state()
        with pytest.raises(ValueError, match="batch_size"):
            handler.restore({"data": stranger})
        assert stranger.get_state() == before

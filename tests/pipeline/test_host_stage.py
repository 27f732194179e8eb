"""The pipeline's host stage: host sources read, transformed by host operators and collated on the host.

Real components only: the sources and operators live in ``host_sources_for_tests`` (module level, so
spawned worker processes import them by name). Every record ``r`` has ``label = r`` and
``image = image_of(r)``, so every row names the record it came from.

The reference stream (``reference`` fixture) is ``build_pipeline()`` run inline (``workers=0``): 23
records, batches of 5 (the 5th of each epoch padded), 2 shuffled epochs, a deterministic and a
stochastic host operator, then ``RandomFlip`` on the device.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from host_sources_for_tests import (
    JITTER,
    SEED,
    FailOnRecord,
    IndexSource,
    build_pipeline,
    drop_raw,
    expected_jitter,
    expected_jitter_draw,
    identity,
    image_of,
    jitter_op,
    other_draw,
    square_op,
    write_npy_source,
)
from pipeline_helpers import assert_streams_equal, checksum, collect, make_source, to_numpy

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.core.config import OperatorConfig, StructuralConfig
from datarax.operators.host_map import HostMapOperator, HostMapOperatorConfig
from datarax.pipeline.host_stage import HostStageError

HERE = Path(__file__).resolve().parent
N, BATCH = 23, 5  # 5 batches per epoch, the last with 3 valid rows
PER_EPOCH = 5


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted inline run of ``build_pipeline()``: its batches and the state after each."""
    iterator = iter(build_pipeline(workers=0))
    batches, states = [], [iterator.get_state()]
    for batch in iterator:
        batches.append(to_numpy(batch))
        states.append(iterator.get_state())
    assert len(batches) == 2 * PER_EPOCH
    return batches, states


@pytest.fixture
def deadline():
    """Fails a test that waits on the host stage for more than 60 s instead of hanging the run."""

    def on_alarm(signum, frame):
        raise TimeoutError("the host stage did not answer within 60 s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _valid(batch, key):
    return np.asarray(batch[key])[np.asarray(batch[VALID_MASK])]


def _epochs(batches, per_epoch):
    return [batches[i : i + per_epoch] for i in range(0, len(batches), per_epoch)]


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _host_threads():
    """The live host-stage worker threads."""
    return {t for t in threading.enumerate() if t.name.startswith("datarax-host")}


def _wait_until(condition, what, timeout=30.0):
    stop = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < stop, what
        time.sleep(0.02)


# -- 1. epochs, padding, drop_remainder ------------------------------------------------


def test_every_epoch_is_a_permutation_and_padding_repeats_a_real_row():
    pipeline = build_pipeline(host_stages=[square_op()], stages=[], num_epochs=3, workers=2)
    batches = collect(pipeline)
    assert len(batches) == 3 * PER_EPOCH
    orders = []
    for epoch in _epochs(batches, PER_EPOCH):
        assert [int(b[VALID_MASK].sum()) for b in epoch] == [5, 5, 5, 5, 3]
        order = np.concatenate([_valid(b, "label") for b in epoch]).tolist()
        assert sorted(order) == list(range(N))
        orders.append(order)
        last = epoch[-1]
        mask = last[VALID_MASK]
        assert mask.tolist() == [True, True, True, False, False]
        for key in ("label", "image", "square"):
            # Padding rows are copies of the epoch's last real row.
            assert (last[key][3:] == last[key][2]).all(), key
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != list(range(N))
    for batch in batches:  # every row, padding included, is its record's
        assert (batch["image"] == image_of(batch["label"])).all()
        assert (batch["square"] == batch["label"] ** 2).all()
        assert batch["label"].dtype == np.int32 and batch["square"].dtype == np.int32


def test_unshuffled_epochs_are_in_order_and_a_file_backed_source_gives_the_same_batches(tmp_path):
    in_memory = collect(build_pipeline(host_stages=[], stages=[], shuffle=False, num_epochs=1, workers=0))
    assert np.concatenate([_valid(b, "label") for b in in_memory]).tolist() == list(range(N))
    from_files = build_pipeline(
        source=write_npy_source(tmp_path, N), host_stages=[], stages=[], shuffle=False, num_epochs=1, workers=2
    )
    assert_streams_equal(collect(from_files), in_memory)


def test_drop_remainder_serves_only_full_batches_of_distinct_records():
    pipeline = build_pipeline(host_stages=[], stages=[], num_epochs=2, drop_remainder=True, workers=2)
    batches = collect(pipeline)
    assert len(batches) == 2 * 4
    for epoch in _epochs(batches, 4):
        assert all(b[VALID_MASK].all() for b in epoch)
        labels = np.concatenate([b["label"] for b in epoch]).tolist()
        assert len(set(labels)) == 20 and set(labels) <= set(range(N))


# -- 2. the same stream for any worker count and kind ----------------------------------


@pytest.mark.parametrize(
    "workers, kind", [(1, "thread"), (3, "thread"), (2, "process")], ids=["1-thread", "3-threads", "2-processes"]
)
def test_stream_and_states_do_not_depend_on_the_workers(reference, deadline, workers, kind):
    batches, states = reference
    iterator = iter(build_pipeline(workers=workers, worker_kind=kind))
    got, got_states = [], [iterator.get_state()]
    with iterator:
        for batch in iterator:
            got.append(to_numpy(batch))
            got_states.append(iterator.get_state())
    assert_streams_equal(got, batches)
    assert got_states == states


def test_the_reference_stream_holds_the_promised_host_and_device_draws(reference):
    batches, _ = reference
    flipped = kept = 0
    for index, batch in enumerate(batches):
        epoch = index // PER_EPOCH
        for row, label in enumerate(batch["label"].tolist()):
            draw, shift = expected_jitter(SEED, JITTER, epoch, label)
            assert batch["jitter_draw"][row] == draw
            image = image_of(label)[0] + shift  # the host jitter: one uniform shift of the whole image
            if (batch["image"][row] == image).all():
                kept += 1
            else:
                assert (batch["image"][row] == image[:, ::-1]).all(), (index, row)  # RandomFlip mirrored it
                flipped += 1
    assert flipped > 10 and kept > 10


# -- 3. host draws depend only on (seed, key name, epoch, record) --------------------------


def _draws(pipeline, column="jitter_draw"):
    """``{(epoch, record): (draw, image shift)}`` over the valid rows of every batch."""
    out = {}
    per_epoch = pipeline.batches_per_epoch
    for index, batch in enumerate(collect(pipeline)):
        for label, draw, image in zip(
            _valid(batch, "label"), _valid(batch, column), _valid(batch, "image"), strict=True
        ):
            out[(index // per_epoch, int(label))] = (int(draw), float(image.flat[0] - 100 * label))
    return out


def test_host_draws_depend_only_on_seed_key_name_epoch_and_record():
    base = _draws(build_pipeline(host_stages=[jitter_op()], stages=[], workers=0))
    assert len(base) == 2 * N
    for (epoch, record), (draw, _) in base.items():
        assert draw == expected_jitter_draw(SEED, JITTER, epoch, record)
    # Another batch size (so every record sits in another batch and row): the same draws.
    assert _draws(build_pipeline(batch_size=7, host_stages=[jitter_op()], stages=[], workers=2)) == base
    # Another stochastic host operator before it, with another name, does not change them.
    other = HostMapOperator(HostMapOperatorConfig(stochastic=True, stream_name="other"), fn=other_draw)
    with_other = build_pipeline(host_stages=[other, jitter_op()], stages=[], workers=2)
    assert _draws(with_other) == base
    others = _draws(build_pipeline(host_stages=[other, jitter_op()], stages=[], workers=2), "other_draw")
    assert all(others[k][0] != base[k][0] for k in base)
    # Different epochs, key names and seeds draw differently, record by record.
    for record in range(N):
        assert base[(0, record)] != base[(1, record)]
    renamed = _draws(build_pipeline(host_stages=[jitter_op("jitter2")], stages=[], workers=2))
    reseeded = _draws(build_pipeline(host_stages=[jitter_op()], stages=[], seed=SEED + 1, workers=2))
    assert all(renamed[k][0] != base[k][0] for k in base)
    assert all(reseeded[k][0] != base[k][0] for k in base)


# -- 4. resume -------------------------------------------------------------------------------


@pytest.mark.parametrize("taken", [3, 4, 5, 7], ids=["mid-epoch", "before-padded", "at-boundary", "epoch-1"])
def test_resume_from_a_json_state_continues_exactly(reference, taken):
    batches, states = reference
    first = iter(build_pipeline(workers=2))
    with first:
        head = collect(first, limit=taken)
        state = json.loads(json.dumps(first.get_state()))
    assert_streams_equal(head, batches[:taken])
    assert state == states[taken]
    resumed = iter(build_pipeline(workers=3))
    resumed.set_state(state)
    rest, rest_states = [], []
    with resumed:
        for batch in resumed:
            rest.append(to_numpy(batch))
            rest_states.append(resumed.get_state())
    assert_streams_equal(rest, batches[taken:])
    assert rest_states == states[taken + 1 :]


def test_resume_in_a_fresh_process_with_worker_processes(reference):
    batches, states = reference
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from host_sources_for_tests import build_pipeline\n"
        "from pipeline_helpers import checksum\n"
        "if __name__ == '__main__':\n"
        "    iterator = iter(build_pipeline(workers=2, worker_kind='process'))\n"
        "    iterator.set_state(json.loads(sys.argv[1]))\n"
        "    with iterator:\n"
        "        print('CHECKSUM', checksum(iterator))\n"
        "        print('STATE', json.dumps(iterator.get_state()))\n"
    )
    done = subprocess.run(
        # After 4 batches: the padded batch and the epoch boundary are still ahead.
        [sys.executable, "-c", code, json.dumps(states[4])],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("CHECKSUM ", "STATE ")))
    assert lines["CHECKSUM"] == checksum(batches[4:])
    assert json.loads(lines["STATE"]) == states[-1]


# -- 5. errors --------------------------------------------------------------------------------


def _failing_pipeline(flag, record, **kwargs):
    fail = FailOnRecord(OperatorConfig(), record=record, flag_path=str(flag))
    return build_pipeline(host_stages=[square_op(), fail, jitter_op()], **kwargs)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_an_operator_failure_names_the_record_and_the_stream_resumes_after_the_fix(reference, tmp_path, deadline, kind):
    batches, states = reference
    # FailOnRecord is the identity when it does not fail, so the stream is the reference's.
    record = next(int(r) for r in _valid(batches[2], "label") if r != 0)  # first served in batch 2
    flag = tmp_path / "fail"
    flag.touch()
    iterator = iter(_failing_pipeline(flag, record, workers=2, worker_kind=kind))
    with iterator:
        got = collect(iterator, limit=2)
        good_state = iterator.get_state()
        with pytest.raises(HostStageError) as info:
            next(iterator)
        message = str(info.value)
        assert "IndexSource" in message and f"record {record}" in message, message
        assert "FailOnRecord" in message and "ValueError: cannot process this one (flag fail)" in message, message
        assert iterator.get_state() == good_state  # the failed batch was not handed out
        assert (good_state["epoch"], good_state["position"]) == (0, 2 * BATCH)
        assert_streams_equal(got, batches[:2])
        flag.unlink()  # the fix
        iterator.set_state(good_state)
        rest = collect(iterator)
        final = iterator.get_state()
    assert_streams_equal(rest, batches[2:])
    assert (final["epoch"], final["position"]) == (states[-1]["epoch"], states[-1]["position"])


def test_a_failing_read_names_the_record():
    pipeline = build_pipeline(
        source=IndexSource(StructuralConfig(), n=N, fail_read_record=7),
        host_stages=[],
        stages=[],
        shuffle=False,
        workers=2,
    )
    with iter(pipeline) as iterator:
        assert next(iterator)["label"].tolist() == [0, 1, 2, 3, 4]
        with pytest.raises(HostStageError, match="IndexSource could not read record 7: OSError: the disk is on fire"):
            next(iterator)


@pytest.mark.parametrize("with_operator", [False, True], ids=["no-host-operator", "identity-host-operator"])
@pytest.mark.parametrize(
    "n, odd_record, odd_length",
    [(N, 8, 4), (21, 20, 1)],
    ids=["longer-among-others", "shorter-alone-in-its-batch"],
)
def test_a_record_of_another_shape_names_the_column_and_the_record(with_operator, n, odd_record, odd_length):
    # Every record's ragged ``tokens`` has 3 values, odd_record's has odd_length: the batch holding it
    # must be refused, whether or not a host operator runs (in the second case the odd record is
    # the only valid row of the epoch's last batch, where a length-1 value would broadcast).
    pipeline = build_pipeline(
        source=IndexSource(StructuralConfig(), n=n, odd_record=odd_record, odd_length=odd_length),
        host_stages=[HostMapOperator(HostMapOperatorConfig(), fn=identity)] if with_operator else [],
        stages=[],
        shuffle=False,
        workers=0,
    )
    iterator = iter(pipeline)
    served = collect(iterator, limit=odd_record // BATCH)
    assert np.concatenate([b["tokens"] for b in served]).tolist() == [[r] * 3 for r in range(len(served) * BATCH)]
    with pytest.raises(HostStageError, match=rf"column 'tokens' of record {odd_record} is int32\[{odd_length}\]"):
        next(iterator)


def test_construction_refuses_what_cannot_reach_the_device_or_the_workers():
    with_bytes = IndexSource(StructuralConfig(), n=N, with_bytes=True)
    with pytest.raises(TypeError, match="column 'raw' of record 0 is bytes"):
        build_pipeline(source=with_bytes, host_stages=[], stages=[], workers=0)
    decoded = build_pipeline(
        source=with_bytes, host_stages=[HostMapOperator(HostMapOperatorConfig(), fn=drop_raw)], stages=[], workers=0
    )
    batch = next(iter(decoded))
    assert "raw" not in batch
    assert (batch["raw_length"] == np.array([len(str(r)) for r in np.asarray(batch["label"])])).all()

    with pytest.raises(ValueError, match="host_stages run on records read on the host"):
        Pipeline(source=make_source(N), host_stages=[square_op()], batch_size=BATCH)
    with pytest.raises(ValueError, match="worker_kind must be one of"):
        build_pipeline(worker_kind="bogus")
    with pytest.raises(ValueError, match="workers"):
        build_pipeline(workers=-1)
    with pytest.raises(ValueError, match="read_ahead"):
        build_pipeline(read_ahead=-1)
    closure = HostMapOperator(HostMapOperatorConfig(), fn=lambda element, rng: element)
    with pytest.raises(TypeError, match=r"host_stages\[0\] \(HostMapOperator\) cannot be sent"):
        build_pipeline(host_stages=[closure, jitter_op()], worker_kind="process", workers=2)
    build_pipeline(host_stages=[closure, jitter_op()], worker_kind="thread", workers=2)  # threads need no pickling
    with pytest.raises(TypeError, match="read on the host"):
        build_pipeline(workers=0).compute_batch(0, 0)


# -- 6. a worker process dies -------------------------------------------------------------------


@pytest.mark.parametrize("read_ahead", [None, 0], ids=["read-ahead", "no-read-ahead"])
def test_a_killed_worker_stops_the_stream_and_the_last_state_resumes_with_new_workers(reference, deadline, read_ahead):
    batches, states = reference
    iterator = iter(build_pipeline(workers=2, worker_kind="process", read_ahead=read_ahead))
    with iterator:
        got = collect(iterator, limit=1)
        pool = iterator.feed.pool
        victim = pool.processes[0]
        os.kill(victim, signal.SIGKILL)
        _wait_until(lambda: victim not in pool.processes, "the killed worker still looks alive")
        time.sleep(0.2)  # let the executor notice
        with pytest.raises(HostStageError, match="worker process of IndexSource died"):
            for _ in range(len(batches)):  # the batches computed before the kill may still be served
                got.append(to_numpy(next(iterator)))
        served = len(got)
        assert served < len(batches)
        assert_streams_equal(got, batches[:served])
        state = iterator.get_state()
        assert state == states[served]
        iterator.set_state(state)
        rest = collect(iterator)
        assert victim not in pool.processes
    assert_streams_equal(rest, batches[served:])


# -- 7. no orphans ---------------------------------------------------------------------------------


def test_worker_processes_end_on_close_and_when_the_iterator_is_dropped(tmp_path, reference, deadline):
    batches, _ = reference
    pipeline = build_pipeline(source=write_npy_source(tmp_path, N), workers=2, worker_kind="process")
    iterator = iter(pipeline)
    got = collect(iterator, limit=2)
    pids = iterator.feed.pool.processes
    assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
    iterator.close()
    assert all(_gone(pid) for pid in pids)
    assert not {p.pid for p in multiprocessing.active_children()} & set(pids)
    assert iterator.feed.pool.processes == []

    got += collect(iterator, limit=1)  # still usable: new workers
    assert_streams_equal(got, batches[:3])
    new_pids = iterator.feed.pool.processes
    assert new_pids and not set(new_pids) & set(pids) and not any(_gone(pid) for pid in new_pids)
    del iterator
    gc.collect()
    assert all(_gone(pid) for pid in new_pids)
    assert not {p.pid for p in multiprocessing.active_children()} & set(new_pids)


def test_worker_threads_end_on_close_and_when_the_iterator_is_dropped():
    gc.collect()
    before = _host_threads()  # empty unless an earlier test left an iterator alive
    iterator = iter(build_pipeline(workers=3))
    next(iterator)
    started = _host_threads() - before
    assert 1 <= len(started) <= 3
    iterator.close()
    assert not _host_threads() & started
    with iter(build_pipeline(workers=3)) as scoped:
        next(scoped)
        started = _host_threads() - before
        assert started
    assert not _host_threads() & started
    dropped = iter(build_pipeline(workers=3))
    next(dropped)
    started = _host_threads() - before
    assert started
    del dropped
    gc.collect()
    assert not _host_threads() & started


# -- 8. scan ---------------------------------------------------------------------------------------------


def test_scan_over_a_host_source_gives_the_batches_next_gives(reference):
    batches, states = reference
    pipeline = build_pipeline(workers=2)

    def step(batch):
        label_sum = jnp.sum(jnp.where(batch[VALID_MASK], batch["label"], 0))
        return {"batch": batch, "label_sum": label_sum}

    first = pipeline.scan(step, length=7)  # across the epoch boundary
    assert pipeline.scan_iterator.get_state() == states[7]
    iterator = pipeline.scan_iterator
    second = pipeline.scan(step, length=3)
    assert iterator.get_state() == states[10] and iterator.exhausted
    scanned = [
        {key: np.asarray(value[i]) for key, value in out["batch"].items()}
        for out, length in ((first, 7), (second, 3))
        for i in range(length)
    ]
    assert_streams_equal(scanned, batches)
    sums = np.concatenate([np.asarray(first["label_sum"]), np.asarray(second["label_sum"])]).tolist()
    assert sums == [int(_valid(b, "label").sum()) for b in batches]
    iterator.close()


# -- 9. counters --------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop_remainder, valid_rows", [(False, N), (True, 20)])
def test_host_operators_count_the_valid_rows_served(drop_remainder, valid_rows):
    square, noise = square_op(), jitter_op()
    pipeline = build_pipeline(
        host_stages=[square, noise], num_epochs=1, drop_remainder=drop_remainder, workers=2, read_ahead=4
    )
    with iter(pipeline) as iterator:
        collect(iterator, limit=3)  # more batches were computed ahead; only the served ones count
        assert square.get_operation_stats()["applied_count"] == 15
        assert noise.get_operation_stats()["applied_count"] == 15
        collect(iterator)
    assert square.get_operation_stats() == {"applied_count": valid_rows, "skipped_count": 0}
    assert noise.get_operation_stats()["applied_count"] == valid_rows

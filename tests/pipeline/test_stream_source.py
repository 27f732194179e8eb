"""Pipelines over a stream source (IterableSource): exact epochs, shuffle buffer, resume anywhere, errors.

Every record names itself: ``label`` is its stream position, ``x`` is ``label / 2`` and ``image`` is
``10 * label + arange(6)``, so any valid row shows which record it came from and whether its values are that
record's. The builders live at module level so that a fresh process can import this file and rebuild them.
"""

import functools
import gc
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from pipeline_helpers import assert_streams_equal, collect, valid_labels

from datarax import Pipeline
from datarax.operators import HostFilter, HostFilterConfig, HostMapOperator, HostMapOperatorConfig
from datarax.operators.image import RandomFlip, RandomFlipConfig
from datarax.pipeline.collate import HostStageError
from datarax.sources import IterableSource, IterableSourceConfig, MemorySource, MemorySourceConfig

HERE = Path(__file__).resolve().parent
N = 23  # records in the stream
BATCH = 4  # 5 full batches and one of 3 per epoch
BUFFER = 5
PER_EPOCH = 6


def image_of(i):
    return np.arange(6, dtype=np.float32).reshape(2, 3, 1) + np.float32(10 * i)


def record(i):
    return {"label": np.int32(i), "x": np.float32(i / 2), "image": image_of(i)}


def records():
    """The stream: a generator function, called once per pass."""
    for i in range(N):
        yield record(i)


def records_of(length):
    """A stream of ``length`` records with the same columns (a changed stream, for restore checks)."""
    for i in range(length):
        yield record(i)


def bad_records(kind):
    """The stream with record 13 broken in one way."""
    for i in range(N):
        out = record(i)
        if i == 13:
            if kind == "extra column":
                out["extra"] = np.int32(0)
            elif kind == "missing column":
                del out["x"]
            elif kind == "dtype":
                out["label"] = np.int64(i)
            elif kind == "shape":
                out["image"] = np.zeros((3, 2, 1), np.float32)
            elif kind == "bytes":
                out["x"] = b"13"
        yield out


class FlakyRecords:
    """The stream, raising ``OSError`` when it reaches position ``fail_at`` (None: never)."""

    def __init__(self):
        self.fail_at = None

    def __call__(self):
        for i in range(N):
            if i == self.fail_at:
                raise OSError("the disk went away")
            yield record(i)


def text_records():
    """Records with a text column, given as str for odd records and bytes for even ones."""
    for i in range(N):
        text = f"item-{i:03d}"
        yield {"label": np.int32(i), "text": text if i % 2 else text.encode()}


def decode_text(element, rng):
    """A host decode: the text's bytes as a fixed uint8 array."""
    return {"label": element["label"], "code": np.frombuffer(element["text"], np.uint8).copy()}


def add_host_noise(element, rng):
    """A stochastic host operator: a number from the record's own generator."""
    return {**element, "noise": np.int64(rng.integers(0, 1_000_000))}


def not_multiple_of_3(element, rng):
    return int(element["label"]) % 3 != 0


def below_8(element, rng):
    return int(element["label"]) < 8


def fails_on_13(element, rng):
    if int(element["label"]) == 13:
        raise KeyError("no such thing")
    return element


def host_noise():
    return HostMapOperator(HostMapOperatorConfig(stochastic=True, stream_name="noise"), fn=add_host_noise)


def build(records_fn=records, *, host=(), device=False, share=None, **kwargs):
    """The pipeline the tests (and the fresh-process resume) rebuild identically.

    ``host`` names host operators: "noise" (stochastic map), "filter" (keeps labels not divisible by 3),
    "decode" (text to code); ``device`` adds a RandomFlip of the image.
    """
    operators = {
        "noise": host_noise,
        "filter": lambda: HostFilter(HostFilterConfig(), predicate=not_multiple_of_3),
        "below 8": lambda: HostFilter(HostFilterConfig(), predicate=below_8),
        "fails on 13": lambda: HostMapOperator(HostMapOperatorConfig(), fn=fails_on_13),
        "decode": lambda: HostMapOperator(HostMapOperatorConfig(), fn=decode_text),
    }
    config = IterableSourceConfig() if share is None else IterableSourceConfig(process_index=share, process_count=2)
    kwargs.setdefault("batch_size", BATCH)
    kwargs.setdefault("shuffle", True)
    kwargs.setdefault("shuffle_buffer_size", BUFFER)
    kwargs.setdefault("num_epochs", 2)
    kwargs.setdefault("rngs", nnx.Rngs(0))
    return Pipeline(
        source=IterableSource(config, records=records_fn),
        host_stages=[operators[name]() for name in host],
        stages=[RandomFlip(RandomFlipConfig(fields=("image",)))] if device else None,
        **kwargs,
    )


def run_with_states(iterator, limit=None):
    """Every batch and the (JSON round-tripped) state after it."""
    batches, states = [], []
    for batch in iterator:
        batches.append({k: np.asarray(v) for k, v in batch.items()})
        states.append(json.loads(json.dumps(iterator.get_state())))
        if limit is not None and len(batches) == limit:
            break
    return batches, states


def restored(state, **kwargs):
    iterator = iter(build(**kwargs))
    iterator.set_state(state)
    return iterator


def check_rows_are_their_records(batches):
    for batch in batches:  # padding rows too: they repeat a real row
        label = batch["label"]
        np.testing.assert_array_equal(batch["x"], label.astype(np.float32) / 2)
        if "image" in batch:
            images = np.stack([image_of(i) for i in label])
            flipped = images[:, :, ::-1]
            same = (batch["image"] == images).all(axis=(1, 2, 3))
            mirrored = (batch["image"] == flipped).all(axis=(1, 2, 3))
            assert (same | mirrored).all()


# -- epochs and order ------------------------------------------------------------------------------------------


def test_each_epoch_serves_every_record_exactly_once_in_a_new_order():
    batches = collect(iter(build(num_epochs=3)))
    assert len(batches) == 3 * PER_EPOCH
    orders = []
    for epoch in range(3):
        part = batches[epoch * PER_EPOCH : (epoch + 1) * PER_EPOCH]
        labels = valid_labels(part)
        assert sorted(labels) == list(range(N)), epoch
        assert [int(b["valid_mask"].sum()) for b in part] == [4, 4, 4, 4, 4, 3]
        orders.append(labels)
    check_rows_are_their_records(batches)
    assert len({tuple(order) for order in orders}) == 3
    assert all(order != list(range(N)) for order in orders)  # shuffled


def test_without_shuffle_every_epoch_is_the_stream_in_order():
    batches = collect(iter(build(shuffle=False)))
    for epoch in range(2):
        assert valid_labels(batches[epoch * PER_EPOCH : (epoch + 1) * PER_EPOCH]) == list(range(N))
    last = batches[PER_EPOCH - 1]
    assert last["valid_mask"].tolist() == [True, True, True, False]
    assert last["label"].tolist() == [20, 21, 22, 22]  # the padding row repeats the last record


def test_drop_remainder_drops_the_short_last_batch_of_every_epoch():
    batches = collect(iter(build(drop_remainder=True, num_epochs=3)))
    assert len(batches) == 3 * 5
    assert all(b["valid_mask"].all() for b in batches)
    for epoch in range(3):
        labels = valid_labels(batches[epoch * 5 : (epoch + 1) * 5])
        assert len(set(labels)) == 20 and set(labels) <= set(range(N))


def test_the_seed_changes_the_order():
    orders = {tuple(valid_labels(collect(iter(build(rngs=nnx.Rngs(seed), num_epochs=1))))) for seed in range(4)}
    assert len(orders) == 4


def test_iterating_the_pipeline_again_continues_with_the_next_epoch():
    pipeline = build(num_epochs=1)
    first, second = collect(iter(pipeline)), collect(iter(pipeline))
    assert_streams_equal(first + second, collect(iter(build(num_epochs=2))))


def test_a_stream_that_fills_its_last_batch_exactly_ends_the_epoch_there():
    batches, states = run_with_states(iter(build(functools.partial(records_of, 24), num_epochs=2)))
    assert len(batches) == 12 and all(b["valid_mask"].all() for b in batches)
    assert [(s["epoch"], s["position"]) for s in states[4:7]] == [(0, 20), (1, 0), (1, 4)]
    assert sorted(valid_labels(batches[:6])) == sorted(valid_labels(batches[6:])) == list(range(24))
    for k in (4, 5):
        rest = collect(restored(states[k], records_fn=functools.partial(records_of, 24)))
        assert_streams_equal(rest, batches[k + 1 :])


@pytest.mark.parametrize("size", [1, 2, BUFFER])
def test_a_record_is_served_only_after_it_is_read(size):
    labels = valid_labels(collect(iter(build(num_epochs=1, shuffle_buffer_size=size))))
    assert sorted(labels) == list(range(N))
    # The k-th record served comes from the first k + size records of the stream.
    assert all(label < k + size for k, label in enumerate(labels))
    if size == 1:
        assert labels == list(range(N))


def test_a_buffer_larger_than_the_stream_serves_an_exact_permutation():
    batches = collect(iter(build(shuffle_buffer_size=1000, num_epochs=2)))
    first, second = valid_labels(batches[:PER_EPOCH]), valid_labels(batches[PER_EPOCH:])
    assert sorted(first) == sorted(second) == list(range(N)) and first != second


def test_host_and_device_randomness_are_keyed_by_epoch_and_stream_position():
    """The noise and the flip a record gets do not depend on where the buffer puts it."""

    def draws(buffer_size):
        batches = collect(iter(build(host=["noise"], device=True, shuffle_buffer_size=buffer_size)))
        out = {}
        for epoch in range(2):
            for b in batches[epoch * PER_EPOCH : (epoch + 1) * PER_EPOCH]:
                for label, noise, image, valid in zip(b["label"], b["noise"], b["image"], b["valid_mask"], strict=True):
                    if valid:
                        out[(epoch, int(label))] = (int(noise), bool((image != image_of(label)).any()))
        return out

    small, large = draws(2), draws(16)
    assert small == large
    assert len(small) == 2 * N
    noise = {key: value[0] for key, value in small.items()}
    assert [noise[(0, i)] for i in range(N)] != [noise[(1, i)] for i in range(N)]  # a new draw each epoch
    flips = [value[1] for value in small.values()]
    assert 0 < sum(flips) < len(flips)


# -- workers and prefetch ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    """Two epochs with a stochastic host operator and a random device flip, computed inline."""
    return run_with_states(iter(build(host=["noise"], device=True, workers=0, prefetch=0)))


@pytest.mark.parametrize(
    "options",
    [
        dict(workers=1, prefetch=0),
        dict(workers=2, prefetch=0),
        dict(workers=0, prefetch=2),
        dict(workers=2, prefetch=2),
        dict(workers=1, prefetch=2, read_ahead=1),
    ],
    ids=["workers1", "workers2", "prefetch2", "workers2-prefetch2", "read_ahead1"],
)
def test_workers_and_prefetch_do_not_change_the_batches_or_the_states(reference, options):
    batches, states = run_with_states(iter(build(host=["noise"], device=True, **options)))
    assert_streams_equal(batches, reference[0])
    assert states == reference[1]
    check_rows_are_their_records(batches)


# -- resume ----------------------------------------------------------------------------------------------------


def test_the_state_carries_the_shuffle_buffer_and_stays_small(reference):
    _, states = reference
    for k, state in enumerate(states):
        assert len(json.dumps(state)) < 1000
        buffer = state["stream_buffer"]
        assert buffer["drawn"] == state["position"]
        assert buffer["read"] - buffer["drawn"] == len(buffer["positions"]) <= BUFFER
        if state["position"] == 0:
            assert buffer == {"read": 0, "drawn": 0, "positions": []}, k
    assert [s["epoch"] for s in states] == [0] * 5 + [1] * 6 + [2]
    assert [s["position"] for s in states] == [4, 8, 12, 16, 20, 0] * 2


@pytest.mark.parametrize("options", [dict(), dict(workers=2, prefetch=2)], ids=["inline", "thread"])
def test_resume_after_every_batch_continues_with_the_same_batches(reference, options):
    batches, states = reference
    for k, state in enumerate(states):
        iterator = restored(state, host=["noise"], device=True, **options)
        assert iterator.get_state() == state
        rest, rest_states = run_with_states(iterator)
        assert_streams_equal(rest, batches[k + 1 :])
        assert rest_states == states[k + 1 :], k


def test_resume_on_the_same_iterator_goes_back_and_forth(reference):
    batches, states = reference
    iterator = iter(build(host=["noise"], device=True))
    for k in (7, 2, 9, 0, 4):
        iterator.set_state(states[k])
        assert_streams_equal(collect(iterator, limit=2), batches[k + 1 : k + 3])


@pytest.mark.parametrize("options", [dict(), dict(workers=2, prefetch=2)], ids=["inline", "thread"])
def test_closing_the_iterator_mid_epoch_and_going_on_changes_nothing(reference, options):
    batches, _ = reference
    iterator = iter(build(host=["noise"], device=True, **options))
    served = collect(iterator, limit=3)
    iterator.close()
    served += collect(iterator, limit=5)  # across the epoch boundary
    with iterator:
        served += collect(iterator)
    assert_streams_equal(served, batches)


def test_an_iterator_dropped_without_close_stops_its_thread():
    pipeline = build(workers=2, num_epochs=None)
    before = set(threading.enumerate())
    started = []
    for _ in range(3):
        iterator = iter(pipeline)
        next(iterator)
        started += [t for t in threading.enumerate() if t not in before and t not in started]
        del iterator
    assert [t.name for t in started] == ["datarax-stream"] * 3
    gc.collect()
    for thread in started:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in started)


def test_resume_with_endless_epochs():
    take = 16  # two and a half epochs
    batches, states = run_with_states(iter(build(host=["noise"], num_epochs=None)), limit=take)
    assert len(batches) == take
    assert [s["epoch"] for s in states][-1] == 2
    assert all(s["stop_epoch"] is None for s in states)
    for k in range(take - 1):
        rest = collect(restored(states[k], host=["noise"], num_epochs=None), limit=take - k - 1)
        assert_streams_equal(rest, batches[k + 1 :])


def test_resume_in_a_fresh_process_equals_the_continuation_in_this_one(reference, tmp_path):
    batches, states = reference
    k = 3  # the padded batch and the epoch boundary are still ahead
    state_file, out_file = tmp_path / "state.json", tmp_path / "rest.npz"
    state_file.write_text(json.dumps(states[k]))
    script = tmp_path / "resume.py"
    script.write_text(
        "import json, sys\n"
        "import numpy as np\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import test_stream_source as streams\n"
        "iterator = iter(streams.build(host=['noise'], device=True))\n"
        "iterator.set_state(json.loads(open(sys.argv[1]).read()))\n"
        "rest = streams.collect(iterator)\n"
        "np.savez(sys.argv[2], **{f'{i}/{key}': v for i, batch in enumerate(rest) for key, v in batch.items()})\n"
        "print('BATCHES', len(rest))\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, str(script), str(state_file), str(out_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"BATCHES {len(batches) - k - 1}" in done.stdout
    with np.load(out_file) as saved:
        rest = [{key: saved[f"{i}/{key}"] for key in batches[0]} for i in range(len(batches) - k - 1)]
        assert len(saved.files) == len(rest) * len(batches[0])
    assert_streams_equal(rest, batches[k + 1 :])


def test_a_state_is_only_restored_into_a_pipeline_with_the_same_buffer_size(reference):
    _, states = reference
    iterator = iter(build(host=["noise"], device=True, shuffle_buffer_size=BUFFER + 1))
    with pytest.raises(ValueError, match="fingerprint"):
        iterator.set_state(states[2])


def test_a_state_is_only_restored_into_a_pipeline_with_the_same_seed(reference):
    _, states = reference
    iterator = iter(build(host=["noise"], device=True, rngs=nnx.Rngs(1)))
    with pytest.raises(ValueError, match="seed"):
        iterator.set_state(states[2])


def test_restoring_into_a_stream_that_changed_length_is_an_error():
    batches, states = run_with_states(iter(build(num_epochs=1)))
    # After batch 1 the buffer holds position 12: a stream of 11 records cannot give it back.
    assert max(states[1]["stream_buffer"]["positions"]) == 12
    shorter = iter(build(functools.partial(records_of, 11), num_epochs=1))
    shorter.set_state(states[1])
    with pytest.raises(HostStageError, match="same records every pass"):
        next(shorter)
    # After batch 4 the buffer is draining: the state says the stream ended at 23 records.
    assert states[4]["stream_buffer"]["read"] == N and len(states[4]["stream_buffer"]["positions"]) == 3
    longer = iter(build(functools.partial(records_of, N + 5), num_epochs=1))
    longer.set_state(states[4])
    with pytest.raises(HostStageError, match="ended after 23 records, but it has more"):
        next(longer)
    same = iter(build(functools.partial(records_of, N), num_epochs=1))
    same.set_state(states[4])
    assert_streams_equal(collect(same), batches[5:])


# -- set_state refuses bad buffer states -----------------------------------------------------------------------


BAD_BUFFERS = [
    ({"read": 13, "drawn": 8}, "keys"),
    ({"read": 13, "drawn": 8, "positions": [8, 9, 10, 11, 12], "extra": 1}, "keys"),
    ([13, 8, [8, 9, 10, 11, 12]], "keys"),
    ({"read": 13, "drawn": 7, "positions": [8, 9, 10, 11, 12, 7]}, "drawn must equal position 8"),
    ({"read": 13, "drawn": "8", "positions": [8, 9, 10, 11, 12]}, "drawn must equal position 8"),
    ({"read": 7, "drawn": 8, "positions": []}, "read must be an int >= drawn 8"),
    ({"read": 13.0, "drawn": 8, "positions": [8, 9, 10, 11, 12]}, "read must be an int"),
    ({"read": 13, "drawn": 8, "positions": [8, 9, 10, 11, 13]}, "positions must be 5 distinct ints"),
    ({"read": 13, "drawn": 8, "positions": [-1, 9, 10, 11, 12]}, "positions must be 5 distinct ints"),
    ({"read": 13, "drawn": 8, "positions": [8, 9, 9, 11, 12]}, "positions must be 5 distinct ints"),
    ({"read": 13, "drawn": 8, "positions": [8, 9, 10, 11]}, "positions must be 5 distinct ints"),
    ({"read": 14, "drawn": 8, "positions": [7, 8, 9, 10, 11, 12]}, "at most shuffle_buffer_size=5"),
    ({"read": 13, "drawn": 8, "positions": [8.0, 9, 10, 11, 12]}, "positions must be 5 distinct ints"),
    ({"read": 13, "drawn": 8, "positions": "89abc"}, "positions must be 5 distinct ints"),
    ({"read": 13, "drawn": 8, "positions": None}, "positions must be 5 distinct ints"),
]


@pytest.mark.parametrize("options", [dict(), dict(workers=2, prefetch=2)], ids=["inline", "thread"])
def test_set_state_refuses_bad_buffer_states_and_leaves_the_iterator_unchanged(reference, options):
    batches, states = reference
    iterator = iter(build(host=["noise"], device=True, **options))
    collect(iterator, limit=2)
    state = iterator.get_state()
    assert state == states[1] and state["position"] == 8
    for bad, message in BAD_BUFFERS:
        with pytest.raises(ValueError, match=message):
            iterator.set_state({**state, "stream_buffer": bad})
        assert iterator.get_state() == state, bad
    without = {key: value for key, value in state.items() if key != "stream_buffer"}
    with pytest.raises(ValueError, match="state keys do not match"):
        iterator.set_state(without)
    assert_streams_equal(collect(iterator, limit=1), batches[2:3])  # the next batch is the one it was going to be
    assert iterator.get_state() == states[2]


# -- host operators on a stream --------------------------------------------------------------------------------


def test_a_host_filter_keeps_full_batches_of_exactly_the_kept_records():
    batches, states = run_with_states(iter(build(host=["filter", "noise"], num_epochs=2)))
    kept = [i for i in range(N) if i % 3]  # 15 records: 3 full batches and one of 3 per epoch
    assert len(batches) == 8
    unfiltered = collect(iter(build(num_epochs=2)))
    for epoch in range(2):
        part = batches[epoch * 4 : (epoch + 1) * 4]
        assert [int(b["valid_mask"].sum()) for b in part] == [4, 4, 4, 3]
        assert sorted(valid_labels(part)) == kept
        # The filter drops records after the buffer draws them: the kept order is the unfiltered order, filtered.
        order = valid_labels(unfiltered[epoch * PER_EPOCH : (epoch + 1) * PER_EPOCH])
        assert valid_labels(part) == [label for label in order if label % 3]
    check_rows_are_their_records(batches)
    for k, state in enumerate(states):
        rest, rest_states = run_with_states(restored(state, host=["filter", "noise"]))
        assert_streams_equal(rest, batches[k + 1 :])
        assert rest_states == states[k + 1 :]
    threaded = collect(iter(build(host=["filter", "noise"], workers=2, prefetch=2)))
    assert_streams_equal(threaded, batches)


def test_a_host_filter_that_rejects_the_rest_of_an_epoch_ends_it_after_a_full_batch():
    batches, states = run_with_states(iter(build(host=["below 8"], shuffle=False)))
    # Two full batches per epoch; the third finds only rejected records and the next epoch starts.
    assert [b["label"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2
    assert all(b["valid_mask"].all() for b in batches)
    assert [(s["epoch"], s["position"]) for s in states] == [(0, 4), (0, 8), (1, 4), (1, 8)]
    for k, state in enumerate(states):
        assert_streams_equal(collect(restored(state, host=["below 8"], shuffle=False)), batches[k + 1 :])


@pytest.mark.parametrize("options", [dict(), dict(workers=2, prefetch=2)], ids=["inline", "thread"])
def test_a_host_filter_counts_the_records_each_handed_out_batch_drew(options):
    pipeline = build(host=["filter"], num_epochs=1, **options)
    iterator = iter(pipeline)
    kept = 0
    for batch in iterator:
        kept += int(np.asarray(batch["valid_mask"]).sum())
        position = iterator.get_state()["position"] or N  # 0: the epoch ended after all N records
        stats = pipeline.host_stages[0].get_operation_stats()
        assert stats == {"applied_count": kept, "skipped_count": position - kept}
    assert kept == 15


def test_a_host_filter_with_drop_remainder_serves_only_full_batches():
    batches = collect(iter(build(host=["filter"], drop_remainder=True, num_epochs=2)))
    assert len(batches) == 6 and all(b["valid_mask"].all() for b in batches)
    assert all(label % 3 for label in valid_labels(batches))


def test_bytes_and_str_columns_decoded_on_the_host():
    batches, states = run_with_states(iter(build(text_records, host=["decode"], num_epochs=1)))
    assert set(batches[0]) == {"label", "code", "valid_mask"}
    assert batches[0]["code"].dtype == np.uint8 and batches[0]["code"].shape == (BATCH, 8)
    assert sorted(valid_labels(batches)) == list(range(N))
    for batch in batches:
        for label, code in zip(batch["label"], batch["code"], strict=True):
            assert bytes(code) == f"item-{label:03d}".encode()
    rest = collect(restored(states[2], records_fn=text_records, host=["decode"], num_epochs=1))
    assert_streams_equal(rest, batches[3:])


# -- process shares --------------------------------------------------------------------------------------------


def test_process_shares_are_disjoint_and_cover_the_stream():
    shares = [collect(iter(build(share=i, num_epochs=1, batch_size=3))) for i in range(2)]
    labels = [valid_labels(batches) for batches in shares]
    assert sorted(labels[0]) == list(range(0, N, 2))
    assert sorted(labels[1]) == list(range(1, N, 2))
    assert not set(labels[0]) & set(labels[1])
    assert sorted(labels[0] + labels[1]) == list(range(N))
    for batches in shares:
        check_rows_are_their_records(batches)


def test_a_process_share_resumes_exactly():
    batches, states = run_with_states(iter(build(share=1, batch_size=3)))
    for k, state in enumerate(states):
        rest = collect(restored(state, share=1, batch_size=3))
        assert_streams_equal(rest, batches[k + 1 :])


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(process_index=2, process_count=2), r"process_index must be None or an int in \[0, 2\), got 2"),
        (dict(process_index=-1), "process_index must be None or an int >= 0, got -1"),
        (dict(process_count=0), "process_count must be None or an int >= 1, got 0"),
        (dict(process_count=True), "process_count must be None or an int >= 1, got True"),
    ],
)
def test_a_bad_share_is_refused_naming_the_field(config, message):
    with pytest.raises(ValueError, match=message):
        IterableSourceConfig(**config)


def test_a_share_beyond_the_process_count_is_refused():
    # process_count None is JAX's process count: 1 here.
    with pytest.raises(ValueError, match="process_index 1 is not below process_count 1"):
        IterableSource(IterableSourceConfig(process_index=1), records=records)


def test_a_stream_source_reads_from_a_position_and_has_no_random_access():
    source = IterableSource(IterableSourceConfig(), records=records)
    assert [int(r["label"]) for r in source.iter_records(20)] == [20, 21, 22]
    share = IterableSource(IterableSourceConfig(process_index=1, process_count=2), records=records)
    assert [int(r["label"]) for r in share.iter_records(9)] == [19, 21]
    with pytest.raises(TypeError, match="no len"):
        len(source)
    with pytest.raises(TypeError, match="no random access"):
        source.get_batch_at(0, 2)
    with pytest.raises(TypeError, match="no random access"):
        source.get_records([0])


def test_the_spec_is_inferred_from_the_first_record_or_given():
    spec = IterableSource(IterableSourceConfig(), records=text_records).element_spec()
    assert spec["label"].shape == () and spec["label"].dtype == np.int32
    assert type(spec["text"]).__name__ == "BytesSpec"
    with pytest.raises(ValueError, match="column 'x' of the first record is NoneType"):
        IterableSource(IterableSourceConfig(), records=lambda: iter([{"x": None}]))
    with pytest.raises(ValueError, match="the first record must be a non-empty dict"):
        IterableSource(IterableSourceConfig(), records=lambda: iter([3]))
    with pytest.raises(TypeError, match="element_spec"):
        IterableSource(IterableSourceConfig(), records=records, element_spec=3)


# -- what a stream pipeline refuses ----------------------------------------------------------------------------


def test_a_stream_pipeline_has_no_len():
    with pytest.raises(TypeError, match="no len"):
        len(build())


def test_a_stream_pipeline_cannot_scan():
    with pytest.raises(ValueError, match="cannot scan"):
        build().scan(lambda batch: batch["x"].sum(), length=2)


def test_process_workers_are_refused_at_construction():
    with pytest.raises(ValueError, match="worker_kind='process'"):
        build(worker_kind="process", workers=2)


def test_shuffle_buffer_size_is_refused_for_a_random_access_source():
    source = MemorySource(MemorySourceConfig(), data={"x": np.arange(8, dtype=np.int32)})
    with pytest.raises(ValueError, match="shuffle_buffer_size"):
        Pipeline(source=source, batch_size=2, shuffle=True, shuffle_buffer_size=4, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("size", [0, -1, "x", 2.0, True])
def test_a_bad_shuffle_buffer_size_is_refused_naming_it(size):
    with pytest.raises(ValueError, match="shuffle_buffer_size must be a positive int"):
        build(shuffle_buffer_size=size)


def test_a_generator_object_is_refused():
    with pytest.raises(TypeError, match="records must be a function"):
        IterableSource(IterableSourceConfig(), records=records())


def test_an_empty_stream_is_refused_at_construction():
    with pytest.raises(ValueError, match="yields no records"):
        IterableSource(IterableSourceConfig(), records=lambda: iter(()))
    # With the spec given the source is built, and the pipeline refuses it.
    spec = IterableSource(IterableSourceConfig(), records=records).element_spec()
    empty = IterableSource(IterableSourceConfig(), records=lambda: iter(()), element_spec=spec)
    with pytest.raises(HostStageError, match="yields no records"):
        Pipeline(source=empty, batch_size=2, rngs=nnx.Rngs(0))


def test_a_filter_that_keeps_nothing_is_refused_at_construction():
    source = IterableSource(IterableSourceConfig(), records=records)
    reject = HostFilter(HostFilterConfig(), predicate=lambda element, rng: False)
    with pytest.raises(HostStageError, match="that the filters keep"):
        Pipeline(source=source, host_stages=[reject], batch_size=2, rngs=nnx.Rngs(0))


def test_an_epoch_too_short_for_drop_remainder_is_an_error_not_a_hang():
    iterator = iter(build(functools.partial(records_of, 3), drop_remainder=True))
    with pytest.raises(HostStageError, match="fewer than batch_size with drop_remainder=True"):
        next(iterator)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("extra column", r"stream position 13 has columns \['extra', 'image', 'label', 'x'\]"),
        ("missing column", r"stream position 13 has columns \['image', 'label'\]"),
        ("dtype", r"column 'label' of the record at stream position 13 is int64\[\]; expected int32\[\]"),
        ("shape", r"column 'image' of the record at stream position 13 is float32\[3, 2, 1\]"),
        ("bytes", r"column 'x' of the record at stream position 13"),
    ],
)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_record_mid_stream_names_its_position(kind, message, workers):
    iterator = iter(build(functools.partial(bad_records, kind), workers=workers, num_epochs=1))
    served = []
    with pytest.raises(HostStageError, match=message):
        for batch in iterator:
            served.append(batch)
    assert len(served) == 2  # record 13 is read while drawing the third batch (buffer of 5)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_host_operator_names_the_record(workers):
    iterator = iter(build(host=["fails on 13"], workers=workers, num_epochs=1))
    with pytest.raises(HostStageError, match="failed on record 13 of IterableSource: KeyError"):
        collect(iterator)


def test_a_feed_rebuilds_the_buffer_state_of_a_cursor_it_did_not_serve(reference):
    _, states = reference
    feed = iter(build(host=["noise"], device=True)).feed
    for state in states:
        assert feed.state_at(state["epoch"], state["position"]) == state["stream_buffer"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_stream_names_the_position_and_resumes_from_the_last_state_once_fixed(workers):
    flaky = FlakyRecords()
    pipeline_options = dict(workers=workers, prefetch=0, num_epochs=1)
    expected = collect(iter(build(flaky, **pipeline_options)))
    flaky.fail_at = 13
    iterator = iter(build(flaky, **pipeline_options))
    served, states = [], []
    with pytest.raises(HostStageError, match=r"stream position 13: OSError: the disk went away"):
        for batch in iterator:
            served.append({k: np.asarray(v) for k, v in batch.items()})
            states.append(iterator.get_state())
    assert len(served) == 2
    assert iterator.get_state() == states[-1]  # the failed batch moved nothing
    with pytest.raises(HostStageError, match="stream position 13"):
        next(iterator)  # still broken: the same error again
    flaky.fail_at = None
    iterator.set_state(states[-1])
    assert_streams_equal(served + collect(iterator), expected)
    fresh = iter(build(flaky, **pipeline_options))
    fresh.set_state(states[-1])
    assert_streams_equal(served + collect(fresh), expected)


def test_a_failing_stream_with_prefetch_loses_no_batch():
    flaky = FlakyRecords()
    expected = collect(iter(build(flaky, prefetch=2, num_epochs=1)))
    flaky.fail_at = 13
    iterator = iter(build(flaky, prefetch=2, num_epochs=1))
    served = []
    with pytest.raises(HostStageError):
        for batch in iterator:
            served.append({k: np.asarray(v) for k, v in batch.items()})
    state = iterator.get_state()
    flaky.fail_at = None
    iterator.set_state(state)
    assert_streams_equal(served + collect(iterator), expected)

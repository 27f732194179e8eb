"""ShuffleBuffer: exact permutations per pass, seeded and counter-based, and a state that restores at any draw."""

import json

import numpy as np
import pytest

from datarax.pipeline.shuffle_buffer import ShuffleBuffer


def stream(length, start=0):
    """``(position, record)`` pairs of a stream of ``length`` records from ``start``; a record names its position."""
    return iter([(p, f"r{p}") for p in range(start, length)])


def shuffled(size, length, seed=0, epoch=0):
    """Every ``(position, record)`` one pass hands out, in order."""
    buffer = ShuffleBuffer(size=size, seed=seed, epoch=epoch)
    buffer.start(stream(length))
    out = []
    while not buffer.done:
        out.append(buffer.draw())
    return out


def positions(drawn):
    return [p for p, _ in drawn]


def reader_for(state, length):
    """What a restore reads: the stream from the oldest buffered position (or from ``read`` when none is held)."""
    return stream(length, min(state["positions"]) if state["positions"] else state["read"])


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 64])
@pytest.mark.parametrize("length", [0, 1, 2, 5, 16, 17, 100])
def test_every_pass_is_an_exact_permutation_of_the_stream(size, length):
    for epoch in range(3):
        drawn = shuffled(size, length, seed=5, epoch=epoch)
        assert sorted(positions(drawn)) == list(range(length)), (size, length, epoch)
        assert all(record == f"r{p}" for p, record in drawn)  # a record travels with its position


def test_a_permutation_across_the_hash_blocks_of_a_long_stream():
    drawn = positions(shuffled(32, 3000, seed=1))
    assert sorted(drawn) == list(range(3000))


@pytest.mark.parametrize("length", [0, 1, 9, 50])
def test_a_buffer_of_one_slot_is_the_stream_in_order(length):
    assert positions(shuffled(1, length, seed=3, epoch=4)) == list(range(length))


def test_an_empty_stream_is_done_at_once_and_its_state_is_empty():
    buffer = ShuffleBuffer(size=4, seed=0, epoch=0)
    buffer.start(stream(0))
    assert buffer.done
    assert buffer.state() == {"read": 0, "drawn": 0, "positions": []}


def test_a_buffer_larger_than_the_stream_holds_all_of_it_and_still_shuffles():
    buffer = ShuffleBuffer(size=50, seed=0, epoch=0)
    buffer.start(stream(10))
    assert buffer.state() == {"read": 10, "drawn": 0, "positions": list(range(10))}
    orders = {tuple(positions(shuffled(50, 10, seed=s))) for s in range(20)}
    assert all(sorted(order) == list(range(10)) for order in orders)
    assert len(orders) == 20


def test_the_output_is_a_pure_function_of_seed_and_epoch():
    assert shuffled(8, 60, seed=7, epoch=2) == shuffled(8, 60, seed=7, epoch=2)
    reference = positions(shuffled(8, 60, seed=7, epoch=2))
    assert positions(shuffled(8, 60, seed=7, epoch=3)) != reference
    assert positions(shuffled(8, 60, seed=8, epoch=2)) != reference
    # Seed and epoch are not interchangeable: (seed, epoch) and (epoch, seed) differ.
    assert positions(shuffled(8, 60, seed=2, epoch=7)) != reference


def test_many_epochs_and_seeds_give_many_orders():
    by_epoch = {tuple(positions(shuffled(6, 30, seed=0, epoch=e))) for e in range(12)}
    by_seed = {tuple(positions(shuffled(6, 30, seed=s, epoch=0))) for s in range(12)}
    assert len(by_epoch) == 12 and len(by_seed) == 12


def test_the_state_counts_reads_and_draws_and_names_the_buffered_positions():
    buffer = ShuffleBuffer(size=4, seed=0, epoch=0)
    buffer.start(stream(10))
    assert buffer.state() == {"read": 4, "drawn": 0, "positions": [0, 1, 2, 3]}
    first, _ = buffer.draw()
    state = buffer.state()
    assert state["read"] == 5 and state["drawn"] == 1
    assert sorted(state["positions"]) == sorted({0, 1, 2, 3, 4} - {first})
    for _ in range(9):
        buffer.draw()
        state = buffer.state()
        assert state["read"] - state["drawn"] == len(state["positions"])
    assert buffer.done and buffer.state() == {"read": 10, "drawn": 10, "positions": []}


@pytest.mark.parametrize("size, length", [(1, 12), (3, 20), (7, 40), (16, 10), (5, 5)])
def test_restore_at_every_draw_continues_identically(size, length):
    reference = shuffled(size, length, seed=9, epoch=1)
    for k in range(length + 1):
        original = ShuffleBuffer(size=size, seed=9, epoch=1)
        original.start(stream(length))
        head = [original.draw() for _ in range(k)]
        assert head == reference[:k]
        state = json.loads(json.dumps(original.state()))  # JSON round trip: plain ints and lists
        assert state == original.state()
        restored = ShuffleBuffer(size=size, seed=9, epoch=1)
        restored.restore(state, reader_for(state, length))
        assert restored.state() == state, k
        rest = []
        while not restored.done:
            rest.append(restored.draw())
        assert rest == reference[k:], (size, length, k)


@pytest.mark.parametrize("k", [1020, 1023, 1024, 1025, 1100])
def test_restore_next_to_a_hash_block_boundary(k):
    length = 1200
    reference = shuffled(16, length, seed=2, epoch=0)
    buffer = ShuffleBuffer(size=16, seed=2, epoch=0)
    buffer.start(stream(length))
    for _ in range(k):
        buffer.draw()
    state = buffer.state()
    restored = ShuffleBuffer(size=16, seed=2, epoch=0)
    restored.restore(state, reader_for(state, length))
    rest = []
    while not restored.done:
        rest.append(restored.draw())
    assert rest == reference[k:]


def test_restore_reads_the_stream_from_the_oldest_buffered_record_only():
    buffer = ShuffleBuffer(size=4, seed=0, epoch=0)
    buffer.start(stream(30))
    for _ in range(12):
        buffer.draw()
    state = buffer.state()
    oldest = min(state["positions"])
    read = []

    def reader():
        for item in stream(30, oldest):
            read.append(item[0])
            yield item

    restored = ShuffleBuffer(size=4, seed=0, epoch=0)
    restored.restore(state, reader())
    # Re-reading stops at the last record the state had read; the rest is read while drawing.
    assert read == list(range(oldest, state["read"]))
    restored.draw()
    assert read == list(range(oldest, state["read"] + 1))


def _state_after(size, length, draws):
    buffer = ShuffleBuffer(size=size, seed=4, epoch=0)
    buffer.start(stream(length))
    for _ in range(draws):
        buffer.draw()
    return buffer.state()


def test_restore_refuses_a_stream_too_short_to_hold_the_buffered_records():
    state = _state_after(4, 20, 6)  # read 10
    restored = ShuffleBuffer(size=4, seed=4, epoch=0)
    with pytest.raises(ValueError, match="stream ended before re-reading"):
        restored.restore(state, stream(max(state["positions"]), min(state["positions"])))


def test_restore_refuses_a_stream_that_ends_before_what_the_state_read():
    # A draining state (the stream ended at 10) whose newest record has already been handed out.
    state = next(s for s in (_state_after(4, 10, k) for k in range(6, 10)) if max(s["positions"]) < 9)
    short = max(state["positions"]) + 1  # every buffered record is there, but not all that was read
    restored = ShuffleBuffer(size=4, seed=4, epoch=0)
    with pytest.raises(ValueError, match="stream"):
        restored.restore(state, stream(short, min(state["positions"])))


def test_restore_refuses_a_stream_longer_than_a_draining_state_says():
    state = _state_after(4, 10, 8)  # the stream ended at 10: two records left in a draining buffer
    assert state["read"] == 10 and len(state["positions"]) == 2
    restored = ShuffleBuffer(size=4, seed=4, epoch=0)
    with pytest.raises(ValueError, match="ended after 10 records, but it has more"):
        restored.restore(state, stream(11, min(state["positions"])))
    fine = ShuffleBuffer(size=4, seed=4, epoch=0)
    fine.restore(state, stream(10, min(state["positions"])))
    assert sorted(positions([fine.draw(), fine.draw()])) == sorted(state["positions"]) and fine.done


def test_restore_of_a_finished_pass_is_done():
    state = _state_after(3, 7, 7)
    assert state == {"read": 7, "drawn": 7, "positions": []}
    restored = ShuffleBuffer(size=3, seed=4, epoch=0)
    restored.restore(state, reader_for(state, 7))
    assert restored.done


def _mean_displacement(size, length=2000, seeds=range(3)):
    out = []
    for seed in seeds:
        drawn = np.asarray(positions(shuffled(size, length, seed=seed)))
        out.append(np.abs(drawn - np.arange(length)).mean())
    return float(np.mean(out))


def test_records_move_further_with_a_larger_buffer():
    displacement = [_mean_displacement(size) for size in (1, 4, 32, 256)]
    assert displacement[0] == 0
    assert all(a < b for a, b in zip(displacement, displacement[1:], strict=False)), displacement
    # A buffer of size s delays a record by about s draws on average (geometric stay in the buffer).
    assert 10 < displacement[2] < 100 and 100 < displacement[3] < 800, displacement


def test_a_record_is_never_handed_out_before_it_is_read():
    drawn = positions(shuffled(8, 500, seed=6))
    # The k-th draw comes from the first k + 8 records of the stream.
    assert all(p < k + 8 for k, p in enumerate(drawn))


def test_a_buffer_holding_the_whole_stream_draws_its_first_record_uniformly():
    counts = np.zeros(8, np.int64)
    for seed in range(4000):
        counts[positions(shuffled(8, 8, seed=seed))[0]] += 1
    # 500 expected per position; a fair draw keeps every count within about 5 standard deviations (~21).
    assert counts.min() > 400 and counts.max() < 600, counts


def test_slots_are_drawn_uniformly_from_a_full_buffer():
    # With a stream much longer than the buffer, the wait of a record in a 4-slot buffer is geometric(1/4):
    # the fraction of records drawn right after they are read is about 1/4.
    drawn = np.asarray(positions(shuffled(4, 20000, seed=11)))
    read_at = np.arange(len(drawn)) + 4  # the draw that follows reading record k + 3
    immediate = np.mean(drawn[:-4] == read_at[:-4] - 1)
    assert 0.22 < immediate < 0.28, immediate

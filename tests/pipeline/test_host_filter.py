"""HostFilter: full batches of kept records, exact epochs of the kept set, exact resume, any worker count."""

import json

import numpy as np
import pytest
from flax import nnx

from datarax import Pipeline
from datarax.operators import HostFilter, HostFilterConfig, HostMapOperator, HostMapOperatorConfig
from datarax.pipeline.host_stage import HostStageError
from datarax.sources import NumpyFileSource, NumpyFileSourceConfig

N = 103


def not_multiple_of_3(element, rng):
    return int(element["x"]) % 3 != 0


def keep_half_at_random(element, rng):
    return bool(rng.random() < 0.5)


def reject_all(element, rng):
    return False


def plus_rng(element, rng):
    return {**element, "noise": np.int64(rng.integers(0, 1000))}


def returns_int(element, rng):
    return 1


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    file = tmp_path_factory.mktemp("filter") / "x.npy"
    np.save(file, np.arange(N, dtype=np.int64))
    return str(file)


def build(path, predicate=not_multiple_of_3, *, stochastic=False, extra=(), batch_size=8, **kwargs):
    config = HostFilterConfig(stochastic=True, stream_name="subsample") if stochastic else HostFilterConfig()
    source = NumpyFileSource(NumpyFileSourceConfig(), paths={"x": path})
    kwargs.setdefault("num_epochs", 2)
    return Pipeline(
        source=source,
        host_stages=[*extra, HostFilter(config, predicate=predicate)],
        batch_size=batch_size,
        shuffle=True,
        rngs=nnx.Rngs(0),
        **kwargs,
    )


def served(iterator):
    out = []
    for batch in iterator:
        out.append({k: np.asarray(v).tolist() for k, v in batch.items()})
    return out


def real_rows(batches, column="x"):
    return [x for b in batches for x, valid in zip(b[column], b["valid_mask"], strict=True) if valid]


def test_every_epoch_is_a_permutation_of_the_kept_records_in_full_batches(path):
    batches = served(iter(build(path)))
    kept = [i for i in range(N) if i % 3]  # 68 records: 8 full batches and one of 4 per epoch
    assert len(batches) == 18
    for epoch in range(2):
        rows = real_rows(batches[epoch * 9 : (epoch + 1) * 9])
        assert sorted(rows) == kept
        assert all(all(b["valid_mask"]) for b in batches[epoch * 9 : epoch * 9 + 8])
        assert sum(batches[epoch * 9 + 8]["valid_mask"]) == 4
    assert real_rows(batches[:9]) != real_rows(batches[9:])  # shuffled differently per epoch


def test_kept_order_is_the_unfiltered_order_with_rejected_records_removed(path):
    unfiltered = real_rows(served(iter(build(path, predicate=lambda e, r: True, num_epochs=1))))
    filtered = real_rows(served(iter(build(path, num_epochs=1))))
    assert filtered == [x for x in unfiltered if x % 3]


def test_drop_remainder_drops_the_short_last_batch(path):
    batches = served(iter(build(path, drop_remainder=True)))
    assert len(batches) == 16 and all(all(b["valid_mask"]) for b in batches)


def test_the_state_counts_records_examined_and_resumes_exactly_at_every_batch(path):
    iterator = iter(build(path))
    batches, states = [], []
    for batch in iterator:
        batches.append({k: np.asarray(v).tolist() for k, v in batch.items()})
        states.append(json.loads(json.dumps(iterator.get_state())))
    order = real_rows(served(iter(build(path, predicate=lambda e, r: True, num_epochs=1))))  # examined order
    for k, state in enumerate(states[:8]):  # epoch 0's full batches
        examined = order[: state["position"]]
        # Everything kept before the position has been served, and nothing after it.
        assert [x for x in examined if x % 3] == real_rows(batches[: k + 1]), k
    assert states[8]["epoch"] == 1 and states[8]["position"] == 0
    for k in range(len(states) - 1):
        resumed = iter(build(path))
        resumed.set_state(states[k])
        assert served(resumed) == batches[k + 1 :], f"resume after batch {k}"


@pytest.mark.parametrize("workers", [dict(workers=0), dict(workers=2), dict(workers=2, worker_kind="process")])
def test_workers_do_not_change_the_stream(path, workers):
    reference = served(iter(build(path, stochastic=True, predicate=keep_half_at_random, extra=_noise())))
    assert served(iter(build(path, stochastic=True, predicate=keep_half_at_random, extra=_noise(), **workers))) == (
        reference
    )


def _noise():
    return [HostMapOperator(HostMapOperatorConfig(stochastic=True, stream_name="noise"), fn=plus_rng)]


def test_a_stochastic_filter_draws_per_record_and_reproducibly(path):
    first = served(iter(build(path, stochastic=True, predicate=keep_half_at_random, num_epochs=1)))
    again = served(iter(build(path, stochastic=True, predicate=keep_half_at_random, num_epochs=1)))
    assert first == again
    kept = real_rows(first)
    assert 20 < len(kept) < 83 and len(set(kept)) == len(kept)


def test_resume_in_the_middle_of_a_block_with_workers(path):
    iterator = iter(build(path, workers=2, num_epochs=1))
    next(iterator)
    next(iterator)
    state = iterator.get_state()
    rest = served(iterator)
    resumed = iter(build(path, workers=2, num_epochs=1))
    resumed.set_state(state)
    assert served(resumed) == rest


def test_a_filtered_pipeline_has_no_len_and_no_scan(path):
    pipeline = build(path)
    with pytest.raises(TypeError, match="HostFilter has no len"):
        len(pipeline)
    with pytest.raises(ValueError, match="cannot scan"):
        iter(pipeline).scan(lambda batch: batch["x"].sum(), length=2)


def test_set_state_accepts_any_examined_position_and_refuses_others(path):
    iterator = iter(build(path))
    state = iterator.get_state()
    iterator.set_state({**state, "position": 57})
    assert iterator.position == 57
    with pytest.raises(ValueError, match=r"position must be an int in \[0, 103\), got 103"):
        iterator.set_state({**state, "position": N})
    assert iterator.position == 57  # unchanged by the failed call


def test_a_filter_that_keeps_nothing_is_an_error_not_a_hang(path):
    with pytest.raises(HostStageError, match="drop every one of the 103 records"):
        build(path, predicate=reject_all)


def test_a_predicate_returning_a_non_bool_names_it(path):
    with pytest.raises(HostStageError, match="predicate must return a bool, got int 1"):
        build(path, predicate=returns_int)


def test_bad_arguments_are_refused_at_construction():
    with pytest.raises(TypeError, match="predicate"):
        HostFilter(HostFilterConfig(), predicate=3)
    with pytest.raises(TypeError):
        HostFilter(HostMapOperatorConfig(), predicate=not_multiple_of_3)


def larger_than_40(element, rng):
    return int(element["x"]) > 40


def identity(element, rng):
    return element


@pytest.mark.parametrize("workers, kind", [(0, "thread"), (2, "thread"), (2, "process")])
def test_each_host_stage_counts_what_it_kept_and_dropped(path, workers, kind):
    """Applied = records that reached a stage and passed it; a filter's skipped = records it dropped."""
    before = HostMapOperator(HostMapOperatorConfig(), fn=identity)
    after = HostMapOperator(HostMapOperatorConfig(), fn=identity)
    source = NumpyFileSource(NumpyFileSourceConfig(), paths={"x": path})
    pipeline = Pipeline(
        source=source,
        host_stages=[
            before,
            HostFilter(HostFilterConfig(), predicate=not_multiple_of_3),
            HostFilter(HostFilterConfig(), predicate=larger_than_40),
            after,
        ],
        batch_size=8,
        shuffle=True,
        rngs=nnx.Rngs(0),
        num_epochs=1,
        workers=workers,
        worker_kind=kind,
    )
    kept = real_rows(served(iter(pipeline)))
    multiples = sum(1 for x in range(N) if x % 3 == 0)
    small = sum(1 for x in range(N) if x % 3 and x <= 40)
    assert sorted(kept) == [x for x in range(N) if x % 3 and x > 40]
    stats = [op.get_operation_stats() for op in pipeline.host_stages]
    assert stats == [
        {"applied_count": N, "skipped_count": 0},
        {"applied_count": N - multiples, "skipped_count": multiples},
        {"applied_count": len(kept), "skipped_count": small},
        {"applied_count": len(kept), "skipped_count": 0},
    ]


def test_counts_grow_batch_by_batch_with_the_records_each_batch_examined(path):
    pipeline = build(path, num_epochs=1, workers=0)
    iterator = iter(pipeline)
    first = next(iterator)
    state = iterator.get_state()
    examined = state["position"]  # the first batch examined records [0, position)
    stats = pipeline.host_stages[0].get_operation_stats()
    assert stats["applied_count"] == int(np.asarray(first["valid_mask"]).sum()) == 8
    assert stats["applied_count"] + stats["skipped_count"] == examined


def numbers():
    return ({"x": np.int64(i)} for i in range(N))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_filter_on_a_stream_counts_kept_and_dropped_records(workers):
    from datarax.sources import IterableSource, IterableSourceConfig

    keep = HostFilter(HostFilterConfig(), predicate=not_multiple_of_3)
    pipeline = Pipeline(
        source=IterableSource(IterableSourceConfig(), records=numbers),
        host_stages=[keep],
        batch_size=8,
        shuffle=True,
        shuffle_buffer_size=16,
        rngs=nnx.Rngs(0),
        workers=workers,
    )
    kept = real_rows(served(iter(pipeline)))
    assert sorted(kept) == [x for x in range(N) if x % 3]
    multiples = sum(1 for x in range(N) if x % 3 == 0)
    assert pipeline.host_stages[0].get_operation_stats() == {"applied_count": len(kept), "skipped_count": multiples}

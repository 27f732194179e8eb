"""``datarax.testing.check_resume`` on real pipelines, and on broken ones it must catch."""

import json

import numpy as np
import pytest
import reliability_builders as builders

from datarax.testing import ResumeReport, check_resume, first_difference


@pytest.fixture
def numpy_files(tmp_path, monkeypatch):
    """``.npy`` files of 19 records, named to the builders (and to fresh processes) by an environment variable."""
    builders.write_numpy_files(tmp_path)
    monkeypatch.setenv(builders.DATA_ENV, str(tmp_path))
    return tmp_path


def test_a_shuffled_memory_pipeline_with_stochastic_operators_resumes_from_every_step():
    # 13 records in batches of 5: 3 batches an epoch, the third padded; 7 batches cross into epoch 2's end.
    report = check_resume(builders.memory_pipeline, num_batches=6)
    assert report == ResumeReport(num_batches=6, steps=tuple(range(7)), fresh_process_steps=(), stream_ended=False)


def test_through_real_orbax_checkpoints():
    report = check_resume(builders.memory_pipeline, num_batches=4, via_orbax=True)
    assert report.steps == (0, 1, 2, 3, 4)


def test_in_a_fresh_process_from_a_module_function_string():
    report = check_resume(
        "reliability_builders:memory_pipeline", num_batches=4, steps=[0, 2], fresh_process=True, timeout=300
    )
    assert report.steps == (0, 2) and report.fresh_process_steps == (0, 1, 2, 3, 4)


def test_a_numpy_file_source_with_worker_threads_and_a_host_operator(numpy_files):
    # 19 records in batches of 4: 5 batches an epoch (the fifth padded); 7 cross the epoch boundary.
    report = check_resume(builders.numpy_file_pipeline, num_batches=7)
    assert report.num_batches == 7 and not report.stream_ended


def test_a_stream_source_with_a_shuffle_buffer_and_a_background_thread():
    # 22 records in batches of 4: 6 batches an epoch; the stream ends after 12, before the 14 asked for.
    report = check_resume(builders.stream_pipeline, num_batches=14, steps=[0, 1, 5, 6, 7, 11, 12])
    assert report.num_batches == 12 and report.stream_ended


def test_catches_a_host_operator_drawing_from_the_global_numpy_generator(numpy_files):
    with pytest.raises(AssertionError) as info:
        check_resume(builders.global_random_host_pipeline, num_batches=3)
    message = str(info.value)
    # Step 0 already differs: the restored run draws later values of np.random's global stream.
    assert "resuming from the state saved after 0 batches: batch 0, key 'draw' differs first at index (0,)" in message
    assert "in the reference run" in message and "after the resume" in message


def test_catches_a_trace_time_draw_only_in_a_fresh_process():
    # In this process every rebuilt pipeline reuses the compiled step, constant included: exact.
    check_resume(builders.trace_time_random_pipeline, num_batches=2)
    with pytest.raises(AssertionError) as info:
        check_resume(builders.trace_time_random_pipeline, num_batches=2, fresh_process=True, fresh_process_steps=[1])
    message = str(info.value)
    assert "resuming from the state saved after 1 batch in a fresh process: batch 1, key 'image' differs" in message
    assert "first at index (0, 0, 0, 0)" in message


def test_catches_an_iterator_whose_set_state_does_not_move_it():
    with pytest.raises(AssertionError) as info:
        check_resume(builders.forgetful_pipeline, num_batches=3)
    message = str(info.value)
    assert "resuming from the state saved after 1 batch: batch 1, key " in message


def test_first_difference_compares_bytes():
    a = np.zeros((2, 3), np.float32)
    b = a.copy()
    b[1, 2] = -0.0
    assert first_difference(a, b) == (1, 2)  # -0.0 == 0.0 as values, not as bytes
    assert first_difference(a, a.copy()) is None
    assert first_difference(np.zeros((0, 3)), np.zeros((0, 3))) is None


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"build_pipeline": builders.memory_pipeline, "num_batches": 0}, ValueError, "num_batches must be a positive"),
        ({"build_pipeline": builders.memory_pipeline, "num_batches": True}, ValueError, "num_batches"),
        ({"build_pipeline": 3, "num_batches": 2}, TypeError, "build_pipeline must be a zero-argument callable"),
        ({"build_pipeline": "reliability_builders", "num_batches": 2}, ValueError, "'module:function'"),
        ({"build_pipeline": "reliability_builders:nothing_here", "num_batches": 2}, AttributeError, "nothing_here"),
        (
            {"build_pipeline": lambda: builders.memory_pipeline(), "num_batches": 2, "fresh_process": True},
            ValueError,
            "defined at module level",
        ),
        ({"build_pipeline": builders.memory_pipeline, "num_batches": 2, "steps": [3]}, ValueError, r"\[0, 2\]"),
        ({"build_pipeline": builders.memory_pipeline, "num_batches": 2, "steps": []}, ValueError, "non-empty"),
        ({"build_pipeline": lambda: [{"x": np.zeros(2)}], "num_batches": 2}, TypeError, "no get_state/set_state"),
    ],
    ids=[
        "zero-batches",
        "bool-batches",
        "not-callable",
        "no-colon",
        "missing-function",
        "lambda-in-fresh-process",
        "step-out-of-range",
        "no-steps",
        "not-checkpointable",
    ],
)
def test_arguments_are_checked(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        check_resume(**kwargs)


def test_a_state_that_is_not_json_data_is_reported():
    class ArrayState(builders.ForgetfulIterator):
        def get_state(self):
            return {"served": np.int64(self.served)}

    class Iterable:
        def __iter__(self):
            return ArrayState(iter(builders.memory_pipeline()))

    with pytest.raises(AssertionError, match="the state before the first batch is not JSON data"):
        check_resume(Iterable, num_batches=1)
    json.dumps(iter(builders.memory_pipeline()).get_state())  # a real pipeline's state is

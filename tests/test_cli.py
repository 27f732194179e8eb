"""The demo command runs end to end and verifies its own resume, for any run length."""

import pytest

from datarax.cli import load_digits_arrays, main, run_demo


def test_demo_runs_and_resumes_exactly(capsys):
    assert main(["demo", "--batches", "2", "--batch-size", "128", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "each exactly once: True" in out
    # 15 batches per epoch, 30 in the run: the checkpoint is taken after 15 of them.
    assert "restored step 15: epoch 1, position 0" in out
    assert "resumed batches match the original stream: True (15 batches compared)" in out
    assert "element_spec: {'image': uint8[8,8], 'index': int32[], 'label': int32[]}" in out


def test_demo_with_one_epoch_checkpoints_half_way_through_it(capsys):
    assert main(["demo", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "epoch 0: 1797 records, each exactly once: True" in out
    assert "restored step 14: epoch 0, position 896" in out  # 29 batches of 64: 14 before, 15 after
    assert "resumed batches match the original stream: True (15 batches compared)" in out


def test_demo_with_a_single_batch_checkpoints_before_it(capsys):
    assert main(["demo", "--epochs", "1", "--batch-size", "1797", "--batches", "5"]) == 0
    out = capsys.readouterr().out
    assert "restored step 0: epoch 0, position 0" in out
    assert "resumed batches match the original stream: True (1 batches compared)" in out


@pytest.mark.parametrize("flag", ["--batches", "--batch-size", "--epochs"])
def test_demo_rejects_non_positive_arguments(flag, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["demo", flag, "0"])
    assert excinfo.value.code == 2
    assert "must be positive" in capsys.readouterr().err


def test_demo_rejects_a_batch_larger_than_the_dataset(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["demo", "--batch-size", "1798"])
    assert excinfo.value.code == 2
    assert "--batch-size must be at most 1797 (the dataset's records), got 1798" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["demo", "--epochs", "1.5"], ["demo", "--batch-size", "many"], ["demo", "--what"]])
def test_demo_rejects_malformed_arguments_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert "usage: datarax" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "run_demo: batch_size must be a positive int, got 0"),
        ({"num_epochs": True}, "run_demo: num_epochs must be a positive int, got True"),
        ({"num_batches": 2.0}, "run_demo: num_batches must be a positive int, got 2.0"),
        ({"batch_size": 11}, "run_demo: batch_size must be at most the 10 records of the dataset, got 11"),
    ],
)
def test_run_demo_rejects_bad_arguments_before_running(kwargs, message, capsys):
    data = {key: value[:10] for key, value in load_digits_arrays().items()}
    with pytest.raises(ValueError, match=message):
        run_demo(data=data, **kwargs)
    assert capsys.readouterr().out == "", "nothing runs before the arguments are checked"

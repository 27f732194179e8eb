"""The demo command runs end to end and verifies its own resume."""

import pytest

from datarax.cli import main


def test_demo_runs_and_resumes_exactly(capsys):
    assert main(["demo", "--batches", "2", "--batch-size", "128", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "each exactly once: True" in out
    assert "resumed batches match the original stream: True" in out
    assert "element_spec: {'image': uint8[8,8], 'index': int32[], 'label': int32[]}" in out


@pytest.mark.parametrize("flag", ["--batches", "--batch-size", "--epochs"])
def test_demo_rejects_non_positive_arguments(flag, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["demo", flag, "0"])
    assert excinfo.value.code == 2
    assert "must be positive" in capsys.readouterr().err

"""``datarax inspect`` and ``datarax run``: in process through ``main``, and as subprocesses.

The subprocess tests run the installed ``datarax`` script, as a user does.
"""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from datarax.cli import main
from datarax.config import example_path

DEMO = """\
[pipeline]
batch_size = 64
seed = 0
shuffle = true
num_epochs = 2

[source]
type = "digits"

[[stages]]
type = "RandomCrop"
size = [8, 8]
padding = 1
"""


@pytest.fixture
def demo(tmp_path):
    path = tmp_path / "demo.toml"
    path.write_text(DEMO)
    return path


def _rows(out):
    """The rows of the table ``inspect`` printed: label -> value."""
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    return dict(cells)


def _fails(capsys, argv, *messages):
    assert main([str(arg) for arg in argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"datarax {argv[0]}: error: "), captured.err
    for message in messages:
        assert message in lines[0], lines[0]
    return lines[0]


def test_inspect_shows_specs_and_a_measurement(capsys, demo):
    assert main(["inspect", str(demo), "--batches", "3"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["source"] == "MemorySource: 1,797 records"
    assert rows["element_spec"] == "{'image': uint8[8,8,1], 'label': int32[]}"
    assert rows["stages[0] RandomCrop"] == "{'image': uint8[8,8,1], 'label': int32[]}"
    assert rows["batch_spec"] == "{'image': uint8[64,8,8,1], 'label': int32[64], 'valid_mask': bool[64]}"
    assert rows["batching"] == "batch_size 64, shuffle True, drop_remainder False, seed 0"
    assert (rows["batches per epoch"], rows["epochs per iteration"]) == ("29", "2")
    assert rows["time to first batch"].endswith(" s (compiling the step included)")
    assert rows["throughput"].endswith(" records/s over 2 batches")


def test_inspect_a_function_returning_a_pipeline(capsys, tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.arange(20, dtype=np.float32))
    (tmp_path / "config_cli_pipelines.py").write_text(
        textwrap.dedent("""
        import numpy as np
        from flax import nnx
        from datarax import Pipeline
        from datarax.operators import HostMapOperator, HostMapOperatorConfig, RandomFlip, RandomFlipConfig
        from datarax.sources import NumpyFileSource, NumpyFileSourceConfig

        def double(element, rng):
            return {"x": element["x"] * 2, "y": np.stack([element["x"]] * 3)}

        def build():
            source = NumpyFileSource(NumpyFileSourceConfig(), paths={"x": "x.npy"})
            return Pipeline(source=source, host_stages=[HostMapOperator(HostMapOperatorConfig(), fn=double)],
                            nodes={"flip": RandomFlip(RandomFlipConfig(fields=("y",), axis=0))},
                            edges=[("source", "flip")], sink="flip", batch_size=8, rngs=nnx.Rngs(0))

        not_a_pipeline = 3
        """)
    )
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "config_cli_pipelines:build", "--batches", "0"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["source"] == "NumpyFileSource: 20 records"
    assert rows["element_spec"] == "{'x': float32[]}"
    assert rows["host_stages[0]"] == "HostMapOperator"
    assert rows["after host stages"] == "{'x': float32[], 'y': float32[3]}"
    assert rows["node 'flip' RandomFlip"] == "{'x': float32[], 'y': float32[3]}"
    assert rows["batches per epoch"] == "3"
    assert "time to first batch" not in rows  # --batches 0 measures nothing
    _fails(
        capsys, ["inspect", "config_cli_pipelines:not_a_pipeline"], "must be (or return) a datarax Pipeline, got int"
    )
    _fails(capsys, ["inspect", "config_cli_pipelines:missing"], "has no attribute 'missing'")
    _fails(capsys, ["inspect", "no_such_config_module:build"], "cannot import 'no_such_config_module'")
    _fails(capsys, ["inspect", "not a pipeline"], "'not a pipeline' is neither a TOML file nor module:function")


def test_run_saves_and_resumes_the_iterator_state(capsys, demo, tmp_path):
    state_file = tmp_path / "state.json"
    assert main(["run", str(demo), "--batches", "40", "--save-state", str(state_file)]) == 0
    out = capsys.readouterr().out
    assert "ran 40 batches (2,501 records)" in out and "now at epoch 1, position 704" in out
    state = json.loads(state_file.read_text())
    assert (state["epoch"], state["position"], state["stop_epoch"]) == (1, 704, 2)
    assert main(["run", str(demo), "--resume", str(state_file), "--save-state", str(state_file)]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "epoch 1, position 704" in out
    assert "ran 18 batches (1,093 records)" in out and "now at epoch 2, position 0" in out
    assert main(["run", str(demo), "--epochs", "1"]) == 0
    assert "ran 29 batches (1,797 records)" in capsys.readouterr().out


def test_run_refuses_a_state_from_another_pipeline(capsys, demo, tmp_path):
    state_file = tmp_path / "state.json"
    assert main(["run", str(demo), "--batches", "1", "--save-state", str(state_file)]) == 0
    capsys.readouterr()
    other = tmp_path / "other.toml"
    other.write_text(DEMO.replace("batch_size = 64", "batch_size = 32"))
    for extra in ([], ["--validate"]):
        line = _fails(capsys, ["run", other, "--resume", state_file, *extra])
        assert f"--resume {state_file}: the state does not fit this pipeline" in line and "batch_size" in line
    reseeded = tmp_path / "reseeded.toml"
    reseeded.write_text(DEMO.replace("seed = 0", "seed = 1"))
    assert "seed" in _fails(capsys, ["run", reseeded, "--resume", state_file])
    assert main(["run", str(demo), "--resume", str(state_file), "--validate"]) == 0
    assert f"; the state {state_file} fits" in capsys.readouterr().out


def test_run_validate_builds_without_running(capsys, demo):
    assert main(["run", str(demo), "--validate"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{demo}: valid: MemorySource, batch_spec {{'image': uint8[64,8,8,1]")
    assert "29 batches per epoch" in out and "ran" not in out


def test_run_reports_bad_input_on_one_line(capsys, demo, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(DEMO.replace("padding = 1", 'padding = "one"'))
    assert _fails(capsys, ["run", bad]).endswith(
        f"{bad}:13: stages[0].padding: expected an integer, got 'one' (a string)"
    )
    escape = tmp_path / "project" / "escape.toml"
    escape.parent.mkdir()
    np.save(tmp_path / "label.npy", np.arange(8, dtype=np.int32))
    escape.write_text(
        '[pipeline]\nbatch_size = 4\n[source]\ntype = "NumpyFileSource"\npaths = { label = "../label.npy" }\n'
    )
    _fails(capsys, ["run", escape, "--validate"], f"{escape}:5: source.paths.label: path '../label.npy' resolves to")
    assert main(["run", str(escape), "--validate", "--allow-root", str(tmp_path)]) == 0
    forever = tmp_path / "forever.toml"
    forever.write_text(DEMO.replace("num_epochs = 2", "num_epochs = inf"))
    _fails(capsys, ["run", forever], "runs forever ([pipeline] num_epochs = inf); give --batches N or --epochs E")
    capsys.readouterr()
    forever_state = tmp_path / "forever.json"
    assert main(["run", str(forever), "--batches", "2", "--save-state", str(forever_state)]) == 0
    assert "ran 2 batches" in capsys.readouterr().out
    _fails(capsys, ["run", forever, "--resume", forever_state], "runs forever")  # the state runs forever too
    (tmp_path / "notjson.json").write_text("{epoch: 1")
    _fails(capsys, ["run", demo, "--resume", tmp_path / "notjson.json"], "not a JSON iterator state")
    (tmp_path / "list.json").write_text("[1, 2]")
    _fails(
        capsys,
        ["run", demo, "--resume", tmp_path / "list.json"],
        "expected a JSON object (an iterator state), got list",
    )
    _fails(capsys, ["run", demo, "--resume", tmp_path / "missing.json"], "No such file or directory")
    _fails(capsys, ["run", demo, "--save-state", tmp_path / "no" / "s.json"], "s.json: its directory does not exist")
    _fails(capsys, ["run", tmp_path / "missing.toml"], "No such file or directory")
    _fails(capsys, ["run", "pipeline.yaml"], "'pipeline.yaml' is not a TOML pipeline file")


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "x.toml", "--batches", "0"],
        ["run", "x.toml", "--batches", "2", "--epochs", "1"],
        ["inspect", "x.toml", "--batches", "-1"],
        ["inspect"],
        ["walk"],
    ],
)
def test_malformed_arguments_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: datarax" in capsys.readouterr().err


# -- as subprocesses ----------------------------------------------------------------


def _command(*argv, cwd=None):
    return subprocess.run(
        [str(Path(sys.executable).with_name("datarax")), *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_every_command_has_help():
    for argv, words in (
        (["--help"], ["inspect", "run"]),
        (["inspect", "--help"], ["PIPELINE", "module:function", "--batches", "--allow-root", "time to first batch"]),
        (["run", "--help"], ["--batches", "--epochs", "--save-state", "--resume", "--validate", "--allow-root"]),
    ):
        result = _command(*argv)
        assert result.returncode == 0, result.stderr
        assert all(word in result.stdout for word in words), result.stdout


def test_run_and_inspect_the_shipped_demo_as_commands(tmp_path):
    demo = tmp_path / "demo.toml"
    shutil.copy(example_path("demo"), demo)
    result = _command("run", demo, "--batches", "3", "--save-state", tmp_path / "state.json")
    assert result.returncode == 0, result.stderr
    assert "ran 3 batches (192 records)" in result.stdout and "state saved to" in result.stdout
    assert "datarax run demo.toml" in result.stderr and "3/3" in result.stderr  # the progress bar
    result = _command("run", demo, "--batches", "2", "--resume", tmp_path / "state.json")
    assert result.returncode == 0 and "resumed from" in result.stdout and "epoch 0, position 192" in result.stdout
    result = _command("inspect", demo, "--batches", "2")
    assert result.returncode == 0 and "stages[1] Normalize" in result.stdout and "float32[64,8,8,1]" in result.stdout


def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[pipeline]\nbatch_size = 4\n\n[source]\ntype = "os:system"\n')
    for argv, message in (
        (["run", bad], f"datarax run: error: {bad}:5: source.type: 'os:system' looks like a module path"),
        (["inspect", tmp_path / "missing.toml"], "datarax inspect: error: [Errno 2] No such file or directory"),
    ):
        result = _command(*argv)
        assert result.returncode == 2
        assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""

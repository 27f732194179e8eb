"""The ``datarax`` command line, run as a user runs it: a fresh process per command.

Every command is started as ``python -m datarax.cli`` or as the installed ``datarax`` script (next to
``sys.executable``), with the test environment (CPU, the conftest's XLA flags) inherited. The demo
runs its real resume check: a real Orbax checkpoint on disk, restored by a second fresh process.
Quick argument checks also call ``main`` in this process.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datarax.cli import load_digits_arrays, main
from datarax.cli.bench import figures, system_kind
from datarax.cli.demo import bit_identical, checkpoint_step, compare_runs

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("datarax")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(*args: str, cwd: Path = ROOT, script: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [str(SCRIPT)] if script else [sys.executable, "-m", "datarax.cli"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def one_error_line(result: subprocess.CompletedProcess, command: str) -> str:
    """The run failed with status 2 and exactly one line on stderr, ``datarax <command>: error: ...``."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"datarax {command}: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_the_installed_script_is_there():
    assert SCRIPT.is_file(), f"the datarax console script is missing next to {sys.executable}"
    found = shutil.which("datarax", path=str(SCRIPT.parent))
    assert found is not None and Path(found) == SCRIPT


# -- the demo ----------------------------------------------------------------------------------


def test_demo_default_trains_beyond_chance_and_resumes_bit_for_bit_in_a_fresh_process():
    result = run_cli("demo", script=True)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # 5 epochs of 47 batches (1,500 = 46 x 32 + 28): the checkpoint half-way, after step 117.
    assert "batch 32: 47 batches per epoch (the last holds 28 digits + 4 padding rows)" in out
    for epoch in range(1, 6):
        assert re.search(rf"epoch {epoch}/5 \S+ 47/47 loss \d+\.\d{{4}} [\d,]+ batches/s [\d,]+ el/s ETA", out), out
    assert "checkpoint after step 117 (epoch 3/5, batch 23 of 47): model, optimizer and iterator " in out
    assert "{epoch: 2, position: 736}" in out
    accuracy = float(re.search(r"held-out accuracy: (\d\.\d+) \((\d+) of 297 digits", out).group(1))
    assert accuracy > 0.8, out  # chance is 0.1
    pid = int(re.search(r"fresh process (\d+): restored step 117", out).group(1))
    assert "simulated crash after step 117" in out
    assert pid > 0
    assert (
        "resume check: PASS: the fresh process's 118 losses (steps 118-235) and 27 final parameter and optimizer "
        "arrays equal the uninterrupted run's bit for bit" in out
    )
    workdir = Path(re.search(r"workdir\s+(\S+) \(temporary\)", out).group(1))
    assert not workdir.exists(), "the temporary work directory is removed"
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("epochs", "batch_size", "per_epoch", "checkpoint"),
    [
        (1, 1500, 1, 0),  # a single step: checkpointed before it
        (1, 1, 1500, 750),
        (2, 100, 15, 15),  # 100 divides 1,500: the checkpoint falls on the epoch boundary
        (3, 64, 24, 36),  # 64 does not: each epoch ends with a padded batch (28 digits + 36 padding)
    ],
)
def test_demo_resumes_bit_for_bit_for_every_run_length(tmp_path, epochs, batch_size, per_epoch, checkpoint):
    workdir = tmp_path / "new" / "workdir"  # created, with its parents
    result = run_cli(
        "demo", "--epochs", str(epochs), "--batch-size", str(batch_size), "--seed", "7", "--workdir", str(workdir)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    total = epochs * per_epoch
    for epoch in range(1, epochs + 1):
        assert f"epoch {epoch}/{epochs} " in out
    assert f"{epochs} epochs = {total} steps, seed 7" in out
    assert f"checkpoint after step {checkpoint} " in out
    assert "fresh process " in out and f": restored step {checkpoint}: " in out
    assert "resume check: PASS" in out, out
    # What the run leaves in --workdir: the Orbax step and the fresh process's results.
    assert (workdir / "checkpoints" / str(checkpoint)).is_dir()
    with np.load(workdir / "resumed.npz", allow_pickle=False) as resumed:
        assert int(resumed["step"]) == checkpoint
        assert resumed["loss"].shape == (total - checkpoint,)
        assert resumed["loss"].dtype == np.float32
        assert np.all(np.isfinite(resumed["loss"]))
        assert {"model/conv1/kernel", "model/out/bias", "optimizer/step"} <= set(resumed.files)


def test_a_resume_process_without_a_checkpoint_fails_with_one_line(tmp_path):
    line = one_error_line(run_cli("demo", "--epochs", "1", "--resume-from", str(tmp_path)), "demo")
    assert f"--resume-from {str(tmp_path)!r} holds no demo checkpoint" in line


# -- the demo's checks, as pure functions ----------------------------------------------------------


def test_compare_runs_finds_a_one_bit_difference_and_missing_arrays():
    loss = np.float32([0.5, 0.25, 0.125])
    flipped = loss.copy()
    flipped.view(np.uint32)[1] ^= 1  # the last bit of the second loss
    assert compare_runs({"loss": loss}, {"loss": loss.copy()}) == []
    assert compare_runs({"loss": loss}, {"loss": flipped}) == [
        f"loss[1]: {loss[1]!r} uninterrupted, {flipped[1]!r} resumed"
    ]
    kernel = np.ones((2, 2), np.float32)
    assert compare_runs({"model/kernel": kernel}, {"model/kernel": kernel.astype(np.float64)}) == [
        "model/kernel: float32[2, 2] uninterrupted, float64[2, 2] resumed"
    ]
    assert compare_runs({"loss": loss, "model/kernel": kernel}, {"loss": loss}) == [
        "model/kernel: only in the uninterrupted run"
    ]


def test_bit_identical_compares_bits_not_values():
    assert not bit_identical(np.float32([0.0]), np.float32([-0.0]))
    assert bit_identical(np.float32([np.nan]), np.float32([np.nan]))
    assert not bit_identical(np.int32([1]), np.int64([1]))


def test_the_checkpoint_leaves_at_least_one_step_to_resume():
    assert [checkpoint_step(total) for total in (1, 2, 3, 235)] == [0, 1, 1, 117]


def test_the_digits_are_still_importable_from_datarax_cli():
    data = load_digits_arrays()
    assert data["image"].shape == (1797, 8, 8) and data["image"].dtype == np.uint8
    assert data["label"].dtype == np.int32 and set(data["label"].tolist()) == set(range(10))


# -- bad input: one line, exit status 2, nothing run ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--epochs", "0"], "datarax demo: error: --epochs must be a positive int, got 0"),
        (
            ["demo", "--batch-size", "-1"],
            "datarax demo: error: --batch-size must be an int from 1 to 1500 (the training digits), got -1",
        ),
        (
            ["demo", "--batch-size", "100000"],
            "datarax demo: error: --batch-size must be an int from 1 to 1500 (the training digits), got 100000",
        ),
        (
            ["bench", "--repeats", "1"],
            "datarax bench: error: --repeats must be an int >= 3 (the median of at least three timed epochs), got 1",
        ),
    ],
)
def test_bad_values_are_one_line_errors_from_the_entry_points(args, message):
    for script in (False, True):
        result = run_cli(*args, script=script)
        assert one_error_line(result, args[0]) == message
        assert result.stdout == "", "nothing runs before the options are checked"


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a directory")
    result = run_cli("demo", "--workdir", str(path))
    line = one_error_line(result, "demo")
    assert line == f"datarax demo: error: --workdir must be a directory, got {str(path)!r}, which is a file"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--seed", "-1"], "--seed must be an int in [0, 2**32), got -1"),
        (["demo", "--seed", str(2**32)], f"--seed must be an int in [0, 2**32), got {2**32}"),
        (["bench", "--scale", "0"], "--scale must be a number in (0, 1], got 0.0"),
        (["bench", "--scale", "1.5"], "--scale must be a number in (0, 1], got 1.5"),
        (["bench", "--scale", "nan"], "--scale must be a number in (0, 1], got nan"),
        (
            ["bench", "--scale", "0.001", "--workloads", "W2"],
            "--scale 0.001 leaves workload W2 60 records, fewer than its batch of 256; use --scale >= 0.0043",
        ),
    ],
)
def test_more_bad_values_in_process(args, message, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err == f"datarax {args[0]}: error: {message}\n"
    assert captured.out == ""


def test_a_workdir_with_an_earlier_demos_checkpoints_is_refused(tmp_path, capsys):
    (tmp_path / "checkpoints" / "12").mkdir(parents=True)
    assert main(["demo", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"datarax demo: error: --workdir {str(tmp_path)!r} already holds a demo's checkpoints")
    assert err.count("\n") == 1


def test_an_os_error_is_one_line_too(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["demo", "--workdir", str(tmp_path / "file" / "below")]) == 2  # mkdir under a file
    err = capsys.readouterr().err
    assert err.startswith("datarax demo: error: ") and err.count("\n") == 1


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "out").write_text("")
    assert main(["bench", "--scale", "0.01", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"datarax bench: error: --out must be a directory, got {str(tmp_path / 'out')!r}, which is a file\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--epochs", "1.5"],
        ["demo", "--batch-size", "many"],
        ["demo", "--what"],
        ["bench", "--workloads", "W9"],
        ["bench", "--repeats"],
        [],
        ["nonsense"],
    ],
)
def test_malformed_command_lines_are_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(args)
    assert excinfo.value.code == 2
    assert "usage: datarax" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["demo", "bench", "inspect", "run"]),
        (["demo"], ["--epochs", "--batch-size", "--seed", "--workdir"]),
        (["bench"], ["--scale", "--repeats", "--workloads", "--peers", "--out"]),
        (["inspect"], ["PIPELINE", "--batches"]),
        (["run"], ["PIPELINE", "--save-state", "--resume"]),
    ],
)
def test_every_command_has_help(command, expected):
    result = run_cli(*command, "--help", script=True)
    assert result.returncode == 0, result.stderr
    for word in expected:
        assert word in result.stdout
    assert "--resume-from" not in result.stdout  # the demo's internal option stays hidden


# -- the benchmark -----------------------------------------------------------------------------------


def test_bench_writes_the_table_the_json_and_a_png(tmp_path):
    out = tmp_path / "results"
    result = run_cli("bench", "--scale", "0.01", "--repeats", "3", "--peers", "--out", str(out), script=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert (
        "| system | el/s | ms/batch | per-batch cost ÷ reference | throughput ÷ reference "
        "| throughput ÷ reference, paired | throughput ÷ reference, paired, held out |" in text
    )
    assert re.search(
        r"W1: datarax throughput = \d+\.\d\dx the tuned reference, paired on held-out rounds "
        r"\(tuned: [a-z +-]+ / tuned: [a-z +-]+\); in-sample \d+\.\d\dx \(tuned: [a-z +-]+\); "
        r"ratio of medians: per-batch cost \d+\.\d\dx, throughput \d+\.\d\dx",
        text,
    )
    assert "W3: depth 1 -> 32 slowdown" in text
    # Grain is in the test environment; torch is not: said in one line, and the run goes on.
    try:
        import torch  # noqa: F401

        has_torch = True
    except ImportError:
        has_torch = False
        assert "torch DataLoader is not installed: measured without it (pip install 'datarax[bench]')" in text
    document = json.loads((out / "bench.json").read_text())
    assert {"scale", "repeats", "peers", "datarax_default", "reference", "machine", "jax", "workloads"} <= set(document)
    assert document["scale"] == 0.01 and document["repeats"] == 3
    assert document["peers"] == ["Grain", *(["torch DataLoader"] if has_torch else [])]
    names = [w["workload"] for w in document["workloads"]]
    assert names == ["W1", "W2", "W3 label ops x1", "W3 label ops x32"]
    for workload in document["workloads"]:
        assert set(workload) == {
            "workload",
            "batch_size",
            "steps",
            "elements",
            "reference",
            "held_out_references",
            "time_to_first_batch_s",
            "systems",
        }
        systems = workload["systems"]
        assert len(workload["held_out_references"]) == 2
        assert all(name.startswith("tuned") for name in workload["held_out_references"])
        assert workload["reference"].startswith("tuned") and systems[workload["reference"]][
            "throughput_vs_reference"
        ] == pytest.approx(1.0)
        assert systems[workload["reference"]]["throughput_vs_reference_paired"] == pytest.approx(1.0)
        # The reference is the tuned loop that beat datarax by the most over all rounds, paired.
        anchor = systems[document["datarax_default"]]["epochs_s"]

        def against_datarax(name, systems=systems, anchor=anchor):
            return statistics.median(t / a for t, a in zip(systems[name]["epochs_s"], anchor, strict=True))

        tuned = [name for name in systems if systems[name]["kind"] == "tuned loop"]
        assert against_datarax(workload["reference"]) == min(map(against_datarax, tuned))
        assert "Grain" in systems and document["datarax_default"] in systems and "numpy loop" in systems
        for figures_of_one in systems.values():
            assert len(figures_of_one["epochs_s"]) == 3
            assert figures_of_one["elements_per_s"] > 0
            assert figures_of_one["kind"] in {"datarax", "tuned loop", "baseline", "peer"}
    assert (out / "bench.png").read_bytes()[:8] == PNG_SIGNATURE
    assert f"wrote {out / 'bench.json'} and {out / 'bench.png'}" in text


def test_bench_outside_a_source_checkout_says_where_to_run_it(tmp_path):
    result = run_cli("bench", "--scale", "0.01", "--out", str(tmp_path / "out"), cwd=tmp_path, script=True)
    line = one_error_line(result, "bench")
    assert "part of a datarax source checkout, not of the installed package" in line
    assert "run 'datarax bench' from the root of a checkout" in line
    assert not (tmp_path / "out").exists(), "nothing is written when nothing can run"


def test_figures_are_ratios_to_the_reference():
    row = {
        "workload": "W2",
        "batch": 4,
        "steps": 5,
        "first batch s": 0.25,
        "reference": "tuned: select",
        "median": {"tuned: select": 0.5, "datarax (default prefetch=0)": 0.25, "Grain": 2.0},
        "times": {"tuned: select": [0.5] * 3, "datarax (default prefetch=0)": [0.25] * 3, "Grain": [2.0] * 3},
        "paired": {"tuned: select": 1.0, "datarax (default prefetch=0)": 1.9, "Grain": 0.3},
        "held_out": {"tuned: select": 1.0, "datarax (default prefetch=0)": 1.8, "Grain": 0.25},
        "held_out_references": ["tuned: select", "tuned: select"],
    }
    systems = figures([row], {})["workloads"][0]["systems"]
    assert list(systems) == ["datarax (default prefetch=0)", "tuned: select", "Grain"]  # fastest first
    assert systems["datarax (default prefetch=0)"]["throughput_vs_reference"] == 2.0
    assert systems["Grain"]["cost_vs_reference"] == 4.0
    assert systems["datarax (default prefetch=0)"]["throughput_vs_reference_paired"] == 1.9
    assert systems["datarax (default prefetch=0)"]["throughput_vs_reference_held_out"] == 1.8
    assert systems["Grain"]["ms_per_batch"] == 400.0
    assert [system_kind(name) for name in systems] == ["datarax", "tuned loop", "peer"]


def test_bench_checks_options_against_the_benchmarks_own_workloads():
    # datarax bench checks --scale against its copy of the sizes before importing the benchmark (and JAX).
    from benchmarks import run
    from datarax.cli.bench import WORKLOADS

    assert WORKLOADS == run.WORKLOADS

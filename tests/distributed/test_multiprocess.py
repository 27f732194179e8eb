"""datarax.distributed across real processes (harness.py): one global batch from per-process shares.

Each test starts fresh Python processes on CPU joined by ``datarax.distributed.initialize`` over a
coordinator on 127.0.0.1 and gloo collectives; no mocks.
"""

from __future__ import annotations

import numpy as np
import pytest
from harness import TEST_TIMEOUTS, check_all_succeeded, run_workers
from workers import FEATURES, global_rows


def _weighted_sum(rows: np.ndarray) -> float:
    return float((rows * np.arange(1, rows.shape[0] + 1, dtype=np.float64)[:, None]).sum())


def _check_global_batch(report: dict, *, batch_size: int, num_processes: int, devices_per_process: int) -> None:
    """One process's view of the assembled global batch is the single-process batch."""
    index = report["process_index"]
    rows_per_process = batch_size // num_processes
    assert report["share"] == [index * rows_per_process, (index + 1) * rows_per_process]
    assert report["global_shape"] == [batch_size, FEATURES]
    expected = global_rows(0, batch_size)
    rows_per_device = batch_size // (num_processes * devices_per_process) * report.get("model_size", 1)
    for start, stop, process, data in report["shards"]:
        assert process == index
        assert report["share"][0] <= start < stop <= report["share"][1]
        assert stop - start == rows_per_device
        np.testing.assert_array_equal(np.asarray(data), expected[start:stop])
    covered = sorted({(start, stop) for start, stop, _, _ in report["shards"]})
    assert covered[0][0] == report["share"][0] and covered[-1][1] == report["share"][1]
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
    assert report["checksum"] == _weighted_sum(expected)
    np.testing.assert_array_equal(np.asarray(report["gathered"]), expected)


@pytest.mark.parametrize(
    ("num_processes", "devices_per_process", "batch_size"), [(2, 2, 8), (4, 1, 8)], ids=["2x2", "4x1"]
)
def test_global_batch_from_process_shares(tmp_path, num_processes, devices_per_process, batch_size):
    model_axes = {"model": 2} if devices_per_process == 2 else None
    runs = run_workers(
        "workers:global_batch",
        num_processes=num_processes,
        devices_per_process=devices_per_process,
        workdir=tmp_path,
        args={"global_batch_size": batch_size, "model_axes": model_axes},
    )
    reports = check_all_succeeded(runs)
    devices = num_processes * devices_per_process
    shares = []
    for process_id, (run, report) in enumerate(zip(runs, reports)):
        assert run.report["joined"] is True
        assert report["process_index"] == process_id
        assert report["process_count"] == num_processes
        assert report["device_count"] == devices
        assert report["local_device_count"] == devices_per_process
        assert report["initialize_again"] is True
        assert f"already joined a run of {num_processes} processes" in report["initialize_mismatch"]
        data = report["data"]
        assert data["mesh_shape"] == {"data": devices}
        # process-major: the data axis walks process 0's devices, then process 1's, ...
        assert data["mesh_processes"] == sorted(data["mesh_processes"])
        _check_global_batch(
            {**data, "process_index": process_id},
            batch_size=batch_size,
            num_processes=num_processes,
            devices_per_process=devices_per_process,
        )
        shares.append(tuple(data["share"]))
        if model_axes is not None:
            # data axis over the 2 processes, model pairs inside one process: same shares, rows replicated
            with_model = report["data_model"]
            assert with_model["mesh_shape"] == {"data": devices // 2, "model": 2}
            assert with_model["share"] == data["share"]
            _check_global_batch(
                {**with_model, "process_index": process_id, "model_size": 2},
                batch_size=batch_size,
                num_processes=num_processes,
                devices_per_process=devices_per_process,
            )
    # the shares are disjoint, in process order, and cover the global batch
    assert shares[0][0] == 0 and shares[-1][1] == batch_size
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
    assert len({report["data"]["checksum"] for report in reports}) == 1


HEARTBEAT = 4
# A dead process must end the others within the heartbeat timeout plus JAX's detection and
# shutdown; the harness kills whatever is left at its own deadline (a hang fails the test).
DEATH_BOUND_SECONDS = HEARTBEAT + 12


@pytest.mark.parametrize(
    ("num_processes", "victim", "survivors"),
    [(3, 1, "idle"), (2, 0, "collective")],
    ids=["worker-dies-others-idle", "coordinator-dies-others-in-collectives"],
)
def test_a_dead_process_ends_the_run(tmp_path, num_processes, victim, survivors):
    runs = run_workers(
        "workers:die_or_wait",
        num_processes=num_processes,
        devices_per_process=1,
        workdir=tmp_path,
        args={"victim": victim, "survivors": survivors},
        init_kwargs={**TEST_TIMEOUTS, "heartbeat_timeout_seconds": HEARTBEAT, "shutdown_timeout_seconds": HEARTBEAT},
        timeout=40.0,
    )
    details = "\n".join(run.describe(1500) for run in runs)
    dead = runs[victim]
    assert dead.returncode == 3, details
    for run in runs:
        if run is dead:
            continue
        assert run.returncode is not None, f"process {run.process_id} hung until the harness killed it\n{details}"
        assert run.returncode != 0, details
        assert run.exit_seconds - dead.exit_seconds < DEATH_BOUND_SECONDS, details
        assert run.value != "survived", details
        # JAX's coordination service says why (gloo may first raise in a collective whose peer is gone)
        assert "JAX distributed service detected fatal errors" in run.stderr, details


def test_unconfigured_single_process_runs_alone(tmp_path):
    """No DATARAX_* / JAX_COORDINATOR_ADDRESS and no cluster: ``initialize()`` is a no-op."""
    runs = run_workers(
        "workers:global_batch",
        num_processes=1,
        devices_per_process=4,
        workdir=tmp_path,
        args={"global_batch_size": 8},
        init_kwargs={},
        join=False,
    )
    (report,) = check_all_succeeded(runs)
    assert runs[0].report["joined"] is False
    assert report["initialize_again"] is False
    assert report["process_count"] == 1 and report["device_count"] == 4
    assert report["initialize_mismatch"] is None
    _check_global_batch({**report["data"], "process_index": 0}, batch_size=8, num_processes=1, devices_per_process=4)


def test_a_process_that_never_joins_fails_the_others_at_initialize(tmp_path):
    runs = run_workers(
        "workers:global_batch",
        num_processes=2,
        devices_per_process=1,
        workdir=tmp_path,
        args={"global_batch_size": 2},
        init_kwargs={**TEST_TIMEOUTS, "initialization_timeout": 4},
        exit_before_join=1,
        timeout=40.0,
    )
    details = "\n".join(run.describe(1500) for run in runs)
    assert runs[1].returncode == 3, details
    waiting = runs[0]
    assert waiting.returncode not in (0, None), details
    # JAX aborts the process (no Python exception) once connecting has taken initialization_timeout
    assert waiting.exit_seconds < 4 + 15, details
    assert "RegisterTask" in waiting.stderr, details

"""Runs one worker function in N real Python processes joined into one JAX distributed run.

``run_workers("workers:global_batch", num_processes=2, devices_per_process=2, ...)`` starts N
processes of this file (``python harness.py ...``), each on CPU with ``devices_per_process``
virtual devices (``XLA_FLAGS=--xla_force_host_platform_device_count``). The coordinator address
(127.0.0.1 and a free port), the process count and each process's id reach the children through
``DATARAX_COORDINATOR_ADDRESS`` / ``DATARAX_NUM_PROCESSES`` / ``DATARAX_PROCESS_ID``, so every
child joins through ``datarax.distributed.initialize`` exactly as a launched job would. A child
then imports the worker function (``module:function``, the module next to this file), calls it
with the given keyword arguments and writes ``{"ok", "joined", "value" | "error"}`` as JSON for
the parent to compare across processes.

Every wait is bounded: JAX's own timeouts are short (passed to ``initialize``) and the parent
kills any process still running at its deadline (by process group, only the ones it started).
``check_all_succeeded`` turns a failed run into an assertion that quotes each child's exit status,
traceback and the tail of its stderr.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# Short JAX timeouts for tests: a dead peer ends the run in seconds, not minutes.
TEST_TIMEOUTS = {"initialization_timeout": 20, "heartbeat_timeout_seconds": 10, "shutdown_timeout_seconds": 10}


@dataclasses.dataclass
class WorkerRun:
    """What one child process did."""

    process_id: int
    returncode: int | None  # None: still running at the deadline, then killed
    exit_seconds: float  # since the processes were started (the deadline, if killed)
    report: dict | None  # the JSON the child wrote; None if it wrote none (e.g. it was killed)
    stderr: str

    @property
    def value(self) -> Any:
        return None if self.report is None else self.report.get("value")

    def describe(self, tail: int = 4000) -> str:
        error = (self.report or {}).get("error") or ""
        return (
            f"--- process {self.process_id}: returncode={self.returncode} after {self.exit_seconds:.1f}s\n"
            f"{error}\n[stderr tail]\n{self.stderr[-tail:]}"
        )


def free_port() -> int:
    """A TCP port that was free a moment ago (the coordinator binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env(devices_per_process: int, distributed: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DATARAX_", "JAX_COORDINATOR"))}
    flags = [flag for flag in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in flag]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **distributed)
    return env


def run_workers(
    worker: str,
    *,
    num_processes: int,
    devices_per_process: int,
    workdir: Path,
    args: dict | None = None,
    init_kwargs: dict | None = None,
    join: bool = True,
    exit_before_join: int | None = None,
    timeout: float = 50.0,
) -> list[WorkerRun]:
    """Runs ``worker`` (``"module:function"``) in ``num_processes`` processes; returns one record each.

    Args:
        worker: ``module:function`` in this folder; the function takes ``**args`` and returns JSON-able data.
        num_processes: Processes to start.
        devices_per_process: Virtual CPU devices in each.
        workdir: Where the children's stderr and reports go.
        args: Keyword arguments for the worker function.
        init_kwargs: Keyword arguments for ``datarax.distributed.initialize`` (default ``TEST_TIMEOUTS``).
        join: If False, no ``DATARAX_*`` variable is set (the child calls ``initialize`` unconfigured).
        exit_before_join: A process id that exits (status 3) before calling ``initialize``, or None.
        timeout: Seconds after which every process still running is killed.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    payload = json.dumps(
        {
            "args": args or {},
            "init_kwargs": TEST_TIMEOUTS if init_kwargs is None else init_kwargs,
            "exit_before_join": exit_before_join,
        }
    )
    procs, logs, reports = [], [], []
    exit_seconds: dict[int, float] = {}
    start = time.monotonic()
    try:
        for process_id in range(num_processes):
            distributed = {}
            if join:
                distributed = {
                    "DATARAX_COORDINATOR_ADDRESS": address,
                    "DATARAX_NUM_PROCESSES": str(num_processes),
                    "DATARAX_PROCESS_ID": str(process_id),
                }
            report = workdir / f"report_{process_id}.json"
            report.unlink(missing_ok=True)
            log = open(workdir / f"stderr_{process_id}.txt", "w+b")  # noqa: SIM115 - closed below
            logs.append(log)
            reports.append(report)
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), worker, str(report), payload],
                    env=_child_env(devices_per_process, distributed),
                    cwd=HERE,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: killed together with its helpers
                )
            )
        while len(exit_seconds) < num_processes and time.monotonic() - start < timeout:
            for process_id, proc in enumerate(procs):
                if process_id not in exit_seconds and proc.poll() is not None:
                    exit_seconds[process_id] = time.monotonic() - start
            time.sleep(0.02)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    runs = []
    for process_id, (proc, log, report) in enumerate(zip(procs, logs, reports)):
        log.seek(0)
        stderr = log.read().decode(errors="replace")
        log.close()
        finished = process_id in exit_seconds
        runs.append(
            WorkerRun(
                process_id=process_id,
                returncode=proc.returncode if finished else None,
                exit_seconds=exit_seconds.get(process_id, timeout),
                report=json.loads(report.read_text()) if report.exists() else None,
                stderr=stderr,
            )
        )
    return runs


def check_all_succeeded(runs: list[WorkerRun]) -> list[Any]:
    """The workers' return values, or an AssertionError quoting every process that failed."""
    failed = [run for run in runs if run.returncode != 0 or run.report is None or not run.report.get("ok")]
    if failed:
        raise AssertionError("worker processes failed:\n" + "\n".join(run.describe() for run in failed))
    return [run.value for run in runs]


def _write_report(path: Path, report: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(report))
    partial.replace(path)


def _child_main(worker: str, report_path: str, payload: str) -> int:
    options = json.loads(payload)
    report: dict[str, Any] = {"ok": False}
    if options["exit_before_join"] == int(os.environ.get("DATARAX_PROCESS_ID", "0")):
        os._exit(3)
    try:
        from datarax.distributed import initialize

        report["joined"] = initialize(**options["init_kwargs"])
        module_name, function_name = worker.split(":")
        function = getattr(importlib.import_module(module_name), function_name)
        report["value"] = function(**options["args"])
        report["ok"] = True
    except BaseException:
        report["error"] = traceback.format_exc()
        print(report["error"], file=sys.stderr, flush=True)
    _write_report(Path(report_path), report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(_child_main(*sys.argv[1:]))

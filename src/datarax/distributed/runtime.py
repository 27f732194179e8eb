"""Joining a multi-process JAX run: a thin, idempotent front to ``jax.distributed.initialize``.

Every process of a multi-host (or multi-process) run must join the JAX distributed runtime before
it touches any device. JAX does the work: it starts the coordination service on process 0, connects
every process to it, exchanges the device topology, checks that every process stays alive
(heartbeats) and, on CPU, lets the processes run collectives over TCP (gloo). ``initialize`` adds
only what a data pipeline launched by many different launchers needs:

- **Arguments from the environment.** An argument left as None is read from ``DATARAX_*``
  variables (below); whatever is still unset is left to JAX, which reads
  ``JAX_COORDINATOR_ADDRESS`` and ``JAX_LOCAL_DEVICE_IDS`` and detects Slurm, Open MPI, Cloud TPU
  and Kubernetes launches by itself.
- **One process is not a distributed run.** With one process (``num_processes=1``, or nothing
  configured and no cluster detected) it does nothing, so one script runs unchanged on a laptop
  and on a cluster.
- **Idempotent.** A second call in a process that already joined returns at once (after checking
  that it does not ask for a different run).
- **CPU collectives.** Cross-process collectives on CPU need an implementation chosen before the
  backend starts (``jax_cpu_collectives_implementation``); it selects ``"gloo"`` unless one is
  already configured (gloo is the default of recent JAX versions; older ones had none).
- **Bounded failure.** The timeouts JAX exposes are passed through, so a test or a job can ask for
  a short ``heartbeat_timeout_seconds``: when a process dies, JAX's coordination service notices
  the missing heartbeats and terminates every other process (they exit non-zero, with the
  service's message on stderr) instead of leaving them blocked in a collective.

Environment variables read when the matching argument is None: ``DATARAX_COORDINATOR_ADDRESS``
(``host:port`` of process 0), ``DATARAX_NUM_PROCESSES`` and ``DATARAX_PROCESS_ID``.

Call it first thing in ``main``: JAX refuses to join once any device has been used.

Example:
    >>> initialize(num_processes=1)  # one process: nothing to join
    False
    >>> initialize(num_processes=2, process_id=2)
    Traceback (most recent call last):
    ...
    ValueError: initialize: process_id must be an int in [0, num_processes=2), got 2
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax

from datarax.core.validation import int_in_range, is_int

COORDINATOR_ADDRESS_ENV = "DATARAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "DATARAX_NUM_PROCESSES"
PROCESS_ID_ENV = "DATARAX_PROCESS_ID"

_OWNER = "initialize"
_CPU_COLLECTIVES = ("gloo", "mpi")


def _int_arg(name: str, value: object, *, low: int, high: int | None = None, what: str) -> int:
    if not is_int(value):
        raise TypeError(f"{_OWNER}: {name} must be an int, got {value!r} ({type(value).__name__})")
    return int_in_range(_OWNER, name, value, low=low, high=high, what=what)


def _from_env(name: str, env: str) -> int | None:
    raw = os.environ.get(env)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{_OWNER}: {name} from ${env} must be an int, got {raw!r}") from None


def _check_address(address: object) -> str:
    if not isinstance(address, str):
        raise TypeError(f"{_OWNER}: coordinator_address must be a str 'host:port', got {address!r}")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{_OWNER}: coordinator_address must be 'host:port' with a port in 1..65535, got {address!r}")
    return address


def _select_cpu_collectives(cpu_collectives: str | None) -> None:
    if cpu_collectives is None:
        if jax.config.jax_cpu_collectives_implementation is None:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        return
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)


def _check_same_run(num_processes: int | None, process_id: int | None) -> None:
    if num_processes is not None and num_processes != jax.process_count():
        raise ValueError(
            f"{_OWNER}: already joined a run of {jax.process_count()} processes, got num_processes={num_processes}"
        )
    if process_id is not None and process_id != jax.process_index():
        raise ValueError(f"{_OWNER}: already joined as process {jax.process_index()}, got process_id={process_id}")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | Sequence[int] | None = None,
    cluster_detection_method: str | None = None,
    initialization_timeout: int | None = None,
    heartbeat_timeout_seconds: int | None = None,
    shutdown_timeout_seconds: int | None = None,
    cpu_collectives: str | None = None,
) -> bool:
    """Joins this process to the JAX distributed runtime, unless it is a single process.

    Args:
        coordinator_address: ``host:port`` of process 0's coordination service (every process
            gives the same one). None: ``$DATARAX_COORDINATOR_ADDRESS``, else JAX's own detection.
        num_processes: How many processes take part. None: ``$DATARAX_NUM_PROCESSES``, else
            JAX's detection. 1 makes the call a no-op.
        process_id: This process's index in ``[0, num_processes)``. None:
            ``$DATARAX_PROCESS_ID``, else JAX's detection.
        local_device_ids: Passed to JAX: restricts the devices this process uses.
        cluster_detection_method: Passed to JAX (e.g. ``"slurm"``, ``"mpi4py"``, ``"deactivate"``).
        initialization_timeout: Seconds to wait for every process to connect (JAX's default: 300).
        heartbeat_timeout_seconds: Seconds without a heartbeat after which a process counts as
            dead and the whole run is terminated (JAX's default: 100).
        shutdown_timeout_seconds: Seconds an exiting process waits for the others at the shutdown
            barrier (JAX's default: 300).
        cpu_collectives: ``"gloo"`` or ``"mpi"`` to set ``jax_cpu_collectives_implementation``;
            None keeps a configured one and otherwise selects ``"gloo"``.

    Returns:
        True if this process is now part of a distributed run (joined now or before), False if
        it runs alone.

    Raises:
        TypeError: If an argument (or an environment variable standing in for one) has the wrong
            type.
        ValueError: If a value is out of range, or the process already joined a different run.
        RuntimeError: From JAX, if a device was used before the call.

    Example:
        >>> initialize(num_processes=1)
        False
        >>> initialize("127.0.0.1", num_processes=2, process_id=0)
        Traceback (most recent call last):
        ...
        ValueError: initialize: coordinator_address must be 'host:port' with a port in 1..65535, got '127.0.0.1'
    """
    if coordinator_address is None:
        coordinator_address = os.environ.get(COORDINATOR_ADDRESS_ENV) or None
    if num_processes is None:
        num_processes = _from_env("num_processes", NUM_PROCESSES_ENV)
    if process_id is None:
        process_id = _from_env("process_id", PROCESS_ID_ENV)
    if coordinator_address is not None:
        coordinator_address = _check_address(coordinator_address)
    if num_processes is not None:
        num_processes = _int_arg("num_processes", num_processes, low=1, what="a positive int")
    if process_id is not None:
        high = num_processes
        what = f"an int in [0, num_processes={num_processes})" if high is not None else "a non-negative int"
        process_id = _int_arg("process_id", process_id, low=0, high=high, what=what)
    timeouts = {
        "initialization_timeout": initialization_timeout,
        "heartbeat_timeout_seconds": heartbeat_timeout_seconds,
        "shutdown_timeout_seconds": shutdown_timeout_seconds,
    }
    for name, value in timeouts.items():
        if value is not None:
            _int_arg(name, value, low=1, what="a positive int (seconds)")
    if cpu_collectives is not None and cpu_collectives not in _CPU_COLLECTIVES:
        raise ValueError(
            f"{_OWNER}: cpu_collectives must be one of {_CPU_COLLECTIVES} or None, got {cpu_collectives!r}"
        )

    if jax.distributed.is_initialized():
        _check_same_run(num_processes, process_id)
        return True
    if num_processes == 1:
        return False

    _select_cpu_collectives(cpu_collectives)
    kwargs = {name: int(value) for name, value in timeouts.items() if value is not None}
    nothing_configured = (
        coordinator_address is None
        and num_processes is None
        and process_id is None
        and cluster_detection_method is None
        and not os.environ.get("JAX_COORDINATOR_ADDRESS")
    )
    try:
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            local_device_ids=local_device_ids,
            cluster_detection_method=cluster_detection_method,
            **kwargs,
        )
    except ValueError:
        # With nothing configured, JAX's cluster detection found no launcher (it then reports the
        # coordinator address as undefined): this process runs alone.
        if nothing_configured and not jax.distributed.is_initialized():
            return False
        raise
    return True


__all__ = ["COORDINATOR_ADDRESS_ENV", "NUM_PROCESSES_ENV", "PROCESS_ID_ENV", "initialize"]

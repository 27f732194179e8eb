"""Scale-out: one global stream on 1..N devices and 1..N processes.

- ``initialize``: join the JAX distributed runtime (a no-op for one process; idempotent).
- ``data_mesh`` / ``batch_sharding``: a process-major mesh with a data axis, and the sharding of a
  batch's leading axis along it.
- ``process_share``: the rows ``[i·B/P, (i+1)·B/P)`` of a global batch that process ``i`` computes;
  ``jax.make_array_from_process_local_data(batch_sharding(mesh), rows)`` assembles the global array.
"""

from datarax.distributed.mesh import batch_sharding, data_mesh
from datarax.distributed.runtime import (
    COORDINATOR_ADDRESS_ENV,
    NUM_PROCESSES_ENV,
    PROCESS_ID_ENV,
    initialize,
)
from datarax.distributed.share import process_share

__all__ = [
    "COORDINATOR_ADDRESS_ENV",
    "NUM_PROCESSES_ENV",
    "PROCESS_ID_ENV",
    "batch_sharding",
    "data_mesh",
    "initialize",
    "process_share",
]

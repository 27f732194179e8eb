"""Worker functions run by harness.py in each process of a distributed test run.

Each returns JSON-able data the parent compares across processes; none imports pytest.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from datarax.distributed import batch_sharding, data_mesh, initialize, process_share

FEATURES = 3


def global_rows(start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of the reference global batch: row r is ``[3r, 3r+1, 3r+2]``."""
    return np.arange(start * FEATURES, stop * FEATURES, dtype=np.float32).reshape(stop - start, FEATURES)


def _assemble(global_batch_size: int, model_axes: dict | None) -> dict:
    mesh = data_mesh(model_axes=model_axes)
    sharding = batch_sharding(mesh)
    start, stop = process_share(global_batch_size)
    batch = jax.make_array_from_process_local_data(sharding, global_rows(start, stop))

    def weighted_sum(x):
        # Weighted by row position, so a row in the wrong place changes the value every process sees.
        return (x * jnp.arange(1, x.shape[0] + 1, dtype=x.dtype)[:, None]).sum()

    checksum = jax.jit(weighted_sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(batch)
    return {
        "mesh_shape": dict(mesh.shape),
        "mesh_processes": [device.process_index for device in mesh.devices.flat],
        "share": [start, stop],
        "global_shape": list(batch.shape),
        # [first row, stop row, process of the device, data] of each shard this process holds
        "shards": sorted(
            [
                shard.index[0].start or 0,
                shard.index[0].stop,
                shard.device.process_index,
                np.asarray(shard.data).tolist(),
            ]
            for shard in batch.addressable_shards
        ),
        "checksum": float(checksum),
        "gathered": np.asarray(multihost_utils.process_allgather(batch, tiled=True)).tolist(),
    }


def global_batch(global_batch_size: int, model_axes: dict | None = None) -> dict:
    """Builds the global batch from this process's share and reports what this process sees."""
    again = initialize()  # idempotent: returns at once whether the harness joined or not
    mismatch = None
    if jax.distributed.is_initialized():
        try:
            initialize(num_processes=jax.process_count() + 1)
        except ValueError as error:
            mismatch = str(error)
    report = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "initialize_again": again,
        "initialize_mismatch": mismatch,
        "data": _assemble(global_batch_size, None),
    }
    if model_axes is not None:
        report["data_model"] = _assemble(global_batch_size, model_axes)
    return report


def die_or_wait(victim: int, survivors: str, wait_seconds: float = 60.0) -> str:
    """After one collective, process ``victim`` dies; the others idle or keep running collectives."""
    mesh = data_mesh()
    batch = jax.make_array_from_process_local_data(batch_sharding(mesh), np.ones((jax.local_device_count(),)))
    total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))
    float(total(batch))  # every process is up and connected
    if jax.process_index() == victim:
        time.sleep(0.5)
        os._exit(3)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if survivors == "collective":
            float(total(batch))
        time.sleep(0.1)
    return "survived"  # JAX did not end this process: the test fails on its exit status 0

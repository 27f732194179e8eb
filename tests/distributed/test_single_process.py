"""datarax.distributed in one process over the 8 virtual CPU devices of tests/conftest.py, and its argument checks."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import datarax.distributed as dist
from datarax.distributed import batch_sharding, data_mesh, initialize, process_share


def test_public_api_is_curated():
    assert sorted(dist.__all__) == sorted(
        [
            "COORDINATOR_ADDRESS_ENV",
            "NUM_PROCESSES_ENV",
            "PROCESS_ID_ENV",
            "batch_sharding",
            "data_mesh",
            "initialize",
            "process_share",
        ]
    )


def test_one_process_serves_the_whole_batch_on_eight_devices():
    assert jax.process_count() == 1 and jax.device_count() == 8
    mesh = data_mesh()
    assert mesh.axis_names == ("data",) and dict(mesh.shape) == {"data": 8}
    assert [d.id for d in mesh.devices.flat] == sorted(d.id for d in jax.devices())
    assert process_share(16) == (0, 16)
    rows = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
    batch = jax.make_array_from_process_local_data(batch_sharding(mesh), rows[slice(*process_share(16))])
    assert batch.shape == (16, 2)
    assert isinstance(batch.sharding, NamedSharding) and batch.sharding.spec == PartitionSpec("data")
    for shard in batch.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), rows[shard.index[0]])
    np.testing.assert_array_equal(np.asarray(batch), rows)


def test_model_axes_follow_the_data_axis():
    mesh = data_mesh("batch", {"model": 2, "expert": 2})
    assert mesh.axis_names == ("batch", "model", "expert")
    assert mesh.devices.shape == (2, 2, 2)
    assert [d.id for d in mesh.devices.flat] == sorted(d.id for d in jax.devices())
    sharding = batch_sharding(mesh, "batch")
    batch = jax.device_put(np.arange(4 * 3).reshape(4, 3), sharding)
    # four devices (one model x expert group) hold the same two rows
    assert sorted({(s.index[0].start, s.index[0].stop) for s in batch.addressable_shards}) == [(0, 2), (2, 4)]


def test_process_share_covers_the_batch_disjointly():
    for count in (1, 2, 3, 4, 6, 12):
        shares = [process_share(12, index, count) for index in range(count)]
        assert shares[0][0] == 0 and shares[-1][1] == 12
        assert all(a[1] == b[0] and a[1] - a[0] == 12 // count for a, b in zip(shares, shares[1:]))
    assert process_share(np.int64(6), np.int32(1), 3) == (2, 4)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: process_share(10, 0, 4),
            ValueError,
            "global_batch_size=10 is not divisible by process_count=4; expected a multiple of 4 (e.g. 8 or 12)",
        ),
        (lambda: process_share(3, 0, 4), ValueError, "expected a multiple of 4 (e.g. 4)"),
        (lambda: process_share(0, 0, 1), ValueError, "global_batch_size must be a positive int, got 0"),
        (lambda: process_share(8.0, 0, 1), TypeError, "global_batch_size must be an int, got 8.0 (float)"),
        (lambda: process_share(8, True, 2), TypeError, "process_index must be an int, got True (bool)"),
        (lambda: process_share(8, 2, 2), ValueError, "process_index must be an int in [0, process_count=2), got 2"),
        (lambda: process_share(8, 0, 0), ValueError, "process_count must be a positive int, got 0"),
        (lambda: data_mesh(data_axis=0), TypeError, "data_axis must be a str (a mesh axis name), got 0 (int)"),
        (lambda: data_mesh(data_axis=""), ValueError, "data_axis must be a non-empty axis name, got ''"),
        (lambda: data_mesh(model_axes=[("model", 2)]), TypeError, "model_axes must be a mapping"),
        (lambda: data_mesh(model_axes={"data": 2}), ValueError, "model_axes must not repeat data_axis='data'"),
        (lambda: data_mesh(model_axes={"model": 0}), ValueError, "model_axes['model'] must be a positive int, got 0"),
        (lambda: data_mesh(model_axes={"model": "2"}), TypeError, "model_axes['model'] must be an int, got '2'"),
        (lambda: data_mesh(model_axes={"model": 16}), ValueError, "model_axes={'model': 16} needs 16 devices"),
        (lambda: batch_sharding("mesh"), TypeError, "mesh must be a jax.sharding.Mesh, got 'mesh' (str)"),
        (lambda: batch_sharding(data_mesh(), "model"), ValueError, "data_axis='model' is not an axis of the mesh"),
        (lambda: initialize(num_processes=0), ValueError, "num_processes must be a positive int, got 0"),
        (lambda: initialize(num_processes="2"), TypeError, "num_processes must be an int, got '2' (str)"),
        (
            lambda: initialize(num_processes=2, process_id=-1),
            ValueError,
            "process_id must be an int in [0, num_processes=2), got -1",
        ),
        (lambda: initialize(("127.0.0.1", 1234), 2, 0), TypeError, "coordinator_address must be a str"),
        (lambda: initialize("127.0.0.1:http", 2, 0), ValueError, "got '127.0.0.1:http'"),
        (
            lambda: initialize("127.0.0.1:1", 2, 0, heartbeat_timeout_seconds=0),
            ValueError,
            "heartbeat_timeout_seconds must be a positive int (seconds), got 0",
        ),
        (
            lambda: initialize("127.0.0.1:1", 2, 0, cpu_collectives="nccl"),
            ValueError,
            "cpu_collectives must be one of ('gloo', 'mpi') or None, got 'nccl'",
        ),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


def test_environment_stands_in_for_arguments(monkeypatch):
    monkeypatch.setenv(dist.NUM_PROCESSES_ENV, "1")
    assert initialize() is False  # one process: nothing to join, nothing changed
    monkeypatch.setenv(dist.NUM_PROCESSES_ENV, "two")
    with pytest.raises(ValueError, match=r"num_processes from \$DATARAX_NUM_PROCESSES must be an int, got 'two'"):
        initialize()
    monkeypatch.setenv(dist.NUM_PROCESSES_ENV, "2")
    monkeypatch.setenv(dist.PROCESS_ID_ENV, "5")
    with pytest.raises(ValueError, match=r"process_id must be an int in \[0, num_processes=2\), got 5"):
        initialize()
    assert not jax.distributed.is_initialized()
    assert isinstance(data_mesh(), Mesh)

"""Pipeline(sharding=...): one global stream on one device, 8 local devices, and 2 or 4 processes (real ones)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from harness import check_all_succeeded, run_workers
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from pipeline_workers import BATCH, N, build, stream

from datarax.pipeline.sharding import local_rows


def _concat_shares(reports: list[dict]) -> list[dict]:
    """Batch by batch, the processes' rows joined in process order (the mesh is process-major)."""
    reports = sorted(reports, key=lambda r: r["process_index"])
    joined = []
    for parts in zip(*(r["batches"] for r in reports), strict=True):
        joined.append({k: sum((p[k] for p in parts), []) for k in parts[0]})
    return joined


# -- one process, 8 devices --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["device", "host"])
def test_eight_local_devices_serve_the_unsharded_stream_as_global_arrays(kind):
    reference = stream(kind, sharded=False)
    sharded = stream(kind, sharded=True)
    assert sharded["batches"] == reference["batches"]
    assert sharded["states"] == reference["states"]
    assert all(shape["image"] == [BATCH, 2, 3] and shape["valid_mask"] == [BATCH] for shape in sharded["shapes"])
    assert sharded["sharding"] == str(PartitionSpec("data"))


def test_each_device_holds_its_own_rows_and_a_model_axis_holds_copies():
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    sharded = build("device", sharded=True, sharding=NamedSharding(mesh, PartitionSpec("data")))
    expected = next(iter(build("device", sharded=False)))
    batch = next(iter(sharded))
    image = batch["image"]
    assert image.sharding.mesh.shape == {"data": 4, "model": 2}
    assert len(image.addressable_shards) == 8
    for shard in image.addressable_shards:
        assert shard.data.shape == (BATCH // 4, 2, 3)
        np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(expected["image"])[shard.index[0]])
    assert local_rows(sharded.plan.rows, batch)["id"].tolist() == np.asarray(expected["id"]).tolist()


def test_batch_sizes_that_do_not_divide_are_refused_saying_what_would():
    from datarax import Pipeline
    from datarax.sources import MemorySource, MemorySourceConfig

    mesh = Mesh(np.array(jax.devices()), ("data",))
    source = MemorySource(MemorySourceConfig(), data={"x": np.arange(N)})
    with pytest.raises(ValueError, match=r"batch_size=12 does not divide over sharding's 8 data shards.*8 or 16"):
        Pipeline(source=source, batch_size=12, sharding=NamedSharding(mesh, PartitionSpec("data")))
    with pytest.raises(ValueError, match="does not split the batch axis"):
        Pipeline(source=source, batch_size=8, sharding=NamedSharding(mesh, PartitionSpec()))
    with pytest.raises(TypeError, match="sharding must be a jax.sharding.NamedSharding"):
        Pipeline(source=source, batch_size=8, sharding=jax.devices()[0])


# -- several processes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["device", "host"])
@pytest.mark.parametrize("num_processes, devices_per_process", [(2, 2), (4, 1), (2, 4)])
def test_the_union_of_the_process_shares_is_the_single_process_stream(
    tmp_path, kind, num_processes, devices_per_process
):
    reference = stream(kind, sharded=False)
    runs = run_workers(
        "pipeline_workers:stream",
        num_processes=num_processes,
        devices_per_process=devices_per_process,
        workdir=tmp_path,
        args={"kind": kind, "sharded": True},
        timeout=100,
    )
    reports = check_all_succeeded(runs)
    assert _concat_shares(reports) == reference["batches"]  # shuffle, flips, host draws, valid_mask
    for report in reports:
        assert report["states"] == reference["states"]  # one state, the same on every process
        assert all(shape["image"] == [BATCH, 2, 3] for shape in report["shapes"])
    if kind == "host":
        share = BATCH // num_processes
        for report in reports:
            first, stop = report["share"]
            assert (first, stop) == (report["process_index"] * share, (report["process_index"] + 1) * share)
            # It read the records of its rows, and nothing else (an all-padding share reads the last real one).
            own = set()
            for batch in report["batches"]:
                own.update(batch["id"])
            assert set(report["read"]) == own
        every = sorted(sum((r["read"] for r in reports), []))
        assert set(every) == set(range(N))


def test_a_state_saved_on_four_processes_continues_on_two_and_on_one(tmp_path):
    kind = "host"
    reference = stream(kind, sharded=False)
    four = check_all_succeeded(
        run_workers(
            "pipeline_workers:stream",
            num_processes=4,
            devices_per_process=1,
            workdir=tmp_path / "four",
            args={"kind": kind, "sharded": True, "batches": 7},
            timeout=100,
        )
    )
    state = four[0]["states"][-1]
    assert all(r["states"][-1] == state for r in four)
    assert json.loads(state)["epoch"] == 1  # mid-run, past an epoch boundary
    two = check_all_succeeded(
        run_workers(
            "pipeline_workers:stream",
            num_processes=2,
            devices_per_process=2,
            workdir=tmp_path / "two",
            args={"kind": kind, "sharded": True, "state": state},
            timeout=100,
        )
    )
    assert _concat_shares(two) == reference["batches"][7:]
    one = stream(kind, sharded=True, state=state)  # this process: one process, 8 devices
    assert one["batches"] == reference["batches"][7:]


def test_one_checkpoint_per_run_saved_on_four_processes_restores_on_two_and_on_one(tmp_path):
    from pipeline_workers import checkpoint_restore

    reference = stream("host", sharded=False)
    directory = str(tmp_path / "checkpoints")
    saved = check_all_succeeded(
        run_workers(
            "pipeline_workers:checkpoint_save",
            num_processes=4,
            devices_per_process=1,
            workdir=tmp_path / "save",
            args={"directory": directory, "batches": 6},
            timeout=120,
        )
    )
    assert len({r["state"] for r in saved}) == 1 and len({json.dumps(r["kernel"]) for r in saved}) == 1
    # One iterator document for the run, not one per process.
    step_dir = tmp_path / "checkpoints" / "6"
    assert sorted(p.name for p in step_dir.iterdir() if p.name.startswith("iterator")) == ["iterator.json"]
    documents = [p.name for p in (step_dir / "iterator.json").iterdir() if p.name != "commit_success.txt"]
    assert documents == ["metadata"]  # Orbax's JSON document, written by the primary process alone
    restored = check_all_succeeded(
        run_workers(
            "pipeline_workers:checkpoint_restore",
            num_processes=2,
            devices_per_process=2,
            workdir=tmp_path / "restore",
            args={"directory": directory},
            timeout=120,
        )
    )
    for report in restored:
        assert report["step"] == 6 and report["state"] == saved[0]["state"]
        assert report["kernel"] == saved[0]["kernel"]
    assert _concat_shares(restored) == reference["batches"][6:]
    alone = checkpoint_restore(directory)  # this process alone, 8 devices
    assert alone["kernel"] == saved[0]["kernel"]
    assert alone["batches"] == reference["batches"][6:]


def test_scan_over_a_sharded_pipeline_equals_the_unsharded_scan():
    def total(batch):
        return (batch["image"].sum(axis=(1, 2)) * batch["valid_mask"]).sum()

    unsharded = build("device", sharded=False, num_epochs=None).scan(total, length=7)
    sharded = build("device", sharded=True, num_epochs=None).scan(total, length=7)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(unsharded), rtol=1e-6)


def test_the_sharded_step_needs_no_cross_device_communication():
    # Each device gathers and transforms its own rows: no collective in the compiled step. The
    # fusion boundaries (the record keys', RandomContrast's) take their predicate from the epoch,
    # which every device holds; taken from the batch, it was an all-reduce per boundary.
    from flax import nnx

    from datarax import Pipeline
    from datarax.distributed import batch_sharding, data_mesh
    from datarax.operators import RandomContrast, RandomContrastConfig, RandomFlip, RandomFlipConfig
    from datarax.sources import MemorySource, MemorySourceConfig

    images = np.random.default_rng(0).random((64, 4, 4, 3), dtype=np.float32)
    pipeline = Pipeline(
        source=MemorySource(MemorySourceConfig(), data={"image": images}),
        stages=[RandomFlip(RandomFlipConfig()), RandomContrast(RandomContrastConfig(magnitude=0.3))],
        batch_size=16,
        shuffle=True,
        rngs=nnx.Rngs(0),
        sharding=batch_sharding(data_mesh()),
    )
    iterator = iter(pipeline)
    first = next(iterator)
    assert len(first["image"].addressable_shards) == 8
    chunk, meta = iterator.feed.records.batch(0, 16)
    assert len(meta.sharding.device_set) == 8  # staged on every device once per chunk, not sent per batch
    hlo = iterator.binding._step.lower(iterator.binding.inputs(), chunk, meta).compile().as_text()
    assert "conditional" in hlo  # the fusion boundaries are there
    for collective in ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter"):
        assert collective not in hlo, collective

"""Sharded pipelines run by harness.py in each process of a distributed test (and by the parent, unsharded).

Every process builds the same pipeline over ``data_mesh()``, iterates it and reports its own rows of every
global batch (as lists, with the global positions they hold), the records its host source read, and its
iterator states; the parent compares the union of the shares with the single-process stream.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from datarax import Pipeline
from datarax.core.config import StructuralConfig
from datarax.core.host_source import HostSourceModule
from datarax.distributed import batch_sharding, data_mesh
from datarax.operators import HostMapOperator, HostMapOperatorConfig, RandomFlip, RandomFlipConfig
from datarax.pipeline.sharding import local_rows, replicate
from datarax.sources import MemorySource, MemorySourceConfig

N = 37  # records: a short last batch in every epoch
BATCH = 8
IMAGES = np.arange(N * 2 * 3, dtype=np.float32).reshape(N, 2, 3)


class CountingSource(HostSourceModule):
    """A host source that remembers every record index it was asked to read."""

    def __init__(self, config: StructuralConfig):
        super().__init__(config)
        self.read: list[int] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return N

    def element_spec(self) -> dict:
        return {"image": jax.ShapeDtypeStruct((2, 3), np.float32), "id": jax.ShapeDtypeStruct((), np.int64)}

    def read_records(self, indices: np.ndarray) -> dict:
        with self._lock:
            self.read.extend(int(i) for i in indices)
        return {"image": IMAGES[indices], "id": np.asarray(indices, np.int64)}


def noisy(element: dict, rng: np.random.Generator) -> dict:
    """A random host operator: its draws come from the record's generator."""
    return {**element, "noise": np.float32(rng.random())}


def build(kind: str, sharded: bool, num_epochs: int | None = 3, sharding=None) -> Pipeline:
    """The test pipeline over a device or a host source; ``sharding`` overrides ``data_mesh()``'s."""
    if sharded and sharding is None:
        sharding = batch_sharding(data_mesh())
    if kind == "device":
        source = MemorySource(MemorySourceConfig(), data={"image": IMAGES, "id": np.arange(N)})
        host_stages = []
    else:
        source = CountingSource(StructuralConfig())
        host_stages = [HostMapOperator(HostMapOperatorConfig(stochastic=True, stream_name="noise"), fn=noisy)]
    return Pipeline(
        source=source,
        host_stages=host_stages,
        stages=[RandomFlip(RandomFlipConfig(fields=("image",)))],
        batch_size=BATCH,
        shuffle=True,
        rngs=nnx.Rngs(7),
        num_epochs=num_epochs,
        workers=0,
        sharding=sharding if sharded else None,
    )


def _rows(batch: dict, sharded: bool, pipeline: Pipeline) -> dict:
    rows = local_rows(pipeline.plan.rows, batch) if sharded else {k: np.asarray(v) for k, v in batch.items()}
    return {k: np.asarray(v).tolist() for k, v in rows.items()}


def stream(kind: str, sharded: bool, state: str | None = None, batches: int | None = None) -> dict:
    """Iterates the pipeline (from ``state``, a JSON string, if given); reports rows, states and reads."""
    pipeline = build(kind, sharded)
    if kind == "host":
        pipeline.source.read.clear()  # construction reads record 0 to infer the collated spec
    iterator = iter(pipeline)
    if state is not None:
        iterator.set_state(json.loads(state))
    out: dict = {"batches": [], "states": [], "shapes": [], "sharding": None}
    for batch in iterator:
        out["batches"].append(_rows(batch, sharded, pipeline))
        out["states"].append(json.dumps(iterator.get_state()))
        out["shapes"].append({k: list(v.shape) for k, v in batch.items()})
        out["sharding"] = str(getattr(batch["image"].sharding, "spec", None))
        if batches is not None and len(out["batches"]) == batches:
            break
    out["share"] = list(pipeline._host_stage.share) if pipeline._host_stage is not None else None
    out["read"] = sorted(pipeline.source.read) if kind == "host" else None
    out["process_index"] = jax.process_index()
    return out


def stream_to_file(kind: str, path: str, state: str | None = None, batches: int | None = None) -> None:
    """``stream`` run unsharded in this process, written as JSON (for the parent's reference)."""
    Path(path).write_text(json.dumps(stream(kind, False, state, batches)))


def _replicated_model(seed: int) -> nnx.Linear:
    """A small model whose parameters every device holds (as a data-parallel model's are)."""
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(seed))
    replicated = jax.sharding.NamedSharding(data_mesh(), jax.sharding.PartitionSpec())
    nnx.update(model, jax.tree.map(lambda leaf: replicate(leaf, replicated), nnx.state(model)))
    return model


def checkpoint_save(directory: str, batches: int) -> dict:
    """Iterates ``batches`` batches of the sharded host pipeline, then saves model + iterator in one Orbax step."""
    from datarax.checkpoint import OrbaxCheckpointHandler

    iterator = iter(build("host", True))
    for _ in range(batches):
        next(iterator)
    model = _replicated_model(0)
    with OrbaxCheckpointHandler(directory) as handler:
        handler.save(batches, {"model": model, "iterator": iterator})
        handler.wait_until_finished()
    return {"state": json.dumps(iterator.get_state()), "kernel": np.asarray(model.kernel[...]).tolist()}


def checkpoint_restore(directory: str) -> dict:
    """Restores model + iterator from the latest step (any process count) and serves the rest of the stream."""
    from datarax.checkpoint import OrbaxCheckpointHandler

    pipeline = build("host", True)
    iterator = iter(pipeline)
    model = _replicated_model(1)  # another initialisation: the restore must replace it
    with OrbaxCheckpointHandler(directory) as handler:
        step = handler.restore({"model": model, "iterator": iterator})
    return {
        "step": step,
        "state": json.dumps(iterator.get_state()),
        "kernel": np.asarray(model.kernel[...]).tolist(),
        "kernel_sharding": str(model.kernel[...].sharding.spec),
        "batches": [_rows(batch, True, pipeline) for batch in iterator],
        "process_index": jax.process_index(),
    }

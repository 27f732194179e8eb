"""Pipelines the reliability tests build, at module level so a fresh process can import them by name.

``check_resume(..., fresh_process=True)``, the checkpoint-kill subprocesses and the file-deletion
test import this module in new processes (the tests directory reaches them through ``sys.path``).
Builders of file-backed pipelines read their folder from the ``DATARAX_RELIABILITY_DATA``
environment variable, which a test sets (a fresh process inherits it).

Every record ``r`` has ``label = r`` (int32), so a batch names the records it holds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax import Pipeline
from datarax.operators import (
    ElementOperator,
    ElementOperatorConfig,
    HostMapOperator,
    HostMapOperatorConfig,
    ProbabilisticOperator,
    ProbabilisticOperatorConfig,
    RandomBrightness,
    RandomBrightnessConfig,
    RandomFlip,
    RandomFlipConfig,
)
from datarax.sources import (
    IterableSource,
    IterableSourceConfig,
    MemorySource,
    MemorySourceConfig,
    NumpyFileSource,
    NumpyFileSourceConfig,
)

DATA_ENV = "DATARAX_RELIABILITY_DATA"
IMAGE_SHAPE = (4, 4, 3)


def images(n: int) -> np.ndarray:
    """``n`` distinct float32 images in ``[0, 1)``, a pure function of the record index."""
    values = np.arange(n * int(np.prod(IMAGE_SHAPE)), dtype=np.float32).reshape(n, *IMAGE_SHAPE)
    return (values % 97) / 97.0


def columns(n: int) -> dict[str, np.ndarray]:
    return {"image": images(n), "label": np.arange(n, dtype=np.int32)}


def data_dir() -> str:
    directory = os.environ.get(DATA_ENV)
    if not directory:
        raise RuntimeError(f"set {DATA_ENV} to the folder write_numpy_files wrote")
    return directory


def write_numpy_files(directory: Any, n: int = 19) -> dict[str, str]:
    """Writes ``image.npy`` and ``label.npy`` of ``n`` records into ``directory``; their paths."""
    paths = {}
    for name, array in columns(n).items():
        paths[name] = os.path.join(directory, f"{name}.npy")
        np.save(paths[name], array)
    return paths


# -- operators ------------------------------------------------------------------------------------


def device_augmentations() -> list[Any]:
    """A device flip, a brightness change with probability 0.5, and a per-record noise draw."""
    return [
        RandomFlip(RandomFlipConfig(fields=("image",), axis=-2)),
        ProbabilisticOperator(
            ProbabilisticOperatorConfig(probability=0.5, stochastic=True, stream_name="maybe_bright"),
            operator=RandomBrightness(RandomBrightnessConfig(fields=("image",), magnitude=0.3)),
        ),
        ElementOperator(ElementOperatorConfig(stochastic=True, stream_name="noise"), fn=add_noise),
    ]


def add_noise(element: dict[str, Any], key: jax.Array) -> dict[str, Any]:
    """A record-keyed draw: the right way to be random on the device."""
    return {**element, "noise": jax.random.uniform(key, ())}


def host_jitter(element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A host draw from the record's generator: the right way to be random on the host."""
    return {**element, "image": element["image"] + np.float32(rng.uniform(0, 0.01)), "draw": np.float32(rng.random())}


def host_jitter_global(element: dict[str, Any], rng: Any) -> dict[str, Any]:
    """The mistake: a host draw from numpy's global generator, which no iterator state holds."""
    return {**element, "draw": np.float32(np.random.random())}


def trace_time_jitter(element: dict[str, Any], key: jax.Array) -> dict[str, Any]:
    """The mistake: ``np.random`` runs once, when the step is traced, and its value is baked in."""
    return {**element, "image": element["image"] + jnp.float32(np.random.uniform(0, 0.1))}


# -- pipelines ------------------------------------------------------------------------------------


def memory_pipeline() -> Pipeline:
    """13 records, batches of 5 (the third padded), shuffled, three stochastic device operators, 2 epochs."""
    source = MemorySource(MemorySourceConfig(), data=columns(13))
    return Pipeline(
        source=source,
        stages=device_augmentations(),
        batch_size=5,
        rngs=nnx.Rngs(7),
        shuffle=True,
        num_epochs=2,
    )


def numpy_file_pipeline(workers: int = 2, num_epochs: int | None = 2, worker_kind: str = "thread") -> Pipeline:
    """The ``.npy`` files of ``data_dir()``: a stochastic host operator on 2 worker threads, then a device flip."""
    paths = {name: os.path.join(data_dir(), f"{name}.npy") for name in ("image", "label")}
    return Pipeline(
        source=NumpyFileSource(NumpyFileSourceConfig(), paths=paths),
        host_stages=[HostMapOperator(HostMapOperatorConfig(stochastic=True, stream_name="jitter"), fn=host_jitter)],
        stages=[RandomFlip(RandomFlipConfig(fields=("image",), axis=-2))],
        batch_size=4,
        rngs=nnx.Rngs(3),
        shuffle=True,
        num_epochs=num_epochs,
        workers=workers,
        worker_kind=worker_kind,
    )


def numpy_file_pipeline_forever() -> Pipeline:
    """``numpy_file_pipeline`` with no end (for the checkpoint-kill subprocess)."""
    return numpy_file_pipeline(workers=2, num_epochs=None)


def stream_records() -> Iterator[dict[str, Any]]:
    """A stream of 22 records (no random access): each pass yields them in the same order."""
    for r in range(22):
        yield {"label": np.int32(r), "value": np.float32(r) / 4}


def stream_pipeline() -> Pipeline:
    """A stream source through a seeded shuffle buffer of 8, a host draw, one background thread, 2 epochs."""
    return Pipeline(
        source=IterableSource(IterableSourceConfig(), records=stream_records),
        host_stages=[HostMapOperator(HostMapOperatorConfig(stochastic=True, stream_name="jitter"), fn=host_draw)],
        batch_size=4,
        shuffle=True,
        shuffle_buffer_size=8,
        rngs=nnx.Rngs(5),
        num_epochs=2,
        workers=1,
    )


def host_draw(element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {**element, "draw": np.float32(rng.random())}


def global_random_host_pipeline() -> Pipeline:
    """Broken: a host operator draws from ``np.random`` (the numpy files of ``data_dir()``)."""
    paths = {name: os.path.join(data_dir(), f"{name}.npy") for name in ("image", "label")}
    return Pipeline(
        source=NumpyFileSource(NumpyFileSourceConfig(), paths=paths),
        host_stages=[HostMapOperator(HostMapOperatorConfig(), fn=host_jitter_global)],
        batch_size=4,
        rngs=nnx.Rngs(3),
        shuffle=True,
        num_epochs=1,
        workers=0,
    )


def trace_time_random_pipeline() -> Pipeline:
    """Broken in a way only a fresh process shows: a draw made while tracing the step."""
    source = MemorySource(MemorySourceConfig(), data=columns(10))
    jitter = ElementOperator(ElementOperatorConfig(), fn=trace_time_jitter)
    return Pipeline(source=source, stages=[jitter], batch_size=4, rngs=nnx.Rngs(0), shuffle=True, num_epochs=1)


class ForgetfulIterable:
    """Broken: an iterable whose iterator reports a position but ignores it in ``set_state``."""

    def __init__(self) -> None:
        self.pipeline = memory_pipeline()

    def __iter__(self) -> ForgetfulIterator:
        return ForgetfulIterator(iter(self.pipeline))


class ForgetfulIterator:
    def __init__(self, inner: Any) -> None:
        self.inner, self.served = inner, 0

    def __iter__(self) -> ForgetfulIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self.inner)
        self.served += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"served": self.served}

    def set_state(self, state: dict[str, Any]) -> None:
        self.served = state["served"]  # the inner iterator is not moved: the bug


def forgetful_pipeline() -> ForgetfulIterable:
    return ForgetfulIterable()


# -- the checkpoint writer the fault tests kill -----------------------------------------------------


def write_checkpoints_until_killed(checkpoint_dir: str, log_path: str) -> None:
    """A training loop that saves the iterator after every batch, until it is killed.

    It restores the latest checkpoint first, if there is one. For every batch it appends
    ``[batch index, labels of its valid rows]`` to ``log_path`` (the batch was "trained on"), then
    saves the state after it as step ``index + 1``. It prints ``READY`` once its first save has
    started, so the test knows the loop is running.
    """
    import json

    from datarax import OrbaxCheckpointHandler

    iterator = iter(numpy_file_pipeline_forever())
    with OrbaxCheckpointHandler(checkpoint_dir, max_to_keep=3) as handler, open(log_path, "a") as log:
        step = handler.restore({"data": iterator}) if handler.latest_step() is not None else 0
        first = True
        while True:
            batch = next(iterator)
            labels = np.asarray(batch["label"])[np.asarray(batch["valid_mask"])].tolist()
            log.write(json.dumps([step, labels]) + "\n")
            log.flush()
            step += 1
            handler.save(step, {"data": iterator})
            if first:
                print("READY", step, flush=True)
                first = False

"""Host sources, host operators and pipeline builders for ``test_host_stage.py``.

Everything here is defined at module level, so a spawned worker process
(``worker_kind="process"``) rebuilds the sources and operators from their
recipes by importing this module by name: the tests directory is on the
parent's ``sys.path`` (``conftest.py``), and a spawned child receives the
parent's ``sys.path`` with multiprocessing's spawn preparation data. The
resume test also imports it from a fresh ``python -c`` process.

Every record ``r`` has ``label = r`` (int32) and ``image = image_of(r)``, a
``(2, 3, 1)`` float32 array whose pixels differ from each other (so a mirrored
image is told from the original), so any row of any batch names the record it
came from.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from flax import nnx

from datarax import Pipeline
from datarax.core.config import OperatorConfig, StructuralConfig
from datarax.core.host_operator import HostOperator
from datarax.core.host_source import HostSourceModule
from datarax.core.prng import host_rng
from datarax.core.spec import BytesSpec, RaggedSpec
from datarax.operators.host_map import HostMapOperator, HostMapOperatorConfig
from datarax.operators.image import RandomFlip, RandomFlipConfig

IMAGE_SHAPE = (2, 3, 1)
SEED = 5
JITTER = "jitter"


def image_of(records: Any) -> np.ndarray:
    """The ``image`` of each record: ``100 * r + (0, 1, ..., 5)``, shape ``(len(records), 2, 3, 1)``."""
    records = np.asarray(records, dtype=np.float32).reshape(-1, 1, 1, 1)
    pixels = np.arange(np.prod(IMAGE_SHAPE), dtype=np.float32).reshape(IMAGE_SHAPE)
    return (100 * records + pixels).astype(np.float32)


class IndexSource(HostSourceModule):
    """``n`` records computed from their index (see the module docstring).

    Args:
        config: A ``StructuralConfig``.
        n: Number of records.
        fail_read_record: A record whose read raises ``OSError`` (its text does not name the record).
        odd_record: A record whose ragged ``tokens`` column has another length than the others'
            (adds a ``tokens`` column: ``[r, r, r]``, or ``[r] * odd_length`` for ``odd_record``).
        odd_length: The length of ``odd_record``'s ``tokens``.
        with_bytes: Adds a ``raw`` column of ``bytes`` (a ``BytesSpec`` column).
    """

    def __init__(
        self,
        config: StructuralConfig,
        *,
        n: int,
        fail_read_record: int | None = None,
        odd_record: int | None = None,
        odd_length: int = 4,
        with_bytes: bool = False,
        name: str | None = None,
    ):
        super().__init__(config, name=name)
        self.n = n
        self.fail_read_record = fail_read_record
        self.odd_record = odd_record
        self.odd_length = odd_length
        self.with_bytes = with_bytes

    def __len__(self) -> int:
        return self.n

    def element_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "label": jax.ShapeDtypeStruct((), np.int32),
            "image": jax.ShapeDtypeStruct(IMAGE_SHAPE, np.float32),
        }
        if self.odd_record is not None:
            spec["tokens"] = RaggedSpec(np.int32, 1)
        if self.with_bytes:
            spec["raw"] = BytesSpec()
        return spec

    def read_records(self, indices: np.ndarray) -> dict[str, Any]:
        indices = np.asarray(indices, dtype=np.int64)
        if self.fail_read_record is not None and self.fail_read_record in indices.tolist():
            raise OSError("the disk is on fire")
        columns: dict[str, Any] = {"label": indices.astype(np.int32), "image": image_of(indices)}
        if self.odd_record is not None:
            columns["tokens"] = [
                np.full(self.odd_length if r == self.odd_record else 3, r, np.int32) for r in indices.tolist()
            ]
        if self.with_bytes:
            columns["raw"] = [str(r).encode() for r in indices.tolist()]
        return columns


class NpySource(HostSourceModule):
    """Records of ``.npy`` files, memory-mapped at each read (a worker process reopens them).

    Args:
        config: A ``StructuralConfig``.
        label_path: An int32 ``(n,)`` array file.
        image_path: A float32 ``(n, 2, 3, 1)`` array file.
    """

    def __init__(self, config: StructuralConfig, *, label_path: str, image_path: str, name: str | None = None):
        super().__init__(config, name=name)
        self.label_path = label_path
        self.image_path = image_path
        self.n = int(np.load(label_path, mmap_mode="r").shape[0])

    def __len__(self) -> int:
        return self.n

    def element_spec(self) -> dict[str, Any]:
        return {
            "label": jax.ShapeDtypeStruct((), np.int32),
            "image": jax.ShapeDtypeStruct(IMAGE_SHAPE, np.float32),
        }

    def read_records(self, indices: np.ndarray) -> dict[str, Any]:
        labels = np.load(self.label_path, mmap_mode="r")
        images = np.load(self.image_path, mmap_mode="r")
        return {"label": np.asarray(labels[indices]), "image": np.asarray(images[indices])}


def write_npy_source(directory: Any, n: int) -> NpySource:
    """Writes the ``n`` records of ``IndexSource(n=n)`` to ``.npy`` files in ``directory``; their source."""
    label_path, image_path = os.path.join(directory, "label.npy"), os.path.join(directory, "image.npy")
    np.save(label_path, np.arange(n, dtype=np.int32))
    np.save(image_path, image_of(np.arange(n)))
    return NpySource(StructuralConfig(), label_path=label_path, image_path=image_path)


# -- host operator functions (module level: picklable) ---------------------------


def jitter(element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Adds one uniform draw to ``image`` and keeps a 31-bit draw in ``jitter_draw``."""
    draw = rng.integers(1 << 31)
    shift = np.float32(rng.uniform())
    return {**element, "image": element["image"] + shift, "jitter_draw": np.asarray(draw, np.int32)}


def other_draw(element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Keeps a 31-bit draw in ``other_draw``."""
    return {**element, "other_draw": np.asarray(rng.integers(1 << 31), np.int32)}


def identity(element: dict[str, Any], rng: None) -> dict[str, Any]:
    """Deterministic: the record unchanged."""
    return dict(element)


def label_squared(element: dict[str, Any], rng: None) -> dict[str, Any]:
    """Deterministic: adds ``square = label ** 2`` (int32)."""
    assert rng is None
    return {**element, "square": np.asarray(int(element["label"]) ** 2, np.int32)}


def drop_raw(element: dict[str, Any], rng: None) -> dict[str, Any]:
    """Deterministic: drops the ``raw`` bytes column, keeping its length in ``raw_length``."""
    rest = {name: value for name, value in element.items() if name != "raw"}
    return {**rest, "raw_length": np.asarray(len(element["raw"]), np.int32)}


def expected_jitter(seed: int, key_name: str, epoch: int, record: int) -> tuple[int, np.float32]:
    """What ``jitter`` must draw for ``record`` in ``epoch`` (the seed contract): ``(jitter_draw, image shift)``."""
    rng = host_rng(seed, key_name, epoch, record)
    return int(rng.integers(1 << 31)), np.float32(rng.uniform())


def expected_jitter_draw(seed: int, key_name: str, epoch: int, record: int) -> int:
    """What ``jitter``'s ``jitter_draw`` must be for ``record`` in ``epoch``."""
    return expected_jitter(seed, key_name, epoch, record)[0]


class FailOnRecord(HostOperator):
    """Raises ``ValueError`` on ``record`` while the file ``flag_path`` exists; the identity otherwise.

    A file, not a module-level toggle, so worker processes see the test clear it.
    """

    def __init__(self, config: OperatorConfig, *, record: int, flag_path: str, name: str | None = None):
        super().__init__(config, name=name)
        self.record = record
        self.flag_path = flag_path

    def apply(self, element: dict[str, Any], rng: Any) -> dict[str, Any]:
        if int(element["label"]) == self.record and os.path.exists(self.flag_path):
            raise ValueError(f"cannot process this one (flag {os.path.basename(self.flag_path)})")
        return dict(element)


# -- pipelines -------------------------------------------------------------------


def jitter_op(stream_name: str = JITTER) -> HostMapOperator:
    return HostMapOperator(HostMapOperatorConfig(stochastic=True, stream_name=stream_name), fn=jitter)


def square_op() -> HostMapOperator:
    return HostMapOperator(HostMapOperatorConfig(), fn=label_squared)


def flip_op() -> RandomFlip:
    return RandomFlip(RandomFlipConfig(fields=("image",), axis=-2))


def build_pipeline(
    n: int = 23,
    batch_size: int = 5,
    *,
    source: HostSourceModule | None = None,
    host_stages: Any = None,
    stages: Any = None,
    num_epochs: int | None = 2,
    shuffle: bool = True,
    seed: int = SEED,
    **kwargs: Any,
) -> Pipeline:
    """A shuffled host pipeline: ``IndexSource(n)`` -> [square, jitter] on the host -> RandomFlip on the device."""
    return Pipeline(
        source=source if source is not None else IndexSource(StructuralConfig(), n=n),
        host_stages=[square_op(), jitter_op()] if host_stages is None else host_stages,
        stages=[flip_op()] if stages is None else stages,
        batch_size=batch_size,
        rngs=nnx.Rngs(seed),
        shuffle=shuffle,
        num_epochs=num_epochs,
        **kwargs,
    )

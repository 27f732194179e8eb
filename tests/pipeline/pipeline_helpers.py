"""Shared builders and checks for the pipeline tests (also imported by resume subprocesses).

Every source has a ``label`` column equal to the record index and an ``x`` column equal to
``label / 2``, so any row of any batch names the record it came from and shows whether its
values are that record's (padding rows included).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.core.operator import OperatorModule
from datarax.core.prng import record_keys
from datarax.operators import ElementOperator, ElementOperatorConfig
from datarax.sources import MemorySource, MemorySourceConfig

AUGMENT = "augment"


def make_source(n: int) -> MemorySource:
    """``n`` records: ``label`` = index (int32), ``x`` = index / 2 (float32)."""
    label = np.arange(n, dtype=np.int32)
    return MemorySource(MemorySourceConfig(), data={"label": label, "x": label.astype(np.float32) / 2})


def add_noise(element: dict[str, Any], key: jax.Array) -> dict[str, Any]:
    return {**element, "x": element["x"] + jax.random.uniform(key, ())}


def noise_op(stream_seed: int = 3) -> ElementOperator:
    """A stochastic operator adding ``uniform(record key)`` to ``x``."""
    return ElementOperator(
        ElementOperatorConfig(stochastic=True, stream_name=AUGMENT),
        fn=add_noise,
        rngs=nnx.Rngs(**{AUGMENT: stream_seed}),
    )


def expected_noise(op: OperatorModule, epoch: int, n: int) -> np.ndarray:
    """The draw the seed contract promises record ``r`` in ``epoch``: uniform(fold_in(fold_in(root, e), r))."""
    keys = record_keys(op.root_key(), epoch, jnp.arange(n))
    return np.asarray(jax.vmap(lambda k: jax.random.uniform(k, ()))(keys))


def build_resume_pipeline(n: int = 23, batch_size: int = 5, num_epochs: int | None = 2, **kwargs: Any) -> Pipeline:
    """The pipeline the resume tests (in-process and in a fresh process) rebuild identically."""
    kwargs.setdefault("shuffle", True)
    kwargs.setdefault("rngs", nnx.Rngs(11))
    stream_seed = kwargs.pop("stream_seed", 3)
    return Pipeline(
        source=make_source(n),
        stages=[noise_op(stream_seed)],
        batch_size=batch_size,
        num_epochs=num_epochs,
        **kwargs,
    )


def to_numpy(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in batch.items()}


def collect(iterator: Iterable[Mapping[str, Any]], limit: int | None = None) -> list[dict[str, np.ndarray]]:
    out = []
    for batch in iterator:
        out.append(to_numpy(batch))
        if limit is not None and len(out) == limit:
            break
    return out


def valid_labels(batches: Sequence[Mapping[str, Any]]) -> list[int]:
    """The ``label`` of every valid row, in stream order."""
    if not batches:
        return []
    return np.concatenate([np.asarray(b["label"])[np.asarray(b[VALID_MASK])] for b in batches]).tolist()


def checksum(batches: Iterable[Mapping[str, Any]]) -> str:
    """A digest of every key, dtype, shape and byte of a stream of batches."""
    digest = hashlib.sha256()
    count = 0
    for batch in batches:
        count += 1
        for key in sorted(batch):
            value = np.asarray(batch[key])
            digest.update(f"{key}:{value.dtype}:{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
    return f"{count}:{digest.hexdigest()}"


def assert_streams_equal(got: Sequence[Mapping[str, Any]], want: Sequence[Mapping[str, Any]]) -> None:
    """Bit-for-bit equality of two lists of batches."""
    assert len(got) == len(want), (len(got), len(want))
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert set(a) == set(b), (i, set(a), set(b))
        for key in a:
            x, y = np.asarray(a[key]), np.asarray(b[key])
            assert x.dtype == y.dtype and x.shape == y.shape, (i, key, x.dtype, y.dtype, x.shape, y.shape)
            assert x.tobytes() == y.tobytes(), (i, key, x, y)

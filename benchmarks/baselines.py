"""Hand-written loops the pipeline is measured against, and the PyTorch DataLoader peer.

Each ``make_*`` returns ``epoch(e) -> seconds``: one full epoch (``N // B``
batches), consumed like a training loop consumes batches (wait for batch
``t - 1`` when batch ``t`` arrives), so every system is timed the same way.

* **Tuned loops** (the reference): the epoch permutation is computed on the
  host with NumPy and each batch's int32 index vector is passed to one jitted
  gather + transform on the device-resident arrays. Several formulations of
  the transform are provided (``TUNED``); the benchmark runs them all and
  takes the fastest in that run as the reference, so the reference is the
  strongest loop we can write, not one we picked in advance.
* **Naive loop** (labelled as such): the permutation by
  ``jax.random.permutation`` and sliced inside the jit, the flip as a batched
  ``where`` over a flipped copy: what a person writes first.
* **numpy loop**: the same work in NumPy on the host.
* **PyTorch DataLoader** (if torch is installed): a map-style dataset whose
  ``__getitem__`` takes a whole index batch (a ``BatchSampler`` over a
  ``RandomSampler``, ``batch_size=None``), NumPy collation and transform,
  0 workers, and ``jax.device_put`` of every batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from datarax.core import threefry

Epoch = Callable[[int], float]


def consume(batches, start: float | None = None) -> float:
    """Seconds to consume an iterable of batches, waiting for each previous one.

    ``start``: a ``time.perf_counter()`` taken before the epoch's own set-up
    (its permutation), which is part of the epoch's time as it is for a
    pipeline (whose chunk of records is computed as its first batch is asked for).
    """
    start = time.perf_counter() if start is None else start
    previous = None
    for batch in batches:
        jax.block_until_ready(previous)
        previous = batch
    jax.block_until_ready(previous)
    return time.perf_counter() - start


def _chain(x, y, chain: int, target: str):
    for _ in range(chain):
        if target == "image":
            x = x * 1.0001 + 0.0001
        else:
            y = (y * 3 + 1) % 10
    return x, y


# -- tuned transforms: (images, labels, idx, key) -> batch ----------------------


def _tuned_select(flip: bool, chain: int, target: str):
    """Gather, then per-record coins from the batch key, a batched select behind an optimization barrier."""

    def step(images, labels, idx, key):
        x = images[idx]
        if flip:
            coins = jax.lax.optimization_barrier(jax.random.bernoulli(key, 0.5, (idx.shape[0],)))
            x = jnp.where(coins[:, None, None, None], x[:, :, ::-1], x)
        x, y = _chain(x.astype(jnp.float32) / 255.0, labels[idx], chain, target)
        return {"image": x, "label": y}

    return step


def _tuned_per_record(flip: bool, chain: int, target: str):
    """Per-record keys (``fold_in`` of the record index) and a per-element select, ``vmap``ped."""

    def step(images, labels, idx, key):
        def one(x, record):
            if flip:
                coin = jax.random.bernoulli(jax.random.fold_in(key, record))
                x = jnp.where(coin, x[:, ::-1], x)
            return x.astype(jnp.float32) / 255.0

        x = jax.vmap(one)(images[idx], idx.astype(jnp.uint32))
        x, y = _chain(x, labels[idx], chain, target)
        return {"image": x, "label": y}

    return step


def _tuned_column_index(flip: bool, chain: int, target: str):
    """The flip as a gather with a per-row column index (``take_along_axis``), coins behind a barrier."""

    def step(images, labels, idx, key):
        x = images[idx]
        if flip:
            width = x.shape[2]
            coins = jax.lax.optimization_barrier(jax.random.bernoulli(key, 0.5, (idx.shape[0],)))
            columns = jnp.where(coins[:, None], width - 1 - jnp.arange(width), jnp.arange(width))
            x = jnp.take_along_axis(x, columns[:, None, :, None], axis=2)
        x, y = _chain(x.astype(jnp.float32) / 255.0, labels[idx], chain, target)
        return {"image": x, "label": y}

    return step


def _tuned_per_record_barriers(flip: bool, chain: int, target: str):
    """``per-record`` with the coins and the index vector behind optimization barriers.

    XLA fuses the coin hash and the index arithmetic of a gather (``images[idx]``
    wraps negative indices) into the fused per-pixel loop and recomputes them
    for every pixel; the barriers make it compute them once per record.
    """

    def step(images, labels, idx, key):
        idx = jax.lax.optimization_barrier(idx)
        x = images.at[idx].get(mode="promise_in_bounds")
        if flip:
            coins = jax.vmap(lambda r: jax.random.bernoulli(jax.random.fold_in(key, r)))(idx.astype(jnp.uint32))
            coins = jax.lax.optimization_barrier(coins)
            x = jax.vmap(lambda image, coin: jnp.where(coin, image[:, ::-1], image))(x, coins)
        x, y = _chain(x.astype(jnp.float32) / 255.0, labels.at[idx].get(mode="promise_in_bounds"), chain, target)
        return {"image": x, "label": y}

    return step


def _tuned_unrolled_hash(flip: bool, chain: int, target: str):
    """``per-record + barriers`` with the coins hashed by an unrolled Threefry.

    On the CPU backend ``jax.random`` lowers its hash as a five-iteration
    ``while`` loop whose per-iteration overhead dominates for a batch's few
    hundred values; written out round by round (``datarax.core.threefry``,
    the same bits) XLA fuses it into one small kernel.
    """

    def step(images, labels, idx, key):
        idx = jax.lax.optimization_barrier(idx)
        x = images.at[idx].get(mode="promise_in_bounds")
        if flip:
            coins = jax.lax.optimization_barrier(threefry.bernoulli(threefry.fold_in(key, idx.astype(jnp.uint32))))
            x = jax.vmap(lambda image, coin: jnp.where(coin, image[:, ::-1], image))(x, coins)
        x, y = _chain(x.astype(jnp.float32) / 255.0, labels.at[idx].get(mode="promise_in_bounds"), chain, target)
        return {"image": x, "label": y}

    return step


def _tuned_host_coins(flip: bool, chain: int, target: str):
    """No hashing on the device: the coins are drawn on the host with the permutation and passed in."""

    def step(images, labels, idx, coins):
        idx = jax.lax.optimization_barrier(idx)
        x = images.at[idx].get(mode="promise_in_bounds")
        if flip:
            x = jax.vmap(lambda image, coin: jnp.where(coin, image[:, ::-1], image))(x, coins)
        x, y = _chain(x.astype(jnp.float32) / 255.0, labels.at[idx].get(mode="promise_in_bounds"), chain, target)
        return {"image": x, "label": y}

    return step


TUNED = {
    "select": _tuned_select,
    "per-record": _tuned_per_record,
    "per-record + barriers": _tuned_per_record_barriers,
    "column index": _tuned_column_index,
    "unrolled hash": _tuned_unrolled_hash,
    "host coins": _tuned_host_coins,
}


def make_tuned_loop(data, batch_size: int, *, variant: str, flip: bool, chain: int = 0, target: str = "image") -> Epoch:
    """A tuned loop: host permutation, one jitted gather + transform per batch."""
    images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
    n = images.shape[0]
    steps = n // batch_size
    step = jax.jit(TUNED[variant](flip, chain, target))
    key = jax.random.key(0)

    def epoch(e: int) -> float:
        start = time.perf_counter()
        rng = np.random.default_rng(e)
        order = rng.permutation(n).astype(np.int32)
        if variant == "host coins":
            coins = rng.random(n) < 0.5  # drawn with the permutation, sliced per batch like it
            return consume(
                (
                    step(
                        images,
                        labels,
                        order[t * batch_size : (t + 1) * batch_size],
                        coins[t * batch_size : (t + 1) * batch_size],
                    )
                    for t in range(steps)
                ),
                start,
            )
        epoch_key = jax.random.fold_in(key, e)
        return consume(
            (step(images, labels, order[t * batch_size : (t + 1) * batch_size], epoch_key) for t in range(steps)),
            start,
        )

    return epoch


def make_naive_loop(data, batch_size: int, *, flip: bool, chain: int = 0, target: str = "image") -> Epoch:
    """The loop a person writes first (labelled "naive" in every table)."""
    images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
    n = images.shape[0]
    steps = n // batch_size

    @jax.jit
    def step(images, labels, perm, t, key):
        idx = jax.lax.dynamic_slice_in_dim(perm, t * batch_size, batch_size)
        x = images[idx].astype(jnp.float32) / 255.0
        if flip:
            mask = jax.random.bernoulli(jax.random.fold_in(key, t), 0.5, (batch_size,))
            x = jnp.where(mask[:, None, None, None], x[:, :, ::-1], x)
        x, y = _chain(x, labels[idx], chain, target)
        return {"image": x, "label": y}

    permutation = jax.jit(jax.random.permutation, static_argnums=1)

    def epoch(e: int) -> float:
        start = time.perf_counter()
        key = jax.random.key(e)
        perm = permutation(key, n)
        return consume((step(images, labels, perm, t, key) for t in range(steps)), start)

    return epoch


def _numpy_transform(x, y, rng, *, flip: bool, chain: int, target: str):
    x = x.astype(np.float32) / np.float32(255.0)
    if flip:
        mask = rng.random(x.shape[0]) < 0.5
        x = np.where(mask[:, None, None, None], x[:, :, ::-1], x)
    for _ in range(chain):
        if target == "image":
            x = x * np.float32(1.0001) + np.float32(0.0001)
        else:
            y = (y * 3 + 1) % 10
    return x, y


def make_numpy_loop(data, batch_size: int, *, flip: bool, chain: int = 0, target: str = "image") -> Epoch:
    """The same work vectorised in NumPy on the host (no device transfer)."""
    images, labels = data["image"], data["label"]
    n = images.shape[0]
    steps = n // batch_size

    def batches(e: int):
        rng = np.random.default_rng(e)
        perm = rng.permutation(n)
        for t in range(steps):
            idx = perm[t * batch_size : (t + 1) * batch_size]
            x, y = _numpy_transform(images[idx], labels[idx], rng, flip=flip, chain=chain, target=target)
            yield {"image": x, "label": y}

    return lambda e: consume(batches(e))


def make_torch_loader(data, batch_size: int, *, flip: bool, chain: int = 0, target: str = "image") -> Epoch | None:
    """PyTorch's DataLoader with a batch sampler and NumPy collation, or None without torch."""
    try:
        import torch
        from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler
    except ImportError:
        return None
    images, labels = data["image"], data["label"]
    n = images.shape[0]

    class Batches(Dataset):
        def __init__(self):
            self.rng = np.random.default_rng(0)

        def __len__(self):
            return n

        def __getitem__(self, indices):
            idx = np.asarray(indices)
            x, y = _numpy_transform(images[idx], labels[idx], self.rng, flip=flip, chain=chain, target=target)
            return {"image": x, "label": y}

    def batches(e: int):
        generator = torch.Generator().manual_seed(e)
        sampler = BatchSampler(RandomSampler(range(n), generator=generator), batch_size, drop_last=True)
        loader = DataLoader(Batches(), sampler=sampler, batch_size=None, num_workers=0, collate_fn=lambda b: b)
        for batch in loader:
            yield jax.device_put(batch)

    return lambda e: consume(batches(e))


__all__ = ["TUNED", "consume", "make_naive_loop", "make_numpy_loop", "make_torch_loader", "make_tuned_loop"]

"""W1 feeding a real train step: what the data pipeline costs a training loop, and which prefetch.

Usage::

    python -m benchmarks.training_loop --repeats 7

``benchmarks.run`` times batches consumed by a loop that does nothing else; a training loop
runs a train step on every batch, on the same device (and here, the same two CPU cores). This
benchmark feeds W1 (shuffle, /255, random horizontal flip, batch 128; ``--records`` of them) to
an ``nnx.jit`` train step of a two-layer MLP (SGD, softmax cross-entropy) of width 16 (the data
pipeline dominates) and 256 (the model does), and times whole epochs of ``step(next(batch))``,
alternated round robin, medians of ``--repeats``:

* ``datarax (prefetch=0)`` and ``datarax (prefetch=2)``: the pipeline of ``benchmarks.run``;
* ``tuned: <variant>``: every tuned hand-written loop of ``benchmarks/baselines.py`` (host
  permutation, one jitted gather + normalise + flip per batch), feeding the same train step; the
  fastest of them in the run is the reference of the ratios;
* ``train step only``: the train step on one fixed batch: the floor no data loader goes below.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time

import jax
import numpy as np
import optax
from flax import nnx

from benchmarks.baselines import TUNED
from benchmarks.run import build_pipeline, make_data

BATCH = 128


class MLP(nnx.Module):
    """Flatten, dense ``width``, relu, dense 10."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(32 * 32 * 3, width, rngs=rngs)
        self.out = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1))))


def make_train_step(width: int):
    """A fresh model and optimizer, and the jitted step that trains them on one batch."""
    model = MLP(width, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch):
        def loss_fn(model):
            logits = model(batch["image"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return lambda batch: step(model, optimizer, batch)


def _epoch_of(batches, steps: int, train):
    def epoch() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            loss = train(next(batches))
        jax.block_until_ready(loss)
        return time.perf_counter() - start

    return epoch


def datarax_epoch(data, width: int, prefetch: int):
    pipeline = build_pipeline(data, BATCH, flip=True, prefetch=prefetch)
    return _epoch_of(iter(pipeline), len(pipeline), make_train_step(width))


def tuned_epoch(data, width: int, variant: str):
    images, labels = jax.device_put(data["image"]), jax.device_put(data["label"])
    n = images.shape[0]
    gather = jax.jit(TUNED[variant](True, 0, "image"))
    rng = np.random.default_rng(0)

    def batches():
        for epoch in itertools.count():  # one permutation (and its coins) per epoch, sliced per batch
            order = rng.permutation(n).astype(np.int32)
            if variant == "host coins":
                coins = rng.random(n) < 0.5
            else:
                epoch_key = jax.random.fold_in(jax.random.key(0), epoch)
            for t in range(n // BATCH):
                rows = slice(t * BATCH, (t + 1) * BATCH)
                yield gather(images, labels, order[rows], coins[rows] if variant == "host coins" else epoch_key)

    return _epoch_of(batches(), n // BATCH, make_train_step(width))


def step_only_epoch(data, width: int):
    pipeline = build_pipeline(data, BATCH, flip=True)
    fixed = next(iter(pipeline))
    return _epoch_of(iter(lambda: fixed, None), len(pipeline), make_train_step(width))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs per system (median)")
    parser.add_argument("--records", type=int, default=20_000, help="W1 records (an epoch is records // 128 steps)")
    args = parser.parse_args(argv)
    if args.repeats < 3 or args.records < BATCH:
        parser.error(f"--repeats must be at least 3 and --records at least {BATCH}")
    data = make_data(args.records, (32, 32, 3), seed=1)
    steps = args.records // BATCH
    print(f"machine: {platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}, jax {jax.__version__}")
    for width in (16, 256):
        systems = {
            "datarax (prefetch=0)": datarax_epoch(data, width, 0),
            "datarax (prefetch=2)": datarax_epoch(data, width, 2),
            **{f"tuned: {variant}": tuned_epoch(data, width, variant) for variant in TUNED},
            "train step only": step_only_epoch(data, width),
        }
        for epoch in systems.values():
            epoch()  # compile and warm up
        times = {name: [] for name in systems}
        for _ in range(args.repeats):
            for name, epoch in systems.items():
                times[name].append(epoch())
        median = {name: statistics.median(t) / steps for name, t in times.items()}
        fastest = min((name for name in median if name.startswith("tuned")), key=median.get)
        reference = median[fastest]
        print(
            f"\n**MLP width {width}** (W1, batch {BATCH}, {steps} steps per epoch, medians of {args.repeats}; "
            f"reference = {fastest})\n"
        )
        print("| system | µs per training step | ÷ reference |")
        print("| --- | --- | --- |")
        for name, seconds in sorted(median.items(), key=lambda item: item[1]):
            print(f"| {name} | {seconds * 1e6:,.0f} | {seconds / reference:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

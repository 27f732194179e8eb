"""Learned augmentation: train augmentation magnitudes by gradient descent through the pipeline.

The pipeline over the demo dataset (scikit-learn's 8x8 digits, ``datarax.cli.load_digits_arrays``)
converts each image to float and applies ``RandomBrightness`` and ``RandomContrast`` with
``learnable=True``: each magnitude ``m`` is an ``nnx.Param`` and every record gets the factor
``max(0, 1 + m u)`` with ``u`` uniform in ``[-1, 1]``. A small MLP classifier and the two
magnitudes are trained jointly with optax; every batch is computed by ``Pipeline.compute_batch``
inside the jitted train step, so ``nnx.value_and_grad`` differentiates the loss through the
pipeline's operators (``u`` is drawn independently of ``m``: the reparametrisation trick, so
``d image / d m = x u`` for brightness) and one gradient covers both the model and the magnitudes.

What is learned, and why this objective. Trained on the classification loss alone the magnitudes
would shrink to 0 (clean data is the easiest to classify), which learns nothing. So, in the spirit
of Augerino (Benton et al., "Learning Invariances in Neural Networks", 2020), the objective rewards
wide augmentation distributions::

    loss(model, m) = cross_entropy(model(augment_m(x)), y) - strength * sum_k log m_k

``log m_k`` is, up to a constant, the entropy of augmentation ``k``'s factor distribution (uniform
on ``[1 - m, 1 + m]``, of width ``2 m``), so this is the maximum-entropy augmentation the classifier
tolerates: the classifier learns to be invariant to the augmentation (its gradient is that of the
cross-entropy on augmented digits), and each magnitude settles where the marginal cost in
cross-entropy of a stronger augmentation, ``d cross_entropy / d m_k``, equals the marginal
entropy gain ``strength / m_k``. ``strength`` sets the trade-off. While the classifier is still
at chance its cross-entropy hardly depends on ``m`` and the reward drives the magnitudes up;
once it learns they fall back, then grow slowly again as it becomes invariant to them.

Magnitudes are kept in ``[MIN_MAGNITUDE, MAX_MAGNITUDE]`` by clipping after every update: above
0 so that ``log m`` is finite, at most 1 so that the factor stays uniform on ``[1 - m, 1 + m]``
(beyond 1 ``max(0, .)`` piles mass at 0, black images, and the entropy above no longer holds).

The last ``HELD_OUT`` digits are kept out of the training pipeline; the held-out accuracy of the
classifier on them (clean, not augmented) is printed with the progress.

Run from the repository root (a few seconds on a CPU)::

    python examples/learned_augmentation.py --steps 300
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Sequence
from numbers import Real
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from datarax import Pipeline
from datarax.cli import load_digits_arrays
from datarax.core.validation import int_in_range, positive_int
from datarax.operators import (
    MapOperator,
    MapOperatorConfig,
    RandomBrightness,
    RandomBrightnessConfig,
    RandomContrast,
    RandomContrastConfig,
)
from datarax.sources import MemorySource, MemorySourceConfig

HELD_OUT = 300  # the last digits, kept out of the training pipeline for the held-out accuracy
INITIAL_MAGNITUDE = 0.1
MIN_MAGNITUDE = 1e-3  # log m stays finite
MAX_MAGNITUDE = 1.0  # the factor max(0, 1 + m u) stays uniform on [1 - m, 1 + m]
AUGMENTS = ("brightness", "contrast")  # the learnable operators' names, in pipeline order

DEFAULTS = {
    "steps": 300,
    "batch_size": 64,
    "seed": 0,
    "lr": 3e-3,
    "aug_lr": 2e-2,
    "strength": 0.05,
}


@functools.cache
def digits() -> dict[str, np.ndarray]:
    """The demo dataset (``load_digits_arrays``), loaded once: the argument checks need its size."""
    return load_digits_arrays()


def to_unit_float(image: jax.Array) -> jax.Array:
    """uint8 ``0..255`` -> float32 ``[0, 1]``: gradients need a float image (uint8 has none)."""
    return image.astype(jnp.float32) / 255.0


def build_pipeline(data: dict[str, np.ndarray], batch_size: int, seed: int) -> Pipeline:
    """The training pipeline: float conversion, then learnable brightness and contrast.

    Args:
        data: ``image`` uint8 ``(N, 8, 8, 1)`` (channels-last, as image operators need) and
            ``label`` int32 ``(N,)``.
        batch_size: Rows per batch.
        seed: The pipeline's one seed (shuffle and augmentation draws).

    Returns:
        A shuffled pipeline that runs forever; every batch is full (``drop_remainder=True``).
    """
    to_float = MapOperator(MapOperatorConfig(subtree=("image",)), fn=to_unit_float)
    brightness = RandomBrightness(
        RandomBrightnessConfig(magnitude=INITIAL_MAGNITUDE, learnable=True), name="brightness"
    )
    contrast = RandomContrast(RandomContrastConfig(magnitude=INITIAL_MAGNITUDE, learnable=True), name="contrast")
    return Pipeline(
        source=MemorySource(MemorySourceConfig(), data=data),
        stages=[to_float, brightness, contrast],
        batch_size=batch_size,
        rngs=nnx.Rngs(seed),
        shuffle=True,
        drop_remainder=True,  # full batches only: the step's shapes never change
        num_epochs=None,
    )


def augment_nodes(pipeline: Pipeline) -> dict[str, str]:
    """Maps each learnable augmentation's name (``AUGMENTS``) to its node in ``pipeline.nodes``."""
    return {op.name: node for node, op in pipeline.nodes.items() if op.name in AUGMENTS}


def magnitudes(pipeline: Pipeline) -> dict[str, jax.Array]:
    """The current magnitude of each learnable augmentation, by name (traceable)."""
    return {name: pipeline.nodes[node].current_magnitude() for name, node in augment_nodes(pipeline).items()}


class Classifier(nnx.Module):
    """An MLP on the 64 pixels of an 8x8 digit: 64 -> hidden (ReLU) -> 10 logits."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.reshape(images.shape[0], -1)
        return self.out(nnx.relu(self.hidden(x)))


@nnx.jit
def train_step(
    model: Classifier,
    pipeline: Pipeline,
    model_optimizer: nnx.Optimizer,
    augment_optimizer: nnx.Optimizer,
    epoch: jax.Array,
    start: jax.Array,
    strength: jax.Array,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """One joint step on the batch at epoch position ``start``; returns (loss, cross-entropy, d ce / d m).

    The batch is computed here, inside the trace, so the gradient reaches the magnitudes.
    """
    nodes = augment_nodes(pipeline)

    def objective(model: Classifier, pipeline: Pipeline) -> tuple[jax.Array, jax.Array]:
        batch = pipeline.compute_batch(epoch, start)
        logits = model(batch["image"])
        per_record = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        # Every batch is full (drop_remainder), but weighting by valid_mask keeps the loss right
        # for any pipeline: padding rows are copies of the last record and must not count.
        weight = batch["valid_mask"].astype(jnp.float32)
        cross_entropy = jnp.sum(per_record * weight) / jnp.maximum(jnp.sum(weight), 1.0)
        entropy = sum(jnp.log(m) for m in magnitudes(pipeline).values())
        return cross_entropy - strength * entropy, cross_entropy

    before = magnitudes(pipeline)
    # argnums=(0, 1): gradients w.r.t. every nnx.Param of the model and of the pipeline (whose only
    # Params are the two magnitudes). The operators' counters, also updated by compute_batch,
    # are written back by nnx as well.
    (loss, cross_entropy), (model_grads, augment_grads) = nnx.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
        model, pipeline
    )
    # d loss / d m = d ce / d m - strength / m: recover the part that flowed through the pipeline.
    ce_grads = {
        name: augment_grads["nodes"][node]["magnitude"].get_value() + strength / before[name]
        for name, node in nodes.items()
    }
    model_optimizer.update(model, model_grads)
    augment_optimizer.update(pipeline, augment_grads)
    for node in nodes.values():
        op = pipeline.nodes[node]
        op.magnitude[...] = jnp.clip(op.magnitude[...], MIN_MAGNITUDE, MAX_MAGNITUDE)
    return loss, cross_entropy, ce_grads


@nnx.jit
def accuracy(model: Classifier, images: jax.Array, labels: jax.Array) -> jax.Array:
    """The fraction of ``images`` classified as ``labels``."""
    return jnp.mean(jnp.argmax(model(images), axis=-1) == labels)


def _positive_float(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner + ': ' if owner else ''}{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_arguments(owner: str, arguments: dict[str, Any], *, flags: bool = False) -> dict[str, Any]:
    """``arguments`` (``train``'s keywords) validated; errors name them as ``--flags`` if ``flags``.

    Raises:
        ValueError: If ``steps`` or ``batch_size`` is not a positive int, ``batch_size`` exceeds
            the training records, ``seed`` is not an int in ``[0, 2**32)``, ``log_every`` is not
            None or a positive int, or ``lr``, ``aug_lr`` or ``strength`` is not a positive
            finite number. The message names the argument and the value.
    """

    def named(arg: str) -> str:
        return "--" + arg.replace("_", "-") if flags else arg

    checked = dict(arguments)
    for arg in ("steps", "batch_size"):
        checked[arg] = positive_int(owner, named(arg), arguments[arg])
    num_train = len(digits()["label"]) - HELD_OUT
    if checked["batch_size"] > num_train:
        raise ValueError(
            f"{owner + ': ' if owner else ''}{named('batch_size')} must be at most the {num_train} training "
            f"records, got {checked['batch_size']}"
        )
    # nnx.Rngs takes the seed modulo 2**32: a larger one would silently repeat a smaller one's stream.
    checked["seed"] = int_in_range(
        owner, named("seed"), arguments["seed"], low=0, high=2**32, what="an int in [0, 2**32)"
    )
    if arguments.get("log_every") is not None:
        checked["log_every"] = positive_int(owner, named("log_every"), arguments["log_every"])
    for arg in ("lr", "aug_lr", "strength"):
        checked[arg] = _positive_float(owner, named(arg), arguments[arg])
    return checked


def train(
    *,
    steps: int = DEFAULTS["steps"],
    batch_size: int = DEFAULTS["batch_size"],
    seed: int = DEFAULTS["seed"],
    lr: float = DEFAULTS["lr"],
    aug_lr: float = DEFAULTS["aug_lr"],
    strength: float = DEFAULTS["strength"],
    log_every: int | None = None,
) -> dict[str, Any]:
    """Trains the classifier and the augmentation magnitudes jointly; prints progress.

    Args:
        steps: Train steps (one batch each).
        batch_size: Rows per batch, at most the training records (1,497).
        seed: Seeds the pipeline (shuffle and augmentation draws) and the classifier's init.
        lr: Adam learning rate of the classifier.
        aug_lr: Adam learning rate of the magnitudes.
        strength: Weight of the entropy reward ``sum_k log m_k`` (see the module docstring).
        log_every: Print a progress line every this many steps (None: about ten lines in all).

    Returns:
        ``losses`` and ``cross_entropies`` (one float per step), ``ce_grads`` (per augmentation,
        ``d cross_entropy / d m`` at every step: what reached the magnitude through the pipeline),
        ``initial_magnitudes`` and ``final_magnitudes`` (by augmentation name), ``accuracy`` (held
        out, at the end), ``initial_accuracy`` and ``seconds`` (the training loop, compilation included).

    Raises:
        ValueError: For a bad argument (see ``check_arguments``).
    """
    arguments = dict(
        steps=steps, batch_size=batch_size, seed=seed, lr=lr, aug_lr=aug_lr, strength=strength, log_every=log_every
    )
    args = check_arguments("train", arguments)
    steps, batch_size, seed = args["steps"], args["batch_size"], args["seed"]
    log_every = args["log_every"] or max(1, steps // 10)

    data = digits()
    images = data["image"][..., None]  # (N, 8, 8) -> (N, 8, 8, 1): image operators are channels-last
    train_data = {"image": images[:-HELD_OUT], "label": data["label"][:-HELD_OUT]}
    held_out_images = jnp.asarray(to_unit_float(images[-HELD_OUT:]))
    held_out_labels = jnp.asarray(data["label"][-HELD_OUT:])

    pipeline = build_pipeline(train_data, batch_size, seed)
    # The classifier's init gets a seed of its own, next to the pipeline's (all 32-bit).
    model = Classifier(128, rngs=nnx.Rngs(params=(seed + 1) % 2**32))
    model_optimizer = nnx.Optimizer(model, optax.adam(args["lr"]), wrt=nnx.Param)
    # The pipeline's only nnx.Params are the magnitudes: this optimizer updates exactly them.
    augment_optimizer = nnx.Optimizer(pipeline, optax.adam(args["aug_lr"]), wrt=nnx.Param)

    initial = {name: float(m) for name, m in magnitudes(pipeline).items()}
    initial_accuracy = float(accuracy(model, held_out_images, held_out_labels))
    print(
        f"learned augmentation: {len(train_data['label'])} training digits, {HELD_OUT} held out; "
        f"batch {batch_size}, {pipeline.batches_per_epoch} batches per epoch, strength {args['strength']}"
    )
    print(f"initial magnitudes {_fmt(initial)}, held-out accuracy {initial_accuracy:.3f}")

    strength_array = jnp.float32(args["strength"])
    losses, cross_entropies, ce_grads = [], [], []
    began = time.perf_counter()
    for step in range(steps):
        epoch, batch = divmod(step, pipeline.batches_per_epoch)
        # Traced int32 scalars: one compilation for every position of every epoch.
        loss, cross_entropy, grads = train_step(
            model,
            pipeline,
            model_optimizer,
            augment_optimizer,
            jnp.int32(epoch),
            jnp.int32(batch * batch_size),
            strength_array,
        )
        losses.append(loss)
        cross_entropies.append(cross_entropy)
        ce_grads.append(grads)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            now = {name: float(m) for name, m in magnitudes(pipeline).items()}
            held_out = float(accuracy(model, held_out_images, held_out_labels))
            print(
                f"step {step + 1:5d}  loss {float(loss):7.4f}  cross-entropy {float(cross_entropy):.4f}  "
                f"magnitudes {_fmt(now)}  held-out accuracy {held_out:.3f}"
            )
    seconds = time.perf_counter() - began

    final = {name: float(m) for name, m in magnitudes(pipeline).items()}
    final_accuracy = float(accuracy(model, held_out_images, held_out_labels))
    print(f"{steps} steps in {seconds:.1f} s: magnitudes {_fmt(initial)} -> {_fmt(final)}")
    ce_grads = jax.device_get(ce_grads)
    return {
        "losses": [float(x) for x in jax.device_get(losses)],
        "cross_entropies": [float(x) for x in jax.device_get(cross_entropies)],
        "ce_grads": {name: [float(g[name]) for g in ce_grads] for name in AUGMENTS},
        "initial_magnitudes": initial,
        "final_magnitudes": final,
        "initial_accuracy": initial_accuracy,
        "accuracy": final_accuracy,
        "seconds": seconds,
    }


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.3f}" for name, value in values.items())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: parses ``argv`` (default ``sys.argv[1:]``), trains, returns ``train``'s results."""
    parser = argparse.ArgumentParser(
        prog="learned_augmentation.py",
        description="Learn brightness and contrast magnitudes by gradient descent through a datarax pipeline.",
    )
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="train steps")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="rows per batch")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed of the pipeline and the model")
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="classifier learning rate (Adam)")
    parser.add_argument("--aug-lr", type=float, default=DEFAULTS["aug_lr"], help="magnitudes' learning rate (Adam)")
    parser.add_argument(
        "--strength", type=float, default=DEFAULTS["strength"], help="weight of the entropy reward sum log m"
    )
    parser.add_argument("--log-every", type=int, default=None, help="steps between progress lines")
    args = parser.parse_args(argv)
    arguments = {name: getattr(args, name) for name in (*DEFAULTS, "log_every")}
    try:
        check_arguments("", arguments, flags=True)
    except ValueError as error:
        parser.error(str(error))  # exits with status 2 and the usage
    return train(**arguments)


if __name__ == "__main__":
    main()

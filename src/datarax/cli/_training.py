"""What ``datarax demo`` trains: the digits pipeline, the classifier, the jitted step, the epoch loop.

Kept apart from ``datarax.cli.demo`` (the command: options, output, the fresh process) so that
``datarax --help`` and ``datarax demo --help`` answer without importing JAX, Flax or optax.

**Why the resumed run is bit-identical.** Everything a training step computes depends only on
what the checkpoint holds: the model's parameters, the optimizer's state (Adam's moments and step
count) and the iterator's position, which fixes the next batch's records and their augmentation
keys (``(seed, epoch, record)``). Every batch has the same shape (the last one of an epoch is
padded and its padding rows weigh 0 in the loss, through ``valid_mask``) and the parameters are
committed to the device in both processes (as restored arrays are), so the parent and the fresh
process each compile the same XLA program exactly once, and XLA:CPU runs a given program
deterministically. Nothing draws from a stateful random generator and nothing depends on time.

Example:
    >>> import numpy as np
    >>> train, test_images, test_labels = split_digits(
    ...     {"image": np.zeros((10, 8, 8), np.uint8), "label": np.arange(10, dtype=np.int32)}, held_out=3
    ... )
    >>> train["image"].shape, test_images.shape, test_labels.tolist()
    ((7, 8, 8, 1), (3, 8, 8, 1), [7, 8, 9])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from datarax.operators import (
    MapOperator,
    MapOperatorConfig,
    RandomBrightness,
    RandomBrightnessConfig,
    RandomCrop,
    RandomCropConfig,
)
from datarax.pipeline import Pipeline
from datarax.sources import MemorySource, MemorySourceConfig

LEARNING_RATE = 1e-2
"""Adam's initial learning rate, decayed to 0 over the run (cosine): 5 epochs of batch 32 reach ~0.95
held-out accuracy."""


def split_digits(data: dict[str, np.ndarray], held_out: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Channels-last images; the last ``held_out`` digits kept out of training.

    Args:
        data: ``image`` uint8 ``(N, 8, 8)`` and ``label`` int32 ``(N,)``.
        held_out: How many of the last digits form the test split.

    Returns:
        ``(train, test_images, test_labels)``: the training columns (``image`` ``(N - held_out, 8, 8, 1)``),
        and the held-out uint8 images and labels.
    """
    images = data["image"][..., None]  # (H, W, C): what the image operators take
    cut = len(images) - held_out
    return {"image": images[:cut], "label": data["label"][:cut]}, images[cut:], data["label"][cut:]


def to_unit_float(image: jax.Array) -> jax.Array:
    """uint8 ``0..255`` -> float32 ``[0, 1]``."""
    return image.astype(jnp.float32) / 255.0


def build_pipeline(train: dict[str, np.ndarray], batch_size: int, num_epochs: int, seed: int) -> Pipeline:
    """The training stream: shuffled every epoch, float conversion, a one-pixel random crop, brightness.

    Built the same way in the parent and in the fresh process, so the iterator state of one fits
    the other (the pipeline checks its fingerprint). The last batch of an epoch is padded, not
    dropped: every digit is seen every epoch and every batch has the same shape.
    """
    return Pipeline(
        source=MemorySource(MemorySourceConfig(), data=train),
        stages=[
            MapOperator(MapOperatorConfig(subtree=("image",)), fn=to_unit_float),
            # Pad by one pixel and crop 8x8 back: a shift of up to one pixel, zeros shifted in.
            RandomCrop(RandomCropConfig(size=8, padding=1)),
            RandomBrightness(RandomBrightnessConfig(magnitude=0.2)),
        ],
        batch_size=batch_size,
        rngs=nnx.Rngs(seed),  # the shuffle's and every augmentation's one seed
        shuffle=True,
        drop_remainder=False,
        num_epochs=num_epochs,
    )


class DigitsClassifier(nnx.Module):
    """Two 3x3 convolutions, 2x2 average pooling, a hidden layer: 8x8x1 digits -> 10 logits."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
        self.hidden = nnx.Linear(4 * 4 * 32, 64, rngs=rngs)
        self.out = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(images))))
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
        return self.out(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))


def build_model(seed: int, total_steps: int) -> tuple[DigitsClassifier, nnx.Optimizer]:
    """The classifier (initialised from ``seed``) and its Adam optimizer, cosine-decayed over ``total_steps``.

    The schedule reads the optimizer's step count, part of its checkpointed state.
    """

    def create() -> tuple[DigitsClassifier, nnx.Optimizer]:
        # XLA's RngBitGenerator ("rbg") rather than Threefry: the same values in every process of
        # this JAX, and the initialiser compiles in a third of the time on a CPU.
        model = DigitsClassifier(rngs=nnx.Rngs(jax.random.key(seed, impl="rbg")))
        schedule = optax.cosine_decay_schedule(LEARNING_RATE, total_steps)
        return model, nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)

    # One compiled initialiser instead of a compilation per eager operation (seconds on a CPU).
    model, optimizer = nnx.jit(create)()
    # Committed to the device, as a restored checkpoint's arrays are: jit then compiles the train
    # step for the same input placement in the first process and in the resumed one.
    state = nnx.state((model, optimizer))
    nnx.update((model, optimizer), jax.device_put(state, jax.devices()[0]))
    return model, optimizer


def parameter_count(model: nnx.Module) -> int:
    """The number of scalars in the model's ``nnx.Param``s."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


@nnx.jit
def train_step(model: DigitsClassifier, optimizer: nnx.Optimizer, batch: dict[str, jax.Array]) -> jax.Array:
    """One Adam step on a batch; returns the loss (mean cross-entropy over the valid rows)."""

    def loss_fn(model: DigitsClassifier) -> jax.Array:
        per_record = optax.softmax_cross_entropy_with_integer_labels(model(batch["image"]), batch["label"])
        # Padding rows (the end of an epoch) are copies of a real digit: they must not count.
        weight = batch["valid_mask"].astype(jnp.float32)
        return jnp.sum(per_record * weight) / jnp.maximum(jnp.sum(weight), 1.0)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model: DigitsClassifier, images: jax.Array, labels: jax.Array) -> jax.Array:
    """The fraction of uint8 ``images`` the model classifies as ``labels`` (clean, not augmented)."""
    return jnp.mean(jnp.argmax(model(to_unit_float(images)), axis=-1) == labels)


def compile_steps(
    train: dict[str, np.ndarray], batch_size: int, num_epochs: int, seed: int, model: Any, optimizer: Any
) -> float:
    """Compiles the pipeline's step and the train step before the clocks of the progress bars start.

    A throwaway pipeline built the same way compiles the data step (the real one reuses it:
    ``Pipeline.program``) and gives a real batch, on which the train step runs once with copies
    of the model and optimizer, so the real ones are untouched. Returns the seconds it took.
    """
    start = time.perf_counter()
    batch = next(iter(build_pipeline(train, batch_size, num_epochs, seed)))
    jax.block_until_ready(train_step(nnx.clone(model), nnx.clone(optimizer), batch))
    return time.perf_counter() - start


def flat_arrays(**objects: Any) -> dict[str, np.ndarray]:
    """Every array of the given NNX objects' states as numpy, keyed ``name/attribute/...``."""
    flat = {}
    for name, obj in objects.items():
        leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(obj).to_pure_dict())
        for path, leaf in leaves:
            key = "/".join([name, *(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)])
            flat[key] = np.asarray(jax.device_get(leaf))
    return flat


class ThroughputColumn(ProgressColumn):
    """Batches/s and elements/s of the epoch so far (elements: valid rows, padding not counted)."""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        done = task.completed - task.fields["first"]
        if not elapsed or done <= 0:
            return Text("- batches/s", style="progress.data.speed")
        rate = done / elapsed
        return Text(f"{rate:,.0f} batches/s {task.fields['elements'] / elapsed:,.0f} el/s", style="progress.data.speed")


def epoch_progress(console: Console) -> Progress:
    """One epoch's bar: description, bar, batches, last loss, throughput, ETA."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=10),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        ThroughputColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def run_epochs(
    iterator: Any,
    model: Any,
    optimizer: Any,
    *,
    console: Console,
    num_epochs: int,
    batches_per_epoch: int,
    num_records: int,
    batch_size: int,
    before_step: Callable[[int], None] | None = None,
    label: str = "epoch",
) -> tuple[list[jax.Array], float, int]:
    """Trains until ``iterator`` is exhausted, one progress bar per epoch (a resumed epoch starts part-way).

    Args:
        iterator: The pipeline's iterator (fresh, or restored from a checkpoint).
        model: The classifier, updated in place.
        optimizer: Its optimizer, updated in place.
        console: Where the bars go.
        num_epochs: The run's epochs (for the bars' labels).
        batches_per_epoch: Batches in one epoch.
        num_records: Records in one epoch (for the elements counted).
        batch_size: Rows per batch.
        before_step: Called with the global step (batches served since the start of the run)
            before each step, e.g. to checkpoint.
        label: The bars' label.

    Returns:
        ``(losses, seconds, elements)``: one loss per step (device scalars), the time the steps
        took and the valid rows they trained on.
    """
    losses: list[jax.Array] = []
    seconds, elements = 0.0, 0
    while not iterator.exhausted:
        epoch, first = iterator.epoch, iterator.position // batch_size
        with epoch_progress(console) as progress:
            task = progress.add_task(
                f"{label} {epoch + 1}/{num_epochs}",
                total=batches_per_epoch,
                completed=first,
                first=first,
                loss="-",
                elements=0,
            )
            start, rows = time.perf_counter(), 0
            for index in range(first, batches_per_epoch):
                if before_step is not None:
                    before_step(epoch * batches_per_epoch + index)
                losses.append(train_step(model, optimizer, next(iterator)))
                rows += min(batch_size, num_records - index * batch_size)
                # Show the previous step's loss: reading it waits for that step only, while this one runs.
                shown = losses[-2] if index > first else losses[-1]
                progress.update(task, advance=1, loss=f"{float(shown):.4f}", elements=rows)
            jax.block_until_ready(losses[-1])
            seconds += time.perf_counter() - start
            elements += rows
            progress.update(task, loss=f"{float(losses[-1]):.4f}")
    return losses, seconds, elements


__all__ = [
    "LEARNING_RATE",
    "DigitsClassifier",
    "accuracy",
    "build_model",
    "build_pipeline",
    "compile_steps",
    "flat_arrays",
    "parameter_count",
    "run_epochs",
    "split_digits",
    "train_step",
]

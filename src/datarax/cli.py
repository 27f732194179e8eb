"""The ``datarax`` command line: ``datarax demo``.

The demo shows the source and batcher, then runs a shuffled, augmented
pipeline (two epochs by default) with a progress bar, checkpoints it half-way
through the run with Orbax and checks that a pipeline built anew resumes the
exact stream. The checkpoint is taken after ``total // 2`` batches, so every
run length has one, down to a single batch (checkpointed before it).

The demo uses a small real dataset that ships inside an installed package
(scikit-learn's 8x8 handwritten digits, the ``demo`` extra), so it runs on a
machine with no network.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from datarax.core.validation import positive_int


def load_digits_arrays() -> dict[str, np.ndarray]:
    """The 1,797 8x8 digits bundled with scikit-learn, as uint8 images and int32 labels.

    Raises:
        SystemExit: If scikit-learn (the ``demo`` extra) is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "datarax demo needs scikit-learn for its bundled dataset: pip install 'datarax[demo]'"
        ) from error
    digits = load_digits()
    # Pixel intensities are 0..16; scale to the 0..255 range of real image data.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return {"image": images, "label": digits.target.astype(np.int32)}


def _normalize(element, key):
    return {**element, "image": element["image"].astype(jnp.float32) / 255.0}


def _random_shift(element, key):
    # Shift each digit by up to one pixel in each direction: a label-preserving augmentation.
    dy, dx = jax.random.randint(key, (2,), -1, 2)
    return {**element, "image": jnp.roll(element["image"], (dy, dx), axis=(0, 1))}


def build_demo_pipeline(data: dict[str, np.ndarray], batch_size: int, num_epochs: int):
    """The demo's pipeline: shuffle, normalise, random shift; built the same way every time."""
    from flax import nnx

    from datarax.operators import ElementOperator, ElementOperatorConfig
    from datarax.pipeline import Pipeline
    from datarax.sources import MemorySource, MemorySourceConfig

    source = MemorySource(MemorySourceConfig(), data=data)
    normalize = ElementOperator(ElementOperatorConfig(), fn=_normalize)
    # No rngs of its own: the shift draws per-record keys from the pipeline's one seed.
    shift = ElementOperator(ElementOperatorConfig(stochastic=True, stream_name="augment"), fn=_random_shift)
    return Pipeline(
        source=source,
        stages=[normalize, shift],
        batch_size=batch_size,
        rngs=nnx.Rngs(0),
        shuffle=True,
        num_epochs=num_epochs,
    )


def run_demo(
    num_batches: int = 3,
    batch_size: int = 64,
    num_epochs: int = 2,
    data: dict[str, np.ndarray] | None = None,
) -> bool:
    """Runs the demo; returns True when the resumed stream matched.

    1. Shows the dataset's ``element_spec`` and a few batches through ``DefaultBatcher``.
    2. Runs a shuffled, augmented ``Pipeline`` for ``num_epochs`` epochs with a
       progress bar, checking every epoch is an exact permutation, and saves the
       iterator state half-way through the run with Orbax.
    3. Restores that checkpoint into a pipeline built anew and checks that the
       resumed batches match the original ones bit for bit.

    Args:
        num_batches: Batches shown in the ``DefaultBatcher`` table.
        batch_size: Rows per batch, at most the number of records.
        num_epochs: Epochs of the pipeline run.
        data: The dataset (default: ``load_digits_arrays()``).

    Raises:
        ValueError: If an argument is not a positive int, or ``batch_size`` is
            larger than the dataset.
    """
    import tempfile

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from datarax.batching import DefaultBatcher, DefaultBatcherConfig
    from datarax.checkpoint import OrbaxCheckpointHandler
    from datarax.core.spec import spec_to_str
    from datarax.sources import MemorySource, MemorySourceConfig

    data = load_digits_arrays() if data is None else dict(data)
    num_records = len(data["label"])
    for name, value in (("num_batches", num_batches), ("batch_size", batch_size), ("num_epochs", num_epochs)):
        positive_int("run_demo", name, value)
    if batch_size > num_records:
        raise ValueError(
            f"run_demo: batch_size must be at most the {num_records} records of the dataset, got {batch_size}"
        )
    console = Console()
    data["index"] = np.arange(len(data["label"]), dtype=np.int32)  # to check exact epochs
    source = MemorySource(MemorySourceConfig(), data=data)
    batcher = DefaultBatcher(DefaultBatcherConfig())
    console.print(f"[bold]MemorySource[/bold] over scikit-learn digits: {len(source)} records")
    console.print(f"element_spec: {spec_to_str(source.element_spec())}")
    table = Table(title=f"First {num_batches} batches through DefaultBatcher (batch {batch_size})")
    for column in ("batch", "image", "first labels", "valid rows"):
        table.add_column(column)
    for i, batch in enumerate(batcher(iter(source), batch_size=batch_size)):
        if i == num_batches:
            break
        labels = batch["label"].tolist()
        table.add_row(str(i), spec_to_str(batch["image"]), str(labels[:8]), str(int(batch["valid_mask"].sum())))
    console.print(table)

    pipeline = build_demo_pipeline(data, batch_size, num_epochs)
    console.print(f"[bold]Pipeline[/bold] batch_spec: {spec_to_str(pipeline.batch_spec())}")
    total = num_epochs * len(pipeline)
    # Batches served before the checkpoint: half-way, so that a run of any length
    # (one epoch, or a single batch) has batches left to compare after it.
    checkpoint_at = total // 2
    seen: dict[int, list[np.ndarray]] = {}
    after_checkpoint: list[dict[str, np.ndarray]] = []
    with tempfile.TemporaryDirectory() as directory, OrbaxCheckpointHandler(directory) as checkpoints:
        iterator = iter(pipeline)
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task("shuffled, augmented epochs", total=total)
            for step in range(total):
                if step == checkpoint_at:
                    checkpoints.save(step, iterator)
                    checkpoints.wait_until_finished()
                epoch = iterator.epoch
                batch = jax.device_get(next(iterator))
                seen.setdefault(epoch, []).append(batch["index"][batch["valid_mask"]])
                if step >= checkpoint_at:
                    after_checkpoint.append(batch)
                progress.advance(task)
        all_exact = True
        for epoch, indices in seen.items():
            served = np.sort(np.concatenate(indices))
            exact = bool(np.array_equal(served, data["index"]))
            all_exact &= exact
            console.print(f"epoch {epoch}: {len(served)} records, each exactly once: {exact}")

        resumed = iter(build_demo_pipeline(data, batch_size, num_epochs))
        step = checkpoints.restore(resumed)
        state = resumed.get_state()
        console.print(
            f"restored step {step}: epoch {state['epoch']}, position {state['position']} "
            f"({len(str(state))} bytes of state)"
        )
        matches = [
            all(np.array_equal(a[k], np.asarray(b[k])) for k in a)
            for a, b in zip(after_checkpoint, resumed, strict=True)
        ]
    ok = all_exact and all(matches) and len(matches) == len(after_checkpoint) > 0
    colour = "green" if ok else "red"
    console.print(
        f"[{colour}]resumed batches match the original stream: {ok} ({len(matches)} batches compared)[/{colour}]"
    )
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``datarax`` console script."""
    parser = argparse.ArgumentParser(prog="datarax", description="JAX-native data pipelines.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the demo on a bundled dataset")
    demo.add_argument("--batches", type=int, default=3, help="number of batches to show")
    demo.add_argument("--batch-size", type=int, default=64, help="batch size")
    demo.add_argument("--epochs", type=int, default=2, help="epochs of the pipeline run")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if min(args.batches, args.batch_size, args.epochs) <= 0:
            parser.error(
                f"--batches, --batch-size and --epochs must be positive, "
                f"got {args.batches}, {args.batch_size}, {args.epochs}"
            )
        data = load_digits_arrays()
        num_records = len(data["label"])
        if args.batch_size > num_records:
            parser.error(f"--batch-size must be at most {num_records} (the dataset's records), got {args.batch_size}")
        ok = run_demo(num_batches=args.batches, batch_size=args.batch_size, num_epochs=args.epochs, data=data)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

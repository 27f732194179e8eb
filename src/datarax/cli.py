"""The ``datarax`` command line: ``datarax demo``.

The demo shows the source and batcher, then runs a shuffled, augmented
pipeline for two epochs with a progress bar, checkpoints it mid-epoch with
Orbax and checks that a pipeline built anew resumes the exact stream.

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
    shift = ElementOperator(
        ElementOperatorConfig(stochastic=True, stream_name="augment"),
        fn=_random_shift,
        rngs=nnx.Rngs(augment=1),
    )
    return Pipeline(
        source=source,
        stages=[normalize, shift],
        batch_size=batch_size,
        rngs=nnx.Rngs(shuffle=0),
        shuffle=True,
        num_epochs=num_epochs,
    )


def run_demo(num_batches: int = 3, batch_size: int = 64, num_epochs: int = 2) -> bool:
    """Runs the demo; returns True when the resumed stream matched.

    1. Shows the dataset's ``element_spec`` and a few batches through ``DefaultBatcher``.
    2. Runs a shuffled, augmented ``Pipeline`` for ``num_epochs`` epochs with a
       progress bar, checking every epoch is an exact permutation, and saves the
       iterator state mid-epoch with Orbax.
    3. Restores that checkpoint into a pipeline built anew and checks that the
       resumed batches match the original ones bit for bit.
    """
    import tempfile

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from datarax.batching import DefaultBatcher, DefaultBatcherConfig
    from datarax.checkpoint import OrbaxCheckpointHandler
    from datarax.core.spec import spec_to_str
    from datarax.sources import MemorySource, MemorySourceConfig

    console = Console()
    data = load_digits_arrays()
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
    checkpoint_at = len(pipeline) + len(pipeline) // 2  # the middle of the second epoch
    seen: dict[int, list[np.ndarray]] = {}
    after_checkpoint: list[dict[str, np.ndarray]] = []
    with tempfile.TemporaryDirectory() as directory, OrbaxCheckpointHandler(directory) as checkpoints:
        iterator = iter(pipeline)
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task("shuffled, augmented epochs", total=num_epochs * len(pipeline))
            for step in range(num_epochs * len(pipeline)):
                epoch = iterator.epoch
                batch = jax.device_get(next(iterator))
                seen.setdefault(epoch, []).append(batch["index"][batch["valid_mask"]])
                if step + 1 == checkpoint_at:
                    checkpoints.save(step + 1, iterator)
                    checkpoints.wait_until_finished()
                elif step + 1 > checkpoint_at:
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
    ok = all_exact and all(matches) and len(matches) == len(after_checkpoint)
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
        ok = run_demo(num_batches=args.batches, batch_size=args.batch_size, num_epochs=args.epochs)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``datarax`` command line: ``datarax demo``.

The demo uses a small real dataset that ships inside an installed package
(scikit-learn's 8x8 handwritten digits, the ``demo`` extra), so it runs on a
machine with no network.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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


def run_demo(num_batches: int = 3, batch_size: int = 8) -> None:
    """Builds a MemorySource over the digits and prints specs and a few batches."""
    from rich.console import Console
    from rich.table import Table

    from datarax.batching import DefaultBatcher, DefaultBatcherConfig
    from datarax.core.spec import spec_to_str
    from datarax.sources import MemorySource, MemorySourceConfig

    console = Console()
    source = MemorySource(MemorySourceConfig(), data=load_digits_arrays())
    batcher = DefaultBatcher(DefaultBatcherConfig())
    console.print(f"[bold]MemorySource[/bold] over scikit-learn digits: {len(source)} records")
    console.print(f"element_spec: {spec_to_str(source.element_spec())}")
    console.print(
        f"batch_spec:   {spec_to_str(batcher.batch_spec(source.element_spec(), batch_size=batch_size))}"
    )
    table = Table(title=f"First {num_batches} batches through DefaultBatcher")
    for column in ("batch", "image", "labels", "valid rows", "mean pixel"):
        table.add_column(column)
    for i, batch in enumerate(batcher(iter(source), batch_size=batch_size)):
        if i == num_batches:
            break
        table.add_row(
            str(i),
            spec_to_str(batch["image"]),
            str(batch["label"].tolist()),
            str(int(batch["valid_mask"].sum())),
            f"{float(batch['image'].mean()):.1f}",
        )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``datarax`` console script."""
    parser = argparse.ArgumentParser(prog="datarax", description="JAX-native data pipelines.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the demo on a bundled dataset")
    demo.add_argument("--batches", type=int, default=3, help="number of batches to show")
    demo.add_argument("--batch-size", type=int, default=8, help="batch size")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.batches <= 0 or args.batch_size <= 0:
            parser.error(f"--batches and --batch-size must be positive, got {args.batches}, {args.batch_size}")
        run_demo(num_batches=args.batches, batch_size=args.batch_size)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

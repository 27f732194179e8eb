"""``datarax demo``: train a classifier through a datarax pipeline, crash, resume bit for bit.

The demo trains a small Flax NNX convolutional classifier with optax (Adam) on scikit-learn's
8x8 handwritten digits (1,797 images bundled with scikit-learn, so no network is needed; the
``demo`` extra). The last 297 digits are held out; the other 1,500 stream through a datarax
``Pipeline`` that shuffles them every epoch (Feistel), converts them to float and augments each
record with its own key: a random crop of the image padded by one pixel (a shift of up to one
pixel) and a random brightness. Each epoch has a live progress bar with the loss, the throughput
(batches/s and elements/s) and the time left; the held-out accuracy is printed at the end.

**The resume check.** Half-way through the run (after ``total_steps // 2`` steps, so that every
run length has one, down to a single step) the model, the optimizer and the data iterator are
saved together in one atomic Orbax step (``OrbaxCheckpointHandler``) under ``--workdir``. The
run goes on to the end: it is the uninterrupted reference. Then the demo simulates a crash at
the checkpoint: a fresh Python process (``python -m datarax.cli demo --resume-from WORKDIR``,
a hidden option) builds the pipeline, a differently initialised model and the optimizer anew,
restores all three from the checkpoint, trains to the end and writes its losses and final
arrays to ``WORKDIR/resumed.npz``. The demo compares them with the reference bit for bit
(dtype, shape and bytes of every loss, parameter and optimizer array), prints a verdict line and
exits 1 if anything differs. Why they can be equal is explained in ``datarax.cli._training``.

Options are checked before anything runs; a bad one is a ``ValueError`` naming the option, the
value and what was expected, which ``datarax.cli.main`` prints as one line (exit status 2).

Example:
    >>> checkpoint_step(total_steps=235)
    117
    >>> check_options(epochs=2, batch_size=64, seed=0, num_train=1500)
    (2, 64, 0)
    >>> check_options(epochs=0, batch_size=64, seed=0, num_train=1500)
    Traceback (most recent call last):
    ...
    ValueError: --epochs must be a positive int, got 0
    >>> import numpy as np
    >>> compare_runs({"loss": np.float32([0.5, 0.25])}, {"loss": np.float32([0.5, 0.25])})
    []
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

DIGITS = 1797
"""The images of scikit-learn's digits dataset."""
HELD_OUT = 297
"""The last digits, kept out of the training pipeline for the held-out accuracy."""
DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 32
CHECKPOINTS = "checkpoints"
"""The sub-directory of ``--workdir`` holding the Orbax checkpoint."""
RESUMED = "resumed.npz"
"""The file in ``--workdir`` where the fresh process leaves its losses and final arrays."""

DESCRIPTION = """\
Train a small Flax NNX classifier with optax on scikit-learn's 8x8 digits (1,500 for training,
the last 297 held out) through a shuffled, augmented datarax pipeline, with a progress bar per
epoch. Half-way through, the model, the optimizer and the data iterator are checkpointed
together with Orbax; then a crash is simulated: a fresh process restores the checkpoint and
trains to the end, and its losses and final parameters must equal the uninterrupted run's bit
for bit (exit status 1 if they do not).

examples:
  datarax demo
  datarax demo --epochs 1 --batch-size 100
  datarax demo --seed 3 --workdir demo-run     # keeps the checkpoint in demo-run/checkpoints
"""


def load_digits_arrays() -> dict[str, np.ndarray]:
    """The 1,797 8x8 digits bundled with scikit-learn, as uint8 images and int32 labels.

    Returns:
        ``{"image": uint8 (1797, 8, 8), "label": int32 (1797,)}``, pixels scaled from 0..16 to 0..255.

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


def register(subparsers: Any) -> None:
    """Adds the ``demo`` command to an ``argparse`` subparsers object (handler: ``demo_command``)."""
    demo = subparsers.add_parser(
        "demo",
        help="train a classifier through a datarax pipeline; checkpoint, crash, resume bit for bit",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"epochs to train (default {DEFAULT_EPOCHS})")
    demo.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"digits per batch, 1 to 1500 (default {DEFAULT_BATCH_SIZE}); an epoch's last batch is padded",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the one seed of the shuffle, the augmentation and the model's initialisation (default 0)",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the checkpoint goes (created if missing; default: a temporary directory, removed at the end)",
    )
    # The fresh process of the resume check: restore WORKDIR's checkpoint, train to the end,
    # write WORKDIR/resumed.npz. Internal, so not in --help.
    demo.add_argument("--resume-from", type=Path, default=None, help=argparse.SUPPRESS)
    demo.set_defaults(handler=demo_command)


def check_options(*, epochs: Any, batch_size: Any, seed: Any, num_train: int) -> tuple[int, int, int]:
    """The demo's options, checked: ``(epochs, batch_size, seed)``.

    Args:
        epochs: ``--epochs``: a positive int.
        batch_size: ``--batch-size``: an int from 1 to ``num_train``.
        seed: ``--seed``: an int in ``[0, 2**32)``.
        num_train: The training digits.

    Raises:
        ValueError: Naming the option, the bad value and what was expected.
    """
    from datarax.core.validation import int_in_range, positive_int  # datarax.core imports JAX: not for --help

    epochs = positive_int("", "--epochs", epochs)
    batch_size = int_in_range(
        "",
        "--batch-size",
        batch_size,
        low=1,
        high=num_train + 1,
        what=f"an int from 1 to {num_train} (the training digits)",
    )
    seed = int_in_range("", "--seed", seed, low=0, high=2**32, what="an int in [0, 2**32)")
    return epochs, batch_size, seed


def check_workdir(workdir: Path, *, create: bool = True) -> Path:
    """``--workdir``: a directory (created if missing, when ``create``) that holds no earlier demo's checkpoints.

    Raises:
        ValueError: If it is a file, or already holds checkpoints.
        OSError: If it cannot be created.
    """
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir must be a directory, got {str(workdir)!r}, which is a file")
    checkpoints = workdir / CHECKPOINTS
    if checkpoints.exists() and (not checkpoints.is_dir() or any(checkpoints.iterdir())):
        raise ValueError(
            f"--workdir {str(workdir)!r} already holds a demo's checkpoints ({checkpoints}); "
            "give a new or empty directory, or remove them"
        )
    if create:
        workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def checkpoint_step(total_steps: int) -> int:
    """The step the checkpoint is taken before: half-way, so that at least one step follows it."""
    return total_steps // 2


def bit_identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes (so NaNs compare by their bits and -0.0 differs from 0.0)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def compare_runs(reference: Mapping[str, np.ndarray], resumed: Mapping[str, np.ndarray]) -> list[str]:
    """Every difference between two runs' arrays, one line each (empty when bit-identical).

    Args:
        reference: Arrays of the uninterrupted run, by name (``loss``: the losses of the steps
            after the checkpoint; ``model/...``, ``optimizer/...``: the final state).
        resumed: The resumed run's arrays under the same names.

    Returns:
        Descriptions of what differs; for a 1-d array (the losses), its first differing entry
        (``loss[i]``: the ``i``-th step after the checkpoint).
    """
    differences = []
    for name in sorted(set(reference) | set(resumed)):
        if name not in resumed or name not in reference:
            differences.append(f"{name}: only in the {'uninterrupted' if name in reference else 'resumed'} run")
            continue
        a, b = np.asarray(reference[name]), np.asarray(resumed[name])
        if bit_identical(a, b):
            continue
        if a.shape == b.shape and a.dtype == b.dtype and a.ndim == 1:
            bytes_a, bytes_b = a.view(np.uint8).reshape(len(a), -1), b.view(np.uint8).reshape(len(b), -1)
            first = int(np.flatnonzero((bytes_a != bytes_b).any(axis=1))[0])
            differences.append(f"{name}[{first}]: {a[first]!r} uninterrupted, {b[first]!r} resumed")
        else:
            differences.append(f"{name}: {a.dtype}{list(a.shape)} uninterrupted, {b.dtype}{list(b.shape)} resumed")
    return differences


def demo_command(args: argparse.Namespace) -> int:
    """Runs ``datarax demo`` (or, with the hidden ``--resume-from``, its fresh resuming process).

    Returns:
        0 when the resumed run equals the uninterrupted one bit for bit, 1 when it does not.

    Raises:
        ValueError: For a bad option (before anything runs).
        OSError: If the work directory cannot be created or written.
    """
    epochs, batch_size, seed = check_options(
        epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, num_train=DIGITS - HELD_OUT
    )
    if args.resume_from is None and args.workdir is not None:
        check_workdir(args.workdir, create=False)  # before the data is loaded: nothing runs on bad input
    data = load_digits_arrays()
    if len(data["label"]) != DIGITS:  # pragma: no cover - scikit-learn's dataset is fixed
        raise ValueError(f"scikit-learn's digits dataset has {len(data['label'])} images, expected {DIGITS}")
    if args.resume_from is not None:
        return _resume(data, epochs, batch_size, seed, args.resume_from)
    if args.workdir is not None:
        return _train(data, epochs, batch_size, seed, check_workdir(args.workdir), keep=True)
    with tempfile.TemporaryDirectory(prefix="datarax-demo-") as workdir:
        return _train(data, epochs, batch_size, seed, Path(workdir), keep=False)


def _console() -> Any:
    from rich.console import Console

    console = Console(soft_wrap=True)  # a long line stays one line in a log
    # Not a terminal (a log, a pipe): 80 columns would fold the progress bars' lines in two.
    return console if console.is_terminal else Console(soft_wrap=True, width=max(console.width, 120))


def _losses(first: int, last: int) -> str:
    return f"loss (step {first})" if first == last else f"{last - first + 1} losses (steps {first}-{last})"


def _position(state: Mapping[str, Any]) -> str:
    return f"{{epoch: {state['epoch']}, position: {state['position']}}}"


def _train(data: dict[str, np.ndarray], epochs: int, batch_size: int, seed: int, workdir: Path, keep: bool) -> int:
    import jax

    from datarax.checkpoint import OrbaxCheckpointHandler
    from datarax.cli import _training as training
    from datarax.core.spec import spec_to_str

    console = _console()
    train, test_images, test_labels = training.split_digits(data, HELD_OUT)
    num_train = len(train["label"])
    pipeline = training.build_pipeline(train, batch_size, epochs, seed)
    per_epoch = len(pipeline)
    total = epochs * per_epoch
    model, optimizer = training.build_model(seed, total)
    last = num_train - (per_epoch - 1) * batch_size
    console.print("[bold]datarax demo[/bold]: a Flax NNX classifier trained through a datarax pipeline")
    console.print(
        f"data      scikit-learn's digits: {num_train:,} for training, the last {HELD_OUT} held out; "
        f"image {spec_to_str(pipeline.source.element_spec()['image'])}"
    )
    padded = f" (the last holds {last} digits + {batch_size - last} padding rows)" if last < batch_size else ""
    console.print(
        f"pipeline  shuffle -> to float -> RandomCrop(8, padding=1) -> RandomBrightness(0.2), batch {batch_size}: "
        f"{per_epoch} batches per epoch{padded}"
    )
    console.print(
        f"model     DigitsClassifier ({training.parameter_count(model):,} parameters), "
        f"optax adam (learning rate {training.LEARNING_RATE}, cosine decay), {epochs} epochs = {total} steps, "
        f"seed {seed}"
    )
    console.print(f"workdir   {workdir}{'' if keep else ' (temporary)'}")
    iterator = iter(pipeline)
    compiled = training.compile_steps(train, batch_size, epochs, seed, model, optimizer)
    console.print(f"compiled the pipeline's step and the train step in {compiled:.1f} s")

    at = checkpoint_step(total)
    with OrbaxCheckpointHandler(workdir / CHECKPOINTS) as checkpoints:

        def before_step(step: int) -> None:
            if step == at:
                checkpoints.save(step, {"model": model, "optimizer": optimizer, "data": iterator})
                console.print(
                    f"checkpoint after step {step} (epoch {step // per_epoch + 1}/{epochs}, batch {step % per_epoch} "
                    f"of {per_epoch}): model, optimizer and iterator {_position(iterator.get_state())} -> "
                    f"{workdir / CHECKPOINTS / str(step)}"
                )

        losses, seconds, elements = training.run_epochs(
            iterator,
            model,
            optimizer,
            console=console,
            num_epochs=epochs,
            batches_per_epoch=per_epoch,
            num_records=num_train,
            batch_size=batch_size,
            before_step=before_step,
        )
        checkpoints.wait_until_finished()
    losses_np = np.asarray(jax.device_get(losses), dtype=np.float32)
    correct = float(training.accuracy(model, test_images, test_labels))
    console.print(
        f"trained {total} step{'s' if total > 1 else ''} in {seconds:.2f} s: {total / seconds:,.0f} batches/s, "
        f"{elements / seconds:,.0f} elements/s; final loss {losses_np[-1]:.4f}"
    )
    console.print(
        f"[bold]held-out accuracy: {correct:.3f}[/bold] ({round(correct * len(test_labels))} of {len(test_labels)} "
        "digits; chance is 0.100)"
    )
    reference = {"loss": losses_np[at:], **training.flat_arrays(model=model, optimizer=optimizer)}

    console.print(
        f"[bold]simulated crash after step {at}[/bold]: a fresh process restores the checkpoint and trains "
        f"the {'last step' if total - at == 1 else f'{total - at} remaining steps'}"
    )
    sys.stdout.flush()
    command = [
        sys.executable,
        "-m",
        "datarax.cli",
        "demo",
        "--epochs",
        str(epochs),
        "--batch-size",
        str(batch_size),
        "--seed",
        str(seed),
        "--resume-from",
        str(workdir),
    ]
    returncode = subprocess.run(command, check=False).returncode
    sys.stdout.flush()
    if returncode != 0:
        console.print(f"[red]resume check: FAIL: the fresh process exited with status {returncode}[/red]")
        return 1
    with np.load(workdir / RESUMED, allow_pickle=False) as saved:
        resumed = {name: saved[name] for name in saved.files if name != "step"}
        restored = int(saved["step"])
    differences = compare_runs(reference, resumed)
    if restored != at:
        differences.insert(0, f"the fresh process restored step {restored}, not {at}")
    if differences:
        console.print(
            f"[red]resume check: FAIL: {len(differences)} of {len(reference)} arrays differ from the "
            f"uninterrupted run: {'; '.join(differences[:5])}[/red]"
        )
        return 1
    arrays = len(reference) - 1
    console.print(
        f"[green]resume check: PASS: the fresh process's {_losses(at + 1, total)} and "
        f"{arrays} final parameter and optimizer arrays equal the uninterrupted run's bit for bit[/green]"
    )
    return 0


def _resume(data: dict[str, np.ndarray], epochs: int, batch_size: int, seed: int, workdir: Path) -> int:
    import jax

    from datarax.checkpoint import OrbaxCheckpointHandler
    from datarax.cli import _training as training

    checkpoints_dir = workdir / CHECKPOINTS
    if not checkpoints_dir.is_dir():
        raise ValueError(f"--resume-from {str(workdir)!r} holds no demo checkpoint ({checkpoints_dir})")
    console = _console()
    train, _, _ = training.split_digits(data, HELD_OUT)
    pipeline = training.build_pipeline(train, batch_size, epochs, seed)
    # Initialised differently on purpose: every parameter the run continues with comes from the checkpoint.
    model, optimizer = training.build_model((seed + 1) % 2**32, epochs * len(pipeline))
    iterator = iter(pipeline)
    with OrbaxCheckpointHandler(checkpoints_dir) as checkpoints:
        step = checkpoints.restore({"model": model, "optimizer": optimizer, "data": iterator})
    training.compile_steps(train, batch_size, epochs, seed, model, optimizer)
    state = iterator.get_state()
    console.print(
        f"fresh process {os.getpid()}: restored step {step}: model, optimizer and iterator {_position(state)} "
        f"(the iterator's whole state: {len(json.dumps(state))} bytes of JSON)"
    )
    losses, _, _ = training.run_epochs(
        iterator,
        model,
        optimizer,
        console=console,
        num_epochs=epochs,
        batches_per_epoch=len(pipeline),
        num_records=len(train["label"]),
        batch_size=batch_size,
    )
    arrays = training.flat_arrays(model=model, optimizer=optimizer)
    np.savez(
        workdir / RESUMED,
        step=np.int64(step),
        loss=np.asarray(jax.device_get(losses), dtype=np.float32),
        **arrays,
    )
    return 0


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPOCHS",
    "DIGITS",
    "HELD_OUT",
    "bit_identical",
    "check_options",
    "check_workdir",
    "checkpoint_step",
    "compare_runs",
    "demo_command",
    "load_digits_arrays",
    "register",
]

"""The ``datarax inspect`` and ``datarax run`` commands.

``datarax inspect PIPELINE`` shows what a pipeline is before you train on it:
its source, the element spec, each stage's output spec, the batch spec,
batches per epoch, and a short measurement (time to first batch, records per
second over a few batches), as a table. ``PIPELINE`` is a TOML file or
``module:function``, a function of no arguments returning a ``Pipeline``
(imported because you named it on your own command line; a TOML file can
never import code).

``datarax run PIPELINE.toml`` iterates a TOML pipeline for its epochs (or
``--batches N`` / ``--epochs E``) with a progress bar and a throughput
summary. ``--save-state FILE`` writes the iterator's JSON state
(``it.get_state()``) after the last batch; ``--resume FILE`` continues from
such a state (``it.set_state()``), which the pipeline refuses, naming the
field, if it comes from a differently built pipeline. ``--validate`` builds
the pipeline (every component, path and spec checked) and, with
``--resume``, checks the state fits it, without running a batch.

``register(subparsers)`` adds both commands to the ``datarax`` command line;
each handler returns 0 on success and raises ``ValueError``, ``TypeError``,
``KeyError`` or ``OSError`` with a one-line message on bad input, which the
command line prints as ``datarax <command>: error: <message>`` with exit
status 2 (``datarax.cli.main``).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="datarax")
    >>> register(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["run", "pipeline.toml", "--batches", "3", "--save-state", "state.json"])
    >>> args.batches, args.save_state, args.handler.__name__
    (3, 'state.json', 'run_command')
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datarax.pipeline import Pipeline

# JAX, Flax and the pipeline are imported by the handlers, not here: `datarax --help` and
# `datarax inspect --help` answer at once.

MAX_STATE_BYTES = 16 * 2**20
"""The largest state file ``--resume`` reads (a state is a few hundred bytes; a stream adds an int per buffer slot)."""

_MODULE_FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")

INSPECT_HELP = """\
Show a pipeline: its source, the element spec, each stage's output spec, the batch spec, batches
per epoch, and a short measurement (time to first batch and records per second).

PIPELINE is a TOML pipeline file (see docs/config.md), or module:function naming a function of no
arguments that returns a datarax Pipeline (the module is imported from the current directory or
the installed packages).

examples:
  datarax inspect pipeline.toml
  datarax inspect pipeline.toml --batches 50 --allow-root /data
  datarax inspect my_project.data:build_pipeline --batches 0
"""

RUN_HELP = """\
Iterate a TOML pipeline with a progress bar, then print its throughput. By default it runs the
epochs the file sets ([pipeline] num_epochs); --batches stops earlier, --epochs replaces them.

--save-state writes the iterator's JSON state after the last batch (a few hundred bytes);
--resume continues exactly from such a state, epochs included (it holds the run's last epoch),
refused (naming the field) if it comes from a differently built pipeline. --validate builds the
pipeline, checking every component, path and spec (and, with --resume, that the state fits),
without running a batch.

Paths in the file are relative to its directory and must stay inside it, or inside a root added
with --allow-root.

examples:
  datarax run pipeline.toml --validate
  datarax run pipeline.toml --batches 100 --save-state state.json
  datarax run pipeline.toml --resume state.json --save-state state.json
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _add_allow_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory the pipeline file may read from besides its own (repeatable)",
    )


def register(subparsers: Any) -> None:
    """Adds the ``inspect`` and ``run`` commands to an ``argparse`` subparsers object.

    Args:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.
    """
    formatter = argparse.RawDescriptionHelpFormatter
    inspect = subparsers.add_parser(
        "inspect",
        help="show a pipeline's specs and a short measurement",
        description=INSPECT_HELP,
        formatter_class=formatter,
    )
    inspect.add_argument("pipeline", metavar="PIPELINE", help="a TOML pipeline file, or module:function")
    inspect.add_argument(
        "--batches",
        type=_non_negative,
        default=20,
        metavar="N",
        help="batches to measure (default 20; 0 skips the measurement)",
    )
    _add_allow_root(inspect)
    inspect.set_defaults(handler=inspect_command)

    run = subparsers.add_parser(
        "run", help="iterate a TOML pipeline with a progress bar", description=RUN_HELP, formatter_class=formatter
    )
    run.add_argument("pipeline", metavar="PIPELINE.toml", help="a TOML pipeline file")
    length = run.add_mutually_exclusive_group()
    length.add_argument("--batches", type=_positive, metavar="N", help="stop after N batches")
    length.add_argument("--epochs", type=_positive, metavar="E", help="run E epochs (replaces [pipeline] num_epochs)")
    run.add_argument("--save-state", metavar="FILE", help="write the iterator's JSON state here after the last batch")
    run.add_argument("--resume", metavar="FILE", help="continue from a JSON state written by --save-state")
    run.add_argument("--validate", action="store_true", help="build and check the pipeline without running it")
    _add_allow_root(run)
    run.set_defaults(handler=run_command)


# -- finding the pipeline ------------------------------------------------------------


def _import_pipeline(target: str) -> Pipeline:
    """The pipeline ``module:function`` returns (the function called with no arguments)."""
    from datarax.pipeline import Pipeline

    module_name, _, attribute = target.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name!r} (from {target!r}): {error}") from error
    finally:
        if added:
            sys.path.remove(cwd)
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r} (from {target!r})")
        value = getattr(value, part)
    if callable(value) and not isinstance(value, Pipeline):
        try:
            value = value()
        except (ValueError, TypeError, KeyError, OSError):
            raise
        except Exception as error:  # noqa: BLE001 - reported as one line
            raise ValueError(f"{target}() raised {type(error).__name__}: {error}") from error
    if not isinstance(value, Pipeline):
        raise TypeError(f"{target} must be (or return) a datarax Pipeline, got {type(value).__name__}")
    return value


def resolve_pipeline(target: str, allowed_roots: Sequence[str] = ()) -> Pipeline:
    """The pipeline a command-line argument names: a TOML file, or ``module:function``.

    Raises:
        ConfigError: For a bad TOML file.
        FileNotFoundError: For a missing ``.toml`` file.
        ValueError, TypeError: For something that is neither, or a ``module:function`` that
            cannot be imported or returns no pipeline.
    """
    from datarax.config.loader import load_pipeline

    if target.endswith(".toml") or os.path.isfile(target):
        return load_pipeline(target, allowed_roots=allowed_roots)
    if _MODULE_FUNCTION.fullmatch(target):
        return _import_pipeline(target)
    raise ValueError(f"{target!r} is neither a TOML file nor module:function")


# -- inspect -------------------------------------------------------------------------


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal: tables wide enough that specs are not wrapped; text is never wrapped, and
    # square brackets (specs, TOML tables) are text, not markup.
    return Console(file=stream, width=None if stream.isatty() else 200, soft_wrap=True, markup=False, highlight=False)


def _valid_rows(batch: dict[str, Any]) -> int:
    import numpy as np

    return int(np.asarray(batch["valid_mask"]).sum())


def _batches_per_epoch(pipeline: Pipeline) -> int | None:
    try:
        return len(pipeline)
    except TypeError:  # a stream source or a HostFilter: known only by reading the epoch
        return None


def _stage_specs(pipeline: Pipeline) -> tuple[Any, dict[str, Any]]:
    """What the device graph receives (after any host stages) and every node's output spec."""
    from datarax.pipeline.construction import element_specs

    source_spec = pipeline._source_spec()  # the source's, or the host stage's collated spec
    specs = element_specs(source_spec, pipeline.nodes, pipeline.graph)
    return source_spec, {node: specs[node] for node in pipeline.graph.order}


def measure(pipeline: Pipeline, batches: int) -> tuple[float, int, int, float]:
    """Times ``batches`` batches of a fresh iterator.

    Returns:
        ``(time to first batch, batches after the first, their valid rows, their seconds)``.
    """
    import jax

    with iter(pipeline) as iterator:
        start = time.perf_counter()
        first = next(iterator, None)
        if first is None:
            return float("nan"), 0, 0, 0.0
        jax.block_until_ready(first)
        first_batch_s = time.perf_counter() - start
        count = rows = 0
        start = time.perf_counter()
        for batch in iterator:
            jax.block_until_ready(batch)
            count += 1
            rows += _valid_rows(batch)
            if count == batches - 1:
                break
        return first_batch_s, count, rows, time.perf_counter() - start


def inspect_command(args: argparse.Namespace) -> int:
    """``datarax inspect``: prints the pipeline's table; returns 0."""
    from rich.table import Table

    from datarax.core.spec import spec_to_str

    pipeline = resolve_pipeline(args.pipeline, args.allow_root)
    source = pipeline.source
    try:
        records = f"{len(source):,} records"
    except TypeError:
        records = "a stream (no len)"
    table = Table(title=f"datarax inspect {args.pipeline}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("source", f"{type(source).__name__}: {records}")
    table.add_row("element_spec", spec_to_str(source.element_spec()))
    source_spec, specs = _stage_specs(pipeline)
    for i, op in enumerate(pipeline.host_stages):
        table.add_row(f"host_stages[{i}]", type(op).__name__)
    if len(pipeline.host_stages):
        table.add_row("after host stages", spec_to_str(source_spec))
    linear = all(re.fullmatch(r"stage_\d+", node) for node in specs)
    for node, spec in specs.items():
        label = f"stages[{node[6:]}]" if linear else f"node {node!r}"
        table.add_row(f"{label} {type(pipeline.nodes[node]).__name__}", spec_to_str(spec))
    table.add_row("batch_spec", spec_to_str(pipeline.batch_spec()))
    table.add_row(
        "batching",
        f"batch_size {pipeline.batch_size}, shuffle {pipeline.shuffle}, drop_remainder {pipeline.drop_remainder}, "
        f"seed {pipeline.seed}",
    )
    per_epoch = _batches_per_epoch(pipeline)
    table.add_row("batches per epoch", "unknown until read (stream or filter)" if per_epoch is None else str(per_epoch))
    table.add_row("epochs per iteration", "forever" if pipeline.num_epochs is None else str(pipeline.num_epochs))
    if pipeline.sharding is not None:
        table.add_row("sharding", str(pipeline.sharding.spec))
    if args.batches:
        first_s, count, rows, seconds = measure(pipeline, args.batches)
        table.add_row("time to first batch", f"{first_s:.3f} s (compiling the step included)")
        throughput = f"{rows / seconds:,.0f} records/s over {count} batches" if count and seconds > 0 else "n/a"
        table.add_row("throughput", throughput)
    _console().print(table)
    return 0


# -- run -----------------------------------------------------------------------------


def read_state(path: str) -> dict[str, Any]:
    """A JSON iterator state from ``path`` (plain JSON, at most ``MAX_STATE_BYTES``).

    Raises:
        OSError: If the file cannot be read.
        ValueError: If it is too large, not JSON, or not a JSON object.
    """
    with open(path, "rb") as file:
        data = file.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"--resume {path}: larger than {MAX_STATE_BYTES} bytes; not an iterator state")
    try:
        state = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--resume {path}: not a JSON iterator state: {error}") from None
    if not isinstance(state, dict):
        raise ValueError(f"--resume {path}: expected a JSON object (an iterator state), got {type(state).__name__}")
    return state


def write_state(path: str, state: dict[str, Any]) -> None:
    """Writes ``state`` as JSON, atomically (a temporary file renamed over ``path``)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".state-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(state, file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _restore(iterator: Any, state: dict[str, Any], path: str) -> None:
    try:
        iterator.set_state(state)
    except (ValueError, TypeError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise ValueError(f"--resume {path}: the state does not fit this pipeline: {message}") from error


def _remaining(pipeline: Pipeline, state: dict[str, Any] | None) -> int | None:
    """Batches the iterator will serve before its epochs end (None: forever or unknown)."""
    per_epoch = _batches_per_epoch(pipeline)
    if per_epoch is None:
        return None
    if state is None:
        return None if pipeline.num_epochs is None else pipeline.num_epochs * per_epoch
    stop, epoch, position = state.get("stop_epoch"), state.get("epoch"), state.get("position")
    if not all(isinstance(value, int) for value in (stop, epoch, position)):
        return None
    return max(0, (stop - epoch) * per_epoch - position // pipeline.batch_size)


def _batches(iterator: Iterator[Any], limit: int | None) -> Iterator[Any]:
    for count, batch in enumerate(iterator, start=1):
        yield batch
        if count == limit:
            return


def run_command(args: argparse.Namespace) -> int:
    """``datarax run``: iterates (or validates) a TOML pipeline; returns 0."""
    import jax
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from datarax.config.loader import load_pipeline
    from datarax.core.spec import spec_to_str

    if not args.pipeline.endswith(".toml") and not os.path.isfile(args.pipeline):
        raise ValueError(f"{args.pipeline!r} is not a TOML pipeline file")
    overrides = {"num_epochs": args.epochs} if args.epochs is not None else None
    pipeline = load_pipeline(args.pipeline, allowed_roots=args.allow_root, overrides=overrides)
    state = read_state(args.resume) if args.resume else None
    if args.save_state and not os.path.isdir(os.path.dirname(os.path.abspath(args.save_state))):
        # Checked before the run, not after it.
        raise FileNotFoundError(f"--save-state {args.save_state}: its directory does not exist")
    console = _console()
    if args.validate:
        if state is not None:
            with iter(pipeline) as iterator:
                _restore(iterator, state, args.resume)
        per_epoch = _batches_per_epoch(pipeline)
        batch_spec = spec_to_str(pipeline.batch_spec())
        console.print(
            f"{args.pipeline}: valid: {type(pipeline.source).__name__}, batch_spec {batch_spec}, "
            f"{'an unknown number of' if per_epoch is None else per_epoch} batches per epoch"
            + (f"; the state {args.resume} fits" if state is not None else "")
        )
        return 0
    total = _remaining(pipeline, state)
    if args.batches is not None:
        total = args.batches if total is None else min(total, args.batches)
    elif total is None and (pipeline.num_epochs if state is None else state.get("stop_epoch")) is None:
        raise ValueError(f"{args.pipeline} runs forever ([pipeline] num_epochs = inf); give --batches N or --epochs E")
    count = rows = rows_after_first = 0
    first_batch_s = float("nan")
    with iter(pipeline) as iterator:
        if state is not None:
            _restore(iterator, state, args.resume)
            console.print(f"resumed from {args.resume}: epoch {state['epoch']}, position {state['position']}")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        start = time.perf_counter()
        with Progress(*columns, console=_console(stderr=True)) as progress:
            task = progress.add_task(f"datarax run {Path(args.pipeline).name}", total=total)
            for batch in _batches(iterator, args.batches):
                jax.block_until_ready(batch)
                valid = _valid_rows(batch)
                if count == 0:
                    first_batch_s = time.perf_counter() - start
                else:
                    rows_after_first += valid
                count += 1
                rows += valid
                progress.advance(task)
        seconds = time.perf_counter() - start
        final = iterator.get_state()
    steady = seconds - first_batch_s
    rate = f"then {rows_after_first / steady:,.0f} records/s" if count > 1 and steady > 0 else "no batch after it"
    console.print(
        f"ran {count} batches ({rows:,} records) in {seconds:.2f} s: first batch after {first_batch_s:.3f} s "
        f"(compiling included), {rate}"
    )
    console.print(f"now at epoch {final['epoch']}, position {final['position']}")
    if args.save_state:
        write_state(args.save_state, final)
        console.print(f"state saved to {args.save_state}")
    return 0

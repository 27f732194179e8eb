"""The ``datarax`` command line: ``demo``, ``bench``, ``inspect`` and ``run``.

Each command lives in its own module and adds itself to the parser with ``register(subparsers)``,
setting ``handler``, a function ``handler(args) -> int`` (the exit status):

* ``datarax demo`` (``datarax.cli.demo``): trains a classifier on scikit-learn's digits through
  a shuffled, augmented pipeline, checkpoints model, optimizer and iterator with Orbax, and
  resumes in a fresh process bit for bit;
* ``datarax bench`` (``datarax.cli.bench``): the benchmark workloads of ``benchmarks/run.py``
  against the hand-written baselines (and, with ``--peers``, Grain and the PyTorch DataLoader),
  as a table, a JSON file and a PNG chart;
* ``datarax inspect`` and ``datarax run`` (``datarax.config.commands``): TOML pipelines.

``main`` turns a ``ValueError``, ``TypeError``, ``KeyError`` or ``OSError`` raised by a handler
into one line on stderr, ``datarax <command>: error: <message>``, and exit status 2, as argparse
does for a malformed command line. The modules import JAX only when a command runs, so
``datarax --help`` answers at once. ``python -m datarax.cli`` is the same command line.

``load_digits_arrays`` (the demo's dataset) is re-exported here for the examples that use it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from datarax.cli import bench, demo
from datarax.cli.demo import load_digits_arrays
from datarax.config import commands as config_commands

HANDLED = (ValueError, TypeError, KeyError, OSError)
"""The exceptions a handler raises for bad input: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The ``datarax`` parser with every command (each sets ``handler``)."""
    parser = argparse.ArgumentParser(
        prog="datarax",
        description="datarax: JAX-native data pipelines. Run 'datarax COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(commands)
    bench.register(commands)
    config_commands.register(commands)
    return parser


def error_line(command: str, error: BaseException) -> str:
    """``datarax <command>: error: <message>`` on one line (a ``KeyError``'s message without its quotes)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return f"datarax {command}: error: {' '.join(str(message).split())}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``datarax`` console script; returns the exit status.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The handler's status; 2 (and one line on stderr) for an error in the input. A malformed
        command line exits 2 through argparse (``SystemExit``).
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except HANDLED as error:
        print(error_line(args.command, error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"datarax {args.command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "error_line", "load_digits_arrays", "main"]

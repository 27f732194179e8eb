"""``datarax bench``: the benchmark workloads against hand-written loops (and peers), as a table, JSON and a chart.

It runs the workloads of ``benchmarks/run.py`` with its building blocks (the data, the datarax
pipelines, the tuned hand-written loops of ``benchmarks/baselines.py``, the time to first batch)
in one process, every system of a workload timed over ``--repeats`` rounds (each a full epoch of
every system, in a new random order) after a warm-up epoch, and reports medians and the median of
per-round ratios (see ``benchmarks/run.py``):

* W1: 50,000 x 32x32x3 uint8 images + labels, shuffle, /255, random horizontal flip, batch 128;
* W2: 60,000 x 28x28 uint8 images, shuffle, /255, batch 256;
* W3: W1 with a chain of 1 and of 32 cheap operators on the label (what an operator costs).

``--scale`` takes that fraction of each dataset (a smoke run: ``--scale 0.02``). The reference of
every ratio is the tuned hand-written loop that beat datarax by the most in the same run (these
machines are noisy: only ratios within one run mean much); the headline ratio is measured on other
rounds than the reference was chosen on (``held_out``, see ``benchmarks/run.py``). ``--peers`` adds
Grain (a ``MapDataset`` that gathers and transforms whole index batches in NumPy) and PyTorch's
``DataLoader`` (``benchmarks/baselines.py``) on the same data in the same rounds; a peer that is not
installed is named in one line and left out (``pip install 'datarax[bench]'``).

It prints the table and writes ``bench.json`` (every figure; see ``figures``) and ``bench.png``
(throughput / reference per system and workload) into ``--out``. ``benchmarks/`` is part of a
source checkout, not of the installed package: run ``datarax bench`` from the checkout's root.

Example:
    >>> row = {"workload": "W2", "batch": 256, "steps": 10, "first batch s": 0.5,
    ...        "reference": "tuned: select", "median": {"tuned: select": 0.02, "numpy loop": 0.08},
    ...        "times": {"tuned: select": [0.02, 0.02, 0.03], "numpy loop": [0.08, 0.08, 0.09]},
    ...        "paired": {"tuned: select": 1.0, "numpy loop": 0.25},
    ...        "held_out": {"tuned: select": 1.0, "numpy loop": 0.26},
    ...        "held_out_references": ["tuned: select", "tuned: select"]}
    >>> figure = figures([row], {"scale": 0.1})["workloads"][0]
    >>> figure["reference"], figure["systems"]["numpy loop"]["throughput_vs_reference"]
    ('tuned: select', 0.25)
    >>> figure["systems"]["tuned: select"]["elements_per_s"]
    128000.0
    >>> check_options(repeats=2, scale=0.1, workloads=["W1"])
    Traceback (most recent call last):
    ...
    ValueError: --repeats must be an int >= 3 (the median of at least three timed epochs), got 2
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WORKLOADS = {
    # name: (records at scale 1, image shape, batch size)
    "W1": (50_000, (32, 32, 3), 128),
    "W2": (60_000, (28, 28), 256),
    "W3": (50_000, (32, 32, 3), 128),
}
"""The workloads of ``benchmarks/run.py`` (its ``WORKLOADS``, which a test keeps equal): records at
``--scale 1``, image shape, batch size. Here so that arguments are checked before the benchmark, and
with it JAX, is imported."""
PEERS = ("Grain", "torch DataLoader")
TORCH = "torch DataLoader"  # the name benchmarks/run.py gives PyTorch's loader

DESCRIPTION = """\
Run the benchmark workloads (benchmarks/run.py) and report elements/s, ms per batch and the
ratio to the fastest hand-written loop measured in the same run, for datarax and the baselines
(and, with --peers, Grain and the PyTorch DataLoader). Writes bench.json and bench.png into --out.
Needs a source checkout: run it from the repository's root.

workloads:
  W1  50,000 x 32x32x3 uint8 + labels, shuffle, /255, random horizontal flip, batch 128
  W2  60,000 x 28x28 uint8, shuffle, /255, batch 256
  W3  W1 with 1 and 32 cheap operators on the label

examples:
  datarax bench --scale 0.02 --repeats 3           # a smoke run, a few seconds per workload
  datarax bench --workloads W1 --peers --out results
"""


def register(subparsers: Any) -> None:
    """Adds the ``bench`` command to an ``argparse`` subparsers object (handler: ``bench_command``)."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmark datarax against hand-written loops (and Grain, PyTorch): table, JSON, chart",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument(
        "--scale", type=float, default=1.0, help="fraction of each dataset, in (0, 1] (default 1: the full size)"
    )
    bench.add_argument("--repeats", type=int, default=5, help="timed epochs per system, at least 3 (default 5)")
    bench.add_argument(
        "--workloads",
        nargs="+",
        default=list(WORKLOADS),
        choices=list(WORKLOADS),
        metavar="W",
        help="which workloads: W1 W2 W3 (default all)",
    )
    bench.add_argument("--peers", action="store_true", help="also measure Grain and the PyTorch DataLoader")
    bench.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        metavar="DIR",
        help="where bench.json and bench.png go (created if missing; default bench-results)",
    )
    bench.set_defaults(handler=bench_command)


def check_options(*, repeats: Any, scale: Any, workloads: Sequence[str]) -> tuple[int, float]:
    """``(repeats, scale)``, checked: at least 3 repeats; a scale that leaves every workload a batch.

    Raises:
        ValueError: Naming the option, the bad value and what was expected.
    """
    from datarax.core.validation import int_in_range  # datarax.core imports JAX: not for --help

    repeats = int_in_range(
        "", "--repeats", repeats, low=3, what="an int >= 3 (the median of at least three timed epochs)"
    )
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ValueError(f"--scale must be a number in (0, 1], got {scale!r}")
    if not 0 < scale <= 1:
        raise ValueError(f"--scale must be a number in (0, 1], got {scale!r}")
    for name in workloads:
        records, _, batch = WORKLOADS[name]
        if int(records * scale) < batch:
            raise ValueError(
                f"--scale {scale!r} leaves workload {name} {int(records * scale)} records, fewer than its batch of "
                f"{batch}; use --scale >= {math.ceil(batch / records * 1e4) / 1e4}"
            )
    return repeats, float(scale)


def check_out(out: Path) -> Path:
    """``--out``: a directory, or a path where one can be created (by ``bench_command``, once it runs).

    Raises:
        ValueError: If it is a file.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out must be a directory, got {str(out)!r}, which is a file")
    return out


def import_benchmarks() -> tuple[Any, Any] | None:
    """``(benchmarks.run, benchmarks.baselines)`` from a source checkout, or None outside one.

    The installed console script does not put the current directory on ``sys.path``; the
    checkout's root is the current directory, so it is added when it holds ``benchmarks/run.py``.
    """
    root = Path.cwd()
    if (root / "benchmarks" / "run.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module("benchmarks.run"), importlib.import_module("benchmarks.baselines")
    except ModuleNotFoundError as error:
        if error.name in ("benchmarks", "benchmarks.run", "benchmarks.baselines"):
            return None
        raise


def make_grain_loader(
    baselines: Any, data: dict[str, Any], batch_size: int, *, flip: bool, chain: int = 0, target: str = "image"
) -> Any:
    """Grain's peer loop: ``epoch(e) -> seconds``, or None when Grain is not installed.

    A ``MapDataset`` over the record indices, shuffled with the epoch as seed, batched
    (``drop_remainder``), each index batch gathered and transformed in NumPy with the generator
    Grain gives (the work of the PyTorch peer), then ``jax.device_put``; consumed as every other
    system (``baselines.consume``).
    """
    try:
        import grain
    except ImportError:
        return None
    import jax
    import numpy as np

    images, labels = data["image"], data["label"]
    n = images.shape[0]

    def transform(indices: Any, rng: Any) -> dict[str, Any]:
        idx = np.asarray(indices)
        x, y = baselines._numpy_transform(images[idx], labels[idx], rng, flip=flip, chain=chain, target=target)
        return {"image": x, "label": y}

    def batches(e: int) -> Any:
        dataset = (
            grain.MapDataset.range(n)
            .shuffle(seed=e)
            .batch(batch_size, drop_remainder=True)
            .random_map(transform, seed=e)
        )
        for batch in dataset:
            yield jax.device_put(batch)

    return lambda e: baselines.consume(batches(e))


def _options(w: dict[str, Any]) -> dict[str, Any]:
    return {"flip": w.get("flip", False), "chain": w.get("chain", 0), "target": w.get("target", "image")}


def measure(
    run: Any, baselines: Any, workloads: list[dict[str, Any]], *, repeats: int, peers: Sequence[str]
) -> list[dict[str, Any]]:
    """``benchmarks/run.measure`` with the chosen peers among the systems.

    Returns:
        ``benchmarks/run.measure``'s rows (``workload``, ``batch``, ``steps``, ``median``,
        ``times``, ``paired``, ``held_out``, ``held_out_references``, ``reference``, ``first batch s``).
    """

    def systems(w: dict[str, Any]) -> dict[str, Any]:
        kw = _options(w)
        chosen = {name: fn for name, fn in run.systems_for(w).items() if name != TORCH}
        if "Grain" in peers:
            chosen["Grain"] = make_grain_loader(baselines, w["data"], w["batch_size"], **kw)
        if TORCH in peers:
            chosen[TORCH] = baselines.make_torch_loader(w["data"], w["batch_size"], **kw)
        return chosen

    return run.measure(workloads, repeats=repeats, systems=systems)


def system_kind(name: str) -> str:
    """``datarax``, ``tuned loop`` (a candidate reference), ``baseline`` or ``peer``."""
    if name.startswith("datarax"):
        return "datarax"
    if name.startswith("tuned"):
        return "tuned loop"
    if name in PEERS:
        return "peer"
    return "baseline"


def figures(rows: list[dict[str, Any]], context: dict[str, Any]) -> dict[str, Any]:
    """The JSON document of a run: ``context`` (options, machine) and every figure per workload and system.

    Args:
        rows: ``measure``'s rows.
        context: Written as is at the top (e.g. ``scale``, ``repeats``, ``machine``).

    Returns:
        ``{**context, "workloads": [{"workload", "batch_size", "steps", "elements", "reference",
        "held_out_references", "time_to_first_batch_s", "systems": {name: {"kind", "epoch_s",
        "epochs_s", "elements_per_s", "ms_per_batch", "throughput_vs_reference",
        "throughput_vs_reference_paired", "throughput_vs_reference_held_out",
        "cost_vs_reference"}}}]}``; ratios are to the workload's reference (the tuned hand-written
        loop that beat datarax by the most in the run), of medians, (``_paired``) the median of
        per-round ratios, or (``_held_out``) the same with the reference chosen on other rounds.
    """
    workloads = []
    for row in rows:
        reference = row["median"][row["reference"]]
        elements = row["steps"] * row["batch"]
        systems = {}
        for name, seconds in sorted(row["median"].items(), key=lambda item: item[1]):
            systems[name] = {
                "kind": system_kind(name),
                "epoch_s": seconds,
                "epochs_s": list(row["times"][name]),
                "elements_per_s": elements / seconds,
                "ms_per_batch": 1e3 * seconds / row["steps"],
                "throughput_vs_reference": reference / seconds,
                "throughput_vs_reference_paired": row["paired"][name],
                "throughput_vs_reference_held_out": row["held_out"][name],
                "cost_vs_reference": seconds / reference,
            }
        workloads.append(
            {
                "workload": row["workload"],
                "batch_size": row["batch"],
                "steps": row["steps"],
                "elements": elements,
                "reference": row["reference"],
                "held_out_references": list(row["held_out_references"]),
                "time_to_first_batch_s": row["first batch s"],
                "systems": systems,
            }
        )
    return {**context, "workloads": workloads}


COLOURS = {"datarax": "#1f77b4", "tuned loop": "#7f7f7f", "baseline": "#c7c7c7", "peer": "#ff7f0e"}


def draw_chart(document: dict[str, Any], path: Path) -> None:
    """A PNG: per workload, every system's throughput / the reference, as horizontal bars.

    Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    workloads = document["workloads"]
    heights = [0.8 + 0.32 * len(w["systems"]) for w in workloads]
    figure = Figure(figsize=(9, sum(heights) + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(workloads), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, w in zip(axes, workloads, strict=True):
        names = list(w["systems"])[::-1]  # fastest on top
        ratios = [w["systems"][n]["throughput_vs_reference"] for n in names]
        ax.barh(names, ratios, color=[COLOURS[w["systems"][n]["kind"]] for n in names])
        ax.axvline(1.0, color="black", linewidth=0.8)
        for y, ratio in enumerate(ratios):
            ax.text(ratio, y, f" {ratio:.2f}x", va="center", fontsize=8)
        ax.set_title(
            f"{w['workload']} (batch {w['batch_size']}, {w['elements']:,} elements per epoch): "
            f"throughput / {w['reference']}",
            fontsize=10,
        )
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlim(0, max(ratios) * 1.18)
    axes[-1].set_xlabel("throughput / the fastest hand-written loop of this run (higher is faster)")
    figure.legend(
        handles=[Patch(color=c, label=k) for k, c in COLOURS.items()], loc="outside lower center", ncols=4, fontsize=8
    )
    figure.savefig(path, dpi=110)


def summary_lines(run: Any, rows: list[dict[str, Any]], default: str) -> list[str]:
    """The headline ratios of ``benchmarks/run.py`` (``run``): W1/W2 (``run.headline``), W3's depth, each peer."""
    by_name = {row["workload"]: row for row in rows}
    lines = []
    for row in rows:
        if row["workload"] in ("W1", "W2"):
            lines.append(run.headline(row, default))
        for peer in PEERS:
            if peer in row["median"]:
                ratio = row["median"][peer] / row["median"][default]
                lines.append(f"{row['workload']}: datarax throughput = {ratio:.2f}x {peer}'s")
    if "W3 label ops x1" in by_name and "W3 label ops x32" in by_name:
        one, deep = by_name["W3 label ops x1"]["median"][default], by_name["W3 label ops x32"]["median"][default]
        lines.append(f"W3: depth 1 -> 32 slowdown with cheap label operators = {deep / one:.2f}x")
    return lines


def bench_command(args: argparse.Namespace) -> int:
    """Runs ``datarax bench``.

    Returns:
        0; 2 (with one line on stderr) outside a source checkout.

    Raises:
        ValueError: For a bad option (before anything runs).
        OSError: If ``--out`` cannot be created or written.
    """
    repeats, scale = check_options(repeats=args.repeats, scale=args.scale, workloads=args.workloads)
    out = check_out(args.out)
    modules = import_benchmarks()
    if modules is None:
        print(
            "datarax bench: error: the benchmark workloads (benchmarks/run.py) are part of a datarax source "
            f"checkout, not of the installed package, and {Path.cwd()} holds none; run 'datarax bench' from the "
            "root of a checkout",
            file=sys.stderr,
        )
        return 2
    run, baselines = modules
    out.mkdir(parents=True, exist_ok=True)  # before the measurement, so an unwritable --out fails at once
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        chart = False
        print("matplotlib is not installed: no chart (pip install 'datarax[bench]')", flush=True)
    else:
        chart = True
    peers = []
    if args.peers:
        for peer, module in (("Grain", "grain"), (TORCH, "torch")):
            try:
                importlib.import_module(module)
            except ImportError:
                print(f"{peer} is not installed: measured without it (pip install 'datarax[bench]')", flush=True)
            else:
                peers.append(peer)
    import jax

    from datarax.pipeline.construction import default_prefetch

    workloads = [name for name in WORKLOADS if name in args.workloads]
    print(
        f"datarax bench: {', '.join(workloads)} at scale {scale:g}, {repeats} timed epochs per system"
        f"{', peers: ' + ', '.join(peers) if peers else ''}",
        flush=True,
    )
    rows = []
    for group in run.workload_groups(workloads, scale):
        print(f"measuring {', '.join(w['name'] for w in group)} (round robin) ...", flush=True)
        rows += measure(run, baselines, group, repeats=repeats, peers=peers)
    default = f"datarax (default prefetch={default_prefetch()})"
    machine = {
        "machine": platform.machine(),
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "jax": jax.__version__,
        "python": platform.python_version(),
    }
    print(run.render(rows))
    print()
    print(", ".join(f"{k} {v}" for k, v in machine.items()) + f", --repeats {repeats}, --scale {scale:g}")
    for line in summary_lines(run, rows, default):
        print(line)
    document = figures(
        rows,
        {
            "scale": scale,
            "repeats": repeats,
            "peers": peers,
            "datarax_default": default,
            "reference": "the tuned hand-written loop that beat datarax by the most, per workload, in this run",
            **machine,
        },
    )
    (out / "bench.json").write_text(json.dumps(document, indent=2) + "\n")
    written = [str(out / "bench.json")]
    if chart:
        draw_chart(document, out / "bench.png")
        written.append(str(out / "bench.png"))
    print(f"wrote {' and '.join(written)}")
    return 0


__all__ = [
    "WORKLOADS",
    "bench_command",
    "check_options",
    "check_out",
    "draw_chart",
    "figures",
    "import_benchmarks",
    "make_grain_loader",
    "measure",
    "register",
    "summary_lines",
    "system_kind",
]

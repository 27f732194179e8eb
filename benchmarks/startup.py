"""Time to first batch: a fresh process, a second identical pipeline, the persistent cache.

Usage::

    python -m benchmarks.startup --repeats 3

Each measurement runs in a fresh Python process (the W1 pipeline: shuffle,
/255, random flip, batch 128, on 50,000 x 32x32x3 records unless ``--scale``
shrinks it) and reports, from building the pipeline to the first batch being
ready:

* ``cold``: no persistent cache (what every fresh process paid before);
* ``second pipeline``: a second identically built pipeline in the same
  process (the compiled step is shared, so nothing is compiled);
* ``persistent cache, first process`` / ``later process``: with
  ``datarax.pipeline.compilation_cache.enable_compilation_cache`` on a
  directory that starts empty: the first process writes the executable, later
  ones read it.

The kinds are alternated round by round; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, sys, time
import jax
from benchmarks.run import build_pipeline, make_data
from datarax.pipeline.compilation_cache import enable_compilation_cache
scale, cache = float(sys.argv[1]), sys.argv[2]
if cache:
    enable_compilation_cache(cache)
data = make_data(int(50_000 * scale), (32, 32, 3), seed=1)
times = []
for _ in range(2):
    start = time.perf_counter()
    pipeline = build_pipeline(data, 128, flip=True)
    jax.block_until_ready(next(iter(pipeline)))
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def _child(scale: float, cache: str) -> list[float]:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(scale), cache],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.repeats <= 0 or not 0 < args.scale <= 1:
        parser.error("--repeats must be positive and --scale in (0, 1]")
    results: dict[str, list[float]] = {
        "cold": [],
        "second pipeline": [],
        "persistent cache, first process": [],
        "persistent cache, later process": [],
    }
    for _ in range(args.repeats):
        first, second = _child(args.scale, "")
        results["cold"].append(first)
        results["second pipeline"].append(second)
        with tempfile.TemporaryDirectory() as cache:
            results["persistent cache, first process"].append(_child(args.scale, cache)[0])
            results["persistent cache, later process"].append(_child(args.scale, cache)[0])
    cold = statistics.median(results["cold"])
    print("| time to first batch (W1) | median s | ÷ cold |")
    print("| --- | --- | --- |")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {median / cold:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

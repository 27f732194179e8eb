"""W1 per-batch cost of this tree against an earlier revision, alternated in fresh processes.

Usage::

    python -m benchmarks.revisions --base ff4e0fc --rounds 3

A git worktree of ``--base`` is made in a temporary folder. Each round runs
one fresh process per revision (the order alternates round by round); each
process builds the W1 pipeline (50,000 x 32x32x3 uint8, shuffle, /255,
random flip, batch 128) with that revision's datarax, runs a warm-up epoch,
then times ``--epochs`` epochs and the tuned hand-written loop of
``benchmarks.baselines`` (the same code for both, so it measures the
machine's drift) interleaved with them. The figure of merit is the ratio of the two
revisions' (datarax ÷ jax loop) per-batch times: machine noise cancels in it.
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

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, statistics, sys, time
import jax, jax.numpy as jnp
from flax import nnx
from datarax import Pipeline
from datarax.operators import ElementOperator, ElementOperatorConfig
from datarax.sources import MemorySource, MemorySourceConfig
from benchmarks.baselines import consume, make_tuned_loop
from benchmarks.run import make_data, _normalize


def _flip(element, key):
    flip = jax.random.bernoulli(key)
    return {**element, "image": jnp.where(flip, element["image"][:, ::-1], element["image"])}


scale, epochs = float(sys.argv[1]), int(sys.argv[2])
data = make_data(int(50_000 * scale), (32, 32, 3), seed=1)
config = ElementOperatorConfig(stochastic=True, stream_name="augment")
try:  # one seed: operators need no rngs of their own
    flip = ElementOperator(config, fn=_flip)
    pipeline = Pipeline(source=MemorySource(MemorySourceConfig(), data=data),
                        stages=[ElementOperator(ElementOperatorConfig(), fn=_normalize), flip],
                        batch_size=128, rngs=nnx.Rngs(0), shuffle=True, drop_remainder=True, num_epochs=None)
except ValueError:  # revisions before it
    flip = ElementOperator(config, fn=_flip, rngs=nnx.Rngs(augment=1))
    pipeline = Pipeline(source=MemorySource(MemorySourceConfig(), data=data),
                        stages=[ElementOperator(ElementOperatorConfig(), fn=_normalize), flip],
                        batch_size=128, rngs=nnx.Rngs(0), shuffle=True, drop_remainder=True, num_epochs=None)
it = iter(pipeline)
loop = make_tuned_loop(data, 128, variant="per-record", flip=True)
ours_epoch = lambda: consume(next(it) for _ in range(len(pipeline)))
ours_epoch(); loop(0)
ours, theirs = [], []
for e in range(epochs):
    ours.append(ours_epoch()); theirs.append(loop(e + 1))
steps = len(pipeline)
print(json.dumps({"datarax_ms": 1e3 * statistics.median(ours) / steps,
                  "jax_ms": 1e3 * statistics.median(theirs) / steps}))
"""


def _run(src: Path, scale: float, epochs: int) -> dict[str, float]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(scale), str(epochs)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier revision (any git rev)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.rounds <= 0 or args.epochs <= 0 or not 0 < args.scale <= 1:
        parser.error("--rounds and --epochs must be positive and --scale in (0, 1]")
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True)
        try:
            trees = {"this tree": ROOT / "src", args.base: base_tree / "src"}
            rows: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    rows[name].append(_run(trees[name], args.scale, args.epochs))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=True)
    print("| revision | datarax ms/batch | jax loop ms/batch | datarax ÷ jax loop (time) |")
    print("| --- | --- | --- | --- |")
    relative = {}
    for name, results in rows.items():
        d = statistics.median(x["datarax_ms"] for x in results)
        j = statistics.median(x["jax_ms"] for x in results)
        relative[name] = statistics.median(x["datarax_ms"] / x["jax_ms"] for x in results)
        print(f"| {name} | {d:.3f} | {j:.3f} | {relative[name]:.3f} |")
    change = relative["this tree"] / relative[args.base]
    print(f"\nper-batch cost of this tree relative to {args.base}: {change:.3f}x (median of {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""W1 or W2 per-batch cost of this tree against an earlier revision, alternated in fresh processes.

Usage::

    python -m benchmarks.revisions --base ff4e0fc --rounds 3 [--workload W2]

A git worktree of ``--base`` is made in a temporary folder. Each round runs
one fresh process per revision (the order alternates round by round); each
process builds the W1 pipeline (50,000 x 32x32x3 uint8, shuffle, /255,
random flip as an ElementOperator, which every revision has, batch 128) or W2
(60,000 x 28x28, shuffle, /255, batch 256) with that revision's datarax, runs a warm-up epoch,
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
import numpy as np
from flax import nnx
from datarax import Pipeline
from datarax.operators import ElementOperator, ElementOperatorConfig
from datarax.sources import MemorySource, MemorySourceConfig
from benchmarks.baselines import consume, make_tuned_loop


def make_data(n, shape, seed):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, size=(n, *shape), dtype=np.uint8),
            "label": rng.integers(0, 10, size=n).astype(np.int32)}


def _normalize(element, key):
    return {**element, "image": element["image"].astype(jnp.float32) / 255.0}


def _flip(element, key):
    flip = jax.random.bernoulli(key)
    return {**element, "image": jnp.where(flip, element["image"][:, ::-1], element["image"])}


scale, epochs, workload = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
w1 = workload == "W1"
data = make_data(int((50_000 if w1 else 60_000) * scale), (32, 32, 3) if w1 else (28, 28), seed=1)
size = 128 if w1 else 256
config = ElementOperatorConfig(stochastic=True, stream_name="augment")
def build(flip):
    stages = [ElementOperator(ElementOperatorConfig(), fn=_normalize)] + ([flip] if w1 else [])
    return Pipeline(source=MemorySource(MemorySourceConfig(), data=data), stages=stages, batch_size=size,
                    rngs=nnx.Rngs(0), shuffle=True, drop_remainder=True, num_epochs=None)
try:  # one seed: operators need no rngs of their own
    pipeline = build(ElementOperator(config, fn=_flip))
except ValueError:  # revisions before it
    pipeline = build(ElementOperator(config, fn=_flip, rngs=nnx.Rngs(augment=1)))
it = iter(pipeline)
loop = make_tuned_loop(data, size, variant="per-record + barriers" if w1 else "select", flip=w1)
ours_epoch = lambda: consume(next(it) for _ in range(len(pipeline)))
ours_epoch(); loop(0)
ours, theirs = [], []
for e in range(epochs):
    ours.append(ours_epoch()); theirs.append(loop(e + 1))
steps = len(pipeline)
print(json.dumps({"datarax_ms": 1e3 * statistics.median(ours) / steps,
                  "jax_ms": 1e3 * statistics.median(theirs) / steps}))
"""


def _run(src: Path, scale: float, epochs: int, workload: str) -> dict[str, float]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(scale), str(epochs), workload],
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
    parser.add_argument("--head", default=None, help="the later revision (default: this working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workload", choices=("W1", "W2"), default="W1")
    args = parser.parse_args(argv)
    if args.rounds <= 0 or args.epochs <= 0 or not 0 < args.scale <= 1:
        parser.error("--rounds and --epochs must be positive and --scale in (0, 1]")
    with tempfile.TemporaryDirectory() as tmp:
        worktrees = []
        try:
            trees = {}
            for label, rev in (("head", args.head), ("base", args.base)):
                if rev is None:
                    trees["this tree"] = ROOT / "src"
                    continue
                path = Path(tmp) / label
                subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True)
                worktrees.append(path)
                trees[rev] = path / "src"
            rows: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    rows[name].append(_run(trees[name], args.scale, args.epochs, args.workload))
        finally:
            for path in worktrees:
                subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=True)
    print("| revision | datarax ms/batch | tuned loop ms/batch | datarax ÷ tuned loop (time) |")
    print("| --- | --- | --- | --- |")
    relative = {}
    for name, results in rows.items():
        d = statistics.median(x["datarax_ms"] for x in results)
        j = statistics.median(x["jax_ms"] for x in results)
        relative[name] = statistics.median(x["datarax_ms"] / x["jax_ms"] for x in results)
        print(f"| {name} | {d:.3f} | {j:.3f} | {relative[name]:.3f} |")
    head = args.head or "this tree"
    change = relative[head] / relative[args.base]
    print(f"\nper-batch cost of {head} relative to {args.base}: {change:.3f}x (median of {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

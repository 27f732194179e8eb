"""Pipeline throughput against hand-written baselines, measured in one run.

Usage::

    python -m benchmarks.run                 # all workloads, markdown table on stdout
    python -m benchmarks.run --repeats 7 --out bench-results/table.md

Every workload runs the datarax pipeline and two hand-written baselines on
the same data in the same process, interleaved, and reports medians and
ratios (these machines are noisy; only ratios within one run mean much):

* ``jax loop``: records on device, one permutation per epoch computed with
  ``jax.random.permutation``, one jitted gather + transform per batch that
  slices the permutation inside the jit (a strong, minimal loop);
* ``numpy loop``: the same work vectorised in numpy on the host.

Workloads (from issue 3): W1 = 50,000 x 32x32x3 uint8 + labels, shuffle,
/255 to float32, random horizontal flip, batch 128; W2 = 60,000 x 28x28 uint8,
shuffle, /255, batch 256; W3 = W1 with a chain of 1, 8 and 32 cheap operators,
in two flavours: ops on the per-record label (``(label * 3 + 1) % 10``: almost no
arithmetic, so the depth slowdown measures what each extra operator costs the
pipeline itself) and ops on the whole image (``x * 1.0001 + 0.0001``: 2 flops per
pixel each, so depth 32 adds real arithmetic that any loader, the hand-fused jax
loop included, must pay).

Throughput is elements/s over one full epoch after a warm-up epoch (compile
excluded); time to first batch is measured on a freshly built pipeline and
includes compilation.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax import MemorySource, MemorySourceConfig, Pipeline
from datarax.operators import ElementOperator, ElementOperatorConfig


def make_data(n: int, shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, size=(n, *shape), dtype=np.uint8),
        "label": rng.integers(0, 10, size=n).astype(np.int32),
    }


def _normalize(element, key):
    return {**element, "image": element["image"].astype(jnp.float32) / 255.0}


def _flip(element, key):
    flip = jax.random.bernoulli(key)
    return {**element, "image": jnp.where(flip, element["image"][:, ::-1], element["image"])}


def _cheap_image(element, key):
    return {**element, "image": element["image"] * 1.0001 + 0.0001}


def _cheap_label(element, key):
    return {**element, "label": (element["label"] * 3 + 1) % 10}


CHEAP_OPS = {"image": _cheap_image, "label": _cheap_label}


def build_pipeline(data, batch_size: int, *, flip: bool, chain: int = 0, target: str = "image") -> Pipeline:
    stages = [ElementOperator(ElementOperatorConfig(), fn=_normalize)]
    if flip:
        stages.append(ElementOperator(ElementOperatorConfig(stochastic=True, stream_name="augment"), fn=_flip))
    stages += [ElementOperator(ElementOperatorConfig(), fn=CHEAP_OPS[target]) for _ in range(chain)]
    source = MemorySource(MemorySourceConfig(), data=data)
    return Pipeline(
        source=source,
        stages=stages,
        batch_size=batch_size,
        rngs=nnx.Rngs(0),
        shuffle=True,
        drop_remainder=True,
        num_epochs=None,
    )


def pipeline_epoch(pipeline: Pipeline, iterator) -> float:
    """Seconds for one epoch of the pipeline.

    Like a training loop, the consumer waits for each batch before asking for the
    one after next; the baselines below are consumed the same way.
    """
    start = time.perf_counter()
    previous = None
    for _ in range(len(pipeline)):
        batch = next(iterator)
        jax.block_until_ready(previous)
        previous = batch
    jax.block_until_ready(previous)
    return time.perf_counter() - start


def make_jax_loop(
    data, batch_size: int, *, flip: bool, chain: int = 0, target: str = "image"
) -> Callable[[int], float]:
    images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
    n = images.shape[0]
    steps = n // batch_size

    @jax.jit
    def step(images, labels, perm, t, key):
        idx = jax.lax.dynamic_slice_in_dim(perm, t * batch_size, batch_size)
        x = images[idx].astype(jnp.float32) / 255.0
        if flip:
            mask = jax.random.bernoulli(jax.random.fold_in(key, t), 0.5, (batch_size,))
            x = jnp.where(mask[:, None, None, None], x[:, :, ::-1], x)
        y = labels[idx]
        for _ in range(chain):
            if target == "image":
                x = x * 1.0001 + 0.0001
            else:
                y = (y * 3 + 1) % 10
        return {"image": x, "label": y}

    permutation = jax.jit(jax.random.permutation, static_argnums=1)

    def epoch(e: int) -> float:
        start = time.perf_counter()
        key = jax.random.key(e)
        perm = permutation(key, n)
        previous = None
        for t in range(steps):
            batch = step(images, labels, perm, t, key)
            jax.block_until_ready(previous)
            previous = batch
        jax.block_until_ready(previous)
        return time.perf_counter() - start

    return epoch


def make_numpy_loop(
    data, batch_size: int, *, flip: bool, chain: int = 0, target: str = "image"
) -> Callable[[int], float]:
    images, labels = data["image"], data["label"]
    n = images.shape[0]
    steps = n // batch_size

    def epoch(e: int) -> float:
        start = time.perf_counter()
        rng = np.random.default_rng(e)
        perm = rng.permutation(n)
        for t in range(steps):
            idx = perm[t * batch_size : (t + 1) * batch_size]
            x = images[idx].astype(np.float32) / np.float32(255.0)
            if flip:
                mask = rng.random(batch_size) < 0.5
                x = np.where(mask[:, None, None, None], x[:, :, ::-1], x)
            y = labels[idx]
            for _ in range(chain):
                if target == "image":
                    x = x * np.float32(1.0001) + np.float32(0.0001)
                else:
                    y = (y * 3 + 1) % 10
            _ = {"image": x, "label": y}
        return time.perf_counter() - start

    return epoch


def time_to_first_batch(data, batch_size: int, *, flip: bool, chain: int, target: str) -> float:
    start = time.perf_counter()
    pipeline = build_pipeline(data, batch_size, flip=flip, chain=chain, target=target)
    jax.block_until_ready(next(iter(pipeline)))
    return time.perf_counter() - start


def measure(workloads: list[dict], *, repeats: int) -> list[dict]:
    """Times every system of every workload in the group, interleaved round-robin.

    Each workload is ``{"name", "data", "batch_size", "flip", "chain", "target"}``.
    Interleaving means drifts in machine load hit every system and workload of
    the group alike, so ratios inside a group (datarax vs baselines, depth 1 vs
    depth 32) are meaningful even on a noisy machine.
    """
    prepared = []
    for w in workloads:
        kwargs = {"flip": w["flip"], "chain": w.get("chain", 0), "target": w.get("target", "image")}
        data, batch_size = w["data"], w["batch_size"]
        ttfb = time_to_first_batch(data, batch_size, **kwargs)
        pipeline = build_pipeline(data, batch_size, **kwargs)
        iterator = iter(pipeline)
        systems = {
            "datarax": lambda r, p=pipeline, it=iterator: pipeline_epoch(p, it),
            "jax loop": make_jax_loop(data, batch_size, **kwargs),
            "numpy loop": make_numpy_loop(data, batch_size, **kwargs),
        }
        systems["datarax"](0)  # warm-up: compile
        systems["jax loop"](0)
        prepared.append((w, ttfb, systems, {name: [] for name in systems}))
    for r in range(repeats):
        for _, _, systems, times in prepared:
            for name, run in systems.items():
                times[name].append(run(r + 1))
    rows = []
    for w, ttfb, _, times in prepared:
        med = {k: statistics.median(v) for k, v in times.items()}
        n_elements = (w["data"]["image"].shape[0] // w["batch_size"]) * w["batch_size"]
        steps = n_elements // w["batch_size"]
        rows.append(
            {
                "workload": w["name"],
                "batch": w["batch_size"],
                "datarax el/s": n_elements / med["datarax"],
                "jax loop el/s": n_elements / med["jax loop"],
                "numpy loop el/s": n_elements / med["numpy loop"],
                "datarax / jax": med["jax loop"] / med["datarax"],
                "datarax / numpy": med["numpy loop"] / med["datarax"],
                "per-batch ms (datarax / jax)": (1e3 * med["datarax"] / steps, 1e3 * med["jax loop"] / steps),
                "first batch s": ttfb,
            }
        )
    return rows


def render(rows: list[dict]) -> str:
    header = (
        "| workload | batch | datarax el/s | jax loop el/s | numpy loop el/s | datarax ÷ jax loop "
        "| datarax ÷ numpy loop | ms/batch datarax / jax | time to first batch |"
    )
    lines = [header, "|" + " --- |" * 9]
    for r in rows:
        ms_d, ms_j = r["per-batch ms (datarax / jax)"]
        lines.append(
            f"| {r['workload']} | {r['batch']} | {r['datarax el/s']:,.0f} | {r['jax loop el/s']:,.0f} "
            f"| {r['numpy loop el/s']:,.0f} | {r['datarax / jax']:.2f}x | {r['datarax / numpy']:.2f}x "
            f"| {ms_d:.3f} / {ms_j:.3f} | {r['first batch s']:.2f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per system (median)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each dataset (for smoke runs)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if args.repeats <= 0 or not 0 < args.scale <= 1:
        parser.error("--repeats must be positive and --scale in (0, 1]")
    w1 = make_data(int(50_000 * args.scale), (32, 32, 3), seed=1)
    w2 = make_data(int(60_000 * args.scale), (28, 28), seed=2)
    rows = measure(
        [
            {"name": "W1", "data": w1, "batch_size": 128, "flip": True},
            {"name": "W2", "data": w2, "batch_size": 256, "flip": False},
        ],
        repeats=args.repeats,
    )
    for target in ("label", "image"):
        rows += measure(
            [
                {
                    "name": f"W3 {target} ops x{d}",
                    "data": w1,
                    "batch_size": 128,
                    "flip": True,
                    "chain": d,
                    "target": target,
                }
                for d in (1, 8, 32)
            ],
            repeats=args.repeats,
        )
    speed = {r["workload"]: r["datarax el/s"] for r in rows}
    baseline = {r["workload"]: r["jax loop el/s"] for r in rows}
    table = render(rows)
    summary = (
        f"\nW1 datarax/jax loop = {rows[0]['datarax / jax']:.2f}x (target >= 0.9); "
        f"W2 per-batch cost datarax/jax = {1 / rows[1]['datarax / jax']:.2f}x (target <= 1.1); "
        f"W3 depth 1 -> 32 slowdown, cheap label ops = "
        f"{speed['W3 label ops x1'] / speed['W3 label ops x32']:.2f}x (target <= 1.5); "
        f"image-wide ops = {speed['W3 image ops x1'] / speed['W3 image ops x32']:.2f}x "
        f"(the hand-fused jax loop: {baseline['W3 image ops x1'] / baseline['W3 image ops x32']:.2f}x)\n"
        f"machine: {platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}, "
        f"jax {jax.__version__}, python {platform.python_version()}"
    )
    print(table + summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + summary + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

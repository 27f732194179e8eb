"""Image augmentation chains: the pipeline's operators against the same chain hand-fused into one jit.

Usage::

    python -m benchmarks.operators --repeats 5

Two measurements, each with every system alternated round robin in one process, one epoch per turn,
medians of ``--repeats`` (after one untimed epoch that compiles):

**The CIFAR chain** (50,000 x 32x32x3 uint8 + int32 labels, shuffle, batch 128): random horizontal
flip, random 32x32 crop of the image padded by 4 (zeros), random brightness and contrast (factors
``1 + 0.4 u``, ``u`` uniform in [-1, 1], clipped to [0, 1]), normalise by the CIFAR mean and std.

* ``datarax``: ``RandomFlip``, ``RandomCrop``, ``RandomBrightness``, ``RandomContrast``,
  ``Normalize`` and a ``/255`` ``MapOperator`` in three forms (``cifar_stages``): ``float after
  geometry`` (torchvision's CIFAR recipe: the comparable chain), ``float first``, and ``uint8
  jitter`` (no ``/255`` operator: the jitter rounds back to uint8 after each step, as torchvision
  does on uint8 tensors, which costs the conversions).
* Hand-fused loops (the reference is the fastest of them in the run): the epoch permutation on the
  host, one jitted function per batch that gathers the batch's rows from the device-resident
  images and applies the whole chain. ``fused: one gather`` folds the flip and the crop into the
  indices of ONE gather from the dataset (row, crop row, crop column mirrored when flipped) and
  masks the padding; ``fused: host draws`` does the same with every random number drawn on the
  host by NumPy and passed in (no hashing on the device); ``fused: slices`` gathers the rows, pads
  them and cuts each crop with a ``vmap``ped ``dynamic_slice``, the flip as a ``take_along_axis``
  with per-row columns; ``fused: per record`` writes the chain for one record and ``vmap``s it;
  ``fused: slices + boundaries`` is ``slices`` with fusion boundaries
  (``datarax.core.fusion.materialize``) where they measured fastest. Their draws are per record
  (``fold_in(key, record)``, unrolled Threefry, hashed once for the batch), as a reproducible loop
  needs. The mean of the contrast is one flat reduction against tiled luma weights in every loop
  (the fastest form measured).

**Depth** (``--depth-records`` records, the same images): ``/255`` then ``d`` colour operators
cycling brightness, contrast, saturation (each clipping to [0, 1]), ``d`` in 1, 2, 4, 8, 16; the
pipeline against a hand-fused loop of the same ``d`` operators, written plainly and with a fusion
boundary before each operator that reads a mean or the other channels (the faster of the two at
each depth is the reference). The figure of merit is each
system's own slowdown from depth 1 to depth 16: the pipeline's must be no larger than the fused
loop's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.baselines import consume
from benchmarks.run import _pipeline_epoch as pipeline_epoch
from benchmarks.run import make_data
from datarax.core import threefry
from datarax.core.fusion import materialize
from datarax.operators import (
    MapOperator,
    MapOperatorConfig,
    Normalize,
    NormalizeConfig,
    RandomBrightness,
    RandomBrightnessConfig,
    RandomContrast,
    RandomContrastConfig,
    RandomCrop,
    RandomCropConfig,
    RandomFlip,
    RandomFlipConfig,
    RandomSaturation,
    RandomSaturationConfig,
)
from datarax.pipeline import Pipeline
from datarax.sources import MemorySource, MemorySourceConfig

Epoch = Callable[[int], float]

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
MAGNITUDE = 0.4
PAD = 4
LUMA = (0.299, 0.587, 0.114)
JITTERS = ("brightness", "contrast", "saturation")


# -- the pipeline -------------------------------------------------------------------------------------


def _to_unit(x):
    return x.astype(jnp.float32) / np.float32(255)


def _pipeline(data, batch_size: int, stages: list) -> Pipeline:
    source = MemorySource(MemorySourceConfig(), data=data)
    rngs = nnx.Rngs(0)
    return Pipeline(source=source, stages=stages, batch_size=batch_size, rngs=rngs, shuffle=True, num_epochs=None)


CIFAR_FORMS = ("float after geometry", "float first", "uint8 jitter")


def cifar_stages(form: str) -> list:
    """The CIFAR chain as datarax operators, in one of ``CIFAR_FORMS``.

    ``float after geometry`` is torchvision's CIFAR recipe (flip and crop the uint8 image, convert,
    jitter, normalise); ``float first`` converts before the flip; ``uint8 jitter`` converts only in
    ``Normalize`` (the jitter then rounds back to uint8 after each step, as torchvision does for
    uint8 tensors).
    """
    if form not in CIFAR_FORMS:
        raise ValueError(f"cifar_stages: form must be one of {CIFAR_FORMS}, got {form!r}")
    to_unit = MapOperator(MapOperatorConfig(subtree=("image",)), fn=_to_unit)
    geometry = [RandomFlip(RandomFlipConfig()), RandomCrop(RandomCropConfig(size=32, padding=PAD))]
    jitter = [
        RandomBrightness(RandomBrightnessConfig(magnitude=MAGNITUDE)),
        RandomContrast(RandomContrastConfig(magnitude=MAGNITUDE)),
        Normalize(NormalizeConfig(mean=MEAN, std=STD)),
    ]
    if form == "float first":
        return [to_unit, *geometry, *jitter]
    if form == "float after geometry":
        return [*geometry, to_unit, *jitter]
    return [*geometry, *jitter]


def depth_stages(depth: int) -> list:
    """``/255`` then ``depth`` colour operators cycling brightness, contrast, saturation."""
    kinds = {
        "brightness": (RandomBrightness, RandomBrightnessConfig),
        "contrast": (RandomContrast, RandomContrastConfig),
        "saturation": (RandomSaturation, RandomSaturationConfig),
    }
    stages = [MapOperator(MapOperatorConfig(subtree=("image",)), fn=_to_unit)]
    for i in range(depth):
        op, config = kinds[JITTERS[i % 3]]
        stages.append(op(config(magnitude=MAGNITUDE, stream_name=f"jitter{i}")))
    return stages


# -- the hand-fused chain -----------------------------------------------------------------------------


def _uniforms(key, records, count: int):
    """``count`` uniforms per record, ``(B, count)``: ``uniform(fold_in(fold_in(key, record), i))``."""
    record_keys = threefry.fold_in(key, records)
    draws = [threefry.uniform(threefry.fold_in(record_keys, i)) for i in range(count)]
    return jax.lax.optimization_barrier(jnp.stack(draws, axis=1))


def _luma_mean(x):
    """Per-image mean of the ITU-R 601 luma of ``(B, H, W, 3)`` floats, ``(B, 1, 1, 1)``: one flat
    reduction against tiled weights (the fastest form measured on XLA:CPU)."""
    batch, height, width, _ = x.shape
    weights = jnp.tile(jnp.asarray(LUMA, x.dtype), height * width)
    return (jnp.sum(x.reshape(batch, -1) * weights, axis=1) / np.float32(height * width))[:, None, None, None]


def _jitter(x, kind: str, u):
    """One colour operator on float ``(B, H, W, 3)`` in [0, 1], ``u`` in [0, 1) per row."""
    factor = jnp.maximum(1 + MAGNITUDE * (2 * u - 1), 0)[:, None, None, None]
    if kind == "brightness":
        return jnp.clip(x * factor, 0, 1)
    if kind == "contrast":
        return jnp.clip(factor * x + (1 - factor) * _luma_mean(x), 0, 1)
    gray = (x[..., 0:1] * LUMA[0] + x[..., 1:2] * LUMA[1] + x[..., 2:3] * LUMA[2]).astype(x.dtype)
    return jnp.clip(factor * x + (1 - factor) * gray, 0, 1)


def _colour_and_normalize(x, u_brightness, u_contrast):
    x = _jitter(_jitter(x, "brightness", u_brightness), "contrast", u_contrast)
    return (x - jnp.asarray(MEAN, jnp.float32)) * jnp.asarray([1 / s for s in STD], jnp.float32)


def _crop_indices(flip, top, left, size: int):
    """Source rows and columns (unpadded coordinates, may fall in the padding) of each row's crop."""
    steps = jnp.arange(size, dtype=jnp.int32)
    rows = top[:, None] + steps[None, :] - PAD
    columns = left[:, None] + steps[None, :] - PAD
    columns = jnp.where(flip[:, None], size - 1 - columns, columns)  # mirror the source, then crop
    return rows, columns


def _one_gather(images, idx, flip, top, left):
    """Flip and crop as the indices of one gather from the dataset; the padding masked to zero."""
    size = images.shape[1]
    rows, columns = _crop_indices(flip, top, left, size)
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((columns >= 0) & (columns < size))[:, None, :]
    rows, columns = jax.lax.optimization_barrier((jnp.clip(rows, 0, size - 1), jnp.clip(columns, 0, size - 1)))
    x = images[idx[:, None, None], rows[:, :, None], columns[:, None, :]]
    return jnp.where(inside[..., None], x.astype(jnp.float32) / np.float32(255), 0)


def _offsets(u):
    span = 2 * PAD + 1
    return jnp.minimum(jnp.floor(u * span), span - 1).astype(jnp.int32)


def fused_one_gather(images, labels, idx, key):
    idx = jax.lax.optimization_barrier(idx)
    u = _uniforms(key, idx.astype(jnp.uint32), 5)
    x = _one_gather(images, idx, u[:, 0] < 0.5, _offsets(u[:, 1]), _offsets(u[:, 2]))
    return {"image": _colour_and_normalize(x, u[:, 3], u[:, 4]), "label": labels[idx]}


def fused_host_draws(images, labels, idx, flip, top, left, u_brightness, u_contrast):
    x = _one_gather(images, idx, flip, top, left)
    return {"image": _colour_and_normalize(x, u_brightness, u_contrast), "label": labels[idx]}


def fused_slices(images, labels, idx, key):
    idx = jax.lax.optimization_barrier(idx)
    u = _uniforms(key, idx.astype(jnp.uint32), 5)
    flip, top, left = u[:, 0] < 0.5, _offsets(u[:, 1]), _offsets(u[:, 2])
    size = images.shape[1]
    x = images.at[idx].get(mode="promise_in_bounds")
    columns = jnp.where(flip[:, None], size - 1 - jnp.arange(size), jnp.arange(size))
    x = jnp.take_along_axis(x, columns[:, None, :, None], axis=2)
    x = jnp.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    x = jax.vmap(lambda image, t, s: jax.lax.dynamic_slice(image, (t, s, 0), (size, size, 3)))(x, top, left)
    x = x.astype(jnp.float32) / np.float32(255)
    return {"image": _colour_and_normalize(x, u[:, 3], u[:, 4]), "label": labels[idx]}


def fused_per_record(images, labels, idx, key):
    """The chain written per record and ``vmap``ped, each step in the fastest form found for XLA:CPU.

    The draws are hashed once and materialised; the flip and the crop read through index vectors
    (``take``, clamped, the padding masked); the contrast's mean is one flat reduction against
    tiled luma weights, and its input is materialised so the steps before it run once.
    """
    idx = jax.lax.optimization_barrier(idx)
    u = materialize(_uniforms(key, idx.astype(jnp.uint32), 5))
    size = images.shape[1]

    def crop(image, flip, top, left):
        steps = jnp.arange(size, dtype=jnp.int32)
        rows, columns = top + steps - PAD, left + steps - PAD
        columns = jnp.where(flip, size - 1 - columns, columns)
        out = jnp.take(jnp.take(image, rows, axis=0, mode="clip"), columns, axis=1, mode="clip")
        inside = ((rows >= 0) & (rows < size))[:, None, None] & ((columns >= 0) & (columns < size))[None, :, None]
        return jnp.where(inside, out.astype(jnp.float32) / np.float32(255), 0)

    rows = images.at[idx].get(mode="promise_in_bounds")
    x = jax.vmap(crop)(rows, u[:, 0] < 0.5, _offsets(u[:, 1]), _offsets(u[:, 2]))
    x = materialize(_jitter(x, "brightness", u[:, 3]))
    factor = jnp.maximum(1 + MAGNITUDE * (2 * u[:, 4] - 1), 0)[:, None, None, None]
    x = jnp.clip(factor * x + (1 - factor) * _luma_mean(x), 0, 1)
    x = (x - jnp.asarray(MEAN, jnp.float32)) * jnp.asarray([1 / s for s in STD], jnp.float32)
    return {"image": x, "label": labels.at[idx].get(mode="promise_in_bounds")}


def fused_boundaries(images, labels, idx, key):
    """``slices`` with fusion boundaries where they measured fastest (of 16 placements and orders
    tried): the batch's rows materialised before the flip and crop, the contrast's input before
    the contrast."""
    idx = jax.lax.optimization_barrier(idx)
    u = materialize(_uniforms(key, idx.astype(jnp.uint32), 5))
    flip, top, left = u[:, 0] < 0.5, _offsets(u[:, 1]), _offsets(u[:, 2])
    size = images.shape[1]
    x = materialize(images.at[idx].get(mode="promise_in_bounds"))
    columns = jnp.where(flip[:, None], size - 1 - jnp.arange(size), jnp.arange(size))
    x = jnp.take_along_axis(x, columns[:, None, :, None], axis=2)
    x = jnp.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    x = jax.vmap(lambda image, t, s: jax.lax.dynamic_slice(image, (t, s, 0), (size, size, 3)))(x, top, left)
    x = materialize(_jitter(x.astype(jnp.float32) / np.float32(255), "brightness", u[:, 3]))
    x = _jitter(x, "contrast", u[:, 4])
    x = (x - jnp.asarray(MEAN, jnp.float32)) * jnp.asarray([1 / s for s in STD], jnp.float32)
    return {"image": x, "label": labels.at[idx].get(mode="promise_in_bounds")}


def fused_depth(depth: int, boundaries: bool):
    """``depth`` colour operators fused; with ``boundaries``, the input of each one that reads a mean
    or the other channels is materialised first (``datarax.core.fusion.materialize``)."""

    def step(images, labels, idx, key):
        idx = jax.lax.optimization_barrier(idx)
        u = _uniforms(key, idx.astype(jnp.uint32), depth)
        x = images.at[idx].get(mode="promise_in_bounds").astype(jnp.float32) / np.float32(255)
        for i in range(depth):
            if boundaries and JITTERS[i % 3] != "brightness":
                x = materialize(x)
            x = _jitter(x, JITTERS[i % 3], u[:, i])
        return {"image": x, "label": labels.at[idx].get(mode="promise_in_bounds")}

    return step


def keyed_loop(data, batch_size: int, step) -> Epoch:
    """Host permutation per epoch; ``step(images, labels, idx, epoch_key)`` jitted once."""
    images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
    n = images.shape[0]
    steps = n // batch_size
    compiled = jax.jit(step)
    key = jax.random.key(0)

    def epoch(e: int) -> float:
        order = np.random.default_rng(e).permutation(n).astype(np.int32)
        batches = [jax.device_put(order[t * batch_size : (t + 1) * batch_size]) for t in range(steps)]
        epoch_key = jax.random.fold_in(key, e)
        return consume(compiled(images, labels, batches[t], epoch_key) for t in range(steps))

    return epoch


def host_draws_loop(data, batch_size: int) -> Epoch:
    """Every random number drawn on the host with the permutation; the device only computes."""
    images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
    n = images.shape[0]
    steps = n // batch_size
    compiled = jax.jit(fused_host_draws)

    def epoch(e: int) -> float:
        rng = np.random.default_rng(e)
        order = rng.permutation(n).astype(np.int32)
        flips = rng.random(n) < 0.5
        offsets = rng.integers(0, 2 * PAD + 1, size=(2, n), dtype=np.int32)
        jitters = rng.random((2, n), dtype=np.float32)

        def batch(t):
            rows = slice(t * batch_size, (t + 1) * batch_size)
            parts = (order[rows], flips[rows], offsets[0, rows], offsets[1, rows], jitters[0, rows], jitters[1, rows])
            return compiled(images, labels, *jax.device_put(parts))

        return consume(batch(t) for t in range(steps))

    return epoch


# -- measuring ----------------------------------------------------------------------------------------


def alternate(systems: dict[str, Epoch], repeats: int) -> dict[str, float]:
    """Median seconds per epoch of each system, all alternated round robin."""
    for run in systems.values():
        run(0)  # compilation, first touch
    times: dict[str, list[float]] = {name: [] for name in systems}
    for r in range(repeats):
        for name, run in systems.items():
            times[name].append(run(r + 1))
    return {name: statistics.median(t) for name, t in times.items()}


def check_same_chain(data) -> None:
    """A guard that the fused chain lost no step: with no flip, the centre crop and factors 1
    (``u = 0.5``), its output must be exactly the normalised images."""
    images = jnp.asarray(data["image"][:8])
    idx = jnp.arange(8, dtype=jnp.int32)
    no_flip, half = jnp.zeros(8, bool), jnp.full(8, 0.5, jnp.float32)
    centre = jnp.full(8, PAD, jnp.int32)
    labels = jnp.asarray(data["label"][:8])
    out = jax.jit(fused_host_draws)(images, labels, idx, no_flip, centre, centre, half, half)["image"]
    expected = (images.astype(jnp.float32) / 255 - jnp.asarray(MEAN)) / jnp.asarray(STD)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-5, atol=1e-5)


def print_table(title: str, rate: dict[str, float], reference: str, extra: dict[str, str] | None = None) -> None:
    print(f"\n{title}\n")
    print("| system | el/s | ÷ reference |" + (" slowdown 1 → 16 |" if extra else ""))
    print("| --- | --- | --- |" + (" --- |" if extra else ""))
    for name in sorted(rate, key=rate.get, reverse=True):
        mark = " (reference)" if name == reference else ""
        tail = f" {extra.get(name, '')} |" if extra else ""
        print(f"| {name}{mark} | {rate[name]:,.0f} | {rate[name] / rate[reference]:.2f}x |{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 50,000 records")
    parser.add_argument("--depth-records", type=int, default=10_240)
    parser.add_argument("--skip-depth", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be >= 3 (medians of at least 3)")
    batch_size = 128
    n = max(batch_size, int(50_000 * args.scale) // batch_size * batch_size)
    data = make_data(n, (32, 32, 3))
    check_same_chain(data)
    print(
        f"datarax operators benchmark: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}, batch {batch_size}, repeats {args.repeats}"
    )

    systems = {
        **{f"datarax, {form}": pipeline_epoch(_pipeline(data, batch_size, cifar_stages(form))) for form in CIFAR_FORMS},
        "fused: one gather": keyed_loop(data, batch_size, fused_one_gather),
        "fused: host draws": host_draws_loop(data, batch_size),
        "fused: slices": keyed_loop(data, batch_size, fused_slices),
        "fused: per record": keyed_loop(data, batch_size, fused_per_record),
        "fused: slices + boundaries": keyed_loop(data, batch_size, fused_boundaries),
    }
    seconds = alternate(systems, args.repeats)
    rate = {name: n // batch_size * batch_size / s for name, s in seconds.items()}
    reference = max((name for name in rate if name.startswith("fused")), key=rate.get)
    print_table(f"CIFAR chain: {n} records, flip + crop (pad 4) + brightness + contrast + normalize", rate, reference)

    if args.skip_depth:
        return 0
    m = args.depth_records // batch_size * batch_size
    depth_data = {k: v[:m] for k, v in data.items()}
    depths = (1, 2, 4, 8, 16)
    systems = {}
    for d in depths:
        systems[f"datarax, depth {d}"] = pipeline_epoch(_pipeline(depth_data, batch_size, depth_stages(d)))
        systems[f"fused, depth {d}"] = keyed_loop(depth_data, batch_size, fused_depth(d, boundaries=False))
        systems[f"fused + boundaries, depth {d}"] = keyed_loop(depth_data, batch_size, fused_depth(d, boundaries=True))
    seconds = alternate(systems, args.repeats)
    for d in depths:  # the reference at each depth: the faster fused loop
        plain, bounded = seconds.pop(f"fused, depth {d}"), seconds.pop(f"fused + boundaries, depth {d}")
        seconds[f"fused, depth {d}"] = min(plain, bounded)
    rate = {name: m / s for name, s in seconds.items()}
    print(f"\nDepth: {m} records, /255 then d colour operators (brightness, contrast, saturation, ...)\n")
    print("| depth | datarax el/s | fused el/s | datarax ÷ fused |")
    print("| --- | --- | --- | --- |")
    for d in depths:
        ours, fused = rate[f"datarax, depth {d}"], rate[f"fused, depth {d}"]
        print(f"| {d} | {ours:,.0f} | {fused:,.0f} | {ours / fused:.2f}x |")
    slow_ours = seconds["datarax, depth 16"] / seconds["datarax, depth 1"]
    slow_fused = seconds["fused, depth 16"] / seconds["fused, depth 1"]
    print(
        f"\nslowdown depth 1 → 16: datarax {slow_ours:.2f}x, fused {slow_fused:.2f}x "
        f"(datarax's ÷ fused's: {slow_ours / slow_fused:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

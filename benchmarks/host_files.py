"""Host sources against hand-written loaders and the peers, on the same files, in one run.

Usage::

    python -m benchmarks.host_files                          # W1F and W4 at full size
    python -m benchmarks.host_files --workloads W4 --scale 0.25 --repeats 3 --out bench-results/host.md
    python -m benchmarks.host_files --workloads W1H W1T W4H W4T   # the dataset libraries' formats

Workloads (files written once under ``--data-dir``, reused by later runs):

* **W1F**: 50,000 x 32x32x3 uint8 images + int32 labels in a ``.npy`` pair,
  a Parquet file and an ArrayRecord file; shuffle, /255, random horizontal
  flip, batch 128. datarax reads each format with its source (host stage,
  worker threads, and inline) and runs /255 and ``RandomFlip`` on the device. The
  reference is the faster of two hand-written loops over the ``.npy`` memmap:
  NumPy fancy-index gather + vectorised transform + ``jax.device_put``, and
  the same gather + ``jax.device_put`` of the uint8 batch + one jitted
  flip-and-normalise. A second table compares each format's fastest datarax
  row with a hand-written loop reading the same files (``format_loops``).
* **W1H**: W1 (50,000 x 32x32x3 uint8 + labels) saved as a Hugging Face dataset
  (``save_to_disk``); datarax's ``HFSource`` (threads, inline, processes) against the library's
  own loader, ``Dataset.shuffle(seed=epoch).with_format("numpy" | "jax").iter(batch_size=128)``,
  followed by the same jitted flip and /255.
* **W4**: 20,000 JPEGs with sides drawn from 160–320 px (generated here),
  stored in ArrayRecord (the built-in record format) and in Parquet; decode
  + random-resized-crop to 128x128 on the host, random flip + /255, shuffle,
  batch 128. Everyone decodes and crops with the same code (the operators'
  own ``apply``), so what differs is the loader: datarax (threads, and
  spawned processes), a hand-written ``ThreadPoolExecutor`` loop, PyTorch's
  ``DataLoader`` with 0 and 2 worker processes, and Grain's ``DataLoader`` and
  ``mp_prefetch`` with 0 and 2 workers (torch and grain from the ``bench``
  extra). Every system's batch is moved to the device and flipped and
  normalised there by the same jitted function (datarax: by its own device
  operators).
* **W1T**: W1 (the same images and labels) as a TFDS dataset prepared once
  under ``--data-dir`` by a builder defined here (``Tensor`` uint8[32,32,3]
  + ``ClassLabel``, ``file_format="array_record"``; no TensorFlow, nothing
  downloaded); datarax's ``TFDSSource`` (threads, inline, processes) with
  ``RandomFlip`` and /255 on the device, against TFDS's own loader:
  ``tfds.data_source`` in Grain's
  ``MapDataset.source(...).shuffle(seed).repeat().batch(128)``, iterated with
  no read threads (the fastest single-process form measured: Grain's default
  16 read threads and its ``DataLoader`` + ``IndexSampler`` were slower) and
  with ``mp_prefetch`` worker processes, followed by the same jitted flip and /255.
* **W4H**: W4's JPEGs (W4's files, read back) in a saved Hugging Face
  dataset with an ``Image`` feature (bytes embedded, ``save_to_disk``);
  datarax's ``HFSource`` with W4's host operators (threads, processes)
  against the library's own loader,
  ``Dataset.shuffle(seed=epoch).iter(batch_size=128)`` in the default format
  with the column cast to ``Image(decode=False)``, each batch's JPEGs decoded
  and cropped by the operators' ``apply`` on the iterating thread, or a batch
  per task in a ``ThreadPoolExecutor`` (so only the loader differs).
* **W4T**: the same JPEGs as a TFDS dataset (an ``Image`` feature whose stored
  bytes are the JPEGs, ArrayRecord); datarax's ``TFDSSource`` with W4's host
  operators (threads, processes) against ``tfds.data_source`` (images left
  encoded: ``tfds.decode.SkipDecoding``) in Grain's
  ``MapDataset.source(...).shuffle(seed).repeat().random_map(decode + crop).batch(128)``,
  run by Grain's read threads or by ``mp_prefetch`` worker processes.

W1T and W4T need the ``tfds`` extra and Grain (``bench``), W1H and W4H the
``hf`` extra. In W1H, W1T, W4, W4H and W4T the reference (the denominator of
the ratios) is the fastest system that is not datarax; in W1F the faster
hand-written loop.

Each round starts every system in turn (workers included), takes its first
batch (time to first batch: construction, worker start and compilation
included), consumes a few warm-up batches, times one epoch's worth of batches
consumed as a training loop does, and closes it, so no system's workers run
while another is timed. Medians over ``--repeats`` rounds. Reported beside
throughput: CPU utilisation (process + worker CPU seconds / wall seconds /
cores) and peak RSS (this process + its workers, sampled every 20 ms during
the timed batches; this process holds every system's files and JAX).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import functools
import gc
import io
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.baselines import consume
from datarax import Pipeline
from datarax.operators import ElementOperator, ElementOperatorConfig, RandomFlip, RandomFlipConfig
from datarax.operators.host_image import (
    DecodeImage,
    DecodeImageConfig,
    HostRandomResizedCrop,
    HostRandomResizedCropConfig,
)
from datarax.pipeline.host_pool import default_workers
from datarax.sources import (
    ArrayRecordSource,
    ArrayRecordSourceConfig,
    HFSource,
    HFSourceConfig,
    NumpyFileSource,
    NumpyFileSourceConfig,
    ParquetSource,
    ParquetSourceConfig,
    TFDSSource,
    TFDSSourceConfig,
)
from datarax.sources.record_format import decode_record, write_array_record

try:
    import grain
except ImportError:  # the bench extra is not installed
    grain = None

BATCH = 128
# Decoded Parquet row groups kept: a shuffled epoch touches every row group for every batch, so the
# cache holds all of them (W1F: 49 groups of 1,024 images, 150 MB; W4 at full size: 79 groups).
PARQUET_CACHE = 128
CROP = 128

# -- data -----------------------------------------------------------------------


def write_w1_files(root: Path, n: int) -> dict[str, Path]:
    """The W1 images and labels as .npy, Parquet and ArrayRecord (written once)."""

    if root.exists():
        return _w1_paths(root)
    partial = Path(f"{root}.partial-{os.getpid()}")
    partial.mkdir(parents=True)
    paths = _w1_paths(partial)
    _write_w1(paths, n)
    partial.rename(root)  # atomic: a concurrent run never sees half-written files
    return _w1_paths(root)


def _w1_paths(root: Path) -> dict[str, Path]:
    return {
        "image": root / "image.npy",
        "label": root / "label.npy",
        "parquet": root / "w1.parquet",
        "array_record": root / "w1.array_record",
    }


def _write_w1(paths: dict[str, Path], n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int32)
    np.save(paths["image"], images)
    np.save(paths["label"], labels)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 32 * 32 * 3)
    pq.write_table(pa.table({"image": flat, "label": labels}), paths["parquet"], row_group_size=1024)
    write_array_record(paths["array_record"], ({"image": images[i], "label": labels[i]} for i in range(n)))


def write_w4_files(root: Path, n: int) -> dict[str, Path]:
    """``n`` JPEGs (sides 160-320 px, quality 90) with labels, in ArrayRecord and Parquet (written once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if root.exists():
        return {"array_record": root / "w4.array_record", "parquet": root / "w4.parquet"}
    partial = Path(f"{root}.partial-{os.getpid()}")
    partial.mkdir(parents=True)
    paths = {"array_record": partial / "w4.array_record", "parquet": partial / "w4.parquet"}
    rng = np.random.default_rng(1)
    jpegs, labels = [], rng.integers(0, 10, size=n).astype(np.int32)
    for _ in range(n):
        h, w = (int(s) for s in rng.integers(160, 321, size=2))
        # Smooth gradients plus noise: compresses like a photograph, not like noise.
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1)
        image = np.clip(base + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    write_array_record(paths["array_record"], ({"jpeg": jpegs[i], "label": labels[i]} for i in range(n)))
    table = pa.table({"jpeg": pa.array(jpegs, type=pa.binary()), "label": labels})
    pq.write_table(table, paths["parquet"], row_group_size=256)
    partial.rename(root)  # atomic: a concurrent run never sees half-written files
    return {"array_record": root / "w4.array_record", "parquet": root / "w4.parquet"}


# -- the shared device transform ------------------------------------------------


@jax.jit
def flip_normalize(image, label, key):
    """Random horizontal flip (per row) and /255 on the device: what every W1F/W4 system runs last.

    A per-record select between the image and its mirror, the fastest flip on XLA:CPU measured by
    ``benchmarks.run`` (a ``take_along_axis`` with a per-row column index was 3-4x slower there).
    """
    coins = jax.random.bernoulli(key, 0.5, (image.shape[0],))
    flipped = jnp.where(coins[:, None, None, None], image[:, :, ::-1], image)
    return {"image": flipped.astype(jnp.float32) / 255.0, "label": label}


def _normalize(element, key):
    return {**element, "image": element["image"].astype(jnp.float32) / 255.0}


def _unflatten(element, key):
    return {**element, "image": element["image"].reshape(32, 32, 3)}


def device_stages(*, unflatten: bool = False) -> list:
    stages = [ElementOperator(ElementOperatorConfig(), fn=_unflatten)] if unflatten else []
    return [*stages, RandomFlip(RandomFlipConfig()), ElementOperator(ElementOperatorConfig(), fn=_normalize)]


# -- datarax --------------------------------------------------------------------


# A system is a factory: ``start() -> (stream, close)``, ``stream`` an endless
# iterator of device batches. Each timed round starts the system, runs a
# warm-up, times one epoch's worth of batches and closes it, so no system's
# workers are alive (and competing for the cores) while another is timed.
System = Callable[[], tuple[Iterator[Any], Callable[[], None]]]
WARMUP_BATCHES = 8


def datarax_system(build: Callable[[], Pipeline]) -> System:
    def start():
        iterator = iter(build())
        return iterator, iterator.close

    return start


def w1f_pipelines(paths: dict[str, Path], workers: int) -> dict[str, Callable[[], Pipeline]]:
    common = {"batch_size": BATCH, "rngs": nnx.Rngs(0), "shuffle": True, "drop_remainder": True, "num_epochs": None}
    npy = {"image": paths["image"], "label": paths["label"]}
    return {
        f"datarax .npy ({workers} threads)": lambda: Pipeline(
            source=NumpyFileSource(NumpyFileSourceConfig(), paths=npy),
            stages=device_stages(),
            workers=workers,
            **common,
        ),
        "datarax .npy (inline)": lambda: Pipeline(
            source=NumpyFileSource(NumpyFileSourceConfig(), paths=npy), stages=device_stages(), workers=0, **common
        ),
        f"datarax Parquet ({workers} threads)": lambda: Pipeline(
            source=ParquetSource(ParquetSourceConfig(cache_row_groups=PARQUET_CACHE), paths=paths["parquet"]),
            stages=device_stages(unflatten=True),
            workers=workers,
            **common,
        ),
        "datarax Parquet (inline)": lambda: Pipeline(
            source=ParquetSource(ParquetSourceConfig(cache_row_groups=PARQUET_CACHE), paths=paths["parquet"]),
            stages=device_stages(unflatten=True),
            workers=0,
            **common,
        ),
        f"datarax ArrayRecord ({workers} threads)": lambda: Pipeline(
            source=ArrayRecordSource(ArrayRecordSourceConfig(), paths=paths["array_record"]),
            stages=device_stages(),
            workers=workers,
            **common,
        ),
        "datarax ArrayRecord (inline)": lambda: Pipeline(
            source=ArrayRecordSource(ArrayRecordSourceConfig(), paths=paths["array_record"]),
            stages=device_stages(),
            workers=0,
            **common,
        ),
    }


def w4_host_stages() -> list:
    return [
        DecodeImage(DecodeImageConfig(field="jpeg")),
        HostRandomResizedCrop(HostRandomResizedCropConfig(field="jpeg", size=(CROP, CROP))),
    ]


def _rename(element, key):
    return {"image": element["jpeg"], "label": element["label"]}


def w4_pipelines(paths: dict[str, Path], workers: int) -> dict[str, Callable[[], Pipeline]]:
    common = {"batch_size": BATCH, "rngs": nnx.Rngs(0), "shuffle": True, "drop_remainder": True, "num_epochs": None}

    def build(source, **kw):
        stages = [ElementOperator(ElementOperatorConfig(), fn=_rename), *device_stages()]
        return Pipeline(source=source, host_stages=w4_host_stages(), stages=stages, workers=workers, **kw, **common)

    return {
        f"datarax ArrayRecord ({workers} threads)": lambda: build(
            ArrayRecordSource(ArrayRecordSourceConfig(), paths=paths["array_record"])
        ),
        f"datarax Parquet ({workers} threads)": lambda: build(
            ParquetSource(ParquetSourceConfig(cache_row_groups=PARQUET_CACHE), paths=paths["parquet"])
        ),
        f"datarax ArrayRecord ({workers} processes)": lambda: build(
            ArrayRecordSource(ArrayRecordSourceConfig(), paths=paths["array_record"]), worker_kind="process"
        ),
    }


# -- hand-written loops and peers -----------------------------------------------


def _epochs(make_epoch: Callable[[int], Iterator[Any]]) -> Iterator[Any]:
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def numpy_loops(paths: dict[str, Path]) -> dict[str, System]:
    """The two hand-written W1F loops over the .npy memmap (see the module docstring).

    Each start maps the files afresh, as each datarax start does: a new mapping's first touch of
    every page is a page fault (10-15 thousand per epoch here), which a mapping kept from round
    to round would no longer pay.
    """
    n = np.load(paths["label"], mmap_mode="r").shape[0]
    steps = n // BATCH

    def opened():
        return np.load(paths["image"], mmap_mode="r"), np.load(paths["label"], mmap_mode="r")

    def host_transform(images, labels, e: int):
        rng = np.random.default_rng(e)
        perm = rng.permutation(n)
        for t in range(steps):
            idx = np.sort(perm[t * BATCH : (t + 1) * BATCH])
            x = images[idx]
            flip = rng.random(BATCH) < 0.5
            x[flip] = x[flip, :, ::-1]
            yield jax.device_put({"image": x.astype(np.float32) * np.float32(1 / 255), "label": labels[idx]})

    def device_transform(images, labels, e: int):
        rng = np.random.default_rng(e)
        perm = rng.permutation(n)
        key = jax.random.key(e)
        for t in range(steps):
            idx = np.sort(perm[t * BATCH : (t + 1) * BATCH])
            yield flip_normalize(images[idx], labels[idx], jax.random.fold_in(key, t))

    return {
        "numpy loop: gather + numpy transform + device_put": lambda: (
            _epochs(functools.partial(host_transform, *opened())),
            lambda: None,
        ),
        "numpy loop: gather + device_put + jitted transform": lambda: (
            _epochs(functools.partial(device_transform, *opened())),
            lambda: None,
        ),
    }


def format_loops(paths: dict[str, Path]) -> dict[str, System]:
    """Hand-written W1F loops over the Parquet and ArrayRecord files, the strongest written for each format.

    Parquet: the whole table read into RAM at start (``pyarrow.parquet.read_table``; it fits), then the
    ``.npy`` loop's gather. ArrayRecord: the reader's own batched ``read`` of each batch's sorted indices
    (no read-ahead: the reads are random) and whole-column decoding of the records (``decode_batch``: the
    files are in datarax's record format). Both end with the same jitted flip and /255 as every system.
    """

    def parquet():
        import pyarrow.parquet as pq

        table = pq.read_table(paths["parquet"], columns=["image", "label"])
        images = table.column("image").combine_chunks().values.to_numpy().reshape(-1, 32, 32, 3)
        labels = table.column("label").to_numpy()
        n = len(labels)

        def make_epoch(e: int):
            perm = np.random.default_rng(e).permutation(n)
            for t in range(n // BATCH):
                idx = np.sort(perm[t * BATCH : (t + 1) * BATCH])
                yield images[idx], labels[idx]

        return _on_device(_epochs(make_epoch)), lambda: None

    def array_record():
        from datarax.sources.record_format import decode_batch

        reader = _open_reader(paths["array_record"])
        n = reader.num_records()

        def make_epoch(e: int):
            perm = np.random.default_rng(e).permutation(n)
            for t in range(n // BATCH):
                columns = decode_batch(reader.read(np.sort(perm[t * BATCH : (t + 1) * BATCH]).tolist()))
                yield columns["image"], columns["label"]

        return _on_device(_epochs(make_epoch)), reader.close

    return {
        "Parquet loop: table in RAM, gather + device_put + jitted transform": parquet,
        "ArrayRecord loop: reader.read + decode_batch + device_put + jitted transform": array_record,
    }


class _Decoder:
    """Decode + random-resized-crop of one encoded record, with the operators' own code (picklable)."""

    def __init__(self):
        self.decode = DecodeImage(DecodeImageConfig(field="jpeg"))
        self.crop = HostRandomResizedCrop(HostRandomResizedCropConfig(field="jpeg", size=(CROP, CROP)))

    def __call__(self, record: bytes, rng: np.random.Generator) -> tuple[np.ndarray, np.int32]:
        fields = decode_record(record)
        return self.image(fields["jpeg"], fields["label"], rng)

    def image(self, jpeg: bytes, label: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.int32]:
        """Decode + crop of one JPEG given as bytes (the W4H and W4T loaders read no ArrayRecord record)."""
        element = self.crop.apply(self.decode.apply({"jpeg": jpeg}, None), rng)
        return element["jpeg"], np.int32(label)


def _open_reader(path: Path):
    from array_record.python import array_record_module

    return array_record_module.ArrayRecordReader(str(path), "readahead_buffer_size:0")


def _on_device(batches: Iterator[tuple[Any, Any]]) -> Iterator[Any]:
    key = jax.random.key(0)
    for t, (image, label) in enumerate(batches):
        yield flip_normalize(image, label, jax.random.fold_in(key, t))


def thread_pool_loop(paths: dict[str, Path], n: int, workers: int) -> System:
    """A hand-written ``ThreadPoolExecutor`` loader: each batch read, decoded and stacked by one thread.

    Whole batches per task (a task per record measured 2.6x slower: per-task
    overhead and GIL hand-offs), ``2 * workers`` batches in flight ahead of the consumer.
    """
    decoder = _Decoder()
    steps = n // BATCH

    def start():
        reader = _open_reader(paths["array_record"])
        pool = concurrent.futures.ThreadPoolExecutor(workers)

        def load(idx: np.ndarray, e: int):
            records = reader.read([int(i) for i in idx])
            out = [decoder(r, np.random.default_rng(int(i) + e * n)) for r, i in zip(records, idx, strict=True)]
            return np.stack([o[0] for o in out]), np.array([o[1] for o in out])

        def make_epoch(e: int):
            perm = np.random.default_rng(e).permutation(n)
            pending = collections.deque()
            for t in range(steps):
                pending.append(pool.submit(load, perm[t * BATCH : (t + 1) * BATCH], e))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

        return _on_device(_epochs(make_epoch)), lambda: pool.shutdown(cancel_futures=True)

    return start


class _TorchRecords:
    """A map-style torch dataset over the ArrayRecord file; opens its reader lazily, once per worker."""

    def __init__(self, path: Path, n: int):
        self.path, self.n, self.reader, self.decoder = path, n, None, _Decoder()

    def __len__(self):
        return self.n

    def __getitem__(self, index: int):
        if self.reader is None:
            self.reader = _open_reader(self.path)
        record = self.reader.read([int(index)])[0]
        return self.decoder(record, np.random.default_rng(index))


def _stack_pairs(items):
    return np.stack([i[0] for i in items]), np.array([i[1] for i in items])


def torch_loader(paths: dict[str, Path], n: int, workers: int) -> System | None:
    """PyTorch's DataLoader over the ArrayRecord file: shuffle, batch 128, persistent spawned workers."""
    try:
        import torch
        from torch.utils.data import DataLoader
    except ImportError:
        return None

    def start():
        loader = DataLoader(
            _TorchRecords(paths["array_record"], n),
            batch_size=BATCH,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            collate_fn=_stack_pairs,
            generator=torch.Generator().manual_seed(0),
            persistent_workers=bool(workers),
            multiprocessing_context="spawn" if workers else None,
        )
        iterators = []

        def make_epoch(e: int):
            iterators.append(iter(loader))
            yield from iterators[-1]

        def close():
            for it in iterators:
                shutdown = getattr(it, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()

        return _on_device(_epochs(make_epoch)), close

    return start


if grain is not None:

    class _GrainDecode(grain.transforms.RandomMap):
        """Decode + crop with the generator Grain gives (module level: Grain's workers pickle it)."""

        def __init__(self):
            self.decoder = _Decoder()

        def random_map(self, record, rng):
            return self.decoder(record, rng)

    class _GrainDecodeFields(grain.transforms.RandomMap):
        """Decode + crop of a record that ``tfds.data_source`` read: ``{"jpeg": bytes, "label": int}``."""

        def __init__(self):
            self.decoder = _Decoder()

        def random_map(self, record, rng):
            return self.decoder.image(record["jpeg"], record["label"], rng)


def grain_loaders(paths: dict[str, Path], n: int, workers: int) -> dict[str, System]:
    """Grain's DataLoader (0 and ``workers`` workers) and MapDataset + ``mp_prefetch``."""
    if grain is None:
        return {}
    _parse_absl_flags()

    def data_loader(worker_count: int) -> System:
        def start():
            loader = grain.DataLoader(
                data_source=grain.sources.ArrayRecordDataSource([str(paths["array_record"])]),
                sampler=grain.samplers.IndexSampler(n, shuffle=True, num_epochs=None, seed=0),
                operations=[_GrainDecode(), grain.transforms.Batch(BATCH, drop_remainder=True)],
                worker_count=worker_count,
            )
            iterator = iter(loader)
            return _on_device(iterator), lambda: _close_grain(iterator)

        return start

    def mp_prefetch(worker_count: int) -> System:
        def start():
            dataset = (
                grain.MapDataset.source(grain.sources.ArrayRecordDataSource([str(paths["array_record"])]))
                .shuffle(seed=0)
                .repeat()
                .random_map(_GrainDecode(), seed=0)
                .batch(BATCH, drop_remainder=True)
                .to_iter_dataset()
                .mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
            )
            iterator = iter(dataset)
            return _on_device(iterator), lambda: _close_grain(iterator)

        return start

    return {
        "grain DataLoader (0 workers)": data_loader(0),
        f"grain DataLoader ({workers} workers)": data_loader(workers),
        f"grain MapDataset + mp_prefetch ({workers} workers)": mp_prefetch(workers),
    }


def _parse_absl_flags() -> None:
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain reads absl flags, which a plain script never parses
        flags.FLAGS.mark_as_parsed()


def _close_grain(iterator: Any) -> None:
    close = getattr(iterator, "close", None) or getattr(iterator, "__del__", None)
    if close is not None:
        close()


# -- measuring -------------------------------------------------------------------


class ResourceMonitor:
    """CPU seconds and peak RSS of this process and its children while ``with`` is active."""

    def __init__(self):
        import psutil

        self.process = psutil.Process()
        self.peak = 0
        self.cpu = 0.0

    def _family(self):
        try:
            return [self.process, *self.process.children(recursive=True)]
        except Exception:  # noqa: BLE001 - a child that just exited
            return [self.process]

    def _cpu(self) -> float:
        total = 0.0
        for p in self._family():
            with contextlib.suppress(Exception):  # a child that just exited
                times = p.cpu_times()
                total += times.user + times.system
        return total

    def _sample(self):
        while not self._stop.wait(0.02):
            rss = 0
            for p in self._family():
                with contextlib.suppress(Exception):  # a child that just exited
                    rss += p.memory_info().rss
            self.peak = max(self.peak, rss)

    def __enter__(self):
        self._stop = threading.Event()
        self._start_cpu = self._cpu()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.cpu += self._cpu() - self._start_cpu  # measured before the system's workers are closed
        self._stop.set()
        self._thread.join()


def measure(systems: dict[str, System], *, repeats: int, steps: int) -> list[dict]:
    """Each round starts every system in turn, warms it up, times ``steps`` batches, closes it; medians."""
    times = {name: [] for name in systems}
    first = {name: [] for name in systems}
    usage = {name: [0.0, 0.0, 0] for name in systems}  # cpu s, wall s, peak rss
    for _ in range(repeats):
        for name, start_system in systems.items():
            begin = time.perf_counter()
            stream, close = start_system()
            try:
                jax.block_until_ready(next(stream))
                first[name].append(time.perf_counter() - begin)
                consume(next(stream) for _ in range(WARMUP_BATCHES))
                with ResourceMonitor() as monitor:
                    seconds = consume(next(stream) for _ in range(steps))
            finally:
                close()
                # Nothing of this system (a table held in RAM, say) may count in the next one's peak RSS.
                del stream
                gc.collect()
                if "pyarrow" in sys.modules:  # Arrow's allocator keeps freed memory unless told
                    sys.modules["pyarrow"].default_memory_pool().release_unused()
            times[name].append(seconds)
            usage[name][0] += monitor.cpu
            usage[name][1] += seconds
            usage[name][2] = max(usage[name][2], monitor.peak)
    cores = len(os.sched_getaffinity(0))
    rows = []
    for name, t in times.items():
        cpu, wall, peak = usage[name]
        rows.append(
            {
                "system": name,
                "median": statistics.median(t),
                "elements/s": steps * BATCH / statistics.median(t),
                "cpu": cpu / wall / cores,
                "peak_rss_mb": peak / 2**20,
                "ttfb": statistics.median(first[name]),
            }
        )
    return rows


def render(title: str, rows: list[dict], reference: str) -> str:
    ref = next(r["median"] for r in rows if r["system"] == reference)
    lines = [
        f"\n**{title}** (batch {BATCH}; reference = {reference})\n",
        "| system | el/s | throughput ÷ reference | CPU use | peak RSS (self + workers) | first batch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in sorted(rows, key=lambda r: r["median"]):
        lines.append(
            f"| {row['system']} | {row['elements/s']:,.0f} | {ref / row['median']:.2f}x | {100 * row['cpu']:.0f}% | "
            f"{row['peak_rss_mb']:,.0f} MB | {row['ttfb']:.2f} s |"
        )
    return "\n".join(lines)


def run_w1f(root: Path, scale: float, repeats: int, workers: int) -> str:
    n = int(50_000 * scale)
    paths = write_w1_files(root / f"w1f-{n}", n)
    systems = {name: datarax_system(build) for name, build in w1f_pipelines(paths, workers).items()}
    systems.update(numpy_loops(paths))
    systems.update(format_loops(paths))
    rows = measure(systems, repeats=repeats, steps=n // BATCH)
    reference = min((r for r in rows if r["system"].startswith("numpy loop")), key=lambda r: r["median"])["system"]
    table = render(f"W1F: {n:,} x 32x32x3 uint8 from files", rows, reference)
    return table + "\n\n" + same_format_ratios(rows)


def same_format_ratios(rows: list[dict]) -> str:
    """Each format's fastest datarax row against the hand-written loop reading the same files."""
    lines = ["| format | fastest datarax ÷ hand-written loop on the same files |", "| --- | --- |"]
    for label, prefix, loop in (
        (".npy", "datarax .npy", "numpy loop"),
        ("Parquet", "datarax Parquet", "Parquet loop"),
        ("ArrayRecord", "datarax ArrayRecord", "ArrayRecord loop"),
    ):
        ours = min((r for r in rows if r["system"].startswith(prefix)), key=lambda r: r["median"])
        theirs = min((r for r in rows if r["system"].startswith(loop)), key=lambda r: r["median"])
        lines.append(f"| {label} | {theirs['median'] / ours['median']:.2f}x ({ours['system']}) |")
    return "\n".join(lines)


def run_w4(root: Path, scale: float, repeats: int, workers: int) -> str:
    n = int(20_000 * scale)
    paths = write_w4_files(root / f"w4-{n}", n)
    systems = {name: datarax_system(build) for name, build in w4_pipelines(paths, workers).items()}
    systems[f"ThreadPoolExecutor loop ({workers} threads)"] = thread_pool_loop(paths, n, workers)
    for count in (0, workers):
        loader = torch_loader(paths, n, count)
        if loader is not None:
            systems[f"torch DataLoader ({count} workers)"] = loader
    systems.update(grain_loaders(paths, n, workers))
    rows = measure(systems, repeats=repeats, steps=n // BATCH)
    peers = [r for r in rows if not r["system"].startswith("datarax")]
    reference = min(peers, key=lambda r: r["median"])["system"]
    return render(f"W4: {n:,} JPEGs (160-320 px) -> decode + random-resized-crop 128", rows, reference)


def write_w1_hf(root: Path, n: int) -> Path:
    """The W1 images and labels as a Hugging Face dataset saved with ``save_to_disk`` (written once)."""
    import datasets

    if root.exists():
        return root
    partial = Path(f"{root}.partial-{os.getpid()}")
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Array3D((32, 32, 3), "uint8"), "label": datasets.Value("int32")})
    data = {
        "image": rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, size=n).astype(np.int32),
    }
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(partial))
    partial.rename(root)  # atomic: a concurrent run never sees half-written files
    return root


def hf_loaders(path: Path) -> dict[str, System]:
    """Hugging Face's own batched iteration of the saved dataset (shuffled per epoch), numpy and jax formats."""
    import datasets

    def loader(kind: str) -> System:
        def start():
            dataset = datasets.load_from_disk(str(path))

            def make_epoch(e: int):
                shuffled = dataset.shuffle(seed=e).with_format(kind)
                for batch in shuffled.iter(batch_size=BATCH, drop_last_batch=True):
                    yield batch["image"], batch["label"]

            return _on_device(_epochs(make_epoch)), lambda: None

        return start

    return {
        'HF datasets: .with_format("numpy").iter(128)': loader("numpy"),
        'HF datasets: .with_format("jax").iter(128)': loader("jax"),
    }


def run_w1h(root: Path, scale: float, repeats: int, workers: int) -> str:
    n = int(50_000 * scale)
    path = write_w1_hf(root / f"w1h-{n}", n)
    common = {"batch_size": BATCH, "rngs": nnx.Rngs(0), "shuffle": True, "drop_remainder": True, "num_epochs": None}
    systems = {
        f"datarax HFSource ({workers} threads)": datarax_system(
            lambda: Pipeline(
                source=HFSource(HFSourceConfig(), path=path), stages=device_stages(), workers=workers, **common
            )
        ),
        "datarax HFSource (inline)": datarax_system(
            lambda: Pipeline(source=HFSource(HFSourceConfig(), path=path), stages=device_stages(), workers=0, **common)
        ),
        f"datarax HFSource ({workers} processes)": datarax_system(
            lambda: Pipeline(
                source=HFSource(HFSourceConfig(), path=path),
                stages=device_stages(),
                workers=workers,
                worker_kind="process",
                **common,
            )
        ),
    }
    systems.update(hf_loaders(path))
    rows = measure(systems, repeats=repeats, steps=n // BATCH)
    peers = [r for r in rows if not r["system"].startswith("datarax")]
    reference = min(peers, key=lambda r: r["median"])["system"]
    return render(f"W1H: {n:,} x 32x32x3 uint8 from a saved Hugging Face dataset", rows, reference)


# -- TFDS and Hugging Face datasets of W1 and W4 (W1T, W4H, W4T) -----------------

W1T_NAME = "datarax_w1"
W4T_NAME = "datarax_w4"


def _w1_arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The W1 images and labels, the same ones ``_write_w1`` and ``write_w1_hf`` store."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.int32)


def _w4_jpegs(root: Path, n: int) -> tuple[list[bytes], np.ndarray]:
    """W4's JPEGs and labels, as ``write_w4_files`` generated them (read back from its Parquet file)."""
    import pyarrow.parquet as pq

    table = pq.read_table(write_w4_files(root / f"w4-{n}", n)["parquet"])
    return table.column("jpeg").to_pylist(), table.column("label").to_numpy().astype(np.int32)


def _prepare_tfds(
    root: Path, dataset_name: str, features: Callable[[Any], Any], examples: Callable[[], Iterator[tuple[int, dict]]]
) -> Path:
    """Prepares a one-split TFDS dataset as ArrayRecord under ``root`` (once) with a builder defined here.

    ``features(tfds.features)`` gives the ``FeaturesDict``; ``examples()`` yields ``(key, example)``.
    Nothing is downloaded, and no feature needs TensorFlow to encode (tensors, class labels, images
    given as encoded bytes). The dataset is read from ``{root}/{dataset_name}/1.0.0``.
    """
    import tensorflow_datasets as tfds

    if root.exists():
        return root

    class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = dataset_name
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=features(tfds.features))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield from examples()

    partial = Path(f"{root}.partial-{os.getpid()}")
    tfds.disable_progress_bar()
    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its progress; stdout is the results
        Builder(data_dir=str(partial), file_format="array_record").download_and_prepare()
    partial.rename(root)  # atomic: a concurrent run never sees half-written files
    return root


def write_w1_tfds(root: Path, n: int) -> Path:
    """The W1 images (a ``Tensor`` feature, uint8[32,32,3]) and labels (``ClassLabel``) as a TFDS dataset."""
    images, labels = _w1_arrays(n)
    return _prepare_tfds(
        root,
        W1T_NAME,
        lambda f: f.FeaturesDict(
            {"image": f.Tensor(shape=(32, 32, 3), dtype=np.uint8), "label": f.ClassLabel(num_classes=10)}
        ),
        lambda: ((i, {"image": images[i], "label": int(labels[i])}) for i in range(n)),
    )


def write_w4_tfds(root: Path, n: int) -> Path:
    """W4's JPEGs as a TFDS dataset: an ``Image`` feature stored as the JPEG bytes given (not re-encoded)."""
    path = root / f"w4t-{n}"
    if path.exists():
        return path
    jpegs, labels = _w4_jpegs(root, n)
    return _prepare_tfds(
        path,
        W4T_NAME,
        lambda f: f.FeaturesDict(
            {"jpeg": f.Image(shape=(None, None, 3), encoding_format="jpeg"), "label": f.ClassLabel(num_classes=10)}
        ),
        lambda: ((i, {"jpeg": jpegs[i], "label": int(labels[i])}) for i in range(n)),
    )


def write_w4_hf(root: Path, n: int) -> Path:
    """W4's JPEGs as a Hugging Face dataset with an ``Image`` feature (the bytes embedded), ``save_to_disk``."""
    import datasets

    path = root / f"w4h-{n}"
    if path.exists():
        return path
    jpegs, labels = _w4_jpegs(root, n)
    features = datasets.Features({"jpeg": datasets.Image(), "label": datasets.Value("int32")})
    data = {"jpeg": [{"bytes": jpeg, "path": None} for jpeg in jpegs], "label": labels}
    partial = Path(f"{path}.partial-{os.getpid()}")
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(partial))
    partial.rename(path)  # atomic: a concurrent run never sees half-written files
    return path


def _tfds_data_source(path: Path, dataset_name: str, **kwargs):
    import tensorflow_datasets as tfds

    return tfds.data_source(dataset_name, data_dir=str(path), split="train", **kwargs)


def tfds_grain_w1(path: Path, workers: int) -> dict[str, System]:
    """TFDS's own loader for W1T: ``tfds.data_source`` in Grain's ``MapDataset``, shuffled per epoch, batched.

    The batch is a Grain map step, so each batch is read as one unit; iterated with no read threads
    (on 2 cores the default 16 prefetch threads measured 1.7x slower, Grain's ``DataLoader`` with an
    ``IndexSampler`` 3.5x slower), and with ``mp_prefetch`` worker processes.
    """
    if grain is None:
        return {}
    _parse_absl_flags()

    def dataset():
        return (
            grain.MapDataset.source(_tfds_data_source(path, W1T_NAME))
            .shuffle(seed=0)
            .repeat()
            .batch(BATCH, drop_remainder=True)
            .to_iter_dataset(grain.ReadOptions(num_threads=0))
        )

    def inline() -> tuple[Iterator[Any], Callable[[], None]]:
        iterator = iter(dataset())
        return _on_device((b["image"], b["label"]) for b in iterator), lambda: _close_grain(iterator)

    def processes() -> tuple[Iterator[Any], Callable[[], None]]:
        iterator = iter(dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)))
        return _on_device((b["image"], b["label"]) for b in iterator), lambda: _close_grain(iterator)

    return {
        "tfds.data_source + grain MapDataset .shuffle().batch(128) (inline)": inline,
        f"tfds.data_source + grain MapDataset .shuffle().batch(128) + mp_prefetch ({workers} workers)": processes,
    }


def tfds_grain_w4(path: Path, workers: int) -> dict[str, System]:
    """TFDS's own loader for W4T: ``tfds.data_source`` (images left encoded) in Grain, decode + crop as a map.

    ``MapDataset.source(...).shuffle().repeat().random_map(decode + crop).batch(128)``, run by Grain's
    read threads (``ReadOptions(num_threads=workers)``) or by ``mp_prefetch`` worker processes.
    """
    if grain is None:
        return {}
    import tensorflow_datasets as tfds

    _parse_absl_flags()

    def dataset():
        source = _tfds_data_source(path, W4T_NAME, decoders={"jpeg": tfds.decode.SkipDecoding()})
        return (
            grain.MapDataset.source(source)
            .shuffle(seed=0)
            .repeat()
            .random_map(_GrainDecodeFields(), seed=0)
            .batch(BATCH, drop_remainder=True)
        )

    def threads() -> tuple[Iterator[Any], Callable[[], None]]:
        iterator = iter(dataset().to_iter_dataset(grain.ReadOptions(num_threads=workers)))
        return _on_device(iterator), lambda: _close_grain(iterator)

    def processes() -> tuple[Iterator[Any], Callable[[], None]]:
        options = grain.MultiprocessingOptions(num_workers=workers)
        iterator = iter(dataset().to_iter_dataset().mp_prefetch(options))
        return _on_device(iterator), lambda: _close_grain(iterator)

    return {
        f"tfds.data_source + grain MapDataset .random_map() ({workers} read threads)": threads,
        f"tfds.data_source + grain MapDataset .random_map() + mp_prefetch ({workers} workers)": processes,
    }


def hf_jpeg_loaders(path: Path, workers: int) -> dict[str, System]:
    """Hugging Face's own loader for W4H: ``Dataset.shuffle(seed=epoch).iter(batch_size=128)``, then decode.

    The default (Python) format, with the ``Image`` column cast to ``Image(decode=False)`` so a batch
    holds the JPEG bytes, decoded and cropped with the operators' code (what datarax runs): on the
    iterating thread, or a whole batch per task in a ``ThreadPoolExecutor`` with ``2 * workers``
    batches in flight (as ``thread_pool_loop``).
    """
    import datasets

    decoder = _Decoder()

    def load(batch: dict[str, list], e: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((e, t))
        return _stack_pairs(
            [decoder.image(image["bytes"], label, rng) for image, label in zip(batch["jpeg"], batch["label"])]
        )

    def loader(pool_size: int) -> System:
        def start():
            dataset = datasets.load_from_disk(str(path)).cast_column("jpeg", datasets.Image(decode=False))
            pool = concurrent.futures.ThreadPoolExecutor(pool_size) if pool_size else None

            def make_epoch(e: int):
                batches = dataset.shuffle(seed=e).iter(batch_size=BATCH, drop_last_batch=True)
                if pool is None:
                    yield from (load(batch, e, t) for t, batch in enumerate(batches))
                    return
                pending = collections.deque()
                for t, batch in enumerate(batches):
                    pending.append(pool.submit(load, batch, e, t))
                    if len(pending) > 2 * pool_size:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()

            close = (lambda: None) if pool is None else (lambda: pool.shutdown(cancel_futures=True))
            return _on_device(_epochs(make_epoch)), close

        return start

    return {
        "HF datasets: .shuffle().iter(128), decode inline": loader(0),
        f"HF datasets: .shuffle().iter(128), decode in ThreadPoolExecutor ({workers} threads)": loader(workers),
    }


def _reference(rows: list[dict]) -> str:
    """The fastest system that is not datarax: the denominator of the ratios."""
    peers = [r for r in rows if not r["system"].startswith("datarax")]
    if not peers:
        raise RuntimeError("no peer loader to compare with: Grain is missing (pip install 'datarax[bench]')")
    return min(peers, key=lambda r: r["median"])["system"]


def run_w1t(root: Path, scale: float, repeats: int, workers: int) -> str:
    n = int(50_000 * scale)
    path = write_w1_tfds(root / f"w1t-{n}", n)
    common = {"batch_size": BATCH, "rngs": nnx.Rngs(0), "shuffle": True, "drop_remainder": True, "num_epochs": None}

    def build(**kw) -> Callable[[], Pipeline]:
        return lambda: Pipeline(
            source=TFDSSource(TFDSSourceConfig(), dataset_name=W1T_NAME, data_dir=path),
            stages=device_stages(),
            **kw,
            **common,
        )

    systems = {
        f"datarax TFDSSource ({workers} threads)": datarax_system(build(workers=workers)),
        "datarax TFDSSource (inline)": datarax_system(build(workers=0)),
        f"datarax TFDSSource ({workers} processes)": datarax_system(build(workers=workers, worker_kind="process")),
    }
    systems.update(tfds_grain_w1(path, workers))
    rows = measure(systems, repeats=repeats, steps=n // BATCH)
    return render(f"W1T: {n:,} x 32x32x3 uint8 from a TFDS dataset (ArrayRecord)", rows, _reference(rows))


def _w4_pipeline(source_factory: Callable[[], Any], workers: int, **kw) -> Callable[[], Pipeline]:
    """W4's datarax pipeline (host decode + crop, device rename + flip + /255) over another source."""
    common = {"batch_size": BATCH, "rngs": nnx.Rngs(0), "shuffle": True, "drop_remainder": True, "num_epochs": None}
    stages = [ElementOperator(ElementOperatorConfig(), fn=_rename), *device_stages()]
    return lambda: Pipeline(
        source=source_factory(), host_stages=w4_host_stages(), stages=stages, workers=workers, **kw, **common
    )


def run_w4h(root: Path, scale: float, repeats: int, workers: int) -> str:
    n = int(20_000 * scale)
    path = write_w4_hf(root, n)

    def source():
        return HFSource(HFSourceConfig(), path=path)

    systems = {
        f"datarax HFSource ({workers} threads)": datarax_system(_w4_pipeline(source, workers)),
        f"datarax HFSource ({workers} processes)": datarax_system(_w4_pipeline(source, workers, worker_kind="process")),
    }
    systems.update(hf_jpeg_loaders(path, workers))
    rows = measure(systems, repeats=repeats, steps=n // BATCH)
    title = f"W4H: {n:,} JPEGs (160-320 px) from a saved Hugging Face dataset -> decode + random-resized-crop 128"
    return render(title, rows, _reference(rows))


def run_w4t(root: Path, scale: float, repeats: int, workers: int) -> str:
    n = int(20_000 * scale)
    path = write_w4_tfds(root, n)

    def source():
        return TFDSSource(TFDSSourceConfig(), dataset_name=W4T_NAME, data_dir=path)

    systems = {
        f"datarax TFDSSource ({workers} threads)": datarax_system(_w4_pipeline(source, workers)),
        f"datarax TFDSSource ({workers} processes)": datarax_system(
            _w4_pipeline(source, workers, worker_kind="process")
        ),
    }
    systems.update(tfds_grain_w4(path, workers))
    rows = measure(systems, repeats=repeats, steps=n // BATCH)
    title = f"W4T: {n:,} JPEGs (160-320 px) from a TFDS dataset (ArrayRecord) -> decode + random-resized-crop 128"
    return render(title, rows, _reference(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads", nargs="+", default=["W1F", "W4"], choices=["W1F", "W4", "W1H", "W1T", "W4H", "W4T"]
    )
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the records to use")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per system (>= 3)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="workers for every loader")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "datarax-bench")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (medians of fewer runs mean little on a noisy machine)")
    header = (
        f"host-file benchmark: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"jax {jax.__version__} ({jax.default_backend()}), scale {args.scale}, repeats {args.repeats}, "
        f"workers {args.workers}"
    )
    parts = [header]
    if "W1F" in args.workloads:
        parts.append(run_w1f(args.data_dir, args.scale, args.repeats, args.workers))
    if "W1H" in args.workloads:
        parts.append(run_w1h(args.data_dir, args.scale, args.repeats, args.workers))
    if "W4" in args.workloads:
        parts.append(run_w4(args.data_dir, args.scale, args.repeats, args.workers))
    if "W1T" in args.workloads:
        parts.append(run_w1t(args.data_dir, args.scale, args.repeats, args.workers))
    if "W4H" in args.workloads:
        parts.append(run_w4h(args.data_dir, args.scale, args.repeats, args.workers))
    if "W4T" in args.workloads:
        parts.append(run_w4t(args.data_dir, args.scale, args.repeats, args.workers))
    text = "\n".join(parts)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Soak: many epochs of a realistic pipeline with checkpoints and restarts; nothing lost, leaked or grown.

The pipeline reads ``.npy`` files (a host source) with a stochastic host operator on 2 worker
threads, then a random flip and brightness on the device, shuffled, with the last batch of each
epoch padded. The loop saves the iterator with ``OrbaxCheckpointHandler`` every few batches and,
every few saves, "restarts": it drops the batches served since the last save (work a crashed job
loses), builds a new pipeline, restores the checkpoint and goes on. Checked:

* every epoch serves every record exactly once (valid rows, across the restarts);
* the batches replayed after a restore are bit for bit those that were dropped;
* no thread is left behind (``threading.active_count`` returns to its value before the run);
* the process's resident memory (``/proc/self/statm``) grows by less than a bound after warm-up.

The short run (20 epochs of 120 records) is part of the test suite; the long one (200 epochs of
1,208 records, about 15,000 batches) runs with
``pytest tests/reliability/test_soak.py --soak -n 0`` and prints its figures.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from datarax import OrbaxCheckpointHandler, Pipeline
from datarax.operators import (
    HostMapOperator,
    HostMapOperatorConfig,
    RandomBrightness,
    RandomBrightnessConfig,
    RandomFlip,
    RandomFlipConfig,
)
from datarax.sources import NumpyFileSource, NumpyFileSourceConfig

RECORDS, BATCH = 120, 16  # 8 batches an epoch, the last padded (8 valid rows)
LONG_RECORDS = 1208  # the long run: 76 batches an epoch, the last padded
SAVE_EVERY, RESTART_EVERY = 5, 4  # batches between saves; saves between restarts
WARM_UP_EPOCHS = 3
RSS_BOUND = 64 * 2**20  # bytes of resident memory the run may gain after warm-up
_STATM = Path("/proc/self/statm")


def _rss() -> int:
    return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _jitter(element, rng):
    return {**element, "image": element["image"] + np.float32(rng.normal(0, 0.01))}


def _write_files(directory: Path, records: int) -> dict[str, str]:
    rng = np.random.default_rng(0)
    arrays = {
        "image": rng.random((records, 8, 8, 3), dtype=np.float32),
        "label": np.arange(records, dtype=np.int32),
    }
    paths = {}
    for name, array in arrays.items():
        paths[name] = str(directory / f"{name}.npy")
        np.save(paths[name], array)
    return paths


def _build(paths: dict[str, str]) -> Pipeline:
    return Pipeline(
        source=NumpyFileSource(NumpyFileSourceConfig(), paths=paths),
        host_stages=[HostMapOperator(HostMapOperatorConfig(stochastic=True, stream_name="jitter"), fn=_jitter)],
        stages=[RandomFlip(RandomFlipConfig()), RandomBrightness(RandomBrightnessConfig(magnitude=0.2))],
        batch_size=BATCH,
        rngs=nnx.Rngs(0),
        shuffle=True,
        num_epochs=None,
        workers=2,
    )


@dataclass
class SoakFigures:
    epochs: int
    records: int
    batches: int = 0
    saves: int = 0
    restarts: int = 0
    replayed: int = 0
    seconds: float = 0.0
    rss_after_warm_up: int = 0
    rss_at_end: int = 0
    rss_peak: int = 0
    threads_before: int = 0
    threads_after: int = 0
    rss_by_epoch: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        mib = 2**20
        return (
            f"{self.epochs} epochs of {self.records} records, {self.batches} batches, {self.saves} checkpoints, "
            f"{self.restarts} restarts "
            f"({self.replayed} batches replayed) in {self.seconds:.1f} s; RSS after warm-up "
            f"{self.rss_after_warm_up / mib:.1f} MiB, at the end {self.rss_at_end / mib:.1f} MiB "
            f"(growth {(self.rss_at_end - self.rss_after_warm_up) / mib:+.1f} MiB, peak "
            f"{self.rss_peak / mib:.1f} MiB); threads {self.threads_before} before, {self.threads_after} after"
        )


def _wait_for_threads(limit: int) -> int:
    deadline = time.monotonic() + 30  # bounded: pools stop their threads when closed
    while threading.active_count() > limit and time.monotonic() < deadline:
        time.sleep(0.05)
    return threading.active_count()


def soak(tmp_path: Path, epochs: int, records: int = RECORDS) -> SoakFigures:
    paths = _write_files(tmp_path, records)
    figures = SoakFigures(epochs=epochs, records=records, threads_before=threading.active_count())
    started = time.monotonic()
    iterator = iter(_build(paths))
    since_save: list[dict[str, np.ndarray]] = []  # batches served after the last checkpoint
    epoch_labels: list[int] = []
    saves_since_restart = 0
    with OrbaxCheckpointHandler(tmp_path / "checkpoints", max_to_keep=2) as handler:
        for epoch in range(epochs):
            while len(epoch_labels) < records:
                batch = {k: np.asarray(v) for k, v in next(iterator).items()}
                figures.batches += 1
                since_save.append(batch)
                epoch_labels += batch["label"][batch["valid_mask"]].tolist()
                if figures.batches % SAVE_EVERY == 0:
                    handler.save(figures.batches, {"data": iterator})
                    figures.saves += 1
                    saves_since_restart += 1
                    since_save = []
                elif saves_since_restart == RESTART_EVERY and len(since_save) == 2:
                    # A crash two batches after a save: those two are lost and served again after the restore.
                    iterator.close()
                    iterator = iter(_build(paths))
                    handler.restore({"data": iterator})
                    for lost in since_save:
                        again = {k: np.asarray(v) for k, v in next(iterator).items()}
                        assert all(again[k].tobytes() == lost[k].tobytes() for k in lost), "a replay differs"
                    figures.restarts += 1
                    figures.replayed += len(since_save)
                    saves_since_restart = 0
            assert sorted(epoch_labels) == list(range(records)), f"epoch {epoch}: a record lost or repeated"
            epoch_labels = []
            rss = _rss()
            figures.rss_by_epoch.append(rss)
            figures.rss_peak = max(figures.rss_peak, rss)
            if epoch == WARM_UP_EPOCHS - 1:
                figures.rss_after_warm_up = rss
    iterator.close()
    del iterator
    figures.seconds = time.monotonic() - started
    figures.rss_at_end = figures.rss_by_epoch[-1]
    figures.threads_after = _wait_for_threads(figures.threads_before)
    return figures


def _check(figures: SoakFigures) -> None:
    assert figures.threads_after <= figures.threads_before, f"threads leaked: {figures}"
    growth = figures.rss_at_end - figures.rss_after_warm_up
    assert growth < RSS_BOUND, f"resident memory grew by {growth / 2**20:.1f} MiB after warm-up: {figures}"
    assert figures.restarts >= 1 and figures.saves >= figures.restarts


@pytest.mark.skipif(not _STATM.exists(), reason="reads resident memory from /proc/self/statm (Linux)")
def test_soak_short(tmp_path):
    figures = soak(tmp_path, epochs=20)
    _check(figures)
    print(figures)


@pytest.mark.skipif(not _STATM.exists(), reason="reads resident memory from /proc/self/statm (Linux)")
def test_soak_long(tmp_path, soak_requested):
    if not soak_requested:
        pytest.skip(
            "the long soak (200 epochs, ~15,000 batches) runs with: "
            "pytest tests/reliability/test_soak.py --soak -n 0 -s"
        )
    figures = soak(tmp_path, epochs=200, records=LONG_RECORDS)
    _check(figures)
    # The second half must not grow faster than the first: no slow leak hidden under the bound.
    middle = figures.rss_by_epoch[len(figures.rss_by_epoch) // 2]
    assert figures.rss_at_end - middle < RSS_BOUND / 2, figures
    print(figures)

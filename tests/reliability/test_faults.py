"""Faults, bounded: a process killed while it writes checkpoints, a data file deleted mid-epoch.

What other tests already cover, and is not repeated here:

* a worker process killed mid-epoch: ``tests/pipeline/test_host_stage.py::
  test_a_killed_worker_stops_the_stream_and_the_last_state_resumes_with_new_workers``;
* a host operator or read that fails, then is fixed: ``tests/pipeline/test_host_stage.py::
  test_an_operator_failure_names_the_record_and_the_stream_resumes_after_the_fix``;
* a ``.npy`` file truncated after the source was built: ``tests/sources/test_numpy_file_source.py::
  test_file_truncated_after_construction_fails_reading_naming_it`` (and ``test_bad_input.py``);
* damaged checkpoint files: ``tests/checkpoint/test_handlers.py`` and ``test_bad_input.py``.

Waits are bounded (generous, for shared CI machines); nothing here asserts a speed.
"""

from __future__ import annotations

import json
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import reliability_builders as builders

from datarax import OrbaxCheckpointHandler
from datarax.pipeline import HostStageError

HERE = Path(__file__).resolve().parent
RECORDS = 19  # builders.write_numpy_files' default
BATCHES_PER_EPOCH = 5  # batches of 4, the fifth padded
BOUND = 60.0  # seconds: the longest any wait here may take


@pytest.fixture
def numpy_files(tmp_path, monkeypatch):
    directory = tmp_path / "data"
    directory.mkdir()
    builders.write_numpy_files(directory, n=RECORDS)
    monkeypatch.setenv(builders.DATA_ENV, str(directory))
    return directory


def _valid_labels(batch) -> list[int]:
    return np.asarray(batch["label"])[np.asarray(batch["valid_mask"])].tolist()


# -- SIGKILL while writing checkpoints --------------------------------------------------------------

_WRITER = (
    "import sys\n"
    f"sys.path.insert(0, {str(HERE)!r})\n"
    "import reliability_builders\n"
    "reliability_builders.write_checkpoints_until_killed(sys.argv[1], sys.argv[2])\n"
)


def _run_until_killed(checkpoints: Path, log: Path, delay: float) -> None:
    """Starts the writer, waits for its first save, lets it run ``delay`` seconds more, then SIGKILLs it."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(checkpoints), str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([writer.stdout], [], [], BOUND)
        line = writer.stdout.readline() if ready else ""
        if not line.startswith("READY"):
            writer.kill()
            raise AssertionError(f"the writer did not start within {BOUND} s: {line!r} {writer.stderr.read()[-3000:]}")
        time.sleep(delay)
        assert writer.poll() is None, writer.stderr.read()[-3000:]
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=BOUND)
        writer.stdout.close()
        writer.stderr.close()
    assert writer.returncode == -signal.SIGKILL


def test_sigkill_while_saving_checkpoints_loses_and_repeats_nothing(numpy_files, tmp_path):
    """A loop saving the iterator after every batch is SIGKILLed four times, at random points of its saves.

    Each restart resumes from the last complete checkpoint. In the end, the batches trained on
    before each last complete checkpoint, followed by the stream the final checkpoint restores,
    hold every record exactly once per epoch; and every batch trained on (those redone after a
    restart included) is the batch the uninterrupted stream has at that index.
    """
    checkpoints, log = tmp_path / "checkpoints", tmp_path / "trained.jsonl"
    delays = random.Random(13).sample([0.05, 0.2, 0.35, 0.5, 0.7, 0.9], 4)
    latest, interrupted = [], []
    for delay in delays:
        _run_until_killed(checkpoints, log, delay)
        # A step being written when the kill came is left as a temporary directory, never as a step.
        interrupted.append(len(list(checkpoints.glob("*.orbax-checkpoint-tmp*"))))
        with OrbaxCheckpointHandler(checkpoints) as handler:
            latest.append(handler.latest_step())
    assert all(step is not None for step in latest) and latest == sorted(latest), latest
    # The writer's next start clears what the kills left half-written, and keeps every step.
    with OrbaxCheckpointHandler(checkpoints) as handler:
        steps = handler.all_steps()
    with OrbaxCheckpointHandler(checkpoints, remove_interrupted_saves=True) as handler:
        assert handler.all_steps() == steps and handler.latest_step() == latest[-1]
    assert not list(checkpoints.glob("*.orbax-checkpoint-tmp*"))

    # The uninterrupted stream, long enough to cover everything the writers trained on.
    trained: dict[int, list[int]] = {}
    for line in log.read_text().splitlines():
        index, labels = json.loads(line)
        assert trained.setdefault(index, labels) == labels, f"batch {index} was trained on twice, differently"
    reference = iter(builders.numpy_file_pipeline_forever())
    stream = [_valid_labels(next(reference)) for _ in range(max(trained) + 2 * BATCHES_PER_EPOCH)]
    assert all(trained[i] == stream[i] for i in trained), "a batch trained on is not the stream's batch"

    # The final checkpoint restores the stream exactly after its step.
    final = latest[-1]
    restored = iter(builders.numpy_file_pipeline_forever())
    with OrbaxCheckpointHandler(checkpoints) as handler:
        assert handler.restore({"data": restored}) == final
    assert sorted(trained) == list(range(max(trained) + 1)) and max(trained) >= final - 1  # nothing lost
    epochs_end = -(-(final + 1) // BATCHES_PER_EPOCH) * BATCHES_PER_EPOCH
    served = [trained[i] for i in range(final)] + [_valid_labels(next(restored)) for _ in range(epochs_end - final)]
    for epoch in range(epochs_end // BATCHES_PER_EPOCH):
        labels = sum(served[epoch * BATCHES_PER_EPOCH : (epoch + 1) * BATCHES_PER_EPOCH], [])
        assert sorted(labels) == list(range(RECORDS)), f"epoch {epoch}: a record lost or repeated"
    print(
        f"kills after {delays} s; latest complete step after each: {latest}; half-written steps left: "
        f"{interrupted}; batches trained on: {len(trained)}"
    )


# -- a data file deleted mid-epoch ------------------------------------------------------------------


def test_a_file_deleted_mid_epoch_is_named_and_the_stream_resumes_once_it_is_back(numpy_files):
    """Open descriptors keep a deleted file readable; workers started after it went name the file.

    The pipeline's worker processes opened ``label.npy`` when they started, so deleting it
    mid-epoch changes nothing for them: the epoch goes on exactly (POSIX keeps an unlinked file
    alive while it is open). Workers started afterwards (after ``close``, or a crash) rebuild the
    source and cannot: the next batch raises a ``HostStageError`` naming the file, within a
    bounded time, and the iterator keeps its last state. Once the file is back, ``set_state``
    of that state continues exactly.
    """
    reference = [
        {k: np.asarray(v) for k, v in b.items()} for b in builders.numpy_file_pipeline(workers=0, num_epochs=1)
    ]
    iterator = iter(builders.numpy_file_pipeline(workers=2, num_epochs=1, worker_kind="process"))
    served = [next(iterator), next(iterator)]
    label_file = numpy_files / "label.npy"
    saved = label_file.read_bytes()
    label_file.unlink()
    served.append(next(iterator))  # the running workers still read the deleted file
    state = iterator.get_state()

    iterator.close()  # e.g. the job's data workers restart
    started = time.monotonic()
    with pytest.raises(HostStageError) as info:
        next(iterator)
    assert time.monotonic() - started < BOUND
    assert str(label_file) in str(info.value) and "does not exist" in str(info.value)
    assert iterator.get_state() == state
    with pytest.raises(HostStageError, match="label.npy"):  # still named while the file is missing
        next(iterator)

    label_file.write_bytes(saved)
    iterator.set_state(state)
    served += list(iterator)
    iterator.close()
    assert len(served) == len(reference) == BATCHES_PER_EPOCH
    for got, want in zip(served, reference, strict=True):
        assert all(np.asarray(got[k]).tobytes() == want[k].tobytes() for k in want)

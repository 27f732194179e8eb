"""Host allocator tuning: fewer page faults for batch-sized buffers, applied by iterating, left to the user on request.

The allocator is process-wide, so each check runs in a fresh interpreter with
a controlled environment.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from datarax.pipeline import tune_host_allocator

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's mallopt"
)


def _run(code: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "DATARAX_HOST_ALLOCATOR"}
    clean.pop("GLIBC_TUNABLES", None)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


FAULTS = """
import json, resource
import numpy as np

SIZE = 4 << 20

def faults():
    # Three batch-sized buffers alive at once, then freed: what a loop holding a few batches does.
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(20):
        buffers = [np.ones(SIZE, np.uint8) for _ in range(3)]
        del buffers
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before

faults()
default = faults()
from datarax.pipeline import tune_host_allocator
settings = tune_host_allocator(SIZE, batches_held=3)
faults()
tuned = faults()
print(json.dumps({"default": default, "tuned": tuned, "settings": settings}))
"""


@glibc_only
def test_batch_sized_buffers_are_reused_instead_of_faulted_in_again():
    got = _run(FAULTS)
    # glibc's default trims the heap whenever more than twice the largest freed block is free
    # there, so each round faults the three buffers in again; tuned, the heap keeps them.
    assert got["default"] >= 20 * 3, got
    assert got["tuned"] <= 10, got
    mmap_threshold, trim_threshold = got["settings"]
    assert mmap_threshold >= 2 * (4 << 20) and trim_threshold >= 2 * 3 * (4 << 20)


ITERATE = """
import json
import numpy as np
from datarax import MemorySource, MemorySourceConfig, Pipeline
from datarax.pipeline import host_allocator_settings

data = {"x": np.zeros((64, 1024, 1024), np.uint8)}  # batches of 16 MiB
pipeline = Pipeline(source=MemorySource(MemorySourceConfig(), data=data), batch_size=16, prefetch=0)
before = host_allocator_settings()
next(iter(pipeline))
print(json.dumps({"before": before, "after": host_allocator_settings()}))
"""


@glibc_only
def test_iterating_a_pipeline_sizes_the_allocator_to_its_batches():
    got = _run(ITERATE)
    assert got["before"] is None
    batch = 16 * 1024 * 1024 + 16  # the x column and the valid mask
    assert got["after"] == [max(32 << 20, 2 * batch), max(64 << 20, 2 * 2 * batch)]


@pytest.mark.parametrize(
    "env", [{"DATARAX_HOST_ALLOCATOR": "system"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}, {"MALLOC_ARENA_MAX": "2"}]
)
def test_the_allocator_is_left_alone_when_the_user_tunes_it(env):
    got = _run(ITERATE, **env)
    if "MALLOC_ARENA_MAX" in env:  # not one of the thresholds datarax sets: still tuned (on glibc)
        if platform.libc_ver()[0] == "glibc":
            assert got["after"] is not None
        return
    assert got == {"before": None, "after": None}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_bytes": -1}, "batch_bytes must be an int >= 0, got -1"),
        ({"batch_bytes": 1.5}, "batch_bytes must be an int >= 0, got 1.5"),
        ({"batch_bytes": True}, "batch_bytes must be an int >= 0, got True"),
        ({"batch_bytes": 1, "batches_held": 0}, "batches_held must be an int >= 1, got 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tune_host_allocator(**kwargs)


RAISE_ONLY = """
import json
from datarax.pipeline import tune_host_allocator
small = tune_host_allocator(1 << 20)
large = tune_host_allocator(100 << 20, batches_held=4)
again = tune_host_allocator(1 << 20)
print(json.dumps([small, large, again]))
"""


@glibc_only
def test_thresholds_are_only_ever_raised():
    small, large, again = _run(RAISE_ONLY)
    assert small == [32 << 20, 64 << 20]
    # An older glibc refuses an mmap threshold above its dynamic ceiling (32 MiB): then it stays there.
    assert large[0] in (200 << 20, 32 << 20) and large[1] == 800 << 20
    assert again == large

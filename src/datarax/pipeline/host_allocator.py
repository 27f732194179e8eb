"""The host allocator: keep freed batch buffers in the heap instead of giving them back to the OS.

Every batch is a fresh set of buffers: XLA's outputs on the CPU backend, the
collated NumPy columns of a host source on any backend. glibc's ``malloc``
serves blocks of a few MB from its heap and gives the top of the heap back to
the OS whenever more than its *trim threshold* is free there. That threshold
starts at twice the largest block freed so far, so a loop that holds two or
three batches at a time keeps crossing it: the heap is trimmed, the next
batch's pages are faulted in again one by one, and on a 2-core VM that was
20-90 page faults and about a quarter of every W1 batch's time, for a
hand-written loop as much as for the pipeline (docs/benchmarks.md, issue 7,
fifth pass).

``tune_host_allocator`` raises glibc's thresholds so that blocks up to
``mmap_threshold`` come from the heap and up to ``trim_threshold`` of free heap
is kept for the next batches. An iterator calls it with its batch size when an
epoch's first batch is handed out, so every pipeline gets it without asking.
It only ever raises the thresholds, it does nothing where the allocator is
not glibc's (macOS, musl, a ``jemalloc``/``tcmalloc`` preload), and nothing
when the process was started with glibc's own ``MALLOC_*`` tuning variables
or with ``DATARAX_HOST_ALLOCATOR=system``: then the allocator is left as the
user set it.

The cost: the process keeps up to ``trim_threshold`` of freed memory per
malloc arena instead of returning it (64 MiB for batches up to 8 MiB).

Example:
    >>> settings = tune_host_allocator(1 << 20)  # 1 MiB batches
    >>> settings is None or settings.trim_threshold >= 64 << 20
    True
    >>> host_allocator_settings() == settings
    True
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from typing import NamedTuple

from datarax.core.validation import is_int

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest dynamic mmap threshold on 64-bit (4 * 1024 * 1024 * sizeof(long)); some
# versions refuse a larger one.
_GLIBC_MMAP_MAX = 32 << 20
_C_INT_MAX = 2**31 - 1
# Variables that mean the allocator is someone else's business.
_GLIBC_TUNING = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
)
OPT_OUT = "DATARAX_HOST_ALLOCATOR"


class AllocatorSettings(NamedTuple):
    """The glibc thresholds datarax has set (bytes).

    Attributes:
        mmap_threshold: Blocks at least this large are mapped on their own
            (and unmapped when freed); smaller ones come from the heap.
        trim_threshold: Free memory at the top of the heap beyond this is
            given back to the OS.
    """

    mmap_threshold: int
    trim_threshold: int


_lock = threading.Lock()
_settings: AllocatorSettings | None = None
_mallopt = None  # resolved on first use


def _glibc_mallopt():
    global _mallopt
    if _mallopt is None:
        _mallopt = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            preload = os.environ.get("LD_PRELOAD", "")
            if "malloc" not in preload and "jemalloc" not in preload:
                function = ctypes.CDLL(None).mallopt
                function.argtypes = [ctypes.c_int, ctypes.c_int]
                function.restype = ctypes.c_int
                _mallopt = function
    return _mallopt or None


def _left_to_the_user() -> bool:
    return os.environ.get(OPT_OUT, "").lower() == "system" or any(name in os.environ for name in _GLIBC_TUNING)


def tune_host_allocator(batch_bytes: int, *, batches_held: int = 2) -> AllocatorSettings | None:
    """Raises glibc's malloc thresholds so buffers of ``batch_bytes`` are reused, not faulted in again.

    Args:
        batch_bytes: The size of one batch (all its arrays), in bytes.
        batches_held: How many batches are alive at once (the one being
            consumed, the one being computed, and any read ahead).

    Returns:
        The thresholds in effect after the call, or None where datarax leaves
        the allocator alone (not glibc, a preloaded allocator, the user's own
        ``MALLOC_*`` settings, or ``DATARAX_HOST_ALLOCATOR=system``).

    Raises:
        ValueError: If ``batch_bytes`` is not an int >= 0 or ``batches_held``
            not an int >= 1.
    """
    if not is_int(batch_bytes) or batch_bytes < 0:
        raise ValueError(f"tune_host_allocator: batch_bytes must be an int >= 0, got {batch_bytes!r}")
    if not is_int(batches_held) or batches_held < 1:
        raise ValueError(f"tune_host_allocator: batches_held must be an int >= 1, got {batches_held!r}")
    global _settings
    if _left_to_the_user():
        return None
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return None
    # Blocks up to twice a batch (at least glibc's own dynamic ceiling) from the heap, and as
    # much free heap kept as the batches alive at once use, twice over.
    mmap_threshold = min(max(_GLIBC_MMAP_MAX, 2 * batch_bytes), _C_INT_MAX)
    trim_threshold = min(max(2 * mmap_threshold, 2 * batches_held * batch_bytes), _C_INT_MAX)
    with _lock:
        current = _settings or AllocatorSettings(0, 0)
        wanted = AllocatorSettings(
            max(current.mmap_threshold, mmap_threshold), max(current.trim_threshold, trim_threshold)
        )
        if wanted == current:
            return current
        if wanted.mmap_threshold != current.mmap_threshold and not mallopt(_M_MMAP_THRESHOLD, wanted.mmap_threshold):
            # An older glibc refuses more than its dynamic ceiling: larger batches are then mapped.
            wanted = wanted._replace(mmap_threshold=max(current.mmap_threshold, _GLIBC_MMAP_MAX))
            mallopt(_M_MMAP_THRESHOLD, wanted.mmap_threshold)
        if wanted.trim_threshold != current.trim_threshold:
            mallopt(_M_TRIM_THRESHOLD, wanted.trim_threshold)
        _settings = wanted
        return wanted


def host_allocator_settings() -> AllocatorSettings | None:
    """The thresholds datarax has set in this process (None: it has not touched the allocator)."""
    return _settings


__all__ = ["OPT_OUT", "AllocatorSettings", "host_allocator_settings", "tune_host_allocator"]

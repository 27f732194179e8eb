"""``HostBatchPool``: host batches computed ahead of the consumer, handed over in stream order.

The host stage (``datarax.pipeline.host_stage``) is a pure function of a
batch's cursor, so the pool may compute upcoming cursors anywhere, in any
order, and the stream cannot tell: results and iterator states are identical
for 0, 1 or N workers, threads or processes. The pool keeps up to
``read_ahead`` batches in flight beyond the one the consumer asked for; a
request for any other cursor (after ``set_state``) discards them and starts
again from there.

Three ways to run it:

* ``workers=0``: inline, in the consumer's thread (no read-ahead);
* ``kind="thread"`` (the default): a thread pool. Readers and decoders that
  release the GIL (file reads, numpy gathers, PIL / simplejpeg) run in
  parallel with each other and with the consumer;
* ``kind="process"``: worker processes started with ``spawn`` (never
  ``fork``, which is unsafe once JAX has started its threads), for
  Python-heavy host operators. Each worker rebuilds the source and the
  operators from their recipes (class + constructor arguments: files are
  reopened, not pickled) and writes each batch straight into a block of
  shared memory owned by the pool, so arrays never travel as pickles; the
  consumer copies the block out and reuses it.

Faults: an operator or read that raises stops the stream with a
``HostStageError`` naming the source, record and original error; a worker
process that dies is reported as soon as the pool notices (the executor
watches its processes), not waited on. Either way the consumer's state is the
last batch it received; a later request (after ``set_state``) starts afresh,
with new worker processes if they died. ``close`` (also run when the pool is
garbage-collected) stops every worker and frees the shared memory.

Example:
    >>> import jax, numpy as np
    >>> from datarax.core.config import StructuralConfig
    >>> from datarax.core.host_source import HostSourceModule
    >>> from datarax.pipeline.host_stage import HostStage
    >>> from datarax.pipeline.stream import StreamSpec
    >>> class Squares(HostSourceModule):
    ...     def __len__(self):
    ...         return 10
    ...     def element_spec(self):
    ...         return {"x": jax.ShapeDtypeStruct((), np.int64)}
    ...     def read_records(self, indices):
    ...         return {"x": indices ** 2}
    >>> stage = HostStage(Squares(StructuralConfig()), operators=(), shuffle=True, seed=3, batch_size=4)
    >>> stream = StreamSpec(num_records=10, batch_size=4, drop_remainder=False, shuffle=True, seed=3, fingerprint=0)
    >>> def epoch_of(workers):
    ...     pool = HostBatchPool(stage, stream, workers=workers, kind="thread", read_ahead=2)
    ...     try:
    ...         return [pool.get(0, start, stop_epoch=1)[0]["x"].tolist() for start in (0, 4, 8)]
    ...     finally:
    ...         pool.close()
    >>> epoch_of(0) == epoch_of(2)
    True
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import multiprocessing
import os
import threading
import weakref
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from datarax.pipeline.host_stage import HostStage, HostStageError
from datarax.pipeline.stream import StreamSpec

THREAD, PROCESS = "thread", "process"
WORKER_KINDS = (THREAD, PROCESS)


def default_workers() -> int:
    """The pool size ``Pipeline(workers=None)`` uses: the CPUs this process may run on, at most 16."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    return max(1, min(count, 16))


def _layout(spec: Mapping[str, Any], batch_size: int) -> tuple[list[tuple[str, tuple, str, int]], int]:
    """Column name, batched shape, dtype and byte offset of each column in one shared block; its size."""
    layout, offset = [], 0
    for name, leaf in spec.items():
        shape = (batch_size, *leaf.shape)
        dtype = np.dtype(leaf.dtype)
        offset = -(-offset // 64) * 64  # 64-byte aligned columns
        layout.append((name, shape, dtype.str, offset))
        offset += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return layout, max(offset, 1)


def _views(buffer: Any, layout: list[tuple[str, tuple, str, int]]) -> dict[str, np.ndarray]:
    return {
        name: np.ndarray(shape, dtype=np.dtype(dtype), buffer=buffer, offset=offset)
        for name, shape, dtype, offset in layout
    }


# -- the worker process side ---------------------------------------------------

_WORKER: dict[str, Any] = {}


class WorkerStartError(HostStageError):
    """A worker process could not rebuild the host stage (a file gone since the pipeline was built, say).

    Raised in the worker for each batch it is given, so the consumer sees the cause (an error in
    the initializer itself would only break the pool, its text lost on the worker's stderr).
    """


def _worker_init(recipe: tuple) -> None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a data worker never needs an accelerator
    import jax

    from datarax.core.constructor_args import from_recipe

    source_recipe, operator_recipes, shuffle, seed, batch_size, spec, share = recipe
    try:
        stage = HostStage(
            from_recipe(source_recipe),
            operators=[(key, from_recipe(op)) for key, op in operator_recipes],
            shuffle=shuffle,
            seed=seed,
            batch_size=batch_size,
            spec={name: jax.ShapeDtypeStruct(shape, np.dtype(dtype)) for name, shape, dtype in spec},
            share=share,
        )
    except Exception as error:  # noqa: BLE001 - reported with the first batch (see WorkerStartError)
        _WORKER.update(
            error=f"host stage: a worker process could not rebuild the host stage of {source_recipe[0].__name__}: "
            f"{type(error).__name__}: {error}. Restore the iterator's last state once it is fixed"
        )
        return
    _WORKER.update(stage=stage, layout=_layout(stage.spec, stage.batch_size)[0], blocks={}, error=None)


def _worker_compute(epoch: int, start: int, block_name: str) -> tuple[np.ndarray, int]:
    if _WORKER.get("error"):
        raise WorkerStartError(_WORKER["error"])
    blocks = _WORKER["blocks"]
    block = blocks.get(block_name)
    if block is None:
        block = blocks[block_name] = shared_memory.SharedMemory(name=block_name)
    _, records, valid_rows = _WORKER["stage"].compute(epoch, start, out=_views(block.buf, _WORKER["layout"]))
    return records, valid_rows


def _shutdown(executor: Any, blocks: list[Any]) -> None:
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)
    for block in blocks:
        block.close()
        with contextlib.suppress(FileNotFoundError):  # already unlinked
            block.unlink()


# -- the consumer side ---------------------------------------------------------


class HostBatchPool:
    """Runs a ``HostStage`` ahead of the consumer (see the module docstring).

    Args:
        stage: The host stage.
        stream: The stream (how cursors advance).
        workers: Worker threads or processes; 0 computes inline.
        kind: ``"thread"`` or ``"process"``.
        read_ahead: Batches in flight beyond the one requested.
        recipe: For processes: what a worker rebuilds the stage from
            (``(source recipe, [(key name, operator recipe)], shuffle, seed,
            batch size, spec tuples)``).
    """

    def __init__(
        self,
        stage: HostStage,
        stream: StreamSpec,
        *,
        workers: int,
        kind: str,
        read_ahead: int,
        recipe: tuple | None = None,
    ):
        self.stage = stage
        self.stream = stream
        self.workers = workers
        self.kind = kind
        self.read_ahead = read_ahead if workers else 0
        self._recipe = recipe
        self._pending: collections.deque = collections.deque()  # (cursor, future, block)
        self._next: tuple[int, int] | None = None
        self._executor: Any = None
        self._layout, self._nbytes = _layout(stage.spec, stage.batch_size)
        self._blocks: list[Any] = []
        self._free: list[Any] = []
        self._lock = threading.Lock()
        self._finalizer: Any = None
        self._blocks_finalizer: Any = None

    # -- workers --------------------------------------------------------------

    def _start(self) -> None:
        if self.kind == THREAD:
            self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="datarax-host")
        else:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(self._recipe,),
            )
            if not self._blocks:
                self._blocks = [
                    shared_memory.SharedMemory(create=True, size=self._nbytes) for _ in range(self.read_ahead + 1)
                ]
                self._free = list(self._blocks)
                # The blocks outlive a dead executor (restarted after set_state): freed on close,
                # on garbage collection or at interpreter exit, whichever comes first.
                self._blocks_finalizer = weakref.finalize(self, _shutdown, None, self._blocks)
        self._finalizer = weakref.finalize(self, _shutdown, self._executor, [])

    def _stop_workers(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        """Stops the workers and frees the shared memory (idempotent)."""
        self._discard()
        self._stop_workers()
        if self._blocks_finalizer is not None:
            self._blocks_finalizer()  # unlinks the blocks, once
            self._blocks_finalizer = None
        self._blocks, self._free = [], []

    @property
    def processes(self) -> list[int]:
        """Process ids of the live worker processes (empty for threads)."""
        processes = getattr(self._executor, "_processes", None) or {}
        return [p.pid for p in processes.values() if p.is_alive()]

    # -- submissions ----------------------------------------------------------

    def _submit(self, cursor: tuple[int, int]) -> None:
        epoch, start = cursor
        if self.kind == THREAD:
            self._pending.append((cursor, self._executor.submit(self.stage.compute, epoch, start), None))
            return
        block = self._free.pop()
        try:
            future = self._executor.submit(_worker_compute, epoch, start, block.name)
        except BaseException:
            self._free.append(block)
            raise
        self._pending.append((cursor, future, block))

    def _top_up(self, stop_epoch: int | None) -> None:
        while len(self._pending) < self.read_ahead and self._next is not None:
            if stop_epoch is not None and self._next[0] >= stop_epoch:
                return
            if self.kind == PROCESS and not self._free:
                return
            self._submit(self._next)
            self._next = self.stream.advance(*self._next)

    def _discard(self) -> None:
        """Drops the batches in flight (after a failure or a jump to another cursor)."""
        while self._pending:
            _, future, block = self._pending.popleft()
            if block is not None:
                # The worker may still be writing into the block: reuse it only once it is done.
                if not future.cancel():
                    concurrent.futures.wait([future])
                self._free.append(block)
            else:
                future.cancel()
        self._next = None

    def _worker_died(self, cursor: tuple[int, int], block: Any, error: BaseException) -> HostStageError:
        """Frees everything after a worker process died; the error to raise (the next request starts new workers)."""
        if block is not None:
            self._free.append(block)
        self._discard()
        self._stop_workers()
        failure = HostStageError(
            f"host stage: a worker process of {type(self.stage.source).__name__} died while computing the "
            f"batch at epoch {cursor[0]}, position {cursor[1]}: killed, out of memory, or it could not start "
            "(its traceback is on stderr; a function defined in an interactive session or in a script without "
            "an `if __name__ == '__main__':` guard cannot be imported by a spawned worker). Restore the "
            "iterator's last state to continue with new workers"
        )
        failure.__cause__ = error
        return failure

    def _result(self, cursor: tuple[int, int], future: Any, block: Any) -> tuple[dict[str, np.ndarray], Any, int]:
        try:
            value = future.result()
        except BrokenProcessPool as error:
            raise self._worker_died(cursor, block, error) from error
        except WorkerStartError:
            if block is not None:
                self._free.append(block)
            self._discard()
            self._stop_workers()  # the next request starts new workers, which rebuild the stage again
            raise
        except BaseException:
            if block is not None:
                self._free.append(block)
            self._discard()
            raise
        if block is None:
            return value
        records, valid_rows = value
        # Copied out: the block is reused for a later batch while this one may still be in use.
        columns = {name: np.array(view) for name, view in _views(block.buf, self._layout).items()}
        self._free.append(block)
        return columns, records, valid_rows

    def get(self, epoch: int, start: int, *, stop_epoch: int | None) -> tuple[dict[str, np.ndarray], Any, int]:
        """The host batch at ``(epoch, start)``; keeps the next ones in flight.

        Args:
            epoch: The batch's epoch.
            start: Its first row's epoch position.
            stop_epoch: The first epoch not to read ahead into (None: no end).

        Returns:
            ``(columns, records, valid_rows)`` as ``HostStage.compute``.

        Raises:
            HostStageError: If the batch could not be computed.
        """
        cursor = (epoch, start)
        if not self.workers:
            return self.stage.compute(epoch, start)
        with self._lock:
            if self._pending and self._pending[0][0] != cursor:
                self._discard()
            if self._executor is None:
                self._start()
            head = None
            try:
                if not self._pending:
                    self._next = cursor
                    self._top_up(stop_epoch)
                    if not self._pending:  # read_ahead 0 or no free block: this batch alone
                        self._submit(cursor)
                        self._next = self.stream.advance(*cursor)
                head = self._pending.popleft()
                self._top_up(stop_epoch)
            except BrokenProcessPool as error:  # a worker died before this batch was submitted
                raise self._worker_died(cursor, None if head is None else head[2], error) from error
        return self._result(*head)


__all__ = ["HostBatchPool", "PROCESS", "THREAD", "WORKER_KINDS", "WorkerStartError", "default_workers"]

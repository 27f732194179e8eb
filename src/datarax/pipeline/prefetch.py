"""``prefetch_to_device``: a bounded background queue in front of any iterator.

A thread pulls batches from the wrapped iterator, places them on the device
(``jax.device_put``, optionally with a sharding) and keeps at most ``size``
of them ready. If the wrapped iterator is ``Checkpointable``, the thread
records its state right after producing each batch and the prefetcher
reports the state recorded with the last batch *handed to the consumer*, so
resuming from it is exact however far ahead the thread has run.

Example:
    >>> import numpy as np
    >>> from datarax import Pipeline
    >>> from datarax.pipeline import prefetch_to_device
    >>> from datarax.sources import MemorySource, MemorySourceConfig
    >>> source = MemorySource(MemorySourceConfig(), data={"x": np.arange(6)})
    >>> it = prefetch_to_device(iter(Pipeline(source=source, batch_size=2)), size=2)
    >>> next(it)["x"].tolist(), it.get_state()["position"]
    ([0, 1], 2)
    >>> it.close()
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax

from datarax.core.validation import positive_int
from datarax.typing import Checkpointable

_END = object()
_OWNER = "prefetch_to_device"


def _checked_iterator(iterator: Any) -> Iterator[Any]:
    if isinstance(iterator, Iterator):
        return iterator
    # A dict is iterable (over its keys) but is far more likely one batch passed by mistake.
    if isinstance(iterator, Iterable) and not isinstance(iterator, str | bytes | Mapping):
        return iter(iterator)
    raise TypeError(
        f"{_OWNER}: iterator must be an iterator or iterable of batches (e.g. iter(pipeline)), "
        f"got {type(iterator).__name__} {iterator!r:.80}"
    )


def _checked_sharding(sharding: Any) -> Any:
    placements = jax.sharding.Sharding | jax.Device
    leaves = jax.tree.leaves(sharding, is_leaf=lambda x: isinstance(x, placements))
    if sharding is not None and (not leaves or not all(isinstance(x, placements) for x in leaves)):
        raise TypeError(
            f"{_OWNER}: sharding must be None, a jax.sharding.Sharding, a jax.Device or a pytree of them "
            f"matching the batch, got {type(sharding).__name__} {sharding!r:.80}"
        )
    return sharding


class PrefetchIterator:
    """Background prefetching wrapper (see ``prefetch_to_device``)."""

    def __init__(self, iterator: Iterator[Any] | Iterable[Any], size: int, sharding: Any | None):
        # Every argument is checked before the iterator is touched, so a refused call consumes nothing.
        size = positive_int(_OWNER, "size", size)
        sharding = _checked_sharding(sharding)
        iterator = _checked_iterator(iterator)
        self._inner = iterator
        self._size = size
        self._sharding = sharding
        self._checkpointable = isinstance(iterator, Checkpointable)
        self._state = iterator.get_state() if self._checkpointable else None
        self._start()

    def _start(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=self._size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._work, name="datarax-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for batch in self._inner:
                batch = jax.device_put(batch, self._sharding)  # None: the default device
                state = self._inner.get_state() if self._checkpointable else None
                if not self._put((batch, state, None)):
                    return
            self._put((_END, None, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            self._put((_END, None, error))

    def __iter__(self) -> PrefetchIterator:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        batch, state, error = self._queue.get()
        if batch is _END:
            self._done = True
            if error is not None:
                raise error
            raise StopIteration
        self._state = state
        return batch

    def _halt(self) -> None:
        self._stop.set()
        self._thread.join()

    def close(self) -> None:
        """Stops the background thread."""
        self._halt()
        self._done = True

    def get_state(self) -> dict[str, Any]:
        """The wrapped iterator's state after the last batch handed out.

        Raises:
            TypeError: If the wrapped iterator is not ``Checkpointable``.
        """
        if not self._checkpointable:
            raise TypeError(f"{type(self._inner).__name__} is not Checkpointable")
        return dict(self._state)

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores the wrapped iterator and restarts prefetching from there.

        Raises:
            TypeError: If the wrapped iterator is not ``Checkpointable``.
        """
        if not self._checkpointable:
            raise TypeError(f"{type(self._inner).__name__} is not Checkpointable")
        self._halt()
        try:
            self._inner.set_state(state)
        finally:
            # Work done ahead is discarded: the inner iterator restarts at the
            # consumer's cursor (or at the new state), so nothing is lost.
            if self._state is not None and self._inner.get_state() != dict(state):
                self._inner.set_state(self._state)
            self._state = self._inner.get_state()
            self._start()


def prefetch_to_device(
    iterator: Iterator[Any] | Iterable[Any], size: int = 2, sharding: Any | None = None
) -> PrefetchIterator:
    """Wraps ``iterator`` in a bounded background queue that places batches on device.

    Args:
        iterator: Any iterator of pytrees (an iterable, such as a ``Pipeline``,
            is iterated with ``iter``); if ``Checkpointable``, so is the result.
        size: Maximum number of batches held ready (a positive int).
        sharding: Where ``jax.device_put`` places each batch: None (the
            default device), a ``jax.sharding.Sharding``, a ``jax.Device``, or
            a pytree of them matching the batch.

    Returns:
        A ``PrefetchIterator``.

    Raises:
        TypeError: If ``iterator`` is not an iterator or iterable (a dict, a
            str or a number is refused), or ``sharding`` is not a placement.
        ValueError: If ``size`` is not a positive int.
    """
    return PrefetchIterator(iterator, size, sharding)


__all__ = ["PrefetchIterator", "prefetch_to_device"]

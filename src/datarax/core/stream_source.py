"""``StreamSourceModule``: records that can only be read in order, from a position.

Some data has no random access: a Hugging Face ``IterableDataset``, a
generator that parses a log, a socket. Such a *stream source* answers one
question, ``iter_records(start)``: the records of one pass, in order, from
stream position ``start`` (0 is the first record of this process's share).
It has no ``len`` and no ``read_records``. The pipeline's stream stage
(``datarax.pipeline.stream_feed``) reads it sequentially, shuffles it through
a seeded buffer whose record *positions* are part of the iterator state, and
re-reads those positions on restore (``iter_records(min(buffer))``), so a
pass must yield the same records in the same order every time it is opened.

**Records.** Each record is a dict with the columns of ``element_spec()``:
a fixed column (``jax.ShapeDtypeStruct``) takes any value ``numpy.asarray``
turns into exactly that shape and dtype; a ``BytesSpec`` column takes
``bytes`` (or ``str``, stored as its UTF-8 bytes); a ``RaggedSpec`` column a
numpy array of that dtype and number of dimensions. ``element_record``
checks and converts one record, naming the column and the position of a
record that does not fit.

**Shares.** ``process_index`` / ``process_count`` (None: JAX's process index
and count) say which share of the stream this process reads; each source
says how it splits (``IterableSource`` keeps every ``process_count``-th
record; ``HFStreamingSource`` uses ``datasets``' own node split, by files when
they divide evenly). Positions count records of the share.

Example:
    >>> import numpy as np
    >>> from datarax.core.config import StructuralConfig
    >>> class Counting(StreamSourceModule):
    ...     def element_spec(self):
    ...         return {"x": jax.ShapeDtypeStruct((), np.int64)}
    ...     def iter_records(self, start):
    ...         return ({"x": i} for i in range(start, 5))
    >>> source = Counting(StreamSourceConfig())
    >>> [element_record(source, r, start)["x"].item() for start, r in enumerate(source.iter_records(3), 3)]
    [3, 4]
    >>> len(source)
    Traceback (most recent call last):
    ...
    TypeError: Counting is a stream source: it has no len(); a Pipeline reads it in order
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from datarax.core.config import StructuralConfig
from datarax.core.data_source import DataSourceModule
from datarax.core.spec import BytesSpec, RaggedSpec
from datarax.core.validation import is_int


@dataclasses.dataclass(frozen=True)
class StreamSourceConfig(StructuralConfig):
    """Which share of a stream this process reads.

    Attributes:
        process_index: This process's share, in ``[0, process_count)``; None:
            ``jax.process_index()``.
        process_count: How many shares the stream is split into; None:
            ``jax.process_count()``.

    Raises:
        ValueError: If either is not None or an int in range (the message names it).

    Example:
        >>> StreamSourceConfig(process_index=1, process_count=2).process_index
        1
    """

    process_index: int | None = None
    process_count: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        count, index = self.process_count, self.process_index
        if count is not None and (not is_int(count) or count < 1):
            raise ValueError(f"{name}: process_count must be None or an int >= 1, got {count!r}")
        if index is not None and (not is_int(index) or index < 0 or (count is not None and index >= count)):
            bound = f"in [0, {count})" if count is not None else ">= 0"
            raise ValueError(f"{name}: process_index must be None or an int {bound}, got {index!r}")


class StreamSourceModule(DataSourceModule):
    """Base class of sources read in order (see the module docstring).

    Subclasses define ``element_spec`` and ``iter_records``, and may define
    ``close``. ``share`` is ``(process_index, process_count)`` with JAX's
    values filled in.
    """

    def __init__(self, config: StreamSourceConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        count = jax.process_count() if config.process_count is None else config.process_count
        index = jax.process_index() if config.process_index is None else config.process_index
        if index >= count:
            raise ValueError(f"{type(self).__name__}: process_index {index} is not below process_count {count}")
        self.share = (int(index), int(count))

    def iter_records(self, start: int) -> Iterator[Mapping[str, Any]]:
        """The records of one pass over this process's share, from stream position ``start``.

        Args:
            start: How many records of the pass to skip (>= 0).

        Returns:
            An iterator of record dicts (see ``element_record``).

        Raises:
            NotImplementedError: On the base class (subclasses implement it).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement iter_records(start)")

    def __len__(self) -> int:
        raise TypeError(f"{type(self).__name__} is a stream source: it has no len(); a Pipeline reads it in order")

    def get_batch_at(self, start: Any, size: int, key: Any | None = None) -> Any:
        """Refused: a stream has no random access."""
        raise TypeError(
            f"{type(self).__name__} is a stream source: it has no random access; iterate a Pipeline over it "
            "(or iter_records(start))"
        )

    def get_records(self, indices: Any) -> Any:
        """Refused: a stream has no random access."""
        return self.get_batch_at(0, 1)

    def close(self) -> None:
        """Releases open files (a no-op unless a subclass holds some)."""


def element_record(source: StreamSourceModule, record: Any, position: int) -> dict[str, Any]:
    """``record`` checked against ``source.element_spec()`` and converted: arrays, bytes.

    Args:
        source: The source (its spec and name).
        record: What ``iter_records`` yielded.
        position: Its stream position (for messages).

    Returns:
        The record with numpy arrays for fixed and ragged columns and bytes for byte columns.

    Raises:
        ValueError: If it is not a dict with exactly the spec's columns, or a
            value does not fit its column (the message names the column,
            the position and what was expected).
    """
    owner = type(source).__name__
    spec = source.element_spec()
    if not isinstance(record, Mapping) or set(record) != set(spec):
        got = sorted(record) if isinstance(record, Mapping) else type(record).__name__
        raise ValueError(
            f"{owner}: the record at stream position {position} has columns {got}; expected {sorted(spec)}"
        )
    element = {}
    for name, leaf in spec.items():
        value = record[name]
        if isinstance(leaf, BytesSpec):
            if isinstance(value, str):
                value = value.encode()
            if not isinstance(value, bytes | bytearray | memoryview):
                raise ValueError(
                    f"{owner}: column {name!r} of the record at stream position {position} is "
                    f"{type(value).__name__}; expected bytes or str"
                )
            element[name] = bytes(value)
            continue
        array = np.asarray(value)
        if isinstance(leaf, RaggedSpec):
            fits = array.dtype == leaf.dtype and array.ndim == leaf.ndim
            expected = str(leaf)
        else:
            fits = array.dtype == np.dtype(leaf.dtype) and array.shape == tuple(leaf.shape)
            expected = f"{np.dtype(leaf.dtype)}{list(leaf.shape)}"
        if not fits:
            raise ValueError(
                f"{owner}: column {name!r} of the record at stream position {position} is "
                f"{array.dtype}{list(array.shape)}; expected {expected}"
            )
        element[name] = array
    return element


def spec_of_record(owner: str, record: Any) -> dict[str, Any]:
    """The element spec a record implies: bytes and str are ``BytesSpec``, anything else its numpy array's spec.

    Raises:
        ValueError: If ``record`` is not a non-empty dict with str keys, or a value is not numeric or bytes.

    Example:
        >>> spec_of_record("Gen", {"x": np.zeros(3, np.float32), "text": "hi"})
        {'x': ShapeDtypeStruct(shape=(3,), dtype=float32), 'text': BytesSpec()}
    """
    if not isinstance(record, Mapping) or not record or not all(isinstance(name, str) for name in record):
        raise ValueError(f"{owner}: the first record must be a non-empty dict of column name to value, got {record!r}")
    spec: dict[str, Any] = {}
    for name, value in record.items():
        if isinstance(value, bytes | bytearray | memoryview | str):
            spec[name] = BytesSpec()
            continue
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise ValueError(
                f"{owner}: column {name!r} of the first record is {type(value).__name__} ({array.dtype}); "
                "expected a number, a numeric array, bytes or str (or give element_spec)"
            )
        spec[name] = jax.ShapeDtypeStruct(array.shape, array.dtype)
    return spec


__all__ = ["StreamSourceConfig", "StreamSourceModule", "element_record", "spec_of_record"]

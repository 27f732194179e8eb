"""``IterableSource``: a stream of records from a function that makes an iterable (a generator).

The simplest stream source: ``records`` is a function of no arguments
returning a fresh iterable of record dicts (a generator function, or
``lambda: rows``), called once per pass. Every pass must yield the same
records in the same order: the pipeline re-reads the stream to restore a
shuffle buffer (``datarax.pipeline.stream_feed``). Starting a pass at
position ``start`` reads and discards the first ``start`` records of the share.

The element spec is ``element_spec`` if given, else what the first record
implies (``spec_of_record``: bytes and str become ``BytesSpec``, everything
else its numpy array's shape and dtype). With ``process_count > 1`` this
process keeps the records ``process_index``, ``process_index +
process_count``, ... of each pass.

Example:
    >>> import numpy as np
    >>> def squares():
    ...     for i in range(5):
    ...         yield {"x": np.int32(i * i), "name": f"n{i}"}
    >>> source = IterableSource(IterableSourceConfig(process_index=1, process_count=2), records=squares)
    >>> source.element_spec()
    {'x': ShapeDtypeStruct(shape=(), dtype=int32), 'name': BytesSpec()}
    >>> [int(r["x"]) for r in source.iter_records(0)], [int(r["x"]) for r in source.iter_records(1)]
    ([1, 9], [9])
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from datarax.core.host_source import check_element_spec
from datarax.core.stream_source import StreamSourceConfig, StreamSourceModule, spec_of_record

_OWNER = "IterableSource"


@dataclasses.dataclass(frozen=True)
class IterableSourceConfig(StreamSourceConfig):
    """Configuration of ``IterableSource`` (which share of the stream; see ``StreamSourceConfig``)."""


class IterableSource(StreamSourceModule):
    """Records from a function returning a fresh iterable each pass (see the module docstring).

    Args:
        config: The share this process reads.
        records: A function of no arguments returning an iterable of record dicts.
        element_spec: The records' spec; None infers it from the first record.
        name: Optional module name.

    Raises:
        TypeError: If ``records`` is not callable (an iterator or generator
            object can be read only once: pass the function that makes it),
            or ``element_spec`` is not a dict of column specs.
        ValueError: If the stream is empty or its first record implies no spec.
    """

    def __init__(
        self,
        config: IterableSourceConfig,
        *,
        records: Callable[[], Iterable[Mapping[str, Any]]],
        element_spec: Mapping[str, Any] | None = None,
        name: str | None = None,
    ):
        if not callable(records):
            raise TypeError(
                f"{_OWNER}: records must be a function returning a fresh iterable each pass (a generator function, "
                f"or lambda: rows), got {type(records).__name__}; an iterator can be read only once"
            )
        super().__init__(config, name=name)
        self._records = records
        if element_spec is None:
            first = next(iter(records()), None)
            if first is None:
                raise ValueError(f"{_OWNER}: records() yields no records; expected at least one")
            element_spec = spec_of_record(_OWNER, first)
        self._spec = check_element_spec(_OWNER, element_spec)

    def element_spec(self) -> dict[str, Any]:
        """One record's spec."""
        return self._spec

    def iter_records(self, start: int) -> Iterator[Mapping[str, Any]]:
        """The share's records of one pass, from position ``start`` (the first ``start`` are read and skipped)."""
        index, count = self.share
        records = iter(self._records())
        if count > 1:
            records = itertools.islice(records, index, None, count)
        return itertools.islice(records, start, None)


__all__ = ["IterableSource", "IterableSourceConfig"]

"""``RecordCollator``: host operators run record by record, collated into one fixed-shape batch.

The host stage's second half, shared by the two ways records reach the host:
by index from a random-access host source (``datarax.pipeline.host_stage``)
and in order from a stream (``datarax.pipeline.stream_stage``). Given a
batch's columns as read (``read_records`` form), the records' identities
(the ints their host generators and device keys are derived from) and how
many rows are real, ``collate``

    runs every host operator on each record (a generator per record: ``host_rng``)
    ->  drops the records a ``HostFilter`` rejects, packing the kept ones in order
    ->  writes one ``(B, ...)`` numpy array per column, padding rows repeating the last real row

and ``spec_from_element`` fixes the collated spec from one transformed
record. With a ``HostFilter`` the rows after the kept ones say which filter
dropped each examined record (``-(i + 1)`` for host stage ``i``, in order),
so a feed can count what each filter kept and dropped (``host_counts``). A
later record that differs stops the stream with a ``HostStageError`` naming
the record; one that an operator fails on names the operator, the record and
the original exception. ``HostStageError``
carries only a message, so it crosses process boundaries intact.

Example:
    >>> import jax, numpy as np
    >>> collator = RecordCollator("Squares", {"x": jax.ShapeDtypeStruct((), np.int64)}, operators=(), seed=0,
    ...                           batch_size=4, spec={"x": jax.ShapeDtypeStruct((), np.int64)})
    >>> columns, records, valid_rows = collator.collate({"x": np.array([4, 9])}, np.array([2, 3, 3, 3]), 2, epoch=0)
    >>> columns["x"].tolist(), records.tolist(), valid_rows
    ([4, 9, 9, 9], [2, 3, 3, 3], 2)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from datarax.core.host_operator import HostOperator
from datarax.core.host_source import empty_columns
from datarax.core.prng import HostRng, host_rng_states
from datarax.core.spec import is_host_spec, spec_to_str
from datarax.operators.host_filter import HostFilter


class HostStageError(RuntimeError):
    """A record could not be read or transformed on the host (the message says which and why)."""


def host_counts(
    operators: Sequence[tuple[str | None, Any]], dropped: Sequence[int], served: int
) -> list[tuple[int, int]]:
    """``(applied, skipped)`` of each host operator for a batch of ``served`` rows.

    Args:
        operators: The host stages' ``(key name, operator)`` pairs.
        dropped: Records each stage dropped while the batch was filled (0 for all but filters).
        served: The batch's real rows.

    Example:
        >>> from datarax.operators import HostFilter, HostFilterConfig, HostMapOperator, HostMapOperatorConfig
        >>> keep = HostFilter(HostFilterConfig(), predicate=lambda e, rng: True)
        >>> decode = HostMapOperator(HostMapOperatorConfig(), fn=lambda e, rng: e)
        >>> host_counts([(None, decode), (None, keep), (None, decode)], [0, 3, 0], served=4)
        [(7, 0), (4, 3), (4, 0)]
    """
    reaching = served + sum(dropped)
    counts = []
    for (_, op), count in zip(operators, dropped, strict=True):
        if isinstance(op, HostFilter):
            counts.append((reaching - count, count))
            reaching -= count
        else:
            counts.append((reaching, 0))
    return counts


def dropped_by_stage(codes: np.ndarray, stages: int) -> list[int]:
    """Per host stage, how many of ``codes`` (``-(i + 1)`` per dropped record) it dropped.

    Example:
        >>> dropped_by_stage(np.array([-2, -2, -1]), 3)
        [1, 2, 0]
    """
    return np.bincount(-1 - np.asarray(codes, np.int64), minlength=stages).tolist()


def describe_error(error: BaseException) -> str:
    """``"Type: message"`` of an exception, for messages that wrap it."""
    return f"{type(error).__name__}: {error}"


class RecordCollator:
    """Runs host operators on a batch's records and collates them (see the module docstring).

    Args:
        owner: The source's name, for messages.
        source_spec: The source's element spec (what ``collate`` receives).
        operators: ``(key name or None, operator)`` pairs, in order.
        seed: The pipeline seed (host generators).
        batch_size: Rows per batch.
        spec: The collated element spec, or None until ``spec_from_element`` fixes it.
    """

    def __init__(
        self,
        owner: str,
        source_spec: Mapping[str, Any],
        *,
        operators: Sequence[tuple[str | None, HostOperator]],
        seed: int,
        batch_size: int,
        spec: Mapping[str, jax.ShapeDtypeStruct] | None = None,
    ):
        self.owner = owner
        self.operators = tuple(operators)
        self.seed = seed
        self.batch_size = batch_size
        self.filtered = any(isinstance(op, HostFilter) for _, op in self.operators)
        self._source_spec = dict(source_spec)
        self._ragged = any(is_host_spec(leaf) for leaf in self._source_spec.values())
        self._local = threading.local()  # one HostRng per thread (see _generator)
        self.spec = dict(spec) if spec is not None else None

    # -- per-record operators -------------------------------------------------

    def _generator(self) -> HostRng:
        # Threads of a pool share the stage: each keeps its own generator.
        rng = getattr(self._local, "rng", None)
        if rng is None:
            rng = self._local.rng = HostRng()
        return rng

    def rng_states(self, epoch: int, records: np.ndarray) -> list[Any]:
        """The host generator states of ``records`` for each operator (None for a deterministic one)."""
        return [
            host_rng_states(self.seed, key_name, epoch, records) if key_name is not None else None
            for key_name, _ in self.operators
        ]

    def transform(self, element: dict[str, Any], record: int, states: list[Any], row: int) -> dict[str, Any] | None:
        """Runs the host operators on one record; None if a ``HostFilter`` drops it."""
        result = self._transform_or_drop(element, record, states, row)
        return None if isinstance(result, int) else result

    def _transform_or_drop(self, element: dict[str, Any], record: int, states: list[Any], row: int) -> dict | int:
        """The transformed record, or the index of the ``HostFilter`` that dropped it."""
        rng = self._generator() if states else None
        for index, ((key_name, op), state) in enumerate(
            zip(self.operators, states or [None] * len(self.operators), strict=True)
        ):
            generator = rng.for_state(state[row]) if key_name is not None else None
            try:
                if isinstance(op, HostFilter):
                    if not op.keep(element, generator):
                        return index  # dropped: later operators never see it
                    continue
                element = op.apply(element, generator)
            except Exception as error:  # noqa: BLE001 - re-raised naming the record and operator
                raise HostStageError(
                    f"host stage: {type(op).__name__} failed on record {record} of {self.owner}: "
                    f"{describe_error(error)}"
                ) from error
            if not isinstance(element, Mapping):
                raise HostStageError(
                    f"host stage: {type(op).__name__}.apply must return a dict, got {type(element).__name__} "
                    f"for record {record}"
                )
        return dict(element)

    # -- a batch --------------------------------------------------------------

    def collate(
        self,
        read: Mapping[str, Any],
        records: np.ndarray,
        valid_rows: int,
        *,
        epoch: int,
        out: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
        """One batch from the columns ``read`` for the first ``valid_rows`` of ``records``.

        Args:
            read: The valid rows' columns, in ``read_records`` form (checked against the source spec).
            records: The batch's ``B`` int64 record identities (padding rows repeat the last real one).
            valid_rows: The real rows.
            epoch: The epoch (host generators).
            out: Optional preallocated arrays (one per column of ``spec``,
                batched) to write into, e.g. views of shared memory.

        Returns:
            ``(columns, records, valid_rows)``; with a ``HostFilter``, the kept
            records packed at the front and their count, and in ``records``
            after them one ``-(i + 1)`` per dropped record (``i`` the
            dropping filter's index among the host stages), in order.

        Raises:
            HostStageError: Naming the record and operator that failed.
        """
        if out is None and valid_rows == self.batch_size and not self.operators and not self._ragged:
            # The read is already the batch (checked against the spec): no copy.
            return {name: np.ascontiguousarray(read[name]) for name in self.spec}, records, valid_rows
        columns = out if out is not None else self.allocate()
        if not self.operators and not self._ragged:
            for name, column in columns.items():
                column[:valid_rows] = read[name]
        elif not self.operators:  # ragged columns: each record is checked against record 0's shape
            for row in range(valid_rows):
                self._store(columns, {name: read[name][row] for name in read}, row, int(records[row]))
        else:
            states = self.rng_states(epoch, records[:valid_rows])
            stochastic = any(s is not None for s in states)
            kept_records = records.copy()
            kept, dropped_by = 0, []
            for row in range(valid_rows):
                element = {name: read[name][row] for name in read}
                element = self._transform_or_drop(element, int(records[row]), states if stochastic else [], row)
                if isinstance(element, int):
                    dropped_by.append(element)
                    continue
                # Kept records are packed at the front, in stream order (the same rows without a filter).
                self._store(columns, element, kept, int(records[row]))
                kept_records[kept] = records[row]
                kept += 1
            records, valid_rows = kept_records, kept
            if self.filtered:  # no padding: the rows after the kept ones say which filter dropped what
                records[kept : kept + len(dropped_by)] = -1 - np.asarray(dropped_by, np.int64)
                return columns, records, valid_rows
        if valid_rows:
            records[valid_rows:] = records[valid_rows - 1]
            for column in columns.values():
                column[valid_rows:] = column[valid_rows - 1]
        return columns, records, valid_rows

    def allocate(self) -> dict[str, np.ndarray]:
        """Empty output arrays for one batch."""
        return empty_columns(self.spec, self.batch_size)

    def _store(self, columns: Mapping[str, np.ndarray], element: Mapping[str, Any], row: int, record: int) -> None:
        if set(element) != set(columns):
            raise HostStageError(
                f"host stage: record {record} has columns {sorted(element)} but the first record had {sorted(columns)}"
            )
        for name, column in columns.items():
            value = np.asarray(element[name])
            if value.shape != column.shape[1:] or value.dtype != column.dtype:
                raise HostStageError(
                    f"host stage: column {name!r} of record {record} is {value.dtype}{list(value.shape)} but the "
                    f"first record's is {column.dtype}{list(column.shape[1:])}; every record must collate to one "
                    "shape (resize or pad it with a host operator)"
                )
            column[row] = value

    def spec_from_element(self, element: Mapping[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
        """The collated spec of one transformed record.

        Raises:
            TypeError: If a column is not a numeric array (bytes left undecoded, say).
        """
        spec = {}
        for name, value in element.items():
            array = np.asarray(value) if not isinstance(value, bytes | str) else None
            if array is None or array.dtype.kind not in "biuf":
                kind = type(value).__name__ if array is None else str(array.dtype)
                source_leaf = self._source_spec.get(name)
                hint = f" (the source's {spec_to_str(source_leaf)})" if is_host_spec(source_leaf) else ""
                raise TypeError(
                    f"host stage: column {name!r} of record 0 is {kind}{hint}, not a numeric array: only numeric "
                    "arrays reach the device; decode or drop it with a host operator (e.g. DecodeImage)"
                )
            spec[name] = jax.ShapeDtypeStruct(array.shape, array.dtype)
        return spec


__all__ = ["HostStageError", "RecordCollator", "describe_error", "dropped_by_stage", "host_counts"]

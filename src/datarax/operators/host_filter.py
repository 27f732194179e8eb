"""``HostFilter``: drops the records a predicate rejects, in a host source's pipeline.

``HostFilter(config, predicate=keep)`` in ``Pipeline(host_stages=[...])``
keeps a record when ``keep(element, rng)`` is true, at its place in the host
operators (after a decode, before a resize, ...); later operators never see a
dropped record. Batches stay full: the host stage reads on until it has
``batch_size`` kept records, and only the epoch's last batch may be short
(padded and masked by ``valid_mask`` as usual, or dropped with
``drop_remainder=True``).

**Positions and resume.** With a filter the iterator's ``position`` counts the
records *examined* in the epoch, not the rows served: the state after a batch
is the position of the first record not yet served, so ``set_state`` resumes
exactly, on any worker count. The predicate must be a pure function of the
record (and of ``rng``, the record's generator when the filter is
stochastic): it is what makes the kept records the same on every run.
Because how many records a batch examines is known only after reading them,
a filtered pipeline has no ``len`` and its iterator no ``scan``.

Counting: ``get_operation_stats`` counts the records the filter kept as
applied and the records it dropped as skipped.

Example:
    >>> import numpy as np
    >>> def even(element, rng):
    ...     return int(element["x"]) % 2 == 0
    >>> keep_even = HostFilter(HostFilterConfig(), predicate=even)
    >>> keep_even.keep({"x": np.int64(4)}, None), keep_even.keep({"x": np.int64(5)}, None)
    (True, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from datarax.core.config import OperatorConfig
from datarax.core.host_operator import HostOperator
from datarax.operators._checks import require_callable, require_config


@dataclasses.dataclass(frozen=True)
class HostFilterConfig(OperatorConfig):
    """Configuration of a ``HostFilter`` (only the ``OperatorConfig`` fields).

    Example:
        >>> HostFilterConfig(stochastic=True, stream_name="subsample").stream_name
        'subsample'
    """


class HostFilter(HostOperator):
    """Keeps the records for which ``predicate(element, rng)`` is true (see the module docstring).

    Args:
        config: A ``HostFilterConfig``.
        predicate: Takes one record (dict of numpy values) and its generator
            (None when deterministic); returns a bool. For
            ``worker_kind="process"`` it must be picklable (module level).
        name: Optional name (a stochastic filter's key name when given).

    Raises:
        TypeError: If ``config`` is not a ``HostFilterConfig`` or ``predicate`` is not callable.

    Example:
        >>> import numpy as np
        >>> def subsample(element, rng):
        ...     return bool(rng.random() < 0.25)
        >>> quarter = HostFilter(HostFilterConfig(stochastic=True, stream_name="subsample"), predicate=subsample)
        >>> quarter.key_name, quarter.keep({"x": np.int64(1)}, np.random.default_rng(3))
        ('subsample', True)
    """

    def __init__(
        self,
        config: HostFilterConfig,
        predicate: Callable[[dict[str, Any], np.random.Generator | None], bool],
        *,
        name: str | None = None,
    ):
        require_config(self, config, HostFilterConfig)
        require_callable(type(self).__name__, "predicate", predicate)
        super().__init__(config, name=name)
        self.predicate = predicate

    def keep(self, element: dict[str, Any], rng: np.random.Generator | None) -> bool:
        """Whether the record is kept.

        Raises:
            TypeError: If the predicate returns something other than a bool
                (a numpy bool or a 0-d bool array is fine).
        """
        verdict = self.predicate(element, rng)
        if isinstance(verdict, np.ndarray) and verdict.shape == () and verdict.dtype == np.bool_:
            verdict = bool(verdict)
        if not isinstance(verdict, bool | np.bool_):
            raise TypeError(f"HostFilter: predicate must return a bool, got {type(verdict).__name__} {verdict!r}")
        return bool(verdict)

    def apply(self, element: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        """The record unchanged (the host stage calls ``keep`` to decide whether it goes on)."""
        return element


__all__ = ["HostFilter", "HostFilterConfig"]

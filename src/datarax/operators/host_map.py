"""``HostMapOperator``: a host operator from a user function, for per-record Python/numpy work.

The host counterpart of ``ElementOperator``: give ``fn(element, rng) ->
element`` and it runs on each record in the pipeline's host stage, before the
batch goes to the device. ``rng`` is the record's ``numpy.random.Generator``
(derived from the pipeline seed, the operator's key name, the epoch and the
record) when the operator is stochastic, and None otherwise, so ``fn`` never
draws from a global generator and its draws are the same for any worker count.

For ``Pipeline(worker_kind="process")`` ``fn`` must be picklable: a function
defined at module level, not a lambda or a closure.

Example:
    >>> import numpy as np
    >>> def tokens_to_length(element, rng):
    ...     tokens = np.asarray(element["tokens"])[:4]
    ...     return {"tokens": np.pad(tokens, (0, 4 - len(tokens))).astype(np.int32)}
    >>> op = HostMapOperator(HostMapOperatorConfig(), fn=tokens_to_length)
    >>> op.apply({"tokens": [5, 6]}, None)["tokens"].tolist()
    [5, 6, 0, 0]
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
class HostMapOperatorConfig(OperatorConfig):
    """Configuration of a ``HostMapOperator`` (only the ``OperatorConfig`` fields).

    Example:
        >>> HostMapOperatorConfig(stochastic=True, stream_name="jitter").stream_name
        'jitter'
    """


class HostMapOperator(HostOperator):
    """Applies ``fn(element, rng) -> element`` to every record on the host.

    Args:
        config: A ``HostMapOperatorConfig``.
        fn: Takes one record (dict of numpy values, no batch axis) and its
            generator (None when deterministic); returns the new record dict.
        name: Optional name (a stochastic operator's key name when given).

    Raises:
        TypeError: If ``config`` is not a ``HostMapOperatorConfig`` or ``fn`` is not callable.

    Example:
        >>> import numpy as np
        >>> def jitter(element, rng):
        ...     return {**element, "x": element["x"] + rng.integers(0, 3)}
        >>> op = HostMapOperator(HostMapOperatorConfig(stochastic=True, stream_name="jitter"), fn=jitter)
        >>> op.key_name, bool(10 <= op.apply({"x": 10}, np.random.default_rng(0))["x"] <= 12)
        ('jitter', True)
    """

    def __init__(
        self,
        config: HostMapOperatorConfig,
        fn: Callable[[dict[str, Any], np.random.Generator | None], dict[str, Any]],
        *,
        name: str | None = None,
    ):
        require_config(self, config, HostMapOperatorConfig)
        require_callable(type(self).__name__, "fn", fn)
        super().__init__(config, name=name)
        self.fn = fn

    def apply(self, element: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        """Calls ``fn`` on one record.

        Args:
            element: The record.
            rng: Its generator (stochastic) or None.

        Returns:
            What ``fn`` returns.
        """
        return self.fn(element, rng)


__all__ = ["HostMapOperator", "HostMapOperatorConfig"]

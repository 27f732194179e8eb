"""``HostOperator``: per-record Python/numpy work in the pipeline's host stage.

Some work cannot or should not be jitted: decoding JPEG bytes, resizing
images of varying size to one shape, tokenising text. A host operator does it
on the host, one record at a time, between a host source's ``read_records``
and the batch's transfer to the device:

    element (dict of numpy values, one record)  ->  apply(element, rng)  ->  element

The last host operator must leave every column a numpy array of one fixed
shape and dtype, so the records collate into a fixed-shape batch; the
pipeline infers that shape from the first record when it is built and
refuses, naming the record and the column, any record that differs.

**Randomness.** A stochastic operator (``OperatorConfig(stochastic=True,
stream_name=...)``) receives a ``numpy.random.Generator`` derived from
(pipeline seed, key name, epoch, record) (``datarax.core.prng.host_rng``);
its key name is its ``name``, else its ``stream_name``, as for device
operators. So its draws depend on nothing else: not on the worker, the
thread, the batch or the number of workers. The generator is valid for the
call only. A deterministic operator receives ``None``.

Host operators run in worker threads or spawned worker processes, so
``apply`` must not change ``self``; in a process it runs on a copy rebuilt
from the operator's class and constructor arguments.

Example:
    >>> import numpy as np
    >>> from datarax.core.config import OperatorConfig
    >>> class Jitter(HostOperator):
    ...     def apply(self, element, rng):
    ...         return {**element, "x": element["x"] + rng.uniform(-0.5, 0.5)}
    >>> jitter = Jitter(OperatorConfig(stochastic=True, stream_name="jitter"))
    >>> jitter.key_name
    'jitter'
    >>> out = jitter.apply({"x": np.float32(1.0)}, np.random.default_rng(0))
    >>> bool(0.5 <= out["x"] <= 1.5)
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

from datarax.core.config import OperatorConfig
from datarax.core.constructor_args import recipe
from datarax.core.module import DataraxModule


class HostOperator(DataraxModule):
    """Base class of host operators (see the module docstring).

    Args:
        config: ``OperatorConfig`` (or subclass); ``stochastic=True`` with a
            ``stream_name`` for an operator that draws.
        name: Optional name; a stochastic operator's key name when given.

    Raises:
        TypeError: If ``config`` is not an ``OperatorConfig``.
    """

    def __init__(self, config: OperatorConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        if not isinstance(config, OperatorConfig):
            raise TypeError(f"{type(self).__name__}: config must be an OperatorConfig, got {type(config).__name__}")
        if rngs is not None:
            raise ValueError(
                f"{type(self).__name__}: host operators take no rngs; their generators derive from the pipeline seed"
            )
        super().__init__(config, name=name)

    @property
    def stochastic(self) -> bool:
        """Whether ``apply`` receives a generator."""
        return self.config.stochastic

    @property
    def stream_name(self) -> str | None:
        """The configured stream name (a stochastic operator's key name unless it has a ``name``)."""
        return self.config.stream_name

    @property
    def key_name(self) -> str | None:
        """The name its generators derive from: ``name``, else ``stream_name`` (None if deterministic)."""
        if not self.stochastic:
            return None
        return self.name or self.config.stream_name

    def apply(self, element: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        """Transforms one record.

        Args:
            element: Column name to numpy value (array, scalar or bytes) of one record.
            rng: The record's generator if the operator is stochastic, else None.

        Returns:
            The transformed record (a new dict; ``element`` is not modified).

        Raises:
            NotImplementedError: On the base class (subclasses implement it).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement apply(element, rng)")

    def worker_recipe(self) -> tuple[type, Any, dict[str, Any], str | None]:
        """What a worker process needs to rebuild this operator: ``(class, config, arguments, name)``."""
        return recipe(self)


__all__ = ["HostOperator"]

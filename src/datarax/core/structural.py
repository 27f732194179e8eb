"""Structural modules: components that reorganise data without changing values.

Sources, batchers, samplers and sharders decide *which* records go *where*;
they hold no learnable parameters. ``StructuralModule`` checks at
construction that a stochastic module has the rng stream it draws from.

Example:
    >>> from datarax.core.config import StructuralConfig
    >>> from datarax.core.structural import StructuralModule
    >>> class Reverse(StructuralModule):
    ...     def process(self, items):
    ...         return list(reversed(items))
    >>> Reverse(StructuralConfig())([1, 2, 3])
    [3, 2, 1]
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from datarax.core.config import StructuralConfig
from datarax.core.module import DataraxModule, check_stream_available


class StructuralModule(DataraxModule):
    """Base class for non-parametric structural processors.

    Args:
        config: ``StructuralConfig`` (or subclass), already validated.
        rngs: Random number generators (required if ``config.stochastic``).
        name: Optional module name.

    Raises:
        TypeError: If ``config`` is not a ``StructuralConfig``.
        ValueError: If ``stochastic=True`` but ``rngs`` is None or lacks the
            configured stream.
    """

    def __init__(
        self,
        config: StructuralConfig,
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        if not isinstance(config, StructuralConfig):
            raise TypeError(f"{type(self).__name__}: config must be a StructuralConfig, got {type(config).__name__}")
        if config.stochastic:
            check_stream_available(type(self).__name__, config.stream_name, rngs)
        super().__init__(config, rngs=rngs, name=name)
        self.stochastic = config.stochastic
        self.stream_name = config.stream_name

    def process(self, input: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: A002
        """Process input structure (subclasses must implement).

        Args:
            input: Input to process (type varies by processor).
            *args: Additional positional arguments (processor-specific).
            **kwargs: Additional keyword arguments (processor-specific).

        Returns:
            Processed output (type varies by processor).

        Raises:
            NotImplementedError: On the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement process()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Delegates to ``process``."""
        return self.process(*args, **kwargs)


__all__ = ["StructuralModule"]

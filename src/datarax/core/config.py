"""Frozen, validated configuration dataclasses for datarax modules.

Every datarax module takes one config object. Configs are frozen dataclasses
that validate themselves in ``__post_init__``, so an invalid combination fails
where it is written rather than at the first batch. Subclasses add fields and
extend validation by overriding ``__post_init__`` and calling ``super()``.

Configs are stored as static (non-traced) module attributes, so they must be
hashable: ``precomputed_stats`` is frozen into a hashable ``FrozenStats``.
Assigning to a field of a built config raises ``FrozenInstanceError``; derive
a changed config with ``dataclasses.replace`` (which validates it again).

Example:
    >>> from datarax.core.config import OperatorConfig
    >>> OperatorConfig(stochastic=True, stream_name="augment").stream_name
    'augment'
    >>> OperatorConfig(stochastic=True)
    Traceback (most recent call last):
    ...
    ValueError: OperatorConfig: stochastic=True requires a stream_name (got stream_name=None)
    >>> config = OperatorConfig()
    >>> try:
    ...     config.stochastic = True
    ... except FrozenInstanceError as err:
    ...     print(type(err).__name__)
    FrozenInstanceError
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from datarax.core.validation import boolean

FrozenInstanceError = dataclasses.FrozenInstanceError
"""What assigning to a field of a config raises (configs are frozen dataclasses).

It is ``dataclasses.FrozenInstanceError`` itself, a subclass of ``AttributeError``.
"""


class FrozenStats(Mapping):
    """A read-only, hashable mapping of statistics.

    Statistics usually hold arrays, which are unhashable; configs live in the
    static part of an NNX graph definition, which is hashed by ``jax.jit``.
    The hash therefore covers only the keys, and equality compares values
    with ``numpy.array_equal`` so that ``==`` and ``hash`` stay consistent.
    """

    def __init__(self, items: Mapping[str, Any]):
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted(map(str, self._items))))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping) or set(other) != set(self._items):
            return False
        return all(np.array_equal(np.asarray(self._items[k]), np.asarray(other[k])) for k in self._items)

    def __repr__(self) -> str:
        return f"FrozenStats({self._items!r})"


@dataclasses.dataclass(frozen=True)
class DataraxModuleConfig:
    """Configuration shared by every datarax module.

    Attributes:
        cacheable: Whether the module keeps a plain-dict ``_cache``.
        batch_stats_fn: Function computing a statistics dict from data; used by
            ``DataraxModule.compute_statistics``.
        precomputed_stats: Fixed statistics returned by ``get_statistics``.

    Raises:
        ValueError: If both ``batch_stats_fn`` and ``precomputed_stats`` are set,
            or a field has the wrong type.
    """

    cacheable: bool = False
    batch_stats_fn: Callable[[Any], dict[str, Any]] | None = None
    precomputed_stats: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        object.__setattr__(self, "cacheable", boolean(name, "cacheable", self.cacheable))
        if self.batch_stats_fn is not None and not callable(self.batch_stats_fn):
            raise ValueError(f"{name}: batch_stats_fn must be callable or None, got {self.batch_stats_fn!r}")
        if self.precomputed_stats is not None and not isinstance(self.precomputed_stats, Mapping):
            raise ValueError(
                f"{name}: precomputed_stats must be a mapping or None, got {type(self.precomputed_stats).__name__}"
            )
        if self.batch_stats_fn is not None and self.precomputed_stats is not None:
            raise ValueError(
                f"{name}: batch_stats_fn and precomputed_stats are mutually exclusive; set at most one of them"
            )
        if self.precomputed_stats is not None and not isinstance(self.precomputed_stats, FrozenStats):
            object.__setattr__(self, "precomputed_stats", FrozenStats(self.precomputed_stats))


def _validate_stream(config: Any) -> None:
    """Checks the stochastic/stream_name pairing shared by structural and operator configs."""
    name = type(config).__name__
    object.__setattr__(config, "stochastic", boolean(name, "stochastic", config.stochastic))
    if config.stream_name is not None and (not isinstance(config.stream_name, str) or not config.stream_name):
        raise ValueError(f"{name}: stream_name must be a non-empty string or None, got {config.stream_name!r}")
    if config.stochastic and config.stream_name is None:
        raise ValueError(f"{name}: stochastic=True requires a stream_name (got stream_name=None)")
    if not config.stochastic and config.stream_name is not None:
        raise ValueError(
            f"{name}: a deterministic module (stochastic=False) must not set stream_name "
            f"(got stream_name={config.stream_name!r})"
        )


@dataclasses.dataclass(frozen=True)
class StructuralConfig(DataraxModuleConfig):
    """Configuration for structural modules (sources, batchers, samplers, sharders).

    Attributes:
        stochastic: Whether the module draws randomness.
        stream_name: The ``nnx.Rngs`` stream a stochastic module draws from;
            required when ``stochastic`` is True and forbidden otherwise.
    """

    stochastic: bool = False
    stream_name: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _validate_stream(self)


@dataclasses.dataclass(frozen=True)
class OperatorConfig(DataraxModuleConfig):
    """Configuration for operators (per-element transforms).

    Attributes:
        stochastic: Whether the operator draws randomness per record.
        stream_name: The ``nnx.Rngs`` stream whose seed keys this operator's
            per-record randomness; required when ``stochastic`` is True and
            forbidden otherwise.
    """

    stochastic: bool = False
    stream_name: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _validate_stream(self)


__all__ = ["DataraxModuleConfig", "FrozenInstanceError", "FrozenStats", "OperatorConfig", "StructuralConfig"]

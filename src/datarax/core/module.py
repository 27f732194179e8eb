"""Base module class for all datarax modules.

``DataraxModule`` is the one contract every component (source, sampler,
operator, batcher, pipeline) follows. It is an ``nnx.Module``, so datarax
components compose with models, optimizers and Orbax, and adds:

* statistics (``compute_statistics`` / ``get_statistics`` / ...), stored in an
  ``nnx.Variable`` so they travel with the module's state;
* a plain-dict ``_cache`` when the config asks for one;
* operation counters ``_applied_count`` / ``_skipped_count``. They are
  ``IterationCount`` variables holding JAX arrays, not Python ints: NNX treats
  Python ints as static, and static values cannot be mutated inside
  ``nnx.jit`` / ``nnx.vmap``; arrays can;
* ``copy`` (rebuild with changed config, rngs or name, from the recorded
  constructor arguments: ``datarax.core.constructor_args``), ``clone`` (same
  state);
* ``get_state`` / ``set_state`` with a strict structure check, so a
  checkpoint from a differently built module is refused rather than half
  applied (``datarax.core.module_state``).

``CheckpointableIteratorModule`` adds the iteration variables (``epoch``,
``position``, ``idx``, ``current``) that resumable iterators keep.

Example:
    >>> from datarax.core.config import DataraxModuleConfig
    >>> from datarax.core.module import DataraxModule
    >>> m = DataraxModule(DataraxModuleConfig(batch_stats_fn=lambda x: {"n": len(x)}))
    >>> m.compute_statistics([1, 2, 3])
    {'n': 3}
    >>> state = m.get_state()
    >>> m2 = DataraxModule(DataraxModuleConfig(batch_stats_fn=lambda x: {"n": len(x)}))
    >>> m2.set_state(state)
    >>> m2.get_statistics()
    {'n': 3}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic

import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core import row_tally
from datarax.core.config import DataraxModuleConfig
from datarax.core.constructor_args import rebuild, record_constructor_args, share_constructor_arguments
from datarax.core.module_state import module_state_dict, restore_module_state
from datarax.typing import T_co


class IterationCount(nnx.Variable):
    """Variable type for iteration counters.

    Holds a JAX array (``jnp.array(0)``) rather than a Python int: NNX treats
    Python ints as static, so they cannot be mutated inside ``nnx.jit`` or
    ``nnx.vmap``; arrays are data and can. Having a type of its own also lets
    transforms single counters out, e.g. ``nnx.StateAxes({IterationCount: None})``
    to broadcast them or ``nnx.StateAxes({IterationCount: nnx.Carry})`` to carry them.

    A count is a value, as a JAX array is: a pipeline stores its counts as
    read-only 0-d NumPy arrays, reading one (``counter[...]``,
    ``get_value``) gives a copy the caller may change, and writing one
    (``counter[...] = 0``, ``counter[...] += 1``) replaces the array rather
    than changing it in place, so a count read or saved earlier never changes.

    Example:
        >>> import numpy as np
        >>> count = IterationCount(np.array(3, np.int32))
        >>> saved = count.get_raw_value()
        >>> count[...] += 2
        >>> int(count[...]), int(saved)
        (5, 3)

    A pipeline does not write these counts on every batch: a batch adds its
    rows to its iterator's tally, and the count adds the rows it has not seen
    when it is read (``datarax.core.row_tally``); a reader sees the same
    values.
    """

    __slots__ = ("_tallies",)  # [[RowTally, rows already counted], ...]: the tallies this count follows

    def get_value(self, **kwargs: Any) -> Any:
        value = super().get_value(**kwargs)
        if isinstance(value, np.ndarray):
            value = value.copy()  # never a view of the stored count: the caller may change what it gets
        return value

    def set_value(self, value: Any, **kwargs: Any) -> None:
        raw = self.get_raw_value()
        if "index" in kwargs and isinstance(raw, np.ndarray):
            # Never in place: an array written here may be shared, or held by a saved state.
            replaced = raw.copy()
            replaced[kwargs.pop("index")] = value
            value = replaced
        super().set_value(value, **kwargs)


row_tally.install(IterationCount)


def check_stream_available(owner: str, stream_name: str, rngs: nnx.Rngs | None) -> None:
    """A stochastic module needs rngs that serve its stream (named, or ``default`` as fallback)."""
    if rngs is None:
        raise ValueError(f"{owner}: stochastic=True requires rngs with stream {stream_name!r}, got rngs=None")
    # nnx.Rngs serves a missing named stream from "default".
    if stream_name not in rngs and "default" not in rngs:
        raise ValueError(f"{owner} requires rng stream(s) [{stream_name!r}], but only {list(rngs)} are available")


class DataraxModule(nnx.Module):
    """Base class for all datarax modules.

    Args:
        config: The module's validated ``DataraxModuleConfig`` (or subclass).
        rngs: Random number generators (optional).
        name: Optional name for the module.

    Attributes:
        config: Module configuration (static).
        rngs: Random number generators.
        name: Module name.
        _cache: Cache storage: a plain dict if ``config.cacheable``, else None.
        _computed_stats: ``nnx.Variable`` holding computed statistics or None.
        _applied_count: ``IterationCount`` of applied operations.
        _skipped_count: ``IterationCount`` of skipped operations.

    Raises:
        TypeError: If ``config`` is not a ``DataraxModuleConfig``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = record_constructor_args(init)

    @record_constructor_args
    def __init__(
        self,
        config: DataraxModuleConfig,
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        if not isinstance(config, DataraxModuleConfig):
            raise TypeError(f"{type(self).__name__}: config must be a DataraxModuleConfig, got {type(config).__name__}")
        if rngs is not None and not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"{type(self).__name__}: rngs must be an nnx.Rngs or None, got {type(rngs).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}: name must be a str or None, got {name!r}")
        self.config = config
        self.rngs = rngs
        self.name = name
        self._cache: dict[int, Any] | None = {} if config.cacheable else None
        self._computed_stats = nnx.Variable(None)
        # A plain (static) bool, not a Variable: get_statistics branches on it,
        # which must also work inside nnx.jit, where Variable values are traced.
        self._stats_reset = False
        self._applied_count = IterationCount(jnp.array(0, dtype=jnp.int32))
        self._skipped_count = IterationCount(jnp.array(0, dtype=jnp.int32))

    # -- operation counters -------------------------------------------------

    def get_operation_stats(self) -> dict[str, int]:
        """Get operation statistics.

        Converts the counters to Python ints, so call it outside ``jit``.

        Returns:
            Dictionary with ``'applied_count'`` and ``'skipped_count'``.
        """
        return {
            "applied_count": int(self._applied_count[...]),
            "skipped_count": int(self._skipped_count[...]),
        }

    def reset_operation_stats(self) -> None:
        """Reset operation statistics to zero (with new JAX arrays)."""
        self._applied_count.set_value(jnp.array(0, dtype=jnp.int32))
        self._skipped_count.set_value(jnp.array(0, dtype=jnp.int32))

    # -- statistics ---------------------------------------------------------

    def compute_statistics(self, data: Any) -> dict[str, Any] | None:
        """Compute statistics from data using ``config.batch_stats_fn``.

        Args:
            data: Input data to compute statistics from.

        Returns:
            The statistics dict (also cached in ``_computed_stats``), or None
            if no ``batch_stats_fn`` is configured.
        """
        fn = self.config.batch_stats_fn
        if fn is None:
            return None
        stats = fn(data)
        if not isinstance(stats, Mapping):
            raise TypeError(f"{type(self).__name__}: batch_stats_fn must return a dict, got {type(stats).__name__}")
        stats = dict(stats)
        self._computed_stats.set_value(stats)
        self._stats_reset = False
        return stats

    def get_statistics(self) -> dict[str, Any] | None:
        """Get current statistics.

        Returns:
            ``precomputed_stats`` if configured (unless ``reset_statistics``
            was called since), otherwise the computed statistics, or None.
        """
        computed = self._computed_stats.get_value()
        if computed is not None:
            return computed
        if self.config.precomputed_stats is not None and not self._stats_reset:
            return dict(self.config.precomputed_stats)
        return None

    def set_statistics(self, stats: dict[str, Any]) -> None:
        """Manually set statistics, overwriting any computed ones.

        Args:
            stats: Dictionary of statistics to set.

        Raises:
            TypeError: If ``stats`` is not a dict.
        """
        if not isinstance(stats, Mapping):
            raise TypeError(f"set_statistics: stats must be a dict, got {type(stats).__name__}")
        self._computed_stats.set_value(dict(stats))
        self._stats_reset = False

    def reset_statistics(self) -> None:
        """Reset all statistics to None, precomputed ones included."""
        self._computed_stats.set_value(None)
        self._stats_reset = True

    def reset_cache(self) -> None:
        """Clear the cache (only has an effect if ``cacheable=True``)."""
        if self._cache is not None:
            self._cache.clear()

    # -- copies -------------------------------------------------------------

    def copy(
        self,
        *,
        config: DataraxModuleConfig | None = None,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ) -> DataraxModule:
        """Create a copy of this module with optional config, rngs or name changes.

        The copy is built by calling the constructor again with the arguments
        this module was built with (so subclasses with extra constructor
        arguments work), then takes over this module's state wherever the
        structure still matches (statistics, counters, parameters; the rng
        state too unless new ``rngs`` are given).

        Args:
            config: New config (if None, uses the current config).
            rngs: New RNG state (if None, a copy of the current rngs).
            name: New name (if None, uses the current name).

        Returns:
            New module instance with updated parameters.

        Example:
            >>> from datarax.core.config import DataraxModuleConfig
            >>> m = DataraxModule(DataraxModuleConfig(), name="a")
            >>> m.copy(name="b").name
            'b'
        """
        new_config = self.config if config is None else config
        new_name = self.name if name is None else name
        new_rngs = rngs if rngs is not None else (nnx.clone(self.rngs) if self.rngs else None)
        new = rebuild(self, config=new_config, rngs=new_rngs, name=new_name)
        if new is None:
            # Built without __init__ (e.g. by nnx.merge), so no record of its arguments: clone instead.
            new = nnx.clone(self)
            new.config, new.name = new_config, new_name
            new.rngs = nnx.data(new_rngs) if new_rngs is not None else None
            new._cache = {} if new_config.cacheable else None
            return new
        keep_rngs = rngs is None
        source = dict(nnx.to_flat_state(nnx.state(self, nnx.Variable)))
        for path, var in nnx.to_flat_state(nnx.state(new, nnx.Variable)):
            if path in source and (keep_rngs or path[:1] != ("rngs",)):
                value = source[path].get_value()
                if getattr(value, "shape", None) == getattr(var.get_value(), "shape", None):
                    var.set_value(value)
        new._stats_reset = self._stats_reset
        return new

    def clone(self) -> DataraxModule:
        """Create a new instance with the same state as this module (``nnx.clone``)."""
        new = nnx.clone(self)
        # The cache is a static attribute, which nnx.clone shares; give the clone its own.
        new._cache = dict(self._cache) if self._cache is not None else None
        share_constructor_arguments(self, new)
        return new

    # -- checkpointing ------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Get module state for checkpointing.

        Every ``nnx.Variable`` of the module becomes an entry of a nested dict
        keyed by attribute path. Arrays held as plain ``nnx.data`` (a source's
        records) are not state and are left out, so checkpoints stay small;
        typed PRNG keys are stored as their raw key data so the result holds
        only plain values and arrays (see ``datarax.core.module_state``).

        Returns:
            A dictionary containing the internal state of the component.
        """
        return module_state_dict(self)

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore module state from a checkpoint.

        Restoration is strict and atomic: the checkpoint must hold exactly the
        module's variables with matching array shapes, otherwise nothing is
        changed.

        Args:
            state: A dictionary as returned by ``get_state``.

        Raises:
            TypeError: If ``state`` is not a dictionary.
            ValueError: If the checkpoint structure does not match the module state.
        """
        restore_module_state(self, state)

    # -- rng streams --------------------------------------------------------

    def requires_rng_streams(self) -> list[str] | None:
        """Get the list of RNG streams required by this module.

        Returns:
            ``[stream_name]`` for a stochastic module, otherwise None.
        """
        if getattr(self.config, "stochastic", False) and getattr(self.config, "stream_name", None):
            return [self.config.stream_name]
        return None

    def ensure_rng_streams(self, stream_names: list[str]) -> None:
        """Ensure that the required RNG streams are available.

        Args:
            stream_names: A list of available RNG stream names.

        Raises:
            ValueError: If a required RNG stream is not available.
        """
        missing = [s for s in self.requires_rng_streams() or [] if s not in stream_names]
        if missing:
            raise ValueError(
                f"{type(self).__name__} requires rng stream(s) {missing}, but only {list(stream_names)} are available"
            )


class CheckpointableIteratorModule(DataraxModule, Generic[T_co]):
    """Base class for iterator modules that can be checkpointed.

    Adds the iteration state a resumable iterator keeps. The variables hold
    plain Python values so the state stays small and JSON-serialisable.

    Args:
        config: ``DataraxModuleConfig`` for the module.
        rngs: Optional Rngs object for randomness.
        name: Optional name for the module.

    Attributes:
        epoch: Current epoch (``nnx.Variable``).
        position: Current position in iteration (``nnx.Variable``).
        idx: Current index (``nnx.Variable``).
        current: Current item being processed (``nnx.Variable``).
    """

    def __init__(
        self,
        config: DataraxModuleConfig,
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        super().__init__(config, rngs=rngs, name=name)
        self.epoch = nnx.Variable(0)
        self.position = nnx.Variable(0)
        self.idx = nnx.Variable(0)
        self.current = nnx.Variable(None)

    def __iter__(self):
        return self

    def __next__(self) -> T_co:
        """Returns the next item (subclasses implement).

        Raises:
            NotImplementedError: On the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement __next__()")

    def reset(self) -> None:
        """Reset the iterator to its initial state.

        Subclasses override this to add reset logic and call ``super().reset()``.
        """
        self.epoch.set_value(0)
        self.position.set_value(0)
        self.idx.set_value(0)
        self.current.set_value(None)


__all__ = ["CheckpointableIteratorModule", "DataraxModule", "IterationCount"]

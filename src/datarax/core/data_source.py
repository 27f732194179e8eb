"""Base module for data sources.

A data source owns records and answers three questions without side effects:
how many records there are (``__len__``), what one record looks like
(``element_spec``) and which records lie at some positions (``get_batch_at``
for a contiguous range, ``get_records`` for any index vector). Iteration
state lives in the pipeline, never in the source.

**Why traceable.** The pipeline gathers inside its one compiled step: it
calls ``source.get_records(indices)`` with *traced* indices (the shuffled
index vector is computed in the same program). A source therefore implements
one of

* ``get_batch_at(start, size)`` traceable in ``start``, e.g. with
  ``jax.lax.dynamic_slice_in_dim`` (plain ``values[start:start + size]`` needs
  a concrete ``start`` and cannot be traced). The default ``get_records``
  then gathers ``get_batch_at(i, 1)`` for every index under ``jax.vmap``; or
* ``get_records(indices)`` itself, as a vectorised gather (``jnp.take``),
  which needs no ``get_batch_at`` and is the faster choice for big sources.

``check_source_traceable`` runs that contract when a pipeline is built, so a
source that cannot be traced is refused with this recipe instead of failing
at the first batch. Called with concrete (non-traced) indices, the default
``get_records`` also serves a host-only ``get_batch_at`` by looping over it.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from datarax.core.config import StructuralConfig
    >>> from datarax.core.data_source import DataSourceModule, check_source_traceable
    >>> class Squares(DataSourceModule):
    ...     def __init__(self, n, *, rngs=None):
    ...         super().__init__(StructuralConfig(), rngs=rngs)
    ...         self.values = nnx.data(jnp.arange(n) ** 2)
    ...     def __len__(self):
    ...         return self.values.shape[0]
    ...     def element_spec(self):
    ...         return {"x": jax.ShapeDtypeStruct((), self.values.dtype)}
    ...     def get_batch_at(self, start, size, key=None):
    ...         return {"x": jax.lax.dynamic_slice_in_dim(self.values, start, size)}
    >>> squares = Squares(10)
    >>> squares.get_batch_at(2, 3)["x"].tolist()
    [4, 9, 16]
    >>> jax.jit(squares.get_records)(jnp.array([7, 0, 3]))["x"].tolist()
    [49, 0, 9]
    >>> check_source_traceable(squares, batch_size=4)  # what a Pipeline checks when built
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core.config import StructuralConfig
from datarax.core.structural import StructuralModule
from datarax.core.validation import positive_int


class LocalFilesOnlyMixin:
    """Adds a uniform ``local_files_only`` flag to data sources.

    Sources that download external archives (HuggingFace, TFDS, ArrayRecord,
    ...) compose this mixin and call ``_check_local_cache`` before any network
    attempt. The check enforces the air-gapped contract: with
    ``local_files_only=True`` a missing cache raises a ``FileNotFoundError``
    that names the dataset and the exact paths the user must populate, instead
    of a generic "file not found" deep inside a library.

    Subclasses must define ``self.local_files_only: bool`` (usually wired
    through their config dataclass); without it the source may download.

    Example:
        >>> class Cached(LocalFilesOnlyMixin):
        ...     local_files_only = True
        >>> Cached()._check_local_cache(["/no/such/file.npy"], dataset_name="mnist")
        Traceback (most recent call last):
        ...
        FileNotFoundError: Cached: dataset 'mnist' is not in the local cache and local_files_only=True; ...
    """

    local_files_only: bool

    def _check_local_cache(self, expected_paths: Sequence[str | os.PathLike], *, dataset_name: str) -> bool:
        """Checks that every file or directory of the local cache exists.

        Args:
            expected_paths: The files and directories that make up the cache
                (a list or tuple of ``str`` / ``os.PathLike``).
            dataset_name: Name of the dataset, quoted in the error.

        Returns:
            True if every path exists; False if some are missing and
            ``local_files_only`` is False (the caller may then download).

        Raises:
            FileNotFoundError: If ``local_files_only`` is True and a path is
                missing; the message lists every missing path.
            TypeError: If ``expected_paths`` is a single path or holds
                something that is not a path, or ``dataset_name`` is not a str.
        """
        owner = f"{type(self).__name__}._check_local_cache"
        if isinstance(expected_paths, str | bytes | os.PathLike) or not isinstance(expected_paths, Iterable):
            raise TypeError(f"{owner}: expected_paths must be a list of paths, got {expected_paths!r}")
        paths = list(expected_paths)
        for path in paths:
            if not isinstance(path, str | os.PathLike):
                raise TypeError(f"{owner}: expected_paths must hold str or os.PathLike paths, got {path!r}")
        if not isinstance(dataset_name, str) or not dataset_name:
            raise TypeError(f"{owner}: dataset_name must be a non-empty str, got {dataset_name!r}")
        missing = [str(path) for path in paths if not Path(path).exists()]
        if not missing:
            return True
        if getattr(self, "local_files_only", False):
            raise FileNotFoundError(
                f"{type(self).__name__}: dataset {dataset_name!r} is not in the local cache and "
                f"local_files_only=True; populate these paths (or set local_files_only=False): {missing}"
            )
        return False


def _index_vector(owner: str, indices: Any) -> jax.Array | np.ndarray:
    """``indices`` as a 1-D integer array (a tracer stays a tracer)."""
    if not isinstance(indices, jax.Array):
        indices = np.asarray(indices)
        if indices.size == 0:
            indices = indices.astype(np.int32)  # np.asarray([]) is float64
    if indices.ndim != 1 or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(
            f"{owner}.get_records: indices must be a 1-D integer array, got {indices.dtype}{list(indices.shape)}"
        )
    return indices


class DataSourceModule(StructuralModule):
    """Base module for all datarax data sources.

    A subclass defines ``__len__``, ``element_spec`` and either a traceable
    ``get_batch_at`` or a traceable ``get_records`` (see the module docstring).
    Store record arrays with ``nnx.data(...)`` so NNX treats them as pytree
    data, not parameters: plain ``nnx.data`` arrays are not part of
    ``get_state``, which keeps checkpoints small.

    Args:
        config: Structural configuration (already validated, frozen).
        rngs: Random number generators (required if ``stochastic=True``).
        name: Optional module name.

    Raises:
        ValueError: If ``stochastic=True`` but ``rngs`` is None.
    """

    def __init__(
        self,
        config: StructuralConfig,
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        super().__init__(config, rngs=rngs, name=name)

    def get_batch_at(self, start: int | Any, size: int, key: Any | None = None) -> Any:
        """Stateless indexed batch access for pipeline-driven iteration.

        Implementations must not mutate the source and must accept a traced
        ``start`` (use ``jax.lax.dynamic_slice_in_dim``, not Python slicing).

        Args:
            start: Starting index; a Python int or a traced integer scalar.
            size: Number of records (a Python int: JAX shapes are static).
            key: Optional PRNG key for stochastic sampling.

        Returns:
            A batch dict (or pytree) with leading dimension ``size``.

        Raises:
            NotImplementedError: If the source has no indexed access.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support indexed access")

    def get_records(self, indices: Any) -> Any:
        """Gathers the records at ``indices``; traceable when ``get_batch_at`` is.

        The default maps ``get_batch_at(i, 1)`` over the indices with
        ``jax.vmap`` and drops the size-1 axis, so it runs inside ``jax.jit``
        with traced indices. With concrete indices and a ``get_batch_at`` that
        cannot be traced (it reads files, or slices with a Python ``start``),
        it falls back to one host call per index. Sources with random access
        override this with a vectorised gather.

        Args:
            indices: 1-D integer array (numpy, jax, list or tracer) of record indices.

        Returns:
            A batch pytree with leading dimension ``len(indices)``.

        Raises:
            TypeError: If ``indices`` is not a 1-D integer array.
            ValueError: If ``get_batch_at(i, 1)`` does not return a leading
                dimension of 1.
            NotImplementedError: If the source defines neither method.
        """
        owner = type(self).__name__
        indices = _index_vector(owner, indices)
        if isinstance(indices, jax.core.Tracer):
            return self._gather_traced(indices)
        try:
            return self._gather_traced(jnp.asarray(indices))
        except Exception:  # noqa: BLE001 - the host loop below re-raises any error that is not about tracing
            return self._gather_on_host(np.asarray(indices))

    def _drop_unit_axis(self, leaf: Any, axis: int) -> Any:
        if leaf.ndim <= axis or leaf.shape[axis] != 1:
            raise ValueError(
                f"{type(self).__name__}.get_batch_at(start, 1) must return leaves with a leading "
                f"dimension of 1, got a leaf of shape {list(leaf.shape[axis:])}"
            )
        return leaf.reshape(leaf.shape[:axis] + leaf.shape[axis + 1 :])

    def _gather_traced(self, indices: Any) -> Any:
        batch = jax.vmap(lambda i: self.get_batch_at(i, 1))(indices)
        return jax.tree.map(lambda leaf: self._drop_unit_axis(leaf, 1), batch)

    def _gather_on_host(self, indices: np.ndarray) -> Any:
        parts = [self.get_batch_at(int(i), 1) for i in indices]
        if not parts:  # the structure of a record, with zero rows
            return jax.tree.map(lambda leaf: self._drop_unit_axis(leaf, 0)[None][:0], self.get_batch_at(0, 1))
        parts = [jax.tree.map(lambda leaf: self._drop_unit_axis(leaf, 0), part) for part in parts]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *parts)

    def element_spec(self) -> Any:
        """Returns a pytree of ``jax.ShapeDtypeStruct`` describing one element.

        Raises:
            NotImplementedError: Always, on the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement element_spec()")


def _spec_str(leaf: Any) -> str:
    return f"{jnp.dtype(leaf.dtype)}{list(leaf.shape)}"


def check_source_traceable(source: DataSourceModule, batch_size: int) -> None:
    """Checks that ``source`` can be gathered inside a compiled pipeline step.

    Traces ``source.get_records`` on abstract ``int32[batch_size]`` indices
    (``jax.eval_shape``: nothing is computed) and compares what it returns
    with ``element_spec()`` batched to ``batch_size``. ``Pipeline`` calls this
    when it is built, so an untraceable source fails there, with the recipe,
    rather than at the first batch.

    Args:
        source: The data source.
        batch_size: Rows per batch (a positive int).

    Raises:
        TypeError: If ``source`` is not a ``DataSourceModule``, or its
            ``get_records`` cannot be traced; the message names the source class
            and the method to implement, and quotes the original error.
        ValueError: If ``batch_size`` is not a positive int, or ``get_records``
            returns another structure, shape or dtype than ``element_spec()`` says.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from datarax.core.config import StructuralConfig
        >>> class Sliced(DataSourceModule):
        ...     def __init__(self):
        ...         super().__init__(StructuralConfig())
        ...         self.values = nnx.data(jnp.arange(8))
        ...     def element_spec(self):
        ...         return {"x": jax.ShapeDtypeStruct((), self.values.dtype)}
        ...     def get_batch_at(self, start, size, key=None):
        ...         return {"x": self.values[start:start + size]}  # Python slicing: not traceable
        >>> check_source_traceable(Sliced(), batch_size=4)
        Traceback (most recent call last):
        ...
        TypeError: Sliced cannot be gathered inside the pipeline's compiled step: ...
    """
    if not isinstance(source, DataSourceModule):
        raise TypeError(f"check_source_traceable: source must be a DataSourceModule, got {type(source).__name__}")
    batch_size = positive_int("check_source_traceable", "batch_size", batch_size)
    name = type(source).__name__
    indices = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    try:
        batch = jax.eval_shape(source.get_records, indices)
    except Exception as error:  # noqa: BLE001 - re-raised with the recipe; the original is chained
        first_line = (str(error).splitlines() or [""])[0]
        raise TypeError(
            f"{name} cannot be gathered inside the pipeline's compiled step: {name}.get_records(indices) "
            f"failed on traced int32[{batch_size}] indices. Implement {name}.get_records(indices) as a "
            "traceable gather (e.g. jnp.take(values, indices, axis=0)), or get_batch_at(start, size) "
            "traceable in a traced start (e.g. jax.lax.dynamic_slice_in_dim(values, start, size); "
            f"Python slicing needs a concrete start). Original error: {type(error).__name__}: {first_line}"
        ) from error
    spec = source.element_spec()
    got, got_tree = jax.tree_util.tree_flatten_with_path(batch)
    want, want_tree = jax.tree_util.tree_flatten_with_path(spec)
    if got_tree != want_tree:
        raise ValueError(f"{name}.get_records returns the structure {got_tree} but element_spec() says {want_tree}")
    for (path, got_leaf), (_, spec_leaf) in zip(got, want, strict=True):
        expected = jax.ShapeDtypeStruct((batch_size, *spec_leaf.shape), spec_leaf.dtype)
        if tuple(got_leaf.shape) != expected.shape or jnp.dtype(got_leaf.dtype) != jnp.dtype(expected.dtype):
            raise ValueError(
                f"{name}.get_records returns {_spec_str(got_leaf)} at {jax.tree_util.keystr(path)} but "
                f"element_spec() batched to {batch_size} is {_spec_str(expected)}"
            )


__all__ = ["DataSourceModule", "LocalFilesOnlyMixin", "check_source_traceable"]

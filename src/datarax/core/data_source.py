"""Base module for data sources.

A data source owns records and answers two questions without side effects:
what one record looks like (``element_spec``) and which records lie at some
positions (``get_batch_at`` for a contiguous range, ``get_records`` for any
index vector). Because both are stateless and traceable, the pipeline can
gather from device-resident sources inside its one compiled step; iteration
state lives in the pipeline, never in the source.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from datarax.core.config import StructuralConfig
    >>> from datarax.core.data_source import DataSourceModule
    >>> class Squares(DataSourceModule):
    ...     def __init__(self, n, *, rngs=None):
    ...         super().__init__(StructuralConfig(), rngs=rngs)
    ...         self.values = nnx.data(jnp.arange(n) ** 2)
    ...     def element_spec(self):
    ...         return {"x": jax.ShapeDtypeStruct((), self.values.dtype)}
    ...     def get_batch_at(self, start, size, key=None):
    ...         return {"x": jax.lax.dynamic_slice_in_dim(self.values, start, size)}
    >>> Squares(10).get_batch_at(2, 3)["x"].tolist()
    [4, 9, 16]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core.config import StructuralConfig
from datarax.core.structural import StructuralModule


class LocalFilesOnlyMixin:
    """Adds a uniform ``local_files_only`` flag to data sources.

    Sources that could download external archives call ``_check_local_cache``
    before any network attempt. With ``local_files_only=True`` a missing cache
    raises a ``FileNotFoundError`` that names the dataset and the exact paths
    to populate, instead of a generic "file not found" deep inside a library.

    Subclasses must define ``self.local_files_only: bool`` (usually wired
    through their config dataclass).
    """

    local_files_only: bool

    def _check_local_cache(self, dataset_name: str, paths: Sequence[str | Path]) -> bool:
        """Checks that every path of the local cache exists.

        Args:
            dataset_name: Name of the dataset, quoted in the error.
            paths: Files or directories that make up the local cache.

        Returns:
            True if every path exists, False if some are missing and
            ``local_files_only`` is False (the caller may then download).

        Raises:
            FileNotFoundError: If ``local_files_only`` is True and a path is missing.
        """
        missing = [str(p) for p in paths if not Path(p).exists()]
        if not missing:
            return True
        if getattr(self, "local_files_only", False):
            raise FileNotFoundError(
                f"dataset {dataset_name!r} is not in the local cache and local_files_only=True; "
                f"missing paths: {missing}. Populate them (or set local_files_only=False)."
            )
        return False


class DataSourceModule(StructuralModule):
    """Base module for all datarax data sources.

    Store record arrays with ``nnx.data(...)`` (or ``nnx.Param``) so NNX
    treats them as pytree data; plain ``nnx.data`` arrays are not part of
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
        """Gathers the records at ``indices`` (a 1-D integer vector).

        The default stacks one ``get_batch_at(i, 1)`` per index on the host;
        sources with random access override it with a vectorised gather that
        also works on traced indices.

        Args:
            indices: 1-D integer array of record indices.

        Returns:
            A batch dict with leading dimension ``len(indices)``.
        """
        parts = [self.get_batch_at(int(i), 1) for i in np.asarray(indices).reshape(-1)]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)

    def element_spec(self) -> Any:
        """Returns a pytree of ``jax.ShapeDtypeStruct`` describing one element.

        Raises:
            NotImplementedError: Always, on the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement element_spec()")


__all__ = ["DataSourceModule", "LocalFilesOnlyMixin"]

"""How a sharded pipeline splits each global batch: over devices, and over processes.

``Pipeline(sharding=NamedSharding(mesh, P("data", ...)))`` makes every batch
a global ``jax.Array`` whose leading (batch) axis is split over the mesh axes
named first in the ``PartitionSpec``; other dimensions, and any other mesh
axis (``"model"``), hold whole copies. ``batch_layout`` checks the request
against the batch size and returns

* ``rows``: the ``NamedSharding`` every column gets (``P(data_axes)``: only
  the batch axis is split, so columns of any rank share it);
* ``share``: ``(first, stop)``, the rows of each global batch that live on
  this process's devices. A process computes those rows only: the host stage
  reads only their records, and the device step, compiled for the whole mesh,
  runs each device on its own rows.

Nothing else about the stream changes: batch ``t`` is the same global batch
on one process or many, and the iterator state is the same on every process.

Example:
    >>> import jax
    >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    >>> mesh = Mesh(jax.devices()[:4], ("data",))
    >>> rows, share = batch_layout(NamedSharding(mesh, P("data")), batch_size=8)
    >>> rows.spec, share
    (P('data',), (0, 8))
    >>> batch_layout(NamedSharding(mesh, P("data")), batch_size=6)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Pipeline: batch_size=6 does not divide over sharding's 4 data shards ... e.g. 4 or 8
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def batch_layout(sharding: Any, batch_size: int, owner: str = "Pipeline") -> tuple[NamedSharding, tuple[int, int]]:
    """The columns' sharding and this process's rows for ``sharding`` (see the module docstring).

    Raises:
        TypeError: If ``sharding`` is not a ``jax.sharding.NamedSharding``.
        ValueError: If its spec splits no mesh axis over the batch, the batch
            size does not divide over the data shards and processes (the
            message says which sizes would), or this process's rows are not
            one contiguous range (a mesh not ordered by process: build it
            with ``datarax.distributed.data_mesh``).
    """
    if not isinstance(sharding, NamedSharding):
        raise TypeError(
            f"{owner}: sharding must be a jax.sharding.NamedSharding (e.g. NamedSharding(mesh, P('data'))), "
            f"got {type(sharding).__name__}"
        )
    spec = tuple(sharding.spec)
    batch_axes = spec[0] if spec else None
    if batch_axes is None:
        raise ValueError(
            f"{owner}: sharding {sharding.spec} does not split the batch axis; its PartitionSpec must name the "
            "data axis first, e.g. P('data')"
        )
    axes = batch_axes if isinstance(batch_axes, tuple) else (batch_axes,)
    shards = math.prod(sharding.mesh.shape[axis] for axis in axes)
    processes = len({device.process_index for device in sharding.mesh.devices.flat})
    unit = math.lcm(shards, processes)
    if batch_size % unit:
        below = batch_size // unit * unit
        examples = " or ".join(str(size) for size in (below, below + unit) if size > 0)
        raise ValueError(
            f"{owner}: batch_size={batch_size} does not divide over sharding's {shards} data shards (mesh axes "
            f"{axes}) and {processes} process(es); expected a multiple of {unit}, e.g. {examples}"
        )
    rows = NamedSharding(sharding.mesh, PartitionSpec(batch_axes))
    held = sorted(
        {
            row
            for index in rows.addressable_devices_indices_map((batch_size,)).values()
            for row in range(*index[0].indices(batch_size))
        }
    )
    if held != list(range(held[0], held[-1] + 1)):
        raise ValueError(
            f"{owner}: this process's devices hold rows {held[:4]}... of each batch, not one contiguous range; "
            "order the mesh's data axis by process (datarax.distributed.data_mesh does)"
        )
    return rows, (held[0], held[-1] + 1)


def replicate(value: Any, sharding: NamedSharding) -> jax.Array:
    """``value`` (the same on every process) as a global array every device of ``sharding`` holds whole.

    Built from the host value shard by shard (``jax.make_array_from_callback``), which is what
    several processes need: ``jax.device_put`` of an array committed to one local device makes an
    array whose shards Orbax cannot enumerate on more than one process. Typed PRNG keys go through
    their key data.

    Example:
        >>> import jax, numpy as np
        >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        >>> everywhere = NamedSharding(Mesh(jax.devices()[:2], ("data",)), P())
        >>> array = replicate(np.arange(3), everywhere)
        >>> array.is_fully_replicated, len(array.addressable_shards), array.tolist()
        (True, 2, [0, 1, 2])
    """
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        data = replicate(jax.random.key_data(value), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
    if jax.process_count() == 1:
        return jax.device_put(value, sharding)
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def local_rows(rows: NamedSharding, batch: Any) -> Any:
    """This process's rows of a sharded batch, as numpy (the whole batch on one process).

    Example:
        >>> import jax, numpy as np
        >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        >>> rows = NamedSharding(Mesh(jax.devices()[:2], ("data",)), P("data"))
        >>> local_rows(rows, {"x": jax.device_put(np.arange(4), rows)})["x"].tolist()
        [0, 1, 2, 3]
    """

    def gather(leaf: jax.Array) -> np.ndarray:
        shards = sorted(leaf.addressable_shards, key=lambda shard: shard.index[0].start or 0)
        seen, parts = set(), []
        for shard in shards:
            start = shard.index[0].start or 0
            if start not in seen:  # a row block held by several devices (a model axis) is taken once
                seen.add(start)
                parts.append(np.asarray(shard.data))
        return np.concatenate(parts)

    return jax.tree.map(gather, batch)


__all__ = ["batch_layout", "local_rows", "replicate"]

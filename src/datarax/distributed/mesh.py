"""The device mesh a global batch is laid out on, and the sharding of its batch axis.

A global batch of ``B`` rows is split along one mesh axis, the *data* axis. ``data_mesh`` orders
every device of the run **process-major** (process 0's devices, then process 1's, ...; within a
process by device id) and lays the data axis out first, so walking the data axis visits processes
in order and, inside each, its local devices. With ``P`` processes, ``batch_sharding(mesh)``
therefore gives process ``i`` exactly the rows ``[i·B/P, (i+1)·B/P)`` — the share
``process_share`` computes — and ``jax.make_array_from_process_local_data(batch_sharding(mesh),
rows)`` assembles the global ``jax.Array`` from each process's own rows without moving data
between hosts.

Extra axes (``model_axes``, e.g. ``{"model": 2}``) come after the data axis, so a group of devices
along them lies inside one process; the batch is replicated along them. Every process must have
the same number of devices, and the extra axes must fit inside one process's devices.

Example:
    >>> import jax
    >>> mesh = data_mesh()                      # 8 virtual CPU devices in the tests
    >>> dict(mesh.shape)
    {'data': 8}
    >>> mesh = data_mesh(model_axes={"model": 2})
    >>> dict(mesh.shape)
    {'data': 4, 'model': 2}
    >>> batch = jax.device_put(jax.numpy.zeros((16, 3)), batch_sharding(mesh))
    >>> batch.sharding.spec == jax.sharding.PartitionSpec("data")
    True
    >>> [shard.index[0] for shard in batch.addressable_shards][:4]  # a model pair holds the same rows
    [slice(0, 4, None), slice(0, 4, None), slice(4, 8, None), slice(4, 8, None)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from datarax.core.validation import is_int


def _axis_name(owner: str, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {name} must be a str (a mesh axis name), got {value!r} ({type(value).__name__})")
    if not value:
        raise ValueError(f"{owner}: {name} must be a non-empty axis name, got {value!r}")
    return value


def _model_axes(data_axis: str, model_axes: object) -> dict[str, int]:
    if model_axes is None:
        return {}
    if not isinstance(model_axes, Mapping):
        raise TypeError(
            f"data_mesh: model_axes must be a mapping of axis name to size (e.g. {{'model': 2}}) or None, "
            f"got {model_axes!r} ({type(model_axes).__name__})"
        )
    axes = {}
    for name, size in model_axes.items():
        _axis_name("data_mesh", "model_axes name", name)
        if name == data_axis:
            raise ValueError(f"data_mesh: model_axes must not repeat data_axis={data_axis!r}, got {dict(model_axes)!r}")
        if not is_int(size):
            raise TypeError(f"data_mesh: model_axes[{name!r}] must be an int, got {size!r} ({type(size).__name__})")
        if size < 1:
            raise ValueError(f"data_mesh: model_axes[{name!r}] must be a positive int, got {size!r}")
        axes[name] = int(size)
    return axes


def data_mesh(data_axis: str = "data", model_axes: Mapping[str, int] | None = None) -> Mesh:
    """A mesh over every device of the run, data axis first, devices in process-major order.

    Args:
        data_axis: Name of the axis the batch is split along.
        model_axes: Further axes, name to size, after the data axis (e.g. ``{"model": 2}``); their
            sizes multiply to a divisor of each process's device count. None: no further axes.

    Returns:
        A ``jax.sharding.Mesh`` with axes ``(data_axis, *model_axes)``; the data axis has
        ``jax.device_count() // prod(model sizes)`` entries.

    Raises:
        TypeError: If ``data_axis`` is not a str or ``model_axes`` not a mapping of str to int.
        ValueError: If a name is empty or repeated, a size is not positive or does not divide the
            devices of one process, or processes have different numbers of devices.

    Example:
        >>> mesh = data_mesh("batch", {"model": 4})
        >>> mesh.axis_names, mesh.devices.shape
        (('batch', 'model'), (2, 4))
        >>> data_mesh(model_axes={"model": 3})
        Traceback (most recent call last):
        ...
        ValueError: data_mesh: model_axes={'model': 3} needs 3 devices per group, which does not divide ...
    """
    data_axis = _axis_name("data_mesh", "data_axis", data_axis)
    axes = _model_axes(data_axis, model_axes)
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    per_process: dict[int, int] = {}
    for device in devices:
        per_process[device.process_index] = per_process.get(device.process_index, 0) + 1
    if len(set(per_process.values())) != 1:
        raise ValueError(
            f"data_mesh: every process needs the same number of devices for an even batch split, "
            f"got devices per process {per_process!r}"
        )
    local = next(iter(per_process.values()))
    group = math.prod(axes.values())
    if local % group:
        raise ValueError(
            f"data_mesh: model_axes={axes!r} needs {group} devices per group, which does not divide "
            f"the {local} devices of each process; expected sizes whose product divides {local}"
        )
    shape = (len(devices) // group, *axes.values())
    return Mesh(np.array(devices, dtype=object).reshape(shape), (data_axis, *axes))


def batch_sharding(mesh: Mesh, data_axis: str = "data") -> NamedSharding:
    """The sharding of a batch: leading axis split along ``data_axis``, the rest replicated.

    Args:
        mesh: A mesh, usually from ``data_mesh``.
        data_axis: The mesh axis the leading (batch) axis is split along.

    Returns:
        ``NamedSharding(mesh, PartitionSpec(data_axis))``.

    Raises:
        TypeError: If ``mesh`` is not a ``jax.sharding.Mesh`` or ``data_axis`` not a str.
        ValueError: If ``data_axis`` is not an axis of ``mesh``.

    Example:
        >>> batch_sharding(data_mesh(), "data").spec == PartitionSpec("data")
        True
        >>> batch_sharding(data_mesh(), "batch")
        Traceback (most recent call last):
        ...
        ValueError: batch_sharding: data_axis='batch' is not an axis of the mesh; expected one of ('data',)
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"batch_sharding: mesh must be a jax.sharding.Mesh, got {mesh!r} ({type(mesh).__name__})")
    data_axis = _axis_name("batch_sharding", "data_axis", data_axis)
    if data_axis not in mesh.axis_names:
        raise ValueError(
            f"batch_sharding: data_axis={data_axis!r} is not an axis of the mesh; expected one of {mesh.axis_names!r}"
        )
    return NamedSharding(mesh, PartitionSpec(data_axis))


__all__ = ["batch_sharding", "data_mesh"]

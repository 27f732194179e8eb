"""A module's checkpoint: its ``nnx.Variable`` values as a nested dict, restored strictly.

``DataraxModule.get_state``/``set_state`` (the ``Checkpointable`` protocol) are
built on the two functions here:

* ``module_state_dict`` turns every ``nnx.Variable`` into an entry of a nested
  dict keyed by attribute path. Typed PRNG keys become their raw key data, so
  the result holds only plain values and arrays (JSON- and Orbax-friendly).
  Arrays a module holds as plain ``nnx.data`` (a source's records) are not
  state and are left out, so checkpoints stay small.
* ``restore_module_state`` is strict and atomic: the checkpoint must hold
  exactly the module's variables, with matching array shapes, or nothing
  changes. Integer path entries (lists of submodules) may come back as
  strings from JSON or Orbax; both spellings are accepted.

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> class Counter(nnx.Module):
    ...     def __init__(self):
    ...         self.count = nnx.Variable(jnp.array(0))
    >>> c = Counter()
    >>> module_state_dict(c)
    {'count': Array(0, dtype=int32, weak_type=True)}
    >>> restore_module_state(c, {"count": 5})
    >>> int(c.count.get_value())
    5
    >>> restore_module_state(c, {"counts": 5})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Counter.set_state: ... does not match ...; missing=['count'], unexpected=['counts']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path) or "<root>"


def _is_key_array(value: Any) -> bool:
    return isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key)


def _storable(value: Any) -> Any:
    """Typed PRNG keys become their raw key data so checkpoints hold plain arrays.

    A NumPy value is copied: ``variable[...] += n`` changes a NumPy value in place, and a state
    taken before must not change with it (JAX arrays are immutable and are kept as they are).
    """
    if _is_key_array(value):
        return jax.random.key_data(value)
    return np.array(value) if isinstance(value, np.ndarray) else value


def _lookup(tree: Mapping, path: tuple) -> tuple[bool, Any]:
    node: Any = tree
    for part in path:
        if not isinstance(node, Mapping):
            return False, None
        if part in node:
            node = node[part]
        elif str(part) in node:
            node = node[str(part)]
        else:
            return False, None
    return True, node


def _unexpected_paths(tree: Mapping, expected: set[tuple[str, ...]], prefix: tuple = ()) -> list[str]:
    prefixes = {p[:i] for p in expected for i in range(len(p) + 1)}
    found = []
    for key, value in tree.items():
        path = (*prefix, str(key))
        if path in expected:
            continue
        if path in prefixes and isinstance(value, Mapping):
            found.extend(_unexpected_paths(value, expected, path))
        else:
            found.append(_path_str(path))
    return found


def _restored_value(current: Any, new: Any, path: tuple) -> Any:
    """Converts a checkpointed value to the type of the current one, checking shapes."""
    if _is_key_array(current):
        if _is_key_array(new):
            return new
        data = np.asarray(new)
        expected = jax.random.key_data(current).shape
        if data.shape != expected:
            raise ValueError(f"set_state: key data at {_path_str(path)!r} has shape {data.shape}, expected {expected}")
        return jax.random.wrap_key_data(data.astype(np.uint32), impl=jax.random.key_impl(current))
    if isinstance(current, jax.Array | np.ndarray):
        new_array = np.asarray(new) if not isinstance(new, jax.Array) else new
        if tuple(new_array.shape) != tuple(current.shape):
            raise ValueError(
                f"set_state: value at {_path_str(path)!r} has shape {tuple(new_array.shape)}, "
                f"expected {tuple(current.shape)}"
            )
        return jnp.asarray(new_array, dtype=current.dtype)
    return new


def module_state_dict(module: nnx.Module) -> dict[str, Any]:
    """Every ``nnx.Variable`` of ``module`` as a nested dict keyed by attribute path.

    Args:
        module: Any NNX module.

    Returns:
        The nested dict; typed PRNG keys appear as their raw key data.
    """
    out: dict[str, Any] = {}
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Variable)):
        node = out
        for part in path[:-1]:
            node = node.setdefault(str(part), {})
        node[str(path[-1])] = _storable(var.get_value())
    return out


def restore_module_state(module: nnx.Module, state: Mapping[str, Any]) -> None:
    """Sets every ``nnx.Variable`` of ``module`` from ``state`` (as made by ``module_state_dict``).

    Every value is checked and converted before the first one is set, so a
    failed restore changes nothing.

    Args:
        module: Any NNX module.
        state: The nested dict to restore.

    Raises:
        TypeError: If ``state`` is not a mapping.
        ValueError: If ``state`` lacks a variable of the module, has one it does
            not, or an array's shape differs.
    """
    owner = type(module).__name__
    if not isinstance(state, Mapping):
        raise TypeError(f"{owner}.set_state: state must be a dict, got {type(state).__name__}")
    flat = list(nnx.to_flat_state(nnx.state(module, nnx.Variable)))
    expected = {tuple(str(p) for p in path) for path, _ in flat}
    missing = [_path_str(path) for path, _ in flat if not _lookup(state, path)[0]]
    unexpected = _unexpected_paths(state, expected)
    if missing or unexpected:
        raise ValueError(
            f"{owner}.set_state: checkpoint structure does not match the module "
            f"state; missing={missing}, unexpected={unexpected}"
        )
    restored = [_restored_value(var.get_value(), _lookup(state, path)[1], path) for path, var in flat]
    for (_, var), value in zip(flat, restored, strict=True):
        var.set_value(value)


__all__ = ["module_state_dict", "restore_module_state"]

"""The state of one checkpointed item: how it is taken, stored, checked and given back.

An item is either ``Checkpointable`` (``get_state`` / ``set_state``) or any
other Flax NNX object, whose ``nnx.state(...)`` is its state. A datarax module
is both; its own ``get_state`` / ``set_state`` wins, because it is what the
module defines as its state. ``state_via`` says which way an item goes, and
``take_state``, ``snapshot`` and ``apply_state`` take, copy and give back a
state that way.

**Why the state is split.** A state dict mixes arrays (parameters, raw PRNG
key data, counters, statistics) with plain Python values (an iterator's
``epoch``, ``position``, a ``None`` stop epoch). Storing Python values as
arrays would turn ``3`` into a 0-d array and ``None`` into nothing, so
``split`` cuts a state in two: a flat ``{"0": array, "1": array, ...}`` tree
for an array store, and a JSON skeleton that keeps everything else and the
nesting, with ``{"__array__": index, "dtype": ..., "shape": [...]}`` where each
array was (index ``null`` for a zero-size array, which Orbax cannot store).
``join`` rebuilds the original nesting from the two: ints stay ints, ``None``
stays ``None``. Tuples come back as lists, integer dict keys as strings, typed
PRNG keys and numpy scalars as numpy arrays (uint32 key data / 0-d);
``DataraxModule.set_state`` accepts all of these.

**Why check before applying.** A restore must change every item or none, so
nothing may fail half-way through ``nnx.update``. ``prepare`` therefore checks
a saved state against an NNX object path by path (missing or unexpected
variables, shape, dtype, Python type) and builds the ``nnx.State`` to apply
without touching the object: arrays go onto the devices and shardings of the
object's current arrays, PRNG key data is re-wrapped with the object's own key
implementation. ``Checkpointable`` items check their own state in
``set_state``.

Example:
    >>> import numpy as np
    >>> from flax import nnx
    >>> state = {"epoch": 3, "stop_epoch": None, "counts": np.arange(3, dtype=np.int32)}
    >>> skeleton, arrays = split("Owner", "iterator", state)
    >>> skeleton
    {'epoch': 3, 'stop_epoch': None, 'counts': {'__array__': 0, 'dtype': 'int32', 'shape': [3]}}
    >>> join(skeleton, arrays)
    {'epoch': 3, 'stop_epoch': None, 'counts': array([0, 1, 2], dtype=int32)}
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> state_via(model)
    'nnx.state'
    >>> sorted(take_state(model))
    ['bias', 'kernel']
    >>> saved = {"kernel": np.zeros((3, 1), np.float32), "bias": np.zeros(1, np.float32)}
    >>> prepare(model, saved, "model")
    Traceback (most recent call last):
    ValueError: model at 'kernel': float32[3, 1] in the checkpoint, expected float32[2, 1]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.typing import Checkpointable

Item = Checkpointable | nnx.Module | nnx.Optimizer
# How an item's state is taken and given back (the "via" field of its JSON document).
VIA_PROTOCOL = "get_state"
VIA_NNX = "nnx.state"
_MARK = "__array__"


def state_via(item: Any) -> str | None:
    """``VIA_PROTOCOL`` or ``VIA_NNX`` for a checkpointable item, None for anything else."""
    # A datarax module is both; its own get_state/set_state defines its state.
    if isinstance(item, Checkpointable):
        return VIA_PROTOCOL
    if isinstance(item, nnx.Pytree):
        return VIA_NNX
    return None


def take_state(item: Any) -> Any:
    """The item's state: ``get_state()``, or an NNX object's variables nested by attribute path."""
    if state_via(item) == VIA_PROTOCOL:
        return item.get_state()
    nested: dict[Any, Any] = {}
    for path, variable in _nnx_flat(item):
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _value(variable)
    return nested


def snapshot(item: Any) -> Any:
    """A copy of the item's current state that ``apply_state`` puts back (a rollback point)."""
    if state_via(item) == VIA_PROTOCOL:
        return item.get_state()
    return nnx.from_flat_state(
        [(path, v.replace(v.get_value()) if isinstance(v, nnx.Variable) else v) for path, v in _nnx_flat(item)]
    )


def apply_state(item: Any, state: Any) -> None:
    """Gives ``state`` (from ``prepare`` or ``snapshot``) back to the item."""
    if state_via(item) == VIA_PROTOCOL:
        item.set_state(state)
    else:
        nnx.update(item, state)


# -- JSON skeleton + array tree ------------------------------------------------------------------


def split(owner: str, where: str, state: Any) -> tuple[Any, dict[str, Any]]:
    """The JSON skeleton of ``state`` and its arrays (``{"0": array, ...}``).

    Raises:
        TypeError: If the state holds a value or dict key JSON cannot carry (the
            message names ``owner`` and the path under ``where``).
    """
    arrays: dict[str, Any] = {}
    return _split(owner, state, arrays, where), arrays


def _split(owner: str, value: Any, arrays: dict[str, Any], where: str) -> Any:
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        if not isinstance(value, jax.Array):
            value = np.array(value)  # a copy: an asynchronous save must not see later mutations
        mark = {_MARK: None, "dtype": str(value.dtype), "shape": list(value.shape)}
        if value.size:
            mark[_MARK] = len(arrays)
            arrays[str(len(arrays))] = value
        return mark
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, sub in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int) or key == _MARK:
                raise TypeError(f"{owner}: unsupported key {key!r} in state at {where!r}")
            out[str(key)] = _split(owner, sub, arrays, f"{where}/{key}")
        return out
    if isinstance(value, list | tuple):
        return [_split(owner, sub, arrays, f"{where}/{i}") for i, sub in enumerate(value)]
    raise TypeError(
        f"{owner}: cannot checkpoint {type(value).__name__} at {where!r}; "
        "state may hold arrays, None, bool, int, float, str, dicts and lists"
    )


def _is_mark(node: Any) -> bool:
    return isinstance(node, dict) and _MARK in node


def array_indices(skeleton: Any) -> list[Any]:
    """The array indices a skeleton names, as read from JSON (so not yet known to be ints)."""
    if _is_mark(skeleton):
        return [] if skeleton[_MARK] is None else [skeleton[_MARK]]
    if isinstance(skeleton, dict):
        skeleton = list(skeleton.values())
    if not isinstance(skeleton, list):
        return []
    return [i for sub in skeleton for i in array_indices(sub)]


def join(skeleton: Any, arrays: Mapping[str, Any]) -> Any:
    """Inverse of ``split``; raises ``ValueError`` where the skeleton and the arrays disagree."""
    if _is_mark(skeleton):
        dtype, shape = jnp.dtype(skeleton["dtype"]), tuple(skeleton["shape"])
        if skeleton[_MARK] is None:
            return np.zeros(shape, dtype=dtype)
        array = arrays[str(skeleton[_MARK])]
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(
                f"array {skeleton[_MARK]} is {array.dtype}{list(array.shape)} on disk but "
                f"{dtype}{list(shape)} in the JSON document"
            )
        return array
    if isinstance(skeleton, dict):
        return {key: join(sub, arrays) for key, sub in skeleton.items()}
    if isinstance(skeleton, list):
        return [join(sub, arrays) for sub in skeleton]
    return skeleton


# -- Checking a saved state against an NNX object ------------------------------------------------


def prepare(item: Any, state: Any, problem: str) -> Any:
    """What ``apply_state`` gives ``item``; for an NNX object, checked against it path by path.

    ``state`` is as ``join`` rebuilds it from disk: its arrays are numpy arrays,
    so a jax array where the object has one is refused like any other mismatch.

    Raises:
        ValueError: If the state does not fit the NNX object; the message starts
            with ``problem`` and names the path.
    """
    if state_via(item) != VIA_NNX:
        return state  # a Checkpointable checks its own state in set_state
    current = {tuple(str(part) for part in path): (path, variable) for path, variable in _nnx_flat(item)}
    saved = _flatten(state) if isinstance(state, dict) and state else {}
    missing = sorted("/".join(key) for key in current.keys() - saved.keys())
    unexpected = sorted("/".join(key) for key in saved.keys() - current.keys())
    if missing or unexpected:
        raise ValueError(
            f"{problem}: the checkpoint does not have the structure of {type(item).__name__}; "
            f"missing paths {missing}, unexpected paths {unexpected}"
        )
    updates = []
    for key, (path, variable) in current.items():
        value = _restored_leaf(_value(variable), saved[key], f"{problem} at {'/'.join(key)!r}")
        # A copy of the variable: the live object is untouched until nnx.update.
        updates.append((path, variable.replace(value) if isinstance(variable, nnx.Variable) else value))
    return nnx.from_flat_state(updates)


def _nnx_flat(obj: Any) -> list[tuple[tuple, Any]]:
    """``(path, variable)`` for every variable of ``obj``; the variables are the live ones."""
    return list(nnx.to_flat_state(nnx.state(obj)))


def _value(variable: Any) -> Any:
    return variable.get_value() if isinstance(variable, nnx.Variable) else variable


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict) and not _is_mark(tree) and tree:
        out: dict[tuple[str, ...], Any] = {}
        for key, sub in tree.items():
            out.update(_flatten(sub, (*prefix, str(key))))
        return out
    return {prefix: tree}


def _describe(value: Any) -> str:
    if isinstance(value, jax.Array | np.ndarray):
        return f"{value.dtype}{list(value.shape)}"
    return type(value).__name__


def _restored_leaf(current: Any, saved: Any, problem: str) -> Any:
    """``saved`` as a value of the same kind, dtype, shape and placement as ``current``."""
    if isinstance(current, jax.Array) and jnp.issubdtype(current.dtype, jax.dtypes.prng_key):
        expected = jax.random.key_data(current)
        if not isinstance(saved, np.ndarray) or saved.shape != expected.shape or saved.dtype != expected.dtype:
            raise ValueError(
                f"{problem}: PRNG key data {_describe(saved)} in the checkpoint, expected {_describe(expected)}"
            )
        key = jax.random.wrap_key_data(saved, impl=jax.random.key_impl(current))
        return jax.device_put(key, current.sharding)
    if isinstance(current, jax.Array | np.ndarray):
        if not isinstance(saved, np.ndarray) or saved.shape != current.shape or saved.dtype != current.dtype:
            raise ValueError(f"{problem}: {_describe(saved)} in the checkpoint, expected {_describe(current)}")
        if isinstance(current, np.ndarray):
            return saved
        return jax.device_put(saved, current.sharding)
    if type(saved) is not type(current):
        raise ValueError(f"{problem}: {_describe(saved)} {saved!r} in the checkpoint, expected {_describe(current)}")
    return saved


__all__ = [
    "VIA_NNX",
    "VIA_PROTOCOL",
    "Item",
    "apply_state",
    "array_indices",
    "join",
    "prepare",
    "snapshot",
    "split",
    "state_via",
    "take_state",
]

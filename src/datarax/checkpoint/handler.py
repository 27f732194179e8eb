"""Saving and restoring datarax state with Orbax.

``OrbaxCheckpointHandler`` writes the ``get_state()`` dicts of one or more
``Checkpointable`` objects (modules, pipeline iterators, ...) into numbered
steps under one directory and feeds them back through ``set_state``. It wraps
an ``orbax.checkpoint.CheckpointManager``, which keeps the last
``max_to_keep`` steps and deletes older ones.

**Why atomic.** Orbax writes each step into a temporary directory
(``<step>.orbax-checkpoint-tmp-*``) and renames it to ``<step>`` only after
every file is written. A crash mid-save therefore never leaves a half-written
step that ``latest_step`` would pick up; the previous step stays the latest.
Saves run asynchronously: ``save`` returns once the data has been captured
(numpy arrays are copied, jax arrays are immutable) and ``wait_until_finished``
or ``close`` waits for the write.

**Why the state is split.** A state dict mixes arrays (parameters, raw PRNG
key data, counters, statistics) with plain Python values (an iterator's
``epoch``, ``position``, a ``None`` stop epoch). Storing Python values as
arrays would turn ``3`` into a 0-d array and ``None`` into nothing, so each
item is split in two: the arrays go to an Orbax PyTree checkpoint (tensorstore,
exact dtypes and shapes) and everything else, plus the nested structure with a
placeholder where each array was, goes to a JSON document. Restoring reads the
JSON first, asks Orbax for exactly the arrays it names (as numpy arrays) and
rebuilds the original nesting: ints stay ints, ``None`` stays ``None``. Neither
format runs code on load (no pickle). Tuples come back as lists, integer dict
keys as strings, typed PRNG keys and numpy scalars as numpy arrays (uint32 key
data / 0-d); ``DataraxModule.set_state`` accepts all of these.

On-disk layout (``name`` is ``"default"`` for a single item, otherwise the
mapping key; each sub-directory is one entry of an ``ocp.args.Composite``)::

    <directory>/<step>/
        _CHECKPOINT_METADATA
        <name>.json/metadata   {"format": "datarax.checkpoint/1", "type": ..., "state": ...}
        <name>.arrays/...      PyTree of {"0": array, "1": array, ...}; absent without arrays

In ``state`` an array is ``{"__array__": index, "dtype": ..., "shape": [...]}``
(index ``null`` for a zero-size array, which Orbax cannot store).

Restoring is strict: ``set_state`` of each item decides whether the state
fits and raises its own ``ValueError`` if not. If any item refuses, items
already restored in the same call are put back to their previous state.

Example:
    >>> import tempfile
    >>> class Position:
    ...     def __init__(self):
    ...         self.position = 0
    ...     def get_state(self):
    ...         return {"position": self.position, "stop_epoch": None}
    ...     def set_state(self, state):
    ...         self.position = state["position"]
    >>> it = Position()
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with OrbaxCheckpointHandler(tmp, max_to_keep=2) as handler:
    ...         for step in (10, 20, 30):
    ...             it.position = step
    ...             handler.save(step, it)
    ...         handler.wait_until_finished()
    ...         fresh = Position()
    ...         restored = handler.restore(fresh)
    ...         steps = handler.all_steps()
    >>> restored, fresh.position, steps
    (30, 30, [20, 30])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from datarax.typing import Checkpointable

Items = Checkpointable | Mapping[str, Checkpointable]
FORMAT = "datarax.checkpoint/1"
_MARK = "__array__"


def _items(items: Any) -> dict[str, Checkpointable]:
    if not isinstance(items, Mapping):
        items = {"default": items}
    if not items:
        raise TypeError("OrbaxCheckpointHandler: items mapping is empty")
    for name, item in items.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise TypeError(f"OrbaxCheckpointHandler: item name {name!r} must be a non-empty str without '/'")
        if not isinstance(item, Checkpointable):
            raise TypeError(
                f"OrbaxCheckpointHandler: item {name!r} ({type(item).__name__}) is not "
                "Checkpointable (needs get_state and set_state)"
            )
    return dict(items)


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"OrbaxCheckpointHandler: step must be a non-negative int, got {step!r}")
    return int(step)


def _split(value: Any, arrays: dict[str, Any], where: str) -> Any:
    """Returns the JSON skeleton of ``value``, moving its arrays into ``arrays``."""
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        if not isinstance(value, jax.Array):
            value = np.array(value)  # a copy: the async save must not see later mutations
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
                raise TypeError(f"OrbaxCheckpointHandler: unsupported key {key!r} in state at {where!r}")
            out[str(key)] = _split(sub, arrays, f"{where}/{key}")
        return out
    if isinstance(value, list | tuple):
        return [_split(sub, arrays, f"{where}/{i}") for i, sub in enumerate(value)]
    raise TypeError(
        f"OrbaxCheckpointHandler: cannot checkpoint {type(value).__name__} at {where!r}; "
        "state may hold arrays, None, bool, int, float, str, dicts and lists"
    )


def _join(skeleton: Any, arrays: Mapping[str, Any]) -> Any:
    """Inverse of ``_split``."""
    if isinstance(skeleton, dict) and _MARK in skeleton:
        if skeleton[_MARK] is None:
            return np.zeros(skeleton["shape"], dtype=jnp.dtype(skeleton["dtype"]))
        return arrays[str(skeleton[_MARK])]
    if isinstance(skeleton, dict):
        return {key: _join(sub, arrays) for key, sub in skeleton.items()}
    if isinstance(skeleton, list):
        return [_join(sub, arrays) for sub in skeleton]
    return skeleton


def _indices(skeleton: Any) -> list[int]:
    if isinstance(skeleton, dict) and _MARK in skeleton:
        return [] if skeleton[_MARK] is None else [skeleton[_MARK]]
    if isinstance(skeleton, dict):
        skeleton = list(skeleton.values())
    if not isinstance(skeleton, list):
        return []
    return [i for sub in skeleton for i in _indices(sub)]


class OrbaxCheckpointHandler:
    """Saves ``Checkpointable`` state in numbered, atomic Orbax checkpoint steps.

    Args:
        directory: Checkpoint root directory (created if missing).
        max_to_keep: Number of most recent steps kept on disk; None keeps all.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3):
        if max_to_keep is not None and (
            isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
        ):
            raise ValueError(f"OrbaxCheckpointHandler: max_to_keep must be a positive int or None, got {max_to_keep!r}")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest saved step, or None if there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All steps on disk, in increasing order."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, items: Items, *, force: bool = False) -> None:
        """Saves ``get_state()`` of ``items`` (one item or a name -> item mapping) as ``step``.

        Raises:
            ValueError: If ``step`` is not a non-negative int, or already exists or is
                older than the latest step (``force=True`` overwrites / allows it).
            TypeError: If an item is not ``Checkpointable`` or its state holds an
                unsupported value.
        """
        step, items = _check_step(step), _items(items)
        args: dict[str, Any] = {}
        for name, item in items.items():
            state = item.get_state()
            if not isinstance(state, Mapping):
                raise TypeError(
                    f"OrbaxCheckpointHandler: get_state of {name!r} returned {type(state).__name__}, not a dict"
                )
            arrays: dict[str, Any] = {}
            skeleton = _split(state, arrays, name)
            kind = f"{type(item).__module__}.{type(item).__qualname__}"
            doc = {"format": FORMAT, "type": kind, "state": skeleton}
            args[f"{name}.json"] = ocp.args.JsonSave(doc)
            if arrays:
                args[f"{name}.arrays"] = ocp.args.PyTreeSave(arrays)
        self._manager.wait_until_finished()
        latest = self.latest_step()
        if not force and latest is not None and step <= latest:
            raise ValueError(
                f"OrbaxCheckpointHandler: step {step} is not newer than the latest step {latest} "
                f"in {self.directory}; pass force=True to overwrite"
            )
        if step in self._manager.all_steps():
            self._manager.delete(step)
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)

    def restore(self, items: Items, step: int | None = None) -> int:
        """Restores ``items`` from ``step`` (None: the latest) via ``set_state``; returns the step.

        Raises:
            FileNotFoundError: If there are no checkpoints or ``step`` does not exist.
            ValueError: If ``step`` is invalid, an item is missing from the step, or
                an item's ``set_state`` refuses the state (no item is left changed).
            TypeError: If an item is not ``Checkpointable``.
        """
        items = _items(items)
        self._manager.wait_until_finished()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"OrbaxCheckpointHandler: no checkpoints in {self.directory}")
            step = steps[-1]
        step = _check_step(step)
        if step not in steps:
            raise FileNotFoundError(
                f"OrbaxCheckpointHandler: no step {step} in {self.directory}; available steps: {steps}"
            )
        step_dir = self.directory / str(step)
        saved = sorted(path.name[: -len(".json")] for path in step_dir.glob("*.json"))
        missing = [name for name in items if name not in saved]
        if missing:
            raise ValueError(f"OrbaxCheckpointHandler: items {missing} not in step {step}; it holds {saved}")
        json_args = {f"{name}.json": ocp.args.JsonRestore() for name in items}
        docs = self._manager.restore(step, args=ocp.args.Composite(**json_args))
        array_args = {}
        for name in items:
            doc = docs[f"{name}.json"]
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError(f"OrbaxCheckpointHandler: {name!r} in step {step} is not a {FORMAT} checkpoint")
            if indices := _indices(doc["state"]):
                restore_args = {str(i): ocp.RestoreArgs(restore_type=np.ndarray) for i in indices}
                array_args[f"{name}.arrays"] = ocp.args.PyTreeRestore(restore_args=restore_args)
        arrays = {}
        if array_args:
            arrays = self._manager.restore(step, args=ocp.args.Composite(**array_args))
        states = {name: _join(docs[f"{name}.json"]["state"], arrays.get(f"{name}.arrays") or {}) for name in items}
        previous = {name: item.get_state() for name, item in items.items()}
        tried: list[str] = []
        try:
            for name, item in items.items():
                tried.append(name)
                item.set_state(states[name])
        except Exception:
            for name in tried:  # put back every item touched by this call
                items[name].set_state(previous[name])
            raise
        return step

    def wait_until_finished(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's resources."""
        self._manager.close()

    def __enter__(self) -> OrbaxCheckpointHandler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OrbaxCheckpointHandler({str(self.directory)!r}, steps={self.all_steps()})"


__all__ = ["OrbaxCheckpointHandler"]

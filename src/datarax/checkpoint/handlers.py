"""Saving and restoring datarax state, Flax models and optimizers with Orbax.

``OrbaxCheckpointHandler`` writes the state of one or more items into
numbered steps under one directory and feeds it back. An item is either

* ``Checkpointable`` (``get_state`` / ``set_state``): pipeline iterators,
  prefetchers and every datarax module. Datarax modules are also NNX modules;
  their own ``get_state`` / ``set_state`` is preferred, because it is what
  they define as their state; or
* any other Flax NNX object (``nnx.Module``, ``nnx.Optimizer``, ...): its
  ``nnx.state(...)`` is saved and restored with ``nnx.update``, onto the same
  devices and shardings as the object's current arrays.

So the state of a training run (model, optimizer and data iterator) goes into
one step and comes back together. It wraps an
``orbax.checkpoint.CheckpointManager``, which keeps the last ``max_to_keep``
steps and deletes older ones.

**Why atomic.** Orbax writes each step into a temporary directory
(``<step>.orbax-checkpoint-tmp-*``) and renames it to ``<step>`` only after
every file is written. A crash mid-save therefore never leaves a half-written
step that ``latest_step`` would pick up; the previous step stays the latest.
Saves run asynchronously: ``save`` returns once the data has been captured
(numpy arrays are copied, jax arrays are immutable) and ``wait_until_finished``
or ``close`` waits for the write.

**Why the state is split.** A state dict mixes arrays with plain Python
values (an iterator's ``epoch``, a ``None`` stop epoch), so each item is split
in two (``datarax.checkpoint.item_state``): the arrays go to an Orbax PyTree
checkpoint (tensorstore, exact dtypes and shapes) and everything else, plus the
nested structure with a placeholder where each array was, goes to a JSON
document. Restoring reads the JSON first, asks Orbax for exactly the arrays it
names (as numpy arrays) and rebuilds the original nesting. Neither format runs
code on load (no pickle).

On-disk layout (``name`` is ``"default"`` for a single item, otherwise the
mapping key; each sub-directory is one entry of an ``ocp.args.Composite``)::

    <directory>/<step>/
        _CHECKPOINT_METADATA
        <name>.json/metadata   {"format": "datarax.checkpoint/1", "type": ..., "via": ..., "state": ...}
        <name>.arrays/...      PyTree of {"0": array, "1": array, ...}; absent without arrays

In ``state`` an array is ``{"__array__": index, "dtype": ..., "shape": [...]}``
(index ``null`` for a zero-size array, which Orbax cannot store). ``via`` is
``"get_state"`` or ``"nnx.state"`` (for an NNX object, ``state`` nests its
variables by attribute path, as ``nnx.State.to_pure_dict`` does).

**Why restoring is all or nothing.** A model restored without its optimizer,
or an iterator ahead of its model, trains on silently; so a restore either
changes every item or none. Every item's files are read and checked first: a
missing, truncated or garbage file raises an error naming the step, the item
and the file. NNX objects are checked path by path (missing or unexpected
variables, shape, dtype) before anything is applied; ``Checkpointable`` items
check their own state in ``set_state``. If any item refuses, the items already
restored in the same call are put back to their previous state.

Example:
    >>> import tempfile
    >>> from flax import nnx
    >>> class Position:
    ...     def __init__(self):
    ...         self.position = 0
    ...     def get_state(self):
    ...         return {"position": self.position, "stop_epoch": None}
    ...     def set_state(self, state):
    ...         self.position = state["position"]
    >>> it, model = Position(), nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with OrbaxCheckpointHandler(tmp, max_to_keep=2) as handler:
    ...         for step in (10, 20, 30):
    ...             it.position = step
    ...             handler.save(step, {"model": model, "iterator": it})
    ...         handler.wait_until_finished()
    ...         fresh_it, fresh_model = Position(), nnx.Linear(2, 1, rngs=nnx.Rngs(1))
    ...         restored = handler.restore({"model": fresh_model, "iterator": fresh_it})
    ...         steps = handler.all_steps()
    >>> restored, fresh_it.position, steps
    (30, 30, [20, 30])
    >>> bool((fresh_model.kernel[...] == model.kernel[...]).all())
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from datarax.checkpoint.item_state import (
    VIA_PROTOCOL,
    Item,
    apply_state,
    array_indices,
    join,
    prepare,
    snapshot,
    split,
    state_via,
    take_state,
)
from datarax.core.validation import boolean, is_int, non_negative_int, optional_positive_int

Items = Item | Mapping[str, Item]
FORMAT = "datarax.checkpoint/1"
_OWNER = "OrbaxCheckpointHandler"


def _items(items: Any) -> dict[str, Any]:
    if not isinstance(items, Mapping):
        items = {"default": items}
    if not items:
        raise TypeError(f"{_OWNER}: items mapping is empty")
    for name, item in items.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise TypeError(f"{_OWNER}: item name {name!r} must be a non-empty str without '/'")
        if state_via(item) is None:
            raise TypeError(
                f"{_OWNER}: item {name!r} ({type(item).__name__}) is not Checkpointable (needs get_state "
                "and set_state) nor a Flax NNX object (nnx.Module, nnx.Optimizer)"
            )
    return dict(items)


class OrbaxCheckpointHandler:
    """Saves datarax state, NNX models and optimizers in numbered, atomic Orbax steps.

    Args:
        directory: Checkpoint root directory (created if missing).
        max_to_keep: Number of most recent steps kept on disk; None keeps all.
        remove_interrupted_saves: Delete the temporary directories that saves
            interrupted by a crash left behind (``<step>.orbax-checkpoint-tmp-*``;
            never a complete step) when the handler is created. Set it only in
            the process that writes ``directory``: a reader opened while a
            save is in flight elsewhere would delete that save.

    Raises:
        ValueError: If ``max_to_keep`` is not a positive int or None, or
            ``remove_interrupted_saves`` not a bool.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        remove_interrupted_saves: bool = False,
    ):
        max_to_keep = optional_positive_int(_OWNER, "max_to_keep", max_to_keep)
        remove_interrupted_saves = boolean(_OWNER, "remove_interrupted_saves", remove_interrupted_saves)
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=remove_interrupted_saves
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        if remove_interrupted_saves:
            # Orbax removes them in a background thread and waits for it only before its first
            # save; waiting here means a directory listed after construction no longer holds them.
            wait = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
            if wait is not None:
                wait()

    def latest_step(self) -> int | None:
        """The newest saved step, or None if there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All steps on disk, in increasing order."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, items: Items, *, force: bool = False) -> None:
        """Saves the state of ``items`` (one item or a name -> item mapping) as ``step``.

        Args:
            step: Step number (a non-negative int, newer than the latest step).
            items: A ``Checkpointable`` object, an NNX object, or a mapping of
                names to them (e.g. ``{"model": m, "optimizer": o, "iterator": it}``).
            force: Overwrite an existing step or allow an older one.

        Raises:
            ValueError: If ``step`` is not a non-negative int, or already exists or is
                older than the latest step (``force=True`` overwrites / allows it).
            TypeError: If an item is neither ``Checkpointable`` nor an NNX object, or
                its state holds an unsupported value.
        """
        step, items = non_negative_int(_OWNER, "step", step), _items(items)
        args: dict[str, Any] = {}
        for name, item in items.items():
            via = state_via(item)
            state = take_state(item)
            if not isinstance(state, Mapping):
                raise TypeError(f"{_OWNER}: get_state of {name!r} returned {type(state).__name__}, not a dict")
            skeleton, arrays = split(_OWNER, name, state)
            kind = f"{type(item).__module__}.{type(item).__qualname__}"
            doc = {"format": FORMAT, "type": kind, "via": via, "state": skeleton}
            args[f"{name}.json"] = ocp.args.JsonSave(doc)
            if arrays:
                args[f"{name}.arrays"] = ocp.args.PyTreeSave(arrays)
        self._manager.wait_until_finished()
        latest = self.latest_step()
        if not force and latest is not None and step <= latest:
            raise ValueError(
                f"{_OWNER}: step {step} is not newer than the latest step {latest} "
                f"in {self.directory}; pass force=True to overwrite"
            )
        if step in self._manager.all_steps():
            self._manager.delete(step)
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)

    def _read(self, step: int, name: str) -> tuple[dict[str, Any], Any]:
        """The JSON document and the rebuilt state of item ``name`` in ``step``."""
        json_file = self.directory / str(step) / f"{name}.json" / "metadata"
        where = f"{_OWNER}: item {name!r} of step {step}"
        try:
            doc = self._manager.restore(step, args=ocp.args.Composite(**{f"{name}.json": ocp.args.JsonRestore()}))
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{where}: its JSON document {json_file} is missing ({error})") from error
        except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(
                f"{where}: its JSON document {json_file} is truncated or not JSON ({type(error).__name__}: {error})"
            ) from error
        doc = doc[f"{name}.json"]
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("state"), dict):
            raise ValueError(f"{where}: {json_file} is not a {FORMAT} document")
        indices = array_indices(doc["state"])
        if not all(is_int(i) and i >= 0 for i in indices):
            raise ValueError(f"{where}: {json_file} names invalid arrays {indices}")
        arrays: dict[str, Any] = {}
        array_dir = json_file.parent.with_name(f"{name}.arrays")
        try:
            if indices:
                restore_args = {str(i): ocp.RestoreArgs(restore_type=np.ndarray) for i in indices}
                args = ocp.args.Composite(**{f"{name}.arrays": ocp.args.PyTreeRestore(restore_args=restore_args)})
                arrays = self._manager.restore(step, args=args)[f"{name}.arrays"]
            state = join(doc["state"], arrays)
        except Exception as error:  # noqa: BLE001 - Orbax and tensorstore raise many types; all mean unreadable
            raise ValueError(
                f"{where}: its arrays in {array_dir} are missing or corrupt ({type(error).__name__}: {error})"
            ) from error
        return doc, state

    def restore(self, items: Items, step: int | None = None) -> int:
        """Restores ``items`` from ``step`` (None: the latest); returns the step.

        ``Checkpointable`` items get ``set_state``; NNX objects get ``nnx.update``.
        Either every item is restored or none is changed.

        Args:
            items: As for ``save``; a subset of the saved items may be restored.
            step: The step to restore; None restores the latest.

        Returns:
            The restored step.

        Raises:
            FileNotFoundError: If there are no checkpoints, ``step`` does not exist,
                or a file of an item is missing (the message names step, item and file).
            ValueError: If ``step`` is invalid, an item is missing from the step, a
                file is truncated or corrupt, or an item's state does not fit the
                object (the message names the item and the path). No item is changed.
            TypeError: If an item is neither ``Checkpointable`` nor an NNX object.
        """
        items = _items(items)
        if step is not None:
            step = non_negative_int(_OWNER, "step", step)
        self._manager.wait_until_finished()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"{_OWNER}: no checkpoints in {self.directory}")
            step = steps[-1]
        if step not in steps:
            raise FileNotFoundError(f"{_OWNER}: no step {step} in {self.directory}; available steps: {steps}")
        step_dir = self.directory / str(step)
        saved = sorted(path.name[: -len(".json")] for path in step_dir.glob("*.json"))
        missing = [name for name in items if name not in saved]
        if missing:
            raise ValueError(f"{_OWNER}: items {missing} not in step {step}; it holds {saved}")

        # Read and check everything before touching any item.
        states: dict[str, Any] = {}
        for name, item in items.items():
            doc, state = self._read(step, name)
            via, saved_via = state_via(item), doc.get("via", VIA_PROTOCOL)
            problem = f"{_OWNER}: item {name!r} of step {step}"
            if via != saved_via:
                raise ValueError(
                    f"{problem} was saved from {doc.get('type')} via {saved_via}; it cannot be restored "
                    f"into {type(item).__name__}, which is restored via {via}"
                )
            states[name] = prepare(item, state, problem)

        previous = {name: snapshot(item) for name, item in items.items()}
        tried: list[str] = []
        try:
            for name, item in items.items():
                tried.append(name)
                apply_state(item, states[name])
        except Exception:
            for name in tried:  # put back every item touched by this call
                apply_state(items[name], previous[name])
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
        return f"{_OWNER}({str(self.directory)!r}, steps={self.all_steps()})"


__all__ = ["OrbaxCheckpointHandler"]

"""Tools for users' own tests: ``check_resume`` proves that a pipeline resumes exactly.

datarax promises that the state an iterator reports after ``k`` batches,
restored into an identically built pipeline, continues with exactly the
batches the original run produced (README, "Exact resume"). That holds for
datarax's own components; a user's pipeline can still break it: a host
operator that draws from ``np.random`` instead of the ``rng`` it is given, a
device function that calls ``np.random`` while it is traced (the value is
baked into the compiled step, different in every process), a source that
lists a directory without sorting it, a custom iterator whose ``get_state``
forgets something. ``check_resume`` finds these in a unit test:

1. ``build_pipeline()`` (a zero-argument callable returning a pipeline) is
   iterated for ``num_batches`` batches: the *reference*, with the state
   after every batch (``s_0`` before the first, ..., ``s_n`` after the last);
2. for every step ``k``, a freshly built pipeline's iterator is given
   ``s_k`` (round-tripped through JSON, as a file or another process would
   see it, or through a real Orbax checkpoint with ``via_orbax=True``) and
   must reproduce batches ``k .. n-1`` bit for bit (every key, dtype, shape
   and byte, ``valid_mask`` included) and report ``s_{k+1} .. s_n`` after
   them;
3. with ``fresh_process=True`` the same is done in a new Python process
   (``build_pipeline`` must then be importable: a ``"module:function"``
   string or a function defined at module level), which restores each state
   from JSON, writes the batches to an ``.npz`` file and exits; the parent
   compares them. Only a fresh process catches values fixed when the step is
   first traced, because a pipeline built again in the same process reuses
   the compiled step (``Pipeline.program``).

A difference raises ``AssertionError`` naming the step, the batch, the key
and the first differing index with both values. A check restores
``n + 1`` states and computes about ``n * n / 2`` batches, so keep
``num_batches`` small (crossing an epoch boundary is what matters: make the
dataset small rather than the check long).

Example:
    >>> import numpy as np
    >>> from flax import nnx
    >>> from datarax import Pipeline
    >>> from datarax.operators import RandomFlip, RandomFlipConfig
    >>> from datarax.sources import MemorySource, MemorySourceConfig
    >>> def build():
    ...     images = np.arange(10 * 2 * 2, dtype=np.float32).reshape(10, 2, 2, 1)
    ...     source = MemorySource(MemorySourceConfig(), data={"image": images})
    ...     return Pipeline(source=source, stages=[RandomFlip(RandomFlipConfig())], batch_size=4,
    ...                     rngs=nnx.Rngs(0), shuffle=True, num_epochs=2)
    >>> report = check_resume(build, num_batches=4)   # 3 batches an epoch: crosses into epoch 1
    >>> report.num_batches, report.steps
    (4, (0, 1, 2, 3, 4))
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datarax.checkpoint.handlers import OrbaxCheckpointHandler
from datarax.core.validation import is_int, positive_int

_OWNER = "check_resume"


@dataclasses.dataclass(frozen=True)
class ResumeReport:
    """What ``check_resume`` checked (it raises on any difference, so a report means all passed).

    Attributes:
        num_batches: Batches in the reference run (fewer than asked when the stream ended first).
        steps: The steps ``k`` whose state was restored in this process.
        fresh_process_steps: The steps restored in a fresh process (empty without ``fresh_process``).
        stream_ended: Whether the stream ended before ``num_batches`` batches (the end was checked too).
    """

    num_batches: int
    steps: tuple[int, ...]
    fresh_process_steps: tuple[int, ...]
    stream_ended: bool


def check_resume(
    build_pipeline: Callable[[], Iterable[Mapping[str, Any]]] | str,
    *,
    num_batches: int,
    steps: Sequence[int] | None = None,
    fresh_process: bool = False,
    fresh_process_steps: Sequence[int] | None = None,
    via_orbax: bool = False,
    timeout: float = 600.0,
) -> ResumeReport:
    """Asserts that the pipeline ``build_pipeline`` builds resumes exactly from every step.

    Args:
        build_pipeline: A zero-argument callable that builds the pipeline
            anew each time it is called (identically: same data, seed and
            configuration), or a ``"module:function"`` string naming one.
            ``iter()`` of what it returns must have ``get_state`` and
            ``set_state`` (a ``PipelineIterator`` does).
        num_batches: Length of the reference run (a positive int). If the
            stream ends before, the batches it has are checked, and every
            restored stream must end at the same place.
        steps: The steps ``k`` (states after ``k`` batches, ``0 <= k <=
            num_batches``) restored in this process; None: every step.
        fresh_process: Also restore states in a new Python process (one
            process for all of its steps, each into a newly built pipeline).
            ``build_pipeline`` must then be a ``"module:function"`` string or
            a module-level function of an importable module (not a lambda,
            a closure or a function of ``__main__``); the process gets this
            process's ``sys.path`` and environment.
        fresh_process_steps: The steps restored in the fresh process; None:
            every step.
        via_orbax: Save each reference state with ``OrbaxCheckpointHandler``
            (in a temporary directory) and restore it from there, instead of
            a JSON round trip.
        timeout: Seconds the fresh process may run.

    Returns:
        A ``ResumeReport`` of what was checked.

    Raises:
        AssertionError: If a restored stream differs from the reference: the
            message names the step, the batch, the key and the first
            differing index (or the state, the key set, dtype, shape or the
            stream's length that differs), or a state is not JSON data.
        TypeError: If ``build_pipeline`` is not callable or its iterator is
            not checkpointable.
        ValueError: For a bad ``num_batches`` or step, or a
            ``build_pipeline`` that a fresh process cannot import.
        RuntimeError: If the fresh process fails or runs past ``timeout``
            (its error output is in the message).
    """
    build, target = _resolve(build_pipeline, need_target=bool(fresh_process))
    num_batches = positive_int(_OWNER, "num_batches", num_batches)
    with contextlib.ExitStack() as stack:
        handler = None
        if via_orbax:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="check_resume_"))
            handler = stack.enter_context(OrbaxCheckpointHandler(directory, max_to_keep=None))
        batches, states, ended = _reference(build, num_batches, handler)
        count = len(batches)
        checked = _steps(steps, count, "steps")
        for k in checked:
            _check_step(build, k, batches, states, ended, handler)
        fresh: tuple[int, ...] = ()
        if fresh_process:
            fresh = _steps(fresh_process_steps, count, "fresh_process_steps")
            _check_fresh_process(target, fresh, batches, states, ended, timeout)
    return ResumeReport(num_batches=count, steps=checked, fresh_process_steps=fresh, stream_ended=ended)


# -- building -------------------------------------------------------------------------------------


def _resolve(build_pipeline: Any, *, need_target: bool) -> tuple[Callable[[], Any], str | None]:
    """The builder, and its ``"module:qualname"`` when a fresh process needs to import it."""
    if isinstance(build_pipeline, str):
        return _import_target(build_pipeline), build_pipeline
    if not callable(build_pipeline):
        raise TypeError(
            f"{_OWNER}: build_pipeline must be a zero-argument callable or a 'module:function' string, "
            f"got {build_pipeline!r} ({type(build_pipeline).__name__})"
        )
    if not need_target:
        return build_pipeline, None
    module, qualname = getattr(build_pipeline, "__module__", None), getattr(build_pipeline, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise ValueError(
            f"{_OWNER}: fresh_process=True imports build_pipeline in a new process, so it must be a function "
            f"defined at module level in an importable module, got {module}:{qualname or build_pipeline!r}; "
            "move it into a module or pass 'module:function'"
        )
    target = f"{module}:{qualname}"
    if _import_target(target) is not build_pipeline:
        raise ValueError(f"{_OWNER}: {target} does not import as the build_pipeline given; pass 'module:function'")
    return build_pipeline, target


def _import_target(target: str) -> Callable[[], Any]:
    """The callable a ``"module:function"`` string names (the user's own code, never read from data)."""
    module_name, _, qualname = target.partition(":")
    if not module_name or not qualname:
        raise ValueError(f"{_OWNER}: build_pipeline {target!r} must have the form 'module:function'")
    value: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        value = getattr(value, part)
    if not callable(value):
        raise TypeError(f"{_OWNER}: {target} is not callable")
    return value


def _iterator(build: Callable[[], Any]) -> Any:
    iterator = iter(build())
    if not (callable(getattr(iterator, "get_state", None)) and callable(getattr(iterator, "set_state", None))):
        raise TypeError(
            f"{_OWNER}: the iterator of the pipeline build_pipeline returns ({type(iterator).__name__}) has no "
            "get_state/set_state"
        )
    return iterator


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


def _steps(steps: Sequence[int] | None, count: int, name: str) -> tuple[int, ...]:
    if steps is None:
        return tuple(range(count + 1))
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence) or not steps:
        raise ValueError(f"{_OWNER}: {name} must be a non-empty sequence of ints or None, got {steps!r}")
    for k in steps:
        if not is_int(k) or not 0 <= k <= count:
            raise ValueError(
                f"{_OWNER}: {name} must hold ints in [0, {count}] (the reference run has {count} batches), got {k!r}"
            )
    return tuple(sorted({int(k) for k in steps}))


# -- the reference run and the in-process checks -----------------------------------------------------


def _json_state(state: Any, where: str) -> Any:
    """``state`` as JSON gives it back (a state must be plain data)."""
    try:
        return json.loads(json.dumps(state, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise AssertionError(f"{_OWNER}: the state {where} is not JSON data ({error}): {state!r}") from error


def _numpy(batch: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(batch, Mapping):
        raise AssertionError(f"{_OWNER}: {where} is a {type(batch).__name__}, not a dict of arrays")
    return {str(key): np.asarray(value) for key, value in batch.items()}


def _reference(
    build: Callable[[], Any], num_batches: int, handler: OrbaxCheckpointHandler | None
) -> tuple[list[dict[str, np.ndarray]], list[Any], bool]:
    """The reference batches, the JSON states before and after each, and whether the stream ended early."""
    iterator = _iterator(build)
    try:
        batches: list[dict[str, np.ndarray]] = []
        states = [_json_state(iterator.get_state(), "before the first batch")]
        if handler is not None:
            handler.save(0, iterator)
        for k in range(num_batches):
            try:
                batch = next(iterator)
            except StopIteration:
                return batches, states, True
            batches.append(_numpy(batch, f"batch {k} of the reference run"))
            states.append(_json_state(iterator.get_state(), f"after {k + 1} batches"))
            if handler is not None:
                handler.save(k + 1, iterator)
        return batches, states, False
    finally:
        if handler is not None:
            handler.wait_until_finished()
        _close(iterator)


def _where(k: int) -> str:
    return f"{_OWNER}: resuming from the state saved after {k} batch{'es' if k != 1 else ''}"


def _check_step(
    build: Callable[[], Any],
    k: int,
    batches: list[dict[str, np.ndarray]],
    states: list[Any],
    ended: bool,
    handler: OrbaxCheckpointHandler | None,
) -> None:
    iterator = _iterator(build)
    where = _where(k)
    try:
        if handler is None:
            iterator.set_state(json.loads(json.dumps(states[k])))
        else:
            handler.restore(iterator, step=k)
        _check_state(iterator, states[k], where, "right after the restore")
        for j in range(k, len(batches)):
            try:
                batch = next(iterator)
            except StopIteration:
                raise AssertionError(
                    f"{where}: the stream ended before batch {j}; the reference run has {len(batches)} batches"
                ) from None
            _compare(batches[j], _numpy(batch, f"batch {j}"), where, j)
            _check_state(iterator, states[j + 1], where, f"after batch {j}")
        if ended:
            extra = next(iterator, None)
            if extra is not None:
                raise AssertionError(
                    f"{where}: the stream yields a batch {len(batches)} where the reference run ended after "
                    f"{len(batches)} batches"
                )
    finally:
        _close(iterator)


def _check_state(iterator: Any, want: Any, where: str, when: str) -> None:
    got = _json_state(iterator.get_state(), when)
    if got != want:
        keys = sorted(set(got) | set(want)) if isinstance(got, dict) and isinstance(want, dict) else []
        differ = [key for key in keys if got.get(key) != want.get(key)]
        detail = f" (fields {differ})" if differ else ""
        raise AssertionError(f"{where}: {when}: get_state() is {got!r} but the reference run had {want!r}{detail}")


# -- comparing batches ----------------------------------------------------------------------------------


def _compare(want: dict[str, np.ndarray], got: dict[str, np.ndarray], where: str, j: int) -> None:
    """Bit-for-bit equality of batch ``j``, or an ``AssertionError`` naming the key and the first differing index."""
    if set(got) != set(want):
        raise AssertionError(f"{where}: batch {j} has keys {sorted(got)} but the reference run's has {sorted(want)}")
    for key in sorted(want):
        a, b = want[key], got[key]
        if a.dtype != b.dtype or a.shape != b.shape:
            raise AssertionError(
                f"{where}: batch {j}, key {key!r} is {b.dtype}{list(b.shape)} but {a.dtype}{list(a.shape)} in "
                "the reference run"
            )
        index = first_difference(a, b)
        if index is not None:
            raise AssertionError(
                f"{where}: batch {j}, key {key!r} differs first at index {index}: {_scalar(a[index])} in the "
                f"reference run, {_scalar(b[index])} after the resume"
            )


def _scalar(value: Any) -> str:
    try:
        return repr(value.item())
    except (AttributeError, ValueError, TypeError):
        return repr(value)


def first_difference(a: np.ndarray, b: np.ndarray) -> tuple[int, ...] | None:
    """The first index (C order) at which two arrays of one dtype and shape differ in their bytes, or None.

    Bytes, not values: ``-0.0`` differs from ``0.0`` and two NaNs with the same
    bits are equal, which is what "the same batch" means for a resumed stream.

    Example:
        >>> first_difference(np.array([[1.0, 2.0], [3.0, np.nan]]), np.array([[1.0, 2.0], [3.5, np.nan]]))
        (1, 0)
        >>> first_difference(np.array([np.nan]), np.array([np.nan])) is None
        True
    """
    if a.size == 0:
        return None
    itemsize = a.dtype.itemsize
    left = np.ascontiguousarray(a).reshape(-1).view(np.uint8).reshape(a.size, itemsize)
    right = np.ascontiguousarray(b).reshape(-1).view(np.uint8).reshape(b.size, itemsize)
    rows = np.flatnonzero((left != right).any(axis=1))
    if rows.size == 0:
        return None
    return tuple(int(i) for i in np.unravel_index(int(rows[0]), a.shape))


# -- the fresh process ----------------------------------------------------------------------------------------

# Runs before datarax is imported, so the child finds the modules the parent found.
_CHILD = (
    "import json, sys\n"
    "request = json.load(open(sys.argv[1]))\n"
    "sys.path[:] = request['sys_path'] + [p for p in sys.path if p not in request['sys_path']]\n"
    "from datarax.testing import _fresh_process_main\n"
    "_fresh_process_main(request)\n"
)


def _check_fresh_process(
    target: str | None,
    steps: tuple[int, ...],
    batches: list[dict[str, np.ndarray]],
    states: list[Any],
    ended: bool,
    timeout: float,
) -> None:
    with tempfile.TemporaryDirectory(prefix="check_resume_") as directory:
        request = {
            "target": target,
            "sys_path": [os.path.abspath(p) if p else os.getcwd() for p in sys.path],
            "states": {str(k): states[k] for k in steps},
            "num_batches": len(batches),
            "extra": ended,  # read one batch past the end: the resumed stream must end there too
            "arrays": os.path.join(directory, "batches.npz"),
            "result": os.path.join(directory, "result.json"),
        }
        request_path = Path(directory) / "request.json"
        request_path.write_text(json.dumps(request))
        try:
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, str(request_path)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"{_OWNER}: the fresh process ran past timeout={timeout} s") from error
        if done.returncode != 0:
            raise RuntimeError(
                f"{_OWNER}: the fresh process restoring {target} failed (exit code {done.returncode}):\n"
                f"{done.stderr[-4000:]}"
            )
        result = json.loads(Path(request["result"]).read_text())
        with np.load(request["arrays"], allow_pickle=False) as arrays:
            for k in steps:
                where = f"{_where(k)} in a fresh process"
                got = result[str(k)]
                if got["restored"] != states[k]:
                    raise AssertionError(
                        f"{where}: right after the restore: get_state() is {got['restored']!r} but the reference "
                        f"run had {states[k]!r}"
                    )
                for offset, (batch, state) in enumerate(zip(got["batches"], got["states"], strict=True)):
                    j = k + offset
                    if j >= len(batches):
                        raise AssertionError(
                            f"{where}: the stream yields a batch {j} where the reference run ended after "
                            f"{len(batches)} batches"
                        )
                    columns = {
                        name: np.frombuffer(arrays[array_key].tobytes(), dtype=_dtype(dtype)).reshape(shape)
                        for name, (array_key, dtype, shape) in batch.items()
                    }
                    _compare(batches[j], columns, where, j)
                    if state != states[j + 1]:
                        raise AssertionError(
                            f"{where}: after batch {j}: get_state() is {state!r} but the reference run had "
                            f"{states[j + 1]!r}"
                        )
                if k + len(got["batches"]) < len(batches):
                    raise AssertionError(
                        f"{where}: the stream ended before batch {k + len(got['batches'])}; the reference run has "
                        f"{len(batches)} batches"
                    )


def _dtype(name: str) -> np.dtype:
    """A dtype by name, including JAX's extra ones (``bfloat16``, ...), which numpy alone does not know."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


def _fresh_process_main(request: dict[str, Any]) -> None:
    """The fresh process: restores each state into a newly built pipeline and writes what follows."""
    build = _import_target(request["target"])
    arrays: dict[str, np.ndarray] = {}
    result: dict[str, Any] = {}
    total = request["num_batches"]
    for step, state in request["states"].items():
        k = int(step)
        iterator = _iterator(build)
        try:
            iterator.set_state(state)
            restored = _json_state(iterator.get_state(), "after the restore")
            served, after = [], []
            for j in range(k, total + (1 if request["extra"] else 0)):
                try:
                    batch = _numpy(next(iterator), f"batch {j}")
                except StopIteration:
                    break
                columns = {}
                for c, (name, value) in enumerate(batch.items()):
                    array_key = f"s{k}_b{j}_c{c}"
                    arrays[array_key] = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
                    columns[name] = (array_key, value.dtype.name, list(value.shape))
                served.append(columns)
                after.append(_json_state(iterator.get_state(), f"after batch {j}"))
        finally:
            _close(iterator)
        result[step] = {"restored": restored, "batches": served, "states": after}
    np.savez(request["arrays"], **arrays)
    Path(request["result"]).write_text(json.dumps(result))


__all__ = ["ResumeReport", "check_resume", "first_difference"]

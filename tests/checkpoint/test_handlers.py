"""Tests for ``datarax.checkpoint.handlers``: real Orbax checkpoints on disk, no mocks."""

from __future__ import annotations

import doctest
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import datarax.checkpoint.handlers as handler_module
from datarax.checkpoint import OrbaxCheckpointHandler
from datarax.core.config import DataraxModuleConfig
from datarax.core.module import DataraxModule

# --- helpers (also imported by the fresh-process test) ------------------------


def _stats(data):
    data = jnp.asarray(data)
    return {"mean": jnp.mean(data), "hist": jnp.bincount(data.astype(jnp.int32), length=4), "n": 5}


class Model(DataraxModule):
    """Params, an ``nnx.Rngs`` with two streams, counters and computed statistics."""

    def __init__(self, features: int = 4, *, seed: int = 0):
        rngs = nnx.Rngs(params=seed, noise=seed + 1)
        super().__init__(DataraxModuleConfig(batch_stats_fn=_stats), rngs=rngs)
        self.w = nnx.Param(jax.random.normal(rngs.params(), (3, features)))
        self.b = nnx.Param(jnp.zeros((features,), jnp.float32))

    def __call__(self, x):
        self._applied_count[...] += 1
        noise = jax.random.normal(self.rngs.noise(), self.b.shape)
        return x @ self.w[...] + (self.b[...] + noise)[None, :]


def trained_model() -> Model:
    model = Model(seed=0)
    for _ in range(3):
        model(jnp.ones((2, 3)))
    model.b[...] = jnp.arange(4.0)
    model.compute_statistics([0, 1, 1, 3, 2])
    return model


def checksum(module: Model) -> str:
    """Hash of the module's state and of its next three noise draws."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(module.get_state())[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    for _ in range(3):
        digest.update(np.asarray(jax.random.normal(module.rngs.noise(), (4,))).tobytes())
    return digest.hexdigest()


def assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b), (a, b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class ToyIterator:
    """A pipeline-iterator-like object whose state is pure JSON."""

    def __init__(self, n: int = 10, batch_size: int = 3, seed: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.position, self.stop_epoch = 0, 0, None

    def __next__(self):
        start = self.position
        self.position += self.batch_size
        if self.position >= self.n:
            self.epoch, self.position = self.epoch + 1, 0
        return [(start + i + self.seed + self.epoch) % self.n for i in range(self.batch_size)]

    def get_state(self):
        keys = ("epoch", "position", "seed", "batch_size", "stop_epoch")
        return {key: getattr(self, key) for key in keys}

    def set_state(self, state):
        if set(state) != set(self.get_state()):
            raise ValueError(f"ToyIterator.set_state: keys {sorted(state)} do not match")
        for key, value in state.items():
            setattr(self, key, value)


class Recorder:
    """Returns a fixed state and records whatever ``set_state`` receives."""

    def __init__(self, state):
        self.state = state

    def get_state(self):
        return self.state

    def set_state(self, state):
        self.state = state


# --- round trips ----------------------------------------------------------------


def test_module_round_trip_restores_state_and_rng_stream(tmp_path):
    model = trained_model()
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(7, model)
        handler.wait_until_finished()
        fresh = Model(seed=123)
        assert handler.restore(fresh) == 7
    assert_tree_equal(fresh.get_state(), model.get_state())
    assert fresh.get_operation_stats() == {"applied_count": 3, "skipped_count": 0}
    assert fresh.get_statistics()["n"] == 5 and type(fresh.get_statistics()["n"]) is int
    for _ in range(3):
        draw = jax.random.key_data(fresh.rngs.noise())
        np.testing.assert_array_equal(draw, jax.random.key_data(model.rngs.noise()))
    np.testing.assert_array_equal(fresh(jnp.ones((1, 3))), model(jnp.ones((1, 3))))


def test_iterator_round_trip_with_pure_json_state(tmp_path):
    it = ToyIterator(seed=2)
    for _ in range(5):
        next(it)
    it.stop_epoch = None
    handler = OrbaxCheckpointHandler(tmp_path)
    handler.save(5, it)
    handler.close()
    assert not list((tmp_path / "5").glob("*.arrays")), "pure JSON state needs no array store"
    doc = json.loads((tmp_path / "5" / "default.json" / "metadata").read_text())
    assert doc["format"] == "datarax.checkpoint/1" and doc["state"] == it.get_state()
    fresh = ToyIterator(seed=2)
    with OrbaxCheckpointHandler(tmp_path) as reopened:
        assert reopened.restore(fresh) == 5
    assert fresh.get_state() == it.get_state()
    assert fresh.get_state()["stop_epoch"] is None
    assert [next(fresh) for _ in range(4)] == [next(it) for _ in range(4)]


def test_values_keep_their_types_dtypes_and_shapes(tmp_path):
    key = jax.random.key(3)
    state = {
        "f64": np.arange(3, dtype=np.float64),
        "i8": np.array([[-1, 2]], dtype=np.int8),
        "mask": np.array([True, False]),
        "bf16": jnp.ones((2,), jnp.bfloat16),
        "empty": np.zeros((2, 0), np.float32),
        "scalar": np.float32(1.5),
        "key": key,
        "py": {"int": 3, "float": 0.25, "bool": True, "none": None, "str": "x"},
        "seq": [1, (2, jnp.array([4, 5]))],
        0: {"nested": {"deep": jnp.array(7, jnp.int32)}},
    }
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(0, Recorder(state))
        target = Recorder(None)
        handler.restore(target)
    got = target.state
    assert set(got) == {"f64", "i8", "mask", "bf16", "empty", "scalar", "key", "py", "seq", "0"}
    for name in ("f64", "i8", "mask", "bf16", "empty"):
        assert got[name].dtype == np.asarray(state[name]).dtype
        np.testing.assert_array_equal(got[name], np.asarray(state[name]))
    assert got["scalar"].shape == () and got["scalar"].dtype == np.float32
    np.testing.assert_array_equal(got["key"], jax.random.key_data(key))
    assert got["py"] == state["py"]
    assert [type(v) for v in got["py"].values()] == [int, float, bool, type(None), str]
    assert got["seq"][0] == 1 and got["seq"][1][0] == 2
    np.testing.assert_array_equal(got["seq"][1][1], [4, 5])
    assert got["0"]["nested"]["deep"].dtype == np.int32 and int(got["0"]["nested"]["deep"]) == 7


def test_save_copies_numpy_arrays_before_returning(tmp_path):
    array = np.zeros(3)
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(1, Recorder({"a": array}))
        array[:] = 9.0
        target = Recorder(None)
        handler.restore(target)
    np.testing.assert_array_equal(target.state["a"], np.zeros(3))


def test_multiple_items_in_one_step(tmp_path):
    model, it = trained_model(), ToyIterator()
    next(it)
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(1, {"model": model, "iterator": it})
        fresh_model, fresh_it = Model(seed=9), ToyIterator()
        assert handler.restore({"model": fresh_model, "iterator": fresh_it}) == 1
        only_it = ToyIterator()
        handler.restore({"iterator": only_it})  # a subset of the saved items
        with pytest.raises(ValueError, match=r"\['other'\] not in step 1.*'iterator', 'model'"):
            handler.restore({"other": ToyIterator()})
        with pytest.raises(ValueError, match="default"):
            handler.restore(ToyIterator())
    assert_tree_equal(fresh_model.get_state(), model.get_state())
    assert fresh_it.get_state() == only_it.get_state() == it.get_state()
    assert sorted(p.name for p in (tmp_path / "1").iterdir() if p.is_dir()) == [
        "iterator.json",
        "model.arrays",
        "model.json",
    ]


# --- steps -------------------------------------------------------------------------


def test_max_to_keep_keeps_the_last_steps_on_disk(tmp_path):
    it = ToyIterator()
    with OrbaxCheckpointHandler(tmp_path, max_to_keep=2) as handler:
        assert handler.latest_step() is None and handler.all_steps() == []
        for step in (10, 20, 30, 40):
            it.position = step
            handler.save(step, it)
        handler.wait_until_finished()
        assert handler.all_steps() == [30, 40]
        assert handler.latest_step() == 40
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["30", "40"]
    with OrbaxCheckpointHandler(tmp_path, max_to_keep=None) as handler:
        assert handler.all_steps() == [30, 40]
        for step in range(41, 46):
            handler.save(step, it)
        handler.wait_until_finished()
        assert handler.all_steps() == [30, 40, 41, 42, 43, 44, 45]


def test_remove_interrupted_saves_deletes_only_unfinished_steps(tmp_path):
    # A save interrupted before Orbax's final rename leaves the step's files under a temporary
    # name: here step 20's real files, moved back to such a name.
    it = ToyIterator()
    with OrbaxCheckpointHandler(tmp_path) as handler:
        for step in (10, 20):
            it.position = step
            handler.save(step, it)
    unfinished = tmp_path / "20.orbax-checkpoint-tmp"  # the name orbax-checkpoint 0.12 gives it
    (tmp_path / "20").rename(unfinished)

    with OrbaxCheckpointHandler(tmp_path) as reader:  # the default: a reader deletes nothing
        assert reader.all_steps() == [10]
    assert unfinished.is_dir()
    with OrbaxCheckpointHandler(tmp_path, remove_interrupted_saves=True) as writer:
        assert writer.all_steps() == [10] and writer.latest_step() == 10
        fresh = ToyIterator()
        assert writer.restore(fresh) == 10 and fresh.position == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10"]


def test_remove_interrupted_saves_must_be_a_bool(tmp_path):
    with pytest.raises(ValueError, match=r"remove_interrupted_saves must be a bool, got 1"):
        OrbaxCheckpointHandler(tmp_path / "never", remove_interrupted_saves=1)
    assert not (tmp_path / "never").exists()


def test_restore_an_older_step(tmp_path):
    it = ToyIterator()
    with OrbaxCheckpointHandler(tmp_path) as handler:
        for step in (1, 2, 3):
            it.position = step * 100
            handler.save(step, it)
        fresh = ToyIterator()
        assert handler.restore(fresh, step=2) == 2
        assert fresh.position == 200
        assert handler.restore(fresh) == 3 and fresh.position == 300


def test_existing_or_older_step_needs_force(tmp_path):
    it = ToyIterator()
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(5, it)
        with pytest.raises(ValueError, match="force=True"):
            handler.save(5, it)
        with pytest.raises(ValueError, match="not newer than the latest step 5"):
            handler.save(4, it)
        it.position = 42
        handler.save(5, it, force=True)
        fresh = ToyIterator()
        handler.restore(fresh, step=5)
        assert fresh.position == 42 and handler.all_steps() == [5]


# --- strictness ----------------------------------------------------------------------


def test_structure_mismatch_raises_and_leaves_target_unchanged(tmp_path):
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(1, trained_model())
        wrong_shape = Model(features=5, seed=4)
        before = wrong_shape.get_state()
        with pytest.raises(ValueError, match="shape"):
            handler.restore(wrong_shape)
        assert_tree_equal(wrong_shape.get_state(), before)
        handler.save(2, {"model": trained_model(), "iterator": ToyIterator()})
        it = ToyIterator(seed=5)
        it.position = 6
        with pytest.raises(ValueError, match="shape"):
            handler.restore({"iterator": it, "model": Model(features=5)})
        assert it.position == 6 and it.seed == 5, "earlier items are rolled back"
        with pytest.raises(ValueError, match="do not match"):
            handler.restore(ToyIterator(), step=1)


# --- fresh process -------------------------------------------------------------------

_RESTORE_SCRIPT = """
import sys
sys.path.insert(0, {tests_dir!r})
from test_handlers import Model, checksum
from datarax.checkpoint import OrbaxCheckpointHandler
with OrbaxCheckpointHandler({directory!r}) as handler:
    model = Model(seed=99)
    step = handler.restore(model)
print(step, checksum(model))
"""


def test_restore_in_a_fresh_process(tmp_path):
    model = trained_model()
    with OrbaxCheckpointHandler(tmp_path / "ckpt") as handler:
        handler.save(3, model)
    expected = checksum(model)
    script = _RESTORE_SCRIPT.format(tests_dir=str(Path(__file__).parent), directory=str(tmp_path / "ckpt"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["3", expected]


# --- errors -------------------------------------------------------------------------------


def test_restore_without_checkpoints(tmp_path):
    with OrbaxCheckpointHandler(tmp_path) as handler, pytest.raises(FileNotFoundError, match="no checkpoints"):
        handler.restore(ToyIterator())


def test_restore_missing_step_names_directory_and_steps(tmp_path):
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(1, ToyIterator())
        handler.save(4, ToyIterator())
        with pytest.raises(FileNotFoundError) as info:
            handler.restore(ToyIterator(), step=2)
    assert str(tmp_path) in str(info.value) and "[1, 4]" in str(info.value)


@pytest.mark.parametrize("step", [-1, 1.0, "3", True, None])
def test_invalid_steps(tmp_path, step):
    with OrbaxCheckpointHandler(tmp_path) as handler:
        with pytest.raises(ValueError, match="non-negative int"):
            handler.save(step, ToyIterator())
        if step is not None:
            with pytest.raises(ValueError, match="non-negative int"):
                handler.restore(ToyIterator(), step=step)


def test_invalid_items(tmp_path):
    with OrbaxCheckpointHandler(tmp_path) as handler:
        with pytest.raises(TypeError, match="empty"):
            handler.save(0, {})
        with pytest.raises(TypeError, match="empty"):
            handler.restore({})
        with pytest.raises(TypeError, match="'bad'.*object.*not Checkpointable"):
            handler.save(0, {"ok": ToyIterator(), "bad": object()})
        with pytest.raises(TypeError, match="'default'.*int"):
            handler.restore(3)
        with pytest.raises(TypeError, match="item name"):
            handler.save(0, {"a/b": ToyIterator()})
        with pytest.raises(TypeError, match=r"set at 'default/x'"):
            handler.save(0, Recorder({"x": {1, 2}}))
        with pytest.raises(TypeError, match="not a dict"):
            handler.save(0, Recorder([1]))
        assert handler.all_steps() == []
    with pytest.raises(ValueError, match="max_to_keep"):
        OrbaxCheckpointHandler(tmp_path, max_to_keep=0)


def test_docstring_example():
    result = doctest.testmod(handler_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --- damaged checkpoints on disk ----------------------------------------------------------------------


def _write_truncated(path: Path) -> None:
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff\xfe not json at all")


def _write_other_json(path: Path) -> None:
    path.write_text('{"format": "something else", "state": {}}')


@pytest.mark.parametrize(
    ("damage", "error", "what"),
    [
        (_write_truncated, ValueError, "truncated or not JSON.*JSONDecodeError"),
        (_write_garbage, ValueError, "truncated or not JSON.*UnicodeDecodeError"),
        (_write_other_json, ValueError, "is not a datarax.checkpoint/1 document"),
        (Path.unlink, FileNotFoundError, "is missing"),
    ],
    ids=["truncated", "garbage", "other-json", "deleted"],
)
def test_damaged_json_names_step_item_and_file_and_changes_nothing(tmp_path, damage, error, what):
    model, it = trained_model(), ToyIterator()
    next(it)
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(3, {"model": model, "iterator": it})
    json_file = tmp_path / "3" / "iterator.json" / "metadata"
    damage(json_file)
    fresh_model, fresh_it = Model(seed=9), ToyIterator(seed=4)
    before = fresh_model.get_state(), fresh_it.get_state()
    with OrbaxCheckpointHandler(tmp_path) as handler, pytest.raises(error, match=what) as info:
        handler.restore({"model": fresh_model, "iterator": fresh_it})
    message = str(info.value)
    assert "item 'iterator' of step 3" in message
    assert str(json_file) in message
    assert_tree_equal(fresh_model.get_state(), before[0])
    assert fresh_it.get_state() == before[1]
    # The undamaged item of the same step still restores on its own.
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.restore({"model": fresh_model})
    assert_tree_equal(fresh_model.get_state(), model.get_state())


@pytest.mark.parametrize("damage", ["delete-arrays", "truncate-arrays"])
def test_damaged_arrays_name_step_item_and_directory(tmp_path, damage):
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(2, {"model": trained_model()})
    array_dir = tmp_path / "2" / "model.arrays"
    if damage == "delete-arrays":
        shutil.rmtree(array_dir)
    else:
        for path in array_dir.rglob("*"):
            if path.is_file():
                path.write_bytes(path.read_bytes()[:3])
    fresh = Model(seed=9)
    before = fresh.get_state()
    with OrbaxCheckpointHandler(tmp_path) as handler, pytest.raises(ValueError) as info:
        handler.restore({"model": fresh})
    message = str(info.value)
    assert "item 'model' of step 2" in message and str(array_dir) in message and "missing or corrupt" in message
    assert_tree_equal(fresh.get_state(), before)


def test_json_and_arrays_that_disagree_are_refused(tmp_path):
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(1, Recorder({"a": np.arange(6, dtype=np.int32)}))
    json_file = tmp_path / "1" / "default.json" / "metadata"
    doc = json.loads(json_file.read_text())
    doc["state"]["a"]["shape"] = [2, 3]
    json_file.write_text(json.dumps(doc))
    target = Recorder("untouched")
    with (
        OrbaxCheckpointHandler(tmp_path) as handler,
        pytest.raises(ValueError, match=r"int32\[6\] on disk but int32\[2, 3\]"),
    ):
        handler.restore(target)
    assert target.state == "untouched"

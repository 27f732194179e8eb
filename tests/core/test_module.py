"""Tests for ``datarax.core.module``: DataraxModule and CheckpointableIteratorModule."""

from __future__ import annotations

import doctest
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import datarax.core.constructor_args as constructor_args_module
import datarax.core.module as module_module
from datarax.core.config import DataraxModuleConfig, OperatorConfig, StructuralConfig
from datarax.core.constructor_args import constructor_arguments
from datarax.core.module import CheckpointableIteratorModule, DataraxModule, IterationCount
from datarax.typing import Checkpointable, CheckpointableIterator


def _len_stats(data):
    return {"n": len(data)}


def _mean_stats(data):
    data = jnp.asarray(data)
    return {"mean": jnp.mean(data), "std": jnp.std(data)}


# --- helpers ----------------------------------------------------------------


def _to_jsonable(tree):
    if isinstance(tree, dict):
        return {str(k): _to_jsonable(v) for k, v in tree.items()}
    if isinstance(tree, jax.Array | np.ndarray):
        return np.asarray(tree).tolist()
    if isinstance(tree, list | tuple):
        return [_to_jsonable(v) for v in tree]
    return tree


def _json_round_trip(state):
    return json.loads(json.dumps(_to_jsonable(state)))


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b), (a, b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class Counting(DataraxModule):
    """Increments the counters as an operator would."""

    def __call__(self, x):
        self._applied_count[...] += 1
        self._skipped_count[...] += jnp.sum(x < 0).astype(jnp.int32)
        return x * 2


class CountingCalls(DataraxModule):
    """Counts calls only, so a vmapped call increments by an unbatched amount."""

    def __call__(self, x):
        self._applied_count[...] += 1
        return x * 2


class Extra(DataraxModule):
    """Subclass with extra required positional and keyword-only constructor arguments."""

    def __init__(self, config, size, offset=0.0, *, scale, rngs=None, name=None):
        super().__init__(config, rngs=rngs, name=name)
        self.size = size
        self.scale = scale
        self.offset = offset
        self.weight = nnx.Param(jnp.full((size,), scale, dtype=jnp.float32))

    def __call__(self, x):
        return x * self.weight[...] + self.offset


class ExtraChild(Extra):
    """Inherits the constructor of ``Extra`` unchanged."""


class Holder(DataraxModule):
    """Holds an ``nnx.List`` of submodules, giving integer path components."""

    def __init__(self, config, sizes, *, rngs=None, name=None):
        super().__init__(config, rngs=rngs, name=name)
        self.children = nnx.List([Extra(DataraxModuleConfig(), s, scale=float(s)) for s in sizes])


class Iter(CheckpointableIteratorModule):
    """A resumable iterator over ``range(n)``."""

    def __init__(self, config, n, *, rngs=None, name=None):
        super().__init__(config, rngs=rngs, name=name)
        self.n = n

    def __next__(self):
        i = self.position.get_value()
        if i >= self.n:
            raise StopIteration
        self.position.set_value(i + 1)
        self.idx.set_value(i)
        self.current.set_value(i * 10)
        return i * 10


# --- IterationCount ---------------------------------------------------------


def test_iteration_count_is_variable():
    assert issubclass(IterationCount, nnx.Variable)
    count = IterationCount(jnp.array(0))
    assert isinstance(count, nnx.Variable)
    assert int(count[...]) == 0


def test_counters_are_iteration_count_arrays():
    m = DataraxModule(DataraxModuleConfig())
    for counter in (m._applied_count, m._skipped_count):
        assert type(counter) is IterationCount
        assert isinstance(counter.get_value(), jax.Array)
        assert counter.get_value().shape == ()
        assert int(counter.get_value()) == 0


def test_counters_filterable_by_type():
    m = DataraxModule(DataraxModuleConfig())
    counts = nnx.state(m, IterationCount)
    assert set(counts.keys()) == {"_applied_count", "_skipped_count"}


# --- construction --------------------------------------------------------------


def test_attributes_defaults():
    config = DataraxModuleConfig()
    m = DataraxModule(config)
    assert m.config is config
    assert m.rngs is None
    assert m.name is None
    assert m._cache is None
    assert isinstance(m._computed_stats, nnx.Variable)
    assert m._computed_stats.get_value() is None
    assert m.get_statistics() is None
    assert m.get_operation_stats() == {"applied_count": 0, "skipped_count": 0}


def test_attributes_given():
    rngs = nnx.Rngs(0)
    m = DataraxModule(DataraxModuleConfig(cacheable=True), rngs=rngs, name="mod")
    assert m.rngs is rngs
    assert m.name == "mod"
    assert m._cache == {}
    assert isinstance(m._cache, dict)


def test_cache_iff_cacheable():
    assert DataraxModule(DataraxModuleConfig(cacheable=True))._cache == {}
    assert DataraxModule(DataraxModuleConfig(cacheable=False))._cache is None
    assert DataraxModule(StructuralConfig(cacheable=True))._cache == {}
    assert DataraxModule(OperatorConfig())._cache is None


def test_reset_cache():
    m = DataraxModule(DataraxModuleConfig(cacheable=True))
    m._cache[1] = "a"
    m._cache[2] = "b"
    m.reset_cache()
    assert m._cache == {}
    n = DataraxModule(DataraxModuleConfig())
    n.reset_cache()
    assert n._cache is None


@pytest.mark.parametrize("config", [None, {}, {"cacheable": True}, "config", 1])
def test_bad_config_type(config):
    with pytest.raises(TypeError, match="config"):
        DataraxModule(config)  # type: ignore[arg-type]


@pytest.mark.parametrize("rngs", [0, jax.random.key(0), {"default": 0}, "rngs"])
def test_bad_rngs_type(rngs):
    with pytest.raises(TypeError, match="rngs"):
        DataraxModule(DataraxModuleConfig(), rngs=rngs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [1, b"name", ["a"]])
def test_bad_name_type(name):
    with pytest.raises(TypeError, match="name"):
        DataraxModule(DataraxModuleConfig(), name=name)  # type: ignore[arg-type]


def test_is_nnx_module_and_checkpointable():
    m = DataraxModule(DataraxModuleConfig())
    assert isinstance(m, nnx.Module)
    assert isinstance(m, Checkpointable)
    it = Iter(DataraxModuleConfig(), 3)
    assert isinstance(it, Checkpointable)
    assert isinstance(it, CheckpointableIterator)


# --- statistics -------------------------------------------------------------


def test_compute_statistics_with_fn():
    m = DataraxModule(DataraxModuleConfig(batch_stats_fn=_len_stats))
    assert m.compute_statistics([1, 2, 3, 4]) == {"n": 4}
    assert m.get_statistics() == {"n": 4}
    assert m._computed_stats.get_value() == {"n": 4}
    assert m.compute_statistics([1]) == {"n": 1}
    assert m.get_statistics() == {"n": 1}


def test_compute_statistics_array_values():
    m = DataraxModule(DataraxModuleConfig(batch_stats_fn=_mean_stats))
    stats = m.compute_statistics(jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(stats["mean"], 2.0)
    np.testing.assert_allclose(stats["std"], 1.0)
    np.testing.assert_allclose(m.get_statistics()["mean"], 2.0)


def test_compute_statistics_without_fn():
    m = DataraxModule(DataraxModuleConfig())
    assert m.compute_statistics([1, 2]) is None
    assert m.get_statistics() is None
    p = DataraxModule(DataraxModuleConfig(precomputed_stats={"mean": 1.0}))
    assert p.compute_statistics([1, 2]) is None
    assert p.get_statistics() == {"mean": 1.0}


def test_compute_statistics_rejects_non_dict_result():
    m = DataraxModule(DataraxModuleConfig(batch_stats_fn=lambda data: 3))
    with pytest.raises(TypeError, match="batch_stats_fn"):
        m.compute_statistics([1])
    assert m.get_statistics() is None


def test_get_statistics_precomputed():
    m = DataraxModule(DataraxModuleConfig(precomputed_stats={"mean": 0.5, "std": 2.0}))
    stats = m.get_statistics()
    assert stats == {"mean": 0.5, "std": 2.0}
    assert isinstance(stats, dict)


def test_get_statistics_set_overrides_precomputed():
    m = DataraxModule(DataraxModuleConfig(precomputed_stats={"mean": 0.5}))
    m.set_statistics({"mean": 7.0})
    assert m.get_statistics() == {"mean": 7.0}


def test_set_statistics():
    m = DataraxModule(DataraxModuleConfig(batch_stats_fn=_len_stats))
    m.compute_statistics([1, 2])
    m.set_statistics({"n": 100, "extra": 1})
    assert m.get_statistics() == {"n": 100, "extra": 1}
    with pytest.raises(TypeError, match="dict"):
        m.set_statistics([("n", 1)])  # type: ignore[arg-type]
    assert m.get_statistics() == {"n": 100, "extra": 1}


def test_set_statistics_copies_input():
    m = DataraxModule(DataraxModuleConfig())
    stats = {"a": 1}
    m.set_statistics(stats)
    stats["a"] = 2
    assert m.get_statistics() == {"a": 1}


def test_reset_statistics_computed():
    m = DataraxModule(DataraxModuleConfig(batch_stats_fn=_len_stats))
    m.compute_statistics([1, 2])
    m.reset_statistics()
    assert m.get_statistics() is None
    assert m._computed_stats.get_value() is None
    assert m.compute_statistics([1, 2, 3]) == {"n": 3}
    assert m.get_statistics() == {"n": 3}


def test_reset_statistics_ignores_precomputed_until_set():
    m = DataraxModule(DataraxModuleConfig(precomputed_stats={"mean": 0.5}))
    m.reset_statistics()
    assert m.get_statistics() is None
    assert m.get_statistics() is None  # stays ignored
    m.set_statistics({"mean": 1.5})
    assert m.get_statistics() == {"mean": 1.5}


def test_precomputed_statistics_inside_jit():
    class Normalize(DataraxModule):
        def __call__(self, x):
            stats = self.get_statistics()
            return (x - stats["mean"]) / stats["std"]

    m = Normalize(DataraxModuleConfig(precomputed_stats={"mean": np.float32(1.0), "std": np.float32(2.0)}))
    out = nnx.jit(lambda m, x: m(x))(m, jnp.array([1.0, 3.0, 5.0]))
    np.testing.assert_allclose(out, [0.0, 1.0, 2.0])
    m.set_statistics({"mean": jnp.float32(0.0), "std": jnp.float32(1.0)})
    out = nnx.jit(lambda m, x: m(x))(m, jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(out, [1.0, 3.0])


def test_reset_statistics_inside_jit():
    m = DataraxModule(DataraxModuleConfig(precomputed_stats={"mean": 0.5}))

    @nnx.jit
    def reset(m):
        m.reset_statistics()
        return m.get_statistics() is None

    assert reset(m)
    assert m.get_statistics() is None


def test_computed_statistics_inside_jit():
    m = DataraxModule(DataraxModuleConfig(batch_stats_fn=_mean_stats))

    @nnx.jit
    def compute(m, x):
        m.compute_statistics(x)
        return m.get_statistics()["mean"]

    np.testing.assert_allclose(compute(m, jnp.array([2.0, 4.0])), 3.0)
    np.testing.assert_allclose(m.get_statistics()["mean"], 3.0)


# --- operation counters ---------------------------------------------------------


def test_operation_stats_direct():
    m = Counting(DataraxModuleConfig())
    m(jnp.array([1.0, -1.0, -2.0]))
    assert m.get_operation_stats() == {"applied_count": 1, "skipped_count": 2}
    stats = m.get_operation_stats()
    assert all(type(v) is int for v in stats.values())


def test_counters_increment_inside_jit():
    m = Counting(DataraxModuleConfig())

    @nnx.jit
    def step(m, x):
        return m(x)

    out = step(m, jnp.array([1.0, -1.0]))
    np.testing.assert_allclose(out, [2.0, -2.0])
    step(m, jnp.array([-1.0, -1.0]))
    step(m, jnp.array([1.0, 1.0]))
    assert m.get_operation_stats() == {"applied_count": 3, "skipped_count": 3}


def test_counters_increment_in_jitted_method():
    class Op(DataraxModule):
        @nnx.jit
        def apply(self, x):
            self._applied_count[...] += x.shape[0]
            return x + 1

    m = Op(DataraxModuleConfig())
    m.apply(jnp.zeros(4))
    m.apply(jnp.zeros(4))
    assert m.get_operation_stats()["applied_count"] == 8


def test_counters_broadcast_inside_vmap():
    m = CountingCalls(DataraxModuleConfig())
    state_axes = nnx.StateAxes({IterationCount: None, ...: None})

    @nnx.vmap(in_axes=(state_axes, 0))
    def apply(m, x):
        return m(x)

    out = apply(m, jnp.ones((5, 3)))
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out, 2 * np.ones((5, 3)))
    assert m.get_operation_stats()["applied_count"] == 1
    apply(m, jnp.ones((2, 3)))
    assert m.get_operation_stats()["applied_count"] == 2


def test_counters_jit_of_vmap():
    m = CountingCalls(DataraxModuleConfig())
    state_axes = nnx.StateAxes({IterationCount: None, ...: None})

    @nnx.jit
    def run(m, x):
        return nnx.vmap(lambda m, x: m(x), in_axes=(state_axes, 0))(m, x)

    run(m, jnp.ones((4, 2)))
    run(m, jnp.ones((4, 2)))
    assert m.get_operation_stats()["applied_count"] == 2
    assert isinstance(m._applied_count.get_value(), jax.Array)


def test_reset_operation_stats():
    m = Counting(DataraxModuleConfig())
    nnx.jit(lambda m, x: m(x))(m, jnp.array([-1.0]))
    assert m.get_operation_stats() == {"applied_count": 1, "skipped_count": 1}
    m.reset_operation_stats()
    assert m.get_operation_stats() == {"applied_count": 0, "skipped_count": 0}
    assert isinstance(m._applied_count.get_value(), jax.Array)
    assert isinstance(m._skipped_count.get_value(), jax.Array)
    # Still usable inside transforms after the reset.
    nnx.jit(lambda m, x: m(x))(m, jnp.array([1.0]))
    assert m.get_operation_stats() == {"applied_count": 1, "skipped_count": 0}


# --- copy -------------------------------------------------------------------


def _extra(**overrides):
    kwargs = {"scale": 2.0, "rngs": nnx.Rngs(0), "name": "extra"}
    kwargs.update(overrides)
    return Extra(DataraxModuleConfig(batch_stats_fn=_len_stats), 3, 0.5, **kwargs)


def test_copy_base_module_config_change():
    m = DataraxModule(DataraxModuleConfig(), name="a")
    new_config = DataraxModuleConfig(cacheable=True)
    c = m.copy(config=new_config)
    assert c is not m
    assert type(c) is DataraxModule
    assert c.config is new_config
    assert c._cache == {}
    assert c.name == "a"
    assert m.config.cacheable is False and m._cache is None


def test_copy_base_module_name_change():
    m = DataraxModule(DataraxModuleConfig(cacheable=True), name="a")
    c = m.copy(name="b")
    assert c.name == "b"
    assert m.name == "a"
    assert c.config is m.config
    assert c._cache == {}
    assert c._cache is not m._cache


def test_copy_subclass_preserves_constructor_arguments():
    m = _extra()
    c = m.copy()
    assert type(c) is Extra
    assert c is not m
    assert (c.size, c.offset, c.scale, c.name) == (3, 0.5, 2.0, "extra")
    assert c.config is m.config
    np.testing.assert_array_equal(c.weight[...], m.weight[...])
    np.testing.assert_allclose(c(jnp.ones(3)), m(jnp.ones(3)))


def test_copy_subclass_config_change():
    m = _extra()
    new_config = DataraxModuleConfig(cacheable=True, precomputed_stats={"mean": 1.0})
    c = m.copy(config=new_config)
    assert type(c) is Extra
    assert c.config is new_config
    assert c._cache == {}
    assert (c.size, c.offset, c.scale) == (3, 0.5, 2.0)
    assert c.get_statistics() == {"mean": 1.0}
    assert m.config.cacheable is False and m._cache is None


def test_copy_subclass_name_change():
    m = _extra()
    c = m.copy(name="renamed")
    assert c.name == "renamed"
    assert m.name == "extra"
    assert (c.size, c.offset, c.scale) == (3, 0.5, 2.0)


def test_copy_subclass_keyword_construction():
    m = Extra(config=DataraxModuleConfig(), size=2, scale=3.0, offset=1.0, name="kw")
    c = m.copy(name="kw2", config=DataraxModuleConfig(cacheable=True))
    assert (c.size, c.offset, c.scale, c.name) == (2, 1.0, 3.0, "kw2")
    assert c._cache == {}


def test_copy_inherited_constructor():
    m = ExtraChild(DataraxModuleConfig(), 4, scale=1.5)
    c = m.copy(name="child")
    assert type(c) is ExtraChild
    assert (c.size, c.offset, c.scale, c.name) == (4, 0.0, 1.5, "child")


def test_copy_rngs_keep_and_change():
    m = _extra(rngs=nnx.Rngs(0))
    m.rngs.default()  # advance the original a little
    kept = m.copy()
    assert kept.rngs is not m.rngs
    expected = jax.random.key_data(m.rngs.default())
    np.testing.assert_array_equal(jax.random.key_data(kept.rngs.default()), expected)

    new_rngs = nnx.Rngs(123)
    changed = m.copy(rngs=new_rngs)
    assert changed.rngs is new_rngs
    reference = nnx.Rngs(123)
    np.testing.assert_array_equal(jax.random.key_data(changed.rngs.default()), jax.random.key_data(reference.default()))


def test_copy_adds_rngs_to_module_without():
    m = DataraxModule(DataraxModuleConfig())
    c = m.copy(rngs=nnx.Rngs(1))
    assert isinstance(c.rngs, nnx.Rngs)
    assert m.rngs is None


def test_copy_preserves_statistics_and_counters():
    m = Counting(DataraxModuleConfig(batch_stats_fn=_len_stats))
    m.compute_statistics([1, 2, 3])
    m(jnp.array([-1.0, 1.0]))
    c = m.copy(name="c")
    assert c.get_statistics() == {"n": 3}
    assert c.get_operation_stats() == {"applied_count": 1, "skipped_count": 1}


def test_copy_preserves_statistics_for_subclass_and_reset_state():
    m = _extra()
    m.compute_statistics([1, 2, 3, 4, 5])
    assert m.copy(name="x").get_statistics() == {"n": 5}
    p = DataraxModule(DataraxModuleConfig(precomputed_stats={"mean": 1.0}))
    p.reset_statistics()
    assert p.copy().get_statistics() is None


def test_copy_preserves_parameters():
    m = _extra()
    m.weight[...] = jnp.array([1.0, 2.0, 3.0])
    c = m.copy(name="p")
    np.testing.assert_array_equal(c.weight[...], [1.0, 2.0, 3.0])


def test_copy_is_independent():
    m = _extra()
    m.compute_statistics([1, 2])
    c = m.copy(name="copy")
    before = m.get_state()
    c.weight[...] = jnp.zeros(3)
    c.set_statistics({"n": 99})
    c._applied_count[...] += 5
    c.rngs.default()
    c.rngs.default()
    if c._cache is not None:
        c._cache[0] = "x"
    _assert_tree_equal(m.get_state(), before)
    assert m.get_statistics() == {"n": 2}
    assert m.get_operation_stats()["applied_count"] == 0


def test_copy_of_merged_module():
    m = DataraxModule(DataraxModuleConfig(batch_stats_fn=_len_stats), name="m")
    m.compute_statistics([1])
    graphdef, state = nnx.split(m)
    merged = nnx.merge(graphdef, state)
    c = merged.copy(config=DataraxModuleConfig(cacheable=True), name="n")
    assert c.name == "n"
    assert c.config.cacheable is True
    assert c._cache == {}
    assert merged.name == "m"
    assert merged.config.cacheable is False


def test_copy_iterator_with_ragged_current():
    it = Iter(DataraxModuleConfig(), 5)
    it.current.set_value([np.ones(2), np.ones(3)])
    c = it.copy()
    value = c.current.get_value()
    assert len(value) == 2
    np.testing.assert_array_equal(value[1], np.ones(3))


# --- clone ------------------------------------------------------------------


def test_clone_same_state():
    m = _extra()
    m.compute_statistics([1, 2, 3])
    m._applied_count[...] += 4
    m.weight[...] = jnp.array([3.0, 2.0, 1.0])
    c = m.clone()
    assert type(c) is Extra
    assert c is not m
    _assert_tree_equal(c.get_state(), m.get_state())
    assert (c.size, c.offset, c.scale, c.name) == (3, 0.5, 2.0, "extra")
    assert c.config == m.config


def test_clone_is_independent():
    m = _extra()
    m.compute_statistics([1, 2, 3])
    before = m.get_state()
    c = m.clone()
    c.weight[...] = jnp.zeros(3)
    c.set_statistics({"n": -1})
    c.reset_operation_stats()
    c._applied_count[...] += 7
    c.rngs.default()
    _assert_tree_equal(m.get_state(), before)
    # The original keeps working independently.
    np.testing.assert_array_equal(jax.random.key_data(m.rngs.default()), jax.random.key_data(nnx.Rngs(0).default()))


def test_clone_cache_is_independent():
    m = DataraxModule(DataraxModuleConfig(cacheable=True))
    m._cache[1] = "a"
    c = m.clone()
    assert c._cache == {1: "a"}
    c._cache[2] = "b"
    m.reset_cache()
    assert c._cache == {1: "a", 2: "b"}
    assert m._cache == {}
    assert DataraxModule(DataraxModuleConfig()).clone()._cache is None


def test_clone_keeps_reset_statistics():
    m = DataraxModule(DataraxModuleConfig(precomputed_stats={"mean": 1.0}))
    assert m.clone().get_statistics() == {"mean": 1.0}
    m.reset_statistics()
    assert m.clone().get_statistics() is None


def test_clone_then_copy():
    m = _extra()
    c = m.clone().copy(name="again")
    assert type(c) is Extra and c.name == "again" and c.size == 3


# --- get_state / set_state ----------------------------------------------------


def test_get_state_contents():
    m = _extra()
    state = m.get_state()
    assert isinstance(state, dict)
    assert {"_applied_count", "_skipped_count", "_computed_stats", "weight", "rngs"} <= set(state)
    np.testing.assert_array_equal(state["weight"], [2.0, 2.0, 2.0])
    key = state["rngs"]["default"]["key"]
    assert not jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    assert key.dtype == jnp.uint32


def test_a_state_does_not_change_when_a_numpy_variable_is_updated_in_place():
    # `variable[...] += n` writes into a NumPy value; the state taken before keeps its numbers.
    m = Counting(DataraxModuleConfig())
    m._applied_count.set_value(np.array(5, dtype=np.int32))
    state = m.get_state()
    m(jnp.ones(3))
    assert m.get_operation_stats()["applied_count"] == 6
    assert int(state["_applied_count"]) == 5
    m.set_state(state)
    assert m.get_operation_stats()["applied_count"] == 5


def test_state_round_trip_including_rngs():
    source = Extra(
        DataraxModuleConfig(batch_stats_fn=_len_stats),
        3,
        scale=2.0,
        rngs=nnx.Rngs(default=1, augment=2),
    )
    source.compute_statistics([1, 2])
    source.weight[...] = jnp.array([1.0, -1.0, 0.5])
    source._applied_count[...] += 3
    source.rngs.default()
    source.rngs.augment()
    state = source.get_state()

    target = Extra(
        DataraxModuleConfig(batch_stats_fn=_len_stats),
        3,
        scale=7.0,
        rngs=nnx.Rngs(default=8, augment=9),
    )
    target.set_state(state)
    _assert_tree_equal(target.get_state(), state)
    assert target.get_statistics() == {"n": 2}
    assert target.get_operation_stats()["applied_count"] == 3
    np.testing.assert_array_equal(target.weight[...], [1.0, -1.0, 0.5])
    # The restored keys are typed keys again, and draws continue identically.
    assert jnp.issubdtype(target.rngs.default.key[...].dtype, jax.dtypes.prng_key)
    for _ in range(3):
        np.testing.assert_array_equal(
            jax.random.key_data(target.rngs.default()), jax.random.key_data(source.rngs.default())
        )
        np.testing.assert_array_equal(
            jax.random.key_data(target.rngs.augment()), jax.random.key_data(source.rngs.augment())
        )
    np.testing.assert_array_equal(
        jax.random.normal(target.rngs.default(), (4,)), jax.random.normal(source.rngs.default(), (4,))
    )


def test_set_state_accepts_typed_keys():
    source = DataraxModule(DataraxModuleConfig(), rngs=nnx.Rngs(3))
    state = nnx.to_pure_dict(nnx.state(source))
    target = DataraxModule(DataraxModuleConfig(), rngs=nnx.Rngs(4))
    target.set_state(state)
    np.testing.assert_array_equal(
        jax.random.key_data(target.rngs.default()), jax.random.key_data(source.rngs.default())
    )


def test_set_state_restores_dtype():
    m = DataraxModule(DataraxModuleConfig())
    state = m.get_state()
    state["_applied_count"] = np.int64(5)
    m.set_state(state)
    assert m._applied_count.get_value().dtype == jnp.int32
    assert m.get_operation_stats()["applied_count"] == 5


@pytest.mark.parametrize("bad", [None, [], "state", 3, [("a", 1)]])
def test_set_state_type_error_leaves_module_unchanged(bad):
    m = _extra()
    before = m.get_state()
    with pytest.raises(TypeError):
        m.set_state(bad)  # type: ignore[arg-type]
    _assert_tree_equal(m.get_state(), before)


def _modified_state(m):
    """A complete, valid state that differs from ``m``'s in every array."""
    state = m.get_state()
    state["weight"] = np.asarray(state["weight"]) + 10
    state["_applied_count"] = np.int32(42)
    state["_computed_stats"] = {"n": 1000}
    state["rngs"]["default"]["count"] = np.uint32(9)
    state["rngs"]["default"]["key"] = np.array([7, 7], dtype=np.uint32)
    return state


def test_modified_state_is_valid():
    m = _extra()
    state = _modified_state(m)
    m.set_state(state)
    assert m.get_statistics() == {"n": 1000}
    assert m.get_operation_stats()["applied_count"] == 42


def _without(state, path):
    node = state
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return state


@pytest.mark.parametrize(
    "path",
    [("weight",), ("_applied_count",), ("_computed_stats",), ("rngs", "default", "key"), ("rngs",)],
)
def test_set_state_missing_key_leaves_module_unchanged(path):
    m = _extra()
    m.compute_statistics([1])
    before = m.get_state()
    state = _without(_modified_state(m), path)
    with pytest.raises(ValueError, match="missing"):
        m.set_state(state)
    _assert_tree_equal(m.get_state(), before)


@pytest.mark.parametrize("path", [("bogus",), ("rngs", "other"), ("rngs", "default", "extra")])
def test_set_state_unexpected_key_leaves_module_unchanged(path):
    m = _extra()
    before = m.get_state()
    state = _modified_state(m)
    node = state
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = np.zeros(2)
    with pytest.raises(ValueError, match="unexpected"):
        m.set_state(state)
    _assert_tree_equal(m.get_state(), before)


def test_set_state_empty_dict_rejected():
    m = _extra()
    before = m.get_state()
    with pytest.raises(ValueError):
        m.set_state({})
    _assert_tree_equal(m.get_state(), before)


def test_set_state_shape_mismatch_leaves_module_unchanged():
    m = _extra()
    before = m.get_state()
    state = _modified_state(m)
    state["weight"] = np.zeros(4)
    with pytest.raises(ValueError, match="shape"):
        m.set_state(state)
    _assert_tree_equal(m.get_state(), before)


def test_set_state_key_shape_mismatch_leaves_module_unchanged():
    m = _extra()
    before = m.get_state()
    state = _modified_state(m)
    state["rngs"]["default"]["key"] = np.zeros(3, dtype=np.uint32)
    with pytest.raises(ValueError, match="shape"):
        m.set_state(state)
    _assert_tree_equal(m.get_state(), before)


def test_set_state_from_differently_built_module_rejected():
    small = Extra(DataraxModuleConfig(), 2, scale=1.0)
    large = Extra(DataraxModuleConfig(), 3, scale=1.0)
    before = large.get_state()
    with pytest.raises(ValueError):
        large.set_state(small.get_state())
    _assert_tree_equal(large.get_state(), before)
    with_rngs = Extra(DataraxModuleConfig(), 3, scale=1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rngs"):
        large.set_state(with_rngs.get_state())
    _assert_tree_equal(large.get_state(), before)


def test_state_json_round_trip_with_list_of_submodules():
    source = Holder(DataraxModuleConfig(), [1, 2, 3], rngs=nnx.Rngs(5))
    source.children[1].weight[...] = jnp.array([4.0, 5.0])
    source.children[2].set_statistics({"n": 3})
    source.children[0]._skipped_count[...] += 2
    source.rngs.default()
    state = source.get_state()
    assert set(state["children"]) == {"0", "1", "2"}

    restored = _json_round_trip(state)
    target = Holder(DataraxModuleConfig(), [1, 2, 3], rngs=nnx.Rngs(6))
    target.set_state(restored)
    _assert_tree_equal(target.get_state(), state)
    np.testing.assert_array_equal(target.children[1].weight[...], [4.0, 5.0])
    assert target.children[2].get_statistics() == {"n": 3}
    assert target.children[0].get_operation_stats()["skipped_count"] == 2
    np.testing.assert_array_equal(
        jax.random.key_data(target.rngs.default()), jax.random.key_data(source.rngs.default())
    )


def test_state_with_integer_keys_accepted():
    source = Holder(DataraxModuleConfig(), [1, 2])
    source.children[0].weight[...] = jnp.array([9.0])
    state = source.get_state()
    state["children"] = {int(k): v for k, v in state["children"].items()}
    target = Holder(DataraxModuleConfig(), [1, 2])
    target.set_state(state)
    np.testing.assert_array_equal(target.children[0].weight[...], [9.0])


def test_json_round_trip_list_shape_mismatch_rejected():
    source = Holder(DataraxModuleConfig(), [1, 2])
    state = _json_round_trip(source.get_state())
    target = Holder(DataraxModuleConfig(), [1, 3])
    before = target.get_state()
    with pytest.raises(ValueError, match="shape"):
        target.set_state(state)
    _assert_tree_equal(target.get_state(), before)


def test_json_round_trip_extra_submodule_rejected():
    source = Holder(DataraxModuleConfig(), [1, 2, 3])
    target = Holder(DataraxModuleConfig(), [1, 2])
    before = target.get_state()
    with pytest.raises(ValueError, match="unexpected"):
        target.set_state(_json_round_trip(source.get_state()))
    _assert_tree_equal(target.get_state(), before)


# --- rng streams ------------------------------------------------------------


def test_requires_rng_streams():
    assert DataraxModule(DataraxModuleConfig()).requires_rng_streams() is None
    assert DataraxModule(StructuralConfig()).requires_rng_streams() is None
    assert DataraxModule(OperatorConfig()).requires_rng_streams() is None
    stochastic = DataraxModule(OperatorConfig(stochastic=True, stream_name="augment"))
    assert stochastic.requires_rng_streams() == ["augment"]
    structural = DataraxModule(StructuralConfig(stochastic=True, stream_name="shuffle"))
    assert structural.requires_rng_streams() == ["shuffle"]


def test_ensure_rng_streams():
    m = DataraxModule(OperatorConfig(stochastic=True, stream_name="augment"))
    m.ensure_rng_streams(["augment"])
    m.ensure_rng_streams(["default", "augment"])
    with pytest.raises(ValueError, match="augment"):
        m.ensure_rng_streams(["default"])
    with pytest.raises(ValueError, match="augment"):
        m.ensure_rng_streams([])


def test_ensure_rng_streams_deterministic_accepts_anything():
    m = DataraxModule(OperatorConfig())
    m.ensure_rng_streams([])
    m.ensure_rng_streams(["x"])
    assert m.requires_rng_streams() is None


# --- CheckpointableIteratorModule -------------------------------------------------


def test_iterator_variables():
    it = CheckpointableIteratorModule(DataraxModuleConfig(), name="it")
    for attr in ("epoch", "position", "idx", "current"):
        assert isinstance(getattr(it, attr), nnx.Variable)
    assert it.epoch.get_value() == 0
    assert it.position.get_value() == 0
    assert it.idx.get_value() == 0
    assert it.current.get_value() is None
    assert it.name == "it"
    assert hasattr(it, "__iter__")
    sub = Iter(DataraxModuleConfig(), 2)
    assert iter(sub) is sub
    assert isinstance(it, DataraxModule)
    assert {"epoch", "position", "idx", "current"} <= set(it.get_state())


def test_iterator_reset():
    it = Iter(DataraxModuleConfig(), 3)
    assert list(it) == [0, 10, 20]
    it.epoch.set_value(2)
    assert it.position.get_value() == 3
    assert it.current.get_value() == 20
    it.reset()
    assert it.epoch.get_value() == 0
    assert it.position.get_value() == 0
    assert it.idx.get_value() == 0
    assert it.current.get_value() is None
    assert list(it) == [0, 10, 20]


def test_iterator_checkpoint_resume():
    it = Iter(DataraxModuleConfig(), 5)
    assert [next(it), next(it)] == [0, 10]
    state = _json_round_trip(it.get_state())
    rest = list(it)
    resumed = Iter(DataraxModuleConfig(), 5)
    resumed.set_state(state)
    assert resumed.position.get_value() == 2
    assert list(resumed) == rest == [20, 30, 40]


def test_iterator_copy_keeps_position_and_args():
    it = Iter(DataraxModuleConfig(), 4, name="a")
    next(it)
    c = it.copy(name="b")
    assert type(c) is Iter and c.n == 4 and c.name == "b"
    assert c.position.get_value() == 1
    next(c)
    assert it.position.get_value() == 1


def test_iterator_is_generic():
    alias = CheckpointableIteratorModule[int]
    assert alias.__origin__ is CheckpointableIteratorModule


# --- the record of constructor arguments -------------------------------------


class WithInit(DataraxModule):
    """Takes an array argument that only reaches a Variable."""

    def __init__(self, config, init, *, rngs=None, name=None):
        super().__init__(config, rngs=rngs, name=name)
        self.weight = nnx.Param(jnp.asarray(init))


def test_record_holds_the_arguments_but_config_rngs_and_name():
    assert constructor_arguments(_extra()) == {"size": 3, "offset": 0.5, "scale": 2.0}
    assert constructor_arguments(DataraxModule(DataraxModuleConfig(), name="x")) == {}
    # The outermost constructor's call is the record, not the super().__init__ calls below it.
    assert constructor_arguments(ExtraChild(DataraxModuleConfig(), 2, scale=1.0)) == {"size": 2, "scale": 1.0}


def test_record_is_not_part_of_the_module_graph_or_state():
    m = _extra()
    assert not any("constructor" in str(key) for key in vars(m))
    assert "constructor" not in repr(nnx.graphdef(m))
    assert "constructor" not in str(m.get_state())


def test_clone_shares_the_record_and_merge_has_none():
    m = _extra()
    assert constructor_arguments(m.clone()) == constructor_arguments(m)
    merged = nnx.merge(*nnx.split(m))
    assert constructor_arguments(merged) is None  # built without __init__: copy() clones instead


def test_modules_built_alike_share_a_compilation_whatever_their_array_arguments():
    traces = []

    @nnx.jit
    def bump(module):
        traces.append(1)
        module.weight[...] += 1.0

    init_a, init_b = jnp.ones(2), jnp.zeros(2)
    a, b = WithInit(DataraxModuleConfig(), init_a), WithInit(DataraxModuleConfig(), init_b)
    bump(a)
    bump(b)
    assert len(traces) == 1
    # Each module keeps its own record through the shared compilation.
    assert constructor_arguments(a)["init"] is init_a and constructor_arguments(b)["init"] is init_b
    np.testing.assert_array_equal(b.copy().weight[...], [1.0, 1.0])


def test_constructor_args_doctests():
    result = doctest.testmod(constructor_args_module)
    assert result.attempted > 0 and result.failed == 0


# --- doctests ---------------------------------------------------------------


def test_doctests():
    result = doctest.testmod(module_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0

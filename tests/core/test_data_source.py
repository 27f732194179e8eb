"""Tests for datarax.core.data_source: the source base class and the local-cache mixin."""

import doctest
import re
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import datarax.core.data_source as data_source_module
from datarax.core.config import StructuralConfig
from datarax.core.data_source import DataSourceModule, LocalFilesOnlyMixin, check_source_traceable

# --- LocalFilesOnlyMixin -------------------------------------------------------------------------


class _CachedSource(LocalFilesOnlyMixin):
    def __init__(self, local_files_only):
        self.local_files_only = local_files_only


@pytest.fixture
def cache(tmp_path):
    """A cache made of one real file and one real directory."""
    file = tmp_path / "train.arrayrecord"
    file.write_bytes(b"records")
    directory = tmp_path / "shards"
    directory.mkdir()
    return file, directory


@pytest.mark.parametrize("local_files_only", [False, True])
def test_check_local_cache_all_present_is_true(cache, local_files_only):
    file, directory = cache
    source = _CachedSource(local_files_only)
    assert source._check_local_cache([file, directory], dataset_name="mnist") is True
    # str paths are accepted as well as Path objects.
    assert source._check_local_cache([str(file), str(directory)], dataset_name="mnist") is True


def test_check_local_cache_empty_path_list_is_true():
    assert _CachedSource(True)._check_local_cache([], dataset_name="mnist") is True


def test_check_local_cache_missing_without_local_only_is_false(cache, tmp_path):
    file, _ = cache
    source = _CachedSource(False)
    assert source._check_local_cache([file, tmp_path / "missing.bin"], dataset_name="mnist") is False


def test_check_local_cache_missing_with_local_only_names_dataset_and_every_path(cache, tmp_path):
    file, directory = cache
    missing_file = tmp_path / "labels.npy"
    missing_dir = tmp_path / "not_downloaded"
    source = _CachedSource(True)
    with pytest.raises(FileNotFoundError) as info:
        source._check_local_cache([file, missing_file, directory, missing_dir], dataset_name="my_dataset")
    message = str(info.value)
    assert "my_dataset" in message
    assert str(missing_file) in message
    assert str(missing_dir) in message
    assert "local_files_only" in message
    # Present paths are not reported as missing.
    assert str(file) not in message
    assert str(directory) not in message


def test_check_local_cache_without_attribute_defaults_to_downloadable(tmp_path):
    class NoFlag(LocalFilesOnlyMixin):
        pass

    assert NoFlag()._check_local_cache([tmp_path / "absent"], dataset_name="x") is False


def test_check_local_cache_signature_is_paths_then_keyword_dataset_name(cache):
    file, _ = cache
    source = _CachedSource(True)
    # dataset_name is keyword-only, as in datarax 0.1.x: the old (name, paths) order is refused.
    with pytest.raises(TypeError):
        source._check_local_cache("mnist", [file])
    with pytest.raises(TypeError):
        source._check_local_cache([file])


@pytest.mark.parametrize(
    ("paths", "dataset_name", "what"),
    [
        ("/data/train.npy", "mnist", "expected_paths must be a list of paths, got '/data/train.npy'"),
        (Path("/data"), "mnist", "expected_paths must be a list of paths"),
        (["/data/a.npy", 3], "mnist", "expected_paths must hold str or os.PathLike paths, got 3"),
        (["/data/a.npy"], "", "dataset_name must be a non-empty str, got ''"),
        (["/data/a.npy"], None, "dataset_name must be a non-empty str, got None"),
    ],
)
def test_check_local_cache_rejects_bad_arguments(paths, dataset_name, what):
    # A single path string would otherwise be iterated character by character.
    with pytest.raises(TypeError, match=re.escape(f"_CachedSource._check_local_cache: {what}")):
        _CachedSource(True)._check_local_cache(paths, dataset_name=dataset_name)


def test_check_local_cache_accepts_any_iterable_of_paths(cache):
    file, directory = cache
    assert _CachedSource(True)._check_local_cache((p for p in (file, directory)), dataset_name="mnist") is True


def test_mixin_composes_with_data_source_module(tmp_path):
    class CachedSource(LocalFilesOnlyMixin, DataSourceModule):
        def __init__(self, local_files_only):
            super().__init__(StructuralConfig())
            self.local_files_only = local_files_only

    with pytest.raises(FileNotFoundError, match="cifar"):
        CachedSource(True)._check_local_cache([tmp_path / "absent"], dataset_name="cifar")
    assert CachedSource(False)._check_local_cache([tmp_path / "absent"], dataset_name="cifar") is False


# --- DataSourceModule base -----------------------------------------------------------------------


def test_base_get_batch_at_raises_not_implemented():
    source = DataSourceModule(StructuralConfig())
    with pytest.raises(NotImplementedError, match="DataSourceModule"):
        source.get_batch_at(0, 4)
    with pytest.raises(NotImplementedError):
        source.get_batch_at(0, 4, key=jax.random.key(0))


def test_base_element_spec_raises_not_implemented():
    with pytest.raises(NotImplementedError, match="element_spec"):
        DataSourceModule(StructuralConfig()).element_spec()


def test_subclass_name_appears_in_not_implemented_messages():
    class Forward(DataSourceModule):
        pass

    with pytest.raises(NotImplementedError, match="Forward"):
        Forward(StructuralConfig()).get_batch_at(0, 1)
    with pytest.raises(NotImplementedError, match="Forward"):
        Forward(StructuralConfig()).element_spec()


def test_stochastic_source_without_rngs_raises_value_error():
    config = StructuralConfig(stochastic=True, stream_name="shuffle")
    with pytest.raises(ValueError, match="rngs"):
        DataSourceModule(config)


def test_stochastic_source_with_rngs_is_built():
    config = StructuralConfig(stochastic=True, stream_name="shuffle")
    source = DataSourceModule(config, rngs=nnx.Rngs(shuffle=0))
    assert source.stochastic is True
    assert source.stream_name == "shuffle"


def test_non_structural_config_is_a_type_error():
    from datarax.core.config import OperatorConfig

    with pytest.raises(TypeError, match="StructuralConfig"):
        DataSourceModule(OperatorConfig())


# The example of the data source seed page, written as it is there.
@dataclass(frozen=True)
class MyDataSourceConfig(StructuralConfig):
    required_param: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.required_param is None:
            raise ValueError("required_param is required")


class MyDataSource(DataSourceModule):
    data: list[dict]

    def __init__(
        self,
        config: MyDataSourceConfig,
        data: list[dict],
        *,
        rngs: nnx.Rngs | None = None,
        name: str | None = None,
    ):
        super().__init__(config, rngs=rngs, name=name)
        self.data = nnx.data(data)  # Mark as pytree data, not parameters.

    def element_spec(self):
        return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in self.data[0].items()}

    def get_batch_at(self, start, size, key=None):
        rows = [self.data[(int(start) + i) % len(self.data)] for i in range(size)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *rows)


def _records(n):
    return [{"x": jnp.full((2,), i, jnp.float32), "y": jnp.int32(i)} for i in range(n)]


def test_seed_example_config_requires_param():
    with pytest.raises(ValueError, match="required_param is required"):
        MyDataSourceConfig()
    assert MyDataSourceConfig(required_param=3).required_param == 3


def test_seed_example_config_still_runs_structural_validation():
    with pytest.raises(ValueError, match="stream_name"):
        MyDataSourceConfig(required_param=1, stochastic=True)


def test_seed_example_source_works():
    source = MyDataSource(MyDataSourceConfig(required_param=1), _records(5), name="mine")
    assert source.name == "mine"
    assert source.element_spec() == {
        "x": jax.ShapeDtypeStruct((2,), jnp.float32),
        "y": jax.ShapeDtypeStruct((), jnp.int32),
    }
    batch = source.get_batch_at(3, 4)
    np.testing.assert_array_equal(batch["y"], [3, 4, 0, 1])
    np.testing.assert_array_equal(batch["x"][:, 0], [3, 4, 0, 1])


def test_seed_example_data_is_pytree_data_not_params_or_state():
    source = MyDataSource(MyDataSourceConfig(required_param=1), _records(3))
    # nnx.data marks the records as data: NNX must not turn them into parameters...
    assert not jax.tree.leaves(nnx.state(source, nnx.Param))
    # ...and they stay out of the checkpoint state, which holds only small values.
    state = source.get_state()
    assert "data" not in state
    assert all(np.size(leaf) <= 1 for leaf in jax.tree.leaves(state))


# --- the default get_records ---------------------------------------------------------------------


class Sliced(DataSourceModule):
    """A source whose get_batch_at uses Python slicing: fine on the host, not traceable."""

    def __init__(self, n=10):
        super().__init__(StructuralConfig())
        self.values = nnx.data(jnp.arange(n, dtype=jnp.int32) * 10)

    def __len__(self):
        return self.values.shape[0]

    def element_spec(self):
        return {"v": jax.ShapeDtypeStruct((), jnp.int32)}

    def get_batch_at(self, start, size, key=None):
        return {"v": self.values[start : start + size]}


class DynamicSliced(Sliced):
    """The same records through jax.lax.dynamic_slice_in_dim, with a nested leaf."""

    def element_spec(self):
        return {"v": jax.ShapeDtypeStruct((), jnp.int32), "pair": (jax.ShapeDtypeStruct((2,), jnp.int32),)}

    def get_batch_at(self, start, size, key=None):
        values = jax.lax.dynamic_slice_in_dim(self.values, start, size)
        return {"v": values, "pair": (jnp.stack([values, values + 1], axis=1),)}


def test_default_get_records_is_traceable_through_get_batch_at():
    source = DynamicSliced()
    gather = jax.jit(source.get_records)
    out = gather(jnp.array([7, 0, 7, 3]))
    np.testing.assert_array_equal(out["v"], [70, 0, 70, 30])
    np.testing.assert_array_equal(out["pair"][0], [[70, 71], [0, 1], [70, 71], [30, 31]])
    # Traced indices computed in the same program, as the pipeline's step does.
    permuted = jax.jit(lambda key: source.get_records(jax.random.permutation(key, 10)[:4]))(jax.random.key(0))
    expected = np.asarray(jax.random.permutation(jax.random.key(0), 10)[:4]) * 10
    np.testing.assert_array_equal(permuted["v"], expected)


def test_default_get_records_eager_matches_jit_and_accepts_lists_and_numpy():
    source = DynamicSliced()
    for indices in ([2, 9], np.array([2, 9], np.int64), jnp.array([2, 9])):
        np.testing.assert_array_equal(source.get_records(indices)["v"], [20, 90])


def test_default_get_records_falls_back_to_the_host_for_concrete_indices():
    # Python slicing cannot be traced, but concrete indices are served one call at a time.
    out = Sliced().get_records(np.array([4, 1]))
    np.testing.assert_array_equal(out["v"], [40, 10])
    source = MyDataSource(MyDataSourceConfig(required_param=1), _records(4))  # int(start): host only
    np.testing.assert_array_equal(source.get_records(jnp.array([2, 1]))["y"], [2, 1])
    np.testing.assert_array_equal(source.get_records([3])["y"], [3])


def test_default_get_records_with_traced_indices_and_a_host_only_source_raises():
    with pytest.raises(IndexError, match="static"):
        jax.jit(Sliced().get_records)(jnp.array([1, 2]))


@pytest.mark.parametrize("source", [DynamicSliced(), Sliced()], ids=["traceable", "host-only"])
def test_default_get_records_with_no_indices_returns_empty_leaves(source):
    out = source.get_records([])
    assert out["v"].shape == (0,) and out["v"].dtype == jnp.int32


@pytest.mark.parametrize(
    ("indices", "what"),
    [(np.zeros((2, 2), np.int32), "int32[2, 2]"), (np.array([0.0, 1.0]), "float64[2]"), (3, "int64[]")],
)
def test_default_get_records_rejects_non_vectors(indices, what):
    with pytest.raises(
        TypeError, match=re.escape(f"DynamicSliced.get_records: indices must be a 1-D integer array, got {what}")
    ):
        DynamicSliced().get_records(indices)


def test_default_get_records_refuses_a_get_batch_at_that_ignores_size():
    class IgnoresSize(Sliced):
        def get_batch_at(self, start, size, key=None):
            return {"v": jax.lax.dynamic_slice_in_dim(self.values, start, 2)}

    # Traced, and on the host (the fallback must not paper over it by concatenating).
    for indices in (jnp.array([1, 2]), np.array([1, 2])):
        with pytest.raises(ValueError, match=r"IgnoresSize.get_batch_at\(start, 1\) must return .* dimension of 1"):
            IgnoresSize().get_records(indices)
    with pytest.raises(ValueError, match=r"IgnoresSize.get_batch_at\(start, 1\) must return .* dimension of 1"):
        jax.jit(IgnoresSize().get_records)(jnp.array([1, 2]))


def test_default_get_records_on_base_class_raises_not_implemented():
    with pytest.raises(NotImplementedError):
        DataSourceModule(StructuralConfig()).get_records(np.array([0, 1]))


# --- check_source_traceable ---------------------------------------------------------------------


def _module_recipe():
    """The Squares class of this module's docstring, executed exactly as written there."""
    namespace = {}
    for example in doctest.DocTestParser().get_examples(data_source_module.__doc__):
        exec(example.source, namespace)  # noqa: S102 - our own docstring
    return namespace["Squares"]


def test_docstring_recipe_runs_in_a_pipeline():
    from datarax import Pipeline

    squares = _module_recipe()
    batches = list(Pipeline(source=squares(10), batch_size=4))
    assert [b["x"].tolist() for b in batches] == [[0, 1, 4, 9], [16, 25, 36, 49], [64, 81, 81, 81]]
    assert [b["valid_mask"].tolist() for b in batches][-1] == [True, True, False, False]
    shuffled = Pipeline(source=squares(10), batch_size=4, shuffle=True, rngs=nnx.Rngs(0), num_epochs=2)
    epochs = [b["x"][b["valid_mask"]].tolist() for b in shuffled]
    assert sorted(sum(epochs[:3], [])) == sorted(sum(epochs[3:], [])) == [i * i for i in range(10)]
    check_source_traceable(squares(10), batch_size=4)


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_traceable_sources_pass(batch_size):
    check_source_traceable(DynamicSliced(), batch_size)
    check_source_traceable(DynamicSliced(), np.int64(batch_size))


def test_untraceable_get_batch_at_names_the_class_the_methods_and_the_cause():
    with pytest.raises(TypeError) as info:
        check_source_traceable(Sliced(), batch_size=8)
    message = str(info.value)
    assert message.startswith("Sliced cannot be gathered inside the pipeline's compiled step")
    assert "Sliced.get_records(indices)" in message and "int32[8]" in message
    assert "get_batch_at(start, size)" in message and "dynamic_slice_in_dim" in message
    assert "Original error: IndexError: Slice entries must be static" in message
    assert isinstance(info.value.__cause__, IndexError)


def test_seed_example_source_is_host_only_and_refused_with_the_recipe():
    source = MyDataSource(MyDataSourceConfig(required_param=1), _records(5))
    with pytest.raises(TypeError, match=r"MyDataSource cannot be gathered.*ConcretizationTypeError") as info:
        check_source_traceable(source, batch_size=2)
    assert isinstance(info.value.__cause__, jax.errors.ConcretizationTypeError)


def test_source_with_neither_method_is_refused():
    class Nothing(DataSourceModule):
        def element_spec(self):
            return {}

    with pytest.raises(TypeError, match=r"Nothing cannot be gathered.*NotImplementedError: Nothing does not support"):
        check_source_traceable(Nothing(StructuralConfig()), batch_size=2)


def test_overridden_get_records_needs_no_get_batch_at():
    class Taken(Sliced):
        get_batch_at = DataSourceModule.get_batch_at

        def get_records(self, indices):
            return {"v": jnp.take(self.values, indices, axis=0)}

    check_source_traceable(Taken(), batch_size=3)


def test_get_records_that_disagrees_with_element_spec_is_refused():
    class WrongDtype(DynamicSliced):
        def element_spec(self):
            return {"v": jax.ShapeDtypeStruct((), jnp.float32), "pair": (jax.ShapeDtypeStruct((2,), jnp.int32),)}

    class WrongKeys(DynamicSliced):
        def element_spec(self):
            return {"v": jax.ShapeDtypeStruct((), jnp.int32)}

    with pytest.raises(
        ValueError,
        match=re.escape(
            "WrongDtype.get_records returns int32[4] at ['v'] but element_spec() batched to 4 is float32[4]"
        ),
    ):
        check_source_traceable(WrongDtype(), batch_size=4)
    with pytest.raises(ValueError, match="WrongKeys.get_records returns the structure"):
        check_source_traceable(WrongKeys(), batch_size=4)


@pytest.mark.parametrize("batch_size", [0, -1, True, 2.0, None])
def test_bad_batch_size_is_refused(batch_size):
    with pytest.raises(
        ValueError, match=f"check_source_traceable: batch_size must be a positive int, got {batch_size!r}"
    ):
        check_source_traceable(DynamicSliced(), batch_size)


def test_non_source_is_refused():
    with pytest.raises(TypeError, match="source must be a DataSourceModule, got dict"):
        check_source_traceable({"x": np.arange(3)}, 2)


def test_doctests():
    result = doctest.testmod(data_source_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0

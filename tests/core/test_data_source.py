"""Tests for datarax.core.data_source: the source base class and the local-cache mixin."""

import doctest
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import datarax.core.data_source as data_source_module
from datarax.core.config import StructuralConfig
from datarax.core.data_source import DataSourceModule, LocalFilesOnlyMixin

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
    assert source._check_local_cache("mnist", [file, directory]) is True
    # str paths are accepted as well as Path objects.
    assert source._check_local_cache("mnist", [str(file), str(directory)]) is True


def test_check_local_cache_empty_path_list_is_true():
    assert _CachedSource(True)._check_local_cache("mnist", []) is True


def test_check_local_cache_missing_without_local_only_is_false(cache, tmp_path):
    file, _ = cache
    source = _CachedSource(False)
    assert source._check_local_cache("mnist", [file, tmp_path / "missing.bin"]) is False


def test_check_local_cache_missing_with_local_only_names_dataset_and_every_path(cache, tmp_path):
    file, directory = cache
    missing_file = tmp_path / "labels.npy"
    missing_dir = tmp_path / "not_downloaded"
    source = _CachedSource(True)
    with pytest.raises(FileNotFoundError) as info:
        source._check_local_cache("my_dataset", [file, missing_file, directory, missing_dir])
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

    assert NoFlag()._check_local_cache("x", [tmp_path / "absent"]) is False


def test_mixin_composes_with_data_source_module(tmp_path):
    class CachedSource(LocalFilesOnlyMixin, DataSourceModule):
        def __init__(self, local_files_only):
            super().__init__(StructuralConfig())
            self.local_files_only = local_files_only

    with pytest.raises(FileNotFoundError, match="cifar"):
        CachedSource(True)._check_local_cache("cifar", [tmp_path / "absent"])
    assert CachedSource(False)._check_local_cache("cifar", [tmp_path / "absent"]) is False


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


def test_default_get_records_stacks_get_batch_at_on_the_host():
    calls = []

    class OnlyBatchAt(DataSourceModule):
        def __init__(self):
            super().__init__(StructuralConfig())
            self.values = nnx.data(jnp.arange(10, dtype=jnp.int32) * 10)

        def get_batch_at(self, start, size, key=None):
            calls.append((start, size))
            return {
                "v": jax.lax.dynamic_slice_in_dim(self.values, start, size),
                "pair": (jnp.full((size, 2), start, jnp.int32),),
            }

    source = OnlyBatchAt()
    out = source.get_records(np.array([7, 0, 7, 3]))
    np.testing.assert_array_equal(out["v"], [70, 0, 70, 30])
    assert out["pair"][0].shape == (4, 2)
    np.testing.assert_array_equal(out["pair"][0][:, 1], [7, 0, 7, 3])
    # One size-1 call per index, each start a Python int.
    assert calls == [(7, 1), (0, 1), (7, 1), (3, 1)]
    assert all(type(start) is int for start, _ in calls)


def test_default_get_records_accepts_jax_and_list_indices():
    source = MyDataSource(MyDataSourceConfig(required_param=1), _records(4))
    np.testing.assert_array_equal(source.get_records(jnp.array([2, 1]))["y"], [2, 1])
    np.testing.assert_array_equal(source.get_records([3])["y"], [3])


def test_default_get_records_on_base_class_raises_not_implemented():
    with pytest.raises(NotImplementedError):
        DataSourceModule(StructuralConfig()).get_records(np.array([0, 1]))


def test_doctests():
    result = doctest.testmod(data_source_module)
    assert result.attempted > 0
    assert result.failed == 0

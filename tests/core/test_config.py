"""Tests for ``datarax.core.config``: defaults, validation, immutability, hashing."""

from __future__ import annotations

import dataclasses
import doctest
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import datarax.core.config as config_module
from datarax.core.config import (
    DataraxModuleConfig,
    FrozenInstanceError,
    FrozenStats,
    OperatorConfig,
    StructuralConfig,
)

STREAM_CONFIGS = [StructuralConfig, OperatorConfig]


def _stats_fn(data):
    return {"n": len(data)}


# --- DataraxModuleConfig -----------------------------------------------------


def test_defaults():
    config = DataraxModuleConfig()
    assert config.cacheable is False
    assert config.batch_stats_fn is None
    assert config.precomputed_stats is None


def test_field_names():
    names = [f.name for f in dataclasses.fields(DataraxModuleConfig)]
    assert names == ["cacheable", "batch_stats_fn", "precomputed_stats"]


def test_valid_values_are_kept():
    config = DataraxModuleConfig(cacheable=True, batch_stats_fn=_stats_fn)
    assert config.cacheable is True
    assert config.batch_stats_fn is _stats_fn
    stats = DataraxModuleConfig(precomputed_stats={"mean": 0.5}).precomputed_stats
    assert isinstance(stats, Mapping)
    assert dict(stats) == {"mean": 0.5}


def test_batch_stats_fn_and_precomputed_stats_are_exclusive():
    with pytest.raises(ValueError) as info:
        DataraxModuleConfig(batch_stats_fn=_stats_fn, precomputed_stats={"mean": 0.0})
    message = str(info.value)
    assert "batch_stats_fn" in message
    assert "precomputed_stats" in message


def test_exclusivity_checked_in_subclasses_too():
    for cls in STREAM_CONFIGS:
        with pytest.raises(ValueError, match="batch_stats_fn"):
            cls(batch_stats_fn=_stats_fn, precomputed_stats={"m": 1})


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"cacheable": "yes"}, "cacheable"),
        ({"cacheable": 1}, "cacheable"),
        ({"cacheable": None}, "cacheable"),
        ({"batch_stats_fn": 5}, "batch_stats_fn"),
        ({"batch_stats_fn": "mean"}, "batch_stats_fn"),
        ({"precomputed_stats": [("mean", 1.0)]}, "precomputed_stats"),
        ({"precomputed_stats": 3.0}, "precomputed_stats"),
    ],
)
def test_bad_types_raise_value_error(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DataraxModuleConfig(**kwargs)


def test_frozen():
    config = DataraxModuleConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.cacheable = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.precomputed_stats = {}  # type: ignore[misc]
    assert config.cacheable is False


@pytest.mark.parametrize("cls", [DataraxModuleConfig, StructuralConfig, OperatorConfig])
def test_frozen_instance_error_is_what_assignment_raises(cls):
    assert FrozenInstanceError is dataclasses.FrozenInstanceError
    assert issubclass(FrozenInstanceError, AttributeError)
    config = cls()
    with pytest.raises(FrozenInstanceError, match="cacheable"):
        config.cacheable = True  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del config.cacheable  # type: ignore[misc]
    assert config.cacheable is False
    assert "FrozenInstanceError" in config_module.__all__


def test_numpy_bools_are_accepted_and_stored_as_python_bools():
    config = StructuralConfig(cacheable=np.bool_(True), stochastic=np.bool_(True), stream_name="s")
    assert config.cacheable is True and config.stochastic is True
    assert hash(config) == hash(StructuralConfig(cacheable=True, stochastic=True, stream_name="s"))


def test_precomputed_stats_is_read_only_and_detached():
    source = {"mean": np.zeros(3)}
    config = DataraxModuleConfig(precomputed_stats=source)
    source["std"] = np.ones(3)
    assert set(config.precomputed_stats) == {"mean"}
    with pytest.raises(TypeError):
        config.precomputed_stats["mean"] = 1.0  # type: ignore[index]


def test_hashable_with_numpy_array_stats():
    config = DataraxModuleConfig(precomputed_stats={"mean": np.arange(3.0), "std": np.ones(3)})
    assert isinstance(hash(config), int)
    assert hash(config) == hash(config)
    # Usable as a dict key / set member, as jit's static-argument cache needs.
    assert {config: 1}[config] == 1


def test_equal_configs_hash_equal():
    a = DataraxModuleConfig(precomputed_stats={"mean": np.arange(3.0), "std": np.ones(3)})
    b = DataraxModuleConfig(precomputed_stats={"std": np.ones(3), "mean": np.arange(3.0)})
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_equal_configs_with_jax_arrays():
    a = DataraxModuleConfig(precomputed_stats={"mean": jnp.arange(3.0)})
    b = DataraxModuleConfig(precomputed_stats={"mean": np.arange(3.0)})
    assert a == b and hash(a) == hash(b)


def test_configs_with_different_values_differ():
    a = DataraxModuleConfig(precomputed_stats={"mean": np.arange(3.0)})
    b = DataraxModuleConfig(precomputed_stats={"mean": np.arange(3.0) + 1})
    c = DataraxModuleConfig(precomputed_stats={"mean": np.arange(4.0)})
    d = DataraxModuleConfig(precomputed_stats={"std": np.arange(3.0)})
    assert a != b
    assert a != c
    assert a != d
    assert a != DataraxModuleConfig()
    assert DataraxModuleConfig() == DataraxModuleConfig()
    assert hash(DataraxModuleConfig()) == hash(DataraxModuleConfig())
    assert DataraxModuleConfig(cacheable=True) != DataraxModuleConfig()


def test_config_as_jit_static_argument():
    config = DataraxModuleConfig(precomputed_stats={"mean": np.full((3,), 2.0)})
    traces = []

    def f(x, config):
        traces.append(1)
        return x - jnp.asarray(config.precomputed_stats["mean"])

    jitted = jax.jit(f, static_argnums=1)
    out = jitted(jnp.ones(3), config)
    np.testing.assert_allclose(out, -np.ones(3))
    equal = DataraxModuleConfig(precomputed_stats={"mean": np.full((3,), 2.0)})
    jitted(jnp.ones(3), equal)
    assert len(traces) == 1


def test_frozen_stats_mapping():
    stats = FrozenStats({"a": 1, "b": np.ones(2)})
    assert len(stats) == 2
    assert sorted(stats) == ["a", "b"]
    assert stats["a"] == 1
    assert "a" in stats and "c" not in stats
    assert stats == {"a": 1, "b": np.ones(2)}
    assert stats != {"a": 1}
    assert stats != [("a", 1)]
    assert "FrozenStats" in repr(stats)
    assert hash(stats) == hash(FrozenStats({"b": np.ones(2), "a": 1}))


def test_frozen_stats_passed_through_unchanged():
    stats = FrozenStats({"a": 1})
    assert DataraxModuleConfig(precomputed_stats=stats).precomputed_stats is stats


def test_replace_revalidates():
    config = DataraxModuleConfig(batch_stats_fn=_stats_fn)
    with pytest.raises(ValueError, match="precomputed_stats"):
        dataclasses.replace(config, precomputed_stats={"m": 1})
    assert dataclasses.replace(config, cacheable=True).cacheable is True


# --- StructuralConfig / OperatorConfig -----------------------------------------


@pytest.mark.parametrize("cls", STREAM_CONFIGS)
def test_stream_config_defaults(cls):
    config = cls()
    assert config.stochastic is False
    assert config.stream_name is None
    assert config.cacheable is False
    assert isinstance(config, DataraxModuleConfig)


@pytest.mark.parametrize("cls", STREAM_CONFIGS)
def test_stochastic_with_stream(cls):
    config = cls(stochastic=True, stream_name="augment")
    assert config.stochastic is True
    assert config.stream_name == "augment"


@pytest.mark.parametrize("cls", STREAM_CONFIGS)
def test_stochastic_without_stream_name(cls):
    with pytest.raises(ValueError, match="stream_name"):
        cls(stochastic=True)


@pytest.mark.parametrize("cls", STREAM_CONFIGS)
def test_deterministic_with_stream_name(cls):
    with pytest.raises(ValueError, match="stream_name"):
        cls(stochastic=False, stream_name="augment")


@pytest.mark.parametrize("cls", STREAM_CONFIGS)
@pytest.mark.parametrize("stochastic", [True, False])
def test_empty_stream_name_rejected(cls, stochastic):
    with pytest.raises(ValueError, match="stream_name"):
        cls(stochastic=stochastic, stream_name="")


@pytest.mark.parametrize("cls", STREAM_CONFIGS)
def test_non_string_stream_name_rejected(cls):
    with pytest.raises(ValueError, match="stream_name"):
        cls(stochastic=True, stream_name=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", STREAM_CONFIGS)
@pytest.mark.parametrize("value", ["true", 1, None])
def test_non_bool_stochastic_rejected(cls, value):
    with pytest.raises(ValueError, match="stochastic"):
        cls(stochastic=value, stream_name="augment")  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", STREAM_CONFIGS)
def test_error_message_names_the_class(cls):
    with pytest.raises(ValueError, match=cls.__name__):
        cls(stochastic=True)


@pytest.mark.parametrize("cls", STREAM_CONFIGS)
def test_stream_configs_frozen_and_hashable(cls):
    config = cls(stochastic=True, stream_name="s", precomputed_stats={"m": np.ones(2)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.stochastic = False  # type: ignore[misc]
    same = cls(stochastic=True, stream_name="s", precomputed_stats={"m": np.ones(2)})
    assert config == same and hash(config) == hash(same)
    assert config != cls(stochastic=True, stream_name="t", precomputed_stats={"m": np.ones(2)})


def test_structural_and_operator_configs_are_distinct():
    assert not issubclass(OperatorConfig, StructuralConfig)
    assert not issubclass(StructuralConfig, OperatorConfig)
    assert StructuralConfig() != OperatorConfig()


# --- subclassing -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MyDataSourceConfig(StructuralConfig):
    required_param: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.required_param is None:
            raise ValueError("required_param is required")


def test_subclass_valid():
    config = MyDataSourceConfig(required_param=3)
    assert config.required_param == 3
    assert config.stochastic is False and config.stream_name is None
    config = MyDataSourceConfig(required_param=1, stochastic=True, stream_name="shuffle")
    assert config.stream_name == "shuffle"
    assert isinstance(config, StructuralConfig)


def test_subclass_own_validation_runs():
    with pytest.raises(ValueError, match="required_param"):
        MyDataSourceConfig()


def test_subclass_parent_stream_validation_runs():
    with pytest.raises(ValueError, match="MyDataSourceConfig.*stream_name"):
        MyDataSourceConfig(required_param=1, stochastic=True)
    with pytest.raises(ValueError, match="stream_name"):
        MyDataSourceConfig(required_param=1, stream_name="x")


def test_subclass_base_validation_runs():
    with pytest.raises(ValueError, match="batch_stats_fn"):
        MyDataSourceConfig(required_param=1, batch_stats_fn=_stats_fn, precomputed_stats={"a": 1})
    with pytest.raises(ValueError, match="cacheable"):
        MyDataSourceConfig(required_param=1, cacheable="no")


def test_subclass_is_frozen_and_hashable():
    config = MyDataSourceConfig(required_param=2, precomputed_stats={"m": np.ones(2)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.required_param = 3  # type: ignore[misc]
    assert isinstance(config.precomputed_stats, FrozenStats)
    assert hash(config) == hash(MyDataSourceConfig(required_param=2, precomputed_stats={"m": np.ones(2)}))
    assert config != MyDataSourceConfig(required_param=3, precomputed_stats={"m": np.ones(2)})


def test_operator_subclass():
    @dataclasses.dataclass(frozen=True)
    class ScaleConfig(OperatorConfig):
        factor: float = 1.0

        def __post_init__(self):
            super().__post_init__()
            if self.factor <= 0:
                raise ValueError(f"factor must be positive, got {self.factor}")

    assert ScaleConfig(factor=2.0).factor == 2.0
    with pytest.raises(ValueError, match="factor"):
        ScaleConfig(factor=-1.0)
    with pytest.raises(ValueError, match="ScaleConfig.*stream_name"):
        ScaleConfig(factor=2.0, stochastic=True)


# --- doctests ---------------------------------------------------------------


def test_doctests():
    result = doctest.testmod(config_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0

"""Tests for ``datarax.core.structural.StructuralModule``."""

from __future__ import annotations

import dataclasses
import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import datarax.core.structural as structural_module
from datarax.core.config import DataraxModuleConfig, OperatorConfig, StructuralConfig
from datarax.core.module import DataraxModule
from datarax.core.structural import StructuralModule


class Recorder(StructuralModule):
    """Returns exactly what ``process`` received."""

    def process(self, input, *args, **kwargs):  # noqa: A002
        return ("processed", input, args, kwargs)


class Shuffle(StructuralModule):
    """A stochastic structural module drawing from its configured stream."""

    def process(self, n):
        key = self.rngs[self.stream_name]()
        return jax.random.permutation(key, n)


@dataclasses.dataclass(frozen=True)
class WindowConfig(StructuralConfig):
    size: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.size is None or self.size <= 0:
            raise ValueError(f"size must be a positive int, got {self.size!r}")


class Window(StructuralModule):
    def __init__(self, config: WindowConfig, *, rngs=None, name=None):
        super().__init__(config, rngs=rngs, name=name)

    def process(self, items):
        return [items[i : i + self.config.size] for i in range(0, len(items), self.config.size)]


# --- base behaviour -----------------------------------------------------------


def test_is_datarax_module():
    m = StructuralModule(StructuralConfig())
    assert isinstance(m, DataraxModule)
    assert isinstance(m, nnx.Module)


def test_base_process_not_implemented():
    m = StructuralModule(StructuralConfig())
    with pytest.raises(NotImplementedError):
        m.process([1, 2, 3])
    with pytest.raises(NotImplementedError):
        m([1, 2, 3])


def test_call_delegates_to_process_with_args_and_kwargs():
    m = Recorder(StructuralConfig())
    assert m([1, 2]) == ("processed", [1, 2], (), {})
    assert m([1, 2], 3, 4) == ("processed", [1, 2], (3, 4), {})
    assert m([1, 2], 3, flag=True) == ("processed", [1, 2], (3,), {"flag": True})
    assert m(input=5, extra="x") == ("processed", 5, (), {"extra": "x"})


def test_deterministic_attributes():
    m = Recorder(StructuralConfig(), name="rec")
    assert m.stochastic is False
    assert m.stream_name is None
    assert m.name == "rec"
    assert m.rngs is None
    assert m.requires_rng_streams() is None


def test_deterministic_with_rngs_is_fine():
    rngs = nnx.Rngs(0)
    m = Recorder(StructuralConfig(), rngs=rngs)
    assert m.rngs is rngs
    assert m.stochastic is False


def test_config_subclass_and_window():
    m = Window(WindowConfig(size=2))
    assert m([1, 2, 3, 4, 5]) == [[1, 2], [3, 4], [5]]
    assert m.config.size == 2


# --- stochastic ---------------------------------------------------------------


def test_stochastic_attributes():
    config = StructuralConfig(stochastic=True, stream_name="shuffle")
    m = Shuffle(config, rngs=nnx.Rngs(shuffle=0))
    assert m.stochastic is True
    assert m.stream_name == "shuffle"
    assert m.requires_rng_streams() == ["shuffle"]


def test_stochastic_without_rngs():
    with pytest.raises(ValueError, match="rngs"):
        Shuffle(StructuralConfig(stochastic=True, stream_name="shuffle"))


def test_stochastic_with_rngs_lacking_stream():
    with pytest.raises(ValueError, match="shuffle"):
        Shuffle(StructuralConfig(stochastic=True, stream_name="shuffle"), rngs=nnx.Rngs(other=0))


def test_stochastic_with_default_stream():
    m = Shuffle(StructuralConfig(stochastic=True, stream_name="shuffle"), rngs=nnx.Rngs(0))
    out = m(5)
    assert sorted(np.asarray(out).tolist()) == [0, 1, 2, 3, 4]


def test_stochastic_with_named_stream():
    m = Shuffle(StructuralConfig(stochastic=True, stream_name="shuffle"), rngs=nnx.Rngs(shuffle=3, other=1))
    first = np.asarray(m(10))
    assert sorted(first.tolist()) == list(range(10))
    # The same seed gives the same permutation.
    again = Shuffle(StructuralConfig(stochastic=True, stream_name="shuffle"), rngs=nnx.Rngs(shuffle=3, other=1))
    np.testing.assert_array_equal(np.asarray(again(10)), first)


def test_stochastic_state_round_trip():
    config = StructuralConfig(stochastic=True, stream_name="shuffle")
    m = Shuffle(config, rngs=nnx.Rngs(shuffle=3))
    m(4)
    state = m.get_state()
    expected = np.asarray(m(8))
    other = Shuffle(config, rngs=nnx.Rngs(shuffle=99))
    other.set_state(state)
    np.testing.assert_array_equal(np.asarray(other(8)), expected)


def test_stochastic_inside_jit():
    m = Shuffle(StructuralConfig(stochastic=True, stream_name="shuffle"), rngs=nnx.Rngs(shuffle=1))

    @nnx.jit
    def run(m):
        return m(jnp.arange(6))

    a = np.asarray(run(m))
    b = np.asarray(run(m))
    assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(6))
    # Each jitted call drew one key from the stream.
    assert int(m.rngs.shuffle.count[...]) == 2


# --- bad configs --------------------------------------------------------------


def test_operator_config_rejected():
    with pytest.raises(TypeError, match="StructuralConfig"):
        Recorder(OperatorConfig())


@pytest.mark.parametrize("config", [DataraxModuleConfig(), None, {"stochastic": False}])
def test_non_structural_config_rejected(config):
    with pytest.raises(TypeError):
        Recorder(config)  # type: ignore[arg-type]


def test_bad_rngs_and_name_types():
    with pytest.raises(TypeError, match="rngs"):
        Recorder(StructuralConfig(), rngs=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name"):
        Recorder(StructuralConfig(), name=5)  # type: ignore[arg-type]


# --- inherited behaviour --------------------------------------------------------


def test_copy_and_clone():
    m = Window(WindowConfig(size=2), name="w")
    c = m.copy(config=WindowConfig(size=3), name="w3")
    assert type(c) is Window
    assert c.name == "w3" and m.name == "w"
    assert c([1, 2, 3, 4]) == [[1, 2, 3], [4]]
    assert m([1, 2, 3, 4]) == [[1, 2], [3, 4]]
    d = m.clone()
    assert d([1, 2, 3]) == [[1, 2], [3]]


def test_copy_stochastic_with_new_rngs():
    config = StructuralConfig(stochastic=True, stream_name="shuffle")
    m = Shuffle(config, rngs=nnx.Rngs(shuffle=0))
    c = m.copy(rngs=nnx.Rngs(shuffle=5))
    ref = Shuffle(config, rngs=nnx.Rngs(shuffle=5))
    np.testing.assert_array_equal(np.asarray(c(7)), np.asarray(ref(7)))
    assert c.stochastic and c.stream_name == "shuffle"


def test_copy_to_stochastic_requires_rngs():
    m = Recorder(StructuralConfig())
    with pytest.raises(ValueError, match="rngs"):
        m.copy(config=StructuralConfig(stochastic=True, stream_name="s"))
    c = m.copy(config=StructuralConfig(stochastic=True, stream_name="s"), rngs=nnx.Rngs(s=0))
    assert c.stochastic and c.stream_name == "s"


# --- doctests ---------------------------------------------------------------


def test_doctests():
    result = doctest.testmod(structural_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0

"""Pipeline constructor validation: the documented exception, naming the argument and the bad value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from pipeline_helpers import make_source

from datarax import Pipeline
from datarax.core.config import StructuralConfig
from datarax.core.data_source import DataSourceModule
from datarax.operators import ElementOperator, ElementOperatorConfig


def _identity():
    return ElementOperator(ElementOperatorConfig(), fn=lambda e, k: dict(e))


def _build(**kwargs):
    kwargs.setdefault("source", make_source(10))
    kwargs.setdefault("batch_size", 4)
    return Pipeline(**kwargs)


@pytest.mark.parametrize(
    "source",
    [{"x": np.arange(3)}, np.arange(3), None, [1, 2, 3]],
    ids=["dict", "array", "None", "list"],
)
def test_source_must_be_a_data_source(source):
    with pytest.raises(TypeError, match="source must be a DataSourceModule"):
        _build(source=source)


def test_stages_must_be_operators():
    with pytest.raises(TypeError, match="stage 'stage_1' must be an OperatorModule, got function"):
        _build(stages=[_identity(), lambda e, k: e])
    with pytest.raises(TypeError, match="stage 'stage_0'.*got MemorySource"):
        _build(stages=[make_source(3)])
    with pytest.raises(TypeError, match="stages must be a sequence"):
        _build(stages=_identity())
    with pytest.raises(TypeError, match="stages must be a sequence"):
        _build(stages=(op for op in [_identity()]))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"batch_size": -3}, "batch_size.*got -3"),
        ({"batch_size": 2.5}, "batch_size.*got 2.5"),
        ({"batch_size": True}, "batch_size.*got True"),
        ({"batch_size": "4"}, "batch_size.*got '4'"),
        ({"num_epochs": 0}, "num_epochs must be a positive int or None, got 0"),
        ({"num_epochs": -1}, "num_epochs.*got -1"),
        ({"num_epochs": 1.0}, "num_epochs.*got 1.0"),
        ({"num_epochs": True}, "num_epochs.*got True"),
        ({"prefetch": -1}, "prefetch must be a non-negative int, got -1"),
        ({"prefetch": 1.5}, "prefetch.*got 1.5"),
        ({"prefetch": "2"}, "prefetch.*got '2'"),
        ({"shuffle": True}, "shuffle=True needs rngs"),
        ({"shuffle": "yes", "rngs": nnx.Rngs(0)}, "shuffle must be a bool, got 'yes'"),
        ({"drop_remainder": 1}, "drop_remainder must be a bool, got 1"),
        (
            {"drop_remainder": True, "batch_size": 11},
            "drop_remainder=True with batch_size=11 but the source has only 10 records",
        ),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _build(**kwargs)


def test_rngs_of_the_wrong_type():
    with pytest.raises(TypeError, match="rngs"):
        _build(rngs=42)


def test_drop_remainder_with_exactly_one_batch_is_fine():
    pipeline = _build(drop_remainder=True, batch_size=10)
    assert len(pipeline) == 1
    assert pipeline.batches_per_epoch == 1


def test_errors_are_raised_before_any_compilation():
    traces = []

    def fn(element, key):
        traces.append(1)
        return dict(element)

    op = ElementOperator(ElementOperatorConfig(), fn=fn)
    with pytest.raises(ValueError, match="prefetch"):
        _build(stages=[op], prefetch=-2)
    with pytest.raises(ValueError, match="batch_size"):
        _build(stages=[op], batch_size=0)
    assert traces == []  # argument checks come before the spec checks trace anything


class _PythonSlicedSource(DataSourceModule):
    """A source whose get_batch_at slices with a Python int: it cannot run inside the compiled step."""

    def __init__(self):
        super().__init__(StructuralConfig())
        self.values = nnx.data(jnp.arange(10))

    def __len__(self):
        return 10

    def element_spec(self):
        return {"x": jax.ShapeDtypeStruct((), self.values.dtype)}

    def get_batch_at(self, start, size, key=None):
        start = int(start)  # concretizes: fails on a traced start
        return {"x": self.values[start : start + size]}


def test_an_untraceable_source_is_refused_at_construction_with_the_recipe():
    source = _PythonSlicedSource()
    with pytest.raises(TypeError, match=r"_PythonSlicedSource.*get_records"):
        _build(source=source)

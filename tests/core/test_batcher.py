"""Tests for datarax.core.batcher: the batcher base class and the one batch spec."""

import doctest

import jax
import numpy as np
import pytest
from flax import nnx

import datarax.core.batcher as batcher_module
from datarax.core.batcher import VALID_MASK, BatcherModule, validate_batch_size
from datarax.core.config import StructuralConfig

SDS = jax.ShapeDtypeStruct


@pytest.fixture
def batcher():
    return BatcherModule(StructuralConfig())


# --- validate_batch_size / process ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, True, False, 1.5, 2.0, "4", None, np.float32(3)])
def test_validate_batch_size_rejects(bad):
    with pytest.raises(ValueError, match="batch_size"):
        validate_batch_size(bad)


@pytest.mark.parametrize("good", [1, 7, np.int32(4), np.int64(16)])
def test_validate_batch_size_accepts_positive_ints(good):
    out = validate_batch_size(good)
    assert type(out) is int
    assert out == int(good)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_process_bad_batch_size_is_value_error(batcher, bad):
    with pytest.raises(ValueError, match="batch_size") as info:
        batcher.process([{"x": np.zeros(2)}], batch_size=bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_call_bad_batch_size_is_value_error(batcher, bad):
    with pytest.raises(ValueError, match="batch_size"):
        batcher([], batch_size=bad)


def test_base_process_is_not_implemented(batcher):
    with pytest.raises(NotImplementedError, match="process"):
        batcher.process([{"x": np.zeros(2)}], batch_size=2)
    with pytest.raises(NotImplementedError):
        batcher([], batch_size=4, drop_remainder=True)


def test_batch_size_is_keyword_only(batcher):
    with pytest.raises(TypeError):
        batcher.process([], 4)  # batch_size must be passed by name


# --- batch_spec ----------------------------------------------------------------------------------


def test_batch_spec_adds_leading_dim_and_valid_mask(batcher):
    spec = {"image": SDS((8, 8, 3), np.uint8), "label": SDS((), np.int32)}
    out = batcher.batch_spec(spec, batch_size=5)
    assert out == {
        "image": SDS((5, 8, 8, 3), np.uint8),
        "label": SDS((5,), np.int32),
        VALID_MASK: SDS((5,), np.dtype(bool)),
    }
    assert out[VALID_MASK].dtype == np.dtype(bool)
    # The input spec is not modified.
    assert spec == {"image": SDS((8, 8, 3), np.uint8), "label": SDS((), np.int32)}


def test_batch_spec_nested_dicts(batcher):
    spec = {"obs": {"rgb": SDS((4, 4, 3), np.float32), "depth": SDS((4, 4), np.float16)}, "act": SDS((2,), np.int8)}
    out = batcher.batch_spec(spec, batch_size=3)
    assert out["obs"] == {"rgb": SDS((3, 4, 4, 3), np.float32), "depth": SDS((3, 4, 4), np.float16)}
    assert out["act"] == SDS((3, 2), np.int8)
    assert out[VALID_MASK] == SDS((3,), np.dtype(bool))
    # valid_mask is a top-level key only.
    assert VALID_MASK not in out["obs"]
    assert set(out) == {"obs", "act", VALID_MASK}


def test_batch_spec_empty_element_spec_has_only_the_mask(batcher):
    assert batcher.batch_spec({}, batch_size=2) == {VALID_MASK: SDS((2,), np.dtype(bool))}


def test_batch_spec_accepts_numpy_int_batch_size(batcher):
    out = batcher.batch_spec({"x": SDS((), np.float32)}, batch_size=np.int64(4))
    assert out["x"].shape == (4,)
    assert out[VALID_MASK].shape == (4,)


@pytest.mark.parametrize("bad", [0, -3, True, 2.5])
def test_batch_spec_bad_batch_size(batcher, bad):
    with pytest.raises(ValueError, match="batch_size"):
        batcher.batch_spec({"x": SDS((), np.float32)}, batch_size=bad)


@pytest.mark.parametrize("bad", [SDS((3,), np.float32), [SDS((3,), np.float32)], (SDS((), np.int32),), None])
def test_batch_spec_non_dict_is_type_error(batcher, bad):
    with pytest.raises(TypeError, match="element_spec"):
        batcher.batch_spec(bad, batch_size=2)


def test_batch_spec_reserved_key_is_value_error(batcher):
    spec = {"x": SDS((), np.float32), VALID_MASK: SDS((), np.dtype(bool))}
    with pytest.raises(ValueError, match=VALID_MASK):
        batcher.batch_spec(spec, batch_size=2)


def test_batch_spec_is_usable_with_eval_shape_outputs(batcher):
    spec = jax.eval_shape(lambda: {"x": jax.numpy.zeros((2, 3)), "y": jax.numpy.int32(0)})
    out = batcher.batch_spec(spec, batch_size=4)
    assert out["x"].shape == (4, 2, 3)
    assert out["y"].shape == (4,)


# --- the seed page example -----------------------------------------------------------------------


def test_seed_page_example_runs():
    # Written as on the batcher seed page, with local subclasses.
    class DefaultBatcherConfig(StructuralConfig):
        pass

    class DefaultBatcher(BatcherModule):
        def process(self, elements, batch_size, drop_remainder=False):
            # In a real implementation, this would yield actual batches
            return []

    config = DefaultBatcherConfig(stochastic=False)
    batcher = DefaultBatcher(config, rngs=nnx.Rngs(0))
    batches = list(batcher([], batch_size=32))  # Call the batcher instance
    assert batches == []
    assert batcher.stochastic is False
    assert batcher.stream_name is None


def test_stochastic_batcher_without_rngs_is_value_error():
    with pytest.raises(ValueError, match="rngs"):
        BatcherModule(StructuralConfig(stochastic=True, stream_name="batch"))


def test_doctests():
    result = doctest.testmod(batcher_module)
    assert result.attempted > 0
    assert result.failed == 0

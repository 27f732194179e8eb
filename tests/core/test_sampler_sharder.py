"""Tests for datarax.core.sampler and datarax.core.sharder base classes."""

import doctest
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import datarax.core.sampler as sampler_module
import datarax.core.sharder as sharder_module
from datarax.core.config import StructuralConfig
from datarax.core.sampler import SamplerModule, validate_num_records
from datarax.core.sharder import SharderModule

# --- SamplerModule -------------------------------------------------------------------------------


class Rotate(SamplerModule):
    """position -> (position + epoch + 1) mod n: a bijection for every epoch."""

    def indices_at(self, positions, num_records, epoch):
        return (positions + epoch + 1) % num_records


def test_base_indices_at_is_not_implemented():
    sampler = SamplerModule(StructuralConfig())
    with pytest.raises(NotImplementedError, match="indices_at"):
        sampler.indices_at(jnp.arange(3), 3, 0)
    with pytest.raises(NotImplementedError):
        sampler.indices_at_np(np.arange(3), 3, 0)
    with pytest.raises(NotImplementedError):
        sampler.process(3)


@pytest.mark.parametrize("n", [1, 2, 7, 64])
@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_subclass_process_returns_permutation(n, epoch):
    order = Rotate(StructuralConfig()).process(n, epoch=epoch)
    assert isinstance(order, np.ndarray)
    assert order.shape == (n,)
    assert sorted(order.tolist()) == list(range(n))
    np.testing.assert_array_equal(order, (np.arange(n) + epoch + 1) % n)


def test_process_depends_on_epoch_and_via_call():
    sampler = Rotate(StructuralConfig())
    assert not np.array_equal(sampler.process(5, epoch=0), sampler.process(5, epoch=1))
    np.testing.assert_array_equal(sampler(5, epoch=2), sampler.process(5, epoch=2))


def test_indices_at_np_agrees_with_jax_version_under_jit():
    sampler = Rotate(StructuralConfig())
    positions = np.array([0, 3, 4, 1])
    host = sampler.indices_at_np(positions, 5, 2)
    device = jax.jit(lambda p, e: sampler.indices_at(p, 5, e))(jnp.asarray(positions), 2)
    assert isinstance(host, np.ndarray)
    np.testing.assert_array_equal(host, np.asarray(device))


@pytest.mark.parametrize("bad", [0, -1, True, False, 2.0, "3", None])
def test_validate_num_records_errors(bad):
    with pytest.raises(ValueError, match="num_records") as info:
        validate_num_records(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("good", [1, 10, np.int64(3)])
def test_validate_num_records_accepts(good):
    out = validate_num_records(good)
    assert type(out) is int and out == int(good)


@pytest.mark.parametrize("bad", [0, -2, True, 1.5])
def test_process_bad_dataset_size(bad):
    with pytest.raises(ValueError, match=f"Rotate: num_records must be a positive int, got {bad!r}"):
        Rotate(StructuralConfig()).process(bad)


# --- SharderModule.local_rows --------------------------------------------------------------------


SHARDER = SharderModule(StructuralConfig())


@pytest.mark.parametrize("process_count", [1, 2, 4, 8])
@pytest.mark.parametrize("multiple", [1, 3, 16])
def test_local_rows_partition_the_batch(process_count, multiple):
    batch_size = process_count * multiple
    bounds = [
        SHARDER.local_rows(batch_size, process_index=i, process_count=process_count) for i in range(process_count)
    ]
    rows = [r for start, stop in bounds for r in range(start, stop)]
    # Contiguous, disjoint, equal shares that cover [0, B) exactly, in process order.
    assert rows == list(range(batch_size))
    assert all(stop - start == multiple for start, stop in bounds)
    assert bounds[0][0] == 0 and bounds[-1][1] == batch_size
    assert all(type(b) is int for pair in bounds for b in pair)


@settings(max_examples=50, deadline=None)
@given(process_count=st.sampled_from([1, 2, 4, 8]), share=st.integers(1, 64))
def test_local_rows_partition_property(process_count, share):
    batch_size = process_count * share
    covered = np.zeros(batch_size, np.int32)
    for i in range(process_count):
        start, stop = SHARDER.local_rows(batch_size, process_index=i, process_count=process_count)
        covered[start:stop] += 1
    np.testing.assert_array_equal(covered, np.ones(batch_size, np.int32))


def test_local_rows_docstring_example():
    assert SHARDER.local_rows(8, process_index=1, process_count=4) == (2, 4)


@pytest.mark.parametrize("batch_size,count", [(6, 4), (3, 2), (1, 8), (10, 3)])
def test_local_rows_non_divisible(batch_size, count):
    with pytest.raises(ValueError, match="divisible") as info:
        SHARDER.local_rows(batch_size, process_index=0, process_count=count)
    assert str(batch_size) in str(info.value) and str(count) in str(info.value)


@pytest.mark.parametrize("index", [-1, 4, 5, 1.0, None, "0", True])
def test_local_rows_bad_index(index):
    expected = rf"SharderModule.local_rows: process_index must be an int in \[0, 4\), got {re.escape(repr(index))}"
    with pytest.raises(ValueError, match=expected):
        SHARDER.local_rows(8, process_index=index, process_count=4)


def test_local_rows_accepts_numpy_ints():
    bounds = SHARDER.local_rows(np.int64(8), process_index=np.int32(1), process_count=np.int64(2))
    assert bounds == (4, 8) and all(type(b) is int for b in bounds)


@pytest.mark.parametrize("count", [0, -1, 2.0, None, True])
def test_local_rows_bad_count(count):
    with pytest.raises(
        ValueError, match=f"SharderModule.local_rows: process_count must be a positive int, got {count!r}"
    ):
        SHARDER.local_rows(8, process_index=0, process_count=count)


@pytest.mark.parametrize("batch_size", [0, -4, True, 4.0])
def test_local_rows_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        SHARDER.local_rows(batch_size, process_index=0, process_count=1)


def test_sharder_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        SHARDER.local_rows(8, 0, 2)


def test_base_sharder_process_is_not_implemented():
    with pytest.raises(NotImplementedError, match="process"):
        SHARDER.process({"x": np.zeros(4)})
    with pytest.raises(NotImplementedError):
        SHARDER({"x": np.zeros(4)})


def test_doctests():
    for module in (sampler_module, sharder_module):
        result = doctest.testmod(module)
        assert result.attempted > 0, module.__name__
        assert result.failed == 0, module.__name__

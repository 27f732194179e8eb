"""Tests for datarax.sources.memory_source.MemorySource."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import datarax.sources.memory_source as memory_module
from datarax.batching import DefaultBatcher, DefaultBatcherConfig
from datarax.core.batch_form import VALID_MASK
from datarax.core.batcher import BatcherModule
from datarax.core.config import StructuralConfig
from datarax.core.spec import conforms
from datarax.sources import MemorySource, MemorySourceConfig

SDS = jax.ShapeDtypeStruct
N = 10


def _data(n=N):
    return {
        "x": np.arange(n, dtype=np.float32),
        "image": np.arange(n * 6, dtype=np.uint8).reshape(n, 2, 3),
        "label": (np.arange(n) % 3).astype(np.int32),
        "flag": np.arange(n) % 2 == 0,
    }


@pytest.fixture
def source():
    return MemorySource(MemorySourceConfig(), data=_data())


# --- sequence protocol ---------------------------------------------------------------------------


def test_len(source):
    assert len(source) == N
    assert len(MemorySource(MemorySourceConfig(), data={"a": np.zeros((1, 4))})) == 1


def test_getitem_returns_one_record(source):
    record = source[3]
    assert set(record) == {"x", "image", "label", "flag"}
    assert float(record["x"]) == 3.0
    np.testing.assert_array_equal(record["image"], _data()["image"][3])
    assert record["image"].shape == (2, 3)
    assert int(record["label"]) == 0
    assert bool(record["flag"]) is False


def test_getitem_negative_and_numpy_indices(source):
    assert float(source[-1]["x"]) == N - 1
    assert float(source[-N]["x"]) == 0
    assert float(source[np.int64(4)]["x"]) == 4


@pytest.mark.parametrize("index", [N, N + 5, -N - 1])
def test_getitem_out_of_range_is_index_error(source, index):
    with pytest.raises(IndexError, match=str(index)):
        source[index]


@pytest.mark.parametrize("index", [1.0, "1", None, True, slice(0, 2), jnp.int32(1)])
def test_getitem_non_int_is_type_error(source, index):
    with pytest.raises(TypeError, match="int"):
        source[index]


def test_iteration_yields_every_record_in_order(source):
    records = list(source)
    assert len(records) == N
    np.testing.assert_array_equal([float(r["x"]) for r in records], np.arange(N))
    np.testing.assert_array_equal(np.stack([r["image"] for r in records]), _data()["image"])
    # Iterating again starts over: the source keeps no iteration state.
    assert float(next(iter(source))["x"]) == 0.0


def test_iteration_feeds_default_batcher(source):
    batches = list(DefaultBatcher(DefaultBatcherConfig())(source, batch_size=4))
    assert len(batches) == 3
    np.testing.assert_array_equal(batches[-1]["x"], [8, 9, 9, 9])
    np.testing.assert_array_equal(batches[-1][VALID_MASK], [True, True, False, False])
    spec = BatcherModule(StructuralConfig()).batch_spec(source.element_spec(), batch_size=4)
    assert all(conforms(b, spec) for b in batches)


# --- element_spec --------------------------------------------------------------------------------


def test_element_spec_shapes_and_dtypes(source):
    assert source.element_spec() == {
        "x": SDS((), jnp.float32),
        "image": SDS((2, 3), jnp.uint8),
        "label": SDS((), jnp.int32),
        "flag": SDS((), jnp.bool_),
    }


def test_element_spec_matches_records_and_batches(source):
    spec = source.element_spec()
    assert conforms(source[0], spec)
    batch = source.get_batch_at(0, 3)
    for key, leaf in spec.items():
        assert batch[key].shape == (3, *leaf.shape)
        assert batch[key].dtype == leaf.dtype


def test_element_spec_reports_the_stored_dtype_for_64_bit_input():
    # Without x64, JAX stores float64 as float32: the spec must describe what is served.
    source = MemorySource(MemorySourceConfig(), data={"x": np.arange(4.0), "i": np.arange(4)})
    spec = source.element_spec()
    batch = source.get_batch_at(0, 2)
    assert spec["x"].dtype == batch["x"].dtype
    assert spec["i"].dtype == batch["i"].dtype


# --- 64-bit columns -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "dtype", "stored", "bad"),
    [
        ([2**40 + 5, 3], np.int64, "int32", 2**40 + 5),
        ([0, -(2**31) - 1], np.int64, "int32", -(2**31) - 1),
        ([2**31, 1], np.int64, "int32", 2**31),
        ([2**33, 1], np.uint64, "uint32", 2**33),
        ([1.0, -1e300], np.float64, "float32", -1e300),
        ([1.0, 1j * 1e39], np.complex128, "complex64", 1e39),
    ],
)
def test_values_that_would_wrap_or_overflow_without_x64_are_refused(values, dtype, stored, bad):
    with pytest.raises(ValueError) as info:
        MemorySource(MemorySourceConfig(), data={"x": np.zeros(2), "id": np.array(values, dtype)})
    message = str(info.value)
    assert f"column 'id' ({np.dtype(dtype)}) holds {bad}, which does not fit the {stored}" in message
    assert 'jax.config.update("jax_enable_x64", True)' in message and "cast the column" in message


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_64_bit_integers_that_fit_are_stored_exactly_in_32_bits(dtype):
    info = np.iinfo(np.int32 if dtype == np.int64 else np.uint32)
    values = np.array([info.min, 0, 7, info.max], dtype)
    source = MemorySource(MemorySourceConfig(), data={"id": values})
    assert source.element_spec()["id"].dtype == jax.dtypes.canonicalize_dtype(dtype)
    np.testing.assert_array_equal(np.asarray(source.get_records(np.arange(4))["id"]).astype(dtype), values)


def test_float64_is_narrowed_to_float32_as_documented():
    values = np.array([0.1, np.inf, 1.0 + 2.0**-40, np.nan, 3e38])
    source = MemorySource(MemorySourceConfig(), data={"x": values})
    assert source.element_spec()["x"].dtype == jnp.float32
    np.testing.assert_array_equal(source.get_batch_at(0, 5)["x"], values.astype(np.float32))
    assert "64-bit columns" in memory_module.__doc__ and "float64" in memory_module.__doc__


def test_with_x64_enabled_nothing_is_narrowed():
    with jax.enable_x64(True):
        data = {
            "id": np.array([2**40 + 5, 3, -(2**40)], np.int64),
            "u": np.array([2**63, 1, 2], np.uint64),
            "x": np.array([0.1, 1.0 + 2.0**-40, 3.0]),
        }
        source = MemorySource(MemorySourceConfig(), data=data)
        assert {k: v.dtype for k, v in source.element_spec().items()} == {
            "id": jnp.int64,
            "u": jnp.uint64,
            "x": jnp.float64,
        }
        batch = jax.jit(source.get_records)(jnp.array([0, 2, 1]))
        for key, column in data.items():
            assert batch[key].dtype == column.dtype
            np.testing.assert_array_equal(np.asarray(batch[key]), column[[0, 2, 1]])


def test_jax_array_columns_are_accepted():
    source = MemorySource(MemorySourceConfig(), data={"x": jnp.ones((3, 2), jnp.int32)})
    assert source.element_spec() == {"x": SDS((2,), jnp.int32)}


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float8_e4m3fn, jnp.complex64])
def test_ml_dtypes_columns_are_accepted(dtype):
    for make in (np.ones, jnp.ones):
        source = MemorySource(MemorySourceConfig(), data={"x": make((3, 2), dtype)})
        assert source.element_spec() == {"x": SDS((2,), dtype)}
        assert source.get_batch_at(1, 2)["x"].dtype == dtype


# --- get_batch_at / get_records ------------------------------------------------------------------


def test_get_batch_at_python_start(source):
    batch = source.get_batch_at(2, 3)
    np.testing.assert_array_equal(batch["x"], [2, 3, 4])
    np.testing.assert_array_equal(batch["image"], _data()["image"][2:5])
    assert set(batch) == {"x", "image", "label", "flag"}


def test_get_batch_at_wraps_around(source):
    np.testing.assert_array_equal(source.get_batch_at(8, 4)["x"], [8, 9, 0, 1])
    # A size larger than the source wraps more than once.
    np.testing.assert_array_equal(source.get_batch_at(0, 2 * N + 1)["x"], np.arange(2 * N + 1) % N)


def test_get_batch_at_under_jit_with_traced_start(source):
    gather = jax.jit(lambda start: source.get_batch_at(start, 4))
    for start in (0, 3, 6, 8, 9):
        out = gather(jnp.int32(start))
        np.testing.assert_array_equal(out["x"], (start + np.arange(4)) % N)
        np.testing.assert_array_equal(out["image"], _data()["image"][(start + np.arange(4)) % N])
    # One compilation serves every start.
    assert gather._cache_size() == 1


@settings(max_examples=40, deadline=None)
@given(start=st.integers(0, 3 * N), size=st.integers(1, 2 * N))
def test_get_batch_at_matches_numpy_modular_gather(start, size):
    src = MemorySource(MemorySourceConfig(), data={"x": np.arange(N, dtype=np.int32)})
    np.testing.assert_array_equal(src.get_batch_at(start, size)["x"], (start + np.arange(size)) % N)


@pytest.mark.parametrize("size", [0, -1, 1.5, True, None])
def test_get_batch_at_bad_size(source, size):
    with pytest.raises(ValueError, match="size"):
        source.get_batch_at(0, size)


def test_get_batch_at_is_stateless(source):
    first = source.get_batch_at(5, 3)
    source.get_batch_at(0, 7)
    again = source.get_batch_at(5, 3)
    jax.tree.map(np.testing.assert_array_equal, first, again)


def test_get_records_with_traced_indices_inside_jit(source):
    gather = jax.jit(lambda idx: source.get_records(idx))
    idx = jnp.array([9, 0, 4, 4, 7])
    out = gather(idx)
    np.testing.assert_array_equal(out["x"], [9, 0, 4, 4, 7])
    np.testing.assert_array_equal(out["label"], _data()["label"][[9, 0, 4, 4, 7]])
    np.testing.assert_array_equal(out["image"], _data()["image"][[9, 0, 4, 4, 7]])


def test_get_records_from_a_jitted_permutation(source):
    @jax.jit
    def step(key):
        order = jax.random.permutation(key, N)
        return order, source.get_records(order[:4])

    order, out = step(jax.random.key(0))
    np.testing.assert_array_equal(out["x"], np.asarray(order[:4]).astype(np.float32))


def test_get_records_wraps_indices(source):
    np.testing.assert_array_equal(source.get_records(np.array([N, N + 3, -1]))["x"], [0, 3, N - 1])


def test_memory_source_passes_through_nnx_jit(source):
    @nnx.jit
    def gather(src, start):
        return src.get_batch_at(start, 4)

    out = gather(source, jnp.int32(7))
    np.testing.assert_array_equal(out["x"], [7, 8, 9, 0])

    @nnx.jit
    def records(src, idx):
        return src.get_records(idx)

    np.testing.assert_array_equal(records(source, jnp.array([1, 2]))["label"], [1, 2])
    # The source is unchanged after being passed through the transform.
    assert len(source) == N
    np.testing.assert_array_equal(source.get_batch_at(0, 2)["x"], [0, 1])


# --- state ---------------------------------------------------------------------------------------


def test_get_state_does_not_hold_the_data():
    big = {"x": np.ones((5000, 64), np.float32)}
    source = MemorySource(MemorySourceConfig(), data=big)
    state = source.get_state()
    assert "data" not in state
    leaves = jax.tree.leaves(state)
    assert all(np.size(leaf) <= 1 for leaf in leaves)
    assert sum(np.asarray(leaf).nbytes for leaf in leaves) < 100


def test_set_state_round_trip_keeps_data(source):
    state = source.get_state()
    other = MemorySource(MemorySourceConfig(), data=_data())
    other.set_state(state)
    jax.tree.map(np.testing.assert_array_equal, other.get_batch_at(0, N), source.get_batch_at(0, N))


def test_data_is_not_a_parameter(source):
    assert not jax.tree.leaves(nnx.state(source, nnx.Param))


@pytest.mark.parametrize("n", [4, 1 << 20])
def test_mutating_input_arrays_after_construction_does_not_change_records(n):
    # Large arrays exercise the asynchronous host-to-device copy: the source
    # must own a snapshot by the time its constructor returns.
    for _ in range(20):
        data = {"x": np.zeros(n, np.float32)}
        source = MemorySource(MemorySourceConfig(), data=data)
        data["x"][0] = 100.0
        data["x"][-1] = 100.0
        assert float(source[0]["x"]) == 0.0
        assert float(source[-1]["x"]) == 0.0


# --- validation ----------------------------------------------------------------------------------


def _build(data):
    return MemorySource(MemorySourceConfig(), data=data)


@pytest.mark.parametrize("data", [[np.zeros(3)], np.zeros((3, 2)), None, "x", (("x", np.zeros(3)),)])
def test_non_dict_data_is_type_error(data):
    with pytest.raises(TypeError, match="dict"):
        _build(data)


def test_empty_dict_is_value_error():
    with pytest.raises(ValueError, match="empty"):
        _build({})


def test_ragged_columns_message_shows_lengths():
    with pytest.raises(ValueError, match="ragged") as info:
        _build({"a": np.zeros(3), "b": np.zeros(5), "c": np.zeros(3)})
    message = str(info.value)
    assert "'a': 3" in message
    assert "'b': 5" in message


def test_zero_length_columns_is_value_error():
    with pytest.raises(ValueError, match="zero records"):
        _build({"a": np.zeros((0, 3)), "b": np.zeros(0)})


def test_zero_d_column_is_value_error():
    with pytest.raises(ValueError, match="'s'"):
        _build({"x": np.zeros(3), "s": np.array(1.0, np.float32)})
    with pytest.raises(ValueError, match="scalar"):
        _build({"s": jnp.array(1.0)})


@pytest.mark.parametrize("value", [[1, 2, 3], (1.0, 2.0), range(3), 5])
def test_non_array_column_is_type_error(value):
    with pytest.raises(TypeError, match="'col'"):
        _build({"col": value})


@pytest.mark.parametrize(
    "value",
    [
        np.array([{"a": 1}, None], dtype=object),
        np.array(["cat", "dog"]),
        np.array([b"a", b"b"]),
        np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[D]"),
    ],
)
def test_non_numeric_dtype_is_type_error(value):
    with pytest.raises(TypeError, match="non-numeric dtype"):
        _build({"col": value})


def test_reserved_valid_mask_column_is_value_error():
    with pytest.raises(ValueError, match=VALID_MASK):
        _build({"x": np.zeros(3), VALID_MASK: np.ones(3, bool)})


def test_non_str_column_name_is_type_error():
    with pytest.raises(TypeError, match="column names"):
        _build({0: np.zeros(3)})


def test_wrong_config_type_is_type_error():
    from datarax.core.config import OperatorConfig

    with pytest.raises(TypeError, match="StructuralConfig"):
        MemorySource(OperatorConfig(), data=_data())


def test_doctests():
    result = doctest.testmod(memory_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_memory_source_passes_the_pipeline_traceability_check(source):
    from datarax.core.data_source import check_source_traceable

    for batch_size in (1, 3, 64):
        check_source_traceable(source, batch_size)
    mixed = {"b": np.ones((4, 2), jnp.bfloat16), "c": np.ones(4, np.complex64), "u": np.arange(4, dtype=np.uint64)}
    check_source_traceable(MemorySource(MemorySourceConfig(), data=mixed), 8)

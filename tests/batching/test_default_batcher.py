"""Tests for datarax.batching.default_batcher.DefaultBatcher."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import datarax.batching.default_batcher as default_module
from datarax.batching import DefaultBatcher, DefaultBatcherConfig
from datarax.core.batch_form import VALID_MASK
from datarax.core.element_batch import Batch, Element
from datarax.core.spec import conforms, spec_mismatches, spec_of

BATCHER = DefaultBatcher(DefaultBatcherConfig())


def _element(i):
    """A nested element whose every leaf encodes its index ``i``."""
    return {
        "x": np.full((2, 3), i, np.float32),
        "label": np.int32(i),
        "meta": {"id": np.array([i, -i], np.int16), "flag": np.bool_(i % 2)},
    }


def _element_spec():
    return spec_of(_element(0))


def _valid_rows(batches):
    """Concatenates the valid rows of every batch, leaf by leaf."""
    parts = []
    for batch in batches:
        mask = np.asarray(batch[VALID_MASK])
        data = {k: v for k, v in batch.items() if k != VALID_MASK}
        parts.append(jax.tree.map(lambda a, m=mask: np.asarray(a)[m], data))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def _stacked(elements):
    return jax.tree.map(lambda *xs: np.stack(xs), *elements)


# --- exact batches -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 12), drop_remainder=st.booleans())
def test_batches_are_exact(n, batch_size, drop_remainder):
    elements = [_element(i) for i in range(n)]
    batches = list(BATCHER(elements, batch_size=batch_size, drop_remainder=drop_remainder))
    full, rest = divmod(n, batch_size)
    expected_batches = full + (1 if rest and not drop_remainder else 0)
    assert len(batches) == expected_batches

    spec = BATCHER.batch_spec(_element_spec(), batch_size=batch_size)
    for batch in batches:
        # Every batch has exactly the batch spec: batch_size rows, dtypes kept, valid_mask.
        assert spec_mismatches(batch, spec) == []
        assert np.asarray(batch[VALID_MASK]).dtype == np.dtype(bool)

    kept = n if not drop_remainder else full * batch_size
    if kept == 0:
        assert batches == []
        return
    # The valid rows, in order, are exactly the input (the kept prefix of it).
    valid = _valid_rows(batches)
    expected = _stacked(elements[:kept])
    jax.tree.map(np.testing.assert_array_equal, valid, expected)
    # Only the last batch may have padding; the mask is a prefix of Trues.
    for batch in batches[:-1]:
        assert np.asarray(batch[VALID_MASK]).all()
    last_mask = np.asarray(batches[-1][VALID_MASK])
    real = kept - (len(batches) - 1) * batch_size
    np.testing.assert_array_equal(last_mask, np.arange(batch_size) < real)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), batch_size=st.integers(2, 9))
def test_padding_rows_copy_the_last_real_element(n, batch_size):
    elements = [_element(i) for i in range(n)]
    last = list(BATCHER(elements, batch_size=batch_size))[-1]
    mask = np.asarray(last[VALID_MASK])
    real = int(mask.sum())
    assert real == (n % batch_size or batch_size)
    for row in range(real, batch_size):
        assert not mask[row]
        row_values = jax.tree.map(lambda a, r=row: np.asarray(a)[r], {k: v for k, v in last.items() if k != VALID_MASK})
        jax.tree.map(np.testing.assert_array_equal, row_values, _element(n - 1))


def test_small_example_exact_values():
    elements = [{"x": np.float32(i)} for i in range(5)]
    batches = list(BATCHER(elements, batch_size=2))
    assert [np.asarray(b["x"]).tolist() for b in batches] == [[0.0, 1.0], [2.0, 3.0], [4.0, 4.0]]
    assert [np.asarray(b[VALID_MASK]).tolist() for b in batches] == [[True, True], [True, True], [True, False]]


def test_drop_remainder_drops_short_batch():
    elements = [{"x": np.float32(i)} for i in range(5)]
    batches = list(BATCHER(elements, batch_size=2, drop_remainder=True))
    assert [np.asarray(b["x"]).tolist() for b in batches] == [[0.0, 1.0], [2.0, 3.0]]
    assert all(np.asarray(b[VALID_MASK]).all() for b in batches)


def test_drop_remainder_with_fewer_elements_than_batch_size_gives_nothing():
    assert list(BATCHER([{"x": np.float32(0)}], batch_size=3, drop_remainder=True)) == []
    # Without dropping: one padded batch.
    (batch,) = BATCHER([{"x": np.float32(0)}], batch_size=3)
    assert np.asarray(batch[VALID_MASK]).tolist() == [True, False, False]


def test_exact_multiple_has_no_padding_batch():
    batches = list(BATCHER([{"x": np.int32(i)} for i in range(6)], batch_size=3))
    assert len(batches) == 2
    assert all(np.asarray(b[VALID_MASK]).all() for b in batches)


def test_empty_input_gives_no_batches():
    assert list(BATCHER([], batch_size=4)) == []
    assert list(BATCHER(iter([]), batch_size=4, drop_remainder=True)) == []


def test_dtypes_are_preserved():
    elements = [
        {"u8": np.uint8(i), "f16": np.full(2, i, np.float16), "b": np.bool_(True), "i32": jnp.int32(i)}
        for i in range(3)
    ]
    (batch,) = BATCHER(elements, batch_size=4)
    assert batch["u8"].dtype == np.uint8
    assert batch["f16"].dtype == np.float16
    assert batch["b"].dtype == np.bool_
    assert batch["i32"].dtype == np.int32
    assert conforms(batch, BATCHER.batch_spec(spec_of(elements[0]), batch_size=4))


def test_jax_array_elements_are_batched():
    # Records served by a device source are jax arrays; numpy and jax leaves of
    # the same shape and dtype mix freely.
    elements = [{"x": jnp.full((2,), i, jnp.float32), "y": jnp.int32(i)} for i in range(3)]
    elements.append({"x": np.full((2,), 3, np.float32), "y": np.int32(3)})
    (batch,) = BATCHER(elements, batch_size=4)
    np.testing.assert_array_equal(batch["y"], [0, 1, 2, 3])
    assert batch["x"].dtype == jnp.float32 and batch["x"].shape == (4, 2)
    with pytest.raises(ValueError, match="element 1"):
        list(BATCHER([{"x": jnp.zeros(2, jnp.float32)}, {"x": jnp.zeros(2, jnp.int32)}], batch_size=2))


def test_element_objects_are_accepted():
    elements = [Element({"x": np.full(3, i, np.float32)}) for i in range(3)]
    mixed = [elements[0], {"x": np.full(3, 1, np.float32)}, elements[2]]
    for inputs in (elements, mixed):
        (batch,) = BATCHER(inputs, batch_size=4)
        np.testing.assert_array_equal(np.asarray(batch["x"])[:, 0], [0, 1, 2, 2])
        assert np.asarray(batch[VALID_MASK]).tolist() == [True, True, True, False]
        assert set(batch) == {"x", VALID_MASK}


def test_generator_input_is_consumed_lazily():
    consumed = []

    def generate():
        for i in range(10):
            consumed.append(i)
            yield {"x": np.int32(i)}

    batches = BATCHER(generate(), batch_size=4)
    assert consumed == []  # nothing is read before the first batch is asked for
    first = next(batches)
    np.testing.assert_array_equal(first["x"], [0, 1, 2, 3])
    assert consumed == [0, 1, 2, 3]
    second = next(batches)
    np.testing.assert_array_equal(second["x"], [4, 5, 6, 7])
    assert consumed == list(range(8))
    third = next(batches)
    np.testing.assert_array_equal(third["x"], [8, 9, 9, 9])
    assert np.asarray(third[VALID_MASK]).tolist() == [True, True, False, False]
    with pytest.raises(StopIteration):
        next(batches)


def test_infinite_generator_yields_batches():
    def forever():
        i = 0
        while True:
            yield {"x": np.int32(i)}
            i += 1

    batches = BATCHER(forever(), batch_size=3)
    np.testing.assert_array_equal(next(batches)["x"], [0, 1, 2])
    np.testing.assert_array_equal(next(batches)["x"], [3, 4, 5])


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, None])
def test_bad_batch_size_raises_at_call_time(bad):
    consumed = []

    def generate():
        consumed.append(True)
        yield {"x": np.int32(0)}

    with pytest.raises(ValueError, match="batch_size"):
        BATCHER(generate(), batch_size=bad)  # no iteration needed
    assert consumed == []


def test_bad_drop_remainder_raises_at_call_time():
    with pytest.raises(ValueError, match="DefaultBatcher: drop_remainder must be a bool, got 'yes'"):
        BATCHER([], batch_size=2, drop_remainder="yes")


def _expect_error(elements, error, *fragments, batch_size=2):
    with pytest.raises(error) as info:
        list(BATCHER(elements, batch_size=batch_size))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_mismatched_shape_names_element_index():
    elements = [{"x": np.zeros(3, np.float32)}] * 5 + [{"x": np.zeros(4, np.float32)}]
    _expect_error(
        elements,
        ValueError,
        "DefaultBatcher: element 5 differs from element 4: ['x']: expected float32[3], got float32[4]",
    )


def test_mismatched_dtype_names_element_index():
    elements = [{"x": np.zeros(3, np.float32)}] * 3 + [{"x": np.zeros(3, np.int32)}]
    _expect_error(elements, ValueError, "element 3", batch_size=4)


def test_mismatched_structure_names_element_index():
    elements = [{"x": np.float32(0)}, {"x": np.float32(1)}, {"y": np.float32(2)}]
    _expect_error(elements, ValueError, "element 2", batch_size=3)
    elements = [{"x": np.float32(0)}, {"x": np.float32(1), "extra": np.float32(1)}]
    _expect_error(elements, ValueError, "element 1")


def test_mismatch_in_first_slot_of_a_later_batch_names_its_index():
    # Within one batch the first element is the reference; a change at a batch
    # boundary is still reported (in the next batch's terms) with its global index.
    elements = [{"x": np.zeros(2)}, {"x": np.zeros(2)}, {"x": np.zeros(2)}, {"x": np.zeros(5)}]
    _expect_error(elements, ValueError, "element 3")


def test_reserved_key_is_value_error_naming_index():
    elements = [{"x": np.float32(0)}, {"x": np.float32(1), VALID_MASK: np.bool_(True)}]
    _expect_error(elements, ValueError, "element 1", VALID_MASK)


@pytest.mark.parametrize("bad", [np.zeros(3), [np.zeros(3)], (np.zeros(3),), 5])
def test_non_dict_element_is_type_error_naming_index(bad):
    _expect_error([{"x": np.zeros(3)}, bad], TypeError, "element 1")


def test_errors_stop_iteration_after_good_batches():
    elements = [{"x": np.zeros(2)}] * 4 + [[1, 2]]
    batches = BATCHER(elements, batch_size=2)
    assert next(batches)["x"].shape == (2, 2)
    assert next(batches)["x"].shape == (2, 2)
    with pytest.raises(TypeError, match="element 4"):
        next(batches)


# --- batch_spec on the concrete batcher ----------------------------------------------------------


def test_batch_spec_matches_emitted_batches():
    spec = _element_spec()
    out = BATCHER.batch_spec(spec, batch_size=3)
    (batch,) = BATCHER([_element(i) for i in range(2)], batch_size=3)
    assert jax.tree.structure(out) == jax.tree.structure(batch)
    assert spec_of(batch) == out


def test_stateless_between_calls():
    first = list(BATCHER([{"x": np.int32(i)} for i in range(3)], batch_size=2))
    second = list(BATCHER([{"x": np.int32(i)} for i in range(3)], batch_size=2))
    jax.tree.map(np.testing.assert_array_equal, first, second)


def test_doctests():
    result = doctest.testmod(default_module)
    assert result.attempted > 0
    assert result.failed == 0


# --- collate_fn ----------------------------------------------------------------------------------


def _recording_collate(calls):
    def collate(elements):
        calls.append(list(elements))
        return {"n": len(elements), "first": elements[0]}

    return collate


@pytest.mark.parametrize("n, batch_size", [(7, 3), (6, 3), (2, 5), (1, 1)])
def test_collate_fn_gets_each_group_as_given_and_its_result_is_the_batch(n, batch_size):
    calls = []
    elements = [object() for _ in range(n)]  # anything: a custom collate owns the batch form
    batcher = DefaultBatcher(DefaultBatcherConfig(), collate_fn=_recording_collate(calls))
    batches = list(batcher(elements, batch_size=batch_size))
    expected_groups = [elements[i : i + batch_size] for i in range(0, n, batch_size)]
    assert calls == expected_groups  # the short last group is passed as is, not padded
    assert all(all(a is b for a, b in zip(c, g)) for c, g in zip(calls, expected_groups))
    assert batches == [{"n": len(g), "first": g[0]} for g in expected_groups]  # unchanged, no valid_mask


def test_collate_fn_with_drop_remainder_skips_the_short_group():
    calls = []
    batcher = DefaultBatcher(DefaultBatcherConfig(), _recording_collate(calls))  # collate_fn is positional too
    batches = list(batcher(range(7), batch_size=3, drop_remainder=True))
    assert calls == [[0, 1, 2], [3, 4, 5]]
    assert [b["n"] for b in batches] == [3, 3]
    assert list(batcher(range(2), batch_size=3, drop_remainder=True)) == []


def test_collate_fn_receives_element_objects_unchanged():
    elements = [Element({"x": np.float32(i)}, metadata={"i": np.int32(i)}) for i in range(3)]
    batcher = DefaultBatcher(DefaultBatcherConfig(), collate_fn=lambda es: Batch(list(es)))
    (batch,) = batcher(elements, batch_size=4)
    assert isinstance(batch, Batch) and batch.batch_size == 3
    assert batch.metadata["i"].tolist() == [0, 1, 2]


def test_collate_fn_reads_lazily():
    consumed = []

    def generate():
        for i in range(5):
            consumed.append(i)
            yield i

    batches = DefaultBatcher(DefaultBatcherConfig(), collate_fn=sum)(generate(), batch_size=2)
    assert consumed == []
    assert next(batches) == 1 and consumed == [0, 1]
    assert list(batches) == [5, 4]


@pytest.mark.parametrize("bad", ["stack", 3, [len]])
def test_non_callable_collate_fn_is_type_error_at_construction(bad):
    with pytest.raises(TypeError, match=r"DefaultBatcher: collate_fn must be a callable or None, got"):
        DefaultBatcher(DefaultBatcherConfig(), collate_fn=bad)


def test_collate_fn_batcher_still_validates_call_arguments():
    batcher = DefaultBatcher(DefaultBatcherConfig(), collate_fn=list)
    with pytest.raises(ValueError, match="DefaultBatcher: batch_size must be a positive int, got 0"):
        batcher([1, 2], batch_size=0)
    with pytest.raises(ValueError, match="drop_remainder"):
        batcher([1, 2], batch_size=1, drop_remainder=None)


def test_copy_and_clone_keep_collate_fn():
    batcher = DefaultBatcher(DefaultBatcherConfig(), collate_fn=list, name="b")
    for other in (batcher.copy(name="c"), batcher.clone()):
        assert other.collate_fn is list
        assert list(other(range(3), batch_size=2)) == [[0, 1], [2]]
    assert BATCHER.collate_fn is None and BATCHER.copy().collate_fn is None

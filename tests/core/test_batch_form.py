"""Tests for datarax.core.batch_form: the batch form's key, spec and the one stack-and-pad."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datarax.core import batcher as batcher_module
from datarax.core.batch_form import VALID_MASK, batched_spec, stack_rows, validate_batch_size
from datarax.core.spec import spec_of


def _row(i):
    return {"x": np.full((2, 3), i, np.float32), "n": {"id": np.array([i, -i], np.int16)}, "flag": np.bool_(i % 2)}


def test_valid_mask_has_one_home():
    assert VALID_MASK == "valid_mask"
    # The batcher module keeps the old import path working, with the very same objects.
    assert batcher_module.VALID_MASK is VALID_MASK
    assert batcher_module.batched_spec is batched_spec
    assert batcher_module.validate_batch_size is validate_batch_size
    assert "VALID_MASK" not in batcher_module.__all__


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), extra=st.integers(0, 6))
def test_stack_rows_stacks_pads_and_masks(n, extra):
    rows = [_row(i) for i in range(n)]
    stacked, mask = stack_rows(rows, batch_size=n + extra)
    assert mask.dtype == jnp.bool_ and mask.tolist() == [True] * n + [False] * extra
    expected_ids = list(range(n)) + [n - 1] * extra  # padding repeats the last row
    assert np.asarray(stacked["x"])[:, 0, 0].tolist() == expected_ids
    assert np.asarray(stacked["n"]["id"])[:, 1].tolist() == [-i for i in expected_ids]
    # Exactly the batch form's spec for these rows (without the mask, which is returned apart).
    spec = batched_spec(spec_of(rows[0]), batch_size=n + extra)
    assert spec_of({**stacked, VALID_MASK: mask}) == spec


def test_stack_rows_defaults_to_no_padding_and_returns_jax_arrays():
    stacked, mask = stack_rows([{"a": np.int32(1)}, {"a": np.int32(2)}])
    assert isinstance(stacked["a"], jax.Array) and stacked["a"].tolist() == [1, 2]
    assert mask.tolist() == [True, True]


def test_stack_rows_does_not_modify_its_input():
    rows = [_row(0), _row(1)]
    stack_rows(rows, batch_size=5)
    assert len(rows) == 2


def test_stack_rows_python_scalars_stack_like_their_jax_dtype():
    # A Python int and an int32 scalar are the same leaf once stacked (int32), so they mix.
    stacked, _ = stack_rows([{"a": 1}, {"a": np.int32(2)}, {"a": jnp.int32(3)}])
    assert stacked["a"].dtype == jnp.int32 and stacked["a"].tolist() == [1, 2, 3]


def test_stack_rows_typed_prng_keys():
    keys = jax.random.split(jax.random.key(0), 2)
    stacked, mask = stack_rows([{"k": keys[0]}, {"k": keys[1]}], batch_size=3)
    assert stacked["k"].shape == (3,)
    np.testing.assert_array_equal(jax.random.key_data(stacked["k"][2]), jax.random.key_data(keys[1]))
    assert mask.tolist() == [True, True, False]


def test_stack_rows_works_on_tracers():
    @jax.jit
    def f(a, b):
        stacked, mask = stack_rows([{"v": a}, {"v": b}], batch_size=3)
        return stacked["v"], mask

    values, mask = f(jnp.float32(1), jnp.float32(2))
    assert values.tolist() == [1.0, 2.0, 2.0] and mask.tolist() == [True, True, False]


@pytest.mark.parametrize(
    "second, fragment",
    [
        ({"x": np.zeros(3, np.float32)}, "['x']: expected float32[2], got float32[3]"),
        ({"x": np.zeros(2, np.int32)}, "['x']: expected float32[2], got int32[2]"),
        ({"y": np.zeros(2, np.float32)}, "['x']: missing (expected float32[2]); ['y']: unexpected"),
        ({"x": np.zeros(2, np.float32), "z": np.int32(0)}, "['z']: unexpected (got int32[])"),
        ([np.zeros(2, np.float32)], "unexpected"),
    ],
)
def test_stack_rows_names_the_differing_row_and_path(second, fragment):
    rows = [{"x": np.zeros(2, np.float32)}] * 3 + [second]
    with pytest.raises(ValueError) as info:
        stack_rows(rows, owner="Demo", what="element", first_index=10)
    message = str(info.value)
    assert message.startswith("Demo: element 13 differs from element 10: ")
    assert fragment in message


def test_stack_rows_structure_only_difference_is_reported():
    with pytest.raises(ValueError, match=r"row 1 differs from row 0: structure: expected"):
        stack_rows([(np.zeros(2),), [np.zeros(2)]])


def test_stack_rows_non_numeric_leaf_is_type_error():
    with pytest.raises(TypeError, match=r"\['name'\].*'abc'"):
        stack_rows([{"name": "abc"}])
    # In a later row too, whatever the object.
    for leaf in ("abc", object()):
        with pytest.raises(TypeError, match=r"spec_of: leaf \['x'\] is"):
            stack_rows([{"x": np.float32(0)}, {"x": leaf}])


def test_stack_rows_empty_is_value_error():
    with pytest.raises(ValueError, match="Demo: no elements to stack; need at least one"):
        stack_rows([], owner="Demo", what="element")


@pytest.mark.parametrize("bad", [1, 0, -2, True, 2.5, "3"])
def test_stack_rows_batch_size_must_cover_the_rows(bad):
    expected = rf"Demo: batch_size must be an int >= len\(rows\) = 2, got {re.escape(repr(bad))}"
    with pytest.raises(ValueError, match=expected):
        stack_rows([{"a": np.int32(0)}] * 2, batch_size=bad, owner="Demo")


def test_stack_rows_accepts_numpy_batch_size():
    stacked, mask = stack_rows([{"a": np.int32(0)}], batch_size=np.int64(2))
    assert stacked["a"].shape == (2,) and mask.shape == (2,)

"""Tests for datarax.core.spec."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from datarax.core.spec import (
    add_leading_dim,
    check_conforms,
    conforms,
    element_spec_of_batch,
    spec_mismatches,
    spec_of,
    spec_to_str,
    zeros_like_spec,
)

SDS = jax.ShapeDtypeStruct


def _as_tuples(spec):
    """Spec leaves as comparable (shape, dtype) tuples."""
    return jax.tree.map(lambda s: (tuple(s.shape), np.dtype(s.dtype)), spec)


# --- spec_of -------------------------------------------------------------------------------------


def test_spec_of_numpy_jax_and_nested_containers():
    tree = {
        "image": np.zeros((8, 8, 3), np.uint8),
        "pair": (jnp.ones((2,), jnp.float32), [np.arange(4, dtype=np.int64)]),
    }
    spec = spec_of(tree)
    assert all(isinstance(leaf, SDS) for leaf in jax.tree.leaves(spec))
    assert jax.tree.structure(spec) == jax.tree.structure(tree)
    assert _as_tuples(spec) == {
        "image": ((8, 8, 3), np.dtype(np.uint8)),
        "pair": (((2,), np.dtype(np.float32)), [((4,), np.dtype(np.int64))]),
    }


def test_spec_of_python_scalars_use_jax_default_dtypes():
    spec = spec_of({"i": 3, "f": 1.5, "b": True, "np": np.float32(2.0)})
    assert _as_tuples(spec) == {
        "i": ((), jnp.asarray(3).dtype),
        "f": ((), jnp.asarray(1.5).dtype),
        "b": ((), np.dtype(bool)),
        "np": ((), np.dtype(np.float32)),
    }


def test_spec_of_is_idempotent_on_specs_and_keeps_exact_array_dtypes():
    spec = {"x": SDS((3, 2), np.float64)}
    assert _as_tuples(spec_of(spec)) == _as_tuples(spec)
    assert spec_of(np.zeros(3)).dtype == np.float64  # no silent canonicalization of arrays


def test_spec_of_works_on_tracers():
    seen = {}

    def f(tree):
        seen["spec"] = spec_of(tree)
        return tree

    jax.jit(f)({"x": jnp.zeros((5, 2), jnp.int32)})
    assert _as_tuples(seen["spec"]) == {"x": ((5, 2), np.dtype(np.int32))}


def test_spec_of_rejects_non_numeric_leaf_naming_its_path():
    with pytest.raises(TypeError, match=r"\['meta'\]\['name'\].*'abc'"):
        spec_of({"x": np.zeros(2), "meta": {"name": "abc"}})


# --- element_spec_of_batch -----------------------------------------------------------------------


def test_element_spec_of_batch_drops_leading_axis():
    batch = {"image": np.zeros((4, 8, 8), np.uint8), "label": jnp.zeros((4,), jnp.int32)}
    spec = element_spec_of_batch(batch)
    assert _as_tuples(spec) == {
        "image": ((8, 8), np.dtype(np.uint8)),
        "label": ((), np.dtype(np.int32)),
    }


def test_element_spec_of_batch_accepts_specs():
    spec = element_spec_of_batch({"x": SDS((16, 3), np.float32)})
    assert _as_tuples(spec) == {"x": ((3,), np.dtype(np.float32))}


def test_element_spec_of_batch_rejects_0d_leaf_naming_path():
    with pytest.raises(ValueError, match=r"\['label'\] is 0-d"):
        element_spec_of_batch({"image": np.zeros((4, 2)), "label": np.int32(1)})


def test_element_spec_of_batch_rejects_inconsistent_leading_sizes():
    with pytest.raises(ValueError, match=r"\['b'\] has leading size 5.*\['a'\] has leading size 4"):
        element_spec_of_batch({"a": np.zeros((4, 2)), "b": np.zeros((5,))})


# --- add_leading_dim -----------------------------------------------------------------------------


def test_add_leading_dim_prepends_size_to_every_leaf():
    spec = {"image": SDS((8, 8), np.uint8), "label": SDS((), np.int32)}
    batched = add_leading_dim(spec, 32)
    assert _as_tuples(batched) == {
        "image": ((32, 8, 8), np.dtype(np.uint8)),
        "label": ((32,), np.dtype(np.int32)),
    }
    assert _as_tuples(element_spec_of_batch(batched)) == _as_tuples(spec)


def test_add_leading_dim_accepts_numpy_integer_and_arrays():
    batched = add_leading_dim({"x": np.zeros(3, np.float32)}, np.int64(2))
    assert _as_tuples(batched) == {"x": ((2, 3), np.dtype(np.float32))}
    assert type(batched["x"].shape[0]) is int


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "4", None])
def test_add_leading_dim_rejects_non_positive_or_non_integer_size(bad):
    with pytest.raises(ValueError, match=r"size.*batch size.*" + repr(bad).replace(".", r"\.")):
        add_leading_dim({"x": SDS((1,), np.float32)}, bad)


# --- conforms / check_conforms / spec_mismatches -------------------------------------------------

SPEC = {"image": SDS((8, 8), np.uint8), "label": SDS((), np.int32)}


def test_conforms_true_for_matching_arrays_and_specs():
    assert conforms({"image": np.zeros((8, 8), np.uint8), "label": np.int32(0)}, SPEC)
    assert conforms({"image": jnp.zeros((8, 8), jnp.uint8), "label": jnp.int32(0)}, SPEC)
    assert conforms(SPEC, SPEC)
    assert spec_mismatches(SPEC, SPEC) == []


@pytest.mark.parametrize(
    "tree",
    [
        {"image": np.zeros((8, 7), np.uint8), "label": np.int32(0)},  # shape
        {"image": np.zeros((8, 8), np.float32), "label": np.int32(0)},  # dtype
        {"image": np.zeros((8, 8), np.uint8)},  # missing key
        {"image": np.zeros((8, 8), np.uint8), "label": np.int32(0), "x": np.zeros(1)},  # extra
        [np.zeros((8, 8), np.uint8), np.int32(0)],  # different container
    ],
)
def test_conforms_false_for_any_mismatch(tree):
    assert not conforms(tree, SPEC)
    with pytest.raises(ValueError):
        check_conforms(tree, SPEC)


def test_check_conforms_passes_silently_on_match():
    assert check_conforms({"image": np.zeros((8, 8), np.uint8), "label": np.int32(0)}, SPEC) is None


def test_check_conforms_lists_every_mismatch_with_expected_and_actual():
    tree = {"image": np.zeros((8, 7), np.float32), "label": np.int32(0), "extra": np.zeros(2)}
    with pytest.raises(ValueError) as info:
        check_conforms(tree, {**SPEC, "mask": SDS((), bool)}, what="output of op 'crop'")
    msg = str(info.value)
    assert msg.startswith("output of op 'crop' does not match its spec:")
    assert "['image']: expected uint8[8,8], got float32[8,7]" in msg
    assert "['mask']: missing (expected bool[])" in msg
    assert "['extra']: unexpected (got float64[2])" in msg
    assert "['label']" not in msg


def test_spec_mismatches_reports_container_type_difference():
    problems = spec_mismatches((np.zeros(2),), [SDS((2,), np.float64)])
    assert len(problems) == 1 and problems[0].startswith("structure: expected")


def test_check_conforms_default_what_and_root_path():
    expected = r"^value does not match its spec:\n  <root>: expected int32\[\], got int32\[3\]$"
    with pytest.raises(ValueError, match=expected):
        check_conforms(np.zeros(3, np.int32), SDS((), np.int32))


def test_eval_shape_output_conforms_to_spec():
    element_spec = {"x": SDS((4,), np.float32)}
    out = jax.eval_shape(lambda e: {"x": e["x"] * 2, "s": e["x"].sum()}, element_spec)
    assert conforms(out, {"x": SDS((4,), np.float32), "s": SDS((), np.float32)})


# --- zeros_like_spec / spec_to_str ---------------------------------------------------------------


def test_zeros_like_spec_builds_numpy_zeros():
    arrays = zeros_like_spec(SPEC)
    assert isinstance(arrays["image"], np.ndarray) and isinstance(arrays["label"], np.ndarray)
    assert arrays["image"].shape == (8, 8) and arrays["image"].dtype == np.uint8
    assert arrays["label"].shape == () and arrays["label"].dtype == np.int32
    assert not arrays["image"].any() and arrays["label"] == 0
    assert conforms(arrays, SPEC)


def test_spec_to_str_is_compact():
    assert spec_to_str(SPEC) == "{'image': uint8[8,8], 'label': int32[]}"
    assert spec_to_str({"a": (SDS((1, 2), np.float32), [SDS((3,), bool)])}) == ("{'a': (float32[1,2], [bool[3]])}")
    assert spec_to_str(SDS((), np.int8)) == "int8[]"
    assert spec_to_str({"x": np.zeros((2, 5), np.float16)}) == "{'x': float16[2,5]}"


# --- properties ----------------------------------------------------------------------------------

_DTYPES = st.sampled_from([np.uint8, np.int32, np.float32, np.bool_, np.int16])
_SHAPES = st.lists(st.integers(0, 4), max_size=3).map(tuple)


@given(
    st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), st.tuples(_SHAPES, _DTYPES), max_size=4),
    st.integers(1, 64),
)
def test_property_batch_then_unbatch_round_trips(leaves, size):
    spec = {k: SDS(shape, dtype) for k, (shape, dtype) in leaves.items()}
    batched = add_leading_dim(spec, size)
    assert all(s.shape[0] == size for s in jax.tree.leaves(batched))
    assert _as_tuples(element_spec_of_batch(batched)) == _as_tuples(spec)
    assert conforms(zeros_like_spec(batched), batched)
    assert conforms(zeros_like_spec(spec), spec)


def test_typed_prng_keys_are_supported():
    key = jax.random.key(0)
    assert spec_to_str({"k": key}) == f"{{'k': {key.dtype}[]}}"
    assert conforms({"k": jax.random.split(key, 3)}, add_leading_dim(spec_of({"k": key}), 3))
    assert spec_mismatches(jax.random.key_data(key), spec_of(key)) == [f"<root>: expected {key.dtype}[], got uint32[2]"]

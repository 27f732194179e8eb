"""Tests for datarax.core.element_batch."""

import dataclasses
import doctest
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import datarax.core.element_batch as element_batch_module
import datarax.core.spec as spec_module
from datarax.core.batch_form import VALID_MASK
from datarax.core.element_batch import Batch, Element


def _element(i, **extra):
    return Element(
        {"x": np.full((2, 3), i, np.float32), "y": np.int32(i), **extra},
        state={"count": np.int32(10 * i)},
    )


@pytest.mark.parametrize("module", [element_batch_module, spec_module])
def test_doctests_run_and_pass(module):
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0


# --- Element -------------------------------------------------------------------------------------


def test_element_defaults_and_access():
    x = np.arange(3)
    e = Element({"x": x})
    assert e.state == {} and e.metadata is None
    assert e["x"] is x
    assert list(e.keys()) == ["x"]
    with pytest.raises(KeyError):
        e["missing"]


def test_element_is_frozen_and_owns_its_dict():
    source = {"x": np.zeros(2)}
    e = Element(source)
    source["y"] = np.ones(2)
    assert list(e.keys()) == ["x"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.data = {}


def test_element_update_data_and_state_return_new_elements():
    e = Element({"x": np.zeros(2)}, state={"n": np.int32(0)})
    e2 = e.update_data({"x": np.ones(2), "y": np.int32(5)})
    e3 = e.update_state({"n": np.int32(1), "m": np.int32(2)})
    assert sorted(e2.keys()) == ["x", "y"] and e2["x"].tolist() == [1.0, 1.0]
    assert e3.state["n"] == 1 and e3.state["m"] == 2
    assert list(e.keys()) == ["x"] and e["x"].tolist() == [0.0, 0.0] and e.state["n"] == 0
    assert e3["x"] is e["x"]


def test_element_replace():
    e = Element({"x": np.zeros(2)})
    e2 = e.replace(metadata={"index": np.int32(7)})
    assert e2.metadata["index"] == 7 and e.metadata is None
    assert e2["x"] is e["x"]


def test_element_rejects_reserved_key_and_non_mapping():
    with pytest.raises(ValueError, match="'valid_mask' is reserved"):
        Element({"valid_mask": np.zeros(1, bool)})
    e = Element({"x": np.zeros(1)})
    with pytest.raises(ValueError, match="'valid_mask' is reserved"):
        e.update_data({"valid_mask": np.ones(1, bool)})
    with pytest.raises(TypeError, match="data must be a dict"):
        Element([np.zeros(1)])
    with pytest.raises(TypeError, match="state must be a dict"):
        Element({"x": np.zeros(1)}, state=3)


def test_element_is_a_pytree_with_readable_paths():
    e = Element({"x": np.float32(1.0)}, state={"s": np.int32(2)}, metadata={"i": np.int32(3)})
    leaves = jax.tree_util.tree_flatten_with_path(e)[0]
    paths = [jax.tree_util.keystr(p) for p, _ in leaves]
    assert paths == [".data['x']", ".state['s']", ".metadata['i']"]
    doubled = jax.tree.map(lambda v: v * 2, e)
    assert isinstance(doubled, Element)
    assert (doubled["x"], doubled.state["s"], doubled.metadata["i"]) == (2.0, 4, 6)


def test_element_jit_round_trip():
    e = Element({"x": jnp.arange(3.0)}, state={"n": jnp.int32(1)})

    @jax.jit
    def step(el):
        return el.update_data({"y": el["x"].sum()}).update_state({"n": el.state["n"] + 1})

    out = step(e)
    assert isinstance(out, Element)
    assert out["y"] == 3.0 and out.state["n"] == 2 and out["x"].tolist() == [0.0, 1.0, 2.0]


def test_element_repr_is_compact():
    e = Element({"x": np.zeros((2, 3), np.float32)})
    assert repr(e) == "Element(data={'x': float32[2,3]}, state={}, metadata=None)"


# --- Batch construction --------------------------------------------------------------------------


def test_batch_defaults_mask_to_all_true():
    b = Batch({"x": np.zeros((4, 2)), "y": np.arange(4)})
    assert isinstance(b.valid_mask, jax.Array)
    assert b.valid_mask.dtype == jnp.bool_ and b.valid_mask.tolist() == [True] * 4
    assert b.batch_size == 4 and b.num_valid == 4 and isinstance(b.num_valid, int)
    assert b.states == {} and b.metadata is None
    assert sorted(b.keys()) == ["x", "y"] and b["y"].tolist() == [0, 1, 2, 3]


def test_batch_keeps_arrays_as_given():
    x, mask = np.zeros((3, 2)), np.array([True, False, True])
    b = Batch({"x": x}, valid_mask=mask)
    assert b.data["x"] is x and b.valid_mask is mask
    assert b.num_valid == 2


def test_batch_mismatched_leading_dim_names_key_and_both_sizes():
    expected = r"data\['y'\] has leading dimension 5, but the batch size is 4 \(from data\['x'\]\)"
    with pytest.raises(ValueError, match=expected):
        Batch({"x": np.zeros((4, 2)), "y": np.zeros(5)})


def test_batch_mask_length_disagreeing_with_data():
    expected = r"data\['x'\] has leading dimension 4, but the batch size is 3 \(from valid_mask\)"
    with pytest.raises(ValueError, match=expected):
        Batch({"x": np.zeros((4, 2))}, valid_mask=np.ones(3, bool))


@pytest.mark.parametrize("mask", [np.ones(4, np.int32), np.ones((4, 1), bool), np.bool_(True)])
def test_batch_rejects_bad_mask(mask):
    with pytest.raises(ValueError, match=r"valid_mask must be a bool array of shape \(batch_size"):
        Batch({"x": np.zeros((4, 2))}, valid_mask=mask)


def test_batch_accepts_list_mask():
    b = Batch({"x": np.zeros((2, 1))}, valid_mask=[True, False])
    assert b.valid_mask.tolist() == [True, False] and b.num_valid == 1


def test_batch_rejects_0d_leaf_and_reserved_key():
    with pytest.raises(ValueError, match=r"data\['s'\] is 0-d"):
        Batch({"x": np.zeros((4, 2)), "s": np.float32(1.0)})
    with pytest.raises(ValueError, match="'valid_mask' is reserved"):
        Batch({"x": np.zeros(2), "valid_mask": np.ones(2, bool)})


def test_batch_validates_states_and_metadata_leading_dims():
    with pytest.raises(ValueError, match=r"states\['n'\] has leading dimension 3, but .* is 2"):
        Batch({"x": np.zeros(2)}, states={"n": np.zeros(3)})
    with pytest.raises(ValueError, match=r"metadata\['index'\] has leading dimension 1, .* 2"):
        Batch({"x": np.zeros(2)}, metadata={"index": np.zeros(1)})
    b = Batch({"x": np.zeros(2)}, states={"n": np.zeros(2)}, metadata={"index": np.arange(2)})
    assert b.states["n"].shape == (2,) and b.metadata["index"].tolist() == [0, 1]


def test_batch_size_from_mask_when_no_arrays_else_error():
    assert Batch({}, valid_mask=np.ones(3, bool)).batch_size == 3
    with pytest.raises(ValueError, match="cannot infer the batch size"):
        Batch({})


def test_batch_is_frozen_and_replace_revalidates():
    b = Batch({"x": np.zeros((2, 3))})
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.valid_mask = None
    b2 = b.replace(valid_mask=np.array([True, False]))
    assert b2.num_valid == 1 and b2.data["x"] is b.data["x"] and b.num_valid == 2
    with pytest.raises(ValueError, match="leading dimension 3"):
        b.replace(data={"x": np.zeros(3)})


# --- from_elements -------------------------------------------------------------------------------


def test_from_elements_stacks_data_and_state_as_jax_arrays():
    elements = [_element(i) for i in range(3)]
    b = Batch.from_elements(elements)
    assert b.batch_size == 3 and b.num_valid == 3
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(b))
    assert b["x"].shape == (3, 2, 3) and b["x"].dtype == jnp.float32
    assert b["y"].tolist() == [0, 1, 2] and b.states["count"].tolist() == [0, 10, 20]
    assert b.valid_mask.tolist() == [True, True, True] and b.metadata is None


def test_from_elements_pads_with_copies_of_last_element():
    elements = [_element(i) for i in (4, 5)]
    b = Batch.from_elements(elements, batch_size=5)
    assert b.batch_size == 5 and b.num_valid == 2
    assert b.valid_mask.tolist() == [True, True, False, False, False]
    for row in range(2, 5):
        np.testing.assert_array_equal(b["x"][row], elements[-1]["x"])
        assert b["y"][row] == 5 and b.states["count"][row] == 50
    np.testing.assert_array_equal(b["x"][0], elements[0]["x"])


def test_from_elements_with_mask_appends_false_padding():
    b = Batch.from_elements([_element(0), _element(1)], batch_size=3, valid_mask=[False, True])
    assert b.valid_mask.tolist() == [False, True, False]
    assert [e["y"].item() for e in b.to_elements()] == [1]


def test_from_elements_rejects_bad_mask():
    with pytest.raises(ValueError, match=r"valid_mask must be a bool array of shape \(2,\).*int32"):
        Batch.from_elements([_element(0), _element(1)], valid_mask=np.ones(2, np.int32))
    with pytest.raises(ValueError, match=r"shape \(2,\) \(one entry per element\), got bool\[3\]"):
        Batch.from_elements([_element(0), _element(1)], batch_size=3, valid_mask=[True] * 3)


def test_from_elements_stacks_metadata():
    elements = [_element(i).replace(metadata={"index": np.int32(i)}) for i in range(2)]
    b = Batch.from_elements(elements, batch_size=3)
    assert b.metadata["index"].tolist() == [0, 1, 1]
    assert b.get_element(1).metadata["index"] == 1


@pytest.mark.parametrize("batch_size", [1, 0, -1, 2.5, True])
def test_from_elements_rejects_bad_batch_size(batch_size):
    expected = r"Batch.from_elements: batch_size must be an int >= len\(elements\) = 2, got "
    expected += re.escape(str(batch_size))
    with pytest.raises(ValueError, match=expected):
        Batch.from_elements([_element(0), _element(1)], batch_size=batch_size)


def test_from_elements_rejects_empty_and_non_elements():
    with pytest.raises(ValueError, match="elements is empty"):
        Batch.from_elements([])
    with pytest.raises(TypeError, match="element 1 is a dict"):
        Batch.from_elements([_element(0), {"x": np.zeros((2, 3))}])


def test_from_elements_names_first_mismatching_element_and_key():
    good = [_element(i) for i in range(3)]
    bad_dtype = good[:2] + [
        _element(2).update_data({"y": np.float32(2)}),
        _element(3).update_data({"x": np.zeros(1)}),
    ]
    expected = r"element 2 differs from element 0: \.data\['y'\]: expected int32\[\], got float32\[\]"
    with pytest.raises(ValueError, match=expected):
        Batch.from_elements(bad_dtype)
    expected = (
        r"element 1 differs from element 0: "
        r"\.data\['x'\]: expected float32\[2,3\], got float32\[4\]"
    )
    with pytest.raises(ValueError, match=expected):
        Batch.from_elements([good[0], _element(1).update_data({"x": np.zeros(4, np.float32)})])
    with pytest.raises(ValueError, match=r"element 1 .*: \.data\['z'\]: unexpected"):
        Batch.from_elements([good[0], _element(1, z=np.zeros(1))])
    with pytest.raises(ValueError, match=r"element 1 .*: \.data\['z'\]: missing"):
        Batch.from_elements([_element(0, z=np.zeros(1)), good[1]])
    with pytest.raises(ValueError, match=r"element 1 .*: \.state\['count'\]"):
        Batch.from_elements([good[0], good[1].update_state({"count": np.float32(0)})])
    with pytest.raises(ValueError, match=r"element 1 .*: \.metadata\['i'\]: unexpected"):
        Batch.from_elements([good[0], good[1].replace(metadata={"i": np.int32(1)})])


# --- dict form -----------------------------------------------------------------------------------


def test_to_dict_is_the_plain_form_without_copies():
    b = Batch.from_elements([_element(i) for i in range(2)], batch_size=4)
    d = b.to_dict()
    assert set(d) == {"x", "y", VALID_MASK}
    assert d["x"] is b.data["x"] and d["y"] is b.data["y"] and d[VALID_MASK] is b.valid_mask
    assert d[VALID_MASK].tolist() == [True, True, False, False]


def test_from_dict_wraps_the_same_arrays():
    x, mask = np.zeros((3, 2)), np.array([True, True, False])
    d = {"x": x, VALID_MASK: mask}
    b = Batch.from_dict(d)
    assert b.data["x"] is x and b.valid_mask is mask and VALID_MASK not in b.data
    back = b.to_dict()
    assert set(back) == set(d) and all(back[k] is d[k] for k in d)


def test_from_dict_round_trip_with_jax_arrays_and_extras():
    d = {"x": jnp.ones((2, 2)), VALID_MASK: jnp.array([True, False])}
    b = Batch.from_dict(d, states={"n": jnp.zeros(2)}, metadata={"i": jnp.arange(2)})
    assert b.states["n"].shape == (2,) and b.metadata["i"].tolist() == [0, 1]
    assert all(b.to_dict()[k] is d[k] for k in d)


def test_from_dict_requires_valid_mask():
    with pytest.raises(ValueError, match=r"reserved key 'valid_mask', got keys \['x'\]"):
        Batch.from_dict({"x": np.zeros(2)})
    with pytest.raises(ValueError, match="got keys list"):
        Batch.from_dict([np.zeros(2)])


# --- back to elements ----------------------------------------------------------------------------


def test_get_element_returns_row_views():
    elements = [_element(i) for i in range(3)]
    b = Batch.from_elements(elements)
    e = b.get_element(1)
    assert isinstance(e, Element)
    np.testing.assert_array_equal(e["x"], elements[1]["x"])
    assert e["y"] == 1 and e.state["count"] == 10 and e.metadata is None
    assert b.get_element(-1)["y"] == 2
    for bad in (3, -4):
        with pytest.raises(IndexError, match=f"index {bad} is out of range for batch_size 3"):
            b.get_element(bad)


def test_to_elements_skips_padding_unless_asked():
    elements = [_element(i) for i in range(2)]
    b = Batch.from_elements(elements, batch_size=4)
    valid = b.to_elements()
    everything = b.to_elements(valid_only=False)
    assert [e["y"].item() for e in valid] == [0, 1]
    assert [e["y"].item() for e in everything] == [0, 1, 1, 1]
    for original, restored in zip(elements, valid):
        np.testing.assert_array_equal(original["x"], restored["x"])
        assert original.state["count"] == restored.state["count"]


# --- transformations -----------------------------------------------------------------------------


def test_batch_jit_round_trip():
    b = Batch.from_elements([_element(i) for i in range(3)], batch_size=4)

    @jax.jit
    def step(batch):
        assert isinstance(batch, Batch) and batch.batch_size == 4
        return batch.replace(data={**batch.data, "x": batch["x"] * 2}).replace(
            states={"count": batch.states["count"] + batch.num_valid}
        )

    out = step(b)
    assert isinstance(out, Batch)
    np.testing.assert_array_equal(out["x"], b["x"] * 2)
    assert out["y"].tolist() == [0, 1, 2, 2]
    assert out.states["count"].tolist() == [3, 13, 23, 23]
    assert out.valid_mask.tolist() == [True, True, True, False]


def test_batch_validates_shapes_under_jit():
    @jax.jit
    def bad(x):
        return Batch({"x": x, "y": x[:2]})

    with pytest.raises(ValueError, match=r"data\['y'\] has leading dimension 2, but .* is 3"):
        bad(jnp.zeros(3))


def test_batch_built_inside_jit_defaults_mask():
    out = jax.jit(lambda x: Batch({"x": x}))(jnp.arange(3))
    assert isinstance(out, Batch) and out.valid_mask.tolist() == [True] * 3


def test_batch_pytree_paths_and_vmap():
    b = Batch({"x": jnp.arange(6.0).reshape(3, 2)}, states={"n": jnp.arange(3)})
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(b)[0]]
    assert paths == [".data['x']", ".valid_mask", ".states['n']"]
    row_sums = jax.vmap(lambda row: row["x"].sum() + row.states["n"])(b)
    assert row_sums.tolist() == [1.0, 6.0, 11.0]
    # Tree utilities may rebuild a Batch with arbitrary leaves; that must not trip validation.
    placeholders = jax.tree.map(lambda _: None, b)
    assert isinstance(placeholders, Batch) and placeholders.data == {"x": None}


def test_batch_repr_is_compact():
    b = Batch({"x": np.zeros((2, 3), np.float32)}, metadata={"i": np.arange(2, dtype=np.int32)})
    assert repr(b) == ("Batch(batch_size=2, data={'x': float32[2,3]}, states={}, metadata={'i': int32[2]})")


def test_from_elements_with_prng_key_and_python_int_metadata():
    keys = jax.random.split(jax.random.key(0), 2)
    elements = [Element({"x": np.float32(i)}, metadata={"rng": keys[i], "index": i}) for i in range(2)]
    b = Batch.from_elements(elements, batch_size=3)
    assert b.metadata["index"].tolist() == [0, 1, 1]
    assert b.metadata["rng"].shape == (3,)
    restored = b.get_element(2).metadata["rng"]
    np.testing.assert_array_equal(jax.random.key_data(restored), jax.random.key_data(keys[1]))


# --- Batch(list of Elements) ---------------------------------------------------------------------


def _assert_same_batch(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("container", [list, tuple])
def test_batch_of_elements_is_from_elements(container):
    elements = [_element(i).replace(metadata={"index": np.int32(i)}) for i in range(3)]
    b = Batch(container(elements))
    _assert_same_batch(b, Batch.from_elements(elements))
    assert b.batch_size == 3 and b.num_valid == 3
    assert b["y"].tolist() == [0, 1, 2] and b.states["count"].tolist() == [0, 10, 20]
    assert b.metadata["index"].tolist() == [0, 1, 2]
    assert isinstance(b.data, dict) and set(b.keys()) == {"x", "y"}


def test_batch_of_elements_with_mask():
    b = Batch([_element(0), _element(1)], valid_mask=[True, False])
    assert b.valid_mask.tolist() == [True, False] and b.num_valid == 1
    assert [e["y"].item() for e in b.to_elements()] == [0]


def test_batch_of_elements_rejects_bad_mask():
    with pytest.raises(ValueError, match=r"Batch: valid_mask must be a bool array of shape \(2,\) .*bool\[3\]"):
        Batch([_element(0), _element(1)], valid_mask=[True, True, False])
    with pytest.raises(ValueError, match=r"shape \(2,\) .*got int32\[2\]"):
        Batch([_element(0), _element(1)], valid_mask=np.ones(2, np.int32))


def test_batch_of_elements_errors_name_the_batch_and_element():
    with pytest.raises(ValueError, match="Batch: data is an empty list; need at least one Element"):
        Batch([])
    with pytest.raises(TypeError, match="Batch: element 1 is a dict, not an Element"):
        Batch([_element(0), {"x": np.zeros((2, 3))}])
    with pytest.raises(ValueError, match=r"Batch: element 1 differs from element 0: \.data\['y'\]"):
        Batch([_element(0), _element(1).update_data({"y": np.float32(1)})])
    with pytest.raises(ValueError, match="states and metadata are stacked from the elements"):
        Batch([_element(0)], states={"count": np.zeros(1)})
    with pytest.raises(ValueError, match="states and metadata are stacked from the elements"):
        Batch([_element(0)], metadata={"i": np.zeros(1)})


def test_batch_of_elements_is_a_working_pytree():
    b = Batch([_element(i) for i in range(3)], valid_mask=[True, True, False])
    # tree_map and flatten/unflatten round trips keep a Batch with the same arrays.
    mapped = jax.tree.map(lambda v: v, b)
    assert isinstance(mapped, Batch)
    _assert_same_batch(mapped, b)
    leaves, treedef = jax.tree_util.tree_flatten(b)
    _assert_same_batch(jax.tree_util.tree_unflatten(treedef, leaves), b)
    # jit round trip.
    out = jax.jit(lambda batch: batch.replace(data={**batch.data, "y": batch["y"] + 1}))(b)
    assert isinstance(out, Batch) and out["y"].tolist() == [1, 2, 3]
    assert out.valid_mask.tolist() == [True, True, False]
    # vmap over rows.
    per_row = jax.vmap(lambda row: row["x"].sum() + row.states["count"])(b)
    assert per_row.tolist() == [0.0, 16.0, 32.0]


def test_batch_of_elements_built_inside_jit():
    @jax.jit
    def build(x):
        return Batch([Element({"x": x}), Element({"x": x * 2})])

    out = build(jnp.arange(3.0))
    assert isinstance(out, Batch) and out["x"].tolist() == [[0.0, 1.0, 2.0], [0.0, 2.0, 4.0]]


def test_dict_form_of_the_constructor_is_unchanged():
    x, mask = np.zeros((2, 3)), np.array([True, False])
    b = Batch({"x": x}, valid_mask=mask)
    assert b.data["x"] is x and b.valid_mask is mask

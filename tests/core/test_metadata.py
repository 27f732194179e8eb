"""Tests for datarax.core.metadata."""

import doctest
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from datarax.core import metadata as metadata_module
from datarax.core.metadata import (
    KEY_WIDTH,
    Metadata,
    MetadataManager,
    RecordMetadata,
    batch_metadata,
    create_metadata,
    split_rng_tree,
    update_metadata_batch,
)


def keys_equal(a, b):
    """Compares typed or legacy keys by their raw data."""
    data = lambda k: jax.random.key_data(k) if jnp.issubdtype(k.dtype, jax.dtypes.prng_key) else k  # noqa: E731
    return a.dtype == b.dtype and np.array_equal(np.asarray(data(a)), np.asarray(data(b)))


def test_module_docstring_examples_pass():
    result = doctest.testmod(metadata_module)
    assert result.attempted >= 4
    assert result.failed == 0


# --------------------------------------------------------------------------- RecordMetadata


def test_record_metadata_defaults():
    rm = RecordMetadata(index=2, record_key="a")
    assert (rm.index, rm.record_key, rm.rng_key, rm.epoch, rm.global_step) == (2, "a", None, 0, 0)
    assert rm.batch_idx is None and rm.shard_id is None and rm.source_info is None


def test_record_metadata_pytree_round_trip():
    rm = RecordMetadata(
        index=1,
        record_key="k",
        rng_key=jax.random.key(0),
        epoch=2,
        global_step=3,
        batch_idx=4,
        shard_id=5,
        source_info={"ds": "mnist"},
    )
    leaves, treedef = jax.tree_util.tree_flatten(rm)
    assert len(leaves) == 6  # index, rng_key, epoch, global_step, batch_idx, shard_id
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert (back.index, back.epoch, back.global_step, back.batch_idx, back.shard_id) == (1, 2, 3, 4, 5)
    assert back.record_key == "k" and back.source_info == {"ds": "mnist"}
    assert keys_equal(back.rng_key, rm.rng_key)


def test_record_metadata_key_and_source_info_are_static():
    a = RecordMetadata(index=0, record_key="a", source_info={"x": [1]})
    same = RecordMetadata(index=9, record_key="a", source_info={"x": [1]})
    other = RecordMetadata(index=0, record_key="b", source_info={"x": [1]})
    struct = jax.tree_util.tree_structure
    assert struct(a) == struct(same)
    assert struct(a) != struct(other)
    out = jax.jit(lambda r: r.index * 2)(RecordMetadata(index=3, record_key="a", source_info={"x": [1]}))
    assert int(out) == 6


# --------------------------------------------------------------------------- Metadata basics


def test_metadata_defaults_and_key_encoding():
    md = Metadata()
    assert (md.index, md.epoch, md.global_step, md.batch_idx, md.shard_id) == (0, 0, 0, None, None)
    assert md.rng_key is None and md._encoded_key is None and md.entry_key is None
    md = Metadata(key="img_1")
    assert md.entry_key == "img_1"
    assert KEY_WIDTH == 128
    assert md._encoded_key.shape == (128,) and md._encoded_key.dtype == jnp.uint8
    assert not hasattr(Metadata, "key")  # the InitVar default is not left as a misleading attribute


@pytest.mark.parametrize("key", ["", "a b", "ünïcødé ✓", "x" * 128, "é" * 64, "ab\x01"])
def test_key_encoding_round_trips_edge_cases(key):
    md = Metadata(key=key)
    assert md.entry_key == key
    assert md._encoded_key.shape == (128,)
    assert md.to_dict()["key"] == key


@given(st.text(max_size=128).filter(lambda t: "\x00" not in t and len(t.encode("utf-8")) <= 128))
def test_key_encoding_round_trips_any_text(key):
    md = Metadata(key=key)
    assert md.entry_key == key
    assert md._encoded_key.shape == (128,)  # same shape for every key


def test_key_too_long_raises_with_length_and_limit():
    with pytest.raises(ValueError, match=r"Metadata: key .* is 129 bytes long; the limit is 128 bytes"):
        Metadata(key="x" * 129)
    with pytest.raises(ValueError, match=r"is 130 bytes long; the limit is 128"):
        Metadata(key="é" * 65)  # counts UTF-8 bytes, not characters
    with pytest.raises(ValueError, match=r"is 200 bytes long"):
        Metadata().replace(key="y" * 200)
    with pytest.raises(ValueError, match=r"is 129 bytes long"):
        create_metadata(record_key="z" * 129)
    # The message shows the start of a long key, not all of it.
    with pytest.raises(ValueError) as info:
        Metadata(key="k" * 1000)
    assert len(str(info.value)) < 150


@pytest.mark.parametrize("key", ["a\x00", "\x00", "a\x00b"])
def test_key_with_nul_is_rejected(key):
    # NUL pads the fixed-width encoding, so such a key could not decode to itself.
    with pytest.raises(ValueError, match="NUL"):
        Metadata(key=key)


@pytest.mark.parametrize("key", [5, b"bytes", ["a"]])
def test_non_string_key_is_type_error(key):
    with pytest.raises(TypeError, match=r"Metadata: key must be a str or None, got"):
        Metadata(key=key)


def test_key_and_encoded_key_together_rejected():
    with pytest.raises(ValueError, match="either key or _encoded_key"):
        Metadata(key="a", _encoded_key=Metadata(key="b")._encoded_key)


def test_negative_int_field_rejected():
    with pytest.raises(ValueError, match="Metadata: epoch must be a non-negative int, got -1"):
        Metadata(epoch=-1)


def test_entry_key_errors_when_traced_or_batched():
    md = Metadata(key="a")
    with pytest.raises(TypeError, match="outside jit"):
        jax.jit(lambda m: m.entry_key)(md)
    with pytest.raises(ValueError, match="unbatched"):
        _ = batch_metadata([md, md]).entry_key


def test_metadata_is_frozen():
    with pytest.raises(AttributeError):
        Metadata().index = 3


# --------------------------------------------------------------------------- Metadata methods


def test_replace_fields_and_key():
    md = Metadata(index=1, key="a", source_info={"s": 1})
    new = md.replace(index=5, key="b")
    assert new.index == 5 and new.entry_key == "b" and new.source_info == {"s": 1}
    assert md.index == 1 and md.entry_key == "a"  # original untouched
    assert md.replace(key=None).entry_key is None


def test_replace_unknown_field_raises():
    with pytest.raises(ValueError, match=r"unknown Metadata fields: \['bogus'\]"):
        Metadata().replace(bogus=1)


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
def test_split_rng(make_key):
    md = Metadata(rng_key=make_key(0))
    keys = md.split_rng(3)
    assert len(keys) == 3
    assert all(k.dtype == md.rng_key.dtype for k in keys)
    assert not keys_equal(keys[0], keys[1])
    assert keys_equal(md.split_rng(3)[2], keys[2])  # deterministic
    assert len(md.split_rng()) == 2


def test_split_rng_without_key_and_invalid_num():
    assert Metadata().split_rng(4) == [None] * 4
    with pytest.raises(ValueError, match="Metadata.split_rng: num must be a positive int, got 0"):
        Metadata().split_rng(0)
    with pytest.raises(ValueError, match="num must be a positive int, got True"):
        Metadata().split_rng(True)


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
def test_next_rng(make_key):
    md = Metadata(rng_key=make_key(1), index=4)
    nxt = md.next_rng()
    assert nxt.index == 4
    assert not keys_equal(nxt.rng_key, md.rng_key)
    assert keys_equal(nxt.rng_key, md.next_rng().rng_key)
    empty = Metadata()
    assert empty.next_rng() is empty


def test_increment_step_epoch_batch_and_shard():
    md = Metadata(global_step=7, epoch=1, batch_idx=5)
    assert md.increment_step().global_step == 8
    ep = md.increment_epoch()
    assert ep.epoch == 2 and ep.batch_idx == 0
    assert Metadata(epoch=1).increment_epoch().batch_idx is None
    assert md.increment_batch().batch_idx == 6
    assert Metadata().increment_batch().batch_idx == 1  # None counts as 0
    assert md.with_shard(3).shard_id == 3
    assert md.with_shard(3).with_shard(None).shard_id is None


def test_merge():
    base = Metadata(index=1, epoch=2, key="a", shard_id=1, source_info={"x": 1, "y": 2})
    other = Metadata(index=0, epoch=5, global_step=9, rng_key=jax.random.key(0), source_info={"y": 3})
    merged = base.merge(other)
    assert merged.index == 1  # other's zero does not override
    assert (merged.epoch, merged.global_step, merged.shard_id) == (5, 9, 1)
    assert merged.entry_key == "a"  # other has no key
    assert keys_equal(merged.rng_key, other.rng_key)
    assert merged.source_info == {"x": 1, "y": 3}
    assert base.merge(None) is base
    assert base.merge(Metadata(key="b")).entry_key == "b"


# --------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey, None])
def test_to_dict_from_dict_json_round_trip(make_key):
    rng = None if make_key is None else make_key(42)
    md = Metadata(
        index=3, epoch=1, global_step=10, batch_idx=2, shard_id=0, rng_key=rng, source_info={"name": "ds"}, key="rec/3"
    )
    d = md.to_dict()
    assert d["key"] == "rec/3" and d["index"] == 3 and type(d["index"]) is int
    assert d["rng_impl"] == (None if make_key is not jax.random.key else "threefry2x32")
    back = Metadata.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == d
    if rng is None:
        assert back.rng_key is None
    else:
        assert keys_equal(back.rng_key, rng)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(md)


def test_to_dict_converts_jax_scalars():
    md = jax.jit(lambda m: m.increment_step())(Metadata(global_step=1, key="k"))
    d = md.to_dict()
    assert d["global_step"] == 2 and type(d["global_step"]) is int
    assert json.loads(json.dumps(d))["key"] == "k"


def test_from_dict_defaults_and_unknown_fields():
    assert Metadata.from_dict({}).index == 0
    with pytest.raises(ValueError, match=r"unknown Metadata fields: \['color', 'size'\]"):
        Metadata.from_dict({"index": 1, "size": 2, "color": 3})


# --------------------------------------------------------------------------- pytree / jit / vmap


def test_metadata_pytree_round_trip():
    md = create_metadata(
        index=1, epoch=2, global_step=3, batch_idx=4, shard_id=5, record_key="r", source_info={"s": "t"}, seed=0
    )
    leaves, treedef = jax.tree_util.tree_flatten(md)
    assert len(leaves) == 7
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert back.to_dict() == md.to_dict()
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(md)[0]]
    assert paths[0] == ".index" and ".rng_key" in paths and "._encoded_key" in paths


def test_key_string_does_not_change_treedef_or_recompile():
    traces = []

    def step(md):
        traces.append(1)  # runs only while tracing, i.e. once per compilation
        return md.increment_step()

    f = jax.jit(step)
    a = create_metadata(record_key="first", seed=0, source_info={"ds": "x"})
    b = create_metadata(record_key="a-much-longer-second-key", seed=0, source_info={"ds": "x"})
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    out_a, out_b = f(a), f(b)
    assert len(traces) == 1 and f._cache_size() == 1
    assert out_a.entry_key == "first" and out_b.entry_key == "a-much-longer-second-key"
    assert int(out_b.global_step) == 1


def test_source_info_changes_treedef():
    a = create_metadata(record_key="k", source_info={"ds": "x"})
    b = create_metadata(record_key="k", source_info={"ds": "y"})
    same = create_metadata(record_key="other", source_info={"ds": "x"})
    struct = jax.tree_util.tree_structure
    assert struct(a) != struct(b)
    assert struct(a) == struct(same)
    f = jax.jit(lambda m: m.index + 1)
    f(a), f(b)
    assert f._cache_size() == 2


def test_methods_work_inside_jit():
    @jax.jit
    def f(md):
        k1, _ = md.split_rng()
        md = md.next_rng().increment_epoch().increment_batch().with_shard(2).replace(key="inside")
        return md, jax.random.uniform(k1)

    md, x = f(create_metadata(epoch=1, batch_idx=3, record_key="outside", seed=0))
    assert (int(md.epoch), int(md.batch_idx), int(md.shard_id)) == (2, 1, 2)
    assert md.entry_key == "inside"
    assert 0.0 <= float(x) < 1.0


def test_batch_metadata_and_vmap():
    mds = [create_metadata(index=i, record_key=f"r{i}", seed=i, source_info={"s": 1}) for i in range(4)]
    batch = batch_metadata(mds)
    assert batch.index.shape == (4,) and batch.rng_key.shape == (4,)
    assert batch._encoded_key.shape == (4, KEY_WIDTH)
    assert batch.source_info == {"s": 1} and batch.batch_idx is None

    def per_record(md):
        return md.index * 10 + md.epoch, jax.random.uniform(md.rng_key)

    idx, noise = jax.vmap(per_record)(batch)
    np.testing.assert_array_equal(np.asarray(idx), [0, 10, 20, 30])
    assert np.unique(np.asarray(noise)).size == 4
    np.testing.assert_allclose(float(noise[2]), float(jax.random.uniform(mds[2].rng_key)))
    # Rows of the batch decode back to the original keys.
    row = jax.tree_util.tree_map(lambda x: x[1], batch)
    assert row.entry_key == "r1"


def test_batch_metadata_legacy_keys_and_errors():
    batch = batch_metadata([Metadata(rng_key=jax.random.PRNGKey(i)) for i in range(3)])
    assert batch.rng_key.shape == (3, 2)
    with pytest.raises(ValueError, match="must not be empty"):
        batch_metadata([])
    with pytest.raises(ValueError, match="metadata 1 sets different fields"):
        batch_metadata([Metadata(key="a"), Metadata()])


# --------------------------------------------------------------------------- create_metadata


def test_create_metadata_seed_and_rng_key():
    md = create_metadata(index=2, record_key="x", seed=3)
    assert md.entry_key == "x" and md.index == 2
    assert keys_equal(md.rng_key, jax.random.key(3))
    explicit = jax.random.PRNGKey(9)
    assert keys_equal(create_metadata(rng_key=explicit, seed=3).rng_key, explicit)  # rng_key wins
    assert create_metadata().rng_key is None


# --------------------------------------------------------------------------- split_rng_tree


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
def test_split_rng_tree(make_key):
    key = make_key(0)
    tree = split_rng_tree(key, ["dropout", "augment"])
    assert set(tree) == {"dropout", "augment"}
    assert not keys_equal(tree["dropout"], tree["augment"])
    again = split_rng_tree(key, ("augment", "dropout", "noise"))
    assert keys_equal(again["dropout"], tree["dropout"])  # stable under added names and order
    assert keys_equal(again["augment"], tree["augment"])


def test_split_rng_tree_errors():
    with pytest.raises(ValueError, match="must not be empty"):
        split_rng_tree(jax.random.key(0), [])
    with pytest.raises(ValueError, match=r"duplicate names: \['a'\]"):
        split_rng_tree(jax.random.key(0), ["a", "b", "a"])


# --------------------------------------------------------------------------- MetadataManager


def test_manager_creates_metadata_and_advances_state():
    mgr = MetadataManager(initial_epoch=2, initial_step=10, shard_id=1)
    first = mgr.create_metadata("rec0", source_info={"ds": "a"})
    second = mgr.create_metadata("rec1")
    assert isinstance(first, RecordMetadata)
    assert (first.index, first.global_step, first.epoch, first.shard_id) == (0, 10, 2, 1)
    assert (second.index, second.global_step) == (1, 11)
    assert first.record_key == "rec0" and first.source_info == {"ds": "a"}
    assert first.rng_key is None and first.batch_idx is None
    assert mgr.state.get_value() == {"global_step": 12, "epoch": 2, "index": 2, "batch_idx": None}


def test_manager_rngs_give_distinct_keys_and_use_metadata_stream():
    a = MetadataManager(rngs=nnx.Rngs(0))
    k1, k2 = a.create_metadata("x").rng_key, a.create_metadata("y").rng_key
    assert not keys_equal(k1, k2)
    # Same seed -> same sequence; a dedicated "metadata" stream is preferred over "default".
    assert keys_equal(MetadataManager(rngs=nnx.Rngs(0)).create_metadata("x").rng_key, k1)
    named = MetadataManager(rngs=nnx.Rngs(default=0, metadata=5)).create_metadata("x").rng_key
    assert keys_equal(named, MetadataManager(rngs=nnx.Rngs(5)).create_metadata("x").rng_key)


def test_manager_epochs_and_batches():
    mgr = MetadataManager(track_batches=True)
    assert mgr.state.get_value()["batch_idx"] == 0
    mgr.next_batch()
    mgr.next_batch()
    assert mgr.create_metadata("r").batch_idx == 2
    mgr.next_epoch()
    assert mgr.state.get_value()["epoch"] == 1 and mgr.state.get_value()["batch_idx"] == 0

    untracked = MetadataManager()
    untracked.next_batch()  # no-op
    untracked.next_epoch()
    assert untracked.state.get_value()["batch_idx"] is None
    assert untracked.state.get_value()["epoch"] == 1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"initial_epoch": -1}, "initial_epoch"),
        ({"initial_epoch": 1.5}, "initial_epoch"),
        ({"initial_step": -3}, "initial_step"),
        ({"initial_step": True}, "initial_step"),
        ({"shard_id": -2}, "shard_id"),
        ({"shard_id": "0"}, "shard_id"),
        ({"track_batches": 1}, "track_batches"),
    ],
)
def test_manager_rejects_bad_args(kwargs, name):
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError, match=rf"MetadataManager: {name} must be .*, got {re.escape(repr(value))}"):
        MetadataManager(**kwargs)


def test_manager_rejects_non_rngs():
    with pytest.raises(TypeError, match="MetadataManager: rngs must be an nnx.Rngs or None, got int"):
        MetadataManager(rngs=0)


def test_manager_accepts_numpy_ints_and_stores_python_ints():
    mgr = MetadataManager(initial_epoch=np.int64(2), initial_step=np.int32(5), shard_id=np.int16(1))
    md = mgr.create_metadata("r")
    assert (md.epoch, md.global_step, md.shard_id) == (2, 5, 1)
    assert all(type(v) is int for v in (md.epoch, md.global_step, md.shard_id))


def test_manager_state_is_nnx_state_and_updates_under_nnx_jit():
    mgr = MetadataManager(rngs=nnx.Rngs(0), track_batches=True)

    @nnx.jit
    def make(m):
        md = m.create_metadata("r")
        return md.index, md.rng_key

    i0, k0 = make(mgr)
    i1, k1 = make(mgr)
    assert (int(i0), int(i1)) == (0, 1)
    assert not keys_equal(k0, k1)
    assert int(mgr.state.get_value()["global_step"]) == 2
    assert "state" in nnx.state(mgr)


# --------------------------------------------------------------------------- update_metadata_batch


def test_update_metadata_batch_adds_batch_size_and_counts_batches():
    md = Metadata(index=3, epoch=1, global_step=10, batch_idx=4, key="k", source_info={"s": 1})
    out = update_metadata_batch(md, 16)
    assert (out.global_step, out.batch_idx) == (26, 5)
    # Everything else is carried over; the input is unchanged.
    assert (out.index, out.epoch, out.entry_key, out.source_info) == (3, 1, "k", {"s": 1})
    assert (md.global_step, md.batch_idx) == (10, 4)


def test_update_metadata_batch_none_counts_as_zero():
    out = update_metadata_batch(Metadata(), 8)
    assert (out.global_step, out.batch_idx) == (8, 1)
    twice = update_metadata_batch(update_metadata_batch(Metadata(global_step=None), 2), 3)
    assert (twice.global_step, twice.batch_idx) == (5, 2)


def test_update_metadata_batch_inside_jit_does_not_recompile_per_key():
    traces = []

    @jax.jit
    def step(md):
        traces.append(1)
        return update_metadata_batch(md, 4)

    a = step(create_metadata(global_step=1, batch_idx=0, record_key="a"))
    b = step(create_metadata(global_step=7, batch_idx=2, record_key="b"))
    assert (int(a.global_step), int(a.batch_idx), a.entry_key) == (5, 1, "a")
    assert (int(b.global_step), int(b.batch_idx), b.entry_key) == (11, 3, "b")
    assert len(traces) == 1


@pytest.mark.parametrize("bad", [0, -4, True, 2.0, None, "8"])
def test_update_metadata_batch_rejects_bad_batch_size(bad):
    with pytest.raises(
        ValueError, match=rf"update_metadata_batch: batch_size must be a positive int, got {re.escape(repr(bad))}"
    ):
        update_metadata_batch(Metadata(), bad)


def test_update_metadata_batch_rejects_non_metadata():
    with pytest.raises(TypeError, match="metadata must be a Metadata, got RecordMetadata"):
        update_metadata_batch(RecordMetadata(index=0, record_key="k"), 2)

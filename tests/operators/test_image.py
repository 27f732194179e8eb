"""Tests for datarax.operators.image: RandomFlip mirrors chosen arrays per record with probability p.

Every image here is ``base + 100 * record`` with a ``base`` that is asymmetric along every axis, so
any output row shows which record it came from and whether (and along which axis) it was mirrored.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.core.prng import node_key, record_keys
from datarax.operators import (
    ProbabilisticOperatorConfig,
    RandomFlip,
    RandomFlipConfig,
)
from datarax.sources import MemorySource, MemorySourceConfig

SDS = jax.ShapeDtypeStruct
H, W, C = 2, 3, 2


def _images(n):
    """``(n, H, W, C)`` float32; record ``r`` is ``base + 100 r``, ``base`` asymmetric on every axis."""
    base = np.arange(H * W * C, dtype=np.float32).reshape(H, W, C)
    return base[None] + 100 * np.arange(n, dtype=np.float32)[:, None, None, None]


def _data(n):
    images = _images(n)
    return {
        "image": images,
        "mask": (2 * images + 1).astype(np.int32),
        "label": np.arange(n, dtype=np.int32),
    }


def _always(**kwargs):
    return RandomFlip(RandomFlipConfig(probability=1.0, stochastic=False, stream_name=None, **kwargs))


def _never(**kwargs):
    return RandomFlip(RandomFlipConfig(probability=0.0, stochastic=False, stream_name=None, **kwargs))


def _flipped_rows(out, src, axis=-2):
    """Per row: True if ``out`` is ``src`` mirrored along ``axis`` (of one element), False if unchanged."""
    out, src = np.asarray(out), np.asarray(src)
    element_axis = axis if axis < 0 else axis + 1
    mirrored = np.all(out == np.flip(src, element_axis), axis=tuple(range(1, src.ndim)))
    same = np.all(out == src, axis=tuple(range(1, src.ndim)))
    assert np.all(mirrored ^ same), "every row must be either the record or its mirror"
    return mirrored


def _expected_coins(seed, epoch, n, p=0.5, name="flip"):
    keys = record_keys(node_key(seed, name), epoch, jnp.arange(n))
    return np.asarray(jax.vmap(lambda k: jax.random.bernoulli(k, p))(keys))


def _pipeline(n, batch_size, seed, num_epochs=1, config=None, **kwargs):
    source = MemorySource(MemorySourceConfig(), data=_data(n))
    op = RandomFlip(config or RandomFlipConfig(fields=("image", "mask")))
    pipeline = Pipeline(
        source=source,
        stages=[op],
        batch_size=batch_size,
        rngs=nnx.Rngs(seed),
        shuffle=True,
        num_epochs=num_epochs,
        **kwargs,
    )
    return op, pipeline


def _run(pipeline):
    return [{k: np.asarray(v) for k, v in batch.items()} for batch in pipeline]


def _decisions(batches, n, per_epoch):
    """``{epoch: bool[n]}``: whether each record was flipped, read from the valid rows of a stream."""
    src = _data(n)
    out = {}
    for t, batch in enumerate(batches):
        epoch = t // per_epoch
        flags = out.setdefault(epoch, np.full(n, -1, dtype=np.int8))
        valid = batch[VALID_MASK]
        labels = batch["label"][valid]
        image = _flipped_rows(batch["image"][valid], src["image"][labels])
        mask = _flipped_rows(batch["mask"][valid], src["mask"][labels])
        np.testing.assert_array_equal(image, mask)  # one coin for both fields
        assert np.all(flags[labels] == -1), "a record served twice in one epoch"
        flags[labels] = image
    for epoch, flags in out.items():
        assert np.all(flags >= 0), f"epoch {epoch} did not serve every record"
    return {epoch: flags.astype(bool) for epoch, flags in out.items()}


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    ["image", "", (), [], ("image", "image"), ("image", 3), (b"image",), ("image", ""), None, 7, b"image"],
    ids=repr,
)
def test_config_rejects_bad_fields(fields):
    with pytest.raises(ValueError, match=r"RandomFlipConfig: fields must be .*got " + re.escape(repr(fields))):
        RandomFlipConfig(fields=fields)


def test_config_stores_list_fields_as_tuple():
    config = RandomFlipConfig(fields=["image", "mask"])
    assert config.fields == ("image", "mask")
    assert isinstance(config.fields, tuple)
    hash(config)  # frozen configs must stay hashable


@pytest.mark.parametrize("axis", [1.5, 1.0, True, False, np.bool_(True), "1", None])
def test_config_rejects_non_int_axis(axis):
    with pytest.raises(ValueError, match=r"RandomFlipConfig: axis must be an int, got " + re.escape(repr(axis))):
        RandomFlipConfig(axis=axis)


@pytest.mark.parametrize("axis", [0, -1, 5, np.int64(-3)])
def test_config_accepts_int_axis(axis):
    assert RandomFlipConfig(axis=axis).axis == axis


@pytest.mark.parametrize("p", [-0.1, 1.5, -1e-9, float("nan"), float("inf"), True, False, np.bool_(True), "0.5", None])
def test_config_rejects_bad_probability(p):
    expected = r"RandomFlipConfig: probability must be a number in \[0, 1\], got " + re.escape(repr(p))
    with pytest.raises(ValueError, match=expected):
        RandomFlipConfig(probability=p)


@pytest.mark.parametrize("p", [0, 1, 0.25, np.float32(0.5), np.int64(1)])
def test_config_stores_probability_as_float(p):
    config = RandomFlipConfig(probability=p)
    assert config.probability == float(p)
    assert type(config.probability) is float


@pytest.mark.parametrize("p", [0.3, 1e-6, 0.999])
def test_fractional_probability_must_be_stochastic(p):
    with pytest.raises(ValueError, match=rf"probability={p!r} needs a coin per record.*stochastic=True"):
        RandomFlipConfig(probability=p, stochastic=False, stream_name=None)


def test_the_default_stream_name_is_only_used_when_stochastic():
    assert RandomFlipConfig(probability=1.0, stochastic=False).stream_name is None
    with pytest.raises(ValueError, match=r"deterministic module \(stochastic=False\) must not set stream_name"):
        RandomFlipConfig(probability=1.0, stochastic=False, stream_name="flip")
    with pytest.raises(ValueError, match="needs a coin per record"):
        RandomFlipConfig(probability=0.3, stochastic=False)


@pytest.mark.parametrize("p", [0, 1, 0.0, 1.0])
def test_probability_zero_or_one_may_be_deterministic(p):
    config = RandomFlipConfig(probability=p, stochastic=False, stream_name=None)
    op = RandomFlip(config)
    assert not op.stochastic
    assert op.record_keys(0, jnp.arange(3)) is None


def test_defaults_are_a_stochastic_horizontal_flip_of_image():
    config = RandomFlipConfig()
    assert (config.fields, config.axis, config.probability) == (("image",), -2, 0.5)
    assert config.stochastic and config.stream_name == "flip"


@pytest.mark.parametrize(
    "config",
    [ProbabilisticOperatorConfig(probability=0.5, stochastic=True, stream_name="flip"), None, {"fields": ("image",)}],
    ids=["other_operator_config", "none", "dict"],
)
def test_wrong_config_type_is_type_error(config):
    with pytest.raises(TypeError, match="RandomFlip: config must be a RandomFlipConfig"):
        RandomFlip(config)


# --- semantics -----------------------------------------------------------------------------------


def test_probability_one_mirrors_every_record_and_leaves_other_keys():
    data = _data(5)
    batch = {**data, VALID_MASK: np.array([True, True, True, False, True])}
    out = _always(fields=("image",)).apply_batch(batch)
    np.testing.assert_array_equal(out["image"], np.flip(data["image"], axis=2))
    for i in range(5):
        np.testing.assert_array_equal(out["image"][i], np.flip(data["image"][i], axis=-2))
    np.testing.assert_array_equal(out["mask"], data["mask"])
    np.testing.assert_array_equal(out["label"], data["label"])
    assert out[VALID_MASK] is batch[VALID_MASK]
    assert set(out) == set(batch)


@pytest.mark.parametrize("stochastic", [False, True])
def test_probability_zero_leaves_everything_unchanged(stochastic):
    data = _data(64)
    if stochastic:
        config = RandomFlipConfig(fields=("image", "mask"), probability=0.0)
        op = RandomFlip(config, rngs=nnx.Rngs(flip=1))
        out = op.apply_batch(data, op.record_keys(0, jnp.arange(64)))
    else:
        out = _never(fields=("image", "mask")).apply_batch(data)
    for key in data:
        np.testing.assert_array_equal(out[key], data[key])
        assert np.asarray(out[key]).dtype == data[key].dtype


def test_stochastic_probability_one_mirrors_every_record():
    data = _data(64)
    op = RandomFlip(RandomFlipConfig(probability=1.0), rngs=nnx.Rngs(flip=2))
    out = op.apply_batch(data, op.record_keys(3, jnp.arange(64)))
    np.testing.assert_array_equal(out["image"], np.flip(data["image"], axis=2))


def test_two_fields_share_one_coin_per_record():
    n = 200
    data = _data(n)
    op = RandomFlip(RandomFlipConfig(fields=("image", "mask")), rngs=nnx.Rngs(flip=4))
    out = op.apply_batch(data, op.record_keys(0, jnp.arange(n)))
    image = _flipped_rows(out["image"], data["image"])
    mask = _flipped_rows(out["mask"], data["mask"])
    np.testing.assert_array_equal(image, mask)
    assert 50 < image.sum() < 150
    np.testing.assert_array_equal(out["label"], data["label"])


def test_deterministic_two_fields_both_flip():
    data = _data(3)
    out = _always(fields=["mask", "image"]).apply_batch(data)
    np.testing.assert_array_equal(out["image"], np.flip(data["image"], axis=2))
    np.testing.assert_array_equal(out["mask"], np.flip(data["mask"], axis=2))
    assert out["mask"].dtype == jnp.int32


@pytest.mark.parametrize(
    ("axis", "mirror"),
    [
        (-2, lambda x: x[:, ::-1, :]),  # width: a horizontal flip
        (1, lambda x: x[:, ::-1, :]),
        (-3, lambda x: x[::-1, :, :]),  # height: a vertical flip
        (0, lambda x: x[::-1, :, :]),
        (-1, lambda x: x[:, :, ::-1]),  # channels
    ],
)
def test_axis_is_counted_in_one_element(axis, mirror):
    image = _images(4)
    out = _always(axis=axis).apply({"image": image[2]})
    np.testing.assert_array_equal(out["image"], mirror(image[2]))
    batched = _always(axis=axis).apply_batch({"image": image})
    for i in range(4):
        np.testing.assert_array_equal(batched["image"][i], mirror(image[i]))


def test_horizontal_flip_of_a_small_image_by_hand():
    image = jnp.array([[[1], [2], [3]], [[4], [5], [6]]], dtype=jnp.uint8)  # H=2, W=3, C=1
    horizontal = _always().apply({"image": image})["image"]
    vertical = _always(axis=-3).apply({"image": image})["image"]
    assert horizontal[..., 0].tolist() == [[3, 2, 1], [6, 5, 4]]
    assert vertical[..., 0].tolist() == [[4, 5, 6], [1, 2, 3]]
    assert horizontal.dtype == jnp.uint8


def test_output_spec_equals_input_spec():
    spec = {"image": SDS((H, W, C), jnp.uint8), "mask": SDS((H, W, 1), jnp.bool_), "label": SDS((), jnp.int32)}
    assert RandomFlip(RandomFlipConfig(fields=("image", "mask"))).output_spec(spec) == spec
    assert _always(fields=("image", "mask")).output_spec(spec) == spec


def test_stochastic_apply_without_key_is_value_error():
    with pytest.raises(ValueError, match=r"RandomFlip\('hflip'\) is stochastic.*key=None"):
        RandomFlip(RandomFlipConfig(), name="hflip").apply({"image": jnp.zeros((H, W, C))})


def test_element_must_be_a_dict():
    with pytest.raises(TypeError, match="RandomFlip: element must be a dict of arrays, got ndarray"):
        _always().apply(np.zeros((H, W, C)))


# --- randomness in a pipeline --------------------------------------------------------------------

N, SEED = 2000, 17


@pytest.fixture(scope="module")
def two_epochs():
    """A shuffled 2-epoch stream of N records in batches of 64 (the last one has 16 valid rows)."""
    op, pipeline = _pipeline(N, 64, SEED, num_epochs=2)
    batches = _run(pipeline)
    return op, pipeline, batches, _decisions(batches, N, len(pipeline))


def test_flipped_fraction_is_binomial(two_epochs):
    decisions = two_epochs[3]
    sigma = math.sqrt(N * 0.25)
    for epoch in (0, 1):
        count = int(decisions[epoch].sum())
        assert abs(count - N / 2) < 5 * sigma, (epoch, count)


def test_decision_is_bernoulli_of_the_record_key(two_epochs):
    _, pipeline, _, decisions = two_epochs
    assert pipeline.seed == SEED
    for epoch in (0, 1):
        np.testing.assert_array_equal(decisions[epoch], _expected_coins(SEED, epoch, N))


def test_new_epoch_draws_anew(two_epochs):
    decisions = two_epochs[3]
    changed = int(np.sum(decisions[0] != decisions[1]))
    sigma = math.sqrt(N * 0.25)
    assert abs(changed - N / 2) < 5 * sigma, changed


def test_padding_rows_repeat_the_last_records_flip(two_epochs):
    batches = two_epochs[2]
    last = batches[len(two_epochs[1]) - 1]
    valid = last[VALID_MASK]
    assert int(valid.sum()) == N % 64 == 16
    last_row = int(np.flatnonzero(valid)[-1])
    for row in np.flatnonzero(~valid):
        assert last["label"][row] == last["label"][last_row]
        np.testing.assert_array_equal(last["image"][row], last["image"][last_row])
        np.testing.assert_array_equal(last["mask"][row], last["mask"][last_row])


def test_decision_does_not_depend_on_batch_size(two_epochs):
    _, pipeline = _pipeline(N, 7, SEED, num_epochs=1)  # 286 batches, the last with 5 valid rows
    got = _decisions(_run(pipeline), N, len(pipeline))
    np.testing.assert_array_equal(got[0], two_epochs[3][0])


def test_same_seed_gives_identical_batches(two_epochs):
    _, pipeline = _pipeline(N, 64, SEED, num_epochs=2)
    again = _run(pipeline)
    want = two_epochs[2]
    assert len(again) == len(want) == 2 * 32
    for a, b in zip(again, want, strict=True):
        assert set(a) == set(b)
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
            assert a[key].tobytes() == b[key].tobytes(), key


def test_decision_uses_the_configured_probability():
    n, p = 500, 0.2
    config = RandomFlipConfig(fields=("image", "mask"), probability=p)
    _, pipeline = _pipeline(n, 100, SEED, config=config)
    got = _decisions(_run(pipeline), n, len(pipeline))[0]
    np.testing.assert_array_equal(got, _expected_coins(SEED, 0, n, p=p))
    assert abs(int(got.sum()) - n * p) < 5 * math.sqrt(n * p * (1 - p))


def test_key_name_is_the_stream_name_and_the_operator_name_overrides_it():
    n = 300
    config = RandomFlipConfig(fields=("image", "mask"), stream_name="mirror")
    _, by_stream = _pipeline(n, 50, SEED, config=config)
    np.testing.assert_array_equal(_decisions(_run(by_stream), n, 6)[0], _expected_coins(SEED, 0, n, name="mirror"))

    source = MemorySource(MemorySourceConfig(), data=_data(n))
    named = RandomFlip(RandomFlipConfig(fields=("image", "mask")), name="hflip")
    by_name = Pipeline(source=source, stages=[named], batch_size=50, rngs=nnx.Rngs(SEED), shuffle=True)
    np.testing.assert_array_equal(_decisions(_run(by_name), n, 6)[0], _expected_coins(SEED, 0, n, name="hflip"))


def test_own_rngs_override_the_pipeline_seed():
    n = 300
    op = RandomFlip(RandomFlipConfig(fields=("image", "mask")), rngs=nnx.Rngs(flip=99))
    source = MemorySource(MemorySourceConfig(), data=_data(n))
    pipeline = Pipeline(source=source, stages=[op], batch_size=64, rngs=nnx.Rngs(SEED), shuffle=True)
    got = _decisions(_run(pipeline), n, len(pipeline))[0]
    keys = record_keys(jax.random.key(99), 0, jnp.arange(n))
    np.testing.assert_array_equal(got, np.asarray(jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(keys)))


def test_two_flips_in_one_pipeline_draw_independently():
    n = 1000
    source = MemorySource(MemorySourceConfig(), data=_data(n))
    horizontal = RandomFlip(RandomFlipConfig(fields=("image",)))
    vertical = RandomFlip(RandomFlipConfig(fields=("mask",), axis=-3))
    pipeline = Pipeline(source=source, stages=[horizontal, vertical], batch_size=128, rngs=nnx.Rngs(SEED))
    data = _data(n)
    hflips, vflips = np.zeros(n, bool), np.zeros(n, bool)
    for batch in _run(pipeline):
        labels = batch["label"][batch[VALID_MASK]]
        hflips[labels] = _flipped_rows(batch["image"][batch[VALID_MASK]], data["image"][labels], axis=-2)
        vflips[labels] = _flipped_rows(batch["mask"][batch[VALID_MASK]], data["mask"][labels], axis=-3)
    # Repeated stream names get "#1": the second stage's key name is "flip#1".
    np.testing.assert_array_equal(hflips, _expected_coins(SEED, 0, n, name="flip"))
    np.testing.assert_array_equal(vflips, _expected_coins(SEED, 0, n, name="flip#1"))
    assert 0.4 * n < int(np.sum(hflips != vflips)) < 0.6 * n


# --- errors at pipeline construction -------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (RandomFlipConfig(fields=("image", "depth")), r"field 'depth' is not in the element"),
        (RandomFlipConfig(axis=3), r"axis 3 is out of range for field 'image' of shape \(2, 3, 2\)"),
        (RandomFlipConfig(axis=-4), r"axis -4 is out of range for field 'image'"),
        (RandomFlipConfig(fields=("image", "label")), r"axis -2 is out of range for field 'label' of shape \(\)"),
        (
            RandomFlipConfig(probability=1.0, stochastic=False, stream_name=None, fields=("labels",)),
            r"field 'labels' is not in the element",
        ),
    ],
    ids=["missing_field", "axis_too_large", "axis_too_negative", "scalar_field", "deterministic_missing"],
)
def test_bad_element_is_value_error_at_construction_naming_the_stage(config, expected):
    source = MemorySource(MemorySourceConfig(), data=_data(8))
    with pytest.raises(ValueError, match=r"Pipeline: stage 'stage_1' \(RandomFlip\) cannot take.*" + expected):
        Pipeline(source=source, stages=[_never(), RandomFlip(config)], batch_size=4, rngs=nnx.Rngs(0))


# --- counting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "batch_size", "epochs", "drop_remainder"),
    [(10, 4, 3, False), (10, 4, 2, True)],
)
def test_every_valid_record_counts_as_applied(n, batch_size, epochs, drop_remainder):
    op, pipeline = _pipeline(n, batch_size, SEED, num_epochs=epochs, drop_remainder=drop_remainder)
    batches = _run(pipeline)
    valid = sum(int(b[VALID_MASK].sum()) for b in batches)
    assert valid == epochs * (n // batch_size * batch_size if drop_remainder else n)
    assert op.get_operation_stats() == {"applied_count": valid, "skipped_count": 0}


def test_counts_accumulate_over_iterations_and_deterministic_ops_count_too(two_epochs):
    assert two_epochs[0].get_operation_stats() == {"applied_count": 2 * N, "skipped_count": 0}
    source = MemorySource(MemorySourceConfig(), data=_data(10))
    never = _never()
    pipeline = Pipeline(source=source, stages=[never], batch_size=4)
    list(pipeline)
    list(pipeline)
    # p = 0 flips nothing, but passing a record through is the operator's outcome, not a skip.
    assert never.get_operation_stats() == {"applied_count": 20, "skipped_count": 0}


def test_apply_batch_counts_valid_rows_only():
    op = RandomFlip(RandomFlipConfig(), rngs=nnx.Rngs(flip=0))
    batch = {"image": _images(6), VALID_MASK: np.array([True, False, True, True, False, True])}
    op.apply_batch(batch, op.record_keys(0, jnp.arange(6)))
    assert op.get_operation_stats() == {"applied_count": 4, "skipped_count": 0}


# --- transformations -----------------------------------------------------------------------------


def test_under_jax_jit_and_nnx_jit_equals_eager():
    n = 64
    data = _data(n)
    batch = {**data, VALID_MASK: np.arange(n) < 50}
    op = RandomFlip(RandomFlipConfig(fields=("image", "mask")), rngs=nnx.Rngs(flip=6))
    keys = op.record_keys(2, jnp.arange(n))
    eager = op.apply_batch(batch, keys)
    assert op.get_operation_stats()["applied_count"] == 50
    jitted = jax.jit(lambda b, k: op.apply_batch(b, k))(batch, keys)
    assert op.get_operation_stats()["applied_count"] == 50  # plain jax.jit cannot update the counters
    nnx_jitted = nnx.jit(lambda o, b, k: o.apply_batch(b, k))(op, batch, keys)
    assert op.get_operation_stats() == {"applied_count": 100, "skipped_count": 0}
    flips = _flipped_rows(eager["image"], data["image"])
    assert 0 < flips.sum() < n
    for out in (jitted, nnx_jitted):
        assert set(out) == set(eager)
        for key in eager:
            np.testing.assert_array_equal(out[key], eager[key])
            assert out[key].dtype == eager[key].dtype


def test_deterministic_flip_under_jit_equals_eager():
    data = _data(8)
    op = _always(fields=("image", "mask"), axis=-3)
    eager = op.apply_batch(data)
    jitted = jax.jit(lambda b: op.apply_batch(b))(data)
    nnx_jitted = nnx.jit(lambda o, b: o.apply_batch(b))(op, data)
    for out in (jitted, nnx_jitted):
        for key in data:
            np.testing.assert_array_equal(out[key], eager[key])
    np.testing.assert_array_equal(eager["mask"], np.flip(data["mask"], axis=1))


def test_jit_with_traced_record_indices_matches_the_seed_contract():
    n = 128
    data = _data(n)
    op = RandomFlip(RandomFlipConfig(), rngs=nnx.Rngs(flip=8))
    step = jax.jit(lambda b, e, r: op.apply_batch(b, op.record_keys(e, r)))
    out = step({"image": data["image"]}, jnp.uint32(1), jnp.arange(n))
    keys = record_keys(jax.random.key(8), 1, jnp.arange(n))
    want = np.asarray(jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(keys))
    np.testing.assert_array_equal(_flipped_rows(out["image"], data["image"]), want)

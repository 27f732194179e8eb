"""Tests for datarax.operators.rand_augment: N operators chosen per record from the record key.

The choices are recomputed here with ``jax.random`` from the documented derivation (step ``j``
picks ``floor(n * uniform(fold_in(k, 2 j)))`` and runs it with ``fold_in(k, 2 j + 1)``), and
children that leave a trace of what ran (adding distinct digits) show which ones did.
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
from datarax.core.operator import OperatorModule
from datarax.operators.element import ElementOperator, ElementOperatorConfig
from datarax.operators.image import RandomFlip
from datarax.operators.image_color import (
    GaussianBlur,
    RandomBrightness,
    RandomBrightnessConfig,
    RandomContrast,
    RandomContrastConfig,
)
from datarax.operators.rand_augment import RandAugment, RandAugmentConfig, rand_augment_operators
from datarax.sources import MemorySource, MemorySourceConfig

KEY = jax.random.key(11)


def _adders(digits=(1, 10, 100)):
    """Deterministic children adding a distinct power of ten to ``x``: the sum shows which ran."""
    return [ElementOperator(ElementOperatorConfig(), lambda e, k, d=d: {**e, "x": e["x"] + d}) for d in digits]


def _choices(keys, n, num_ops):
    """``(records, num_ops)`` child indices recomputed with jax.random."""

    def one(k):
        u = jnp.stack([jax.random.uniform(jax.random.fold_in(k, 2 * j)) for j in range(num_ops)])
        return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)

    return np.asarray(jax.vmap(one)(keys))


# --- config and construction ---------------------------------------------------------------------


@pytest.mark.parametrize("num_ops", [0, -1, 1.0, True, "2", None])
def test_config_rejects_bad_num_ops(num_ops):
    with pytest.raises(
        ValueError, match=r"RandAugmentConfig: num_ops must be a positive int, got " + re.escape(repr(num_ops))
    ):
        RandAugmentConfig(num_ops=num_ops)


def test_config_must_be_stochastic_and_names_its_stream():
    assert RandAugmentConfig().stream_name == "rand_augment" and RandAugmentConfig().num_ops == 2
    with pytest.raises(ValueError, match="RandAugmentConfig: RandAugment draws its operators per record, so it needs"):
        RandAugmentConfig(stochastic=False)
    hash(RandAugmentConfig(num_ops=3))


def test_construction_errors():
    with pytest.raises(TypeError, match="RandAugment: config must be a RandAugmentConfig"):
        RandAugment(ElementOperatorConfig(), _adders())
    with pytest.raises(ValueError, match=r"RandAugment: operators must hold at least one operator, got \[\]"):
        RandAugment(RandAugmentConfig(), [])
    with pytest.raises(TypeError, match=r"RandAugment: operators\[1\] must be an OperatorModule, got function"):
        RandAugment(RandAugmentConfig(), [_adders()[0], lambda e, k: e])
    with pytest.raises(TypeError, match="operators must be a sequence of OperatorModule"):
        RandAugment(RandAugmentConfig(), _adders()[0])


def test_a_child_that_changes_the_spec_is_refused_while_tracing():
    to_float = ElementOperator(ElementOperatorConfig(), lambda e, k: {**e, "x": e["x"].astype(jnp.float32)})
    op = RandAugment(RandAugmentConfig(), [*_adders(), to_float], name="ra")
    spec = {"x": jax.ShapeDtypeStruct((), jnp.int32)}
    with pytest.raises(
        ValueError, match=r"RandAugment\('ra'\): all operators .* but operators\[3\] \(ElementOperator\)"
    ):
        op.output_spec(spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"magnitude": 11}, r"magnitude must be a number in \[0, 10\], got 11"),
        ({"magnitude": -1}, r"magnitude must be a number in \[0, 10\], got -1"),
        ({"magnitude": True}, "got True"),
        ({"magnitude": float("nan")}, "got nan"),
        ({"magnitude": 3, "num_levels": 0}, "rand_augment_operators: num_levels must be a positive int, got 0"),
    ],
)
def test_factory_rejects_bad_magnitudes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rand_augment_operators(**kwargs)


# --- choices -------------------------------------------------------------------------------------


def test_each_step_runs_the_child_chosen_by_the_record_key():
    n_records, num_ops = 300, 3
    op = RandAugment(RandAugmentConfig(num_ops=num_ops), _adders())
    keys = jax.random.split(KEY, n_records)
    out = op.apply_batch({"x": np.zeros(n_records, np.int32)}, keys)
    choices = _choices(keys, 3, num_ops)
    np.testing.assert_array_equal(out["x"], (10**choices).sum(axis=1))
    counts = np.bincount(choices.ravel(), minlength=3)  # uniform with replacement
    expected = n_records * num_ops / 3
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))


def test_stochastic_children_get_the_step_key():
    def add_uniform(e, k):
        return {**e, "x": e["x"] * 2 + jax.random.uniform(k)}

    child = ElementOperator(ElementOperatorConfig(stochastic=True, stream_name="u"), add_uniform)
    op = RandAugment(RandAugmentConfig(num_ops=2), [child])
    got = float(op.apply({"x": jnp.float32(0)}, KEY)["x"])
    u0 = float(jax.random.uniform(jax.random.fold_in(KEY, 1)))
    u1 = float(jax.random.uniform(jax.random.fold_in(KEY, 3)))
    assert got == pytest.approx(2 * u0 + u1, abs=1e-6)


def test_same_key_same_choice_and_jit_matches_eager():
    op = RandAugment(RandAugmentConfig(num_ops=2), _adders())
    keys = jax.random.split(KEY, 16)
    batch = {"x": np.zeros(16, np.int32)}
    eager = op.apply_batch(batch, keys, count=False)
    jitted = jax.jit(lambda b, k: op.apply_batch(b, k, count=False))(batch, keys)
    np.testing.assert_array_equal(eager["x"], jitted["x"])
    np.testing.assert_array_equal(eager["x"][3], op.apply({"x": jnp.int32(0)}, keys[3])["x"])
    assert len(set(eager["x"].tolist())) > 2  # different keys, different choices


def test_counting_each_child_counts_the_valid_records_it_ran_on():
    n_records = 64
    children = _adders()
    op = RandAugment(RandAugmentConfig(num_ops=2), children)
    keys = jax.random.split(KEY, n_records)
    valid = np.arange(n_records) < 50
    op.apply_batch({"x": np.zeros(n_records, np.int32), VALID_MASK: valid}, keys)
    choices = _choices(keys, 3, 2)[valid]
    assert int(op._applied_count[...]) == 50 and int(op._skipped_count[...]) == 0
    for i, child in enumerate(children):
        assert int(child._applied_count[...]) == int(np.any(choices == i, axis=1).sum())
        assert int(child._skipped_count[...]) == 0
    assert op.counted_operators() == [op, *children]


# --- the standard list ---------------------------------------------------------------------------


def test_factory_builds_spec_keeping_operators_at_the_magnitude():
    ops = rand_augment_operators(5, num_levels=10)
    names = [type(op).__name__ for op in ops]
    assert names == [
        "ElementOperator",
        "RandomFlip",
        "RandomBrightness",
        "RandomContrast",
        "RandomSaturation",
        "RandomHue",
        "GaussianBlur",
    ]
    assert ops[2].config.magnitude == pytest.approx(0.45) and ops[2].config.draw == "sign"
    assert ops[5].config.magnitude == pytest.approx(0.05)
    assert ops[6].config.sigma == (1.05, 1.05)
    assert isinstance(ops[1], RandomFlip) and ops[1].config.probability == 1.0
    assert isinstance(ops[6], GaussianBlur)
    assert rand_augment_operators(0)[2].config.magnitude == 0.0


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_standard_list_runs_on_images_under_jit_and_keeps_the_spec(dtype):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 9, 3)).astype(np.uint8)
    images = images if dtype == np.uint8 else (images / 255).astype(np.float32)
    op = RandAugment(RandAugmentConfig(num_ops=2), rand_augment_operators(9))
    keys = jax.random.split(KEY, 6)
    out = jax.jit(lambda b, k: op.apply_batch(b, k, count=False))({"image": images}, keys)
    assert out["image"].dtype == dtype and out["image"].shape == images.shape
    spec = op.output_spec({"image": jax.ShapeDtypeStruct((8, 9, 3), dtype)})
    assert spec["image"] == jax.ShapeDtypeStruct((8, 9, 3), dtype)
    one = op.apply({"image": images[2]}, keys[2])["image"]
    tolerance = 1 if dtype == np.uint8 else 1e-5  # jit vs eager: one float32 ulp, one uint8 level
    np.testing.assert_allclose(np.asarray(out["image"][2], float), np.asarray(one, float), atol=tolerance)


def test_user_operators_can_join_the_list():
    extra = ElementOperator(ElementOperatorConfig(), lambda e, k: {**e, "image": 1 - e["image"]}, name="invert")
    op = RandAugment(RandAugmentConfig(num_ops=1), [*rand_augment_operators(3), extra])
    keys = jax.random.split(KEY, 200)
    images = np.full((200, 4, 4, 3), 0.25, np.float32)
    out = np.asarray(nnx.jit(lambda m, b, k: m.apply_batch(b, k))(op, {"image": images}, keys)["image"])
    chosen = _choices(keys, 8, 1)[:, 0] == 7
    assert chosen.any()
    np.testing.assert_allclose(out[chosen], 0.75)
    assert int(extra._applied_count[...]) == int(chosen.sum())


# --- gradients -----------------------------------------------------------------------------------


def test_gradient_reaches_learnable_magnitudes_through_the_switch():
    x = jnp.asarray(np.random.default_rng(1).uniform(0.3, 0.7, (5, 4, 4, 3)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)
    keys = jax.random.split(KEY, 5)
    children = [
        RandomBrightness(RandomBrightnessConfig(magnitude=0.1, learnable=True)),
        RandomContrast(RandomContrastConfig(magnitude=0.1, learnable=True)),
    ]
    op = RandAugment(RandAugmentConfig(num_ops=2), children)

    @nnx.jit
    def loss(module):
        return jnp.sum(module.apply_batch({"image": x}, keys, count=False)["image"] * w)

    grads = nnx.jit(nnx.grad(loss))(op)
    eps = 1e-3
    for i, child in enumerate(children):
        analytic = float(grads.operators[i].magnitude[...])
        values = []
        for m in (0.1 + eps, 0.1 - eps):
            child.magnitude[...] = jnp.float32(m)
            values.append(float(loss(op)))
        child.magnitude[...] = jnp.float32(0.1)
        np.testing.assert_allclose(analytic, (values[0] - values[1]) / (2 * eps), rtol=2e-2, atol=1e-3)

    image_loss = jax.jit(lambda im: jnp.sum(op.apply_batch({"image": im}, keys, count=False)["image"] * w))
    image_grad = jax.jit(jax.grad(image_loss))(x)
    direction = jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float32)
    numeric = (image_loss(x + eps * direction) - image_loss(x - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(image_grad * direction)), float(numeric), rtol=2e-2, atol=2e-3)


# --- pipeline ------------------------------------------------------------------------------------


def _by_label(batch_size, n=24):
    images = np.random.default_rng(5).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    source = MemorySource(MemorySourceConfig(), data={"image": images, "label": np.arange(n, dtype=np.int32)})
    augment = RandAugment(RandAugmentConfig(num_ops=2), rand_augment_operators(7))
    pipeline = Pipeline(source=source, stages=[augment], batch_size=batch_size, rngs=nnx.Rngs(2), shuffle=True)
    out = {}
    for batch in pipeline:
        valid = np.asarray(batch[VALID_MASK])
        for label, image in zip(np.asarray(batch["label"])[valid], np.asarray(batch["image"])[valid], strict=True):
            out[int(label)] = image
    return out, images


def test_pipeline_gives_a_record_the_same_augmentation_whatever_the_batch_size():
    (small, images), (large, _) = _by_label(5), _by_label(8)
    assert sorted(small) == sorted(large) == list(range(24))
    for label in small:
        assert small[label].dtype == np.uint8
        np.testing.assert_array_equal(small[label], large[label])
    assert sum(not np.array_equal(small[i], images[i]) for i in small) > 12  # most records were changed


def test_apply_batch_runs_rows_one_at_a_time_with_the_vmapped_results():
    images = np.random.default_rng(4).uniform(0, 1, (6, 8, 8, 3)).astype(np.float32)
    keys = jax.random.split(KEY, 6)
    op = RandAugment(RandAugmentConfig(num_ops=2), rand_augment_operators(8))
    mapped_fn = jax.jit(lambda b, k: op.apply_batch(b, k, count=False))
    mapped = mapped_fn({"image": images}, keys)
    vmapped = jax.jit(lambda b, k: OperatorModule.apply_batch(op, b, k, count=False))({"image": images}, keys)
    np.testing.assert_allclose(mapped["image"], vmapped["image"], atol=1e-5)  # float32 rounding only
    # each row's choice is a real conditional (only the chosen operator runs), not a select over all
    assert "conditional" in mapped_fn.lower({"image": images}, keys).compile().as_text()

"""Tests for datarax.operators.batch_mix (mixup / cutmix) and datarax.core.batch_operator.

Images are ``base + 100 * record`` (``base`` in ``[0, H*W*C)``), so the mean of an output image
says which records were mixed into it; references are numpy, built from the operator's own
``draw`` (lam, partners, boxes) so that the mixing arithmetic is checked independently.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.core.batch_operator import BATCH_KEY_SALT, BatchOperator
from datarax.core.config import OperatorConfig
from datarax.core.prng import node_key, pipeline_seed, record_keys
from datarax.operators import CompositeOperator, CompositeOperatorConfig, ElementOperator, ElementOperatorConfig
from datarax.operators.batch_mix import BatchMix, BatchMixConfig, valid_partners
from datarax.sources import MemorySource, MemorySourceConfig, NumpyFileSource, NumpyFileSourceConfig

H, W, C = 4, 5, 2
K = 3  # classes


def _images(n):
    base = np.arange(H * W * C, dtype=np.float32).reshape(H, W, C)
    return base[None] + 100 * np.arange(n, dtype=np.float32)[:, None, None, None]


def _data(n):
    return {"image": _images(n), "label": (np.arange(n) % K).astype(np.int32)}


def _keys(rows, seed=0):
    return jax.random.split(jax.random.key(seed), rows)


def _batch(rows, valid_rows=None):
    data = _data(rows)
    valid = np.arange(rows) < (rows if valid_rows is None else valid_rows)
    return {**{k: jnp.asarray(v) for k, v in data.items()}, VALID_MASK: jnp.asarray(valid)}


def _mix(**kwargs):
    kwargs.setdefault("num_classes", K)
    return BatchMix(BatchMixConfig(**kwargs))


def _draw_for(op, batch, keys):
    valid = batch[VALID_MASK]
    return op.draw(op.batch_key(keys, valid), valid, batch["image"].shape[1:3])


def _reference(op, batch, draw):
    """numpy mixup / cutmix of ``batch`` given ``draw`` (lam, partner, box, mixed)."""
    cfg = op.config
    x = np.asarray(batch["image"], np.float64)
    y = np.eye(K)[np.asarray(batch["label"])]
    mixed, lam, partner = (np.asarray(a) for a in (draw.mixed, draw.lam, draw.partner))
    out_x, out_y = x.copy(), y.copy()
    for i in np.flatnonzero(mixed):
        j = partner[i]
        if cfg.mode == "mixup":
            out_x[i] = lam[i] * x[i] + (1 - lam[i]) * x[j]
            weight = lam[i]
        else:
            top, bottom, left, right = np.asarray(draw.box[i])
            out_x[i, top:bottom, left:right] = x[j, top:bottom, left:right]
            weight = 1 - (bottom - top) * (right - left) / (H * W)
        out_y[i] = weight * y[i] + (1 - weight) * y[j]
    return out_x, out_y


# -- values ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
@pytest.mark.parametrize("per_row", [False, True])
def test_values_match_a_numpy_reference(mode, per_row):
    op = _mix(mode=mode, per_row=per_row, alpha=1.0)
    batch, keys = _batch(8, valid_rows=6), _keys(8)
    out = op.apply_batch(batch, keys)
    draw = _draw_for(op, batch, keys)
    want_x, want_y = _reference(op, batch, draw)
    # float32 arithmetic on values up to ~800: 1e-4 relative
    np.testing.assert_allclose(np.asarray(out["image"]), want_x, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(out["label"]), want_y, rtol=1e-5, atol=1e-6)
    assert out["image"].dtype == jnp.float32 and out["label"].dtype == jnp.float32
    np.testing.assert_array_equal(out[VALID_MASK], batch[VALID_MASK])
    lam = np.asarray(draw.lam)[:6]
    assert np.all((lam > 0) & (lam < 1))
    assert (len(set(lam.tolist())) > 1) == per_row  # one lam per batch unless per_row


def test_cutmix_pastes_a_box_of_the_partner_and_keeps_uint8():
    op = _mix(mode="cutmix", alpha=1.0)
    batch = _batch(6)
    batch["image"] = (batch["image"] % 256).astype(jnp.uint8)
    keys = _keys(6, seed=3)
    out = op.apply_batch(batch, keys)
    assert out["image"].dtype == jnp.uint8
    draw = _draw_for(op, batch, keys)
    x, got = np.asarray(batch["image"]), np.asarray(out["image"])
    top, bottom, left, right = np.asarray(draw.box[0])  # one box for the batch
    assert (bottom - top) * (right - left) > 0
    for i, j in enumerate(np.asarray(draw.partner)):
        inside = np.zeros((H, W), bool)
        inside[top:bottom, left:right] = True
        np.testing.assert_array_equal(got[i][inside], x[j][inside])
        np.testing.assert_array_equal(got[i][~inside], x[i][~inside])
    weight = 1 - (bottom - top) * (right - left) / (H * W)
    np.testing.assert_allclose(np.asarray(draw.weight), weight, rtol=1e-6)


def test_mixup_of_integer_images_is_float32_on_the_same_scale():
    op = _mix(mode="mixup")
    batch = _batch(4)
    batch["image"] = jnp.full((4, H, W, C), 200, jnp.uint8)
    out = op.apply_batch(batch, _keys(4))
    assert out["image"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out["image"]), 200.0, rtol=1e-6)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_labels_sum_to_one_and_soft_labels_keep_their_dtype(mode):
    op = _mix(mode=mode, per_row=True, alpha=0.4)
    out = op.apply_batch(_batch(16, valid_rows=11), _keys(16, seed=5))
    np.testing.assert_allclose(np.asarray(out["label"]).sum(-1), 1.0, rtol=1e-6)
    soft = BatchMix(BatchMixConfig(mode=mode, alpha=0.4))
    batch = _batch(16)
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(1), (16, K)), axis=-1).astype(jnp.bfloat16)
    out = soft.apply_batch({**batch, "label": probs}, _keys(16))
    assert out["label"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out["label"], np.float32).sum(-1), 1.0, atol=2e-2)


def test_probability_zero_returns_the_batch_and_one_hot_labels_bit_for_bit():
    op = _mix(mode="mixup", probability=0.0)
    batch = _batch(5)
    out = op.apply_batch(batch, _keys(5))
    np.testing.assert_array_equal(np.asarray(out["image"]), np.asarray(batch["image"]))
    np.testing.assert_array_equal(np.asarray(out["label"]), np.eye(K)[np.asarray(batch["label"])])


def test_per_row_probability_mixes_some_rows_and_leaves_the_others_exactly():
    op = _mix(mode="mixup", probability=0.5, per_row=True)
    batch, keys = _batch(64), _keys(64)
    out = op.apply_batch(batch, keys)
    draw = _draw_for(op, batch, keys)
    mixed = np.asarray(draw.mixed)
    assert 10 < mixed.sum() < 54
    np.testing.assert_array_equal(np.asarray(out["image"])[~mixed], np.asarray(batch["image"])[~mixed])


# -- partners and padding -------------------------------------------------------


@pytest.mark.parametrize("valid", [[1, 1, 1, 1, 1, 0, 0, 0], [0, 1, 1, 0, 1, 0, 1, 1], [1, 0, 0, 0, 0, 0, 0, 0]])
def test_partners_permute_the_valid_rows_and_fix_the_padding(valid):
    valid = np.asarray(valid, bool)
    partners = np.asarray(jax.vmap(lambda k: valid_partners(k, jnp.asarray(valid)))(_keys(300)))
    for partner in partners:
        assert sorted(partner[valid]) == sorted(np.flatnonzero(valid))  # a permutation of the valid rows
        np.testing.assert_array_equal(partner[~valid], np.flatnonzero(~valid))  # padding: itself
    seen = {tuple(p[valid]) for p in partners}
    # uniform over the n! permutations: 300 draws show most of the 5! = 120 (expected ~110)
    assert len(seen) > 90 if valid.sum() == 5 else len(seen) == 1


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_padding_rows_are_untouched_and_never_partners_in_a_short_last_batch(mode):
    n, size, seed = 10, 4, 7
    source = MemorySource(MemorySourceConfig(), data=_data(n))
    op = _mix(mode=mode, per_row=True)
    pipeline = Pipeline(source=source, stages=[op], batch_size=size, rngs=nnx.Rngs(seed))
    batches = list(pipeline)
    images = _images(n)
    last = batches[-1]
    np.testing.assert_array_equal(np.asarray(last[VALID_MASK]), [True, True, False, False])
    np.testing.assert_array_equal(np.asarray(last["image"])[2:], images[[9, 9]])  # padding repeats record 9
    np.testing.assert_array_equal(np.asarray(last["label"])[2:], np.eye(K)[[0, 0]])
    # the real rows only draw from records 8 and 9: their mean record index lies in [8, 9]
    base = images[0].mean()
    mixed_records = (np.asarray(last["image"])[:2].mean(axis=(1, 2, 3)) - base) / 100
    assert np.all((mixed_records >= 8 - 1e-3) & (mixed_records <= 9 + 1e-3))
    # every batch equals the numpy reference built from its records' keys
    for b, batch in enumerate(batches):
        records = np.minimum(np.arange(b * size, (b + 1) * size), n - 1)
        keys = record_keys(node_key(pipeline_seed(nnx.Rngs(seed)), "mix"), 0, records)
        given = {
            "image": jnp.asarray(images[records]),
            "label": jnp.asarray(records % K),
            VALID_MASK: batch[VALID_MASK],
        }
        want_x, want_y = _reference(op, given, _draw_for(op, given, keys))
        np.testing.assert_allclose(np.asarray(batch["image"]), want_x, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(np.asarray(batch["label"]), want_y, rtol=1e-5, atol=1e-6)
    assert op.get_operation_stats() == {"applied_count": n, "skipped_count": 0}


# -- keys, determinism, resume, scan ----------------------------------------------


def test_the_batch_key_depends_only_on_the_first_valid_row():
    op = _mix()
    keys, valid = _keys(6), jnp.asarray([False, True, True, True, False, False])
    want = jax.random.fold_in(keys[1], BATCH_KEY_SALT)
    np.testing.assert_array_equal(jax.random.key_data(op.batch_key(keys, valid)), jax.random.key_data(want))
    other = keys.at[2:].set(_keys(4, seed=9))
    np.testing.assert_array_equal(
        jax.random.key_data(op.batch_key(other, valid)), jax.random.key_data(op.batch_key(keys, valid))
    )


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_deterministic_per_batch_key_and_different_keys_differ(mode):
    op = _mix(mode=mode)
    batch = _batch(8)
    a = op.apply_batch(batch, _keys(8, seed=1))
    b = op.apply_batch(batch, _keys(8, seed=1))
    c = op.apply_batch(batch, _keys(8, seed=2))
    np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    assert not np.array_equal(np.asarray(a["image"]), np.asarray(c["image"]))
    jitted = jax.jit(lambda batch, keys: op.apply_batch(batch, keys, count=False))(batch, _keys(8, seed=1))
    np.testing.assert_allclose(np.asarray(jitted["image"]), np.asarray(a["image"]), rtol=1e-6)


def _shuffled(seed=3, n=10, size=4, epochs=2, mode="mixup"):
    source = MemorySource(MemorySourceConfig(), data=_data(n))
    op = _mix(mode=mode, per_row=True)
    return op, Pipeline(
        source=source, stages=[op], batch_size=size, rngs=nnx.Rngs(seed), shuffle=True, num_epochs=epochs
    )


def _numpy(batch):
    return {k: np.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_resume_gives_identical_mixed_batches(mode):
    _, pipeline = _shuffled(mode=mode)
    full = [_numpy(b) for b in pipeline]
    assert len(full) == 6
    assert not np.array_equal(full[0]["image"], full[3]["image"])  # epochs mix differently
    _, first = _shuffled(mode=mode)
    it = iter(first)
    for _ in range(4):  # into the second epoch
        next(it)
    state = it.get_state()
    _, second = _shuffled(mode=mode)
    resumed = iter(second)
    resumed.set_state(state)
    rest = [_numpy(b) for b in resumed]
    assert len(rest) == 2
    for got, want in zip(rest, full[4:], strict=True):
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_scan_gives_the_batches_of_iteration():
    _, pipeline = _shuffled(epochs=1)
    want = [_numpy(b) for b in pipeline]
    op, scanned = _shuffled(epochs=1)
    out = scanned.scan(lambda batch: {"image": batch["image"], "label": batch["label"]}, length=3)
    for t, ref in enumerate(want):
        np.testing.assert_array_equal(np.asarray(out["image"][t]), ref["image"])
        np.testing.assert_array_equal(np.asarray(out["label"][t]), ref["label"])
    assert op.get_operation_stats() == {"applied_count": 10, "skipped_count": 0}


def test_a_stage_after_the_mix_sees_the_mixed_spec():
    source = MemorySource(MemorySourceConfig(), data=_data(6))
    op = _mix(mode="mixup")
    assert op.output_spec(
        {"image": jax.ShapeDtypeStruct((H, W, C), jnp.uint8), "label": jax.ShapeDtypeStruct((), jnp.int32)}
    ) == {
        "image": jax.ShapeDtypeStruct((H, W, C), jnp.float32),
        "label": jax.ShapeDtypeStruct((K,), jnp.float32),
    }
    top = ElementOperator(ElementOperatorConfig(), lambda e, k: {**e, "top": jnp.argmax(e["label"])})
    batch = next(iter(Pipeline(source=source, stages=[op, top], batch_size=3, rngs=nnx.Rngs(0))))
    assert batch["label"].shape == (3, K) and batch["top"].shape == (3,)


# -- gradients --------------------------------------------------------------------


def test_mixup_gradient_wrt_images_is_the_transposed_mix():
    op = _mix(mode="mixup", per_row=True)
    batch, keys = _batch(6, valid_rows=5), _keys(6)
    cotangent = jax.random.normal(jax.random.key(4), (6, H, W, C))

    def loss(images):
        return jnp.sum(op.apply_batch({**batch, "image": images}, keys, count=False)["image"] * cotangent)

    grad = np.asarray(jax.grad(loss)(batch["image"]))
    draw = _draw_for(op, batch, keys)
    lam, partner, mixed = (np.asarray(a) for a in (draw.lam, draw.partner, draw.mixed))
    c = np.asarray(cotangent, np.float64)
    want = np.where(mixed[:, None, None, None], lam[:, None, None, None], 1.0) * c
    for i in np.flatnonzero(mixed):
        want[partner[i]] += (1 - lam[i]) * c[i]
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-5)


def test_cutmix_gradient_routes_each_pixel_to_its_source():
    op = _mix(mode="cutmix")
    batch, keys = _batch(4), _keys(4, seed=11)
    grad = np.asarray(
        jax.grad(lambda x: op.apply_batch({**batch, "image": x}, keys, count=False)["image"].sum())(batch["image"])
    )
    # every output pixel comes from exactly one input pixel, and partners are a permutation
    np.testing.assert_allclose(grad.sum(), 4 * H * W * C)
    assert set(np.unique(grad).tolist()) <= {0.0, 1.0, 2.0}


# -- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "blend"}, "mode must be one of ['mixup', 'cutmix'], got 'blend'"),
        ({"alpha": 0.0}, "alpha must be a finite number > 0, got 0.0"),
        ({"alpha": float("nan")}, "alpha must be a finite number > 0, got nan"),
        ({"fields": ()}, "fields must be a non-empty sequence of element keys, got ()"),
        ({"fields": "image"}, "fields must be a non-empty sequence of element keys, got 'image'"),
        ({"fields": ("image", "image")}, "fields must be unique non-empty strings"),
        ({"label_field": ""}, "label_field must be a non-empty string or None, got ''"),
        ({"label_field": "image"}, "label_field 'image' is also in fields"),
        ({"num_classes": 1}, "num_classes must be None or an int >= 2, got 1"),
        ({"num_classes": 3, "label_field": None}, "num_classes=3 is for integer labels, but label_field is None"),
        ({"probability": 1.5}, "probability must be a number in [0, 1], got 1.5"),
        ({"per_row": 1}, "per_row must be a bool, got 1"),
        ({"stochastic": False}, "stochastic must be True (lam and the partner rows are drawn), got False"),
    ],
)
def test_bad_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(f"BatchMixConfig: {message}")):
        BatchMixConfig(**kwargs)


def test_a_wrong_config_type_is_rejected():
    with pytest.raises(TypeError, match="BatchMix: config must be a BatchMixConfig, got OperatorConfig"):
        BatchMix(OperatorConfig())


@pytest.mark.parametrize(
    ("config", "data", "message"),
    [
        (BatchMixConfig(num_classes=K), {"img": np.zeros((4, H, W, C), np.float32)}, "field 'image' is not in"),
        (BatchMixConfig(), _data(4), "must be float one-hot or soft labels"),
        (
            BatchMixConfig(mode="cutmix", num_classes=K),
            {"image": np.zeros((4, 7), np.float32), "label": np.zeros(4, np.int32)},
            "must be (H, W, ...) per element",
        ),
        (
            BatchMixConfig(mode="cutmix", fields=("image", "mask"), num_classes=K),
            {**_data(4), "mask": np.zeros((4, H + 1, W), np.int32)},
            "cutmix fields must share (H, W)",
        ),
        (
            BatchMixConfig(num_classes=K),
            {"image": np.zeros((4, 2), bool), "label": np.zeros(4, np.int32)},
            "must be numeric",
        ),
    ],
)
def test_bad_elements_fail_at_pipeline_construction(config, data, message):
    source = MemorySource(MemorySourceConfig(), data=data)
    with pytest.raises(ValueError, match=re.escape(message)):
        Pipeline(source=source, stages=[BatchMix(config)], batch_size=2, rngs=nnx.Rngs(0))


def test_a_batch_operator_has_no_per_element_form():
    op = _mix()
    with pytest.raises(TypeError, match="BatchMix is a batch operator: it transforms whole batches"):
        op.apply({"image": jnp.zeros((H, W, C)), "label": jnp.int32(0)}, jax.random.key(0))
    composite = CompositeOperator(CompositeOperatorConfig(stochastic=True, stream_name="c"), [op])
    source = MemorySource(MemorySourceConfig(), data=_data(4))
    with pytest.raises(ValueError, match="is a batch operator"):
        Pipeline(source=source, stages=[composite], batch_size=2, rngs=nnx.Rngs(0))


def test_apply_batch_checks_its_batch():
    op = _mix()
    with pytest.raises(ValueError, match="apply_batch needs per-row keys"):
        op.apply_batch(_batch(4))
    with pytest.raises(ValueError, match="got 3 keys for a batch of 4 rows"):
        op.apply_batch(_batch(4), _keys(3))
    with pytest.raises(ValueError, match="BatchMix: the batch's arrays must share a leading axis: .*leading size 3"):
        op.apply_batch({**_batch(4), "label": jnp.zeros(3, jnp.int32)}, _keys(4))


def test_the_base_class_must_be_subclassed():
    class Plain(BatchOperator):
        pass

    with pytest.raises(NotImplementedError, match="Plain must implement transform_batch"):
        Plain(OperatorConfig()).apply_batch({"x": jnp.zeros(2)})


def test_a_dag_node_and_a_sharded_pipeline_mix_as_the_linear_one():
    n, size = 20, 8  # the last batch has 4 valid rows
    _, linear = _shuffled(n=n, size=size, epochs=1)
    want = [_numpy(b) for b in linear]
    source = MemorySource(MemorySourceConfig(), data=_data(n))
    dag = Pipeline(
        source=source,
        nodes={"mix": _mix(mode="mixup", per_row=True)},
        edges=[("source", "mix")],
        sink="mix",
        batch_size=size,
        rngs=nnx.Rngs(3),
        shuffle=True,
    )
    # a DAG node's key is named after the node ("mix"), a linear stage's after its stream ("mix"): the same
    for got, ref in zip((_numpy(b) for b in dag), want, strict=True):
        np.testing.assert_array_equal(got["image"], ref["image"])
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded = Pipeline(
        source=MemorySource(MemorySourceConfig(), data=_data(n)),
        stages=[_mix(mode="mixup", per_row=True)],
        batch_size=size,
        rngs=nnx.Rngs(3),
        shuffle=True,
        sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
    )
    for got, ref in zip((_numpy(b) for b in sharded), want, strict=True):
        np.testing.assert_allclose(got["image"], ref["image"], rtol=1e-6)
        np.testing.assert_allclose(got["label"], ref["label"], rtol=1e-6)
        np.testing.assert_array_equal(got[VALID_MASK], ref[VALID_MASK])


def test_a_host_read_source_mixes_as_the_device_source(tmp_path):
    n, size = 10, 4
    _, device = _shuffled(n=n, size=size, epochs=1)
    want = [_numpy(b) for b in device]
    paths = {}
    for name, array in _data(n).items():
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], array)
    host = Pipeline(
        source=NumpyFileSource(NumpyFileSourceConfig(), paths=paths),
        stages=[_mix(mode="mixup", per_row=True)],
        batch_size=size,
        rngs=nnx.Rngs(3),
        shuffle=True,
    )
    for got, ref in zip((_numpy(b) for b in host), want, strict=True):
        np.testing.assert_array_equal(got["image"], ref["image"])
        np.testing.assert_array_equal(got["label"], ref["label"])

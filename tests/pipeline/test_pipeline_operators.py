"""Operators inside pipelines: specs chained at construction, gradients through stages."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from pipeline_helpers import collect, make_source

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.core.config import OperatorConfig
from datarax.core.operator import OperatorModule
from datarax.operators import ElementOperator, ElementOperatorConfig


def _op(fn):
    return ElementOperator(ElementOperatorConfig(), fn=fn)


class Scale(nnx.Module):
    """A learnable scale on ``x``."""

    def __init__(self, value=2.0):
        self.w = nnx.Param(jnp.asarray(value, dtype=jnp.float32))

    def __call__(self, element, key):
        return {**element, "x": element["x"] * self.w[...]}


class ScaleOp(OperatorModule):
    """The same, as an OperatorModule subclass holding the parameter itself."""

    def __init__(self, value=2.0):
        super().__init__(OperatorConfig())
        self.w = nnx.Param(jnp.asarray(value, dtype=jnp.float32))

    def apply(self, element, key=None):
        return {**element, "x": element["x"] * self.w[...]}


def test_stages_run_in_order():
    pipeline = Pipeline(
        source=make_source(6),
        stages=[_op(lambda e, k: {**e, "x": e["x"] + 1}), _op(lambda e, k: {**e, "x": e["x"] * 10})],
        batch_size=3,
    )
    batches = collect(pipeline)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), (np.arange(6) / 2 + 1) * 10)


def test_a_stage_may_change_keys_shapes_and_dtypes():
    pipeline = Pipeline(
        source=make_source(5),
        stages=[
            _op(lambda e, k: {"label": e["label"], "v": jnp.stack([e["x"], e["x"]]).astype(jnp.bfloat16)}),
            _op(lambda e, k: {"label": e["label"], "n": jnp.sum(e["v"].astype(jnp.float32))}),
        ],
        batch_size=4,
    )
    spec = pipeline.batch_spec()
    assert set(spec) == {"label", "n", VALID_MASK}
    batch = next(iter(pipeline))
    assert batch["n"].dtype == jnp.float32 and batch["n"].shape == (4,)
    np.testing.assert_array_equal(np.asarray(batch["n"]), np.arange(4, dtype=np.float32))


@pytest.mark.parametrize(
    "second, pattern",
    [
        # shape: a (3,) vector times a (2, 2) matrix
        (lambda e, k: {"y": e["v"] @ jnp.ones((2, 2))}, "stage_1"),
        # dtype: bitwise ops need integers, the first stage made floats
        (lambda e, k: {"y": jnp.bitwise_and(e["v"], 1)}, "stage_1"),
        # a key the previous stage dropped
        (lambda e, k: {"y": e["x"]}, "stage_1"),
        # not a dict
        (lambda e, k: e["v"], "stage_1"),
    ],
    ids=["shape", "dtype", "missing-key", "not-a-dict"],
)
def test_mismatched_stages_fail_at_construction_naming_the_stage(second, pattern):
    first = _op(lambda e, k: {"v": jnp.stack([e["x"]] * 3)})
    with pytest.raises(ValueError, match=pattern) as info:
        Pipeline(source=make_source(4), stages=[first, _op(second)], batch_size=2)
    assert "stage_0" not in str(info.value).split("cannot take")[0]


def test_a_stage_may_not_output_valid_mask():
    with pytest.raises(ValueError, match="stage_0.*valid_mask"):
        Pipeline(source=make_source(4), stages=[_op(lambda e, k: {**e, VALID_MASK: True})], batch_size=2)


def test_a_bad_first_stage_is_named():
    with pytest.raises(ValueError, match="stage_0"):
        Pipeline(source=make_source(4), stages=[_op(lambda e, k: {"y": e["missing"]})], batch_size=2)


def test_gradient_reaches_a_parameter_inside_a_stage():
    scale = Scale(2.0)
    op = ElementOperator(ElementOperatorConfig(), fn=scale)
    pipeline = Pipeline(source=make_source(20), stages=[op], batch_size=4)

    def loss(p):
        return jnp.mean(p.compute_batch(0, 0)["x"])  # rows x = 0, .5, 1, 1.5

    grads = nnx.grad(loss)(pipeline)  # w.r.t. every nnx.Param in the pipeline
    g = grads["nodes"]["stage_0"]["fn"]["w"].get_value()
    assert float(g) == pytest.approx(0.75)
    assert float(jax.value_and_grad(lambda w: jnp.mean(jnp.arange(4) / 2 * w))(2.0)[1]) == pytest.approx(0.75)

    # Directly on the operator, with the same gather compute_batch does.
    def op_loss(o):
        records = pipeline.source.get_records(jnp.arange(4))
        return jnp.mean(o.apply_batch(records)["x"])

    g_op = nnx.grad(op_loss)(op)["fn"]["w"].get_value()
    assert float(g_op) == pytest.approx(0.75)


def test_masked_loss_ignores_padding_rows_and_optimizer_updates_the_stage():
    op = ScaleOp(1.0)
    pipeline = Pipeline(source=make_source(6), stages=[op], batch_size=4, prefetch=0, num_epochs=None)

    def loss(p):
        batch = p.compute_batch(0, 4)  # rows: records 4, 5 and two padding copies of 5
        mask = batch[VALID_MASK].astype(jnp.float32)
        return jnp.sum(batch["x"] * mask) / jnp.sum(mask)

    grads = nnx.grad(loss)(pipeline)
    assert float(grads["nodes"]["stage_0"]["w"].get_value()) == pytest.approx((2.0 + 2.5) / 2)

    optimizer = nnx.Optimizer(op, optax.sgd(1.0), wrt=nnx.Param)
    iterator = iter(pipeline)
    np.testing.assert_array_equal(np.asarray(next(iterator)["x"]), [0, 0.5, 1, 1.5])
    optimizer.update(op, nnx.grad(lambda o: jnp.mean(o.apply_batch({"x": jnp.ones(2)})["x"]))(op))
    assert float(op.w[...]) == pytest.approx(0.0)  # 1 - 1.0 * d/dw mean(1 * w)
    # With prefetch=0 nothing was computed ahead: the next batch sees the update.
    np.testing.assert_array_equal(np.asarray(next(iterator)["x"]), [0, 0, 0, 0])


@pytest.mark.parametrize("prefetch", [1, 3])
def test_prefetched_batches_are_recomputed_after_a_parameter_update(prefetch):
    op = ScaleOp(1.0)
    pipeline = Pipeline(source=make_source(40), stages=[op], batch_size=2, prefetch=prefetch)
    iterator = iter(pipeline)
    assert next(iterator)["x"].tolist() == [0.0, 0.5]
    op.w.set_value(jnp.asarray(0.0))
    rest = collect(iterator)
    # Batches dispatched ahead with the old scale are dropped and recomputed:
    # prefetch depth never changes what a batch holds.
    assert len(rest) == 19
    assert not any(b["x"].any() for b in rest)

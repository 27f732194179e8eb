"""The compiled step: traced once, reused by every iterator, equal to the eager computation."""

import jax.numpy as jnp
import numpy as np
from flax import nnx
from pipeline_helpers import collect, make_source, noise_op

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.core.config import OperatorConfig
from datarax.core.operator import OperatorModule


class CountingOp(OperatorModule):
    """Counts how often ``apply`` runs in Python, i.e. how often it is traced."""

    def __init__(self):
        super().__init__(OperatorConfig())
        self.traces = [0]  # a list: a static attribute shared by NNX copies of the module

    def apply(self, element, key=None):
        self.traces[0] += 1
        return {**element, "x": element["x"] + 1}


def _counting_pipeline(**kwargs):
    op = CountingOp()
    pipeline = Pipeline(source=make_source(10), stages=[op], batch_size=4, shuffle=True, rngs=nnx.Rngs(2), **kwargs)
    return op, pipeline


def test_three_epochs_trace_the_step_once():
    op, pipeline = _counting_pipeline(num_epochs=1)
    before = op.traces[0]  # construction traces apply once (eval_shape) to check specs
    epochs = []
    for _ in range(3):
        epochs.append(collect(pipeline))
    assert op.traces[0] == before + 1
    assert [len(e) for e in epochs] == [3, 3, 3]
    for _ in range(3):  # new iterators of the same pipeline reuse the compiled step
        it = iter(pipeline)
        next(it)
        it.set_state(it.get_state())
        next(it)
    assert op.traces[0] == before + 1


def test_num_epochs_none_and_prefetch_do_not_retrace():
    op, pipeline = _counting_pipeline(num_epochs=None, prefetch=3)
    before = op.traces[0]
    it = iter(pipeline)
    for _ in range(4 * len(pipeline)):
        next(it)
    assert op.traces[0] == before + 1


def test_compute_batch_equals_the_compiled_stream():
    op = noise_op(5)
    pipeline = Pipeline(source=make_source(10), stages=[op], batch_size=4, shuffle=True, rngs=nnx.Rngs(2), num_epochs=2)
    batches = collect(pipeline)
    assert len(batches) == 6
    # compute_batch is a plain traceable function: under a jit of our own, with a traced epoch and start.
    compute = nnx.jit(lambda p, epoch, start: p.compute_batch(epoch, start))
    starts = [0, 4, 8]
    for t, batch in enumerate(batches):
        eager = compute(pipeline, jnp.int32(t // 3), jnp.int32(starts[t % 3]))
        assert set(eager) == set(batch)
        for key in batch:
            np.testing.assert_array_equal(np.asarray(eager[key]), batch[key])
    assert batches[2][VALID_MASK].tolist() == [True, True, False, False]


def test_a_batch_is_one_jax_array_per_key():
    _, pipeline = _counting_pipeline()
    batch = next(iter(pipeline))
    assert set(batch) == {"label", "x", VALID_MASK}
    assert all(hasattr(v, "block_until_ready") for v in batch.values())
    assert batch[VALID_MASK].dtype == jnp.bool_

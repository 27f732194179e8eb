"""Model + optimizer + data iterator in one checkpoint: real NNX objects, real Orbax steps on disk."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from datarax import Pipeline
from datarax.checkpoint import OrbaxCheckpointHandler
from datarax.sources import MemorySource, MemorySourceConfig

# --- a real, small training run (also imported by the fresh-process test) -----------------------

N, B = 40, 8


def make_pipeline() -> Pipeline:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.1).astype(np.float32)
    source = MemorySource(MemorySourceConfig(), data={"x": x, "y": y})
    return Pipeline(source=source, batch_size=B, rngs=nnx.Rngs(3), shuffle=True, num_epochs=None)


class Regressor(nnx.Module):
    """A linear layer, dropout (an rng stream in the state) and a batch statistic."""

    def __init__(self, seed: int, features: int = 3):
        rngs = nnx.Rngs(params=seed, dropout=seed + 100)
        self.linear = nnx.Linear(features, 1, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.norm = nnx.BatchNorm(features, rngs=rngs)

    def __call__(self, x):
        return self.linear(self.dropout(self.norm(x)))[:, 0]


def build(seed: int):
    """A model, its Adam optimizer and an iterator, as every training script builds them."""
    model = Regressor(seed)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    return model, optimizer, iter(make_pipeline())


@nnx.jit
def train_step(model, optimizer, batch):
    def loss_fn(model):
        error = model(batch["x"]) - batch["y"]
        return jnp.sum(jnp.where(batch["valid_mask"], error**2, 0.0)) / jnp.sum(batch["valid_mask"])

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def train(model, optimizer, iterator, steps: int) -> list[float]:
    return [float(train_step(model, optimizer, next(iterator))) for _ in range(steps)]


def digest(*objects) -> str:
    """Hash of every variable of ``objects`` (paths, dtypes, values)."""
    h = hashlib.sha256()
    for obj in objects:
        for path, var in nnx.to_flat_state(nnx.state(obj)):
            value = var.get_value()
            if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
                value = jax.random.key_data(value)
            h.update(f"{path}:{value.dtype}:{value.shape}".encode())
            h.update(np.asarray(value).tobytes())
    return h.hexdigest()


def assert_same_variables(a, b):
    flat_a, flat_b = list(nnx.to_flat_state(nnx.state(a))), list(nnx.to_flat_state(nnx.state(b)))
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        x, y = x.get_value(), y.get_value()
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


# --- resume -------------------------------------------------------------------------------------


def test_model_optimizer_iterator_resume_continues_identically(tmp_path):
    model, optimizer, iterator = build(seed=0)
    train(model, optimizer, iterator, 7)  # into the second epoch
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(7, {"model": model, "optimizer": optimizer, "iterator": iterator})
        handler.wait_until_finished()
        expected_losses = train(model, optimizer, iterator, 1)
        after_one = digest(model, optimizer)
        expected_losses += train(model, optimizer, iterator, 4)

        fresh_model, fresh_optimizer, fresh_iterator = build(seed=1)
        assert digest(fresh_model) != digest(model)
        step = handler.restore({"model": fresh_model, "optimizer": fresh_optimizer, "iterator": fresh_iterator})
    assert step == 7
    assert int(fresh_optimizer.step[...]) == 7
    assert fresh_iterator.get_state()["position"] == 7 * B % N
    losses = train(fresh_model, fresh_optimizer, fresh_iterator, 1)
    assert digest(fresh_model, fresh_optimizer) == after_one, "one step after restore is the step without it"
    losses += train(fresh_model, fresh_optimizer, fresh_iterator, 4)
    assert losses == expected_losses
    assert_same_variables(fresh_model, model)
    assert_same_variables(fresh_optimizer, optimizer)
    assert fresh_iterator.get_state() == iterator.get_state()


def test_on_disk_layout_names_each_item_and_how_it_was_saved(tmp_path):
    model, optimizer, iterator = build(seed=0)
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(0, {"model": model, "optimizer": optimizer, "iterator": iterator})
    docs = {
        name: json.loads((tmp_path / "0" / f"{name}.json" / "metadata").read_text())
        for name in ("model", "optimizer", "iterator")
    }
    assert docs["model"]["via"] == docs["optimizer"]["via"] == "nnx.state"
    assert docs["iterator"]["via"] == "get_state"
    assert set(docs["model"]["state"]) == {"linear", "dropout", "norm"}
    assert docs["model"]["state"]["linear"]["kernel"]["shape"] == [3, 1]
    assert set(docs["optimizer"]["state"]) == {"step", "opt_state"}
    assert docs["iterator"]["state"] == iterator.get_state()  # pure JSON, no arrays
    assert not (tmp_path / "0" / "iterator.arrays").exists()


_RESTORE_SCRIPT = """
import sys
sys.path.insert(0, {tests_dir!r})
from test_training_state import build, digest, train
from datarax.checkpoint import OrbaxCheckpointHandler
model, optimizer, iterator = build(seed=5)
with OrbaxCheckpointHandler({directory!r}) as handler:
    step = handler.restore({{"model": model, "optimizer": optimizer, "iterator": iterator}})
train(model, optimizer, iterator, 2)
print(step, digest(model, optimizer))
"""


def test_resume_in_a_fresh_process(tmp_path):
    model, optimizer, iterator = build(seed=0)
    train(model, optimizer, iterator, 3)
    with OrbaxCheckpointHandler(tmp_path / "ckpt") as handler:
        handler.save(3, {"model": model, "optimizer": optimizer, "iterator": iterator})
    train(model, optimizer, iterator, 2)
    script = _RESTORE_SCRIPT.format(tests_dir=str(Path(__file__).parent), directory=str(tmp_path / "ckpt"))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["3", digest(model, optimizer)]


def test_restored_arrays_keep_the_targets_sharding(tmp_path):
    mesh = jax.make_mesh((8,), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec(None, "data"))

    def sharded_model(seed):
        model = nnx.Linear(4, 8, use_bias=False, rngs=nnx.Rngs(seed))
        model.kernel.set_value(jax.device_put(model.kernel[...], sharding))
        return model

    model = sharded_model(0)
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(1, model)
        fresh = sharded_model(1)
        handler.restore(fresh)
    assert model.kernel[...].sharding == fresh.kernel[...].sharding == sharding
    np.testing.assert_array_equal(fresh.kernel[...], model.kernel[...])


def test_rng_streams_of_a_model_continue_after_restore(tmp_path):
    model = Regressor(seed=0)
    model.dropout.rngs()  # advance the stream, so the count is not the initial one
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(1, model)
        fresh = Regressor(seed=9)
        handler.restore(fresh)
    assert isinstance(fresh.dropout.rngs.key[...], jax.Array)
    assert jnp.issubdtype(fresh.dropout.rngs.key[...].dtype, jax.dtypes.prng_key)
    for _ in range(3):
        np.testing.assert_array_equal(
            jax.random.key_data(fresh.dropout.rngs()), jax.random.key_data(model.dropout.rngs())
        )


# --- strictness: a restore changes every item or none ---------------------------------------------


def test_shape_mismatch_names_item_and_path_and_changes_nothing(tmp_path):
    model, optimizer, iterator = build(seed=0)
    train(model, optimizer, iterator, 2)
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(2, {"model": model, "optimizer": optimizer, "iterator": iterator})
        fresh_model, _, fresh_iterator = build(seed=1)
        # The model and the iterator fit; the optimizer belongs to a wider model.
        wider_optimizer = nnx.Optimizer(Regressor(seed=1, features=4), optax.adam(1e-2), wrt=nnx.Param)
        before = digest(fresh_model), fresh_iterator.get_state(), digest(wider_optimizer)
        with pytest.raises(
            ValueError,
            match=r"'optimizer' of step 2 at 'opt_state/0/mu/linear/kernel': float32\[3, 1\] in the checkpoint, "
            r"expected float32\[4, 1\]",
        ):
            handler.restore({"iterator": fresh_iterator, "model": fresh_model, "optimizer": wider_optimizer})
        assert (digest(fresh_model), fresh_iterator.get_state(), digest(wider_optimizer)) == before


def test_wrong_shape_of_a_parameter_is_named(tmp_path):
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(1, {"model": nnx.Linear(3, 1, use_bias=False, rngs=nnx.Rngs(0))})
        wider = nnx.Linear(3, 2, use_bias=False, rngs=nnx.Rngs(1))
        kernel = wider.kernel[...]
        with pytest.raises(
            ValueError,
            match=r"'model' of step 1 at 'kernel': float32\[3, 1\] in the checkpoint, "
            r"expected float32\[3, 2\]",
        ):
            handler.restore({"model": wider})
        assert wider.kernel[...] is kernel


def test_wrong_dtype_of_a_parameter_is_named(tmp_path):
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(1, nnx.Linear(3, 1, rngs=nnx.Rngs(0)))
        half = nnx.Linear(3, 1, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
        with pytest.raises(ValueError, match=r"'default' of step 1 at 'bias': float32\[1\].*expected bfloat16\[1\]"):
            handler.restore(half)


def test_missing_and_unexpected_variables_are_listed(tmp_path):
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(1, nnx.Linear(3, 1, rngs=nnx.Rngs(0)))
        no_bias = nnx.Linear(3, 1, use_bias=False, rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match=r"missing paths \[\], unexpected paths \['bias'\]"):
            handler.restore(no_bias)
        handler.save(2, no_bias)
        with pytest.raises(ValueError, match=r"missing paths \['bias'\], unexpected paths \[\]"):
            handler.restore(nnx.Linear(3, 1, rngs=nnx.Rngs(0)))


def test_a_failing_set_state_rolls_back_the_nnx_items_already_restored(tmp_path):
    model, optimizer, iterator = build(seed=0)
    train(model, optimizer, iterator, 3)
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(3, {"model": model, "optimizer": optimizer, "iterator": iterator})
        fresh_model, fresh_optimizer, _ = build(seed=1)
        before = digest(fresh_model, fresh_optimizer)
        # An iterator over a differently built pipeline refuses the state in its own set_state,
        # after the model and the optimizer were updated: they must be put back.
        source = MemorySource(MemorySourceConfig(), data={"x": np.zeros((N, 3), np.float32)})
        other_iterator = iter(Pipeline(source=source, batch_size=B))
        with pytest.raises(ValueError, match="differently configured pipeline"):
            handler.restore({"model": fresh_model, "optimizer": fresh_optimizer, "iterator": other_iterator})
        assert digest(fresh_model, fresh_optimizer) == before
        assert other_iterator.get_state()["position"] == 0


def test_an_nnx_checkpoint_does_not_restore_into_a_checkpointable_and_back(tmp_path):
    model, optimizer, iterator = build(seed=0)
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(1, {"model": model, "iterator": iterator})
        with pytest.raises(ValueError, match=r"'model' of step 1 was saved from .*Regressor via nnx.state"):
            handler.restore({"model": iter(make_pipeline())})
        with pytest.raises(ValueError, match=r"'iterator' of step 1 was saved from .*PipelineIterator via get_state"):
            handler.restore({"iterator": Regressor(seed=0)})


def test_datarax_modules_use_their_own_get_state(tmp_path):
    """A Pipeline is an nnx.Module with get_state/set_state; the handler prefers the latter."""
    pipeline = make_pipeline()
    with OrbaxCheckpointHandler(tmp_path) as handler:
        handler.save(1, {"pipeline": pipeline})
    doc = json.loads((tmp_path / "1" / "pipeline.json" / "metadata").read_text())
    assert doc["via"] == "get_state"
    assert doc["type"] == "datarax.pipeline.pipeline.Pipeline"


def test_objects_that_are_neither_are_refused_at_save(tmp_path):
    with OrbaxCheckpointHandler(tmp_path) as handler:
        with pytest.raises(TypeError, match=r"'params' \(dict\) is not Checkpointable .* nor a Flax NNX object"):
            handler.save(0, {"params": {"w": jnp.ones(3)}})
        assert handler.all_steps() == []

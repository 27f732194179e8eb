"""``materialize``: a fusion boundary that returns its input unchanged, and the operators that use it."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datarax.core import fusion
from datarax.core.fusion import materialize
from datarax.operators import (
    AddNoise,
    AddNoiseConfig,
    GaussianBlur,
    GaussianBlurConfig,
    Grayscale,
    GrayscaleConfig,
    RandomBrightness,
    RandomBrightnessConfig,
    RandomContrast,
    RandomContrastConfig,
    RandomHue,
    RandomHueConfig,
    RandomRotation,
    RandomRotationConfig,
    RandomSaturation,
    RandomSaturationConfig,
)


def _compiled_text(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def test_doctests_pass():
    result = doctest.testmod(fusion)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    "value",
    [
        np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4),
        np.arange(24, dtype=np.uint8).reshape(4, 6),
        np.array([True, False, True]),
        np.array([-(2**31), 0, 2**31 - 1], dtype=np.int32),
        np.array([np.nan, 1.0], dtype=np.float32),  # a NaN probe takes the other branch: same values
        np.array([1 + 2j], dtype=np.complex64),
        np.array([0.5, 1.5], dtype=jnp.bfloat16),
    ],
    ids=["float32", "uint8", "bool", "int32", "nan-first", "complex64", "bfloat16"],
)
def test_values_and_dtypes_unchanged_under_jit(value):
    tree = {"x": jnp.asarray(value), "nested": [jnp.asarray(value)]}
    out = jax.jit(materialize)(tree)
    for leaf, original in ((out["x"], value), (out["nested"][0], value)):
        assert leaf.dtype == original.dtype and leaf.shape == original.shape
        np.testing.assert_array_equal(np.asarray(leaf), original)


def test_typed_keys_none_and_empty_leaves_pass_through():
    keys = jax.random.split(jax.random.key(3), 4)
    tree = {"keys": keys, "none": None, "empty": jnp.zeros((0, 3)), "x": jnp.arange(3.0)}
    out = jax.jit(materialize)(tree)
    assert out["none"] is None and out["empty"].shape == (0, 3)
    assert jax.dtypes.issubdtype(out["keys"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(out["keys"]), jax.random.key_data(keys))
    np.testing.assert_array_equal(out["x"], [0.0, 1.0, 2.0])


def test_a_tree_without_arrays_is_returned_as_is():
    tree = {"a": None, "b": 3}
    assert materialize(tree) is tree


def test_gradient_is_the_identity():
    x = jnp.linspace(0.0, 1.0, 6)
    grad = jax.grad(lambda v: jnp.sum(materialize({"v": v})["v"] * jnp.arange(6.0)))(x)
    np.testing.assert_array_equal(grad, np.arange(6.0))


def test_vmap_keeps_values():
    x = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(jax.vmap(materialize)(x), x)


def test_compiles_to_a_conditional_that_the_compiler_keeps():
    # The point of the boundary: a real conditional in the optimised program, for float and
    # integer inputs (an integer x == x would be folded away; the bitcast NaN test is not).
    for dtype in (jnp.float32, jnp.uint8):
        x = jnp.ones((8, 4, 4, 3), dtype)
        text = _compiled_text(lambda v: materialize(v * 2 + 1) * 3, x)
        assert "conditional(" in text[text.index("ENTRY") :]


def test_a_replicated_probe_gives_the_predicate_and_keeps_the_boundary():
    x = jnp.arange(96, dtype=jnp.float32).reshape(8, 4, 3)

    def with_probe(v, epoch):
        with fusion.replicated_probe(epoch):
            return materialize(v * 2 + 1) * 3

    text = _compiled_text(with_probe, x, jnp.uint32(0))
    assert "conditional(" in text[text.index("ENTRY") :]
    # Either branch runs (0x7FC00000 is a NaN bit pattern: the predicate is False) and neither changes a value.
    for epoch in (0, 5, 0x7FC00000):
        np.testing.assert_array_equal(jax.jit(with_probe)(x, jnp.uint32(epoch)), (x * 2 + 1) * 3)
    assert fusion._PROBE.get() is None  # the block leaves no probe behind, also when it raises
    with pytest.raises(RuntimeError, match="inside"), fusion.replicated_probe(jnp.uint32(1)):
        assert fusion._PROBE.get() is not None
        raise RuntimeError("raised inside the block")
    assert fusion._PROBE.get() is None


def test_on_several_devices_the_probe_removes_the_all_reduce():
    assert jax.device_count() > 1, "tests/conftest.py gives the suite 8 CPU devices"
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    rows = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    x = jax.device_put(jnp.ones((8 * jax.device_count(), 3)), rows)
    epoch = jax.device_put(jnp.uint32(0), NamedSharding(rows.mesh, PartitionSpec()))
    plain = _compiled_text(lambda v, e: materialize(v * 2), x, epoch)
    assert "all-reduce" in plain  # the first value, held by one device, is sent to all of them

    def probed(v, e):
        with fusion.replicated_probe(e):
            return materialize(v * 2)

    assert "all-reduce" not in _compiled_text(probed, x, epoch)


NEIGHBOUR_READERS = [
    RandomContrast(RandomContrastConfig(magnitude=0.4)),
    RandomSaturation(RandomSaturationConfig(magnitude=0.4)),
    RandomHue(RandomHueConfig(magnitude=0.1)),
    Grayscale(GrayscaleConfig(keep_channels=True)),
    GaussianBlur(GaussianBlurConfig(kernel_size=3)),
    RandomRotation(RandomRotationConfig(degrees=(-20, 20))),
]


@pytest.mark.parametrize("op", NEIGHBOUR_READERS, ids=lambda op: type(op).__name__)
def test_operators_that_read_neighbours_materialise_their_input(op):
    assert op.materializes_input
    images = jnp.asarray(np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32))
    keys = jax.random.split(jax.random.key(1), 4)
    batch = {"image": images, "valid_mask": jnp.ones(4, bool)}
    brighten = RandomBrightness(RandomBrightnessConfig(magnitude=0.2))

    def chain(b):
        return op.apply_batch(brighten.apply_batch(b, keys, count=False), keys, count=False)["image"]

    text = _compiled_text(chain, batch)
    assert "conditional(" in text[text.index("ENTRY") :]
    # ... and the boundary changes no value: the batch equals the operator applied row by row.
    middle = brighten.apply_batch(batch, keys, count=False)
    rows = [op.apply({"image": middle["image"][i]}, keys[i])["image"] for i in range(4)]
    np.testing.assert_allclose(np.asarray(jax.jit(chain)(batch)), np.stack(rows), rtol=1e-6, atol=1e-6)


def test_audio_noise_materialises_its_input():
    op = AddNoise(AddNoiseConfig(min_snr_db=10.0, max_snr_db=20.0))
    assert op.materializes_input
    waves = {"audio": jnp.sin(jnp.arange(4 * 64, dtype=jnp.float32).reshape(4, 64))}
    text = _compiled_text(lambda b, k: op.apply_batch(b, k, count=False), waves, jax.random.split(jax.random.key(0), 4))
    assert "conditional(" in text[text.index("ENTRY") :]


def test_pointwise_operators_do_not_pay_for_a_boundary():
    op = RandomBrightness(RandomBrightnessConfig(magnitude=0.2))
    assert not op.materializes_input
    batch = {"image": jnp.ones((4, 8, 8, 3))}
    text = _compiled_text(lambda b, k: op.apply_batch(b, k, count=False), batch, jax.random.split(jax.random.key(0), 4))
    assert "conditional(" not in text[text.index("ENTRY") :]

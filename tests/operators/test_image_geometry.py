"""Tests for datarax.operators.image_geometry: crops, resizes and rotations of one (H, W, C) image.

References are independent of the code under test: ``numpy.pad`` and slicing for the crops,
PIL's ``Image.resize`` for the resizes (float images in PIL's 32-bit float mode, one channel at a
time, so PIL computes in double; uint8 images in RGB mode, which PIL rounds to uint8 between its
two passes), a direct numpy bilinear for the non-antialiased resize, a transcription of
torchvision's ``RandomResizedCrop.get_params`` for the window, and ``scipy.ndimage.rotate`` for the
rotation. Random draws are recomputed with ``jax.random`` itself (the operators use
``datarax.core.threefry``, which must agree bit for bit).
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from flax import nnx
from jax.test_util import check_grads
from PIL import Image

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.operators.image_geometry import (
    CenterCrop,
    CenterCropConfig,
    RandomCrop,
    RandomCropConfig,
    RandomResizedCrop,
    RandomResizedCropConfig,
    RandomRotation,
    RandomRotationConfig,
    RandomTranslate,
    RandomTranslateConfig,
    Resize,
    ResizeConfig,
)
from datarax.sources import MemorySource, MemorySourceConfig

SDS = jax.ShapeDtypeStruct
RNG = np.random.default_rng(0)

# Tolerances, stated once: float images agree with PIL (double) and scipy (double) to float32
# rounding; uint8 images to one grey level (PIL rounds its intermediate image, we round once).
FLOAT_ATOL = 1e-5
UINT8_ATOL = 1


def _float_image(h, w, c=3):
    return RNG.random((h, w, c), dtype=np.float32)


def _uint8_image(h, w, c=3):
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def _uniform(key, i):
    """What the operators draw as their i-th scalar: jax.random's uniform of fold_in(key, i)."""
    return float(jax.random.uniform(jax.random.fold_in(key, i)))


def _pil_resize(image, size, resample=Image.BILINEAR):
    """PIL's resize of an (H, W, C) image to ``size = (height, width)``."""
    h, w = size
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((w, h), resample))
    channels = [Image.fromarray(image[..., c].astype(np.float32), mode="F") for c in range(image.shape[2])]
    return np.stack([np.asarray(ch.resize((w, h), resample)) for ch in channels], axis=-1)


def _numpy_bilinear(image, size):
    """Plain bilinear with half-pixel centres and clamped edges (no antialiasing), in float64."""
    (height, width), (h, w) = image.shape[:2], size

    def axis(n_in, n_out):
        coord = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(coord).astype(int)
        return low, np.minimum(low + 1, n_in - 1), coord - low

    y0, y1, fy = axis(height, h)
    x0, x1, fx = axis(width, w)
    x = image.astype(np.float64)
    rows = x[y0] * (1 - fy)[:, None, None] + x[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def _torchvision_window(u, height, width, scale, ratio):
    """torchvision's RandomResizedCrop.get_params with its uniforms given: 10 tries, then the centre."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for k in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[2 * k])
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[2 * k + 1])
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(u[20] * (height - h + 1)), int(u[21] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


# --- configs -------------------------------------------------------------------------------------

SIZED = [RandomCropConfig, CenterCropConfig, ResizeConfig, RandomResizedCropConfig]


@pytest.mark.parametrize("config_cls", SIZED, ids=lambda c: c.__name__)
@pytest.mark.parametrize("size", [0, -3, (0, 4), (4,), (4, 4, 4), (4.0, 4), 2.5, True, "32", None, (4, None)], ids=repr)
def test_size_must_be_positive_int_or_pair(config_cls, size):
    expected = rf"{config_cls.__name__}: size must be a positive int or a pair \(height, width\) of them, got "
    with pytest.raises(ValueError, match=expected + re.escape(repr(size))):
        config_cls(size=size)


@pytest.mark.parametrize("config_cls", SIZED, ids=lambda c: c.__name__)
def test_size_is_stored_as_a_pair(config_cls):
    assert config_cls(size=7).size == (7, 7)
    config = config_cls(size=[5, np.int64(9)])
    assert config.size == (5, 9) and all(type(v) is int for v in config.size)
    hash(config)


@pytest.mark.parametrize("config_cls", [*SIZED, RandomRotationConfig, RandomTranslateConfig], ids=lambda c: c.__name__)
@pytest.mark.parametrize("field", ["", None, 3, ("image",)], ids=repr)
def test_field_must_be_a_non_empty_string(config_cls, field):
    with pytest.raises(ValueError, match=rf"{config_cls.__name__}: field must be a non-empty string.*got "):
        config_cls(field=field)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"padding": -1}, r"padding must be a non-negative int, got -1"),
        ({"padding": 1.0}, r"padding must be a non-negative int, got 1.0"),
        ({"padding": True}, r"padding must be a non-negative int, got True"),
        ({"padding_mode": "wrap"}, r"padding_mode must be one of \('constant', 'reflect', 'edge'\), got 'wrap'"),
        ({"fill": float("nan")}, r"fill must be a finite number, got nan"),
        ({"fill": "0"}, r"fill must be a finite number, got '0'"),
        ({"stochastic": False}, r"stochastic=False is not allowed: the crop's offset is drawn per record"),
    ],
)
def test_random_crop_config_rejects(kwargs, expected):
    with pytest.raises(ValueError, match="RandomCropConfig: " + expected):
        RandomCropConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"scale": (0.0, 1.0)}, r"scale must be a pair \(low, high\) with 0 < low <= high <= 1, got \(0.0, 1.0\)"),
        ({"scale": (0.5, 0.2)}, r"scale must be a pair .*got \(0.5, 0.2\)"),
        ({"scale": (0.5, 1.5)}, r"scale must be a pair .*got \(0.5, 1.5\)"),
        ({"scale": 0.5}, r"scale must be a pair .*got 0.5"),
        ({"ratio": (-1, 2)}, r"ratio must be a pair \(low, high\) with 0 < low <= high, got \(-1, 2\)"),
        ({"ratio": (2, 1)}, r"ratio must be a pair .*got \(2, 1\)"),
        ({"ratio": (1, float("inf"))}, r"ratio must be a pair .*got \(1, inf\)"),
        ({"antialias": 1}, r"antialias must be a bool, got 1"),
        ({"stochastic": False}, r"stochastic=False is not allowed: the crop's window is drawn per record"),
    ],
)
def test_random_resized_crop_config_rejects(kwargs, expected):
    with pytest.raises(ValueError, match="RandomResizedCropConfig: " + expected):
        RandomResizedCropConfig(**kwargs)


def test_random_resized_crop_config_defaults_are_torchvisions():
    config = RandomResizedCropConfig(scale=[0.25, 1])
    assert config.scale == (0.25, 1.0) and config.ratio == (0.75, 4 / 3)
    assert config.stochastic and config.stream_name == "resized_crop"
    assert RandomCropConfig().stream_name == "crop"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"method": "bicubic"}, r"method must be 'bilinear' or 'nearest', got 'bicubic'"),
        ({"antialias": "yes"}, r"antialias must be a bool, got 'yes'"),
    ],
)
def test_resize_config_rejects(kwargs, expected):
    with pytest.raises(ValueError, match="ResizeConfig: " + expected):
        ResizeConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"degrees": -5}, r"degrees must be a number >= 0 or a pair \(low, high\), got -5"),
        ({"degrees": (10, -10)}, r"degrees must be a pair \(low, high\) with finite low <= high.*got \(10, -10\)"),
        ({"degrees": (0, float("nan"))}, r"degrees must be a pair .*got \(0, nan\)"),
        ({"degrees": "15"}, r"degrees must be a pair .*got '15'"),
        ({"fill": None}, r"fill must be a finite number, got None"),
        ({"degrees": (0, 30), "stochastic": False}, r"degrees=\(0.0, 30.0\) needs an angle per record"),
    ],
)
def test_rotation_config_rejects(kwargs, expected):
    with pytest.raises(ValueError, match="RandomRotationConfig: " + expected):
        RandomRotationConfig(**kwargs)


def test_rotation_config_accepts_one_number_and_a_fixed_angle():
    assert RandomRotationConfig(degrees=15).degrees == (-15.0, 15.0)
    fixed = RandomRotationConfig(degrees=(30, 30), stochastic=False)
    assert fixed.stream_name is None and not RandomRotation(fixed).stochastic
    assert RandomRotationConfig().stream_name == "rotation"


@pytest.mark.parametrize(
    ("op_cls", "config"),
    [
        (RandomCrop, CenterCropConfig()),
        (CenterCrop, ResizeConfig()),
        (Resize, None),
        (RandomResizedCrop, RandomCropConfig()),
        (RandomRotation, {"degrees": 3}),
        (RandomTranslate, RandomRotationConfig()),
    ],
)
def test_wrong_config_type_is_type_error(op_cls, config):
    with pytest.raises(TypeError, match=rf"{op_cls.__name__}: config must be a {op_cls.__name__}Config"):
        op_cls(config)


# --- RandomCrop ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "np_kwargs"),
    [
        ("constant", {"mode": "constant", "constant_values": 7}),
        ("reflect", {"mode": "reflect"}),
        ("edge", {"mode": "edge"}),
    ],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_random_crop_equals_numpy_pad_then_slice(mode, np_kwargs, dtype):
    height, width, pad, size = 6, 9, 3, (5, 8)
    image = (_uint8_image(height, width) if dtype == np.uint8 else _float_image(height, width)).astype(dtype)
    op = RandomCrop(RandomCropConfig(size=size, padding=pad, padding_mode=mode, fill=7))
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), **np_kwargs)
    offsets = set()
    keys = _keys(40)
    batch = np.asarray(jax.jit(jax.vmap(lambda k: op.apply({"image": image, "label": 1}, k)["image"]))(keys))
    for key, out in zip(keys, batch, strict=True):
        # The offsets are floor(u * number of positions) of jax.random's uniforms 0 and 1.
        top = int(_uniform(key, 0) * (height + 2 * pad - size[0] + 1))
        left = int(_uniform(key, 1) * (width + 2 * pad - size[1] + 1))
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, padded[top : top + size[0], left : left + size[1]])
        offsets.add((top, left))
    assert len(offsets) > 15  # 5 x 5 = 25 possible offsets


def test_random_crop_reaches_every_offset_and_is_deterministic_per_key():
    image = np.arange(1, 4 * 4 + 1, dtype=np.float32).reshape(4, 4, 1)  # no pixel equals the fill 0
    op = RandomCrop(RandomCropConfig(size=4, padding=1))
    keys = _keys(300)
    batch = np.asarray(jax.jit(jax.vmap(lambda k: op.apply({"image": image}, k)["image"]))(keys))
    # Image pixel (1, 1) lands at (2 - top, 2 - left) for the 3 x 3 offsets of the padded image.
    corners = {tuple(int(v) for v in np.argwhere(b[..., 0] == image[1, 1, 0])[0]) for b in batch}
    assert corners == {(r, c) for r in range(3) for c in range(3)}
    again = np.asarray(op.apply({"image": image}, keys[5])["image"])
    np.testing.assert_array_equal(again, batch[5])


def test_random_crop_without_padding_is_a_window_of_the_image():
    image = _uint8_image(10, 12)
    op = RandomCrop(RandomCropConfig(size=(10, 5)))
    out = np.asarray(op.apply({"image": image}, jax.random.key(3))["image"])
    left = int(_uniform(jax.random.key(3), 1) * 8)
    np.testing.assert_array_equal(out, image[:, left : left + 5])


@pytest.mark.parametrize(
    ("config", "image", "expected"),
    [
        (RandomCropConfig(size=(8, 8), padding=1), np.zeros((5, 6, 3), np.uint8), r"size \(8, 8\) does not fit"),
        (RandomCropConfig(size=4, padding=4, padding_mode="reflect"), np.zeros((4, 6, 1)), r"reflect padding 4"),
        (RandomCropConfig(size=4, padding=1, fill=300), np.zeros((4, 6, 1), np.uint8), r"fill=300.0 does not fit"),
        (RandomCropConfig(size=4, padding=1, fill=-1), np.zeros((4, 6, 1), np.uint8), r"range 0..255"),
        (RandomCropConfig(size=2), np.zeros((4, 6)), r"must be a channels-last \(H, W, C\) image, got shape \(4, 6\)"),
        (RandomCropConfig(size=2), np.zeros((4, 6, 1), bool), r"must hold integers or floats, got dtype bool"),
    ],
)
def test_random_crop_rejects_images_it_cannot_crop(config, image, expected):
    with pytest.raises(ValueError, match=r"RandomCrop: .*" + expected):
        RandomCrop(config).apply({"image": image}, jax.random.key(0))


# --- CenterCrop ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "size"), [(8, 8, (4, 4)), (7, 10, (4, 3)), (5, 5, (5, 5)), (6, 9, (1, 2))])
def test_center_crop_is_the_central_slice(height, width, size):
    image = _uint8_image(height, width)
    out = CenterCrop(CenterCropConfig(size=size)).apply({"image": image, "label": 3})
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    np.testing.assert_array_equal(out["image"], image[top : top + size[0], left : left + size[1]])
    assert out["label"] == 3


def test_center_crop_rejects_a_small_image_and_a_missing_field():
    with pytest.raises(
        ValueError, match=r"CenterCrop: size \(6, 6\) is larger than field 'image' of shape \(5, 8, 3\)"
    ):
        CenterCrop(CenterCropConfig(size=6)).apply({"image": np.zeros((5, 8, 3))})
    with pytest.raises(ValueError, match=r"CenterCrop: field 'img' is not in the element \(keys: \['image'\]\)"):
        CenterCrop(CenterCropConfig(size=2, field="img")).apply({"image": np.zeros((5, 8, 3))})
    with pytest.raises(TypeError, match="CenterCrop: element must be a dict of arrays, got ndarray"):
        CenterCrop(CenterCropConfig(size=2)).apply(np.zeros((5, 8, 3)))


# --- Resize --------------------------------------------------------------------------------------

SIZES = [((8, 10), (16, 25)), ((32, 32), (16, 16)), ((37, 23), (11, 29)), ((20, 30), (7, 9)), ((5, 5), (5, 5))]


@pytest.mark.parametrize(("shape", "size"), SIZES, ids=str)
def test_resize_float_equals_pil_bilinear(shape, size):
    """Up, down, mixed and identity: PIL's antialiased bilinear in double, within float32 rounding."""
    image = _float_image(*shape)
    out = np.asarray(Resize(ResizeConfig(size=size)).apply({"image": image})["image"])
    assert out.dtype == np.float32 and out.shape == (*size, 3)
    np.testing.assert_allclose(out, _pil_resize(image, size), rtol=0, atol=FLOAT_ATOL)


@pytest.mark.parametrize(("shape", "size"), SIZES, ids=str)
def test_resize_uint8_equals_pil_within_one_level(shape, size):
    image = _uint8_image(*shape)
    out = np.asarray(Resize(ResizeConfig(size=size)).apply({"image": image})["image"])
    assert out.dtype == np.uint8
    diff = np.abs(out.astype(int) - _pil_resize(image, size).astype(int))
    assert diff.max() <= UINT8_ATOL


@pytest.mark.parametrize(("shape", "size"), SIZES, ids=str)
def test_resize_without_antialias_is_plain_bilinear(shape, size):
    image = _float_image(*shape)
    out = np.asarray(Resize(ResizeConfig(size=size, antialias=False)).apply({"image": image})["image"])
    np.testing.assert_allclose(out, _numpy_bilinear(image, size), rtol=0, atol=FLOAT_ATOL)


def test_upscaling_ignores_antialias():
    image = _float_image(6, 7)
    with_aa = Resize(ResizeConfig(size=(13, 20))).apply({"image": image})["image"]
    without = Resize(ResizeConfig(size=(13, 20), antialias=False)).apply({"image": image})["image"]
    np.testing.assert_allclose(with_aa, without, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("shape", "size"), [*SIZES, ((10, 3), (25, 1))], ids=str)
def test_resize_nearest_reads_floor_of_the_centre(shape, size):
    image = _uint8_image(*shape)
    out = np.asarray(Resize(ResizeConfig(size=size, method="nearest")).apply({"image": image})["image"])
    rows = np.floor((np.arange(size[0]) + 0.5) * shape[0] / size[0] + 1e-9).astype(int)
    cols = np.floor((np.arange(size[1]) + 0.5) * shape[1] / size[1] + 1e-9).astype(int)
    np.testing.assert_array_equal(out, image[rows][:, cols])
    # PIL agrees except at exact ties (k + 0.5) * in / out = integer, where its float rounding may read one before.
    ties_r = ((2 * np.arange(size[0]) + 1) * shape[0]) % (2 * size[0]) == 0
    ties_c = ((2 * np.arange(size[1]) + 1) * shape[1]) % (2 * size[1]) == 0
    pil = _pil_resize(image, size, Image.NEAREST)
    untied = ~(ties_r[:, None] | ties_c[None, :])
    np.testing.assert_array_equal(out[untied], pil[untied])


@pytest.mark.parametrize("dtype", [jnp.int16, jnp.bfloat16, jnp.float16, jnp.int32])
def test_resize_keeps_other_dtypes(dtype):
    image = jnp.asarray(RNG.integers(-100, 100, (6, 8, 2)), dtype)
    op = Resize(ResizeConfig(size=(3, 11)))
    out = op.apply({"image": image})["image"]
    assert out.dtype == dtype and out.shape == (3, 11, 2)
    want = _pil_resize(np.asarray(image, np.float32), (3, 11))
    if jnp.issubdtype(dtype, jnp.integer):
        want = np.round(want)
    np.testing.assert_allclose(np.asarray(out, np.float32), want, rtol=1e-2, atol=1)


def test_resize_output_spec_matches_apply():
    spec = {"image": SDS((30, 40, 3), jnp.uint8), "label": SDS((), jnp.int32)}
    for op in (Resize(ResizeConfig(size=(12, 10))), CenterCrop(CenterCropConfig(size=(12, 10)))):
        assert op.output_spec(spec) == {"image": SDS((12, 10, 3), jnp.uint8), "label": SDS((), jnp.int32)}


# --- RandomResizedCrop ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "scale", "ratio"),
    [
        ((48, 64), (0.08, 1.0), (3 / 4, 4 / 3)),
        ((20, 20), (0.5, 1.0), (0.5, 2.0)),
        ((30, 10), (0.9, 1.0), (3.0, 4.0)),  # never fits: fallback, ratio clamped to 3 (width 10, height 3)
        ((10, 40), (0.9, 1.0), (0.2, 0.3)),  # never fits: fallback, ratio clamped to 0.3 (height 10, width 3)
        ((16, 16), (0.9, 1.0), (2.0, 3.0)),  # mostly falls back to the central crop
    ],
)
def test_window_is_torchvisions_sampling(shape, scale, ratio):
    op = RandomResizedCrop(RandomResizedCropConfig(size=8, scale=scale, ratio=ratio))
    keys = _keys(60, seed=1)
    windows = jax.jit(jax.vmap(lambda k: jnp.stack(op.window(k, *shape))))(keys)
    for key, window in zip(keys, np.asarray(windows), strict=True):
        u = [_uniform(key, i) for i in range(22)]
        assert tuple(window.tolist()) == _torchvision_window(u, *shape, scale, ratio)
        top, left, h, w = window
        assert 0 <= top <= shape[0] - h and 0 <= left <= shape[1] - w and h > 0 and w > 0


def test_window_fallback_values():
    op = RandomResizedCrop(RandomResizedCropConfig(size=8, scale=(0.95, 1.0), ratio=(3.0, 4.0)))
    assert [int(v) for v in op.window(jax.random.key(0), 30, 10)] == [13, 0, 3, 10]


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_random_resized_crop_equals_resizing_the_cut_out_window(dtype):
    image = (_uint8_image(40, 50) if dtype == np.uint8 else _float_image(40, 50)).astype(dtype)
    for antialias in (False, True):
        op = RandomResizedCrop(RandomResizedCropConfig(size=(12, 16), scale=(0.1, 1.0), antialias=antialias))
        for key in _keys(6, seed=antialias):
            out = np.asarray(op.apply({"image": image}, key)["image"])
            top, left, h, w = (int(v) for v in op.window(key, 40, 50))
            crop = image[top : top + h, left : left + w]
            assert out.dtype == dtype and out.shape == (12, 16, 3)
            if antialias:
                want = _pil_resize(crop, (12, 16))
            else:
                want = _numpy_bilinear(crop, (12, 16))
                want = np.round(want) if dtype == np.uint8 else want
            atol = UINT8_ATOL if dtype == np.uint8 else FLOAT_ATOL
            np.testing.assert_allclose(out.astype(np.float64), want.astype(np.float64), rtol=0, atol=atol)


def test_random_resized_crop_keys_decide():
    image = _float_image(32, 32)
    op = RandomResizedCrop(RandomResizedCropConfig(size=16))
    a, b = _keys(2, seed=4)
    first = op.apply({"image": image}, a)["image"]
    np.testing.assert_array_equal(first, op.apply({"image": image}, a)["image"])
    assert not np.array_equal(first, op.apply({"image": image}, b)["image"])


# --- RandomRotation ------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [17.3, -33.0, 90.0, 180.0, 45.0, 0.0, -270.0, 123.4])
@pytest.mark.parametrize("shape", [(17, 24), (16, 16)])
def test_rotation_equals_scipy(angle, shape):
    image = _float_image(*shape)
    op = RandomRotation(RandomRotationConfig(degrees=(angle, angle), stochastic=False, fill=0.25))
    out = np.asarray(op.apply({"image": image})["image"])
    want = scipy.ndimage.rotate(image.astype(np.float64), angle, reshape=False, order=1, mode="constant", cval=0.25)
    np.testing.assert_allclose(out, want, rtol=0, atol=FLOAT_ATOL)


def test_rotation_of_uint8_is_rounded_within_one_level_of_scipy():
    image = _uint8_image(21, 15)
    op = RandomRotation(RandomRotationConfig(degrees=(30, 30), stochastic=False, fill=255))
    out = np.asarray(op.apply({"image": image})["image"])
    want = scipy.ndimage.rotate(image.astype(np.float64), 30, reshape=False, order=1, mode="constant", cval=255)
    assert out.dtype == np.uint8
    assert np.abs(out.astype(float) - want).max() <= 0.5 + 1e-4  # rounded to nearest


def test_random_angle_is_uniform_in_the_range_from_the_key():
    image = _float_image(12, 14)
    op = RandomRotation(RandomRotationConfig(degrees=(-40, 25), fill=0.0))
    keys = _keys(5, seed=2)
    batch = np.asarray(jax.jit(jax.vmap(lambda k: op.apply({"image": image}, k)["image"]))(keys))
    for key, out in zip(keys, batch, strict=True):
        angle = -40 + 65 * _uniform(key, 0)
        want = scipy.ndimage.rotate(image.astype(np.float64), angle, reshape=False, order=1, mode="constant")
        np.testing.assert_allclose(out, want, rtol=0, atol=1e-4)
    angles = np.asarray(jax.vmap(op.angle)(_keys(2000, seed=3)))
    assert angles.min() >= -40 and angles.max() < 25
    assert abs(angles.mean() - (-7.5)) < 5 * 65 / math.sqrt(12 * 2000)


def test_rotation_rejects_a_fill_outside_the_dtype():
    op = RandomRotation(RandomRotationConfig(degrees=5, fill=-1))
    with pytest.raises(ValueError, match=r"RandomRotation: fill=-1.0 does not fit field 'image' of dtype uint8"):
        op.apply({"image": np.zeros((4, 4, 1), np.uint8)}, jax.random.key(0))
    with pytest.raises(ValueError, match=r"RandomRotation is stochastic: apply needs the record's key"):
        op.apply({"image": np.zeros((4, 4, 1))})


# --- RandomTranslate -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"translate": (0.5, 1.5)}, r"translate must be a pair \(a, b\) of numbers in \[0, 1\], got \(0.5, 1.5\)"),
        ({"translate": 0.1}, r"translate must be a pair .*got 0.1"),
        ({"translate": (-0.1, 0)}, r"translate must be a pair .*got \(-0.1, 0\)"),
        ({"fill": float("inf")}, r"fill must be a finite number, got inf"),
        ({"stochastic": False}, r"stochastic=False is not allowed: the shift is drawn per record"),
    ],
)
def test_translate_config_rejects(kwargs, expected):
    with pytest.raises(ValueError, match="RandomTranslateConfig: " + expected):
        RandomTranslateConfig(**kwargs)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_translate_shifts_by_torchvisions_rounded_draw(dtype):
    height, width, (a, b) = 9, 12, (0.3, 0.5)
    image = _uint8_image(height, width).astype(dtype)
    op = RandomTranslate(RandomTranslateConfig(translate=(a, b), fill=9))
    shifts = set()
    for key in _keys(30, seed=6):
        dx = round(-a * width + 2 * a * width * _uniform(key, 0))
        dy = round(-b * height + 2 * b * height * _uniform(key, 1))
        want = np.full_like(image, 9)
        src = image[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
        want[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
        out = np.asarray(op.apply({"image": image}, key)["image"])
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, want)
        assert abs(dx) <= round(a * width) and abs(dy) <= round(b * height)
        shifts.add((dy, dx))
    assert len(shifts) > 10


# --- transformations: jit, vmap, gradients, specs ------------------------------------------------

STOCHASTIC = [
    RandomCrop(RandomCropConfig(size=(6, 7), padding=2)),
    RandomResizedCrop(RandomResizedCropConfig(size=(5, 9), antialias=True)),
    RandomRotation(RandomRotationConfig(degrees=45, fill=0.5)),
    RandomTranslate(RandomTranslateConfig(translate=(0.3, 0.3), fill=1)),
]
DETERMINISTIC = [
    CenterCrop(CenterCropConfig(size=(4, 5))),
    Resize(ResizeConfig(size=(5, 13))),
    Resize(ResizeConfig(size=(3, 4), antialias=False)),
]


@pytest.mark.parametrize("op", STOCHASTIC + DETERMINISTIC, ids=lambda op: type(op).__name__)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_a_record_gets_the_same_bits_in_any_batch_size_and_eagerly_the_same_values(op, dtype):
    n = 12
    images = np.stack([_uint8_image(8, 10) for _ in range(n)]).astype(dtype)
    batch = {"image": images, "label": np.arange(n), VALID_MASK: np.arange(n) != 3}
    keys = _keys(n, seed=9) if op.stochastic else None
    step = jax.jit(lambda b, k: op.apply_batch(b, k, count=False))
    out = step(batch, keys)
    assert out[VALID_MASK].tolist() == batch[VALID_MASK].tolist()
    np.testing.assert_array_equal(out["label"], np.arange(n))
    for size in (1, 5):  # a record's bits do not depend on the batch it travels in
        for start in range(0, n - size + 1, size):
            rows = slice(start, start + size)
            part = step({"image": images[rows]}, None if keys is None else keys[rows])
            assert np.asarray(part["image"]).tobytes() == np.asarray(out["image"][rows]).tobytes()
    for i in range(3):  # op-by-op evaluation may round differently in the last bit (one level for uint8)
        one = op.apply({"image": images[i], "label": i}, None if keys is None else keys[i])
        np.testing.assert_allclose(
            np.asarray(one["image"], np.float64), np.asarray(out["image"][i], np.float64), rtol=0, atol=1
        )
    spec = op.output_spec({"image": SDS((8, 10, 3), dtype), "label": SDS((), jnp.int32)})
    assert spec["image"] == SDS(out["image"].shape[1:], out["image"].dtype)
    assert out["image"].dtype == dtype
    if op.stochastic:
        assert len({np.asarray(out["image"][i]).tobytes() for i in range(n)}) == n  # keys differ, outputs differ


@pytest.mark.parametrize("op", STOCHASTIC + DETERMINISTIC, ids=lambda op: type(op).__name__)
def test_gradient_wrt_a_float_image_matches_finite_differences(op):
    image = jnp.asarray(_float_image(8, 10, 2), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    key = jax.random.key(11) if op.stochastic else None
    weights = jnp.asarray(RNG.random(jax.eval_shape(lambda x: op.apply({"image": x}, key)["image"], image).shape))

    def loss(x):
        return jnp.sum(op.apply({"image": x}, key)["image"] * weights)

    check_grads(loss, (image,), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)
    grad = jax.grad(loss)(image)
    assert grad.shape == image.shape and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.abs(grad).sum()) > 0


def test_gradient_of_resize_is_its_transpose():
    image = jnp.asarray(_float_image(6, 9, 1))
    op = Resize(ResizeConfig(size=(4, 5)))
    jac = jax.jacobian(lambda x: op.apply({"image": x})["image"].reshape(-1))(image).reshape(20, -1)
    cotangent = jnp.asarray(RNG.random((4, 5, 1), dtype=np.float32))
    grad = jax.grad(lambda x: jnp.sum(op.apply({"image": x})["image"] * cotangent))(image)
    np.testing.assert_allclose(grad.reshape(-1), jac.T @ cotangent.reshape(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jac.sum(axis=1), 1, rtol=1e-5)  # each output is a weighted mean


# --- a pipeline ----------------------------------------------------------------------------------


def _augmented_by_label(images, batch_size, seed=5):
    """Runs one shuffled epoch of a five-stage geometry pipeline; returns ``{label: augmented image}``."""
    n = len(images)
    source = MemorySource(MemorySourceConfig(), data={"image": images, "label": np.arange(n, dtype=np.int32)})
    stages = [
        RandomCrop(RandomCropConfig(size=(12, 14), padding=2, padding_mode="reflect")),
        RandomRotation(RandomRotationConfig(degrees=20)),
        RandomTranslate(RandomTranslateConfig(translate=(0.2, 0.2))),
        RandomResizedCrop(RandomResizedCropConfig(size=(10, 10), scale=(0.3, 1.0))),
        Resize(ResizeConfig(size=(9, 9))),
        CenterCrop(CenterCropConfig(size=8)),
    ]
    pipeline = Pipeline(source=source, stages=stages, batch_size=batch_size, rngs=nnx.Rngs(seed), shuffle=True)
    out = {}
    for batch in pipeline:
        for row in np.flatnonzero(np.asarray(batch[VALID_MASK])):
            out[int(batch["label"][row])] = np.asarray(batch["image"][row])
    return out


def test_pipeline_gives_each_record_the_same_augmentation_for_any_batch_size():
    images = np.random.default_rng(123).integers(0, 256, (20, 12, 14, 3), dtype=np.uint8)
    by_8 = _augmented_by_label(images, 8)
    by_3 = _augmented_by_label(images, 3)
    assert sorted(by_8) == sorted(by_3) == list(range(20))
    for label in range(20):
        assert by_8[label].shape == (8, 8, 3) and by_8[label].dtype == np.uint8
        np.testing.assert_array_equal(by_8[label], by_3[label])
    assert len({v.tobytes() for v in by_8.values()}) == 20

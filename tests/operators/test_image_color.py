"""Tests for datarax.operators.image_color: photometric operators against independent references.

References: numpy formulas and hand-computed values (normalize, brightness, contrast, saturation),
``colorsys`` per pixel (hue), PIL's ``L`` conversion (grayscale), ``scipy.ndimage.gaussian_filter``
(blur), and properties of the output (noise statistics, the erased rectangle). The per-record
factor of a random operator is recomputed here with ``jax.random`` (``uniform(fold_in(key, i))``,
the documented draw), not with the operator's own code path.
"""

import colorsys
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from flax import nnx
from PIL import Image

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.operators.image_color import (
    GaussianBlur,
    GaussianBlurConfig,
    GaussianNoise,
    GaussianNoiseConfig,
    Grayscale,
    GrayscaleConfig,
    Normalize,
    NormalizeConfig,
    RandomBrightness,
    RandomBrightnessConfig,
    RandomContrast,
    RandomContrastConfig,
    RandomErasing,
    RandomErasingConfig,
    RandomHue,
    RandomHueConfig,
    RandomSaturation,
    RandomSaturationConfig,
    hsv_to_rgb,
    rgb_to_hsv,
)
from datarax.sources import MemorySource, MemorySourceConfig

RNG = np.random.default_rng(0)
FLOAT_IMAGE = RNG.uniform(0.2, 0.8, (5, 6, 3)).astype(np.float32)
UINT8_IMAGE = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
KEY = jax.random.key(7)


def _u(key, i=0):
    """The documented draw ``i`` of a record key, recomputed with jax.random."""
    return float(jax.random.uniform(jax.random.fold_in(key, i)))


def _fixed(cls, config_cls, magnitude, **kwargs):
    return cls(config_cls(magnitude=magnitude, draw="fixed", stochastic=False, **kwargs))


def _luma(x):
    return x @ np.array([0.299, 0.587, 0.114], dtype=np.float64)


def _to_uint8(y):
    return np.clip(np.round(y * 255), 0, 255).astype(np.uint8)


# --- config validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config_cls",
    [
        NormalizeConfig,
        RandomBrightnessConfig,
        RandomContrastConfig,
        RandomSaturationConfig,
        RandomHueConfig,
        GrayscaleConfig,
        GaussianNoiseConfig,
        GaussianBlurConfig,
        RandomErasingConfig,
    ],
)
@pytest.mark.parametrize("fields", ["image", (), ("image", "image"), ("image", 3), None])
def test_configs_reject_bad_fields(config_cls, fields):
    expected = rf"{config_cls.__name__}: fields must be .*got " + re.escape(repr(fields))
    with pytest.raises(ValueError, match=expected):
        config_cls(fields=fields)


@pytest.mark.parametrize(
    ("config_cls", "kwargs", "message"),
    [
        (NormalizeConfig, {"mean": ()}, r"NormalizeConfig: mean must be a non-empty tuple of finite numbers, got \(\)"),
        (NormalizeConfig, {"std": (0.1, 0.0, 0.2)}, r"std must be a non-empty tuple of finite numbers > 0, got \(0.1"),
        (NormalizeConfig, {"mean": (0.5, float("nan"))}, r"mean must be .*got \(0.5, nan\)"),
        (NormalizeConfig, {"mean": (0.1, 0.2), "std": (1, 2, 3)}, "mean and std must have the same length"),
        (NormalizeConfig, {"stochastic": True, "stream_name": "n"}, "must be stochastic=False"),
        (RandomBrightnessConfig, {"magnitude": -0.1}, r"magnitude must be a finite number in \[0, inf\], got -0.1"),
        (RandomBrightnessConfig, {"magnitude": True}, "magnitude must be .*got True"),
        (RandomBrightnessConfig, {"magnitude": "0.2"}, "magnitude must be .*got '0.2'"),
        (RandomContrastConfig, {"draw": "gauss"}, r"draw must be one of \['uniform', 'sign', 'fixed'\], got 'gauss'"),
        (RandomContrastConfig, {"draw": "fixed"}, "draw='fixed' uses no randomness, so set stochastic=False"),
        (RandomSaturationConfig, {"stochastic": False}, "draw='uniform' draws a factor per record, so set stochastic"),
        (
            RandomSaturationConfig,
            {"magnitude": -1.5, "draw": "fixed", "stochastic": False},
            r"magnitude must be a finite number in \[-1.0, inf\] for draw='fixed', got -1.5",
        ),
        (RandomHueConfig, {"magnitude": 0.6}, r"RandomHueConfig: magnitude must be a finite number in \[0, 0.5\]"),
        (RandomHueConfig, {"learnable": 1}, "learnable must be a bool, got 1"),
        (GrayscaleConfig, {"keep_channels": "yes"}, "keep_channels must be a bool, got 'yes'"),
        (GaussianNoiseConfig, {"std": -1.0}, "GaussianNoiseConfig: std must be a finite number >= 0, got -1.0"),
        (GaussianNoiseConfig, {"stochastic": False}, "draws noise per record, so set stochastic=True"),
        (GaussianNoiseConfig, {"clip": None}, "clip must be a bool, got None"),
        (GaussianBlurConfig, {"kernel_size": 4}, "GaussianBlurConfig: kernel_size must be an odd positive int, got 4"),
        (GaussianBlurConfig, {"kernel_size": 3.0}, "kernel_size must be an odd positive int, got 3.0"),
        (GaussianBlurConfig, {"sigma": (2.0, 1.0)}, r"sigma must be .*0 < min <= max, got \(2.0, 1.0\)"),
        (GaussianBlurConfig, {"sigma": 0.0}, "sigma must be .*got 0.0"),
        (GaussianBlurConfig, {"sigma": (0.5, 1.0), "stochastic": False}, r"draws a sigma per record"),
        (RandomErasingConfig, {"probability": 1.5}, r"probability must be a number in \[0, 1\], got 1.5"),
        (RandomErasingConfig, {"scale": (0.0, 0.5)}, r"scale must be a \(min, max\) pair .* got \(0.0, 0.5\)"),
        (RandomErasingConfig, {"scale": (0.5, 1.5)}, r"scale must be .*got \(0.5, 1.5\)"),
        (RandomErasingConfig, {"ratio": (1, 2, 3)}, r"ratio must be .*got \(1, 2, 3\)"),
        (RandomErasingConfig, {"value": 2}, r"value must be a number in \[0, 1\], got 2"),
        (RandomErasingConfig, {"stochastic": False}, "draws a rectangle per record, so set stochastic=True"),
    ],
)
def test_bad_configs_are_rejected(config_cls, kwargs, message):
    with pytest.raises(ValueError, match=config_cls.__name__ + ".*" + message if ":" not in message else message):
        config_cls(**kwargs)


def test_config_defaults_and_normalisation():
    assert RandomBrightnessConfig().stream_name == "brightness"
    assert RandomContrastConfig().stream_name == "contrast"
    assert RandomSaturationConfig().stream_name == "saturation"
    assert RandomHueConfig().magnitude == 0.1 and RandomHueConfig().stream_name == "hue"
    assert GaussianBlurConfig(sigma=1).sigma == (1.0, 1.0)
    assert RandomErasingConfig(ratio=[1, 2]).ratio == (1.0, 2.0)
    assert NormalizeConfig(mean=[0, 1], std=[1, 2]).mean == (0.0, 1.0)
    for config in (NormalizeConfig(), RandomHueConfig(), GaussianBlurConfig(), RandomErasingConfig()):
        hash(config)


@pytest.mark.parametrize(
    ("op_cls", "config"),
    [(Normalize, GrayscaleConfig()), (Grayscale, NormalizeConfig()), (RandomBrightness, RandomContrastConfig())],
)
def test_wrong_config_type_is_type_error(op_cls, config):
    with pytest.raises(TypeError, match=rf"{op_cls.__name__}: config must be a {op_cls.__name__}Config"):
        op_cls(config)


# --- element checks while tracing ----------------------------------------------------------------


def test_element_errors_name_the_operator_field_and_problem():
    gray = Grayscale(GrayscaleConfig(), name="g")
    with pytest.raises(ValueError, match=r"Grayscale\('g'\): field 'image' is not in the element"):
        gray.apply({"img": FLOAT_IMAGE})
    with pytest.raises(ValueError, match=r"field 'image' must be an \(H, W, C\) image, got shape \(6, 3\)"):
        gray.apply({"image": FLOAT_IMAGE[0]})
    with pytest.raises(ValueError, match=r"field 'image' must have 3 channels, got shape \(5, 6, 1\)"):
        gray.apply({"image": FLOAT_IMAGE[..., :1]})
    with pytest.raises(TypeError, match="must be uint8 .* or floating .*got dtype int32"):
        gray.apply({"image": UINT8_IMAGE.astype(np.int32)})
    with pytest.raises(ValueError, match="config.mean has 3 entries but the image 'image' has 2 channels"):
        Normalize(NormalizeConfig()).apply({"image": FLOAT_IMAGE[..., :2]})
    blur = GaussianBlur(GaussianBlurConfig(kernel_size=7, sigma=1.0, stochastic=False))
    with pytest.raises(ValueError, match=r"kernel_size=7 needs images larger than 3 pixels .*shape \(3, 6, 3\)"):
        blur.apply({"image": FLOAT_IMAGE[:3]})
    with pytest.raises(ValueError, match="RandomBrightness is stochastic: apply needs the record's key"):
        RandomBrightness(RandomBrightnessConfig()).apply({"image": FLOAT_IMAGE})


# --- Normalize -----------------------------------------------------------------------------------


def test_normalize_matches_numpy_for_uint8_and_float():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    op = Normalize(NormalizeConfig(mean=mean, std=std))
    for image, scale in ((UINT8_IMAGE, 255.0), (FLOAT_IMAGE, 1.0)):
        out = op.apply({"image": jnp.asarray(image), "label": jnp.int32(3)})
        assert out["image"].dtype == jnp.float32 and int(out["label"]) == 3
        want = (image.astype(np.float64) / scale - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(out["image"], want, rtol=1e-5, atol=1e-5)
    one = Normalize(NormalizeConfig(mean=(0.5,), std=(0.5,)))
    np.testing.assert_allclose(one.apply({"image": FLOAT_IMAGE})["image"], FLOAT_IMAGE * 2 - 1, atol=1e-6)


# --- colour jitter: hand-computed values ---------------------------------------------------------

PIXELS = np.array([[[0.2, 0.4, 0.6], [0.8, 0.5, 0.1]]], dtype=np.float32)  # (1, 2, 3)


def test_brightness_hand_computed():
    out = _fixed(RandomBrightness, RandomBrightnessConfig, 0.5).apply({"image": PIXELS})["image"]
    # factor 1.5: 0.2 -> 0.3, 0.4 -> 0.6, 0.6 -> 0.9, 0.8 -> 1.2 clipped to 1, 0.5 -> 0.75, 0.1 -> 0.15
    np.testing.assert_allclose(out, [[[0.3, 0.6, 0.9], [1.0, 0.75, 0.15]]], atol=1e-6)
    darker = _fixed(RandomBrightness, RandomBrightnessConfig, -0.5).apply({"image": PIXELS})["image"]
    np.testing.assert_allclose(darker, PIXELS * 0.5, atol=1e-6)
    black = _fixed(RandomBrightness, RandomBrightnessConfig, -1.0).apply({"image": PIXELS})["image"]
    np.testing.assert_array_equal(black, np.zeros_like(PIXELS))


def test_contrast_hand_computed():
    # luma of the two pixels: 0.299*0.2 + 0.587*0.4 + 0.114*0.6 = 0.3630; 0.299*0.8 + 0.587*0.5 + 0.114*0.1 = 0.5441
    # mean 0.45355; factor 0.5 gives 0.5 x + 0.226775
    out = _fixed(RandomContrast, RandomContrastConfig, -0.5).apply({"image": PIXELS})["image"]
    want = [[[0.326775, 0.426775, 0.526775], [0.626775, 0.476775, 0.276775]]]
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_saturation_hand_computed():
    # factor 2: 2 x - luma, per pixel (luma 0.3630 and 0.5441), clipped
    out = _fixed(RandomSaturation, RandomSaturationConfig, 1.0).apply({"image": PIXELS})["image"]
    want = [[[0.037, 0.437, 0.837], [1.0, 0.4559, 0.0]]]
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_hue_fixed_shifts_match_colorsys():
    for shift in (0.25, -0.4, 0.5):
        out = np.asarray(_fixed(RandomHue, RandomHueConfig, shift).apply({"image": FLOAT_IMAGE})["image"])
        want = np.empty_like(FLOAT_IMAGE)
        for idx in np.ndindex(FLOAT_IMAGE.shape[:2]):
            h, s, v = colorsys.rgb_to_hsv(*FLOAT_IMAGE[idx].astype(np.float64))
            want[idx] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
        np.testing.assert_allclose(out, want, atol=2e-6)


def test_hsv_round_trip_and_colorsys_including_gray_and_black():
    pixels = np.concatenate(
        [np.random.default_rng(100).uniform(0, 1, (200, 3)), [[0, 0, 0], [0.5, 0.5, 0.5], [1, 1, 1], [1, 0, 1]]]
    )
    hsv = np.asarray(rgb_to_hsv(jnp.asarray(pixels, jnp.float32)))
    want = np.array([colorsys.rgb_to_hsv(*p) for p in pixels])
    np.testing.assert_allclose(hsv, want, atol=2e-6)
    np.testing.assert_allclose(hsv_to_rgb(jnp.asarray(hsv)), pixels, atol=2e-6)


# --- colour jitter: random draws -----------------------------------------------------------------

JITTER = [
    (RandomBrightness, RandomBrightnessConfig, lambda x, f: x * f),
    (RandomContrast, RandomContrastConfig, lambda x, f: f * x + (1 - f) * _luma(x).mean()),
    (RandomSaturation, RandomSaturationConfig, lambda x, f: f * x + (1 - f) * _luma(x)[..., None]),
]


@pytest.mark.parametrize(("op_cls", "config_cls", "reference"), JITTER, ids=lambda v: getattr(v, "__name__", ""))
def test_jitter_uses_the_record_factor(op_cls, config_cls, reference):
    m = 0.6
    op = op_cls(config_cls(magnitude=m))
    for seed in range(4):
        key = jax.random.key(seed)
        factor = 1 + m * (2 * _u(key) - 1)
        want = np.clip(reference(FLOAT_IMAGE.astype(np.float64), factor), 0, 1)
        np.testing.assert_allclose(op.apply({"image": FLOAT_IMAGE}, key)["image"], want, atol=1e-6)
        out8 = op.apply({"image": UINT8_IMAGE}, key)["image"]
        assert out8.dtype == jnp.uint8
        want8 = _to_uint8(np.clip(reference(UINT8_IMAGE / 255.0, factor), 0, 1)).astype(int)
        assert np.abs(np.asarray(out8, int) - want8).max() <= 1  # float32 vs float64 rounding at .5


@pytest.mark.parametrize(("op_cls", "config_cls", "reference"), JITTER, ids=lambda v: getattr(v, "__name__", ""))
def test_sign_draw_uses_the_full_magnitude(op_cls, config_cls, reference):
    op = op_cls(config_cls(magnitude=0.3, draw="sign"))
    signs = set()
    for seed in range(12):
        key = jax.random.key(seed)
        sign = -1.0 if _u(key) < 0.5 else 1.0
        signs.add(sign)
        want = np.clip(reference(FLOAT_IMAGE.astype(np.float64), 1 + 0.3 * sign), 0, 1)
        np.testing.assert_allclose(op.apply({"image": FLOAT_IMAGE}, key)["image"], want, atol=1e-6)
    assert signs == {-1.0, 1.0}


def test_hue_uses_the_record_shift():
    op = RandomHue(RandomHueConfig(magnitude=0.3))
    key = jax.random.key(3)
    shift = 0.3 * (2 * _u(key) - 1)
    want = _fixed(RandomHue, RandomHueConfig, shift).apply({"image": FLOAT_IMAGE})["image"]
    np.testing.assert_allclose(op.apply({"image": FLOAT_IMAGE}, key)["image"], want, atol=1e-6)


def test_contrast_of_a_one_channel_image_uses_its_mean():
    image = FLOAT_IMAGE[..., :1]
    out = _fixed(RandomContrast, RandomContrastConfig, 0.5).apply({"image": image})["image"]
    np.testing.assert_allclose(out, np.clip(1.5 * image - 0.5 * image.mean(), 0, 1), atol=1e-6)


# --- Grayscale -----------------------------------------------------------------------------------


def test_grayscale_uint8_matches_pil_within_one_level():
    image = np.random.default_rng(101).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = np.asarray(Grayscale(GrayscaleConfig()).apply({"image": image})["image"])
    assert out.shape == (16, 16, 1) and out.dtype == np.uint8
    pil = np.asarray(Image.fromarray(image, "RGB").convert("L"))
    assert np.abs(out[..., 0].astype(int) - pil.astype(int)).max() <= 1


def test_grayscale_float_and_keep_channels():
    out = Grayscale(GrayscaleConfig(keep_channels=True)).apply({"image": FLOAT_IMAGE})["image"]
    assert out.shape == FLOAT_IMAGE.shape and out.dtype == jnp.float32
    want = _luma(FLOAT_IMAGE.astype(np.float64))[..., None]
    np.testing.assert_allclose(out, np.broadcast_to(want, FLOAT_IMAGE.shape), atol=1e-6)


# --- GaussianNoise -------------------------------------------------------------------------------


def test_gaussian_noise_is_the_documented_normal_draw():
    image = np.full((32, 32, 3), 0.5, np.float32)
    op = GaussianNoise(GaussianNoiseConfig(std=0.05, fields=("image", "other")))
    out = op.apply({"image": image, "other": image}, KEY)
    want = 0.5 + 0.05 * np.asarray(jax.random.normal(jax.random.fold_in(KEY, 0), image.shape))
    np.testing.assert_allclose(out["image"], np.clip(want, 0, 1), atol=1e-6)
    noise = np.asarray(out["image"]) - 0.5
    assert abs(noise.std() - 0.05) < 0.005 and abs(noise.mean()) < 0.005
    assert not np.allclose(out["image"], out["other"])  # each field its own noise


def test_gaussian_noise_clips_and_keeps_uint8():
    op = GaussianNoise(GaussianNoiseConfig(std=1.0))
    out = op.apply({"image": FLOAT_IMAGE}, KEY)["image"]
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    unclipped = GaussianNoise(GaussianNoiseConfig(std=1.0, clip=False)).apply({"image": FLOAT_IMAGE}, KEY)["image"]
    assert float(unclipped.min()) < 0 or float(unclipped.max()) > 1
    out8 = GaussianNoise(GaussianNoiseConfig(std=0.02)).apply({"image": UINT8_IMAGE}, KEY)["image"]
    assert out8.dtype == jnp.uint8
    assert np.abs(np.asarray(out8, int) - UINT8_IMAGE.astype(int)).max() <= 25  # 5 sigma of 0.02 * 255


# --- GaussianBlur --------------------------------------------------------------------------------

# float32 separable sums vs scipy's float64: agreement to 1e-5 absolute on [0, 1] images.
BLUR_ATOL = 1e-5


@pytest.mark.parametrize(("kernel_size", "sigma"), [(3, 0.8), (5, 1.0), (7, 2.5), (1, 1.0)])
def test_gaussian_blur_matches_scipy_mirror(kernel_size, sigma):
    image = np.random.default_rng(102).uniform(0, 1, (9, 11, 3)).astype(np.float32)
    op = GaussianBlur(GaussianBlurConfig(kernel_size=kernel_size, sigma=sigma, stochastic=False))
    out = op.apply({"image": image})["image"]
    r = kernel_size // 2
    want = scipy.ndimage.gaussian_filter(image.astype(np.float64), (sigma, sigma, 0), mode="mirror", radius=(r, r, 0))
    np.testing.assert_allclose(out, want, atol=BLUR_ATOL)


def test_gaussian_blur_random_sigma_and_uint8():
    op = GaussianBlur(GaussianBlurConfig(kernel_size=5, sigma=(0.5, 2.0)))
    for seed in range(3):
        key = jax.random.key(seed)
        sigma = 0.5 + 1.5 * _u(key)
        want = scipy.ndimage.gaussian_filter(UINT8_IMAGE / 255.0, (sigma, sigma, 0), mode="mirror", radius=(2, 2, 0))
        out = op.apply({"image": UINT8_IMAGE}, key)["image"]
        assert out.dtype == jnp.uint8
        assert np.abs(np.asarray(out, int) - _to_uint8(want).astype(int)).max() <= 1


# --- RandomErasing -------------------------------------------------------------------------------


def _erased_box(out, image, fill):
    """The erased rectangle ``(top, left, h, w)`` (None if nothing erased); checks it is one full rectangle."""
    changed = np.any(out != image, axis=-1)
    if not changed.any():
        return None
    rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
    top, left, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    box = out[top : top + h, left : left + w]
    np.testing.assert_array_equal(box, np.full_like(box, fill))
    outside = np.ones(changed.shape, bool)
    outside[top : top + h, left : left + w] = False
    np.testing.assert_array_equal(out[outside], image[outside])
    return top, left, h, w


def test_random_erasing_erases_one_rectangle_within_the_ranges():
    image = np.random.default_rng(103).uniform(0.1, 1, (40, 50, 3)).astype(np.float32)  # no pixel equals the fill
    op = RandomErasing(RandomErasingConfig(probability=1.0, scale=(0.05, 0.2), ratio=(0.5, 2.0), value=0.0))
    for seed in range(20):
        key = jax.random.key(seed)
        box = _erased_box(np.asarray(op.apply({"image": image}, key)["image"]), image, 0.0)
        assert box is not None
        _, _, h, w = box
        assert 0.05 * 2000 * 0.8 <= h * w <= 0.2 * 2000 * 1.2  # rounding h and w to whole pixels
        assert 0.5 * 0.8 <= h / w <= 2.0 * 1.25
        # the documented geometry: area fraction from draw 1, log-uniform aspect from draw 2
        s = 0.05 + 0.15 * _u(key, 1)
        a = np.exp(np.log(0.5) + (np.log(2.0) - np.log(0.5)) * _u(key, 2))
        assert (h, w) == (round(np.sqrt(s * 2000 * a)), round(np.sqrt(s * 2000 / a)))


def test_random_erasing_probability_and_uint8_fill():
    op = RandomErasing(RandomErasingConfig(probability=0.3, value=0.5))
    image = np.full((8, 8, 3), 10, np.uint8)
    keys = jax.random.split(KEY, 400)
    out = np.asarray(op.apply_batch({"image": np.broadcast_to(image, (400, 8, 8, 3))}, keys)["image"])
    erased = np.array([_erased_box(o, image, 128) is not None for o in out])
    coins = np.asarray(jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0)))(keys)) < 0.3
    np.testing.assert_array_equal(erased, coins)
    assert 0.2 < erased.mean() < 0.4


# --- keys, jit and vmap --------------------------------------------------------------------------

STOCHASTIC = [
    lambda: RandomBrightness(RandomBrightnessConfig()),
    lambda: RandomContrast(RandomContrastConfig()),
    lambda: RandomSaturation(RandomSaturationConfig()),
    lambda: RandomHue(RandomHueConfig()),
    lambda: GaussianNoise(GaussianNoiseConfig()),
    lambda: GaussianBlur(GaussianBlurConfig(kernel_size=3)),
    lambda: RandomErasing(RandomErasingConfig(probability=1.0)),
]
DETERMINISTIC = [
    lambda: Normalize(NormalizeConfig()),
    lambda: Grayscale(GrayscaleConfig(keep_channels=True)),
    lambda: GaussianBlur(GaussianBlurConfig(kernel_size=3, sigma=1.0, stochastic=False)),
]


@pytest.mark.parametrize("make", STOCHASTIC, ids=lambda f: type(f()).__name__)
@pytest.mark.parametrize("image", [FLOAT_IMAGE, UINT8_IMAGE], ids=["float32", "uint8"])
def test_stochastic_ops_are_keyed_per_record_and_vmap_jit_agree(make, image):
    op = make()
    keys = jax.random.split(KEY, 4)
    batch = {"image": np.stack([image] * 4), "label": np.arange(4)}
    out = jax.jit(lambda b, k: op.apply_batch(b, k, count=False))(batch, keys)
    for i in range(4):
        one = op.apply({"image": image, "label": i}, keys[i])
        # jit and eager may round differently by one float32 ulp, hence one uint8 level
        tolerance = 1 if image.dtype == np.uint8 else 1e-6
        np.testing.assert_allclose(np.asarray(out["image"][i], float), np.asarray(one["image"], float), atol=tolerance)
    assert out["image"].dtype == image.dtype
    again = jax.random.wrap_key_data(jax.random.key_data(keys[0]))  # an equal key, built anew
    np.testing.assert_array_equal(
        op.apply({"image": image}, again)["image"], op.apply({"image": image}, keys[0])["image"]
    )
    assert not np.array_equal(out["image"][0], out["image"][1])  # another key, another draw
    assert op.output_spec({"image": jax.ShapeDtypeStruct(image.shape, image.dtype)})["image"] == jax.ShapeDtypeStruct(
        image.shape, image.dtype
    )


@pytest.mark.parametrize("make", DETERMINISTIC, ids=lambda f: type(f()).__name__)
def test_deterministic_ops_under_jit_and_vmap(make):
    op = make()
    batch = {"image": np.stack([FLOAT_IMAGE, FLOAT_IMAGE[::-1]])}
    out = jax.jit(lambda b: op.apply_batch(b, count=False))(batch)
    np.testing.assert_allclose(out["image"][1], op.apply({"image": FLOAT_IMAGE[::-1]})["image"], atol=1e-6)
    assert op.record_keys(0, jnp.arange(2)) is None


def test_counters_count_valid_rows():
    op = RandomErasing(RandomErasingConfig(probability=0.5))
    batch = {"image": np.stack([FLOAT_IMAGE] * 3), VALID_MASK: np.array([True, False, True])}
    op.apply_batch(batch, jax.random.split(KEY, 3))
    assert int(op._applied_count[...]) == 2 and int(op._skipped_count[...]) == 0


# --- gradients -----------------------------------------------------------------------------------

GRAD_OPS = [
    lambda: Normalize(NormalizeConfig()),
    lambda: RandomBrightness(RandomBrightnessConfig(magnitude=0.1)),
    lambda: RandomContrast(RandomContrastConfig(magnitude=0.1)),
    lambda: RandomSaturation(RandomSaturationConfig(magnitude=0.1)),
    lambda: RandomHue(RandomHueConfig(magnitude=0.1)),
    lambda: Grayscale(GrayscaleConfig()),
    lambda: GaussianNoise(GaussianNoiseConfig(std=0.01)),
    lambda: GaussianBlur(GaussianBlurConfig(kernel_size=3)),
    lambda: RandomErasing(RandomErasingConfig(probability=1.0)),
]


@pytest.mark.parametrize("make", GRAD_OPS, ids=lambda f: type(f()).__name__)
def test_gradient_wrt_the_image_matches_finite_differences(make):
    op = make()
    weights = jnp.asarray(np.random.default_rng(104).normal(size=FLOAT_IMAGE.shape[:2] + (1,)), jnp.float32)

    def loss(x):
        out = op.apply({"image": x}, KEY if op.stochastic else None)["image"]
        return jnp.sum(out * weights[..., : out.shape[-1]] if out.shape[-1] == 1 else out * weights)

    x = jnp.asarray(FLOAT_IMAGE)
    grad = jax.grad(loss)(x)
    direction = jnp.asarray(np.random.default_rng(105).normal(size=x.shape), jnp.float32)
    eps = 1e-3
    numeric = (loss(x + eps * direction) - loss(x - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(numeric), rtol=2e-2, atol=2e-3)


def test_learnable_brightness_and_contrast_magnitude_gradients_are_analytic():
    x = jnp.asarray(FLOAT_IMAGE)
    w = jnp.asarray(np.random.default_rng(106).normal(size=x.shape), jnp.float32)
    u = 2 * _u(KEY) - 1
    for op_cls, config_cls, dout_dm in (
        (RandomBrightness, RandomBrightnessConfig, lambda: x * u),
        (RandomContrast, RandomContrastConfig, lambda: u * (x - _luma(FLOAT_IMAGE.astype(np.float64)).mean())),
    ):
        op = op_cls(config_cls(magnitude=0.2, learnable=True))
        assert isinstance(op.magnitude, nnx.Param)

        def loss(module):
            return jnp.sum(module.apply({"image": x}, KEY)["image"] * w)

        grad = nnx.grad(loss)(op)
        np.testing.assert_allclose(float(grad.magnitude[...]), float(jnp.sum(dout_dm() * w)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("op_cls", "config_cls"), [(RandomSaturation, RandomSaturationConfig), (RandomHue, RandomHueConfig)]
)
def test_learnable_saturation_and_hue_magnitude_gradients_match_finite_differences(op_cls, config_cls):
    x = jnp.asarray(FLOAT_IMAGE)
    w = jnp.asarray(np.random.default_rng(107).normal(size=x.shape), jnp.float32)
    keys = jax.random.split(KEY, 3)
    op = op_cls(config_cls(magnitude=0.1, learnable=True))

    def loss(module):
        return jnp.sum(module.apply_batch({"image": jnp.stack([x] * 3)}, keys, count=False)["image"] * w[None])

    grad = float(nnx.grad(loss)(op).magnitude[...])
    # Hue is piecewise linear in the shift (kinks where a pixel's hue crosses a sextant), so the
    # step is small enough that no kink falls inside it for these fixed inputs.
    eps = 1e-4
    values = []
    for m in (0.1 + eps, 0.1 - eps):
        op.magnitude[...] = jnp.float32(m)
        values.append(float(loss(op)))
    np.testing.assert_allclose(grad, (values[0] - values[1]) / (2 * eps), rtol=2e-2, atol=1e-2)


# --- pipeline ------------------------------------------------------------------------------------


def _color_pipeline(batch_size, n=20, seed=3):
    images = np.random.default_rng(1).integers(0, 256, (n, 6, 7, 3), dtype=np.uint8)
    source = MemorySource(MemorySourceConfig(), data={"image": images, "label": np.arange(n, dtype=np.int32)})
    stages = [
        RandomBrightness(RandomBrightnessConfig(magnitude=0.3)),
        RandomHue(RandomHueConfig()),
        GaussianBlur(GaussianBlurConfig(kernel_size=3)),
        RandomErasing(RandomErasingConfig()),
        GaussianNoise(GaussianNoiseConfig(std=0.02)),
        Normalize(NormalizeConfig()),
    ]
    return Pipeline(source=source, stages=stages, batch_size=batch_size, rngs=nnx.Rngs(seed), shuffle=True)


def _by_label(pipeline):
    out = {}
    for batch in pipeline:
        valid = np.asarray(batch[VALID_MASK])
        for label, image in zip(np.asarray(batch["label"])[valid], np.asarray(batch["image"])[valid], strict=True):
            out[int(label)] = image
    return out


def test_pipeline_gives_a_record_the_same_augmentation_whatever_the_batch_size():
    small, large = _by_label(_color_pipeline(3)), _by_label(_color_pipeline(8))
    assert sorted(small) == sorted(large) == list(range(20))
    for label in small:
        assert small[label].dtype == np.float32 and small[label].shape == (6, 7, 3)
        np.testing.assert_allclose(small[label], large[label], atol=1e-5)


@pytest.mark.parametrize("make", STOCHASTIC + DETERMINISTIC, ids=lambda f: type(f()).__name__)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.uint8])
def test_output_spec_keeps_the_dtype_and_shape(make, dtype):
    op = make()
    spec = op.output_spec(
        {"image": jax.ShapeDtypeStruct((6, 7, 3), dtype), "label": jax.ShapeDtypeStruct((), jnp.int32)}
    )
    want = jnp.float32 if isinstance(op, Normalize) else dtype
    assert spec["image"] == jax.ShapeDtypeStruct((6, 7, 3), want)
    assert spec["label"] == jax.ShapeDtypeStruct((), jnp.int32)
    out = op.apply({"image": jnp.full((6, 7, 3), 0.5, dtype), "label": jnp.int32(0)}, KEY if op.stochastic else None)
    assert out["image"].dtype == want

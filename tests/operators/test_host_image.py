"""Image host operators: decoding, resizing and cropping one record in numpy (datarax.operators.host_image).

Every image is generated here and encoded with PIL. Tolerances, stated where used:

* PNG decodes exactly (lossless, both sides go through zlib).
* JPEG decodes (simplejpeg) against PIL's: at most 4 levels apart anywhere and 0.5 on
  average. Both bundle libjpeg-turbo with the same default IDCT and upsampling, and agree
  exactly on this machine; the slack covers two bundled versions rounding differently.
* Resizes against PIL's own BILINEAR ``resize``: exact for a whole image, at most 1 level
  for a window (PIL receives the window with a margin, which changes the float rounding
  of its sample positions, never which pixels it reads).
"""

import dataclasses
import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datarax.core.constructor_args import from_recipe
from datarax.core.host_operator import HostOperator
from datarax.core.prng import host_rng
from datarax.operators.host_image import (
    DecodeImage,
    DecodeImageConfig,
    HostCenterCrop,
    HostCenterCropConfig,
    HostRandomResizedCrop,
    HostRandomResizedCropConfig,
    HostResize,
    HostResizeConfig,
)

JPEG_MAX_DIFF, JPEG_MEAN_DIFF = 4, 0.5


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image with grain: compresses like a photograph, unlike pure noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    return np.clip(smooth + rng.integers(-10, 11, size=smooth.shape), 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pil_decode(data: bytes, mode: str = "RGB") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode))


def pil_bilinear(image: np.ndarray, size: tuple[int, int], box=None) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box))


def coordinates(height: int, width: int) -> np.ndarray:
    """Channel 0 holds each pixel's row, channel 1 its column (sides up to 256)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.arange(height)[:, None]
    image[..., 1] = np.arange(width)[None, :]
    return image


def frozen(element: dict) -> dict:
    """``element`` with every array made read-only, so an in-place write in ``apply`` raises."""
    for value in element.values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return element


def assert_jpeg_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape and actual.dtype == np.uint8
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= JPEG_MAX_DIFF and diff.mean() <= JPEG_MEAN_DIFF


DECODE = DecodeImage(DecodeImageConfig())


# ---------------------------------------------------------------- DecodeImage


class TestDecodeImage:
    @pytest.mark.parametrize("shape", [(1, 1), (37, 53), (240, 180)])
    def test_png_is_decoded_exactly(self, shape):
        pixels = photo(*shape)
        out = DECODE.apply({"image": encode(pixels, "PNG")}, None)["image"]
        assert out.dtype == np.uint8 and out.shape == (*shape, 3)
        np.testing.assert_array_equal(out, pixels)

    def test_png_with_alpha_and_palette_match_pil_rgb(self):
        rgba = np.dstack([photo(20, 30), np.full((20, 30), 77, np.uint8)])
        palette = Image.fromarray(photo(20, 30)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        for data in (encode(rgba, "PNG"), encode(palette, "PNG")):
            np.testing.assert_array_equal(DECODE.apply({"image": data}, None)["image"], pil_decode(data))

    @pytest.mark.parametrize("shape", [(160, 320), (217, 171), (8, 8)])
    def test_jpeg_matches_pil_within_tolerance(self, shape):
        data = encode(photo(*shape, seed=3), "JPEG", quality=90)
        out = DECODE.apply({"image": data}, None)["image"]
        assert_jpeg_close(out, pil_decode(data))

    def test_grayscale_png_is_pil_luma(self):
        data = encode(photo(30, 40), "PNG")
        out = DecodeImage(DecodeImageConfig(channels=1)).apply({"image": data}, None)["image"]
        assert out.shape == (30, 40, 1)
        np.testing.assert_array_equal(out[:, :, 0], pil_decode(data, "L"))

    def test_grayscale_jpeg_is_the_decoded_luma_plane(self):
        data = encode(photo(64, 48, seed=5), "JPEG", quality=90)
        out = DecodeImage(DecodeImageConfig(channels=1)).apply({"image": data}, None)["image"]
        assert out.shape == (64, 48, 1)
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", None)  # PIL's own decode of the Y plane
            assert image.mode == "L"
            assert_jpeg_close(out[:, :, 0], np.asarray(image))
        # and it is luma: close to PIL's conversion of the RGB decode (JPEG's Y is computed before rounding)
        assert np.abs(out[:, :, 0].astype(int) - pil_decode(data, "L")).max() <= 12

    def test_grayscale_jpeg_source_to_rgb_repeats_the_plane(self):
        data = encode(photo(30, 30)[:, :, 0], "JPEG", quality=90)
        out = DECODE.apply({"image": data}, None)["image"]
        assert out.shape == (30, 30, 3)
        assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
        assert_jpeg_close(out, pil_decode(data))

    def test_cmyk_jpeg_decodes_to_rgb(self):
        data = encode(Image.fromarray(photo(24, 32)).convert("CMYK"), "JPEG", quality=95)
        out = DECODE.apply({"image": data}, None)["image"]
        assert out.shape == (24, 32, 3)
        # PIL's own CMYK -> RGB formula rounds differently from libjpeg-turbo's
        assert np.abs(out.astype(int) - pil_decode(data)).max() <= 3

    def test_bytes_like_inputs_decode_alike(self):
        data = encode(photo(20, 24), "PNG")
        holder = np.empty((), dtype=object)
        holder[()] = data
        forms = [data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8), np.bytes_(data), holder]
        outs = [DECODE.apply({"image": form}, None)["image"] for form in forms]
        for out in outs:
            np.testing.assert_array_equal(out, outs[0])

    @pytest.mark.parametrize("value", [3, "not bytes", np.zeros((4, 4), np.uint8), np.zeros(4, np.float32)])
    def test_non_bytes_are_a_type_error_naming_the_field(self, value):
        with pytest.raises(TypeError, match="field 'image' must hold encoded image bytes"):
            DECODE.apply({"image": value}, None)

    def test_other_keys_pass_through_and_input_is_untouched(self):
        data = encode(photo(20, 24), "JPEG")
        label = np.array([1, 2, 3])
        element = frozen({"image": data, "label": label, "path": "a.jpg"})
        out = DECODE.apply(element, None)
        assert out is not element and out["label"] is label and out["path"] == "a.jpg"
        assert element["image"] is data and set(element) == {"image", "label", "path"}

    def test_custom_field(self):
        data = encode(photo(9, 7), "PNG")
        out = DecodeImage(DecodeImageConfig(field="jpeg")).apply({"jpeg": data, "image": 1}, None)
        assert out["jpeg"].shape == (9, 7, 3) and out["image"] == 1

    @pytest.mark.parametrize(
        ("data", "kind", "message"),
        [
            (encode(photo(64, 64), "JPEG")[:-300], "JPEG", "Premature end"),
            (b"\xff\xd8\xff" + b"\x00" * 40, "JPEG", ""),
            (encode(photo(16, 16), "PNG")[:60], "PNG", ""),
            (b"no image here", "image", "cannot identify image file"),
            (b"", "image", ""),
        ],
        ids=["truncated-jpeg", "jpeg-header-only", "truncated-png", "garbage", "empty"],
    )
    def test_corrupt_bytes_are_a_value_error_naming_field_and_decoder(self, data, kind, message):
        with pytest.raises(
            ValueError, match=f"field 'image' holds {len(data)} bytes that could not be decoded as {kind}: "
        ) as info:
            DECODE.apply({"image": data}, None)
        assert message in str(info.value)
        assert info.value.__cause__ is not None  # the decoder's own exception

    def test_jpeg_with_a_recoverable_flaw_decodes_as_pil_does(self):
        clean = encode(photo(64, 64), "JPEG", quality=90)
        start_of_scan = clean.index(b"\xff\xda")
        flawed = clean[:start_of_scan] + b"\x00\x00\x00" + clean[start_of_scan:]  # libjpeg: "extraneous bytes"
        out = DECODE.apply({"image": flawed}, None)["image"]
        np.testing.assert_array_equal(out, pil_decode(flawed))
        assert_jpeg_close(out, DECODE.apply({"image": clean}, None)["image"])

    def test_missing_field(self):
        with pytest.raises(ValueError, match=r"field 'image' is not in the element \(keys: \['label'\]\)"):
            DECODE.apply({"label": 1}, None)

    def test_min_size_decodes_a_large_jpeg_reduced(self):
        data = encode(photo(480, 640, seed=2), "JPEG", quality=90)
        out = DecodeImage(DecodeImageConfig(min_size=(100, 100))).apply({"image": data}, None)["image"]
        assert out.shape == (120, 160, 3)  # 1/4: 1/8 (60 x 80) would be below 100 x 100
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (100, 100))  # PIL's reduced decode picks the same scale
            assert_jpeg_close(out, np.asarray(image.convert("RGB")))
        # never below min_size; only powers of two; no reduction when the image is already small
        for min_size, shape in [((240, 320), (240, 320)), ((241, 100), (480, 640)), ((1, 1), (60, 80))]:
            config = DecodeImageConfig(min_size=min_size)
            assert DecodeImage(config).apply({"image": data}, None)["image"].shape == (*shape, 3)

    def test_min_size_is_ignored_for_png(self):
        data = encode(photo(64, 64), "PNG")
        out = DecodeImage(DecodeImageConfig(min_size=(8, 8))).apply({"image": data}, None)["image"]
        assert out.shape == (64, 64, 3)

    def test_is_deterministic_host_operator(self):
        assert isinstance(DECODE, HostOperator)
        assert not DECODE.stochastic and DECODE.key_name is None


# ---------------------------------------------------------------- configs


class TestConfigValidation:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"channels": 2}, "channels must be 1 \\(grayscale\\) or 3 \\(RGB\\), got 2"),
            ({"channels": True}, "channels must be 1 .* got True"),
            ({"channels": 3.0}, "channels must be 1 .* got 3.0"),
            ({"field": ""}, "field must be a non-empty string .* got ''"),
            ({"field": 3}, "field must be a non-empty string .* got 3"),
            (
                {"min_size": (0, 4)},
                "min_size must be a \\(height, width\\) pair of positive ints or None, got \\(0, 4\\)",
            ),
            ({"min_size": 224}, "min_size must be .* got 224"),
            ({"min_size": (2.0, 2)}, "min_size must be .* got \\(2.0, 2\\)"),
            ({"stochastic": True, "stream_name": "x"}, "the operator draws nothing, so stochastic must be False"),
        ],
    )
    def test_decode_config(self, kwargs, message):
        with pytest.raises(ValueError, match=f"^DecodeImageConfig: {message}"):
            DecodeImageConfig(**kwargs)

    @pytest.mark.parametrize("config_cls", [HostResizeConfig, HostCenterCropConfig, HostRandomResizedCropConfig])
    @pytest.mark.parametrize(
        "size", [(0, 4), (4, -1), (4,), (1, 2, 3), "ab", 224, (2.5, 3), (True, 3), (np.float32(2), 2), None]
    )
    def test_size_must_be_a_pair_of_positive_ints(self, config_cls, size):
        with pytest.raises(
            ValueError, match=rf"^{config_cls.__name__}: size must be a \(height, width\) pair of positive ints, got "
        ):
            config_cls(size=size)

    @pytest.mark.parametrize("config_cls", [HostResizeConfig, HostCenterCropConfig, HostRandomResizedCropConfig])
    def test_size_is_required_and_normalised(self, config_cls):
        with pytest.raises(TypeError, match="size"):
            config_cls()
        config = config_cls(size=[np.int64(3), 5])
        assert config.size == (3, 5) and type(config.size[0]) is int
        with pytest.raises(ValueError, match="field must be a non-empty string"):
            config_cls(size=(2, 2), field=None)

    @pytest.mark.parametrize("config_cls", [HostResizeConfig, HostCenterCropConfig])
    def test_deterministic_operators_refuse_stochastic(self, config_cls):
        with pytest.raises(ValueError, match="stochastic must be False"):
            config_cls(size=(2, 2), stochastic=True, stream_name="s")

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            (
                {"scale": (0, 1)},
                "scale must be a \\(low, high\\) pair of numbers with 0 < low <= high <= 1, got \\(0, 1\\)",
            ),
            ({"scale": (0.5, 0.2)}, "scale must be .* got \\(0.5, 0.2\\)"),
            ({"scale": (0.1, 1.5)}, "scale must be .* got \\(0.1, 1.5\\)"),
            ({"scale": (float("nan"), 1)}, "scale must be .* got \\(nan, 1\\)"),
            ({"scale": 0.5}, "scale must be .* got 0.5"),
            ({"scale": (True, 1)}, "scale must be .* got \\(True, 1\\)"),
            ({"ratio": (0, 1)}, "ratio must be a \\(low, high\\) pair of numbers with 0 < low <= high, got \\(0, 1\\)"),
            ({"ratio": (2, 1)}, "ratio must be .* got \\(2, 1\\)"),
            ({"ratio": (1, float("inf"))}, "ratio must be .* got \\(1, inf\\)"),
            ({"ratio": ("a", "b")}, "ratio must be .* got \\('a', 'b'\\)"),
            ({"stochastic": False, "stream_name": None}, "stochastic must be True .* got False"),
            ({"stream_name": ""}, "stream_name must be a non-empty string or None"),
        ],
    )
    def test_random_resized_crop_config(self, kwargs, message):
        with pytest.raises(ValueError, match=f"^HostRandomResizedCropConfig: {message}"):
            HostRandomResizedCropConfig(size=(8, 8), **kwargs)

    def test_random_resized_crop_config_accepts_and_normalises(self):
        config = HostRandomResizedCropConfig(size=(8, 8), scale=[1, 1], ratio=(np.float64(0.5), 2))
        assert config.scale == (1.0, 1.0) and config.ratio == (0.5, 2.0)
        assert config.stochastic and config.stream_name == "random_resized_crop"

    def test_configs_are_frozen_and_replace_revalidates(self):
        config = HostResizeConfig(size=(2, 3))
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.size = (4, 4)
        with pytest.raises(ValueError, match="size must be"):
            dataclasses.replace(config, size=(0, 1))

    @pytest.mark.parametrize(
        ("op_cls", "config"),
        [
            (DecodeImage, HostResizeConfig(size=(2, 2))),
            (HostResize, DecodeImageConfig()),
            (HostCenterCrop, HostResizeConfig(size=(2, 2))),
            (HostRandomResizedCrop, HostCenterCropConfig(size=(2, 2))),
        ],
    )
    def test_operators_want_their_own_config(self, op_cls, config):
        with pytest.raises(TypeError, match=f"{op_cls.__name__}: config must be a {op_cls.__name__}Config"):
            op_cls(config)


# ---------------------------------------------------------------- HostResize


class TestHostResize:
    @pytest.mark.parametrize(("shape", "size"), [((50, 70), (24, 32)), ((20, 30), (64, 48)), ((100, 10), (10, 100))])
    def test_equals_pil_bilinear(self, shape, size):
        image = photo(*shape)
        out = HostResize(HostResizeConfig(size=size)).apply({"image": image}, None)["image"]
        assert out.shape == (*size, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, pil_bilinear(image, size))  # exactly PIL's (see the module docstring)

    def test_shrinking_is_antialiased(self):
        stripes = np.zeros((64, 64, 3), np.uint8)
        stripes[:, ::2] = 255  # one-pixel stripes: point sampling would give all 0 or all 255
        out = HostResize(HostResizeConfig(size=(16, 16))).apply({"image": stripes}, None)["image"]
        assert np.abs(out.astype(int) - 128).max() <= 16

    @pytest.mark.parametrize("channels", [1, 2, 4])
    def test_other_channel_counts_resize_each_channel(self, channels):
        image = np.dstack([photo(30, 40, seed=c)[:, :, 0] for c in range(channels)])
        out = HostResize(HostResizeConfig(size=(12, 17))).apply({"image": image}, None)["image"]
        assert out.shape == (12, 17, channels)
        for c in range(channels):
            expected = np.asarray(Image.fromarray(image[:, :, c]).resize((17, 12), Image.Resampling.BILINEAR))
            np.testing.assert_array_equal(out[:, :, c], expected)

    def test_same_size_is_returned_as_is(self):
        image = photo(12, 12)
        assert HostResize(HostResizeConfig(size=(12, 12))).apply({"image": image}, None)["image"] is image

    def test_input_is_untouched_and_other_keys_pass(self):
        image = photo(30, 30)
        copy = image.copy()
        element = frozen({"image": image, "label": np.int32(4)})
        out = HostResize(HostResizeConfig(size=(10, 20))).apply(element, None)
        np.testing.assert_array_equal(element["image"], copy)
        assert out["label"] == 4 and element["image"] is image

    @pytest.mark.parametrize(
        ("value", "got"),
        [
            (np.zeros((4, 4), np.uint8), "dtype uint8 and shape \\(4, 4\\)"),
            (np.zeros((4, 4, 3), np.float32), "dtype float32"),
            (np.zeros((0, 4, 3), np.uint8), "shape \\(0, 4, 3\\)"),
            (b"\xff\xd8\xff", "a bytes"),
        ],
    )
    def test_wrong_images_are_refused_naming_the_field(self, value, got):
        op = HostResize(HostResizeConfig(size=(2, 2)), name="resize")
        with pytest.raises(ValueError, match=f"HostResize\\('resize'\\): field 'image' must be a non-empty .*{got}"):
            op.apply({"image": value}, None)
        with pytest.raises(ValueError, match="field 'image' is not in the element"):
            op.apply({"img": value}, None)


# ---------------------------------------------------------------- HostCenterCrop


class TestHostCenterCrop:
    @pytest.mark.parametrize(
        ("shape", "size", "top", "left"),
        [((6, 8), (2, 4), 2, 2), ((7, 9), (2, 4), 2, 2), ((5, 5), (5, 5), 0, 0), ((5, 9), (4, 1), 0, 4)],
    )
    def test_exact_center_window(self, shape, size, top, left):
        image = coordinates(*shape)
        out = HostCenterCrop(HostCenterCropConfig(size=size)).apply({"image": image}, None)["image"]
        np.testing.assert_array_equal(out, image[top : top + size[0], left : left + size[1]])

    def test_exact_values_on_a_small_array(self):
        image = np.arange(5 * 6, dtype=np.uint8).reshape(5, 6, 1)
        out = HostCenterCrop(HostCenterCropConfig(size=(3, 2))).apply({"image": image}, None)["image"]
        assert out[:, :, 0].tolist() == [[8, 9], [14, 15], [20, 21]]  # odd margin: extra row at the bottom

    @pytest.mark.parametrize(
        ("shape", "size", "box"),
        [
            ((10, 20), (20, 20), (5, 0, 15, 10)),  # enlarged 2x: the central 10 x 10
            ((30, 10), (20, 20), (0, 10, 10, 20)),  # too narrow only: enlarged 2x, crop 10 x 10 of 30 x 10
            ((3, 4), (9, 16), (0, 0.375, 4, 2.625)),  # enlarged 4x (16 / 4 > 9 / 3): rows 9 / 4 = 2.25 of 3
        ],
    )
    def test_smaller_image_is_enlarged_then_cropped(self, shape, size, box):
        image = photo(*shape)
        out = HostCenterCrop(HostCenterCropConfig(size=size)).apply({"image": image}, None)["image"]
        assert out.shape == (*size, 3)
        expected = pil_bilinear(image, size, box)
        assert np.abs(out.astype(int) - expected).max() <= 1

    def test_enlarged_crop_keeps_the_center(self):
        image = coordinates(10, 40)  # too short: enlarged 3x to 30 x 120, central 30 x 30 = source columns 15..25
        out = HostCenterCrop(HostCenterCropConfig(size=(30, 30))).apply({"image": image}, None)["image"]
        assert out.shape == (30, 30, 3)
        assert out[..., 1].min() >= 15 and out[..., 1].max() <= 24
        assert abs(out[..., 1].mean() - 19.5) <= 0.5 and abs(out[..., 0].mean() - 4.5) <= 0.5

    def test_input_is_untouched(self):
        image = photo(20, 20)
        copy = image.copy()
        for size in [(10, 10), (40, 30)]:
            HostCenterCrop(HostCenterCropConfig(size=size)).apply(frozen({"image": image}), None)
        np.testing.assert_array_equal(image, copy)


# ---------------------------------------------------------------- HostRandomResizedCrop


def rrc(size=(24, 32), **kwargs) -> HostRandomResizedCrop:
    return HostRandomResizedCrop(HostRandomResizedCropConfig(size=size, **kwargs))


class TestHostRandomResizedCrop:
    def test_is_stochastic_with_a_key_name(self):
        op = rrc()
        assert op.stochastic and op.key_name == "random_resized_crop"
        assert HostRandomResizedCrop(HostRandomResizedCropConfig(size=(2, 2)), name="crop").key_name == "crop"

    @pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (7, 9), (64, 64), (250, 180), (13, 400)])
    def test_output_shape_is_fixed(self, shape):
        op = rrc()
        image = photo(*shape)
        for seed in range(5):
            out = op.apply({"image": image}, np.random.default_rng(seed))["image"]
            assert out.shape == (24, 32, 3) and out.dtype == np.uint8

    def test_same_generator_state_same_crop_and_different_states_differ(self):
        op = rrc()
        image = photo(120, 160)
        first = op.apply({"image": image}, host_rng(0, "random_resized_crop", 0, 5))["image"]
        again = op.apply({"image": image}, host_rng(0, "random_resized_crop", 0, 5))["image"]
        np.testing.assert_array_equal(first, again)
        others = [op.apply({"image": image}, host_rng(0, "random_resized_crop", 0, r))["image"] for r in range(6, 14)]
        assert all(not np.array_equal(first, other) for other in others)
        windows = {op.window(120, 160, np.random.default_rng(seed)) for seed in range(50)}
        assert len(windows) > 45

    def test_draws_only_from_the_given_generator(self):
        op = rrc()
        image = photo(50, 60)
        np.random.seed(0)
        a = op.apply({"image": image}, np.random.default_rng(3))["image"]
        np.random.seed(1)
        b = op.apply({"image": image}, np.random.default_rng(3))["image"]
        np.testing.assert_array_equal(a, b)
        rng = np.random.default_rng(3)
        op.window(50, 60, rng)
        consumed = rng.bit_generator.state
        rng = np.random.default_rng(3)
        op.apply({"image": image}, rng)
        assert rng.bit_generator.state == consumed  # apply draws exactly what window draws

    def test_windows_are_within_bounds_and_follow_scale_and_ratio(self):
        op = rrc()
        rng = np.random.default_rng(0)
        for _ in range(2000):
            height, width = (int(s) for s in rng.integers(1, 400, size=2))
            top, left, h, w = op.window(height, width, rng)
            assert 0 <= top < top + h <= height and 0 <= left < left + w <= width
        big = [op.window(300, 300, np.random.default_rng(seed)) for seed in range(500)]
        areas = np.array([h * w / 300**2 for _, _, h, w in big])
        ratios = np.array([w / h for _, _, h, w in big])
        assert areas.min() >= 0.08 * 0.97 and areas.max() <= 1
        assert ratios.min() >= 0.75 * 0.98 and ratios.max() <= 4 / 3 * 1.02
        assert areas.min() < 0.2 and areas.max() > 0.8  # the range is used, not one corner of it

    def test_output_comes_from_the_window(self):
        op = rrc(size=(32, 48))
        for seed in range(200):
            height, width = (int(s) for s in np.random.default_rng(seed + 1000).integers(2, 250, size=2))
            image = coordinates(height, width)
            out = op.apply({"image": image}, np.random.default_rng(seed))["image"].astype(float)
            top, left, h, w = op.window(height, width, np.random.default_rng(seed))
            rows, cols = out[..., 0], out[..., 1]
            assert top <= rows.min() and rows.max() <= top + h - 1
            assert left <= cols.min() and cols.max() <= left + w - 1
            assert abs(rows.mean() - (top + h / 2 - 0.5)) <= 0.75 and abs(cols.mean() - (left + w / 2 - 0.5)) <= 0.75

    def test_equals_pil_bilinear_of_the_window(self):
        op = rrc(size=(40, 40))
        image = photo(90, 130)
        for seed in range(20):
            top, left, h, w = op.window(90, 130, np.random.default_rng(seed))
            out = op.apply({"image": image}, np.random.default_rng(seed))["image"]
            expected = pil_bilinear(image, (40, 40), (left, top, left + w, top + h))
            assert np.abs(out.astype(int) - expected).max() <= 1

    @pytest.mark.parametrize(
        ("shape", "ratio", "window"),
        [
            ((10, 100), (3 / 4, 4 / 3), (0, 43, 10, 13)),  # too wide: full height, widest allowed ratio
            ((100, 10), (3 / 4, 4 / 3), (43, 0, 13, 10)),  # too tall: full width, narrowest allowed ratio
            ((10, 10), (2, 3), (2, 0, 5, 10)),  # a square is too tall for ratios 2..3
            ((10, 12), (1, 2), (0, 0, 10, 12)),  # ratio inside the range: the whole image
        ],
    )
    def test_fallback_is_a_center_crop_with_the_ratio_clamped(self, shape, ratio, window):
        op = rrc(scale=(1, 1), ratio=ratio)  # the whole area at another ratio never fits: every try fails
        for seed in range(5):
            assert op.window(*shape, np.random.default_rng(seed)) == window

    def test_single_channel_and_input_untouched(self):
        image = photo(40, 50)[:, :, :1]
        copy = image.copy()
        out = rrc().apply(frozen({"image": image, "id": 9}), np.random.default_rng(0))
        assert out["image"].shape == (24, 32, 1) and out["id"] == 9
        np.testing.assert_array_equal(image, copy)

    def test_needs_a_generator(self):
        with pytest.raises(
            ValueError, match="is stochastic: apply needs the record's numpy.random.Generator, got None"
        ):
            rrc().apply({"image": photo(8, 8)}, None)


# ---------------------------------------------------------------- rebuilding in a worker


OPERATORS = [
    (DecodeImage(DecodeImageConfig(channels=1, min_size=(16, 16)), name="decode"), None),
    (HostResize(HostResizeConfig(size=(20, 30), field="image")), None),
    (HostCenterCrop(HostCenterCropConfig(size=(40, 40))), None),
    (HostRandomResizedCrop(HostRandomResizedCropConfig(size=(24, 24), scale=(0.3, 0.9)), name="rrc"), 7),
]


@pytest.mark.parametrize(("op", "seed"), OPERATORS, ids=lambda x: type(x).__name__ if x is not None else "")
def test_worker_recipe_rebuilds_an_identical_operator(op, seed):
    recipe = pickle.loads(pickle.dumps(op.worker_recipe()))
    twin = from_recipe(recipe)
    assert type(twin) is type(op) and twin.config == op.config and twin.name == op.name
    value = encode(photo(70, 90), "JPEG") if isinstance(op, DecodeImage) else photo(70, 90)

    def run(operator):
        rng = None if seed is None else np.random.default_rng(seed)
        return operator.apply({"image": value}, rng)["image"]

    np.testing.assert_array_equal(run(twin), run(op))


def test_importing_the_module_imports_no_image_library():
    code = (
        "import sys, datarax, datarax.operators.host_image; "
        "print(sorted(m for m in ('PIL', 'simplejpeg', 'cv2') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

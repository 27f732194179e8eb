"""Image host operators: decode, resize and crop one record at a time, in numpy, before the batch.

Encoded images vary in size, so they cannot enter a fixed-shape device batch;
these ``HostOperator``s turn a record's bytes into a uint8 array of one fixed
shape on the host, in the pipeline's worker threads or processes:

* ``DecodeImage``: JPEG or PNG (or any format PIL reads) bytes to an
  ``(H, W, C)`` uint8 array, RGB or grayscale.
* ``HostResize``: a bilinear resize to a fixed ``(height, width)``.
* ``HostCenterCrop``: the central ``(height, width)`` window.
* ``HostRandomResizedCrop``: the Inception-style random crop (random area
  and aspect ratio), resized to a fixed ``(height, width)``.

Every array is channels-last ``(H, W, C)`` uint8; each operator reads one
``field`` (``"image"`` by default) and passes every other key through. Their
outputs may be read-only views of a decoder's buffer (the pipeline copies
them into the batch); copy one before writing to it.

**Choices, measured** (``benchmarks/decoders.py``, figures in
``docs/host_image.md``). JPEGs are decoded with simplejpeg (libjpeg-turbo's
TurboJPEG API), measured the fastest of PIL, simplejpeg and OpenCV for
160-320 px photographs and pixel-identical to PIL's decode with the
libjpeg-turbo both bundle; other formats go through PIL. Resizing uses PIL's
bilinear filter, which widens its support when it shrinks (antialiasing, as
``Image.resize`` does); OpenCV's ``INTER_LINEAR`` does not, and OpenCV is
not in the ``image`` extra (what it would gain is measured in the doc). A
crop is never cut out and then resized: PIL receives the crop's window plus
the few pixels its filter reaches beyond it, with the window as
``Image.resize(box=...)``, so one resampling reads only the pixels it needs
(PIL's ``fromarray`` copies whatever it is given, so handing it the whole
image costs a copy of the whole image). ``DecodeImageConfig(min_size=...)`` lets
libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 of its size (its DCT
scaling) when the result stays at least ``min_size``.

PIL and simplejpeg are imported when an operator is built, never by
``import datarax``; they come with ``pip install 'datarax[image]'``.

Example:
    >>> import io
    >>> import numpy as np
    >>> from PIL import Image
    >>> buffer = io.BytesIO()
    >>> Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(buffer, format="PNG")
    >>> record = {"image": buffer.getvalue(), "label": np.int32(3)}
    >>> decode = DecodeImage(DecodeImageConfig())
    >>> crop = HostRandomResizedCrop(HostRandomResizedCropConfig(size=(16, 16)))
    >>> out = crop.apply(decode.apply(record, None), np.random.default_rng(0))
    >>> out["image"].shape, out["image"].dtype, int(out["label"])
    ((16, 16, 3), dtype('uint8'), 3)
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np

from datarax.core.config import OperatorConfig
from datarax.core.extras import import_extra
from datarax.core.host_operator import HostOperator
from datarax.core.validation import is_int
from datarax.operators._checks import label, require_config

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# libjpeg scales a decode by n/8; 1/2, 1/4 and 1/8 have fast inverse DCTs, the other
# fractions measured slower than a full decode, so only these are used.
_DCT_FACTORS = (8, 4, 2)


# ------------------------------------------------------------------ config checks


def _check_field(name: str, field: Any) -> str:
    if not isinstance(field, str) or not field:
        raise ValueError(f"{name}: field must be a non-empty string (an element key), got {field!r}")
    return field


def _check_size(name: str, argument: str, size: Any, *, optional: bool = False) -> tuple[int, int] | None:
    """A ``(height, width)`` pair of positive ints, as a tuple of ints (None passes when ``optional``)."""
    if size is None and optional:
        return None
    expected = "a (height, width) pair of positive ints" + (" or None" if optional else "")
    if isinstance(size, str | bytes) or not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(f"{name}: {argument} must be {expected}, got {size!r}")
    if not all(is_int(side) and side > 0 for side in size):
        raise ValueError(f"{name}: {argument} must be {expected}, got {size!r}")
    return int(size[0]), int(size[1])


def _check_range(name: str, argument: str, bounds: Any, *, at_most_one: bool) -> tuple[float, float]:
    """A ``(low, high)`` pair of finite numbers with ``0 < low <= high`` (and ``high <= 1`` when asked)."""
    expected = "a (low, high) pair of numbers with 0 < low <= high" + (" <= 1" if at_most_one else "")
    if isinstance(bounds, str | bytes) or not isinstance(bounds, Sequence) or len(bounds) != 2:
        raise ValueError(f"{name}: {argument} must be {expected}, got {bounds!r}")
    if not all(isinstance(b, Real) and not isinstance(b, bool | np.bool_) and math.isfinite(b) for b in bounds):
        raise ValueError(f"{name}: {argument} must be {expected}, got {bounds!r}")
    low, high = float(bounds[0]), float(bounds[1])
    if not 0 < low <= high or (at_most_one and high > 1):
        raise ValueError(f"{name}: {argument} must be {expected}, got {bounds!r}")
    return low, high


def _require_deterministic(config: OperatorConfig) -> None:
    if config.stochastic is not False or config.stream_name is not None:
        raise ValueError(
            f"{type(config).__name__}: the operator draws nothing, so stochastic must be False and stream_name "
            f"None, got stochastic={config.stochastic!r}, stream_name={config.stream_name!r}"
        )


# ------------------------------------------------------------------ configs


@dataclasses.dataclass(frozen=True)
class DecodeImageConfig(OperatorConfig):
    """Configuration of ``DecodeImage``.

    Attributes:
        field: The element key holding the encoded bytes (replaced by the array).
        channels: 3 for RGB, 1 for grayscale (an ``(H, W, 1)`` array).
        min_size: None to decode at full size; or ``(height, width)``: a JPEG
            may then be decoded at 1/2, 1/4 or 1/8 of its size (the largest
            reduction that keeps it at least ``height`` x ``width``; much
            faster for large photographs). Other formats ignore it.

    Raises:
        ValueError: If ``field`` is not a non-empty string, ``channels`` is not
            1 or 3, ``min_size`` is not None or a pair of positive ints, or the
            config is made stochastic.

    Example:
        >>> DecodeImageConfig(channels=1, min_size=[256, 256]).min_size
        (256, 256)
    """

    field: str = "image"
    channels: int = 3
    min_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        _require_deterministic(self)
        _check_field(name, self.field)
        if not is_int(self.channels) or self.channels not in (1, 3):
            raise ValueError(f"{name}: channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        object.__setattr__(self, "channels", int(self.channels))
        object.__setattr__(self, "min_size", _check_size(name, "min_size", self.min_size, optional=True))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostResizeConfig(OperatorConfig):
    """Configuration of ``HostResize``.

    Attributes:
        size: The output ``(height, width)`` (required; a pair, never one int,
            so it cannot be mistaken for "resize the shorter side").
        field: The element key of the ``(H, W, C)`` uint8 image.

    Raises:
        ValueError: If ``size`` is not a pair of positive ints, ``field`` is
            not a non-empty string, or the config is made stochastic.

    Example:
        >>> HostResizeConfig(size=(224, 224)).size
        (224, 224)
    """

    size: tuple[int, int]
    field: str = "image"

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        _require_deterministic(self)
        _check_field(name, self.field)
        object.__setattr__(self, "size", _check_size(name, "size", self.size))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostCenterCropConfig(OperatorConfig):
    """Configuration of ``HostCenterCrop``.

    Attributes:
        size: The crop's ``(height, width)`` (required).
        field: The element key of the ``(H, W, C)`` uint8 image.

    Raises:
        ValueError: If ``size`` is not a pair of positive ints, ``field`` is
            not a non-empty string, or the config is made stochastic.

    Example:
        >>> HostCenterCropConfig(size=(224, 224), field="photo").field
        'photo'
    """

    size: tuple[int, int]
    field: str = "image"

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        _require_deterministic(self)
        _check_field(name, self.field)
        object.__setattr__(self, "size", _check_size(name, "size", self.size))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostRandomResizedCropConfig(OperatorConfig):
    """Configuration of ``HostRandomResizedCrop``.

    Attributes:
        size: The output ``(height, width)`` (required).
        field: The element key of the ``(H, W, C)`` uint8 image.
        scale: Range of the crop's area as a fraction of the image's,
            ``0 < low <= high <= 1``.
        ratio: Range of the crop's aspect ratio (width / height), ``0 < low <= high``;
            drawn log-uniformly.
        stochastic: Always True (the crop is drawn per record).
        stream_name: The name its per-record generators derive from (unless
            the operator is given a ``name``).

    Raises:
        ValueError: If ``size`` is not a pair of positive ints, ``scale`` or
            ``ratio`` is not a valid range, ``field`` is not a non-empty
            string, or ``stochastic`` is False.

    Example:
        >>> HostRandomResizedCropConfig(size=(224, 224), scale=(0.25, 1)).scale
        (0.25, 1.0)
    """

    size: tuple[int, int]
    field: str = "image"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    stochastic: bool = True
    stream_name: str | None = "random_resized_crop"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.stochastic is not True:
            raise ValueError(f"{name}: stochastic must be True (a crop is drawn per record), got {self.stochastic!r}")
        super().__post_init__()
        _check_field(name, self.field)
        object.__setattr__(self, "size", _check_size(name, "size", self.size))
        object.__setattr__(self, "scale", _check_range(name, "scale", self.scale, at_most_one=True))
        object.__setattr__(self, "ratio", _check_range(name, "ratio", self.ratio, at_most_one=False))


# ------------------------------------------------------------------ numpy / PIL helpers


def _as_buffer(op: HostOperator, field: str, value: Any) -> bytes | bytearray | memoryview | np.ndarray:
    """The encoded bytes of ``value``: bytes-like, a 1-D uint8 array, or a 0-d object array holding bytes."""
    if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 0:
        value = value.item()
    if isinstance(value, bytes | bytearray | memoryview):
        return value
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        return np.ascontiguousarray(value)
    raise TypeError(
        f"{label(op)}: field {field!r} must hold encoded image bytes (bytes or a 1-D uint8 array), "
        f"got {type(value).__name__}"
        + (f" of dtype {value.dtype} and shape {value.shape}" if isinstance(value, np.ndarray) else "")
    )


def _dct_factor(height: int, width: int, min_size: tuple[int, int]) -> int:
    """The largest of 8, 4, 2 by which libjpeg may shrink a decode and keep it at least ``min_size`` (else 1)."""
    for factor in _DCT_FACTORS:
        if -(-height // factor) >= min_size[0] and -(-width // factor) >= min_size[1]:
            return factor
    return 1


def _decode_with_simplejpeg(data: Any, channels: int, min_size: tuple[int, int] | None) -> np.ndarray:
    import simplejpeg

    reduce: dict[str, int] = {}
    if min_size is not None:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        factor = _dct_factor(height, width, min_size)
        if factor > 1:
            # libjpeg picks the smallest n/8 scale that reaches these sides: exactly 1/factor.
            reduce = {"min_height": -(-height // factor), "min_width": -(-width // factor)}
    return simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB", **reduce)


def _decode_with_pil(data: Any, channels: int, min_size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        mode = "L" if channels == 1 else "RGB"
        if min_size is not None and image.format == "JPEG":
            image.draft(mode, (min_size[1], min_size[0]))
        array = np.asarray(image.convert(mode))
    return array[:, :, None] if channels == 1 else array


def _pil_resize(image: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of the ``box`` window (left, top, right, bottom) to ``size``."""
    from PIL import Image

    height, width = size
    bilinear = Image.Resampling.BILINEAR
    left, top, right, bottom = box
    # Only the window and the filter's reach around it go to PIL (``fromarray`` copies what
    # it is given): the support is 1 source pixel, widened by the shrink factor.
    reach_x = math.ceil(max(1.0, (right - left) / width)) + 1
    reach_y = math.ceil(max(1.0, (bottom - top) / height)) + 1
    x0, y0 = max(0, math.floor(left) - reach_x), max(0, math.floor(top) - reach_y)
    x1 = min(image.shape[1], math.ceil(right) + reach_x)
    y1 = min(image.shape[0], math.ceil(bottom) + reach_y)
    image = image[y0:y1, x0:x1]
    box = (left - x0, top - y0, right - x0, bottom - y0)
    if image.shape[2] == 3:
        return np.asarray(Image.fromarray(image).resize((width, height), bilinear, box=box))
    # Any other channel count: each channel on its own, as a grayscale image (no alpha semantics).
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c])).resize((width, height), bilinear, box=box))
        for c in range(image.shape[2])
    ]
    return np.stack(planes, axis=-1)


def _image_of(op: HostOperator, element: dict[str, Any]) -> np.ndarray:
    """The configured field of ``element`` as an ``(H, W, C)`` uint8 array, or a clear error."""
    field = op.config.field
    if field not in element:
        raise ValueError(f"{label(op)}: field {field!r} is not in the element (keys: {sorted(element)})")
    image = element[field]
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or 0 in image.shape:
        got = (
            f"dtype {image.dtype} and shape {image.shape}"
            if isinstance(image, np.ndarray)
            else f"a {type(image).__name__}"
        )
        raise ValueError(
            f"{label(op)}: field {field!r} must be a non-empty (H, W, C) uint8 array "
            f"(decode it first with DecodeImage), got {got}"
        )
    return image


# ------------------------------------------------------------------ operators


class DecodeImage(HostOperator):
    """Decodes a JPEG, PNG or other encoded image in ``config.field`` into an ``(H, W, C)`` uint8 array.

    The format is told by its magic bytes: JPEG goes to simplejpeg (the
    fastest decoder measured; see the module docstring), everything else to
    PIL (PNG, GIF, BMP, WebP, ...). A JPEG simplejpeg refuses is tried with
    PIL before it is reported: simplejpeg (strict) refuses flaws that libjpeg
    only warns about, such as stray bytes before a marker, which PIL decodes
    (so a file is accepted exactly when PIL accepts it). ``channels=3`` gives RGB (an alpha channel is
    dropped, a palette expanded); ``channels=1`` gives luma as ``(H, W, 1)``:
    for JPEG the decoded Y plane (what PIL's ``draft("L")`` gives), for
    other formats PIL's ``convert("L")``.

    Args:
        config: A ``DecodeImageConfig``.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``DecodeImageConfig``.
        ImportError: If PIL or simplejpeg is missing (``pip install 'datarax[image]'``).

    Example:
        >>> import io
        >>> import numpy as np
        >>> from PIL import Image
        >>> pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
        >>> buffer = io.BytesIO()
        >>> Image.fromarray(pixels).save(buffer, format="PNG")
        >>> out = DecodeImage(DecodeImageConfig()).apply({"image": buffer.getvalue()}, None)
        >>> bool((out["image"] == pixels).all())
        True
    """

    def __init__(self, config: DecodeImageConfig, *, name: str | None = None):
        require_config(self, config, DecodeImageConfig)
        import_extra("PIL.Image", extra="image", owner="DecodeImage")
        import_extra("simplejpeg", extra="image", owner="DecodeImage")
        super().__init__(config, name=name)

    def apply(self, element: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        """Decodes one record's bytes.

        Args:
            element: One record; ``element[config.field]`` holds the encoded
                bytes (``bytes``, ``bytearray``, ``memoryview`` or a 1-D uint8 array).
            rng: Unused (None: the operator is deterministic).

        Returns:
            A new dict: the record with ``config.field`` replaced by the
            ``(H, W, channels)`` uint8 array.

        Raises:
            ValueError: If the field is missing, or the bytes cannot be decoded
                (the message names the field and quotes the decoder).
            TypeError: If the field does not hold bytes.
        """
        config = self.config
        if config.field not in element:
            raise ValueError(f"{label(self)}: field {config.field!r} is not in the element (keys: {sorted(element)})")
        data = _as_buffer(self, config.field, element[config.field])
        head = bytes(data[:8])
        try:
            if head.startswith(_JPEG_MAGIC):
                try:
                    image = _decode_with_simplejpeg(data, config.channels, config.min_size)
                except ValueError as jpeg_error:
                    try:
                        image = _decode_with_pil(data, config.channels, config.min_size)
                    except Exception:
                        raise jpeg_error from None
            else:
                image = _decode_with_pil(data, config.channels, None)
        except Exception as error:  # every decoder's own exception types become one ValueError
            kind = "JPEG" if head.startswith(_JPEG_MAGIC) else "PNG" if head.startswith(_PNG_MAGIC) else "image"
            raise ValueError(
                f"{label(self)}: field {config.field!r} holds {len(data)} bytes that could not be decoded "
                f"as {kind}: {type(error).__name__}: {error}"
            ) from error
        return {**element, config.field: image}


class HostResize(HostOperator):
    """Resizes the ``(H, W, C)`` uint8 image in ``config.field`` to ``config.size``, bilinearly.

    PIL's bilinear filter: its support widens by the shrink factor when an
    axis is reduced, so shrinking averages every source pixel (antialiased)
    and enlarging interpolates. An image already of the size is returned
    as it is.

    Args:
        config: A ``HostResizeConfig``.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``HostResizeConfig``.
        ImportError: If PIL is missing (``pip install 'datarax[image]'``).

    Example:
        >>> import numpy as np
        >>> resize = HostResize(HostResizeConfig(size=(2, 3)))
        >>> resize.apply({"image": np.full((4, 6, 3), 7, np.uint8)}, None)["image"][:, :, 0].tolist()
        [[7, 7, 7], [7, 7, 7]]
    """

    def __init__(self, config: HostResizeConfig, *, name: str | None = None):
        require_config(self, config, HostResizeConfig)
        import_extra("PIL.Image", extra="image", owner="HostResize")
        super().__init__(config, name=name)

    def apply(self, element: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        """Resizes one record's image.

        Args:
            element: One record; ``element[config.field]`` is an ``(H, W, C)`` uint8 array.
            rng: Unused (None: the operator is deterministic).

        Returns:
            A new dict with the field replaced by the ``(*config.size, C)`` uint8 array.

        Raises:
            ValueError: If the field is missing or not a non-empty ``(H, W, C)`` uint8 array.
        """
        image = _image_of(self, element)
        height, width = image.shape[:2]
        if (height, width) == self.config.size:
            return {**element, self.config.field: image}
        resized = _pil_resize(image, self.config.size, (0.0, 0.0, float(width), float(height)))
        return {**element, self.config.field: resized}


class HostCenterCrop(HostOperator):
    """Takes the central ``config.size`` window of the ``(H, W, C)`` uint8 image in ``config.field``.

    An image at least as large as the crop on both sides is sliced, exactly:
    the window starts at ``((H - h) // 2, (W - w) // 2)``, so an odd margin
    leaves its extra pixel at the bottom and right; the result is a view of
    the input. An image smaller than the crop on a side is first enlarged,
    keeping its aspect ratio, by the smallest factor that makes it cover the
    crop (the short side then equals the crop's), and the centre of the
    enlarged image is taken; the enlargement and the crop are one bilinear
    resampling of the central window. Nothing is padded, so every output
    pixel comes from the image.

    Args:
        config: A ``HostCenterCropConfig``.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``HostCenterCropConfig``.
        ImportError: If PIL is missing (``pip install 'datarax[image]'``).

    Example:
        >>> import numpy as np
        >>> crop = HostCenterCrop(HostCenterCropConfig(size=(2, 2)))
        >>> image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
        >>> crop.apply({"image": image}, None)["image"][:, :, 0].tolist()
        [[5, 6], [9, 10]]
    """

    def __init__(self, config: HostCenterCropConfig, *, name: str | None = None):
        require_config(self, config, HostCenterCropConfig)
        import_extra("PIL.Image", extra="image", owner="HostCenterCrop")
        super().__init__(config, name=name)

    def apply(self, element: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        """Crops one record's image.

        Args:
            element: One record; ``element[config.field]`` is an ``(H, W, C)`` uint8 array.
            rng: Unused (None: the operator is deterministic).

        Returns:
            A new dict with the field replaced by the ``(*config.size, C)`` uint8 crop.

        Raises:
            ValueError: If the field is missing or not a non-empty ``(H, W, C)`` uint8 array.
        """
        image = _image_of(self, element)
        crop_h, crop_w = self.config.size
        height, width = image.shape[:2]
        if height >= crop_h and width >= crop_w:
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
            return {**element, self.config.field: image[top : top + crop_h, left : left + crop_w]}
        # Enlarged by s = max(crop_h / H, crop_w / W), the crop covers crop / s source pixels.
        s = max(crop_h / height, crop_w / width)
        window_h, window_w = min(height, crop_h / s), min(width, crop_w / s)
        top, left = (height - window_h) / 2, (width - window_w) / 2
        box = (left, top, left + window_w, top + window_h)
        return {**element, self.config.field: _pil_resize(image, self.config.size, box)}


class HostRandomResizedCrop(HostOperator):
    """A random crop of random area and aspect ratio of ``config.field``, resized to ``config.size``.

    The Inception-style crop: up to ten tries draw an area fraction uniform
    in ``config.scale`` and an aspect ratio (width / height) log-uniform in
    ``config.ratio``; the first whose rounded ``(h, w)`` fits in the image is
    placed at a uniformly drawn offset. If none fits, the crop is central,
    the whole image when its aspect ratio is within ``config.ratio``, else
    the largest window with the ratio clamped to the nearest bound. The
    window is then resized bilinearly (antialiased when shrinking) to
    ``config.size`` in one resampling (see the module docstring); a window
    already of that size is returned as a view of the input.

    Every draw comes from the record's generator, so a record's crop depends
    only on (pipeline seed, key name, epoch, record).

    Args:
        config: A ``HostRandomResizedCropConfig``.
        name: Optional operator name (then its key name).

    Raises:
        TypeError: If ``config`` is not a ``HostRandomResizedCropConfig``.
        ImportError: If PIL is missing (``pip install 'datarax[image]'``).

    Example:
        >>> import numpy as np
        >>> crop = HostRandomResizedCrop(HostRandomResizedCropConfig(size=(8, 8)))
        >>> image = np.zeros((30, 50, 3), np.uint8)
        >>> crop.apply({"image": image}, np.random.default_rng(1))["image"].shape
        (8, 8, 3)
        >>> top, left, h, w = crop.window(30, 50, np.random.default_rng(1))  # the window of that crop
        >>> 0 <= top < top + h <= 30 and 0 <= left < left + w <= 50
        True
    """

    def __init__(self, config: HostRandomResizedCropConfig, *, name: str | None = None):
        require_config(self, config, HostRandomResizedCropConfig)
        import_extra("PIL.Image", extra="image", owner="HostRandomResizedCrop")
        super().__init__(config, name=name)

    def window(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Draws the crop of an image of ``height`` x ``width`` (what ``apply`` draws with the same ``rng``).

        Args:
            height: The image's height.
            width: The image's width.
            rng: The record's generator.

        Returns:
            ``(top, left, crop_height, crop_width)``, within the image.
        """
        area = height * width
        scale_low, scale_high = self.config.scale
        log_low, log_high = math.log(self.config.ratio[0]), math.log(self.config.ratio[1])
        for _ in range(10):
            crop_area = area * rng.uniform(scale_low, scale_high)
            aspect = math.exp(rng.uniform(log_low, log_high))
            crop_w = round(math.sqrt(crop_area * aspect))
            crop_h = round(math.sqrt(crop_area / aspect))
            if 0 < crop_h <= height and 0 < crop_w <= width:
                top = int(rng.integers(0, height - crop_h + 1))
                left = int(rng.integers(0, width - crop_w + 1))
                return top, left, crop_h, crop_w
        aspect_low, aspect_high = self.config.ratio
        if width / height < aspect_low:  # too tall: full width, height from the narrowest allowed ratio
            crop_h, crop_w = min(height, max(1, round(width / aspect_low))), width
        elif width / height > aspect_high:  # too wide: full height
            crop_h, crop_w = height, min(width, max(1, round(height * aspect_high)))
        else:
            crop_h, crop_w = height, width
        return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w

    def apply(self, element: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        """Crops and resizes one record's image.

        Args:
            element: One record; ``element[config.field]`` is an ``(H, W, C)`` uint8 array.
            rng: The record's generator (required: the operator is stochastic).

        Returns:
            A new dict with the field replaced by the ``(*config.size, C)`` uint8 array.

        Raises:
            ValueError: If ``rng`` is None, or the field is missing or not a
                non-empty ``(H, W, C)`` uint8 array.
        """
        if not isinstance(rng, np.random.Generator):
            raise ValueError(
                f"{label(self)} is stochastic: apply needs the record's numpy.random.Generator, got {rng!r}"
            )
        image = _image_of(self, element)
        top, left, crop_h, crop_w = self.window(image.shape[0], image.shape[1], rng)
        if (crop_h, crop_w) == self.config.size:
            resized = image[top : top + crop_h, left : left + crop_w]
        else:
            resized = _pil_resize(image, self.config.size, (left, top, left + crop_w, top + crop_h))
        return {**element, self.config.field: resized}


__all__ = [
    "DecodeImage",
    "DecodeImageConfig",
    "HostCenterCrop",
    "HostCenterCropConfig",
    "HostRandomResizedCrop",
    "HostRandomResizedCropConfig",
    "HostResize",
    "HostResizeConfig",
]

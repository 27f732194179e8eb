"""Image geometry operators: crops, resizes and rotations written per element for XLA.

Six operators move pixels of one channels-last ``(H, W, C)`` image (the element's
``field``, ``"image"`` by default) and pass every other key through:

* ``RandomCrop``: a random ``(height, width)`` window after padding each side by
  ``padding`` pixels (constant ``fill``, ``"reflect"`` or ``"edge"``), CIFAR style.
* ``CenterCrop``: the central ``(height, width)`` window.
* ``Resize``: a resize to a fixed ``(height, width)``, bilinear (antialiased when it
  shrinks, as PIL's ``Image.resize(..., Image.BILINEAR)``) or nearest.
* ``RandomResizedCrop``: a window of random area and aspect ratio (the Inception
  crop, torchvision's sampling with its fallback to a central crop), resized
  bilinearly to a fixed size.
* ``RandomRotation``: a rotation by a random angle about the image centre,
  bilinear, ``fill`` outside, as ``scipy.ndimage.rotate(..., reshape=False,
  order=1, mode="constant", cval=fill)``.
* ``RandomTranslate``: a shift by a random whole number of pixels, ``fill``
  shifted in (torchvision's ``RandomAffine(translate=...)`` without the rest).

**Resampling.** A resize is separable: each output row is a weighted sum of a
few input rows, each output column of a few input columns. The rows (and
columns) and their weights are computed as ``(out, taps)`` index and weight
vectors from the window's start and length, which may be traced values drawn
from the record's key. Weights are PIL's: half-pixel centres, a triangle filter
whose support widens by the shrink factor when ``antialias`` is set, taps
outside the window dropped and the rest renormalised (which is what clamping
to the edge does for plain bilinear). A crop-and-resize never cuts the crop
out first: its taps are confined to the window, which equals resizing the
cut-out crop.

The taps are read with 0/1 selection matmuls (``precision=HIGHEST``): each
matmul output is one input pixel copied exactly, whatever order the matmul
kernel sums in, and the taps are then weighed elementwise in a fixed order.
Measured on XLA:CPU (``vmap`` over 128 float32 images, 2 shared cores):

===========================  =======  ============  =========  ================
resize                       gathers  dense matmul  selection  jax.image.resize
===========================  =======  ============  =========  ================
32x32 to 64x64               57 ms    1.4 ms        4.1 ms     2.8 ms
64x64 to 32x32, antialias    74 ms    1.6 ms        8.8 ms     3.9 ms
64x64 to 32x32, plain        28 ms    1.6 ms        4.8 ms     3.8 ms
128x128 to 56x56, antialias  560 ms   17 ms         95 ms      32 ms
===========================  =======  ============  =========  ================

Gathers (two ``take`` with the tap vectors) are the slowest by far on XLA:CPU.
One dense weighted matmul per axis (the weights folded into an ``(out, in)``
matrix, as ``jax.image.resize`` does, same weights within 2.4e-7) is the
fastest, but its float result changed in the last bit with the kernel XLA
chose: a record resized in a batch of 1 differed from the same record in a
batch of 64 (uint8 outputs by one level at rounding ties; ``jax.image.resize``
too, in 1340 of 8640 values for 8x10 to 5x9), which breaks the
promise that a record's augmentation does not depend on the batch size. The
selection matmuls (used here) keep that promise (tested for batch sizes 1 to 64) at 2 to
5 times the dense cost. Nearest and the crops are gathers (exact for every
dtype). Pixels must be finite: a NaN or inf multiplied by a 0 of the
selection spreads along its row or column.

**Draws.** Each random scalar of a record (a crop offset, an area, an aspect
ratio, an angle) is ``threefry.uniform(threefry.fold_in(key, i))`` for a fixed
``i``, so a record's augmentation depends only on its key, never on the batch.
The scalars go behind ``jax.lax.optimization_barrier``, so XLA computes their
hashes once per record instead of fusing them into every pixel.

**Dtypes.** The output has the input's dtype. Float images are resampled in
float32 (float16/bfloat16 are converted back after); integer images (uint8 in
0..255 usually) are resampled in float32, rounded to the nearest integer
(half to even) and clipped to the dtype's range (exact for magnitudes below
2**24, as float32 holds them). Crops of any dtype are exact copies. Float
images may hold any range (``[0, 1]`` or ``[0, 255]`` alike).

**Gradients.** Every operator is linear in the image for a fixed draw, so
``jax.grad`` flows through float images (the crops, bilinear resizes and
rotations are differentiable w.r.t. the image). Nothing is differentiable
w.r.t. the drawn window, scale or angle (they come from the key), and the
integer path (rounding) has no useful gradient.

Example:
    >>> import jax, jax.numpy as jnp
    >>> image = jnp.arange(16.0).reshape(4, 4, 1)
    >>> plain = Resize(ResizeConfig(size=(2, 2), antialias=False))  # each output averages 2 x 2 pixels
    >>> plain.apply({"image": image})["image"][..., 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    >>> CenterCrop(CenterCropConfig(size=(2, 2))).apply({"image": image})["image"][..., 0].tolist()
    [[5.0, 6.0], [9.0, 10.0]]
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core import threefry
from datarax.core.config import OperatorConfig
from datarax.core.operator import OperatorModule
from datarax.core.validation import is_int
from datarax.operators._checks import label, record_key, require_config, require_element

_ATTEMPTS = 10  # RandomResizedCrop's tries before its fallback (torchvision's number)
_PADDING_MODES = ("constant", "reflect", "edge")
_EDGE_TOLERANCE = 1e-4  # pixels: how far outside the image a rotated coordinate still reads the edge


# --- config validation ----------------------------------------------------------------------------


def _check_field(name: str, field: Any) -> str:
    if not isinstance(field, str) or not field:
        raise ValueError(f"{name}: field must be a non-empty string (an element key), got {field!r}")
    return field


def _check_size(name: str, size: Any) -> tuple[int, int]:
    """``size`` as ``(height, width)``: one positive int (a square) or a pair of them."""
    pair = (size, size) if is_int(size) else size
    if (
        isinstance(pair, str | bytes)
        or not isinstance(pair, Sequence)
        or len(pair) != 2
        or not all(is_int(v) and v > 0 for v in pair)
    ):
        raise ValueError(f"{name}: size must be a positive int or a pair (height, width) of them, got {size!r}")
    return int(pair[0]), int(pair[1])


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool | np.bool_) and isinstance(value, Real) and math.isfinite(value)


def _check_range(name: str, arg: str, value: Any, *, low: float, high: float, what: str) -> tuple[float, float]:
    """A pair ``(a, b)`` of finite numbers with ``low < a <= b <= high``."""
    ok = (
        not isinstance(value, str | bytes)
        and isinstance(value, Sequence)
        and len(value) == 2
        and all(_is_number(v) for v in value)
    )
    if ok:
        a, b = float(value[0]), float(value[1])
        ok = low < a <= b <= high
    if not ok:
        raise ValueError(f"{name}: {arg} must be a pair (low, high) with {what}, got {value!r}")
    return a, b


def _check_fill(name: str, fill: Any) -> float:
    if not _is_number(fill):
        raise ValueError(f"{name}: fill must be a finite number, got {fill!r}")
    return float(fill)


def _check_bool(name: str, arg: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name}: {arg} must be a bool, got {value!r}")
    return bool(value)


def _require_stochastic(config: Any, default_stream: str, what: str) -> None:
    """Sets the default stream; a config whose draws are always random must be stochastic."""
    if config.stochastic is True and config.stream_name is None:
        object.__setattr__(config, "stream_name", default_stream)
    if config.stochastic is False:
        raise ValueError(
            f"{type(config).__name__}: stochastic=False is not allowed: {what} is drawn per record, "
            "so it needs stochastic=True and a stream_name"
        )


# --- element checks and dtype policy --------------------------------------------------------------


def _image_of(op: Any, element: Any) -> jax.Array:
    """The ``(H, W, C)`` image an operator works on, checked while tracing."""
    require_element(op, element)
    field = op.config.field
    if field not in element:
        raise ValueError(f"{label(op)}: field {field!r} is not in the element (keys: {sorted(element)})")
    image = jnp.asarray(element[field])
    if image.ndim != 3:
        raise ValueError(
            f"{label(op)}: field {field!r} must be a channels-last (H, W, C) image, got shape {image.shape}"
        )
    if not (jnp.issubdtype(image.dtype, jnp.floating) or jnp.issubdtype(image.dtype, jnp.integer)):
        raise ValueError(f"{label(op)}: field {field!r} must hold integers or floats, got dtype {image.dtype}")
    return image


def _check_fill_fits(op: Any, dtype: Any) -> None:
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        if not info.min <= op.config.fill <= info.max:
            raise ValueError(
                f"{label(op)}: fill={op.config.fill!r} does not fit field {op.config.field!r} of dtype "
                f"{jnp.dtype(dtype)} (range {info.min}..{info.max})"
            )


def _as_float(image: jax.Array) -> jax.Array:
    return image.astype(jnp.float32)


def _restore(values: jax.Array, dtype: Any) -> jax.Array:
    """Float32 values back to the input ``dtype``: integers rounded and clipped, floats cast."""
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return jnp.clip(jnp.round(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _barrier(*values: Any) -> Any:
    # Per-record scalars from the key: without the barrier XLA fuses their hash
    # into the index computations and recomputes it per pixel.
    return jax.lax.optimization_barrier(values)


def _uniforms(key: jax.Array, count: int) -> jax.Array:
    """``count`` independent float32 uniforms in ``[0, 1)``: ``uniform(fold_in(key, i))`` for ``i < count``."""
    return threefry.uniform(threefry.fold_in(key, jnp.arange(count, dtype=jnp.uint32)))


# --- separable resampling ---------------------------------------------------------------------------


def _taps(
    out_size: int, start: Any, length: Any, *, method: str, antialias: bool, max_scale: float
) -> tuple[jax.Array, jax.Array]:
    """Input indices and weights, each ``(out_size, taps)``, resampling ``[start, start + length)`` to ``out_size``.

    PIL's coefficients: output ``i`` is centred at input coordinate
    ``start + (i + 0.5) * scale`` (pixel ``j`` covers ``[j, j + 1)``); bilinear
    weighs input ``j`` by a triangle of ``(j + 0.5 - centre) / support`` with
    ``support = max(scale, 1)`` when antialiased, else 1; taps outside the window
    get weight 0 and the rest are renormalised. ``start`` and ``length`` may be
    traced; ``max_scale`` (a static bound on ``length / out_size``) fixes the
    number of taps.
    """
    first_index = jnp.asarray(start, jnp.int32)
    last_index = first_index + jnp.asarray(length, jnp.int32) - 1
    start = jnp.asarray(start, jnp.float32)
    length = jnp.asarray(length, jnp.float32)
    scale = length / np.float32(out_size)
    center = start + (jnp.arange(out_size, dtype=jnp.float32) + np.float32(0.5)) * scale
    if method == "nearest":
        if is_int(start) and is_int(length):  # static: exact integer arithmetic, no float ties
            index = jnp.asarray(start + (2 * np.arange(out_size) + 1) * length // (2 * out_size), jnp.int32)
            return index[:, None], jnp.ones((out_size, 1), jnp.float32)
        index = jnp.clip(jnp.floor(center).astype(jnp.int32), first_index, last_index)
        return index[:, None], jnp.ones((out_size, 1), jnp.float32)
    if antialias and max_scale > 1:
        support = jnp.maximum(scale, np.float32(1))
        count = math.ceil(2 * max_scale) + 1
    else:
        support = jnp.float32(1)
        count = 2
    first = jnp.floor(center - support + np.float32(0.5))
    taps = first[:, None] + jnp.arange(count, dtype=jnp.float32)[None, :]
    weights = jnp.maximum(np.float32(0), 1 - jnp.abs((taps + np.float32(0.5) - center[:, None]) / support))
    inside = (taps >= start) & (taps < start + length)
    weights = jnp.where(inside, weights, np.float32(0))
    # Summed tap by tap: a reduction's order is XLA's to choose and may change with the
    # batch size, which would change a record's float result with the batch it is in.
    total = functools.reduce(jnp.add, [weights[:, k] for k in range(count)])
    weights = weights / total[:, None]
    index = jnp.clip(taps.astype(jnp.int32), first_index, last_index)
    return index, weights


def _select(index: jax.Array, in_size: int) -> jax.Array:
    """The ``(out * taps, in_size)`` 0/1 matrix whose row ``o * taps + k`` picks input ``index[o, k]``."""
    return (index.reshape(-1)[:, None] == jnp.arange(in_size, dtype=jnp.int32)[None, :]).astype(jnp.float32)


def _weigh(values: jax.Array, weights: jax.Array, axis: int) -> jax.Array:
    """``sum_k weights[o, k] * values[..., o, k, ...]`` over the taps axis ``axis + 1``, tap by tap in order."""
    count = weights.shape[1]
    shape = [1] * values.ndim
    shape[axis] = weights.shape[0]
    del shape[axis + 1]
    terms = [jnp.take(values, k, axis=axis + 1) * weights[:, k].reshape(shape) for k in range(count)]
    return functools.reduce(jnp.add, terms)


def _resample(
    image: jax.Array,
    size: tuple[int, int],
    window: tuple[Any, Any, Any, Any],
    *,
    method: str,
    antialias: bool,
) -> jax.Array:
    """Resamples ``image[top:top + h, left:left + w]`` (``window = (top, left, h, w)``) to ``size``.

    Bilinear reads every tap with a 0/1 selection matmul (each output of the
    matmul is one input pixel, copied exactly whatever order the matmul kernel
    sums in), then weighs the taps elementwise in a fixed order; rows, then
    columns (or the reverse, whichever is cheaper). So a record's result does
    not depend on the kernel XLA picks for its batch size. Integer images are
    rounded back to their dtype. Nearest reads the pixels with two gathers
    (exact for every dtype).
    """
    height, width = image.shape[:2]
    out_h, out_w = size
    top, left, h, w = window
    rows, row_w = _taps(out_h, top, h, method=method, antialias=antialias, max_scale=height / out_h)
    cols, col_w = _taps(out_w, left, w, method=method, antialias=antialias, max_scale=width / out_w)
    if method == "nearest":
        return jnp.take(jnp.take(image, rows[:, 0], axis=0, mode="clip"), cols[:, 0], axis=1, mode="clip")
    # HIGHEST: a TPU or GPU would otherwise multiply float32 in bfloat16 or TF32 (not exact copies).
    matmul = functools.partial(jnp.einsum, precision=jax.lax.Precision.HIGHEST)
    row_taps, col_taps = rows.shape[1], cols.shape[1]

    def by_rows(values: jax.Array) -> jax.Array:
        picked = matmul("rh,hwc->rwc", _select(rows, values.shape[0]), values)
        return _weigh(picked.reshape(out_h, row_taps, *picked.shape[1:]), row_w, axis=0)

    def by_cols(values: jax.Array) -> jax.Array:
        picked = matmul("rw,hwc->hrc", _select(cols, values.shape[1]), values)
        return _weigh(picked.reshape(picked.shape[0], out_w, col_taps, picked.shape[2]), col_w, axis=1)

    values = _as_float(image)
    if out_h * row_taps * width * (height + out_w * col_taps) <= out_w * col_taps * height * (width + out_h * row_taps):
        values = by_cols(by_rows(values))
    else:
        values = by_rows(by_cols(values))
    return _restore(values, image.dtype)


# --- RandomCrop ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RandomCropConfig(OperatorConfig):
    """Configuration of ``RandomCrop``.

    Attributes:
        size: The crop's ``(height, width)`` (one int for a square).
        padding: Pixels added on each of the four sides before cropping (0: none).
        padding_mode: ``"constant"`` (``fill``), ``"reflect"`` (mirrored without
            repeating the edge, as ``numpy.pad(mode="reflect")``; needs
            ``padding`` smaller than the image's height and width) or ``"edge"``.
        fill: The value of constant padding (must fit an integer image's dtype).
        field: The element key of the ``(H, W, C)`` image.
        stochastic: Must be True (the offsets are drawn per record).
        stream_name: The stream the offsets are drawn from (``"crop"`` when not given).

    Raises:
        ValueError: If ``size`` is not a positive int or pair of them, ``padding``
            is not a non-negative int, ``padding_mode`` is unknown, ``fill`` is not
            a finite number, ``field`` is not a non-empty string, or
            ``stochastic`` is False.

    Example:
        >>> RandomCropConfig(size=32, padding=4).size
        (32, 32)
    """

    size: Any = (32, 32)
    padding: int = 0
    padding_mode: str = "constant"
    fill: float = 0.0
    field: str = "image"
    stochastic: bool = True
    stream_name: str | None = None

    def __post_init__(self) -> None:
        _require_stochastic(self, "crop", "the crop's offset")
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "size", _check_size(name, self.size))
        if not is_int(self.padding) or self.padding < 0:
            raise ValueError(f"{name}: padding must be a non-negative int, got {self.padding!r}")
        object.__setattr__(self, "padding", int(self.padding))
        if self.padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {_PADDING_MODES}, got {self.padding_mode!r}")
        object.__setattr__(self, "fill", _check_fill(name, self.fill))
        _check_field(name, self.field)


class RandomCrop(OperatorModule):
    """Crops ``config.size`` at a random offset of ``config.field`` padded by ``config.padding``.

    The offsets are uniform over every window of the padded image: top
    ``floor(u0 * (H + 2p - h + 1))`` and left likewise with ``u1``, where ``u_i``
    is ``threefry.uniform(threefry.fold_in(key, i))``. The image is padded
    (``jnp.pad``) and the window cut with one ``dynamic_slice``, and the
    operator's input is materialised first (``materializes_input``): on
    XLA:CPU that measured fastest inside a chain (the CIFAR chain's operators
    0.73 -> 0.40 ms per 128 x 32 x 32 x 3 batch, against two index gathers
    with the padding masked). Exact for every dtype; differentiable w.r.t. a
    float image (not w.r.t. the offset).

    Args:
        config: A ``RandomCropConfig``.
        rngs: Optional own random number generators (an override of the pipeline seed).
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``RandomCropConfig``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> crop = RandomCrop(RandomCropConfig(size=(4, 4), padding=2))
        >>> image = jnp.ones((4, 4, 3), jnp.uint8)
        >>> out = crop.apply({"image": image}, jax.random.key(0))["image"]
        >>> out.shape, out.dtype, int(out.sum()) <= 4 * 4 * 3
        ((4, 4, 3), dtype('uint8'), True)
    """

    materializes_input = True  # see above: the chain before the crop runs once

    def __init__(self, config: RandomCropConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, RandomCropConfig)
        super().__init__(config, rngs=rngs, name=name)

    def window(self, key: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
        """The crop's ``(top, left)`` in the padded image of an ``(height, width)`` image, for a record key."""
        h, w = self.config.size
        pad = self.config.padding
        u = _uniforms(key, 2)
        top = jnp.minimum(jnp.floor(u[0] * (height + 2 * pad - h + 1)), height + 2 * pad - h).astype(jnp.int32)
        left = jnp.minimum(jnp.floor(u[1] * (width + 2 * pad - w + 1)), width + 2 * pad - w).astype(jnp.int32)
        return top, left

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Crops one element's image at the offset drawn from ``key``.

        Raises:
            ValueError: If the field is missing or not an ``(H, W, C)`` image, the
                padded image is smaller than ``size``, reflect padding is not
                smaller than the image, or ``fill`` does not fit the dtype.
        """
        key = record_key(self, key)
        image = _image_of(self, element)
        height, width = image.shape[:2]
        h, w = self.config.size
        pad, mode = self.config.padding, self.config.padding_mode
        if height + 2 * pad < h or width + 2 * pad < w:
            raise ValueError(
                f"{label(self)}: size {(h, w)} does not fit field {self.config.field!r} of shape {image.shape} "
                f"padded by {pad}"
            )
        if mode == "reflect" and pad >= min(height, width):
            raise ValueError(
                f"{label(self)}: reflect padding {pad} must be smaller than the image's height and width "
                f"(field {self.config.field!r} of shape {image.shape})"
            )
        if mode == "constant":
            _check_fill_fits(self, image.dtype)
        top, left = _barrier(*self.window(key, height, width))
        rest = image.shape[2:]
        widths = ((pad, pad), (pad, pad)) + ((0, 0),) * len(rest)
        if mode == "constant":
            padded = jnp.pad(image, widths, constant_values=jnp.asarray(self.config.fill).astype(image.dtype))
        else:  # numpy's "reflect" (the edge not repeated, as torchvision's) and "edge"
            padded = jnp.pad(image, widths, mode=mode)
        out = jax.lax.dynamic_slice(padded, (top, left) + (0,) * len(rest), (h, w, *rest))
        return {**element, self.config.field: out}


# --- CenterCrop ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CenterCropConfig(OperatorConfig):
    """Configuration of ``CenterCrop``.

    Attributes:
        size: The crop's ``(height, width)`` (one int for a square).
        field: The element key of the ``(H, W, C)`` image.

    Raises:
        ValueError: If ``size`` is not a positive int or pair of them, or
            ``field`` is not a non-empty string.

    Example:
        >>> CenterCropConfig(size=(24, 32)).size
        (24, 32)
    """

    size: Any = (224, 224)
    field: str = "image"

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "size", _check_size(name, self.size))
        _check_field(name, self.field)


class CenterCrop(OperatorModule):
    """The central ``config.size`` window of ``config.field``.

    The window starts at ``((H - h) // 2, (W - w) // 2)``: when the margin is
    odd, the extra row (column) is cut from the bottom (right). A static slice,
    exact for every dtype, differentiable w.r.t. a float image.

    Args:
        config: A ``CenterCropConfig``.
        rngs: Unused (deterministic); accepted for a uniform signature.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``CenterCropConfig``.

    Example:
        >>> import jax.numpy as jnp
        >>> crop = CenterCrop(CenterCropConfig(size=(1, 2)))
        >>> crop.apply({"image": jnp.arange(12).reshape(3, 4, 1)})["image"][..., 0].tolist()
        [[5, 6]]
    """

    def __init__(self, config: CenterCropConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, CenterCropConfig)
        super().__init__(config, rngs=rngs, name=name)

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Crops one element's image.

        Raises:
            ValueError: If the field is missing, not an ``(H, W, C)`` image, or smaller than ``size``.
        """
        image = _image_of(self, element)
        height, width = image.shape[:2]
        h, w = self.config.size
        if height < h or width < w:
            raise ValueError(
                f"{label(self)}: size {(h, w)} is larger than field {self.config.field!r} of shape {image.shape}"
            )
        top, left = (height - h) // 2, (width - w) // 2
        return {**element, self.config.field: image[top : top + h, left : left + w]}


# --- Resize -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ResizeConfig(OperatorConfig):
    """Configuration of ``Resize``.

    Attributes:
        size: The output ``(height, width)`` (one int for a square).
        method: ``"bilinear"`` or ``"nearest"``.
        antialias: When shrinking, widen the bilinear filter by the shrink
            factor, as PIL does (True, the default); False samples the two
            nearest pixels only (faster, aliases). Ignored by ``"nearest"``.
        field: The element key of the ``(H, W, C)`` image.

    Raises:
        ValueError: If ``size`` is not a positive int or pair of them,
            ``method`` is unknown, ``antialias`` is not a bool, or ``field`` is
            not a non-empty string.

    Example:
        >>> ResizeConfig(size=64, method="nearest").size
        (64, 64)
    """

    size: Any = (224, 224)
    method: str = "bilinear"
    antialias: bool = True
    field: str = "image"

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "size", _check_size(name, self.size))
        if self.method not in ("bilinear", "nearest"):
            raise ValueError(f"{name}: method must be 'bilinear' or 'nearest', got {self.method!r}")
        object.__setattr__(self, "antialias", _check_bool(name, "antialias", self.antialias))
        _check_field(name, self.field)


class Resize(OperatorModule):
    """Resizes ``config.field`` to ``config.size``.

    Bilinear is PIL's ``Image.resize(size, Image.BILINEAR)``: half-pixel centres,
    edges clamped, and (with ``antialias``) a filter widened by the shrink
    factor. Nearest reads input pixel ``floor((i + 0.5) * in / out)`` in exact
    integer arithmetic: PIL's ``Image.NEAREST`` except at exact ties, where
    PIL's accumulated float rounding sometimes picks the pixel before (10 to 25
    columns: output 7, ``7.5 * 0.4 = 3``, PIL reads 2). Bilinear reads its taps
    with selection matmuls, nearest with two gathers (see the module
    docstring). Bilinear is differentiable w.r.t. a float image; nearest is a
    gather (its gradient routes to the chosen pixels).

    Args:
        config: A ``ResizeConfig``.
        rngs: Unused (deterministic); accepted for a uniform signature.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``ResizeConfig``.

    Example:
        >>> import jax.numpy as jnp
        >>> resize = Resize(ResizeConfig(size=(1, 4)))
        >>> resize.apply({"image": jnp.array([[[0.0], [8.0]]])})["image"][0, :, 0].tolist()
        [0.0, 2.0, 6.0, 8.0]
    """

    def __init__(self, config: ResizeConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, ResizeConfig)
        super().__init__(config, rngs=rngs, name=name)

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Resizes one element's image.

        Raises:
            ValueError: If the field is missing or not an ``(H, W, C)`` image.
        """
        image = _image_of(self, element)
        height, width = image.shape[:2]
        out = _resample(
            image,
            self.config.size,
            (0, 0, height, width),
            method=self.config.method,
            antialias=self.config.antialias,
        )
        return {**element, self.config.field: out}


# --- RandomResizedCrop --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RandomResizedCropConfig(OperatorConfig):
    """Configuration of ``RandomResizedCrop``.

    Attributes:
        size: The output ``(height, width)`` (one int for a square).
        scale: Range ``(low, high)`` of the window's area as a fraction of the
            image's, ``0 < low <= high <= 1``.
        ratio: Range ``(low, high)`` of the window's aspect ratio (width /
            height), ``0 < low <= high``; drawn log-uniformly.
        antialias: Widen the bilinear filter when the window shrinks (as PIL and
            torchvision's ``antialias=True``); False (the default) reads two
            pixels per output pixel and axis, the cheapest.
        field: The element key of the ``(H, W, C)`` image.
        stochastic: Must be True (the window is drawn per record).
        stream_name: The stream the window is drawn from (``"resized_crop"`` when not given).

    Raises:
        ValueError: If ``size`` is not a positive int or pair of them, ``scale``
            or ``ratio`` is not a valid range, ``antialias`` is not a bool,
            ``field`` is not a non-empty string, or ``stochastic`` is False.

    Example:
        >>> RandomResizedCropConfig(size=224, scale=(0.35, 1)).scale
        (0.35, 1.0)
    """

    size: Any = (224, 224)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    antialias: bool = False
    field: str = "image"
    stochastic: bool = True
    stream_name: str | None = None

    def __post_init__(self) -> None:
        _require_stochastic(self, "resized_crop", "the crop's window")
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "size", _check_size(name, self.size))
        scale = _check_range(name, "scale", self.scale, low=0, high=1, what="0 < low <= high <= 1")
        object.__setattr__(self, "scale", scale)
        ratio = _check_range(name, "ratio", self.ratio, low=0, high=math.inf, what="0 < low <= high")
        object.__setattr__(self, "ratio", ratio)
        object.__setattr__(self, "antialias", _check_bool(name, "antialias", self.antialias))
        _check_field(name, self.field)


class RandomResizedCrop(OperatorModule):
    """A window of random area and aspect ratio of ``config.field``, resized bilinearly to ``config.size``.

    The sampling is torchvision's, vectorised: ten candidate windows are drawn
    at once, each with an area ``A * uniform(scale)`` (``A = H * W``) and an
    aspect ratio ``exp(uniform(log ratio))``, giving ``w = round(sqrt(area *
    ratio))`` and ``h = round(sqrt(area / ratio))``; the first that fits in the
    image is taken, at top ``floor(u * (H - h + 1))`` and left likewise. When
    none fits, the window is the central crop of the whole image with its
    aspect ratio clamped into ``ratio``. Candidate ``k`` uses uniforms
    ``2k`` (area) and ``2k + 1`` (ratio), the offsets uniforms 20 and 21, each
    ``threefry.uniform(threefry.fold_in(key, i))``.

    The window is then resampled as ``Resize`` would resample the cut-out
    window (taps confined to it; see the module docstring), with the filter
    widened when shrinking if ``config.antialias``. Differentiable w.r.t. a
    float image; not w.r.t. the window.

    Args:
        config: A ``RandomResizedCropConfig``.
        rngs: Optional own random number generators (an override of the pipeline seed).
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``RandomResizedCropConfig``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> crop = RandomResizedCrop(RandomResizedCropConfig(size=(8, 8)))
        >>> image = jnp.zeros((32, 48, 3), jnp.uint8)
        >>> top, left, h, w = crop.window(jax.random.key(1), 32, 48)
        >>> bool(0 <= top <= 32 - h and 0 <= left <= 48 - w)
        True
        >>> crop.apply({"image": image}, jax.random.key(1))["image"].shape
        (8, 8, 3)
    """

    def __init__(self, config: RandomResizedCropConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, RandomResizedCropConfig)
        super().__init__(config, rngs=rngs, name=name)

    def window(self, key: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """The window ``(top, left, h, w)`` (int32 scalars) for an ``(height, width)`` image and a record key."""
        (scale_low, scale_high), (ratio_low, ratio_high) = self.config.scale, self.config.ratio
        u = _uniforms(key, 2 * _ATTEMPTS + 2)
        area = np.float32(height * width) * (scale_low + (scale_high - scale_low) * u[0 : 2 * _ATTEMPTS : 2])
        log_low, log_high = math.log(ratio_low), math.log(ratio_high)
        aspect = jnp.exp(log_low + (log_high - log_low) * u[1 : 2 * _ATTEMPTS : 2])
        ws = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
        hs = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
        fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
        # The fallback: the whole image, its aspect ratio clamped into ratio, centred (static).
        if width / height < ratio_low:
            fallback_w, fallback_h = width, round(width / ratio_low)
        elif width / height > ratio_high:
            fallback_w, fallback_h = round(height * ratio_high), height
        else:
            fallback_w, fallback_h = width, height
        first = jnp.argmax(fits)
        found = fits[first]
        h = jnp.where(found, hs[first], fallback_h)
        w = jnp.where(found, ws[first], fallback_w)
        top = jnp.minimum(jnp.floor(u[2 * _ATTEMPTS] * (height - h + 1).astype(jnp.float32)), height - h)
        left = jnp.minimum(jnp.floor(u[2 * _ATTEMPTS + 1] * (width - w + 1).astype(jnp.float32)), width - w)
        top = jnp.where(found, top.astype(jnp.int32), (height - fallback_h) // 2)
        left = jnp.where(found, left.astype(jnp.int32), (width - fallback_w) // 2)
        return top, left, h, w

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Crops a random window of one element's image and resizes it.

        Raises:
            ValueError: If the field is missing or not an ``(H, W, C)`` image.
        """
        key = record_key(self, key)
        image = _image_of(self, element)
        height, width = image.shape[:2]
        window = _barrier(*self.window(key, height, width))
        out = _resample(image, self.config.size, window, method="bilinear", antialias=self.config.antialias)
        return {**element, self.config.field: out}


# --- RandomRotation -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RandomRotationConfig(OperatorConfig):
    """Configuration of ``RandomRotation``.

    Attributes:
        degrees: The angle's range ``(low, high)`` in degrees, or one number
            ``d >= 0`` for ``(-d, d)``; positive angles turn the picture
            counter-clockwise as displayed (row 0 at the top).
        fill: The value of pixels that come from outside the image (must fit an
            integer image's dtype).
        field: The element key of the ``(H, W, C)`` image.
        stochastic: True unless the range is a single angle.
        stream_name: The stream the angle is drawn from (``"rotation"`` when
            stochastic and not given).

    Raises:
        ValueError: If ``degrees`` is not a finite number ``>= 0`` or a pair
            ``low <= high``, ``fill`` is not a finite number, ``field`` is not a
            non-empty string, or a range of several angles is configured deterministic.

    Example:
        >>> RandomRotationConfig(degrees=15).degrees
        (-15.0, 15.0)
    """

    degrees: Any = (-10.0, 10.0)
    fill: float = 0.0
    field: str = "image"
    stochastic: bool = True
    stream_name: str | None = None

    def __post_init__(self) -> None:
        if self.stochastic is True and self.stream_name is None:
            object.__setattr__(self, "stream_name", "rotation")
        super().__post_init__()
        name = type(self).__name__
        degrees = self.degrees
        if _is_number(degrees) and degrees >= 0:
            degrees = (-float(degrees), float(degrees))
        elif not _is_number(degrees):
            degrees = _check_range(
                name, "degrees", degrees, low=-math.inf, high=math.inf, what="finite low <= high (or one number >= 0)"
            )
        else:
            raise ValueError(f"{name}: degrees must be a number >= 0 or a pair (low, high), got {degrees!r}")
        object.__setattr__(self, "degrees", degrees)
        object.__setattr__(self, "fill", _check_fill(name, self.fill))
        _check_field(name, self.field)
        if not self.stochastic and degrees[0] != degrees[1]:
            raise ValueError(
                f"{name}: degrees={degrees!r} needs an angle per record, so set stochastic=True and a stream_name"
            )


class RandomRotation(OperatorModule):
    """Rotates ``config.field`` about its centre by an angle uniform in ``config.degrees``.

    Output pixel ``(y, x)`` reads input coordinate ``R (y - cy, x - cx) + (cy, cx)``
    with ``(cy, cx) = ((H - 1) / 2, (W - 1) / 2)`` and ``R = [[cos, sin], [-sin,
    cos]]``, bilinearly from the four surrounding pixels; coordinates outside
    ``[0, H - 1] x [0, W - 1]`` (give or take 1e-4 pixel, for float32 rounding)
    give ``config.fill`` (no blending with the fill at the border). This is
    ``scipy.ndimage.rotate(image, angle, reshape=False, order=1, mode="constant", cval=fill)``. The angle is
    ``low + (high - low) * threefry.uniform(threefry.fold_in(key, 0))``. Four
    gathers of ``H * W`` pixels; differentiable w.r.t. a float image, not w.r.t.
    the angle.

    Args:
        config: A ``RandomRotationConfig``.
        rngs: Optional own random number generators (an override of the pipeline seed).
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``RandomRotationConfig``.

    Example:
        >>> import jax.numpy as jnp
        >>> turn = RandomRotation(RandomRotationConfig(degrees=(90, 90), stochastic=False))
        >>> image = jnp.arange(9.0).reshape(3, 3, 1)
        >>> jnp.round(turn.apply({"image": image})["image"][..., 0], 4).tolist()
        [[2.0, 5.0, 8.0], [1.0, 4.0, 7.0], [0.0, 3.0, 6.0]]
    """

    materializes_input = True  # bilinear taps read four neighbours

    def __init__(self, config: RandomRotationConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, RandomRotationConfig)
        super().__init__(config, rngs=rngs, name=name)

    def angle(self, key: jax.Array | None) -> jax.Array:
        """The rotation in degrees (float32) for a record key (None when deterministic)."""
        low, high = self.config.degrees
        if key is None:
            return jnp.float32(low)
        return np.float32(low) + np.float32(high - low) * threefry.uniform(threefry.fold_in(key, 0))

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Rotates one element's image by the angle drawn from ``key``.

        Raises:
            ValueError: If the field is missing, not an ``(H, W, C)`` image, or
                ``fill`` does not fit its dtype.
        """
        key = record_key(self, key)
        image = _image_of(self, element)
        _check_fill_fits(self, image.dtype)
        height, width, channels = image.shape
        (angle,) = _barrier(self.angle(key))
        radians = jnp.deg2rad(angle)
        cos, sin = jnp.cos(radians), jnp.sin(radians)
        cy, cx = (height - 1) / 2, (width - 1) / 2
        dy = (np.arange(height, dtype=np.float32) - np.float32(cy))[:, None]
        dx = (np.arange(width, dtype=np.float32) - np.float32(cx))[None, :]
        ys = cos * dy + sin * dx + np.float32(cy)
        xs = cos * dx - sin * dy + np.float32(cx)
        # A hair of tolerance: cos(90 degrees) is -4e-8 in float32, which would
        # otherwise push a whole edge of a quarter turn just outside the image.
        eps = np.float32(_EDGE_TOLERANCE)
        inside = (ys >= -eps) & (ys <= height - 1 + eps) & (xs >= -eps) & (xs <= width - 1 + eps)
        y0 = jnp.clip(jnp.floor(ys), 0, height - 1)
        x0 = jnp.clip(jnp.floor(xs), 0, width - 1)
        fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
        y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
        y1, x1 = jnp.minimum(y0 + 1, height - 1), jnp.minimum(x0 + 1, width - 1)
        flat = _as_float(image).reshape(height * width, channels)

        def pixels(y: jax.Array, x: jax.Array) -> jax.Array:
            return jnp.take(flat, (y * width + x).reshape(-1), axis=0, mode="clip").reshape(height, width, channels)

        top = pixels(y0, x0) * (1 - fx) + pixels(y0, x1) * fx
        bottom = pixels(y1, x0) * (1 - fx) + pixels(y1, x1) * fx
        values = top * (1 - fy) + bottom * fy
        values = jnp.where(inside[..., None], values, np.float32(self.config.fill))
        return {**element, self.config.field: _restore(values, image.dtype)}


# --- RandomTranslate ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RandomTranslateConfig(OperatorConfig):
    """Configuration of ``RandomTranslate``.

    Attributes:
        translate: ``(a, b)``, each in ``[0, 1]``: the largest horizontal shift as
            a fraction of the width and the largest vertical one of the height
            (torchvision's ``RandomAffine(translate=(a, b))``).
        fill: The value of pixels shifted in from outside (must fit an integer
            image's dtype).
        field: The element key of the ``(H, W, C)`` image.
        stochastic: Must be True (the shift is drawn per record).
        stream_name: The stream the shift is drawn from (``"translate"`` when not given).

    Raises:
        ValueError: If ``translate`` is not a pair of numbers in ``[0, 1]``,
            ``fill`` is not a finite number, ``field`` is not a non-empty string,
            or ``stochastic`` is False.

    Example:
        >>> RandomTranslateConfig(translate=(0.125, 0.125)).translate
        (0.125, 0.125)
    """

    translate: tuple[float, float] = (0.1, 0.1)
    fill: float = 0.0
    field: str = "image"
    stochastic: bool = True
    stream_name: str | None = None

    def __post_init__(self) -> None:
        _require_stochastic(self, "translate", "the shift")
        super().__post_init__()
        name = type(self).__name__
        t = self.translate
        if (
            isinstance(t, str | bytes)
            or not isinstance(t, Sequence)
            or len(t) != 2
            or not all(_is_number(v) and 0 <= v <= 1 for v in t)
        ):
            raise ValueError(f"{name}: translate must be a pair (a, b) of numbers in [0, 1], got {t!r}")
        object.__setattr__(self, "translate", (float(t[0]), float(t[1])))
        object.__setattr__(self, "fill", _check_fill(name, self.fill))
        _check_field(name, self.field)


class RandomTranslate(OperatorModule):
    """Shifts ``config.field`` by a random whole number of pixels, ``config.fill`` shifted in.

    The shift is torchvision's ``RandomAffine(degrees=0, translate=(a, b))``:
    ``dx = round(uniform(-a * W, a * W))`` (uniform 0) and ``dy =
    round(uniform(-b * H, b * H))`` (uniform 1), each
    ``threefry.uniform(threefry.fold_in(key, i))`` and rounded half to even;
    output pixel ``(y, x)`` is input pixel ``(y - dy, x - dx)``, or ``fill``
    where that is outside the image. Two gathers and a select; exact for
    every dtype, differentiable w.r.t. a float image, not w.r.t. the shift.

    Args:
        config: A ``RandomTranslateConfig``.
        rngs: Optional own random number generators (an override of the pipeline seed).
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``RandomTranslateConfig``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> shift = RandomTranslate(RandomTranslateConfig(translate=(0.5, 0.0)))
        >>> image = jnp.arange(1, 5).reshape(1, 4, 1)
        >>> dy, dx = shift.shift(jax.random.key(0), 1, 4)
        >>> out = shift.apply({"image": image}, jax.random.key(0))["image"][0, :, 0]
        >>> out.tolist() == [int(image[0, x - dx, 0]) if 0 <= x - dx < 4 else 0 for x in range(4)]
        True
    """

    def __init__(self, config: RandomTranslateConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, RandomTranslateConfig)
        super().__init__(config, rngs=rngs, name=name)

    def shift(self, key: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
        """The shift ``(dy, dx)`` (int32 scalars) of an ``(height, width)`` image for a record key."""
        a, b = self.config.translate
        u = _uniforms(key, 2)
        max_dx, max_dy = np.float32(a * width), np.float32(b * height)
        dx = jnp.round(-max_dx + 2 * max_dx * u[0]).astype(jnp.int32)
        dy = jnp.round(-max_dy + 2 * max_dy * u[1]).astype(jnp.int32)
        return dy, dx

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Shifts one element's image by the shift drawn from ``key``.

        Raises:
            ValueError: If the field is missing, not an ``(H, W, C)`` image, or
                ``fill`` does not fit its dtype.
        """
        key = record_key(self, key)
        image = _image_of(self, element)
        _check_fill_fits(self, image.dtype)
        height, width = image.shape[:2]
        dy, dx = _barrier(*self.shift(key, height, width))
        rows = jnp.arange(height, dtype=jnp.int32) - dy
        cols = jnp.arange(width, dtype=jnp.int32) - dx
        out = jnp.take(image, jnp.clip(rows, 0, height - 1), axis=0, mode="clip")
        out = jnp.take(out, jnp.clip(cols, 0, width - 1), axis=1, mode="clip")
        inside = ((rows >= 0) & (rows < height))[:, None, None] & ((cols >= 0) & (cols < width))[None, :, None]
        out = jnp.where(inside, out, jnp.asarray(self.config.fill).astype(image.dtype))
        return {**element, self.config.field: out}


__all__ = [
    "CenterCrop",
    "CenterCropConfig",
    "RandomCrop",
    "RandomCropConfig",
    "RandomResizedCrop",
    "RandomResizedCropConfig",
    "RandomRotation",
    "RandomRotationConfig",
    "RandomTranslate",
    "RandomTranslateConfig",
    "Resize",
    "ResizeConfig",
]

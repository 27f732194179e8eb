"""Photometric image operators: normalisation, colour jitter, grayscale, noise, blur and erasing.

Every operator here is written for ONE element, like ``RandomFlip``, and works on channels-last
``(H, W, C)`` images held under ``config.fields`` (default ``("image",)``).

Value ranges and dtypes. A ``uint8`` image holds values ``0..255``; a floating image is assumed to
hold values in ``[0, 1]``. The operators compute in float32 on the ``[0, 1]`` scale (a ``uint8``
image is divided by 255 first) and return the input's dtype: ``uint8`` in, ``uint8`` out (rounded
and clipped to ``0..255``); float in, the same float dtype out. ``Normalize`` is the exception: it
always returns float32. Other integer dtypes are refused (TypeError while tracing).

Randomness. The per-record draws come from the record key: draw ``i`` is
``threefry.uniform(threefry.fold_in(key, i))`` (bit for bit ``jax.random.uniform`` of
``jax.random.fold_in(key, i)``), so a record's augmentation depends only on (seed, node, epoch,
record), never on the batch. Scalar draws sit behind ``jax.lax.optimization_barrier`` so XLA does
not recompute their hash for every pixel.

Colour jitter (``RandomBrightness``, ``RandomContrast``, ``RandomSaturation``, ``RandomHue``)
follows torchvision's ``ColorJitter``: a magnitude ``m`` draws ``u`` per record and uses the
factor ``max(0, 1 + m * u)`` (hue: the shift ``m * u`` of the hue circle, in turns). ``draw``
chooses ``u``: ``"uniform"`` in ``[-1, 1]`` (ColorJitter's ``[1 - m, 1 + m]``), ``"sign"`` in
``{-1, 1}`` (RandAugment's fixed magnitude with a random sign) or ``"fixed"`` ``u = 1``
(deterministic, like ``torchvision``'s ``adjust_*`` functions). With ``learnable=True`` the
magnitude is an ``nnx.Param`` scalar and gradients reach it.

Differentiability. All operators are differentiable with respect to a float image almost
everywhere (clipping to ``[0, 1]`` has zero gradient where it clips; ``RandomHue`` is piecewise
smooth in the image); the jitter operators also with respect to their learnable magnitude.
``uint8`` images are not differentiable (integer arrays). Blur sigma, erasing geometry and noise
std are not learnable.

Example:
    >>> import jax.numpy as jnp
    >>> image = jnp.full((2, 2, 3), 0.5)
    >>> brighter = RandomBrightness(RandomBrightnessConfig(magnitude=0.2, draw="fixed", stochastic=False))
    >>> round(float(brighter.apply({"image": image})["image"][0, 0, 0]), 4)
    0.6
    >>> norm = Normalize(NormalizeConfig(mean=(0.5,), std=(0.25,)))
    >>> norm.apply({"image": image})["image"][0, 0].tolist()
    [0.0, 0.0, 0.0]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from numbers import Real
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core import threefry
from datarax.core.config import OperatorConfig
from datarax.core.operator import OperatorModule
from datarax.core.validation import boolean, is_int
from datarax.operators._checks import label, record_key, require_config, require_element

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of (R, G, B), as PIL and torchvision use them."""

DRAWS = ("uniform", "sign", "fixed")


# --- config validation helpers ---------------------------------------------------------------------


def _fields(name: str, fields: Any) -> tuple[str, ...]:
    if isinstance(fields, str) or not isinstance(fields, Sequence) or not fields:
        raise ValueError(f"{name}: fields must be a non-empty sequence of element keys, got {fields!r}")
    if not all(isinstance(f, str) and f for f in fields) or len(set(fields)) != len(fields):
        raise ValueError(f"{name}: fields must be unique non-empty strings, got {fields!r}")
    return tuple(fields)


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool | np.bool_) and isinstance(value, Real) and math.isfinite(value)


def _number(name: str, arg: str, value: Any, low: float, high: float, what: str, *, low_open: bool = False) -> float:
    """``value`` as a float if it is a finite number in ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    if not _is_number(value) or value > high or value < low or (low_open and value == low):
        raise ValueError(f"{name}: {arg} must be {what}, got {value!r}")
    return float(value)


def _pair(name: str, arg: str, value: Any, low: float, high: float, what: str, *, low_open: bool = False):
    """``value`` as a ``(min, max)`` tuple of floats in range with ``min <= max``; a number ``v`` is ``(v, v)``."""
    given = value
    if _is_number(value):
        value = (value, value)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name}: {arg} must be {what}, got {given!r}")
    lo, hi = value
    ok = _is_number(lo) and _is_number(hi) and low <= lo <= hi <= high and not (low_open and lo == low)
    if not ok:
        raise ValueError(f"{name}: {arg} must be {what}, got {given!r}")
    return float(lo), float(hi)


def _default_stream(config: Any, stream: str) -> None:
    if config.stochastic is True and config.stream_name is None:
        object.__setattr__(config, "stream_name", stream)


def _require_stochastic(config: Any, why: str) -> None:
    if not config.stochastic:
        raise ValueError(f"{type(config).__name__}: {why}, so set stochastic=True (and optionally a stream_name)")


# --- per-element helpers -------------------------------------------------------------------------


def _draw(key: jax.Array, index: int) -> jax.Array:
    """The record's draw ``index``: a float32 in ``[0, 1)``, behind an optimization barrier."""
    return jax.lax.optimization_barrier(threefry.uniform(threefry.fold_in(key, index)))


def _image(op: Any, element: dict[str, Any], field: str, channels: tuple[int, ...] | None = None) -> jax.Array:
    """The ``(H, W, C)`` uint8 or floating image ``element[field]``, checked while tracing."""
    if field not in element:
        raise ValueError(f"{label(op)}: field {field!r} is not in the element (keys: {sorted(element)})")
    x = jnp.asarray(element[field])
    if x.ndim != 3:
        raise ValueError(f"{label(op)}: field {field!r} must be an (H, W, C) image, got shape {x.shape}")
    if x.dtype != jnp.uint8 and not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{label(op)}: field {field!r} must be uint8 (0..255) or floating ([0, 1]), got dtype {x.dtype}"
        )
    if channels is not None and x.shape[-1] not in channels:
        raise ValueError(
            f"{label(op)}: field {field!r} must have {' or '.join(map(str, channels))} channels, got shape {x.shape}"
        )
    return x


def _to_unit(x: jax.Array) -> jax.Array:
    """The image on the ``[0, 1]`` scale in float32 (or wider float)."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / np.float32(255)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _from_unit(y: jax.Array, dtype: Any, *, clip: bool = True) -> jax.Array:
    """Back to ``dtype``: uint8 rounded and clipped to ``0..255``; floats clipped to ``[0, 1]`` if ``clip``."""
    if dtype == jnp.uint8:
        return jnp.clip(jnp.round(y * np.float32(255)), 0, 255).astype(jnp.uint8)
    if clip:
        y = jnp.clip(y, 0, 1)
    return y.astype(dtype)


def _luma(x: jax.Array) -> jax.Array:
    """ITU-R 601 luma ``(H, W, 1)`` of an ``(H, W, 3)`` image; a one-channel image is its own luma."""
    if x.shape[-1] == 1:
        return x
    # Three slices rather than a reduction over the 3-wide minor axis, which XLA:CPU runs slowly
    # (measured on 128 x 32 x 32 x 3 uint8: Grayscale 1.9 -> 0.4 ms, RandomSaturation 2.8 -> 0.2 ms).
    r, g, b = (x[..., i : i + 1] * np.float32(w) for i, w in enumerate(LUMA_WEIGHTS))
    return r + g + b


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """RGB -> HSV for ``(..., 3)`` arrays in ``[0, 1]``; hue in turns ``[0, 1)`` (as ``colorsys``).

    Vectorised and safe to differentiate (no NaN where a pixel is gray or black).

    Example:
        >>> [round(v, 4) for v in rgb_to_hsv(jnp.array([1.0, 0.5, 0.0])).tolist()]
        [0.0833, 1.0, 1.0]
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = jnp.max(rgb, axis=-1)
    minc = jnp.min(rgb, axis=-1)
    delta = maxc - minc
    gray = delta == 0
    safe_max = jnp.where(maxc == 0, 1, maxc)
    s = jnp.where(maxc == 0, 0, delta / safe_max)
    safe_delta = jnp.where(gray, 1, delta)
    rc = (maxc - r) / safe_delta
    gc = (maxc - g) / safe_delta
    bc = (maxc - b) / safe_delta
    h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2 + rc - bc, 4 + gc - rc))
    h = jnp.where(gray, 0, jnp.mod(h / 6, 1))
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """HSV -> RGB for ``(..., 3)`` arrays (hue in turns, any real value; s, v in ``[0, 1]``).

    Uses the closed form ``c_n = v - v s clip(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6`` for
    ``n = 5, 3, 1`` (R, G, B): no branch per sextant, so XLA fuses it.

    Example:
        >>> hsv_to_rgb(jnp.array([1 / 3, 1.0, 1.0])).tolist()
        [0.0, 1.0, 0.0]
    """
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    channels = []
    for n in (5, 3, 1):
        k = jnp.mod(n + 6 * h, 6)
        channels.append(v - v * s * jnp.clip(jnp.minimum(k, 4 - k), 0, 1))
    return jnp.stack(channels, axis=-1)


class _ImageOperator(OperatorModule):
    """Shared ``apply``: draw the record's values once, then transform every configured field."""

    channels: ClassVar[tuple[int, ...] | None] = None

    def apply(self, element: dict[str, Any], key: jax.Array | None = None) -> dict[str, Any]:
        """Transforms the configured images of one element (see the class docstring).

        Raises:
            ValueError: If a field is missing, not ``(H, W, C)`` or has an unsupported channel count.
            TypeError: If a field is neither uint8 nor floating.
        """
        key = record_key(self, key)
        require_element(self, element)
        params = self._params(key)
        out = dict(element)
        for i, field in enumerate(self.config.fields):
            x = _image(self, element, field, self.channels)
            out[field] = self._transform(x, params, key, i)
        return out

    def _params(self, key: jax.Array | None) -> Any:
        return None

    def _transform(self, x: jax.Array, params: Any, key: jax.Array | None, index: int) -> jax.Array:
        raise NotImplementedError


# --- Normalize -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NormalizeConfig(OperatorConfig):
    """Configuration of ``Normalize`` (deterministic).

    Attributes:
        fields: The element keys of the images to normalise.
        mean: Per-channel means on the ``[0, 1]`` scale (one entry per channel, or one for all).
        std: Per-channel standard deviations (positive), as many as ``mean`` or one.

    Raises:
        ValueError: If a field is not a non-empty string, ``mean``/``std`` are not non-empty
            tuples of finite numbers (``std`` positive) of compatible lengths, or the config is
            stochastic.

    Example:
        >>> NormalizeConfig(mean=[0.5, 0.5, 0.5], std=[0.25]).std
        (0.25,)
    """

    fields: tuple[str, ...] = ("image",)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "fields", _fields(name, self.fields))
        if self.stochastic:
            raise ValueError(f"{name}: Normalize draws nothing, so it must be stochastic=False, got True")
        for arg in ("mean", "std"):
            value = getattr(self, arg)
            what = "a non-empty tuple of finite numbers" + (" > 0" if arg == "std" else "")
            if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
                raise ValueError(f"{name}: {arg} must be {what}, got {value!r}")
            if not all(_is_number(v) and (arg == "mean" or v > 0) for v in value):
                raise ValueError(f"{name}: {arg} must be {what}, got {value!r}")
            object.__setattr__(self, arg, tuple(float(v) for v in value))
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ValueError(
                f"{name}: mean and std must have the same length (or length 1), got {len(self.mean)} "
                f"and {len(self.std)}"
            )


class Normalize(_ImageOperator):
    """``(x - mean) / std`` per channel, on the ``[0, 1]`` scale; returns float32.

    A uint8 image is divided by 255 first, so ``mean`` and ``std`` are always on the ``[0, 1]``
    scale (torchvision's ``ToTensor`` followed by ``Normalize``). Differentiable w.r.t. a float
    image (gradient ``1 / std``).

    Args:
        config: A ``NormalizeConfig``.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``NormalizeConfig``.

    Example:
        >>> import jax.numpy as jnp
        >>> op = Normalize(NormalizeConfig(mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.5)))
        >>> image = jnp.full((1, 1, 3), 255, dtype=jnp.uint8)
        >>> op.apply({"image": image})["image"][0, 0].tolist()
        [1.0, 1.0, 0.0]
    """

    def __init__(self, config: NormalizeConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, NormalizeConfig)
        super().__init__(config, rngs=rngs, name=name)

    def _transform(self, x, params, key, index):
        channels = x.shape[-1]
        for arg in ("mean", "std"):
            if len(getattr(self.config, arg)) not in (1, channels):
                raise ValueError(
                    f"{label(self)}: config.{arg} has {len(getattr(self.config, arg))} entries but the image "
                    f"{self.config.fields[index]!r} has {channels} channels (shape {x.shape})"
                )
        mean = jnp.asarray(self.config.mean, jnp.float32).reshape(1, 1, -1)
        inv_std = (1 / np.asarray(self.config.std, np.float32)).reshape(1, 1, -1)
        return ((_to_unit(x) - mean) * inv_std).astype(jnp.float32)


# --- colour jitter -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _JitterConfig(OperatorConfig):
    fields: tuple[str, ...] = ("image",)
    magnitude: float = 0.4
    draw: str = "uniform"
    learnable: bool = False
    stochastic: bool = True
    stream_name: str | None = None

    stream: ClassVar[str] = "jitter"
    max_magnitude: ClassVar[float] = math.inf
    min_fixed: ClassVar[float] = -1.0

    def __post_init__(self) -> None:
        _default_stream(self, self.stream)
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "fields", _fields(name, self.fields))
        if self.draw not in DRAWS:
            raise ValueError(f"{name}: draw must be one of {list(DRAWS)}, got {self.draw!r}")
        if self.draw == "fixed":
            low, what = self.min_fixed, f"a finite number in [{self.min_fixed}, {self.max_magnitude}] for draw='fixed'"
        else:
            low, what = 0.0, f"a finite number in [0, {self.max_magnitude}]"
        object.__setattr__(self, "magnitude", _number(name, "magnitude", self.magnitude, low, self.max_magnitude, what))
        object.__setattr__(self, "learnable", boolean(name, "learnable", self.learnable))
        if self.draw == "fixed" and self.stochastic:
            raise ValueError(f"{name}: draw='fixed' uses no randomness, so set stochastic=False (no stream_name)")
        if self.draw != "fixed":
            _require_stochastic(self, f"draw={self.draw!r} draws a factor per record")


class _JitterOperator(_ImageOperator):
    """A colour-jitter operator: ``_adjust(x, strength)`` with ``strength = magnitude * u``."""

    config_cls: ClassVar[type] = _JitterConfig

    def __init__(self, config: Any, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, self.config_cls)
        super().__init__(config, rngs=rngs, name=name)
        if config.learnable:
            self.magnitude = nnx.Param(jnp.asarray(config.magnitude, dtype=jnp.float32))
        else:
            self.magnitude = config.magnitude

    def current_magnitude(self) -> jax.Array:
        """The magnitude in use: the ``nnx.Param``'s value when learnable, else the config's."""
        if self.config.learnable:
            return self.magnitude[...]
        return jnp.float32(self.magnitude)

    def _params(self, key):
        draw = self.config.draw
        if draw == "fixed":
            u = jnp.float32(1)
        elif draw == "sign":
            u = jnp.where(_draw(key, 0) < 0.5, np.float32(-1), np.float32(1))
        else:
            u = 2 * _draw(key, 0) - 1
        return self.current_magnitude() * u

    def _transform(self, x, strength, key, index):
        return _from_unit(self._adjust(_to_unit(x), strength), x.dtype)

    def _adjust(self, x: jax.Array, strength: jax.Array) -> jax.Array:
        raise NotImplementedError


def _factor(strength: jax.Array) -> jax.Array:
    return jnp.maximum(1 + strength, 0)


def _blend(x: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
    """``factor * x + (1 - factor) * other`` (torchvision's ``_blend`` before clipping)."""
    return factor * x + (1 - factor) * other


_JITTER_ARGS = """
    Attributes:
        fields: The element keys of the images to adjust (all with the record's one factor).
        magnitude: The largest deviation ``m`` of the factor from 1 (see the module docstring):
            ``m >= 0`` for random draws, ``m >= -1`` with ``draw="fixed"``.
        draw: ``"uniform"`` (u in [-1, 1]), ``"sign"`` (u in {-1, 1}) or ``"fixed"`` (u = 1).
        learnable: Hold ``magnitude`` as an ``nnx.Param`` so gradients reach it.
        stochastic: True unless ``draw="fixed"``.
        stream_name: The stream the draws are named after (default: the operator's).

    Raises:
        ValueError: If a field is not a non-empty string, ``magnitude`` or ``draw`` is out of
            range, ``learnable`` is not a bool, or ``stochastic`` does not match ``draw``.
"""


@dataclasses.dataclass(frozen=True)
class RandomBrightnessConfig(_JitterConfig):
    __doc__ = (
        "Configuration of ``RandomBrightness`` (factor ``max(0, 1 + magnitude * u)``).\n"
        + _JITTER_ARGS
        + """
    Example:
        >>> RandomBrightnessConfig(magnitude=0.3).stream_name
        'brightness'
    """
    )

    stream: ClassVar[str] = "brightness"


class RandomBrightness(_JitterOperator):
    """Multiplies the image by the record's factor ``f = max(0, 1 + m u)`` and clips to ``[0, 1]``.

    Differentiable w.r.t. a float image and w.r.t. the magnitude when ``learnable`` (``d out / d m
    = x u`` where nothing clips).

    Args:
        config: A ``RandomBrightnessConfig``.
        rngs: Optional own random number generators (an override of the pipeline seed).
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``RandomBrightnessConfig``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> op = RandomBrightness(RandomBrightnessConfig(magnitude=0.5))
        >>> out = op.apply({"image": jnp.full((2, 2, 3), 0.5)}, jax.random.key(0))["image"]
        >>> 0.25 <= float(out[0, 0, 0]) <= 0.75
        True
    """

    config_cls = RandomBrightnessConfig

    def _adjust(self, x, strength):
        return x * _factor(strength)


@dataclasses.dataclass(frozen=True)
class RandomContrastConfig(_JitterConfig):
    __doc__ = (
        "Configuration of ``RandomContrast`` (factor ``max(0, 1 + magnitude * u)``).\n"
        + _JITTER_ARGS
        + """
    Example:
        >>> RandomContrastConfig(magnitude=0.3).stream_name
        'contrast'
    """
    )

    stream: ClassVar[str] = "contrast"


class RandomContrast(_JitterOperator):
    """Blends the image with the mean of its grayscale: ``f x + (1 - f) mean(luma(x))``, clipped.

    As torchvision's ``adjust_contrast``: one mean per image (ITU-R 601 luma of RGB; a
    one-channel image is its own luma). Images must have 1 or 3 channels. Differentiable w.r.t.
    a float image and w.r.t. the magnitude when ``learnable``.

    Args:
        config: A ``RandomContrastConfig``.
        rngs: Optional own random number generators.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``RandomContrastConfig``.

    Example:
        >>> import jax.numpy as jnp
        >>> op = RandomContrast(RandomContrastConfig(magnitude=-0.5, draw="fixed", stochastic=False))
        >>> op.apply({"image": jnp.array([[[0.0], [1.0]]])})["image"].ravel().tolist()
        [0.25, 0.75]
    """

    materializes_input = True  # reads a mean / the other channels / neighbours
    config_cls = RandomContrastConfig
    channels = (1, 3)

    def _adjust(self, x, strength):
        if x.shape[-1] == 1:
            mean = jnp.mean(x)
        else:
            # One flat reduction of the pixels times the weights tiled to the same length: XLA:CPU
            # reduces a flat axis fastest (128 x 32 x 32 x 3 float32: 0.07 ms, against 0.17 ms summing
            # the 3-wide channel axis first and 1.0 ms for the sliced _luma).
            height, width = x.shape[0], x.shape[1]
            weights = jnp.tile(jnp.asarray(LUMA_WEIGHTS, x.dtype), height * width)
            mean = jnp.sum(x.reshape(-1) * weights) / np.float32(height * width)
        return _blend(x, mean, _factor(strength))


@dataclasses.dataclass(frozen=True)
class RandomSaturationConfig(_JitterConfig):
    __doc__ = (
        "Configuration of ``RandomSaturation`` (factor ``max(0, 1 + magnitude * u)``).\n"
        + _JITTER_ARGS
        + """
    Example:
        >>> RandomSaturationConfig(magnitude=0.3).stream_name
        'saturation'
    """
    )

    stream: ClassVar[str] = "saturation"


class RandomSaturation(_JitterOperator):
    """Blends an RGB image with its grayscale: ``f x + (1 - f) luma(x)``, clipped to ``[0, 1]``.

    ``f = 0`` gives the grayscale image, ``f > 1`` over-saturates (torchvision's
    ``adjust_saturation``). Images must have 3 channels. Differentiable w.r.t. a float image and
    w.r.t. the magnitude when ``learnable``.

    Args:
        config: A ``RandomSaturationConfig``.
        rngs: Optional own random number generators.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``RandomSaturationConfig``.

    Example:
        >>> import jax.numpy as jnp
        >>> op = RandomSaturation(RandomSaturationConfig(magnitude=-1.0, draw="fixed", stochastic=False))
        >>> [round(v, 3) for v in op.apply({"image": jnp.array([[[1.0, 0.0, 0.0]]])})["image"].ravel().tolist()]
        [0.299, 0.299, 0.299]
    """

    materializes_input = True  # reads a mean / the other channels / neighbours
    config_cls = RandomSaturationConfig
    channels = (3,)

    def _adjust(self, x, strength):
        return _blend(x, _luma(x), _factor(strength))


@dataclasses.dataclass(frozen=True)
class RandomHueConfig(_JitterConfig):
    __doc__ = (
        "Configuration of ``RandomHue`` (hue shift ``magnitude * u`` turns).\n"
        + _JITTER_ARGS.replace("deviation ``m`` of the factor from 1", "hue shift ``m`` in turns")
        .replace("``m >= 0`` for random draws", "``m`` in ``[0, 0.5]`` for random draws")
        .replace("``m >= -1`` with", "in ``[-0.5, 0.5]`` with")
        + """
    Example:
        >>> RandomHueConfig(magnitude=0.1).stream_name
        'hue'
    """
    )

    magnitude: float = 0.1
    stream: ClassVar[str] = "hue"
    max_magnitude: ClassVar[float] = 0.5
    min_fixed: ClassVar[float] = -0.5


class RandomHue(_JitterOperator):
    """Rotates the hue of an RGB image by ``m u`` turns (HSV round trip, saturation and value kept).

    As torchvision's ``adjust_hue`` with ``hue_factor = m u``. Images must have 3 channels.
    Differentiable almost everywhere w.r.t. a float image and w.r.t. the magnitude when
    ``learnable`` (the hue of a gray pixel has no gradient).

    Args:
        config: A ``RandomHueConfig``.
        rngs: Optional own random number generators.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``RandomHueConfig``.

    Example:
        >>> import jax.numpy as jnp
        >>> op = RandomHue(RandomHueConfig(magnitude=1 / 3, draw="fixed", stochastic=False))
        >>> [round(v, 4) for v in op.apply({"image": jnp.array([[[1.0, 0.0, 0.0]]])})["image"].ravel().tolist()]
        [0.0, 1.0, 0.0]
    """

    materializes_input = True  # reads a mean / the other channels / neighbours
    config_cls = RandomHueConfig
    channels = (3,)

    def _adjust(self, x, strength):
        hsv = rgb_to_hsv(x)
        hue = hsv[..., :1] + strength
        return hsv_to_rgb(jnp.concatenate([hue, hsv[..., 1:]], axis=-1))


# --- Grayscale -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GrayscaleConfig(OperatorConfig):
    """Configuration of ``Grayscale`` (deterministic; wrap it in a ``ProbabilisticOperator`` for a random one).

    Attributes:
        fields: The element keys of the RGB images to convert.
        keep_channels: True returns ``(H, W, 3)`` (the luma repeated), False ``(H, W, 1)``.

    Raises:
        ValueError: If a field is not a non-empty string, ``keep_channels`` is not a bool, or the
            config is stochastic.

    Example:
        >>> GrayscaleConfig(keep_channels=True).keep_channels
        True
    """

    fields: tuple[str, ...] = ("image",)
    keep_channels: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "fields", _fields(name, self.fields))
        object.__setattr__(self, "keep_channels", boolean(name, "keep_channels", self.keep_channels))
        if self.stochastic:
            raise ValueError(f"{name}: Grayscale draws nothing, so it must be stochastic=False, got True")


class Grayscale(_ImageOperator):
    """ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B`` of an RGB image (uint8 rounded, as PIL's ``L``).

    Differentiable w.r.t. a float image.

    Args:
        config: A ``GrayscaleConfig``.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``GrayscaleConfig``.

    Example:
        >>> import jax.numpy as jnp
        >>> op = Grayscale(GrayscaleConfig())
        >>> op.apply({"image": jnp.array([[[255, 0, 0]]], dtype=jnp.uint8)})["image"].tolist()
        [[[76]]]
    """

    materializes_input = True  # reads a mean / the other channels / neighbours
    channels = (3,)

    def __init__(self, config: GrayscaleConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, GrayscaleConfig)
        super().__init__(config, rngs=rngs, name=name)

    def _transform(self, x, params, key, index):
        gray = _luma(_to_unit(x))
        if self.config.keep_channels:
            gray = jnp.concatenate([gray, gray, gray], axis=-1)
        return _from_unit(gray, x.dtype, clip=False)


# --- GaussianNoise -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GaussianNoiseConfig(OperatorConfig):
    """Configuration of ``GaussianNoise``.

    Attributes:
        fields: The element keys of the images to add noise to (each field its own noise).
        std: Standard deviation of the noise on the ``[0, 1]`` scale (``>= 0``).
        clip: Clip float outputs to ``[0, 1]`` (uint8 outputs are always clipped to ``0..255``).
        stochastic: Must be True.
        stream_name: Default ``"noise"``.

    Raises:
        ValueError: If a field is not a non-empty string, ``std`` is negative or not finite,
            ``clip`` is not a bool, or the config is deterministic.

    Example:
        >>> GaussianNoiseConfig(std=0.05).stream_name
        'noise'
    """

    fields: tuple[str, ...] = ("image",)
    std: float = 0.1
    clip: bool = True
    stochastic: bool = True
    stream_name: str | None = None

    def __post_init__(self) -> None:
        _default_stream(self, "noise")
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "fields", _fields(name, self.fields))
        object.__setattr__(self, "std", _number(name, "std", self.std, 0, math.inf, "a finite number >= 0"))
        object.__setattr__(self, "clip", boolean(name, "clip", self.clip))
        _require_stochastic(self, "GaussianNoise draws noise per record")


class GaussianNoise(_ImageOperator):
    """Adds ``std * normal(fold_in(key, i), shape)`` to field ``i`` (on the ``[0, 1]`` scale).

    Differentiable w.r.t. a float image (gradient 1 where not clipped); ``std`` is not learnable.

    Args:
        config: A ``GaussianNoiseConfig``.
        rngs: Optional own random number generators.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``GaussianNoiseConfig``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> op = GaussianNoise(GaussianNoiseConfig(std=0.1))
        >>> out = op.apply({"image": jnp.full((8, 8, 3), 0.5)}, jax.random.key(0))["image"]
        >>> 0.05 < float(jnp.std(out)) < 0.15
        True
    """

    def __init__(self, config: GaussianNoiseConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, GaussianNoiseConfig)
        super().__init__(config, rngs=rngs, name=name)

    def _transform(self, x, params, key, index):
        y = _to_unit(x)
        noise = jax.random.normal(threefry.fold_in(key, index), x.shape, dtype=y.dtype)
        return _from_unit(y + np.float32(self.config.std) * noise, x.dtype, clip=self.config.clip)


# --- GaussianBlur --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GaussianBlurConfig(OperatorConfig):
    """Configuration of ``GaussianBlur``.

    Attributes:
        fields: The element keys of the images to blur (all with the record's one sigma).
        kernel_size: Odd kernel width ``2 r + 1`` (taps at offsets ``-r..r``), the same on both axes.
        sigma: ``(min, max)`` of the per-record sigma in pixels (``0 < min <= max``), or one number.
        stochastic: True unless ``min == max``.
        stream_name: Default ``"blur"``.

    Raises:
        ValueError: If a field is not a non-empty string, ``kernel_size`` is not an odd positive
            int, ``sigma`` is not a valid range, or a sigma range is configured deterministic.

    Example:
        >>> GaussianBlurConfig(kernel_size=3, sigma=1.0, stochastic=False).sigma
        (1.0, 1.0)
    """

    fields: tuple[str, ...] = ("image",)
    kernel_size: int = 5
    sigma: tuple[float, float] = (0.1, 2.0)
    stochastic: bool = True
    stream_name: str | None = None

    def __post_init__(self) -> None:
        _default_stream(self, "blur")
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "fields", _fields(name, self.fields))
        k = self.kernel_size
        if not is_int(k) or k < 1 or k % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be an odd positive int, got {k!r}")
        object.__setattr__(self, "kernel_size", int(k))
        what = "a number > 0 or a (min, max) pair with 0 < min <= max"
        sigma = _pair(name, "sigma", self.sigma, 0, math.inf, what, low_open=True)
        object.__setattr__(self, "sigma", sigma)
        if sigma[0] != sigma[1]:
            _require_stochastic(self, f"sigma={sigma!r} draws a sigma per record")


class GaussianBlur(_ImageOperator):
    """Separable Gaussian blur with a per-record ``sigma = min + (max - min) * uniform(fold_in(key, 0))``.

    The kernel ``exp(-t^2 / (2 sigma^2))`` over ``t = -r..r`` is normalised to sum 1 and applied
    along the height, then the width, as ``2 r + 1`` shifted multiply-adds of the padded image
    (XLA fuses them). Borders are padded by reflection without repeating the edge pixel
    (``numpy``/torchvision ``"reflect"``, ``scipy.ndimage`` ``"mirror"``), so the result equals
    ``scipy.ndimage.gaussian_filter(x, (sigma, sigma, 0), mode="mirror", radius=(r, r, 0))``.
    Needs ``r < H`` and ``r < W``. Differentiable w.r.t. a float image; sigma is not learnable.

    Args:
        config: A ``GaussianBlurConfig``.
        rngs: Optional own random number generators.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``GaussianBlurConfig``.

    Example:
        >>> import jax.numpy as jnp
        >>> op = GaussianBlur(GaussianBlurConfig(kernel_size=3, sigma=1.0, stochastic=False))
        >>> ramp = jnp.linspace(0, 1, 9).reshape(3, 3, 1)
        >>> [round(v, 3) for v in op.apply({"image": ramp})["image"][1, :, 0].tolist()]
        [0.444, 0.5, 0.556]
    """

    materializes_input = True  # reads a mean / the other channels / neighbours

    def __init__(self, config: GaussianBlurConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, GaussianBlurConfig)
        super().__init__(config, rngs=rngs, name=name)

    def _params(self, key):
        lo, hi = self.config.sigma
        sigma = jnp.float32(lo) if key is None else lo + (hi - lo) * _draw(key, 0)
        r = self.config.kernel_size // 2
        t = np.arange(-r, r + 1, dtype=np.float32)
        weights = jnp.exp(-(t**2) / (2 * sigma**2))
        return weights / jnp.sum(weights)

    def _transform(self, x, weights, key, index):
        r = self.config.kernel_size // 2
        h, w = x.shape[:2]
        if r >= h or r >= w:
            raise ValueError(
                f"{label(self)}: kernel_size={self.config.kernel_size} needs images larger than {r} pixels "
                f"on each side, got field {self.config.fields[index]!r} of shape {x.shape}"
            )
        y = _to_unit(x)
        weights = weights.astype(y.dtype)
        padded = jnp.pad(y, ((r, r), (0, 0), (0, 0)), mode="reflect")
        y = sum(weights[k] * padded[k : k + h] for k in range(2 * r + 1))
        padded = jnp.pad(y, ((0, 0), (r, r), (0, 0)), mode="reflect")
        y = sum(weights[k] * padded[:, k : k + w] for k in range(2 * r + 1))
        return _from_unit(y, x.dtype, clip=False)


# --- RandomErasing -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RandomErasingConfig(OperatorConfig):
    """Configuration of ``RandomErasing`` (cutout).

    Attributes:
        fields: The element keys of the images to erase (same relative rectangle in each).
        probability: Chance in ``[0, 1]`` that a record is erased.
        scale: ``(min, max)`` fraction of the image area to erase, ``0 < min <= max <= 1``.
        ratio: ``(min, max)`` aspect ratio (height / width) of the rectangle, ``0 < min <= max``;
            drawn log-uniformly.
        value: Fill value on the ``[0, 1]`` scale (a uint8 image gets ``round(255 * value)``).
        stochastic: Must be True.
        stream_name: Default ``"erasing"``.

    Raises:
        ValueError: If a field is not a non-empty string, any range or the probability or value
            is out of range, or the config is deterministic.

    Example:
        >>> RandomErasingConfig(scale=(0.1, 0.2)).ratio
        (0.3, 3.3)
    """

    fields: tuple[str, ...] = ("image",)
    probability: float = 0.5
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    value: float = 0.0
    stochastic: bool = True
    stream_name: str | None = None

    def __post_init__(self) -> None:
        _default_stream(self, "erasing")
        super().__post_init__()
        name = type(self).__name__
        object.__setattr__(self, "fields", _fields(name, self.fields))
        p = _number(name, "probability", self.probability, 0, 1, "a number in [0, 1]")
        object.__setattr__(self, "probability", p)
        what = "a (min, max) pair with 0 < min <= max <= 1"
        object.__setattr__(self, "scale", _pair(name, "scale", self.scale, 0, 1, what, low_open=True))
        what = "a (min, max) pair with 0 < min <= max"
        object.__setattr__(self, "ratio", _pair(name, "ratio", self.ratio, 0, math.inf, what, low_open=True))
        object.__setattr__(self, "value", _number(name, "value", self.value, 0, 1, "a number in [0, 1]"))
        _require_stochastic(self, "RandomErasing draws a rectangle per record")


class RandomErasing(_ImageOperator):
    """Fills a random rectangle of the image with ``value``, with probability ``p`` (cutout).

    Per record (draws ``i`` = ``uniform(fold_in(key, i))``): erase if draw 0 ``< p``; area fraction
    ``s`` uniform in ``scale`` (draw 1); aspect ``a`` log-uniform in ``ratio`` (draw 2); the
    rectangle is ``h = round(sqrt(s H W a))`` by ``w = round(sqrt(s H W / a))``, each clipped to
    ``[1, H]`` / ``[1, W]`` (so it always fits, unlike torchvision's ten attempts), at top-left
    ``(floor(draw 3 (H - h + 1)), floor(draw 4 (W - w + 1)))``. The mask is an outer AND of a row
    and a column comparison, selected with ``jnp.where`` (no scatter). Every record counts as
    applied (not erasing is a random outcome, as for ``RandomFlip``). Differentiable w.r.t. a
    float image (zero gradient inside the rectangle).

    Args:
        config: A ``RandomErasingConfig``.
        rngs: Optional own random number generators.
        name: Optional operator name.

    Raises:
        TypeError: If ``config`` is not a ``RandomErasingConfig``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> op = RandomErasing(RandomErasingConfig(probability=1.0, scale=(0.25, 0.25), ratio=(1, 1)))
        >>> out = op.apply({"image": jnp.ones((4, 4, 1))}, jax.random.key(0))["image"]
        >>> int((out == 0).sum())  # a 2 x 2 square
        4
    """

    def __init__(self, config: RandomErasingConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, RandomErasingConfig)
        super().__init__(config, rngs=rngs, name=name)

    def _params(self, key):
        c = self.config
        erase = _draw(key, 0) < np.float32(c.probability)
        scale = c.scale[0] + (c.scale[1] - c.scale[0]) * _draw(key, 1)
        log_lo, log_hi = math.log(c.ratio[0]), math.log(c.ratio[1])
        ratio = jnp.exp(log_lo + (log_hi - log_lo) * _draw(key, 2))
        return erase, scale, ratio, _draw(key, 3), _draw(key, 4)

    def _transform(self, x, params, key, index):
        erase, scale, ratio, top_u, left_u = params
        h, w = x.shape[:2]
        area = scale * (h * w)
        eh = jnp.clip(jnp.round(jnp.sqrt(area * ratio)), 1, h).astype(jnp.int32)
        ew = jnp.clip(jnp.round(jnp.sqrt(area / ratio)), 1, w).astype(jnp.int32)
        top = jnp.floor(top_u * (h - eh + 1).astype(jnp.float32)).astype(jnp.int32)
        left = jnp.floor(left_u * (w - ew + 1).astype(jnp.float32)).astype(jnp.int32)
        rows = jnp.arange(h, dtype=jnp.int32)
        cols = jnp.arange(w, dtype=jnp.int32)
        in_rows = (rows >= top) & (rows < top + eh) & erase
        in_cols = (cols >= left) & (cols < left + ew)
        mask = (in_rows[:, None] & in_cols[None, :])[:, :, None]
        if x.dtype == jnp.uint8:
            fill = jnp.uint8(round(255 * self.config.value))
        else:
            fill = jnp.asarray(self.config.value, dtype=x.dtype)
        return jnp.where(mask, fill, x)


__all__ = [
    "Grayscale",
    "GrayscaleConfig",
    "GaussianBlur",
    "GaussianBlurConfig",
    "GaussianNoise",
    "GaussianNoiseConfig",
    "Normalize",
    "NormalizeConfig",
    "RandomBrightness",
    "RandomBrightnessConfig",
    "RandomContrast",
    "RandomContrastConfig",
    "RandomErasing",
    "RandomErasingConfig",
    "RandomHue",
    "RandomHueConfig",
    "RandomSaturation",
    "RandomSaturationConfig",
    "hsv_to_rgb",
    "rgb_to_hsv",
]

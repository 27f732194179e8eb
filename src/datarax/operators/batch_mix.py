"""Mixup and cutmix: a batch operator that mixes each valid row with a partner row.

``BatchMix`` is a ``BatchOperator``: it sees the whole batch and draws from
ONE key per batch, derived from the batch's first record key (see
``datarax.core.batch_operator``), so a resumed pipeline mixes exactly as the
uninterrupted one did. From that key it draws (``BatchMix.draw``):

* ``lam``, from ``Beta(alpha, alpha)``: one for the batch (``per_row=False``,
  the usual choice) or one per row (``per_row=True``);
* whether to mix, with ``probability``: for the batch, or per row;
* a partner for each row: a uniformly random permutation of the VALID rows
  (padding rows are never anyone's partner, are their own partner, and come
  out unchanged);
* for cutmix, a box of area about ``(1 - lam) * H * W`` centred uniformly
  (clipped at the border), one for the batch or one per row.

Then (``BatchMix.mix``), for a mixed row ``i`` with partner ``j``:

* ``mode="mixup"``: ``x_i <- lam * x_i + (1 - lam) * x_j`` for every field;
* ``mode="cutmix"``: the box of ``x_i`` is replaced by that of ``x_j``
  (fields are ``(H, W, ...)``, e.g. ``(H, W, C)`` images and ``(H, W)``
  masks, all of the same ``H, W``);
* labels: ``y_i <- w * y_i + (1 - w) * y_j`` with ``w = lam`` (mixup) or
  ``w = 1 - box area / (H * W)`` (cutmix, the box actually pasted). Integer
  class labels (element shape ``()``) are first made one-hot with
  ``num_classes`` (an out-of-range class becomes all zeros); float labels
  (one-hot or soft, classes on the last axis) are mixed as given. Labels
  that sum to 1 still do.

Dtypes: mixup outputs float fields in their dtype and integer fields as
float32 (same value scale, e.g. 0..255); cutmix only copies pixels, so every
field keeps its dtype. Mixed labels are float32 (integer labels) or keep
their float dtype. Rows not mixed (padding, or the coin said no) are returned
bit for bit; so are their labels (one-hot when ``num_classes`` is given).

Differentiable: mixup is linear in every field (gradients flow to both rows
of a pair and to the labels); cutmix is a select (gradient 1 or 0 per pixel).
Neither is differentiable w.r.t. ``alpha`` or ``lam`` as configured (they are
drawn, not parameters).

Counting: every valid row counts as applied (mixing is the operator's random
outcome, as a flip is for ``RandomFlip``).

Example:
    >>> import jax, jax.numpy as jnp
    >>> mix = BatchMix(BatchMixConfig(mode="mixup", alpha=0.4, num_classes=3))
    >>> batch = {"image": jnp.ones((4, 2, 2, 1)), "label": jnp.array([0, 1, 2, 0]),
    ...          "valid_mask": jnp.array([True, True, True, False])}
    >>> out = mix.apply_batch(batch, jax.random.split(jax.random.key(0), 4))
    >>> out["label"].shape, bool(jnp.allclose(out["label"].sum(-1), 1.0))
    ((4, 3), True)
    >>> out["label"][3].tolist()  # the padding row: its one-hot label, unmixed
    [1.0, 0.0, 0.0]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from numbers import Real
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from datarax.core.batch_operator import BatchOperator
from datarax.core.config import OperatorConfig
from datarax.core.validation import is_int
from datarax.operators._checks import label, require_config

MODES = ("mixup", "cutmix")


@dataclasses.dataclass(frozen=True)
class BatchMixConfig(OperatorConfig):
    """Configuration of ``BatchMix``.

    Attributes:
        mode: ``"mixup"`` (blend whole rows) or ``"cutmix"`` (paste a box of the partner).
        alpha: The ``Beta(alpha, alpha)`` concentration of ``lam``; a finite number > 0
            (small values keep ``lam`` near 0 or 1; 1 is uniform).
        fields: The element keys mixed (all with the same partner, ``lam`` and box).
        label_field: The label key mixed with the matching weight, or None for no labels.
        num_classes: For integer class labels (element shape ``()``): the one-hot width
            (>= 2). None: the labels are already float (one-hot or soft).
        per_row: False: one ``lam``, coin and box for the whole batch; True: one per row.
        probability: Chance in ``[0, 1]`` that the batch (or, with ``per_row``, a row) is mixed.
        stochastic: Must be True (``lam`` and the partners are drawn).
        stream_name: The stream the batch key is named after (``"mix"`` when not given).

    Raises:
        ValueError: If a value is out of range or of the wrong kind (the message
            names the argument, the bad value and what was expected).

    Example:
        >>> BatchMixConfig(mode="cutmix", fields=["image"], num_classes=10).fields
        ('image',)
    """

    mode: str = "mixup"
    alpha: float = 1.0
    fields: tuple[str, ...] = ("image",)
    label_field: str | None = "label"
    num_classes: int | None = None
    per_row: bool = False
    probability: float = 1.0
    stochastic: bool = True
    stream_name: str | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.stochastic is not True:
            raise ValueError(
                f"{name}: stochastic must be True (lam and the partner rows are drawn), got {self.stochastic!r}"
            )
        if self.stream_name is None:
            object.__setattr__(self, "stream_name", "mix")
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"{name}: mode must be one of {list(MODES)}, got {self.mode!r}")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, Real) or not math.isfinite(a) or a <= 0:
            raise ValueError(f"{name}: alpha must be a finite number > 0, got {a!r}")
        object.__setattr__(self, "alpha", float(a))
        fields = self.fields
        if isinstance(fields, str) or not isinstance(fields, Sequence) or not fields:
            raise ValueError(f"{name}: fields must be a non-empty sequence of element keys, got {fields!r}")
        if not all(isinstance(f, str) and f for f in fields) or len(set(fields)) != len(fields):
            raise ValueError(f"{name}: fields must be unique non-empty strings, got {fields!r}")
        object.__setattr__(self, "fields", tuple(fields))
        lf = self.label_field
        if lf is not None and (not isinstance(lf, str) or not lf):
            raise ValueError(f"{name}: label_field must be a non-empty string or None, got {lf!r}")
        if lf is not None and lf in self.fields:
            raise ValueError(f"{name}: label_field {lf!r} is also in fields {self.fields!r}; give it once")
        k = self.num_classes
        if k is not None:
            if not is_int(k) or k < 2:
                raise ValueError(f"{name}: num_classes must be None or an int >= 2, got {k!r}")
            if lf is None:
                raise ValueError(f"{name}: num_classes={k!r} is for integer labels, but label_field is None")
            object.__setattr__(self, "num_classes", int(k))
        if not isinstance(self.per_row, bool):
            raise ValueError(f"{name}: per_row must be a bool, got {self.per_row!r}")
        p = self.probability
        if isinstance(p, bool) or not isinstance(p, Real) or not math.isfinite(p) or not 0 <= p <= 1:
            raise ValueError(f"{name}: probability must be a number in [0, 1], got {p!r}")
        object.__setattr__(self, "probability", float(p))


class MixDraw(NamedTuple):
    """What ``BatchMix.draw`` drew for one batch of ``B`` rows.

    Attributes:
        mixed: bool ``(B,)``: the row is mixed (valid and its coin said yes).
        lam: float32 ``(B,)``: the drawn ``Beta(alpha, alpha)`` value (1 for unmixed rows).
        partner: int32 ``(B,)``: the row mixed into each row (a valid row for a valid
            row, the row itself for a padding row); a permutation of the rows.
        box: int32 ``(B, 4)``: cutmix's ``(top, bottom, left, right)``, half-open
            (an empty box for unmixed rows); None for mixup.
        weight: float32 ``(B,)``: the weight of a row's own label (``lam`` for mixup,
            ``1 - box area / (H * W)`` for cutmix; 1 for unmixed rows).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> mix = BatchMix(BatchMixConfig(mode="cutmix", alpha=1.0))
        >>> drawn = mix.draw(jax.random.key(0), jnp.array([True, True, True, False]), image_hw=(8, 8))
        >>> drawn.box.shape, int(drawn.partner[3]), bool(drawn.mixed[3])  # padding: its own partner
        ((4, 4), 3, False)
    """

    mixed: jax.Array
    lam: jax.Array
    partner: jax.Array
    box: jax.Array | None
    weight: jax.Array


def valid_partners(key: jax.Array, valid: jax.Array) -> jax.Array:
    """A uniformly random permutation of the valid rows, the identity on the others.

    Args:
        key: A PRNG key.
        valid: bool ``(B,)``.

    Returns:
        int32 ``(B,)``: ``partner[i]`` is valid iff row ``i`` is valid.
    """
    rows = valid.shape[0]
    # Valid rows first in a random order; valid rows first in row order: the
    # j-th valid row gets the j-th of the random order.
    shuffled = jnp.argsort(jnp.where(valid, jax.random.uniform(key, (rows,)), 2.0), stable=True)
    in_order = jnp.argsort(~valid, stable=True)
    count = jnp.sum(valid)
    source = jnp.where(jnp.arange(rows) < count, shuffled, in_order)
    return jnp.zeros(rows, jnp.int32).at[in_order].set(source.astype(jnp.int32))


class BatchMix(BatchOperator):
    """Mixup or cutmix over the valid rows of each batch (see the module docstring).

    Args:
        config: A ``BatchMixConfig``.
        rngs: Optional own random number generators (an override of the pipeline seed).
        name: Optional operator name (its key name in a linear pipeline).

    Raises:
        TypeError: If ``config`` is not a ``BatchMixConfig``.

    Example:
        >>> import numpy as np
        >>> from flax import nnx
        >>> from datarax import Pipeline
        >>> from datarax.sources import MemorySource, MemorySourceConfig
        >>> data = {"image": np.random.rand(10, 4, 4, 3).astype(np.float32), "label": np.arange(10) % 5}
        >>> source = MemorySource(MemorySourceConfig(), data=data)
        >>> mix = BatchMix(BatchMixConfig(mode="cutmix", num_classes=5))
        >>> pipeline = Pipeline(source=source, stages=[mix], batch_size=4, rngs=nnx.Rngs(0), shuffle=True)
        >>> [b["label"].shape for b in pipeline]
        [(4, 5), (4, 5), (4, 5)]
    """

    def __init__(self, config: BatchMixConfig, *, rngs: nnx.Rngs | None = None, name: str | None = None):
        require_config(self, config, BatchMixConfig)
        super().__init__(config, rngs=rngs, name=name)

    def draw(self, key: jax.Array, valid: Any, image_hw: tuple[int, int] | None = None) -> MixDraw:
        """Draws ``lam``, the coins, the partners and (cutmix) the boxes for one batch.

        Args:
            key: The batch key (``batch_key``).
            valid: bool ``(B,)``.
            image_hw: ``(H, W)`` of the fields (needed for cutmix).

        Returns:
            A ``MixDraw``.
        """
        cfg = self.config
        valid = jnp.asarray(valid, dtype=bool)
        rows = valid.shape[0]
        draws = rows if cfg.per_row else 1
        lam = jax.random.beta(jax.random.fold_in(key, 0), cfg.alpha, cfg.alpha, (draws,), jnp.float32)
        partner = valid_partners(jax.random.fold_in(key, 1), valid)
        mixed = valid
        if cfg.probability < 1:
            coin = jax.random.uniform(jax.random.fold_in(key, 2), (draws,)) < cfg.probability
            mixed = mixed & jnp.broadcast_to(coin, (rows,))
        lam = jnp.where(mixed, jnp.broadcast_to(lam, (rows,)), 1.0)
        if cfg.mode == "mixup":
            return MixDraw(mixed, lam, partner, None, lam)
        if image_hw is None:
            raise ValueError(f"{label(self)}: cutmix needs image_hw=(H, W) to draw its boxes")
        h, w = image_hw
        ratio = jnp.sqrt(1.0 - lam)
        cut_h = jnp.floor(h * ratio).astype(jnp.int32)
        cut_w = jnp.floor(w * ratio).astype(jnp.int32)
        centre = jax.random.uniform(jax.random.fold_in(key, 3), (draws, 2))
        cy = jnp.broadcast_to(jnp.floor(centre[:, 0] * h).astype(jnp.int32), (rows,))
        cx = jnp.broadcast_to(jnp.floor(centre[:, 1] * w).astype(jnp.int32), (rows,))
        top, bottom = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
        left, right = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
        box = jnp.stack([top, bottom, left, right], axis=1)
        area = ((bottom - top) * (right - left)).astype(jnp.float32)
        weight = jnp.where(mixed, 1.0 - area / float(h * w), 1.0)
        return MixDraw(mixed, lam, partner, box, weight)

    def mix(self, data: dict[str, jax.Array], draw: MixDraw) -> dict[str, jax.Array]:
        """Mixes ``data`` (a batch without ``valid_mask``) as ``draw`` says.

        Raises:
            ValueError: If a field or the label is missing or has the wrong shape or dtype.
        """
        cfg = self.config
        out = dict(data)
        rows = draw.mixed.shape[0]

        def per_row(v: jax.Array, ndim: int) -> jax.Array:  # (B,) -> (B, 1, ..., 1) for an ndim-d batch
            return v.reshape((rows,) + (1,) * (ndim - 1))

        for field in cfg.fields:
            x = jnp.asarray(data[field])
            if cfg.mode == "mixup":
                dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
                x = x.astype(dtype)
                lam = per_row(draw.lam, x.ndim).astype(dtype)
                mixed = lam * x + (1 - lam) * x[draw.partner]
            else:
                top, bottom, left, right = (per_row(draw.box[:, i], 3) for i in range(4))
                ys = jnp.arange(x.shape[1]).reshape(1, -1, 1)
                xs = jnp.arange(x.shape[2]).reshape(1, 1, -1)
                inside = (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)
                inside = inside.reshape(inside.shape + (1,) * (x.ndim - 3))
                mixed = jnp.where(inside, x[draw.partner], x)
            out[field] = jnp.where(per_row(draw.mixed, x.ndim), mixed, x)
        if cfg.label_field is not None:
            y = self._soft_labels(data[cfg.label_field])
            weight = per_row(draw.weight, y.ndim).astype(y.dtype)
            mixed = weight * y + (1 - weight) * y[draw.partner]
            out[cfg.label_field] = jnp.where(per_row(draw.mixed, y.ndim), mixed, y)
        return out

    def _soft_labels(self, y: Any) -> jax.Array:
        cfg = self.config
        y = jnp.asarray(y)
        if cfg.num_classes is not None:
            if not jnp.issubdtype(y.dtype, jnp.integer) or y.ndim != 1:
                raise ValueError(
                    f"{label(self)}: with num_classes={cfg.num_classes}, label {cfg.label_field!r} must be one "
                    f"integer class per record (element shape ()), got {y.dtype}{list(y.shape[1:])}"
                )
            return jax.nn.one_hot(y, cfg.num_classes, dtype=jnp.float32)
        if not jnp.issubdtype(y.dtype, jnp.floating) or y.ndim < 2:
            raise ValueError(
                f"{label(self)}: label {cfg.label_field!r} must be float one-hot or soft labels with the classes "
                f"on the last axis, got {y.dtype}{list(y.shape[1:])}; for integer classes set num_classes"
            )
        return y

    def transform_batch(self, data: dict[str, jax.Array], valid: jax.Array, key: jax.Array | None) -> dict[str, Any]:
        """Draws for this batch (``draw``) and mixes it (``mix``).

        Raises:
            ValueError: If a configured field or the label is missing, a field
                has no ``(H, W)`` for cutmix, or the cutmix fields disagree on it.
        """
        cfg = self.config
        wanted = [*cfg.fields, *([cfg.label_field] if cfg.label_field is not None else [])]
        for field in wanted:
            if field not in data:
                raise ValueError(f"{label(self)}: field {field!r} is not in the element (keys: {sorted(data)})")
        for field in cfg.fields:
            dtype = jnp.asarray(data[field]).dtype
            if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
                raise ValueError(f"{label(self)}: field {field!r} must be numeric (int or float), got {dtype}")
        image_hw = None
        if cfg.mode == "cutmix":
            shapes = {field: tuple(jnp.shape(data[field])[1:]) for field in cfg.fields}
            for field, shape in shapes.items():
                if len(shape) < 2:
                    raise ValueError(
                        f"{label(self)}: cutmix field {field!r} must be (H, W, ...) per element, got shape {shape}"
                    )
            sizes = {shape[:2] for shape in shapes.values()}
            if len(sizes) > 1:
                raise ValueError(f"{label(self)}: cutmix fields must share (H, W), got element shapes {shapes}")
            image_hw = sizes.pop()
        return self.mix(data, self.draw(key, valid, image_hw))


__all__ = ["BatchMix", "BatchMixConfig", "MixDraw", "valid_partners"]

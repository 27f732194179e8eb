"""The one batch form: a dict of arrays with a leading batch axis plus ``valid_mask``.

Every batch datarax produces (``DefaultBatcher``, ``Pipeline``, ``Batch.to_dict``)
has this form, so models, operators and checkpoints see one shape of data:

* each column has a leading axis of ``batch_size`` rows;
* the reserved key ``valid_mask`` (bool, shape ``(batch_size,)``) marks the
  real rows; padding rows (the end of an epoch) are False and hold copies of a
  real record, so nothing a model sees is garbage or NaN.

This module is the home of that form: the mask key, the batched spec, and
(stacking and padding) the ways rows become a batch.

Example:
    >>> import jax, numpy as np
    >>> spec = {"x": jax.ShapeDtypeStruct((3,), np.float32)}
    >>> out = batched_spec(spec, batch_size=4)
    >>> out["x"].shape, out[VALID_MASK].shape, out[VALID_MASK].dtype
    ((4, 3), (4,), dtype('bool'))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from datarax.core.spec import add_leading_dim
from datarax.core.validation import positive_int

VALID_MASK = "valid_mask"


def validate_batch_size(batch_size: Any, owner: str = "") -> int:
    """Returns ``batch_size`` as an int, or raises ``ValueError`` if it is not a positive int."""
    return positive_int(owner, "batch_size", batch_size)


def batched_spec(element_spec: Any, *, batch_size: int) -> dict[str, Any]:
    """The batch form's spec: ``element_spec`` with a leading ``batch_size`` axis plus ``valid_mask``.

    Args:
        element_spec: Dict pytree of ``jax.ShapeDtypeStruct`` for one element.
        batch_size: Number of rows.

    Returns:
        The batched spec, with ``"valid_mask"`` of shape ``(batch_size,)`` and dtype bool.

    Raises:
        ValueError: If ``batch_size`` is not positive or ``valid_mask`` is already used.
        TypeError: If ``element_spec`` is not a dict.
    """
    batch_size = validate_batch_size(batch_size)
    if not isinstance(element_spec, Mapping):
        raise TypeError(
            f"batch_spec: element_spec must be a dict of ShapeDtypeStruct, got {type(element_spec).__name__}"
        )
    if VALID_MASK in element_spec:
        raise ValueError(f"batch_spec: element_spec uses the reserved key {VALID_MASK!r}")
    batched = dict(add_leading_dim(dict(element_spec), batch_size))
    batched[VALID_MASK] = jax.ShapeDtypeStruct((batch_size,), np.dtype(bool))
    return batched


__all__ = ["VALID_MASK", "batched_spec", "validate_batch_size"]

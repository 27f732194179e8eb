"""The one batch form: a dict of arrays with a leading batch axis plus ``valid_mask``.

Every batch datarax produces (``DefaultBatcher``, ``Pipeline``, ``Batch.to_dict``)
has this form, so models, operators and checkpoints see one shape of data:

* each column has a leading axis of ``batch_size`` rows;
* the reserved key ``valid_mask`` (bool, shape ``(batch_size,)``) marks the
  real rows; padding rows (the end of an epoch) are False and hold copies of a
  real record, so nothing a model sees is garbage or NaN.

This module is the home of that form: the mask key, the batched spec, and
``stack_rows``, the one place where rows become a padded batch and its mask.
``DefaultBatcher`` and ``Batch.from_elements`` both stack through it, so they
agree on padding, dtypes and on how a row that does not fit is reported.

Example:
    >>> import jax, numpy as np
    >>> spec = {"x": jax.ShapeDtypeStruct((3,), np.float32)}
    >>> out = batched_spec(spec, batch_size=4)
    >>> out["x"].shape, out[VALID_MASK].shape, out[VALID_MASK].dtype
    ((4, 3), (4,), dtype('bool'))
    >>> rows = [{"x": np.full(3, i, np.float32)} for i in range(3)]
    >>> stacked, mask = stack_rows(rows, batch_size=4)
    >>> stacked["x"][:, 0].tolist(), mask.tolist()
    ([0.0, 1.0, 2.0, 2.0], [True, True, True, False])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from datarax.core.spec import add_leading_dim, spec_mismatches, spec_of
from datarax.core.validation import int_in_range, positive_int

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


def _leaf_dtype(leaf: Any) -> Any:
    if hasattr(leaf, "dtype"):
        return leaf.dtype
    # Python scalars: the dtype JAX gives them when stacked, as spec_of reports it.
    try:
        return jax.dtypes.canonicalize_dtype(np.result_type(leaf))
    except TypeError:  # not numeric at all: a mismatch, which spec_of then reports by path
        return None


def _signature(tree: Any) -> tuple[Any, list[tuple[tuple[int, ...], Any]]]:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [(np.shape(leaf), _leaf_dtype(leaf)) for leaf in leaves]


def stack_rows(
    rows: Sequence[Any],
    *,
    batch_size: int | None = None,
    owner: str = "stack_rows",
    what: str = "row",
    first_index: int = 0,
) -> tuple[Any, jax.Array]:
    """Stacks same-shaped pytrees along a new leading axis, padding up to ``batch_size``.

    Padding rows repeat the last row, so every row holds a real record's values
    (no garbage or NaN reaches a model), and the returned mask marks them False.

    Args:
        rows: Pytrees with row 0's structure and, leaf by leaf, its shape and dtype.
        batch_size: Rows in the result; defaults to ``len(rows)``.
        owner: Who stacks (class or function name), for error messages.
        what: What a row is called in error messages (e.g. ``"element"``).
        first_index: Index of ``rows[0]`` in the caller's stream, so errors name
            a row by its position there.

    Returns:
        ``(stacked, valid_mask)``: the stacked pytree of JAX arrays (leading axis
        ``batch_size``) and a bool array of shape ``(batch_size,)``, True for the
        first ``len(rows)`` rows.

    Raises:
        ValueError: If ``rows`` is empty, ``batch_size`` is not an int
            ``>= len(rows)``, or a row differs from row 0 in structure, shape or
            dtype (the message names both rows and every differing path).
        TypeError: If a leaf is neither an array nor a numeric scalar.

    Example:
        >>> import numpy as np
        >>> stack_rows([{"x": np.zeros(2)}, {"x": np.zeros(3)}], owner="demo", what="element")
        Traceback (most recent call last):
        ...
        ValueError: demo: element 1 differs from element 0: ['x']: expected float64[2], got float64[3]
    """
    rows = list(rows)
    if not rows:
        raise ValueError(f"{owner}: no {what}s to stack; need at least one")
    n = len(rows)
    size = n
    if batch_size is not None:
        size = int_in_range(owner, "batch_size", batch_size, low=n, what=f"an int >= len({what}s) = {n}")
    spec_of(rows[0])  # rejects non-numeric leaves, naming their path
    reference = _signature(rows[0])
    for i, row in enumerate(rows[1:], start=1):
        if _signature(row) != reference:
            problems = spec_mismatches(row, spec_of(rows[0])) or [
                f"structure: expected {reference[0]}, got {jax.tree.structure(row)}"
            ]
            raise ValueError(
                f"{owner}: {what} {first_index + i} differs from {what} {first_index}: " + "; ".join(problems)
            )
    padded = rows + [rows[-1]] * (size - n)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *padded)
    return stacked, jnp.arange(size) < n


__all__ = ["VALID_MASK", "batched_spec", "stack_rows", "validate_batch_size"]

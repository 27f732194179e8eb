"""Helpers around ``jax.ShapeDtypeStruct`` specs.

A *spec* is a pytree whose leaves are :class:`jax.ShapeDtypeStruct`. Specs describe elements and
batches without holding data, so pipelines can check that operators fit together at construction
time instead of failing at the first batch.

Example:
    >>> import numpy as np
    >>> element = {"image": np.zeros((8, 8), np.uint8), "label": np.int32(3)}
    >>> spec = spec_of(element)
    >>> spec_to_str(spec)
    "{'image': uint8[8,8], 'label': int32[]}"
    >>> spec_to_str(add_leading_dim(spec, 4))
    "{'image': uint8[4,8,8], 'label': int32[4]}"
    >>> conforms(zeros_like_spec(spec), spec)
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path, tree_map_with_path, tree_structure

from datarax.core.validation import positive_int

__all__ = [
    "BytesSpec",
    "RaggedSpec",
    "add_leading_dim",
    "is_host_spec",
    "check_conforms",
    "conforms",
    "element_spec_of_batch",
    "spec_mismatches",
    "spec_of",
    "spec_to_str",
    "zeros_like_spec",
]

_NUMERIC_KINDS = frozenset("biufc")


def _path_str(path: tuple) -> str:
    return keystr(path) or "<root>"


def _leaf_str(leaf: Any) -> str:
    """Renders one spec (or array) leaf as ``dtype[d0,d1]``."""
    if isinstance(leaf, HOST_SPECS):
        return str(leaf)
    try:
        dtype = np.dtype(leaf.dtype).name
    except TypeError:  # extended dtypes, e.g. typed PRNG keys
        dtype = str(leaf.dtype)
    return f"{dtype}[{','.join(str(d) for d in leaf.shape)}]"


@dataclasses.dataclass(frozen=True)
class BytesSpec:
    """The spec of a host column holding one ``bytes`` value per record (an encoded image, say).

    Only host sources produce such columns; a host operator (``DecodeImage``)
    turns them into arrays before the batch reaches the device.

    Example:
        >>> spec_to_str({"jpeg": BytesSpec(), "label": jax.ShapeDtypeStruct((), np.int32)})
        "{'jpeg': bytes, 'label': int32[]}"
    """

    def __str__(self) -> str:
        return "bytes"


@dataclasses.dataclass(frozen=True)
class RaggedSpec:
    """The spec of a host column holding one array per record whose shape varies (a token list, an image).

    Attributes:
        dtype: The arrays' dtype.
        ndim: Their number of dimensions.

    Example:
        >>> str(RaggedSpec(np.uint8, 3))
        'uint8[?,?,?]'
    """

    dtype: Any
    ndim: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if not isinstance(self.ndim, int) or isinstance(self.ndim, bool) or self.ndim < 1:
            raise ValueError(f"RaggedSpec: ndim must be a positive int, got {self.ndim!r}")

    def __str__(self) -> str:
        return f"{self.dtype.name}[{','.join('?' * self.ndim)}]"


HOST_SPECS = (BytesSpec, RaggedSpec)


def is_host_spec(leaf: Any) -> bool:
    """Whether ``leaf`` describes a host-only column (``BytesSpec`` or ``RaggedSpec``)."""
    return isinstance(leaf, HOST_SPECS)


def _leaf_spec(path: tuple, leaf: Any) -> Any:
    if isinstance(leaf, HOST_SPECS):
        return leaf
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype)
    dtype = np.asarray(leaf).dtype
    if dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(
            f"spec_of: leaf {_path_str(path)} is {leaf!r} of type {type(leaf).__name__}; "
            "expected an array or a numeric scalar"
        )
    # Python scalars have no dtype of their own: describe them as JAX will see them.
    return jax.ShapeDtypeStruct(np.shape(leaf), jax.dtypes.canonicalize_dtype(dtype))


def spec_of(tree: Any) -> Any:
    """Describes a pytree of arrays as a pytree of ``jax.ShapeDtypeStruct``.

    Arrays (numpy, JAX, tracers, or specs) keep their exact shape and dtype; Python scalars get
    JAX's default dtypes (e.g. ``int32`` and ``float32`` unless x64 is enabled).

    Args:
        tree: A pytree whose leaves are arrays or numeric scalars.

    Returns:
        A pytree of the same structure with ``jax.ShapeDtypeStruct`` leaves.

    Raises:
        TypeError: If a leaf is neither an array nor a numeric scalar (the message names it).

    Example:
        >>> import numpy as np
        >>> spec_of({"x": np.ones((2, 3), np.float32)})
        {'x': ShapeDtypeStruct(shape=(2, 3), dtype=float32)}
        >>> spec_of(7)
        ShapeDtypeStruct(shape=(), dtype=int32)
    """
    return tree_map_with_path(_leaf_spec, tree)


def element_spec_of_batch(batch_tree: Any) -> Any:
    """Returns the spec of one element of a batch: the leading axis of every leaf is dropped.

    Args:
        batch_tree: A pytree of arrays or specs that share a leading batch axis.

    Returns:
        A pytree of ``jax.ShapeDtypeStruct`` without the leading axis.

    Raises:
        ValueError: If a leaf is 0-d, or if two leaves disagree on the leading (batch) size;
            the message names the offending paths.

    Example:
        >>> import numpy as np
        >>> spec_to_str(element_spec_of_batch({"x": np.zeros((4, 2)), "y": np.zeros(4, bool)}))
        "{'x': float64[2], 'y': bool[]}"
    """
    first: list = []

    def drop(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        if not leaf.shape:
            raise ValueError(f"element_spec_of_batch: leaf {_path_str(path)} is 0-d and has no leading batch axis")
        if not first:
            first.append((path, leaf.shape[0]))
        elif leaf.shape[0] != first[0][1]:
            raise ValueError(
                f"element_spec_of_batch: leaf {_path_str(path)} has leading size {leaf.shape[0]}, "
                f"but {_path_str(first[0][0])} has leading size {first[0][1]}"
            )
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)

    return tree_map_with_path(drop, spec_of(batch_tree))


def add_leading_dim(spec: Any, size: int) -> Any:
    """Prepends a leading axis of length ``size`` (the batch size) to every leaf of a spec.

    Args:
        spec: A pytree of ``jax.ShapeDtypeStruct`` (arrays are accepted and described first).
        size: The length of the new leading axis; a positive integer.

    Returns:
        The batched spec.

    Raises:
        ValueError: If ``size`` is not a positive integer.

    Example:
        >>> import jax, numpy as np
        >>> add_leading_dim({"y": jax.ShapeDtypeStruct((), np.int32)}, 3)
        {'y': ShapeDtypeStruct(shape=(3,), dtype=int32)}
    """
    size = positive_int("add_leading_dim", "size (the batch size)", size)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct((size, *s.shape), s.dtype), spec_of(spec))


def spec_mismatches(tree: Any, spec: Any) -> list[str]:
    """Lists every way in which ``tree`` differs from ``spec`` (empty when it conforms).

    Args:
        tree: A pytree of arrays or specs.
        spec: The expected pytree of ``jax.ShapeDtypeStruct``.

    Returns:
        One readable line per missing path, unexpected path, or shape/dtype mismatch; or a single
        structure line when the paths agree but the container types differ (e.g. tuple vs list).

    Example:
        >>> import jax, numpy as np
        >>> spec = {"x": jax.ShapeDtypeStruct((3,), np.int32)}
        >>> spec_mismatches({"x": np.zeros(2, np.int32)}, spec)
        ["['x']: expected int32[3], got int32[2]"]
    """
    got = {_path_str(p): leaf for p, leaf in tree_flatten_with_path(spec_of(tree))[0]}
    want = {_path_str(p): leaf for p, leaf in tree_flatten_with_path(spec)[0]}
    problems = []
    for path, expected in want.items():
        if path not in got:
            problems.append(f"{path}: missing (expected {_leaf_str(expected)})")
        elif tuple(got[path].shape) != tuple(expected.shape) or got[path].dtype != expected.dtype:
            problems.append(f"{path}: expected {_leaf_str(expected)}, got {_leaf_str(got[path])}")
    problems += [f"{path}: unexpected (got {_leaf_str(leaf)})" for path, leaf in got.items() if path not in want]
    if not problems and tree_structure(tree) != tree_structure(spec):
        problems.append(f"structure: expected {tree_structure(spec)}, got {tree_structure(tree)}")
    return problems


def conforms(tree: Any, spec: Any) -> bool:
    """Returns whether ``tree`` has exactly the structure, shapes and dtypes of ``spec``.

    Example:
        >>> import jax, numpy as np
        >>> conforms({"x": np.zeros(3, np.float32)}, {"x": jax.ShapeDtypeStruct((3,), np.float32)})
        True
        >>> conforms({"x": np.zeros(3, np.float64)}, {"x": jax.ShapeDtypeStruct((3,), np.float32)})
        False
    """
    return not spec_mismatches(tree, spec)


def check_conforms(tree: Any, spec: Any, *, what: str = "value") -> None:
    """Raises if ``tree`` does not conform to ``spec``.

    Args:
        tree: A pytree of arrays or specs.
        spec: The expected pytree of ``jax.ShapeDtypeStruct``.
        what: How to name ``tree`` in the error message (e.g. ``"output of operator 'crop'"``).

    Raises:
        ValueError: Listing every mismatching path with the expected and actual shape/dtype,
            and every missing or unexpected path.

    Example:
        >>> import jax, numpy as np
        >>> spec = {"x": jax.ShapeDtypeStruct((3,), np.float32)}
        >>> check_conforms({"x": np.zeros(3)}, spec, what="input")
        Traceback (most recent call last):
        ...
        ValueError: input does not match its spec:
          ['x']: expected float32[3], got float64[3]
    """
    problems = spec_mismatches(tree, spec)
    if problems:
        raise ValueError(f"{what} does not match its spec:\n  " + "\n  ".join(problems))


def zeros_like_spec(spec: Any) -> Any:
    """Builds numpy arrays of zeros with the shapes and dtypes of a spec.

    Example:
        >>> import jax, numpy as np
        >>> zeros_like_spec({"x": jax.ShapeDtypeStruct((2,), np.int32)})
        {'x': array([0, 0], dtype=int32)}
    """
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), spec)


class _Rendered:
    """A leaf stand-in whose ``repr`` is the compact rendering of a spec leaf."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def spec_to_str(spec: Any) -> str:
    """Renders a spec (or a pytree of arrays) compactly, e.g. ``{'x': float32[3,2]}``.

    Example:
        >>> import jax, numpy as np
        >>> spec_to_str((jax.ShapeDtypeStruct((2, 2), np.float32), [np.zeros((), bool)]))
        '(float32[2,2], [bool[]])'
    """
    return repr(jax.tree.map(lambda s: _Rendered(_leaf_str(s)), spec_of(spec)))

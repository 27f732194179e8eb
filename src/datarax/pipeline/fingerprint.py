"""Stable descriptions of what a pipeline computes, for the fingerprint in iterator states.

A checkpointed iterator state may only be restored into a pipeline that
produces the same stream. The pipeline's fingerprint is a CRC-32 of a text
that describes, in a form that is the same in every process:

* the source: its class, element spec and record count (not the record
  values: hashing a dataset at every construction would cost a pass over it);
* the graph: node names, edges and sink;
* every operator, recursively through its submodules: its class, and every
  static attribute — configs field by field, tuples of weights, and
  functions by module, qualified name and a digest of their bytecode and
  constants (closure values are included when they are numbers, strings,
  bools or None);
* the root key of every operator that has its own rngs.

So a state from a pipeline whose operators differ in type, configuration or
function is refused. What is not covered: record values, parameters and other
array state of operators (they are checkpointed with the modules, not
identified by the stream), and closure values of other types.

Example:
    >>> def double(x):
    ...     return 2 * x
    >>> describe(double) == describe(double), describe(double) == describe(lambda x: 2 * x)
    (True, False)
"""

from __future__ import annotations

import dataclasses
import functools
import types
import zlib
from typing import Any

import jax
import numpy as np
from flax import nnx

_SIMPLE = (int, float, str, bool, bytes, type(None))

# Module attributes that do not change what a module computes.
_IGNORED_ATTRIBUTES = frozenset({"name", "rngs", "_cache", "_stats_reset"})


def _describe_code(code: types.CodeType) -> str:
    consts = []
    for const in code.co_consts:
        consts.append(_describe_code(const) if isinstance(const, types.CodeType) else repr(const))
    digest = zlib.crc32(code.co_code + "|".join([*consts, *code.co_names]).encode())
    return f"{code.co_name}:{digest:08x}"


def describe(value: Any) -> str:
    """A process-independent text for a static value (never a memory address).

    Args:
        value: A config, function, tuple, number, string, ...

    Returns:
        The description.
    """
    if isinstance(value, _SIMPLE):
        return repr(value)
    if isinstance(value, tuple | list):
        return "(" + ",".join(describe(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ",".join(f"{describe(k)}:{describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, np.dtype):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ",".join(f"{f.name}={describe(getattr(value, f.name))}" for f in dataclasses.fields(value))
        return f"{type(value).__qualname__}({fields})"
    if isinstance(value, functools.partial):
        return f"partial({describe(value.func)},{describe(value.args)},{describe(value.keywords)})"
    if isinstance(value, nnx.Module):
        return f"module:{type(value).__qualname__}"  # its own content is described by describe_module
    code = getattr(value, "__code__", None)
    if isinstance(code, types.CodeType):
        closure = [c.cell_contents for c in (value.__closure__ or ()) if _is_simple_cell(c)]
        name = f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
        return f"fn:{name}:{_describe_code(code)}:{describe(closure)}"
    if callable(value):
        return f"callable:{type(value).__module__}.{type(value).__qualname__}"
    return f"object:{type(value).__module__}.{type(value).__qualname__}"


def _is_simple_cell(cell: Any) -> bool:
    try:
        return isinstance(cell.cell_contents, _SIMPLE)
    except ValueError:  # an empty cell
        return False


def describe_module(module: nnx.Module) -> str:
    """Describes ``module`` and its submodules: classes and static attributes, in graph order."""
    parts = []
    for path, node in nnx.iter_graph(module):
        if not isinstance(node, nnx.Module) or isinstance(node, nnx.Rngs):
            continue
        statics = []
        for attr, value in sorted(vars(node).items()):
            if attr in _IGNORED_ATTRIBUTES or attr.startswith("_object__") or _is_state(value):
                continue
            statics.append(f"{attr}={describe(value)}")
        where = "/".join(str(p) for p in path)
        parts.append(f"{where}:{type(node).__qualname__}[{';'.join(statics)}]")
    return "|".join(parts)


def _is_state(value: Any) -> bool:
    # Variables, arrays and submodules are state or graph, not static configuration.
    if isinstance(value, nnx.Variable | nnx.Module | jax.Array | np.ndarray):
        return True
    leaves = jax.tree.leaves(value)
    return any(isinstance(leaf, jax.Array | np.ndarray | nnx.Variable) for leaf in leaves)


def crc32_text(parts: list[str]) -> int:
    """The CRC-32 of the parts joined by ``|``."""
    return zlib.crc32("|".join(parts).encode())


__all__ = ["crc32_text", "describe", "describe_module"]

"""Fusion boundaries: making XLA compute an intermediate batch once.

XLA fuses elementwise producers into their consumers and, inside a fused loop,
recomputes a producer for every value a consumer reads. That is free when each
output value reads one input value, but an operator whose output values read
several (an image's mean, the other channels of a pixel, a blur's or a bilinear
tap's neighbours) makes XLA evaluate the whole chain of operators before it
several times, and a chain of such operators costs geometrically more with its
depth (measured on XLA:CPU: 16 colour-jitter operators on a 128 x 32 x 32 x 3
batch, 294 ms per batch fused against 2.2 ms with a boundary before each).

``jax.lax.optimization_barrier`` does not stop this on the CPU backend (the
barrier is removed before fusion), so ``materialize`` passes the batch through a
``lax.cond`` whose two branches both return it unchanged: a conditional's
operands are real buffers, so the producers run once. One branch returns the
batch as it is, the other through a ``select`` of it with itself (were both
plain identities, JAX would forward the operands past the conditional and
drop it). The predicate is a NaN test of one value bitcast to float32, which
no simplifier can decide at compile time; either branch gives the same values,
so it does not matter which runs.
The boundary costs one small conditional per batch (about 20 microseconds on
the CPU).

In a program partitioned over several devices (a sharded pipeline), the
predicate must be the same on every device: taken from a batch's first value,
which one device holds, it costs a cross-device all-reduce per boundary. The
pipeline's step therefore traces its operators inside ``replicated_probe``,
giving a scalar every device already holds (the batch's epoch), and the
predicate is taken from it instead.

Only a batch-level array boundary works: under ``jax.vmap`` a conditional with
a per-row predicate becomes a select of both branches, so operators call this on
the whole batch (``OperatorModule.apply_batch`` does it for operators that set
``materializes_input``), not per element.

Example:
    >>> import jax, jax.numpy as jnp
    >>> batch = {"image": jnp.ones((2, 4, 4, 3)), "label": jnp.array([1, 2])}
    >>> out = jax.jit(materialize)(batch)
    >>> bool((out["image"] == 1).all()), out["label"].tolist()
    (True, [1, 2])
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

# A traced scalar that every device holds, for predicates (see the module docstring).
_PROBE: contextvars.ContextVar[Any] = contextvars.ContextVar("datarax_materialize_probe", default=None)


@contextlib.contextmanager
def replicated_probe(value: Any) -> Iterator[None]:
    """While tracing inside this block, ``materialize`` takes its predicate from ``value``.

    Args:
        value: A scalar array (traced) that is replicated on every device of the
            program, and not known at compile time (e.g. the epoch of a batch).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> @jax.jit
        ... def double(x, epoch):
        ...     with replicated_probe(epoch):
        ...         return materialize(x) * 2
        >>> double(jnp.arange(3), 0).tolist()
        [0, 2, 4]
    """
    token = _PROBE.set(value)
    try:
        yield
    finally:
        _PROBE.reset(token)


def _opaque_predicate(leaf: jax.Array) -> jax.Array:
    """A bool scalar computed from ``leaf`` that the compiler cannot constant-fold."""
    probe = jnp.ravel(leaf)[0]
    if jnp.issubdtype(probe.dtype, jnp.complexfloating):
        probe = jnp.real(probe)
    if probe.dtype == jnp.bool_:
        probe = probe.astype(jnp.uint32)
    as_float = jax.lax.bitcast_convert_type(probe.astype(jnp.uint32), jnp.float32)
    return as_float == as_float  # False for a NaN bit pattern; undecidable at compile time


def materialize(tree: Any) -> Any:
    """Returns ``tree`` unchanged, computed into real buffers (a fusion boundary for XLA).

    Args:
        tree: A pytree of arrays (a batch, typed PRNG keys included); leaves that are not arrays
            or have no elements are passed through.

    Returns:
        The same values.
    """
    leaves, treedef = jax.tree.flatten(tree)
    kept = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.Array) and leaf.size]
    if not kept:
        return tree
    # Typed keys travel as their raw data (a select of key arrays is not defined).
    impls = {i: jax.random.key_impl(leaves[i]) for i in kept if _is_key(leaves[i])}
    arrays = [jax.random.key_data(leaves[i]) if i in impls else leaves[i] for i in kept]
    probe = _PROBE.get()
    predicate = _opaque_predicate(arrays[0] if probe is None else probe)
    arrays = jax.lax.cond(predicate, lambda a: a, _selected_from_itself, arrays)
    for i, array in zip(kept, arrays, strict=True):
        leaves[i] = jax.random.wrap_key_data(array, impl=impls[i]) if i in impls else array
    return jax.tree.unflatten(treedef, leaves)


def _is_key(leaf: jax.Array) -> bool:
    return jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _selected_from_itself(arrays: list[jax.Array]) -> list[jax.Array]:
    return [jax.lax.select(jnp.ones(a.shape, dtype=bool), a, a) for a in arrays]


__all__ = ["materialize", "replicated_probe"]

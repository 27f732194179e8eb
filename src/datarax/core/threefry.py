"""Key derivation and coins, bit for bit ``jax.random``'s, written so XLA:CPU runs them fast.

On the CPU backend JAX lowers its Threefry-2x32 hash as a rolled loop (five
iterations of a ``while``, to keep compile times short). For the few hundred
values a batch needs, the loop's per-iteration overhead is most of the cost:
measured on W1 (batch 128: the record keys, the epoch key and a flip coin per
record), the three loops took about a third of the compiled step.
Here the same hash is written out round by round in ``jnp``, so XLA fuses it
into one elementwise kernel, and the functions built on it return exactly what
``jax.random.fold_in``, ``jax.random.uniform`` and ``jax.random.bernoulli``
return for the same key (``tests/core/test_threefry.py`` checks them).

They apply when the key is a Threefry key and JAX generates bits the
partitionable way (``jax_threefry_partitionable``, the default); for any other
key implementation or setting they call ``jax.random`` itself, so the result
is always ``jax.random``'s.

Example:
    >>> import jax
    >>> key = jax.random.key(3)
    >>> a = jax.random.key_data(fold_in(key, 7))
    >>> b = jax.random.key_data(jax.random.fold_in(key, 7))
    >>> bool((a == b).all()), bool(bernoulli(key, 0.3) == jax.random.bernoulli(key, 0.3))
    (True, True)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)
_ONE_BITS = np.uint32(0x3F800000)  # float32 1.0


def _rotate_left(x: jax.Array, distance: int) -> jax.Array:
    return (x << np.uint32(distance)) | (x >> np.uint32(32 - distance))


def threefry2x32(k1: Any, k2: Any, x1: Any, x2: Any) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 hash (20 rounds) of counter words ``(x1, x2)`` under key ``(k1, k2)``.

    All arguments are uint32 and broadcast together; the result is the pair of
    hashed words, as JAX's ``threefry2x32`` primitive computes them.
    """
    k1, k2 = jnp.asarray(k1, jnp.uint32), jnp.asarray(k2, jnp.uint32)
    ks = (k1, k2, k1 ^ k2 ^ _KEY_PARITY)
    x1 = jnp.asarray(x1, jnp.uint32) + ks[0]
    x2 = jnp.asarray(x2, jnp.uint32) + ks[1]
    for block in range(5):
        for distance in _ROTATIONS[block % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, distance) ^ x1
        x1 = x1 + ks[(block + 1) % 3]
        x2 = x2 + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x1, x2


def _fast(key: jax.Array) -> bool:
    """True when ``key`` is a typed Threefry key and bits are partitionable."""
    if not jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        return False
    return str(jax.random.key_impl(key)) == "threefry2x32" and bool(jax.config.jax_threefry_partitionable)


def _words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    data = jax.random.key_data(key)
    return data[..., 0], data[..., 1]


def fold_in(key: jax.Array, data: Any) -> jax.Array:
    """``jax.random.fold_in(key, data)``, for keys and uint32 ``data`` of any broadcastable shapes.

    Unlike ``jax.random.fold_in`` (a scalar ``data``, ``vmap`` for more), it
    takes a vector of data directly: ``fold_in(key, records)`` is one key per
    record.

    Args:
        key: A typed key array (``jax.random.key``).
        data: Integers folded in (taken modulo 2**32, as ``jax.random.fold_in`` does).

    Returns:
        Typed keys of the broadcast shape of ``key`` and ``data``.
    """
    data = jnp.asarray(data)
    if not _fast(key):
        return jnp.vectorize(jax.random.fold_in, signature="(),()->()")(key, data.astype(jnp.uint32))
    k1, k2 = _words(key)
    # fold_in hashes the counter (high word, low word) of a 32-bit datum: (0, data).
    y1, y2 = threefry2x32(k1, k2, np.uint32(0), data.astype(jnp.uint32))
    return jax.random.wrap_key_data(jnp.stack([y1, y2], axis=-1), impl=jax.random.key_impl(key))


def uniform(key: jax.Array) -> jax.Array:
    """``jax.random.uniform(key)`` (one float32 in ``[0, 1)`` per key), for a key array of any shape."""
    if not _fast(key):
        return jnp.vectorize(lambda k: jax.random.uniform(k, (), jnp.float32), signature="()->()")(key)
    k1, k2 = _words(key)
    # A scalar's bits are the hash of counter (0, 0), its two words xor-ed;
    # the top 23 bits become the mantissa of a float in [1, 2).
    y1, y2 = threefry2x32(k1, k2, np.uint32(0), np.uint32(0))
    mantissa = ((y1 ^ y2) >> np.uint32(9)) | _ONE_BITS
    return jnp.maximum(jax.lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1), np.float32(0))


def bernoulli(key: jax.Array, p: Any = 0.5) -> jax.Array:
    """``jax.random.bernoulli(key, p)`` with a float32 ``p``, for a key array of any shape."""
    return uniform(key) < jnp.asarray(p, jnp.float32)


__all__ = ["bernoulli", "fold_in", "threefry2x32", "uniform"]

"""datarax's one shuffle: a keyed Feistel bijection of ``[0, n)`` with cycle-walking.

``perm(seed, epoch)`` maps a position ``i`` in ``[0, n)`` to the index of the
record visited at that position. It is computed *per position* by a balanced
Feistel network over the smallest even-width power-of-two domain ``2**b >= n``
(``b >= 2``); values that land in ``[n, 2**b)`` are re-encrypted until they fall
below ``n`` ("cycle-walking"), which restricts the bijection on ``[0, 2**b)`` to a
bijection on ``[0, n)``. Because ``2**b < 4 * n``, fewer than 4 walks are needed on
average. This design gives us:

* O(1) memory -- the permutation is never materialised;
* random access -- any position's record is computable on its own, so a pipeline
  resumes exactly mid-epoch, and each host computes only its own share;
* a fresh shuffle per epoch -- the round keys mix ``seed`` and ``epoch``;
* identical results on host (NumPy) and device (``jax.jit``), bit for bit.

Example (an ``epoch_permutation`` and random access into it)::

    >>> import numpy as np
    >>> feistel_permutation_np(10, seed=0, epoch=0).tolist()
    [2, 3, 6, 5, 8, 4, 0, 7, 9, 1]
    >>> step, batch = 1, 4  # resume at step 1: only its positions are computed
    >>> feistel_permute_np(np.arange(step * batch, (step + 1) * batch), 10, 0, 0).tolist()
    [8, 4, 0, 7]

Seeds and epochs are reduced to 32 bits: a Python int ``s`` (any size, negative
included) becomes ``s % 2**32``; integer array scalars are cast to ``uint32``
(two's complement wrap for signed 32-bit values).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from datarax.core.validation import int_in_range, is_int

__all__ = ["feistel_permute", "feistel_permute_np", "feistel_permutation_np"]

NUM_ROUNDS = 6
MAX_N = 2**31
_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # round-index spacing
_SEED_SALT = 0x243F6A88


def _fmix32(h: Any, const: Callable[[int], Any], wrap: Callable[[Any], Any]) -> Any:
    """murmur3 32-bit finaliser; ``const`` types constants, ``wrap`` reduces mod 2**32."""
    h = h ^ (h >> const(16))
    h = wrap(h * const(0x85EBCA6B))
    h = h ^ (h >> const(13))
    h = wrap(h * const(0xC2B2AE35))
    return h ^ (h >> const(16))


def _py(h: int) -> int:
    return _fmix32(h & _M32, int, lambda v: v & _M32)


def _np(h: np.ndarray) -> np.ndarray:
    """``_fmix32`` on a uint32 array, in place (the host computes tens of thousands of positions at once)."""
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)  # uint32 arithmetic wraps mod 2**32
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def _encrypt_np(x: np.ndarray, keys: list, half: int) -> np.ndarray:
    """``_encrypt`` for uint32 NumPy arrays with in-place rounds (same bits, fewer temporaries)."""
    mask = np.uint32((1 << half) - 1)
    left, right = x >> np.uint32(half), x & mask
    for k in keys:
        mixed = right ^ k
        _np(mixed)
        mixed &= mask
        mixed ^= left
        left, right = right, mixed
    left <<= np.uint32(half)
    left |= right
    return left


def _jx(h: jax.Array) -> jax.Array:  # uint32 arrays wrap natively
    return _fmix32(h, np.uint32, lambda v: v)


def _half_bits(n: int, owner: str) -> int:
    """Validates ``n``; returns the half width of the Feistel domain."""
    n = int_in_range(owner, "n", n, low=1, high=MAX_N + 1, what="an int in [1, 2**31]")
    bits = max(2, (n - 1).bit_length())
    return (bits + 1) // 2


def _u32_int(x: Any, name: str) -> int:
    """Concrete seed/epoch -> Python int in [0, 2**32)."""
    if is_int(x):
        return int(x) % 2**32
    a = np.asarray(x)
    if a.ndim != 0 or a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an int or an integer scalar array, got {x!r}")
    return int(a) % 2**32


def _u32_jax(x: Any, name: str) -> jax.Array:
    """Possibly traced seed/epoch -> uint32 scalar."""
    if is_int(x):
        return jnp.asarray(int(x) % 2**32, dtype=jnp.uint32)
    a = jnp.asarray(x)
    if a.ndim != 0 or not jnp.issubdtype(a.dtype, jnp.integer):
        raise ValueError(f"{name} must be an int or an integer scalar array, got {x!r}")
    return a.astype(jnp.uint32)


def _round_keys(s: Any, e: Any, mix: Callable, const: Callable, wrap: Callable) -> list:
    """Key schedule: ``k_i = fmix(fmix(seed ^ salt) + fmix(epoch ^ c_i))``."""
    s = mix(s ^ const(_SEED_SALT))
    return [mix(wrap(s + mix(e ^ const(((i + 1) * _GOLDEN) & _M32)))) for i in range(NUM_ROUNDS)]


def _encrypt(x: Any, keys: list, half: int, mix: Callable, const: Callable) -> Any:
    """One pass of the balanced Feistel network on ``2 * half``-bit values."""
    mask, sh = const((1 << half) - 1), const(half)
    left, right = x >> sh, x & mask
    for k in keys:
        left, right = right, left ^ (mix(right ^ k) & mask)
    return (left << sh) | right


def feistel_permute_np(positions: np.ndarray, n: int, seed: Any, epoch: Any) -> np.ndarray:
    """Maps positions through ``perm(seed, epoch)`` on the host (NumPy).

    Args:
        positions: Integer array (any shape) of positions in ``[0, n)``.
        n: Size of the permuted range, a Python int in ``[1, 2**31]``.
        seed: Python int (any size) or integer scalar array.
        epoch: Python int (any size) or integer scalar array.

    Returns:
        An ``int64`` array shaped like ``positions``: ``perm(seed, epoch)[positions]``.

    Raises:
        ValueError: If ``n``, ``seed`` or ``epoch`` is invalid, or ``positions`` is
            not an integer array with all values in ``[0, n)``.
    """
    half = _half_bits(n, "feistel_permute_np")
    pos = np.asarray(positions)
    if pos.dtype.kind not in "iu":
        raise ValueError(f"positions must be an integer array, got dtype {pos.dtype}")
    if pos.size and (pos.min() < 0 or pos.max() >= n):
        raise ValueError(f"positions must lie in [0, n) = [0, {n}), got values in [{pos.min()}, {pos.max()}]")
    keys = [
        np.uint32(k)
        for k in _round_keys(_u32_int(seed, "seed"), _u32_int(epoch, "epoch"), _py, int, lambda v: v & _M32)
    ]
    y = _encrypt_np(pos.astype(np.uint32).ravel(), keys, half)
    limit = np.uint32(n)
    walk = np.nonzero(y >= limit)[0]
    while walk.size:  # cycle-walk only the elements still outside [0, n)
        y[walk] = _encrypt_np(y[walk], keys, half)
        walk = walk[y[walk] >= limit]
    return y.astype(np.int64).reshape(pos.shape)


def feistel_permutation_np(n: int, seed: Any, epoch: Any) -> np.ndarray:
    """Materialises the whole permutation ``perm(seed, epoch)`` (for tests, small sources).

    Args:
        n: Size of the permuted range, a Python int in ``[1, 2**31]``.
        seed: Python int (any size) or integer scalar array.
        epoch: Python int (any size) or integer scalar array.

    Returns:
        An ``int64`` array of shape ``(n,)`` holding a permutation of ``range(n)``.

    Raises:
        ValueError: If ``n``, ``seed`` or ``epoch`` is invalid.
    """
    _half_bits(n, "feistel_permutation_np")
    return feistel_permute_np(np.arange(int(n), dtype=np.int64), n, seed, epoch)


def feistel_permute(positions: jax.Array, n: int, seed: Any, epoch: Any) -> jax.Array:
    """Maps positions through ``perm(seed, epoch)`` in JAX; bit-identical to the NumPy one.

    Works under ``jax.jit`` with ``positions``, ``seed`` and ``epoch`` traced; ``n``
    must be static. Uses only 32-bit unsigned arithmetic (no x64 needed). Positions
    are *not* checked (they may be traced): the caller must pass values in ``[0, n)``.

    Args:
        positions: Integer array (any shape) of positions in ``[0, n)``.
        n: Size of the permuted range, a static Python int in ``[1, 2**31]``.
        seed: Python int (any size, reduced mod ``2**32``) or integer scalar array.
        epoch: Python int (any size, reduced mod ``2**32``) or integer scalar array.

    Returns:
        An ``int32`` array shaped like ``positions``: ``perm(seed, epoch)[positions]``.

    Raises:
        ValueError: If ``n`` is invalid or ``seed``/``epoch`` is not an integer scalar.
    """
    half = _half_bits(n, "feistel_permute")
    keys = _round_keys(_u32_jax(seed, "seed"), _u32_jax(epoch, "epoch"), _jx, np.uint32, lambda v: v)
    limit = np.uint32(n)
    y = _encrypt(jnp.asarray(positions).astype(jnp.uint32), keys, half, _jx, np.uint32)
    if n < 2 ** (2 * half):  # cycle-walk until every value is inside [0, n)
        y = jax.lax.while_loop(
            lambda v: jnp.any(v >= limit),
            lambda v: jnp.where(v >= limit, _encrypt(v, keys, half, _jx, np.uint32), v),
            y,
        )
    return y.astype(jnp.int32)

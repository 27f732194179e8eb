"""The seed contract: where every random choice in datarax comes from.

Randomness never comes from a stateful generator inside the compiled step.
A pipeline has one seed, a 32-bit int taken from the ``default`` stream of
its ``rngs`` (``pipeline_seed``), as Grain's ``ds.seed(s)``. It seeds the
shuffle, and every stochastic node of the pipeline gets a root key derived
from the seed and the node's *name*,

    node_key(seed, name) = fold_in(key(seed), crc32(name))

so adding, removing or reordering a node never changes another node's draws.
The key for record ``r`` in epoch ``e`` at a node is

    fold_in(fold_in(root_key, e), r)

so what a record sees depends only on (seed, node, epoch, record index): not
on batch size, prefetch depth, worker or host count, or where in the stream
the record happens to be served. An operator built with its own ``rngs``
keeps them: its root key is then its stream's key (an explicit override),
read and never advanced.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> root = stream_root_key(nnx.Rngs(augment=7), "augment")
    >>> a = record_keys(root, 0, jnp.array([3, 5]))
    >>> b = record_keys(root, 0, jnp.array([5]))
    >>> bool((jax.random.key_data(a[1]) == jax.random.key_data(b[0])).all())
    True
"""

from __future__ import annotations

import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core import threefry


def stream_root_key(rngs: nnx.Rngs, stream_name: str) -> jax.Array:
    """Returns the root key of ``stream_name`` without advancing the stream.

    A stream missing from ``rngs`` falls back to ``default``, as ``nnx.Rngs`` does.

    Args:
        rngs: The module's random number generators.
        stream_name: Name of the stream.

    Returns:
        A typed PRNG key (scalar).

    Raises:
        ValueError: If neither the stream nor ``default`` exists.
    """
    if stream_name in rngs:
        return rngs[stream_name].key[...]
    if "default" in rngs:
        return rngs["default"].key[...]
    raise ValueError(f"rng stream {stream_name!r} is not in rngs (streams: {list(rngs)}) and there is no default")


def pipeline_seed(rngs: nnx.Rngs) -> int:
    """The one 32-bit seed of a pipeline: its ``rngs``' ``default`` stream, folded to an int.

    ``nnx.Rngs(s)`` gives seed ``s`` for ``0 <= s < 2**32``.

    Args:
        rngs: The pipeline's random number generators.

    Returns:
        An int in ``[0, 2**32)``.

    Raises:
        ValueError: If ``rngs`` has no ``default`` stream.

    Example:
        >>> pipeline_seed(nnx.Rngs(42))
        42
    """
    if "default" not in rngs:
        raise ValueError(
            f"the pipeline seed is the 'default' stream of rngs, but rngs has only {sorted(rngs)}; "
            "pass nnx.Rngs(seed) (or nnx.Rngs(default=seed, ...))"
        )
    return seed_from_key(rngs["default"].key[...])


def node_key(seed: int, node_name: str) -> jax.Array:
    """The root key of the stochastic node ``node_name`` of a pipeline seeded with ``seed``.

    Args:
        seed: The pipeline seed (an int in ``[0, 2**32)``).
        node_name: The node's name in the pipeline.

    Returns:
        A typed PRNG key: ``fold_in(key(seed), crc32(node_name))``.

    Example:
        >>> a, b = node_key(0, "augment"), node_key(0, "mixup")
        >>> bool((jax.random.key_data(a) != jax.random.key_data(b)).any())
        True
    """
    return jax.random.fold_in(jax.random.key(np.uint32(seed)), zlib.crc32(node_name.encode()))


def record_keys(root_key: jax.Array, epoch: Any, records: Any) -> jax.Array:
    """Per-record keys ``fold_in(fold_in(root_key, epoch), record)``.

    Args:
        root_key: A stream's root key (typed or raw uint32).
        epoch: Epoch number (int or traced scalar).
        records: 1-D integer vector of record indices (traced or concrete).

    Returns:
        A vector of keys, one per record.
    """
    records = jnp.asarray(records).astype(jnp.uint32)
    if not jax.dtypes.issubdtype(root_key.dtype, jax.dtypes.prng_key):  # a raw uint32 key
        epoch_key = jax.random.fold_in(root_key, jnp.asarray(epoch, dtype=jnp.uint32))
        return jax.vmap(lambda r: jax.random.fold_in(epoch_key, r))(records)
    # threefry.fold_in: jax.random.fold_in's keys, without XLA:CPU's rolled hash loop.
    return threefry.fold_in(threefry.fold_in(root_key, jnp.asarray(epoch, dtype=jnp.uint32)), records)


_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (a bijection of uint64) on an array, wrapping mod 2**64."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def host_rng_states(seed: int, node_name: str, epoch: int, records: Any) -> np.ndarray:
    """The 256-bit PCG64 states (state, increment) of ``records``' host generators, as ``(n, 4)`` uint64.

    Hashes ``(seed, crc32(node_name))`` and ``(epoch, record)`` (32 bits
    each) with splitmix64, for a whole batch of records at once.
    """
    mask = 0xFFFFFFFF
    node = np.uint64(((seed & mask) << 32) | zlib.crc32(node_name.encode()))
    where = (np.uint64(epoch & mask) << np.uint64(32)) | (
        np.asarray(records, dtype=np.int64).astype(np.uint64) & np.uint64(mask)
    )
    where = np.atleast_1d(where)
    with np.errstate(over="ignore"):
        high = _mix64(node + _mix64(where))
        low = _mix64(high ^ where)
        inc = _mix64(np.full_like(where, node) ^ _mix64(low))
    return np.stack([high, low, inc, where], axis=1)


class HostRng:
    """One reusable ``numpy.random.Generator`` per thread, re-seeded for each record.

    Building a seeded generator costs tens of microseconds (``SeedSequence``);
    setting the state of an existing PCG64 costs about one, which matters at
    a few hundred records per batch. The generator handed out is valid for
    the call it is given to; a host operator must not keep it.

    Example:
        >>> rng = HostRng()
        >>> states = host_rng_states(0, "crop", 1, [7, 8])
        >>> a = rng.for_state(states[0]).integers(1 << 30)
        >>> bool(a == host_rng(0, "crop", 1, 7).integers(1 << 30))
        True
    """

    def __init__(self):
        self._bits = np.random.PCG64(0)
        self.generator = np.random.Generator(self._bits)

    def for_state(self, state: np.ndarray) -> np.random.Generator:
        """The generator, set to one row of ``host_rng_states``."""
        high, low, inc = int(state[0]), int(state[1]), int(state[2])
        self._bits.state = {
            "bit_generator": "PCG64",
            "state": {"state": (high << 64) | low, "inc": (inc << 64) | int(state[3]) | 1},
            "has_uint32": 0,
            "uinteger": 0,
        }
        return self.generator


def host_rng(seed: int, node_name: str, epoch: int, record: int) -> np.random.Generator:
    """The ``numpy.random.Generator`` a host operator receives for one record.

    The host-side twin of ``record_keys``: a PCG64 generator whose state is a
    hash of ``(seed, crc32(node_name), epoch, record)`` (``host_rng_states``),
    so its draws depend on nothing else: not on the worker, the batch or the
    thread. The pipeline reuses one generator per thread (``HostRng``); this
    builds a fresh one with the same draws.

    Args:
        seed: The pipeline seed (an int in ``[0, 2**32)``).
        node_name: The host operator's key name.
        epoch: Epoch number (reduced mod ``2**32``).
        record: Record index (reduced mod ``2**32``).

    Returns:
        A fresh generator.

    Example:
        >>> draws = [int(host_rng(0, "crop", 1, record).integers(1 << 30)) for record in (7, 7, 8)]
        >>> draws[0] == draws[1], draws[0] == draws[2]
        (True, False)
    """
    return HostRng().for_state(host_rng_states(seed, node_name, epoch, [record])[0])


def seed_from_key(key: jax.Array) -> int:
    """Folds a concrete PRNG key into a 32-bit integer seed (for the host-side shuffle).

    Args:
        key: A concrete typed or raw key.

    Returns:
        An int in ``[0, 2**32)``; ``jax.random.key(s)`` gives back ``s`` for ``s < 2**32``.
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = np.asarray(key, dtype=np.uint64).reshape(-1)
    seed = np.uint64(0)
    for word in words[:-1]:
        seed = (seed * np.uint64(0x9E3779B1) + word) & np.uint64(0xFFFFFFFF)
    return int((seed * np.uint64(0x85EBCA6B) ^ words[-1]) & np.uint64(0xFFFFFFFF))


__all__ = [
    "HostRng",
    "host_rng",
    "host_rng_states",
    "node_key",
    "pipeline_seed",
    "record_keys",
    "seed_from_key",
    "stream_root_key",
]

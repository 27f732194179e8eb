"""Per-record metadata that travels through a datarax pipeline.

Every element flowing through a pipeline carries bookkeeping: its position
(``index``), where the pipeline is in training (``epoch``, ``global_step``,
``batch_idx``), which shard produced it (``shard_id``), an RNG key for
stochastic operators and a record key naming the element in its source.

Design:

* ``Metadata`` is an immutable pytree so it can be passed straight into
  ``jax.jit`` / ``jax.vmap``. All numeric fields and the RNG key are pytree
  *children* (traced), so advancing a step never triggers a recompile.
* The record key is a Python string, which JAX cannot trace. It is held as a
  fixed-width ``(128,)`` ``uint8`` array, ``_encoded_key`` (see
  ``datarax.core.record_key``): every key has the same shape, so changing only
  the key never changes the treedef or recompiles. The string is decoded on
  demand with ``Metadata.entry_key``. Keys are at most 128 UTF-8 bytes, no NUL.
* ``source_info`` is genuinely static (e.g. a dataset name) and lives in the
  treedef; it is compared by value so that equal dicts share a compilation.
* ``RecordMetadata``, the lighter record a source's ``MetadataManager`` produces,
  lives in ``datarax.core.record_metadata``; both are importable from here.

Example:
    >>> import jax
    >>> md = create_metadata(index=3, record_key="img_0003", seed=0)
    >>> md.entry_key, md._encoded_key.shape
    ('img_0003', (128,))
    >>> int(md.increment_step().global_step)
    1
    >>> other = md.replace(key="img_0004")
    >>> jax.tree_util.tree_structure(md) == jax.tree_util.tree_structure(other)
    True
    >>> after = update_metadata_batch(md, 32)
    >>> int(after.global_step), int(after.batch_idx)
    (32, 1)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import InitVar, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from datarax.core.pytree import build_without_init, register_frozen_pytree
from datarax.core.record_key import KEY_WIDTH, decode_record_key, encode_record_key
from datarax.core.record_metadata import MetadataManager, RecordMetadata
from datarax.core.validation import non_negative_int, positive_int

# Traced fields of ``Metadata``, in flattening order.
_METADATA_CHILDREN = ("index", "epoch", "global_step", "batch_idx", "shard_id", "rng_key", "_encoded_key")
_INT_FIELDS = ("index", "epoch", "global_step", "batch_idx", "shard_id")
_DICT_FIELDS = (*_INT_FIELDS, "key", "rng_key", "rng_impl", "source_info")


def _is_typed_key(key: Any) -> bool:
    return hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def _check_non_negative(**values: Any) -> None:
    # Only concrete Python ints are checked: traced or stacked values must pass untouched.
    for name, value in values.items():
        if isinstance(value, int):
            non_negative_int("Metadata", name, value)


@dataclass(frozen=True, eq=False)
class Metadata:
    """Immutable, jit-friendly metadata of a pipeline element.

    All numeric fields, ``rng_key`` and the encoded record key are traced
    pytree children; only ``source_info`` is static. Two instances that differ
    only in their record key string therefore share a treedef.

    Args:
        index: Position of the element in the stream.
        epoch: Current epoch.
        global_step: Current global step.
        batch_idx: Batch index, or None when batches are not tracked.
        shard_id: Shard that produced the element, or None.
        rng_key: Typed (``jax.random.key``) or legacy uint32 RNG key, or None.
        _encoded_key: Pre-encoded record key; normally set from ``key``.
        source_info: Static description of the source, or None.
        key: Record key string of at most ``KEY_WIDTH`` (128) UTF-8 bytes and
            without NUL characters, encoded into ``_encoded_key``.

    Raises:
        ValueError: If ``key`` is longer than ``KEY_WIDTH`` bytes or contains
            NUL, if both ``key`` and ``_encoded_key`` are given, or if a Python
            int field is negative.
        TypeError: If ``key`` is neither a str nor None.
    """

    index: int = 0
    epoch: int = 0
    global_step: int = 0
    batch_idx: int | None = None
    shard_id: int | None = None
    rng_key: Array | None = None
    _encoded_key: Array | None = None
    source_info: dict[str, Any] | None = None
    key: InitVar[str | None] = None

    def __post_init__(self, key: str | None) -> None:
        _check_non_negative(**{n: getattr(self, n) for n in _INT_FIELDS})
        if key is not None:
            if self._encoded_key is not None:
                raise ValueError("Metadata: pass either key or _encoded_key, not both")
            object.__setattr__(self, "_encoded_key", encode_record_key(key))

    @property
    def entry_key(self) -> str | None:
        """The record key string, decoded from ``_encoded_key``.

        Returns:
            The key, or None if no key was set.

        Raises:
            TypeError: If called on a traced value (inside ``jit``/``vmap``).
            ValueError: If the metadata is batched (one key per row).
        """
        if self._encoded_key is None:
            return None
        try:
            buf = np.asarray(self._encoded_key)
        except jax.errors.TracerArrayConversionError as err:
            raise TypeError("entry_key needs a concrete key; read it outside jit/vmap") from err
        if buf.ndim != 1:
            raise ValueError(f"entry_key needs unbatched metadata, got encoded shape {buf.shape}")
        return decode_record_key(buf)

    def replace(self, **kwargs: Any) -> Metadata:
        """Returns a copy with the given fields replaced.

        Args:
            **kwargs: Field values; ``key=`` re-encodes the record key.

        Returns:
            A new ``Metadata``.

        Raises:
            ValueError: If a name is not a field of ``Metadata``.
        """
        unknown = set(kwargs) - {*_METADATA_CHILDREN, "source_info", "key"}
        if unknown:
            raise ValueError(f"unknown Metadata fields: {sorted(unknown)}")
        if "key" in kwargs:
            key = kwargs.pop("key")
            kwargs["_encoded_key"] = None if key is None else encode_record_key(key)
        fields = {n: getattr(self, n) for n in (*_METADATA_CHILDREN, "source_info")}
        # Bypass __init__ so replace() also works on traced values inside jit.
        return build_without_init(Metadata, **{**fields, **kwargs})

    def split_rng(self, num: int = 2) -> list[Array | None]:
        """Splits ``rng_key`` into ``num`` subkeys.

        Args:
            num: Number of subkeys (at least 1).

        Returns:
            A list of ``num`` keys, or ``num`` Nones if ``rng_key`` is None.

        Raises:
            ValueError: If ``num`` is less than 1.
        """
        num = positive_int("Metadata.split_rng", "num", num)
        if self.rng_key is None:
            return [None] * num
        return list(jax.random.split(self.rng_key, num))

    def next_rng(self) -> Metadata:
        """Returns a copy whose ``rng_key`` is advanced by one split (unchanged if None)."""
        if self.rng_key is None:
            return self
        return self.replace(rng_key=jax.random.split(self.rng_key)[0])

    def increment_step(self) -> Metadata:
        """Returns a copy with ``global_step`` increased by one."""
        return self.replace(global_step=self.global_step + 1)

    def increment_epoch(self) -> Metadata:
        """Returns a copy with ``epoch`` + 1 and ``batch_idx`` reset to 0 if tracked."""
        batch_idx = None if self.batch_idx is None else 0
        return self.replace(epoch=self.epoch + 1, batch_idx=batch_idx)

    def increment_batch(self) -> Metadata:
        """Returns a copy with ``batch_idx`` + 1, treating None as 0."""
        return self.replace(batch_idx=(0 if self.batch_idx is None else self.batch_idx) + 1)

    def with_shard(self, shard_id: int | None) -> Metadata:
        """Returns a copy with ``shard_id`` set.

        Args:
            shard_id: New shard id, or None.

        Returns:
            A new ``Metadata``.
        """
        return self.replace(shard_id=shard_id)

    def to_dict(self) -> dict[str, Any]:
        """Converts concrete metadata to a JSON-serialisable dict.

        The RNG key is stored as its raw key data; ``rng_impl`` records the
        PRNG implementation of a typed key (None for a legacy uint32 key) so
        ``from_dict`` restores the same kind of key.

        Returns:
            A dict with Python ints/lists, the key string under ``"key"``,
            ``"rng_key"``, ``"rng_impl"`` and ``"source_info"``.
        """
        out: dict[str, Any] = {
            n: None if getattr(self, n) is None else np.asarray(getattr(self, n)).tolist() for n in _INT_FIELDS
        }
        out["key"] = self.entry_key
        typed = _is_typed_key(self.rng_key)
        data = jax.random.key_data(self.rng_key) if typed else self.rng_key
        out["rng_key"] = None if data is None else np.asarray(data).tolist()
        out["rng_impl"] = str(jax.random.key_impl(self.rng_key)) if typed else None
        out["source_info"] = self.source_info
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metadata:
        """Rebuilds metadata from the output of ``to_dict``.

        Args:
            data: Dict as produced by ``to_dict`` (missing fields take defaults).

        Returns:
            A new ``Metadata``.

        Raises:
            ValueError: If ``data`` contains unknown fields.
        """
        unknown = set(data) - set(_DICT_FIELDS)
        if unknown:
            raise ValueError(f"unknown Metadata fields: {sorted(unknown)}")
        fields = {n: data[n] for n in (*_INT_FIELDS, "key", "source_info") if n in data}
        raw, impl = data.get("rng_key"), data.get("rng_impl")
        if raw is not None:
            raw = jnp.asarray(raw, dtype=jnp.uint32)
            fields["rng_key"] = raw if impl is None else jax.random.wrap_key_data(raw, impl=impl)
        return cls(**fields)

    def merge(self, other: Metadata | None) -> Metadata:
        """Combines two metadata, ``other`` taking precedence where it is set.

        A field of ``other`` wins when it is not None and, for integer
        fields, not zero. ``source_info`` dicts are merged with ``other``'s
        entries winning. Needs concrete (non-traced) values.

        Args:
            other: Metadata to merge in, or None.

        Returns:
            The merged ``Metadata`` (``self`` if ``other`` is None).
        """
        if other is None:
            return self
        updates: dict[str, Any] = {}
        for name in _METADATA_CHILDREN:
            value = getattr(other, name)
            if value is not None and (name not in _INT_FIELDS or np.any(np.asarray(value) != 0)):
                updates[name] = value
        if other.source_info is not None:
            updates["source_info"] = {**(self.source_info or {}), **other.source_info}
        return self.replace(**updates)


register_frozen_pytree(Metadata, _METADATA_CHILDREN, ("source_info",))
# Drop the class attribute the InitVar default leaves behind, so ``md.key`` does
# not silently read None; the decoded key is ``md.entry_key``.
del Metadata.key


def create_metadata(
    index: int = 0,
    epoch: int = 0,
    global_step: int = 0,
    batch_idx: int | None = None,
    shard_id: int | None = None,
    record_key: str | None = None,
    source_info: dict[str, Any] | None = None,
    rng_key: Array | None = None,
    seed: int | None = None,
) -> Metadata:
    """Creates a ``Metadata``.

    Args:
        index: Position of the element.
        epoch: Current epoch.
        global_step: Current global step.
        batch_idx: Batch index, or None.
        shard_id: Shard id, or None.
        record_key: Record key string, or None.
        source_info: Static source description, or None.
        rng_key: RNG key; takes precedence over ``seed``.
        seed: If given and ``rng_key`` is None, ``rng_key = jax.random.key(seed)``.

    Returns:
        The new ``Metadata``.

    Raises:
        ValueError: As for the ``Metadata`` constructor.
    """
    if rng_key is None and seed is not None:
        rng_key = jax.random.key(seed)
    return Metadata(index, epoch, global_step, batch_idx, shard_id, rng_key, source_info=source_info, key=record_key)


def split_rng_tree(rng_key: Array, names: Sequence[str]) -> dict[str, Array]:
    """Derives one independent key per name from ``rng_key``.

    Each key is ``fold_in(rng_key, crc32(name))``: deterministic across runs
    (unlike ``hash``) and independent of the other names, so adding a name
    never changes the keys of existing ones.

    Args:
        rng_key: Typed or legacy RNG key.
        names: Distinct stream names.

    Returns:
        A dict mapping each name to its key.

    Raises:
        ValueError: If ``names`` is empty or contains duplicates.
    """
    names = list(names)
    if not names:
        raise ValueError("names must not be empty")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate names: {duplicates}")
    return {n: jax.random.fold_in(rng_key, zlib.crc32(n.encode("utf-8"))) for n in names}


def batch_metadata(metadata_list: Sequence[Metadata]) -> Metadata:
    """Stacks metadata along a new leading axis, e.g. for use with ``jax.vmap``.

    Args:
        metadata_list: Metadata to combine; all must set the same fields.

    Returns:
        A ``Metadata`` whose traced fields have a leading batch axis and whose
        ``source_info`` is that of the first element.

    Raises:
        ValueError: If the list is empty or the entries differ in which fields are None.
    """
    if not metadata_list:
        raise ValueError("metadata_list must not be empty")

    def pattern(md: Metadata) -> tuple[bool, ...]:
        return tuple(getattr(md, n) is None for n in _METADATA_CHILDREN)

    first = metadata_list[0]
    for i, md in enumerate(metadata_list):
        if pattern(md) != pattern(first):
            raise ValueError(f"metadata {i} sets different fields to None than metadata 0")
    stacked = {
        n: None if getattr(first, n) is None else jnp.stack([getattr(md, n) for md in metadata_list])
        for n in _METADATA_CHILDREN
    }
    return build_without_init(Metadata, **stacked, source_info=first.source_info)


def update_metadata_batch(metadata: Metadata, batch_size: int) -> Metadata:
    """Advances metadata past one batch: ``global_step += batch_size``, ``batch_idx += 1``.

    ``global_step`` counts records, so a batch advances it by its size; a
    ``batch_idx`` or ``global_step`` of None counts as 0. Works on traced
    metadata inside ``jax.jit`` (``batch_size`` must be a Python int).

    Args:
        metadata: The metadata to advance (unchanged; a new one is returned).
        batch_size: Records in the batch, a positive int.

    Returns:
        A new ``Metadata`` with the updated ``global_step`` and ``batch_idx``.

    Raises:
        TypeError: If ``metadata`` is not a ``Metadata``.
        ValueError: If ``batch_size`` is not a positive int.

    Example:
        >>> md = update_metadata_batch(Metadata(global_step=5, batch_idx=2), 8)
        >>> md.global_step, md.batch_idx
        (13, 3)
        >>> update_metadata_batch(Metadata(), 4).batch_idx  # None counts as 0
        1
    """
    if not isinstance(metadata, Metadata):
        raise TypeError(f"update_metadata_batch: metadata must be a Metadata, got {type(metadata).__name__}")
    batch_size = positive_int("update_metadata_batch", "batch_size", batch_size)
    step = 0 if metadata.global_step is None else metadata.global_step
    batch_idx = 0 if metadata.batch_idx is None else metadata.batch_idx
    return metadata.replace(global_step=step + batch_size, batch_idx=batch_idx + 1)


__all__ = [
    "KEY_WIDTH",
    "Metadata",
    "MetadataManager",
    "RecordMetadata",
    "batch_metadata",
    "create_metadata",
    "split_rng_tree",
    "update_metadata_batch",
]

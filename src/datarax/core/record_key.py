"""The fixed-width encoding of a record key, so a key string can be traced by JAX.

``Metadata`` names the record it describes with a string, which JAX cannot
trace. As static aux data every distinct key would be a distinct treedef and
force one compilation per record. Instead the key is encoded into a
``(KEY_WIDTH,)`` = ``(128,)`` ``uint8`` array: its UTF-8 bytes, NUL-padded.
Every key has the same shape, so one compiled program serves them all, and
the string is decoded on demand, outside ``jit``.

NUL is the padding, so a key may not contain the NUL character (it would not
decode to itself); it may be up to 128 UTF-8 bytes long.

Example:
    >>> encoded = encode_record_key("img_0003")
    >>> encoded.shape, encoded.dtype
    ((128,), dtype('uint8'))
    >>> decode_record_key(encoded)
    'img_0003'
    >>> encode_record_key("é" * 65)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Metadata: key 'ééé...' is 130 bytes long; the limit is 128 bytes (UTF-8)
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import Array

#: Width of an encoded record key: the longest key, in UTF-8 bytes.
KEY_WIDTH = 128

# Long keys are shortened in error messages, which must stay readable.
_SHOWN_CHARS = 40


def encode_record_key(key: str, owner: str = "Metadata") -> Array:
    """Encodes ``key`` as its UTF-8 bytes, NUL-padded to a ``uint8`` array of shape ``(KEY_WIDTH,)``.

    Args:
        key: The record key.
        owner: Who encodes, for error messages.

    Returns:
        The encoded key, a JAX array.

    Raises:
        TypeError: If ``key`` is not a str.
        ValueError: If ``key`` is longer than ``KEY_WIDTH`` UTF-8 bytes or contains NUL.
    """
    if not isinstance(key, str):
        raise TypeError(f"{owner}: key must be a str or None, got {type(key).__name__}")
    raw = key.encode("utf-8")
    shown = key if len(key) <= _SHOWN_CHARS else key[:_SHOWN_CHARS] + "..."
    if len(raw) > KEY_WIDTH:
        raise ValueError(f"{owner}: key {shown!r} is {len(raw)} bytes long; the limit is {KEY_WIDTH} bytes (UTF-8)")
    if b"\0" in raw:
        raise ValueError(f"{owner}: key {shown!r} contains the NUL character, which pads the encoded key")
    buf = np.zeros(KEY_WIDTH, dtype=np.uint8)
    buf[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return jnp.asarray(buf)


def decode_record_key(encoded: Any) -> str:
    """Decodes one concrete encoded key (a 1-d ``uint8`` array) back to its string."""
    return bytes(np.asarray(encoded, dtype=np.uint8)).rstrip(b"\0").decode("utf-8")


__all__ = ["KEY_WIDTH", "decode_record_key", "encode_record_key"]

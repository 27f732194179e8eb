"""JAX's persistent compilation cache, for pipelines started in fresh processes.

Within one process, identically built pipelines share their compiled step
(``datarax.pipeline.program``). A fresh process (a restarted training job, a
resumed run) compiles again unless JAX's persistent cache is on: then the
XLA executable of the step is written to a directory the first time and read
back by every later process that builds the same pipeline on the same
machine, jax version and flags.

The directory is trusted input: JAX runs the executables it finds there, so
never point it at a directory others can write to.

``enable_compilation_cache`` turns it on for every jitted function of the
process (the training step too), caching every program however quick its
compilation was: a pipeline step compiles in well under JAX's default
one-second threshold, which would otherwise keep it out of the cache.

Example:
    >>> import tempfile
    >>> directory = enable_compilation_cache(tempfile.mkdtemp())
    >>> import jax
    >>> jax.config.jax_compilation_cache_dir == str(directory)
    True
    >>> disable_compilation_cache()
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache


def enable_compilation_cache(directory: str | os.PathLike, *, min_compile_time_secs: float = 0.0) -> Path:
    """Turns on JAX's persistent compilation cache in ``directory`` for this process.

    Call it before the first pipeline (or any jitted function) is compiled.

    Args:
        directory: Where executables are stored (created if missing).
        min_compile_time_secs: Programs that compile faster than this are not
            stored (0 stores every program).

    Returns:
        The cache directory.

    Raises:
        TypeError: If ``directory`` is not a path.
        ValueError: If ``min_compile_time_secs`` is negative, or ``directory``
            exists and is not a directory.
    """
    if not isinstance(directory, str | os.PathLike):
        raise TypeError(f"enable_compilation_cache: directory must be a path, got {type(directory).__name__}")
    if isinstance(min_compile_time_secs, bool) or not isinstance(min_compile_time_secs, int | float):
        raise ValueError(
            f"enable_compilation_cache: min_compile_time_secs must be a number >= 0, got {min_compile_time_secs!r}"
        )
    if min_compile_time_secs < 0:
        raise ValueError(
            f"enable_compilation_cache: min_compile_time_secs must be a number >= 0, got {min_compile_time_secs!r}"
        )
    path = Path(directory).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f"enable_compilation_cache: directory {str(path)!r} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    # A cache JAX already opened (in another directory, or none) is dropped,
    # so the new directory takes effect even after earlier compilations.
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def disable_compilation_cache() -> None:
    """Turns the persistent compilation cache off again (nothing is deleted)."""
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


__all__ = ["disable_compilation_cache", "enable_compilation_cache"]

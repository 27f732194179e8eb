"""File paths written in a TOML pipeline, kept inside the allowed roots.

A TOML file names the data it reads; it must not be able to make datarax read
anything else. ``PathPolicy`` resolves every path a component receives:

* a relative path is relative to the TOML file's directory (``base_dir``), never
  to the current directory, so a file means the same thing wherever it is run;
* the path is resolved with symlinks followed (``Path.resolve``) and must lie
  inside one of the allowed roots: by default only the TOML file's directory,
  plus any root the caller adds (``--allow-root``, ``allowed_roots=``). So
  ``../../etc/passwd`` and a symlink pointing out of the roots are refused;
* a directory (a saved Hugging Face dataset, a TFDS ``data_dir``, a folder of
  Parquet files) is walked, and a symlink anywhere in it that leads out of the
  roots is refused too;
* a glob pattern (``data/train-*.array_record``) must start inside the roots,
  and every file it matches is checked.

The component receives the resolved absolute path (for a glob, the absolute
pattern). Nothing is expanded from the environment: ``~`` and ``$HOME`` are
ordinary characters.

Example:
    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp()).resolve()
    >>> policy = PathPolicy(root)
    >>> policy.resolve("data/images.npy") == str(root / "data" / "images.npy")
    True
    >>> policy.resolve("/etc/passwd")
    Traceback (most recent call last):
    ...
    datarax.config.paths.PathEscape: path '/etc/passwd' resolves to /etc/passwd, outside the allowed roots ...
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

_GLOB_CHARS = frozenset("*?[")


class PathEscape(ValueError):
    """A path that leaves the allowed roots, or is not a usable path string."""


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


class PathPolicy:
    """Resolves the paths of one TOML document against its directory and allowed roots.

    Args:
        base_dir: The directory relative paths start from (the TOML file's); it is an allowed root.
        allowed_roots: Further directories whose contents may be read.

    Raises:
        ValueError: If a root is not an existing directory.
    """

    def __init__(self, base_dir: str | os.PathLike, allowed_roots: Iterable[str | os.PathLike] = ()):
        self.base_dir = Path(base_dir).resolve()
        roots = [self.base_dir]
        for root in allowed_roots:
            resolved = Path(root).resolve()
            if not resolved.is_dir():
                raise ValueError(f"allowed root {str(root)!r} is not an existing directory")
            roots.append(resolved)
        self.roots = tuple(dict.fromkeys(roots))

    def _roots_text(self) -> str:
        return "[" + ", ".join(str(root) for root in self.roots) + "]"

    def _check(self, given: str, resolved: Path) -> None:
        if not _inside(resolved, self.roots):
            raise PathEscape(
                f"path {given!r} resolves to {resolved}, outside the allowed roots {self._roots_text()} "
                "(add a root with --allow-root DIR or allowed_roots=)"
            )
        if resolved.is_dir():
            self._check_tree(given, resolved)

    def _check_tree(self, given: str, directory: Path) -> None:
        """Every symlink under ``directory`` must lead inside the roots."""
        for folder, dirnames, filenames in os.walk(directory):
            for name in (*dirnames, *filenames):
                entry = Path(folder, name)
                if entry.is_symlink():
                    target = entry.resolve()
                    if not _inside(target, self.roots):
                        raise PathEscape(
                            f"path {given!r} holds the symlink {entry} to {target}, outside the allowed roots "
                            f"{self._roots_text()}"
                        )

    def resolve(self, value: object) -> str:
        """The absolute path (or glob pattern) of ``value``, checked against the roots.

        Args:
            value: The path as written in the TOML file.

        Returns:
            The resolved absolute path, or for a glob pattern the absolute pattern.

        Raises:
            PathEscape: If ``value`` is not a non-empty string, or it (or a file it matches, or a
                symlink inside a directory it names) leads outside the allowed roots.
        """
        if not isinstance(value, str) or not value or "\0" in value:
            raise PathEscape(f"expected a file path (a non-empty string), got {value!r}")
        joined = self.base_dir / value
        if not _GLOB_CHARS.intersection(value):
            resolved = joined.resolve()
            self._check(value, resolved)
            return str(resolved)
        parts = joined.parts
        first = next(i for i, part in enumerate(parts) if _GLOB_CHARS.intersection(part))
        self._check(value, Path(*parts[:first]).resolve())  # where the pattern starts
        pattern = str(Path(os.path.normpath(joined)))
        for match in glob.glob(pattern):
            self._check(value, Path(match).resolve())
        return pattern


__all__ = ["PathEscape", "PathPolicy"]
